"""The daily job and its two schedules (yesterday after midnight, and a late-data re-run), and
the raw layer's pruning job and schedule: made from the settings when the definitions are
built, never at import."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from cdr_pipeline.operations import prune_raw
from cdr_pipeline.resources import CdrStorageResource
from cdr_pipeline.retention import clear_old_days
from cdr_pipeline.settings import Settings, load_settings

DAILY_JOB = "cdr_daily_job"

# Its partitions are its assets' (one daily partitions definition, from the settings).
# Freshness is the freshness sensor's to judge, for the latest day only: inside a run (a
# backfill of old days above all) it would warn about the day being run, not the late one.
FRESHNESS = dg.AssetCheckKey(dg.AssetKey("cdr"), "freshness_check")
cdr_daily_job = dg.define_asset_job(
    DAILY_JOB,
    selection=dg.AssetSelection.groups("cdr") - dg.AssetSelection.checks(FRESHNESS),
    description="Fetch, validate and summarize the CDRs of one day (or a range).",
)

REBUILD_JOB = "cdr_rebuild_job"
cdr_rebuild_job = dg.define_asset_job(
    REBUILD_JOB,
    selection=dg.AssetSelection.groups("cdr")
    - dg.AssetSelection.assets("raw_cdr")
    - dg.AssetSelection.checks(FRESHNESS),
    description="Re-build the datasets of a day (or a range) from its raw layer, asking the "
    "API nothing: after an erasure (cdr-pipeline erase), or to apply new code to old days.",
)


def _days_before(context: dg.ScheduleEvaluationContext, timezone: str, days: int) -> str:
    tick = context.scheduled_execution_time.astimezone(ZoneInfo(timezone))
    return (tick.date() - timedelta(days=days)).isoformat()


def daily_schedules(settings: Settings) -> list[dg.ScheduleDefinition]:
    """Yesterday at 00:20, and the day ``CDR_LATE_DAYS`` back at 03:40, in ``CDR_TIMEZONE``."""
    zone, late = settings.timezone, settings.late_days

    # (dg.build_schedule_from_partitioned_job would do, but it calls an API Dagster deprecates.)
    @dg.schedule(
        name="cdr_daily_schedule",
        job=cdr_daily_job,
        cron_schedule="20 0 * * *",
        execution_timezone=zone,
        description="Materializes the day that just ended, at 00:20 in CDR_TIMEZONE.",
    )
    def cdr_daily_schedule(context: dg.ScheduleEvaluationContext):
        key = _days_before(context, zone, 1)
        return dg.RunRequest(run_key=key, partition_key=key)

    @dg.schedule(
        name="cdr_late_data_schedule",
        job=cdr_daily_job,
        cron_schedule="40 3 * * *",
        execution_timezone=zone,
        description=f"Re-materializes the day {late} days back to pick up late CDRs.",
    )
    def cdr_late_data_schedule(context: dg.ScheduleEvaluationContext):
        key = _days_before(context, zone, late)
        if key < settings.start_date:
            return dg.SkipReason(f"{key} is before the first partition")
        tags = {"cdr/late_data": "true"}
        return dg.RunRequest(run_key=f"late-{key}", partition_key=key, tags=tags)

    return [cdr_daily_schedule, cdr_late_data_schedule]


def prune_definitions(settings: Settings) -> dg.Definitions:
    """The retentions: a job that prunes the raw layer and clears old days of clear numbers,
    and its schedule (on only when ``CDR_RAW_RETENTION_DAYS`` or ``CDR_CLEAR_RETENTION_DAYS``
    is set)."""
    ops = settings.operations
    retention, clear = ops.raw_retention_days, ops.clear_retention_days

    @dg.op(
        description="Removes the raw bodies of days older than CDR_RAW_RETENTION_DAYS, each day "
        "under its lease (manifest first); the validated datasets stay. Clears days older than "
        "CDR_CLEAR_RETENTION_DAYS of clear numbers (docs/privacy.md)."
    )
    def prune_raw_layer(
        context: dg.OpExecutionContext, cdr_storage: CdrStorageResource
    ) -> dg.Output:
        now = datetime.now(UTC)
        done = prune_raw(cdr_storage.store, cdr_storage.tz, retention, now=now)
        context.log.info(done.said())
        cleared = clear_old_days(
            cdr_storage.store,
            cdr_storage.tz,
            clear,
            cdr_storage.pseudonyms,
            ops.clear_retention,
            now=now,
        )
        if clear:
            context.log.info(cleared.said())
        return dg.Output(
            None,
            metadata={
                "removed_days": len(done.removed),
                "removed_files": sum(done.removed.values()),
                "days": ", ".join(sorted(done.removed)) or "none",
                "busy_days": ", ".join(done.busy + cleared.busy) or "none",
                "cleared_days": ", ".join(cleared.days) or "none",
            },
        )

    @dg.job(
        name="cdr_prune_raw_job",
        description="Prunes the raw layer (CDR_RAW_RETENTION_DAYS) and clears old days of "
        "clear numbers (CDR_CLEAR_RETENTION_DAYS).",
    )
    def cdr_prune_raw_job() -> None:
        prune_raw_layer()

    on = bool(retention or clear)
    said = f"raw days older than {retention or '(forever: off)'} days"
    if clear:
        said += f", clear numbers of days older than {clear} days"

    @dg.schedule(
        name="cdr_prune_raw_schedule",
        job=cdr_prune_raw_job,
        cron_schedule="10 5 * * *",
        execution_timezone=settings.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING if on else dg.DefaultScheduleStatus.STOPPED,
        description=f"Prunes {said}, at 05:10.",
    )
    def cdr_prune_raw_schedule(context: dg.ScheduleEvaluationContext):
        if not on:
            return dg.SkipReason(
                "CDR_RAW_RETENTION_DAYS and CDR_CLEAR_RETENTION_DAYS are 0: kept forever"
            )
        return dg.RunRequest(run_key=context.scheduled_execution_time.isoformat())

    return dg.Definitions(jobs=[cdr_prune_raw_job], schedules=[cdr_prune_raw_schedule])


@dg.definitions
def schedules() -> dg.Definitions:
    settings = load_settings()
    return dg.Definitions.merge(
        dg.Definitions(jobs=[cdr_daily_job, cdr_rebuild_job], schedules=daily_schedules(settings)),
        prune_definitions(settings),
    )
