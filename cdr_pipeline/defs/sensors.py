"""Running unattended: alerts for failed runs and checks, freshness, and catch-up after
downtime. Thin glue: the rules live in ``operations.py`` and ``alerts.py``.

The alert sensor runs as soon as CDR_ALERT_WEBHOOK_URL is set; the catch-up and freshness
sensors, like the schedules, are started in the UI (or `dagster sensor start`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import dagster as dg

from cdr_pipeline import alerts, operations
from cdr_pipeline.defs import schedules
from cdr_pipeline.defs.partitions import partitions_for
from cdr_pipeline.settings import OperationsSettings, Settings, load_settings

CDR = dg.AssetKey("cdr")
_STATUS = {
    dg.AssetPartitionStatus.MATERIALIZED: operations.FINE,
    dg.AssetPartitionStatus.FAILED: operations.FAILED,
    dg.AssetPartitionStatus.IN_PROGRESS: operations.RUNNING,
}
MAX_RUNS_PER_TICK = 50
LOOK_BACK_S = 600
KEEP_SENT = 500  # alert keys remembered, so a restarted tick never says one twice


def partition_status(
    instance: dg.DagsterInstance, days: list[str], partitions: dg.PartitionsDefinition
) -> dict[str, str | None]:
    """What Dagster knows of each day of ``cdr``, in the words of ``operations``."""
    found = instance.get_status_by_partition(CDR, days, partitions) or {}
    return {day: _STATUS.get(found.get(day)) for day in days}


# --- freshness: Dagster's own per-partition check, run by its sensor ---------------------------


def freshness(settings: Settings) -> dg.Definitions:
    hour, minute = settings.operations.freshness_deadline.split(":")
    checks = dg.build_time_partition_freshness_checks(
        assets=[CDR],
        deadline_cron=f"{int(minute)} {int(hour)} * * *",
        timezone=settings.timezone,
        severity=dg.AssetCheckSeverity.WARN,
    )
    sensor = dg.build_sensor_for_freshness_checks(
        freshness_checks=checks, name="cdr_freshness_sensor", minimum_interval_seconds=300
    )
    return dg.Definitions(asset_checks=checks, sensors=[sensor])


# --- catch-up ----------------------------------------------------------------------------


def catch_up_sensor(settings: Settings) -> dg.SensorDefinition:
    ops, partitions = settings.operations, partitions_for(settings)

    @dg.sensor(
        name="cdr_catch_up_sensor",
        job=schedules.cdr_daily_job,
        minimum_interval_seconds=600,
        description=f"Materializes the days of the last CDR_CATCHUP_DAYS ({ops.catchup_days}) "
        "that are missing or failed, one run per day (the cdr_api pool caps how many fetch at "
        "once); days that are fine or running are left alone.",
    )
    def cdr_catch_up_sensor(context: dg.SensorEvaluationContext):
        window = operations.complete_days(
            datetime.now(UTC), settings.storage.tz, ops.catchup_days, settings.start_date
        )
        status = partition_status(context.instance, window, partitions)
        days = operations.catch_up_plan(window, status)
        if not days:
            return dg.SkipReason(f"the last {len(window)} days are materialized or running")
        return [
            # a new key after each failure, so a day that failed again is tried again
            dg.RunRequest(
                run_key=f"catch-up:{day}:{status[day] or 'missing'}:{_last_run(context, day)}",
                partition_key=day,
                tags={"cdr/catch_up": "true"},
            )
            for day in days
        ]

    return cdr_catch_up_sensor


def _last_run(context: dg.SensorEvaluationContext, day: str) -> str:
    runs = context.instance.get_runs(
        filters=dg.RunsFilter(job_name=schedules.DAILY_JOB, tags={"dagster/partition": day}),
        limit=1,
    )
    return runs[0].run_id[:8] if runs else "none"


# --- alerts --------------------------------------------------------------------------------


def alert_sensor(ops: OperationsSettings, partitions: dg.PartitionsDefinition):
    @dg.sensor(
        name="cdr_alert_sensor",
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING
        if ops.alert_webhook_url
        else dg.DefaultSensorStatus.STOPPED,
        description="Posts every failed run (once per failed partition, not per retry) and "
        "every failed check (ERROR or WARN) to CDR_ALERT_WEBHOOK_URL.",
    )
    def cdr_alert_sensor(context: dg.SensorEvaluationContext):
        if not ops.alert_webhook_url:
            return dg.SkipReason("CDR_ALERT_WEBHOOK_URL is not set")
        cursor = json.loads(context.cursor) if context.cursor else {}
        # at first, what finished in the last LOOK_BACK_S: a run that failed just before the
        # sensor's first tick is still said
        after = cursor.get("after", datetime.now(UTC).timestamp() - LOOK_BACK_S)
        sent: list[str] = cursor.get("sent", [])
        records = context.instance.get_run_records(
            filters=dg.RunsFilter(
                statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE],
                updated_after=datetime.fromtimestamp(after, UTC),
            ),
            order_by="update_timestamp",
            ascending=True,
            limit=MAX_RUNS_PER_TICK,
        )
        due: list[alerts.Alert] = []
        for record in records:
            run = _finished(context.instance, record.dagster_run, partitions)
            due += [a for a in alerts.run_alerts(run, ops.ui_url) if a.key() not in sent]
            after = max(after, record.update_timestamp.timestamp())
        posted = alerts.post(ops.alert_webhook_url, due, ops.alert_format) if due else None
        if posted:
            # said (or perhaps said) once is enough; the rest are looked at again next tick
            sent = (sent + [a.key() for a in posted.said])[-KEEP_SENT:]
            if posted.retry:
                after = min(after, min(r.update_timestamp.timestamp() for r in records) - 1e-6)
        context.update_cursor(json.dumps({"after": after, "sent": sent}))
        if posted is None:
            return dg.SkipReason("nothing failed")
        said, retry = len(posted.said), len(posted.retry)
        return dg.SkipReason(f"posted {said} alert(s), {retry} to retry")

    return cdr_alert_sensor


def _finished(
    instance: dg.DagsterInstance, run: dg.DagsterRun, partitions: dg.PartitionsDefinition
) -> alerts.FinishedRun:
    assert isinstance(partitions, dg.TimeWindowPartitionsDefinition)
    tz = ZoneInfo(partitions.timezone)
    failed = run.status == dg.DagsterRunStatus.FAILURE
    error = ""
    checks = []
    wanted = {
        dg.DagsterEventType.STEP_FAILURE,
        dg.DagsterEventType.RUN_FAILURE,
        dg.DagsterEventType.ASSET_CHECK_EVALUATION,
    }
    for entry in instance.all_logs(run.run_id, of_type=wanted):
        event = entry.dagster_event
        if event is None:
            continue
        if failed and not error and event.is_step_failure:
            error = event.step_failure_data.error.message if event.step_failure_data.error else ""
        if failed and not error and event.event_type == dg.DagsterEventType.RUN_FAILURE:
            error = entry.message
        if event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            meta = evaluation.metadata
            days = meta.get("failed_days")
            tick = meta.get("dagster/latest_cron_tick_timestamp")  # the freshness check's
            overdue = [operations.overdue_day(tick.value, tz)] if tick and not days else []
            checks.append(
                alerts.CheckOutcome(
                    asset=evaluation.asset_key.to_user_string(),
                    check=evaluation.check_name,
                    passed=evaluation.passed,
                    severity=evaluation.severity.value,
                    failed_days=str(days.value).split(",") if days and days.value else overdue,
                    finding=evaluation.description
                    or "; ".join(f"{k}: {v.value}" for k, v in meta.items())[:500],
                )
            )
    return alerts.FinishedRun(
        run_id=run.run_id,
        job=run.job_name,
        failed=failed,
        will_retry=run.tags.get("dagster/will_retry") == "true",
        partitions=_partitions(run, partitions),
        error=error or "the run failed (see its log)",
        checks=checks,
    )


def _partitions(run: dg.DagsterRun, partitions: dg.PartitionsDefinition) -> list[str]:
    tags = run.tags
    if "dagster/partition" in tags:
        return [tags["dagster/partition"]]
    start = tags.get("dagster/asset_partition_range_start")
    end = tags.get("dagster/asset_partition_range_end")
    if start and end:
        return partitions.get_partition_keys_in_range(dg.PartitionKeyRange(start, end))
    return []


@dg.definitions
def sensors() -> dg.Definitions:
    settings = load_settings()
    unattended = [
        catch_up_sensor(settings),
        alert_sensor(settings.operations, partitions_for(settings)),
    ]
    return dg.Definitions.merge(freshness(settings), dg.Definitions(sensors=unattended))
