"""Dagster glue, autoloaded by ``dg.load_from_defs_folder``: settings and partitions,
resources, assets, checks and schedules, each a module-level definition."""
