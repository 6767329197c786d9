"""The daily job and its two schedules: yesterday after midnight, and a late-data re-run."""

from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg

DAILY_JOB = "cdr_daily_job"


def build_schedules(
    partitions_def: dg.DailyPartitionsDefinition, late_days: int
) -> tuple[Any, list[dg.ScheduleDefinition]]:
    job = dg.define_asset_job(
        DAILY_JOB,
        selection=dg.AssetSelection.groups("cdr"),
        description="Fetch, validate and summarize the CDRs of one day (or a range).",
    )
    # Runs at 00:20 in the partitions' zone and targets the day that just ended.
    daily = dg.build_schedule_from_partitioned_job(
        job, name="cdr_daily_schedule", hour_of_day=0, minute_of_hour=20
    )

    @dg.schedule(
        name="cdr_late_data_schedule",
        job=job,
        cron_schedule="40 3 * * *",
        execution_timezone=partitions_def.timezone,
        description=f"Re-materializes the day {late_days} days back to pick up late CDRs.",
    )
    def late_data(context: dg.ScheduleEvaluationContext):
        tick = context.scheduled_execution_time.astimezone(ZoneInfo(partitions_def.timezone))
        key = (tick.date() - timedelta(days=late_days)).isoformat()
        if key < partitions_def.start.date().isoformat():
            return dg.SkipReason(f"{key} is before the first partition")
        return dg.RunRequest(
            run_key=f"late-{key}", partition_key=key, tags={"cdr/late_data": "true"}
        )

    return job, [daily, late_data]
