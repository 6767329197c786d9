"""Daily partitions in the configured time zone."""

import dagster as dg


def daily_partitions(start_date: str, timezone: str) -> dg.DailyPartitionsDefinition:
    """One partition per local calendar day; today's is not offered until it is complete."""
    return dg.DailyPartitionsDefinition(start_date=start_date, timezone=timezone, end_offset=0)
