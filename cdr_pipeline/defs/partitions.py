"""The daily partitions: one per local calendar day in ``CDR_TIMEZONE`` from
``CDR_START_DATE``; today's is not offered until it is complete. Made from the settings the
definitions are built with (never at import); the same settings give the same object."""

from functools import cache

import dagster as dg

from cdr_pipeline.settings import Settings


@cache
def daily_partitions(start_date: str, timezone: str) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=start_date, timezone=timezone, end_offset=0)


def partitions_for(settings: Settings) -> dg.DailyPartitionsDefinition:
    return daily_partitions(settings.start_date, settings.timezone)
