"""Dagster glue: partitions, resources, assets, checks and schedules."""
