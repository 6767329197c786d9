"""The daily job and its two schedules (yesterday after midnight, and a late-data re-run), and
the raw layer's pruning job and schedule."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from cdr_pipeline.defs.partitions import SETTINGS, daily_partitions
from cdr_pipeline.operations import prune_raw
from cdr_pipeline.resources import CdrStorageResource

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


# --- the raw layer's retention -----------------------------------------------------------------

RETENTION = SETTINGS.operations.raw_retention_days


@dg.op(
    description="Removes the raw bodies of days older than CDR_RAW_RETENTION_DAYS, each day "
    "under its lease (manifest first); the validated datasets stay."
)
def prune_raw_layer(context: dg.OpExecutionContext, cdr_storage: CdrStorageResource) -> dg.Output:
    done = prune_raw(cdr_storage.store, cdr_storage.tz, RETENTION, now=datetime.now(UTC))
    context.log.info(done.said())
    return dg.Output(
        None,
        metadata={
            "removed_days": len(done.removed),
            "removed_files": sum(done.removed.values()),
            "days": ", ".join(sorted(done.removed)) or "none",
            "busy_days": ", ".join(done.busy) or "none",
        },
    )


@dg.job(name="cdr_prune_raw_job", description="Prunes the raw layer (CDR_RAW_RETENTION_DAYS).")
def cdr_prune_raw_job() -> None:
    prune_raw_layer()


@dg.schedule(
    name="cdr_prune_raw_schedule",
    job=cdr_prune_raw_job,
    cron_schedule="10 5 * * *",
    execution_timezone=SETTINGS.timezone,
    default_status=dg.DefaultScheduleStatus.RUNNING
    if RETENTION
    else dg.DefaultScheduleStatus.STOPPED,
    description=f"Prunes raw days older than {RETENTION or '(forever: off)'} days, at 05:10.",
)
def cdr_prune_raw_schedule(context: dg.ScheduleEvaluationContext):
    if not RETENTION:
        return dg.SkipReason("CDR_RAW_RETENTION_DAYS is 0: raw bodies are kept forever")
    return dg.RunRequest(run_key=context.scheduled_execution_time.isoformat())
