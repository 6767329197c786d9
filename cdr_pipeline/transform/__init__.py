"""The rules that turn a day's pages into its datasets, free of HTTP and Dagster.

``TRANSFORM_VERSION`` is every day asset's ``code_version``: a change that alters any byte a
day publishes bumps it, so Dagster shows the days built before as stale (a test holds the
version to the digest of a chaos day's datasets)."""

TRANSFORM_VERSION = "1"
