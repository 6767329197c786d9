"""The daily job and its two schedules: yesterday after midnight, and a late-data re-run."""

from datetime import timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from cdr_pipeline.defs.partitions import SETTINGS, daily_partitions

DAILY_JOB = "cdr_daily_job"

cdr_daily_job = dg.define_asset_job(
    DAILY_JOB,
    selection=dg.AssetSelection.groups("cdr"),
    partitions_def=daily_partitions,
    description="Fetch, validate and summarize the CDRs of one day (or a range).",
)


def _days_before(context: dg.ScheduleEvaluationContext, days: int) -> str:
    tick = context.scheduled_execution_time.astimezone(ZoneInfo(SETTINGS.timezone))
    return (tick.date() - timedelta(days=days)).isoformat()


# (dg.build_schedule_from_partitioned_job would do, but it calls an API Dagster deprecates.)
@dg.schedule(
    name="cdr_daily_schedule",
    job=cdr_daily_job,
    cron_schedule="20 0 * * *",
    execution_timezone=SETTINGS.timezone,
    description="Materializes the day that just ended, at 00:20 in CDR_TIMEZONE.",
)
def cdr_daily_schedule(context: dg.ScheduleEvaluationContext):
    key = _days_before(context, 1)
    return dg.RunRequest(run_key=key, partition_key=key)


@dg.schedule(
    name="cdr_late_data_schedule",
    job=cdr_daily_job,
    cron_schedule="40 3 * * *",
    execution_timezone=SETTINGS.timezone,
    description=f"Re-materializes the day {SETTINGS.late_days} days back to pick up late CDRs.",
)
def cdr_late_data_schedule(context: dg.ScheduleEvaluationContext):
    key = _days_before(context, SETTINGS.late_days)
    if key < SETTINGS.start_date:
        return dg.SkipReason(f"{key} is before the first partition")
    return dg.RunRequest(run_key=f"late-{key}", partition_key=key, tags={"cdr/late_data": "true"})
