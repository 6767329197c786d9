"""The settings the definitions are built from, and the daily partitions they give.

Read from the environment when ``dg``/``dagster`` loads the code location; a bad setting
fails the load with a message naming every bad variable."""

import dagster as dg

from cdr_pipeline.settings import load_settings

SETTINGS = load_settings()

# One partition per local calendar day; today's is not offered until it is complete.
daily_partitions = dg.DailyPartitionsDefinition(
    start_date=SETTINGS.start_date, timezone=SETTINGS.timezone, end_offset=0
)
