"""Dagster glue, autoloaded by ``dg.load_from_defs_folder``: resources, assets, checks,
schedules and sensors. What depends on a setting (partitions, zones, retry policy, alert URL)
is made in each module's ``@dg.definitions`` function from the settings of that moment, never
at import; the checks, which depend on none, are module-level."""
