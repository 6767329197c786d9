"""Pure functions from raw response bodies to typed Arrow tables; no HTTP, no Dagster."""
