"""The daily assets: thin glue between Dagster and :mod:`cdr_pipeline.daily`.

``raw_cdr`` fetches a day's bodies as received; ``cdr_day`` turns them into the day's four
datasets, published together as one version. Every asset loops over the partitions of its
run (one day, or a range in a single-run backfill) and records each day's figures against
that day's partition; totals of a run go to its log.
"""

from collections import Counter
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pyarrow as pa
from pydantic import Field

from cdr_pipeline import storage
from cdr_pipeline.api.client import CdrApiClient
from cdr_pipeline.api.errors import CdrApiError, RetriesExhaustedError
from cdr_pipeline.daily import Day, ShrinkRefused, ValidatedDay, fetch_raw_day, validate_day
from cdr_pipeline.defs.partitions import SETTINGS, daily_partitions
from cdr_pipeline.report import (
    TREND_DAYS,
    days_back,
    kpi_history,
    load_markdown,
    markdown_table,
    png_markdown,
    sparkline_markdown,
    trend_png,
)
from cdr_pipeline.resources import CdrAnalyticsResource, CdrApiResource, CdrStorageResource
from cdr_pipeline.transform.analytics import (
    DESTINATIONS_SCHEMA,
    FLAGS,
    HOURLY_SCHEMA,
    RISK_SCHEMA,
    Analytics,
)
from cdr_pipeline.transform.summarize import KPI_SCHEMA, OUTCOME_SCHEMA
from cdr_pipeline.transform.validate import ACCOUNTING_BUCKETS, CDR_SCHEMA, REJECTS_SCHEMA

GROUP = "cdr"
PREVIEW_ROWS = 10
OWNERS = ["team:data-platform"]
API_POOL = "cdr_api"
BACKFILL = dg.BackfillPolicy.single_run()


def column_schema(schema: pa.Schema) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                f.name,
                str(f.type),
                description=(f.metadata or {}).get(b"description", b"").decode() or None,
                constraints=dg.TableColumnConstraints(nullable=f.nullable),
            )
            for f in schema
        ]
    )


def days_of(context: dg.AssetExecutionContext) -> Iterator[Day]:
    for key in context.partition_keys:
        window = daily_partitions.time_window_for_partition_key(key)
        yield Day.from_datetimes(key, window.start, window.end)


def _api_failure(exc: CdrApiError, day: Day) -> dg.Failure:
    exc.with_partition(day.key)
    return dg.Failure(
        description=str(exc),
        metadata={
            "partition": day.key,
            "api_code": exc.code or "",
            "error_kind": exc.kind,
            "retryable": isinstance(exc, RetriesExhaustedError),
        },
        # A fatal code (-423 above all) must not be re-sent by Dagster's retry policy;
        # only a provider that kept failing transiently is worth another try later.
        allow_retries=isinstance(exc, RetriesExhaustedError),
    )


@dg.asset(
    group_name=GROUP,
    kinds={"python", "json"},
    owners=OWNERS,
    partitions_def=daily_partitions,
    backfill_policy=BACKFILL,
    retry_policy=dg.RetryPolicy(
        max_retries=SETTINGS.fetch_retries,
        delay=SETTINGS.fetch_retry_delay_s,
        backoff=dg.Backoff.EXPONENTIAL,
        jitter=dg.Jitter.PLUS_MINUS,
    ),
    pool=API_POOL,
    description="Every getCdr response body of the day exactly as received, with a manifest.",
)
def raw_cdr(
    context: dg.AssetExecutionContext, cdr_api: CdrApiResource, cdr_storage: CdrStorageResource
) -> dg.MaterializeResult:
    if cdr_api.uses_simulator:
        context.log.warning(
            "CDR_API_URL is not set: these CDRs come from the built-in simulator, not the API"
        )
    records = 0
    days = list(days_of(context))
    try:
        with cdr_api.open_client(cdr_storage.timezone) as client:
            for day in days:
                manifest = _fetch(context, client, cdr_api, cdr_storage, day)
                t = manifest["totals"]
                records += t["records"]
                context.log.info(
                    "%s: %d records in %d pages (%d requests, %d retries, %d splits)",
                    day.key,
                    t["records"],
                    t["pages"],
                    t["http_requests"],
                    t["retries"],
                    t["window_splits"],
                )
                context.add_asset_metadata(
                    {
                        **{f"fetch/{k}": v for k, v in t.items()},
                        "window_utc": " .. ".join(manifest["day_window_utc"]),
                        "sub_windows": len(manifest["fetch_windows"]),
                        "endpoint": manifest["endpoint"],
                        "path": dg.MetadataValue.path(
                            cdr_storage.store.uri(storage.raw_day_key(day.key))
                        ),
                    },
                    partition_key=day.key,
                )
    except BaseException:
        for day in days:  # held until cdr_day publishes them, unless this step fails
            cdr_storage.release(day.key, context.run.run_id)
        raise
    selection = context.run.asset_selection
    if selection is not None and dg.AssetKey("cdr") not in selection:
        for day in days:  # no cdr_day in this run to publish them
            cdr_storage.release(day.key, context.run.run_id)
    context.log.info("run total: %d records fetched", records)
    return dg.MaterializeResult()


def _fetch(
    context: dg.AssetExecutionContext,
    client: CdrApiClient,
    cdr_api: CdrApiResource,
    cdr_storage: CdrStorageResource,
    day: Day,
) -> dict[str, Any]:
    """One day's raw layer, the day held for this run; every way it can fail, said once."""
    try:
        cdr_storage.take(day.key, context.run.run_id)
        return fetch_raw_day(client, cdr_storage.store, day, endpoint=cdr_api.endpoint_label())
    except CdrApiError as exc:
        raise _api_failure(exc, day) from None
    except storage.DayBusy as exc:
        raise dg.Failure(str(exc), metadata={"partition": day.key}, allow_retries=False) from None
    except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError):
        # Dagster re-runs an interrupted step under its retry policy (for preempted pods);
        # an operator's Ctrl-C or SIGTERM means stop.
        raise dg.Failure(
            f"{day.key}: interrupted while fetching (Ctrl-C or SIGTERM); requests in flight "
            "were abandoned and nothing new was published",
            metadata={"partition": day.key, "interrupted": True},
            allow_retries=False,
        ) from None
    except OSError as exc:
        raise dg.Failure(
            f"{day.key}: could not write the raw layer: {exc}. This is a problem of this "
            "machine (disk space, permissions), not of the provider: it is not retried, and "
            "no partial day was left behind",
            metadata={"partition": day.key, "path": str(exc.filename or "")},
            allow_retries=False,
        ) from None


class DayConfig(dg.Config):
    """Run config of ``cdr_day``."""

    allow_shrink: bool = Field(
        default=False,
        description="publish even if the day loses more valid calls than CDR_MAX_SHRINK allows "
        "(or all of them): for a provider that really holds fewer",
    )


def _spec(name: str, schema: pa.Schema, description: str) -> dg.AssetSpec:
    return dg.AssetSpec(
        name,
        deps=[raw_cdr],
        group_name=GROUP,
        kinds={"parquet", "pyarrow"},
        owners=OWNERS,
        description=description,
        metadata={"dagster/column_schema": column_schema(schema)},
    )


@dg.multi_asset(
    specs=[
        _spec("cdr", CDR_SCHEMA, "Validated, typed, de-duplicated CDRs of the day."),
        _spec("cdr_rejects", REJECTS_SCHEMA, "Every record that failed validation, with why."),
        _spec(
            "call_outcome_daily",
            OUTCOME_SCHEMA,
            "Calls and billed seconds by call type and end status.",
        ),
        _spec(
            "call_kpis_daily",
            KPI_SCHEMA,
            "One row of call KPIs per day (connect rate, ACD, ALOC, PDD, billing "
            "reconciliation, ...).",
        ),
        _spec(
            "call_destinations_daily",
            DESTINATIONS_SCHEMA,
            "Where calls go: calls, connect rate, billed seconds and ACD by destination country "
            "and number type.",
        ),
        _spec(
            "call_load_hourly",
            HOURLY_SCHEMA,
            "The load of each clock hour of the local day: attempts, talk, Erlangs, peak "
            "simultaneous calls, the busy hour.",
        ),
        _spec(
            "caller_risk_daily",
            RISK_SCHEMA,
            "Callers whose traffic looks like abuse (burst, fan_out, repeat_target, "
            "short_ring_unanswered, premium_night), with the signals behind the flags.",
        ),
    ],
    partitions_def=daily_partitions,
    backfill_policy=BACKFILL,
    description="The raw layer of a day to its datasets, published as one version: a reader "
    "sees all of them from this run or all from the previous one.",
)
def cdr_day(
    context: dg.AssetExecutionContext,
    config: DayConfig,
    cdr_storage: CdrStorageResource,
    cdr_analytics: CdrAnalyticsResource,
) -> Iterator[dg.MaterializeResult]:
    charted: dict[str, Any] = {}  # KPI rows read for the charts, each day's file once
    fetched = valid = 0
    max_shrink = None if config.allow_shrink else cdr_storage.max_shrink
    held = list(days_of(context))  # the days this run still holds
    try:
        while held:
            day = held[0]
            try:
                cdr_storage.take(day.key, context.run.run_id)  # held since raw_cdr, or taken now
                result = validate_day(
                    cdr_storage.store,
                    day,
                    cdr_storage.tz,
                    max_shrink=max_shrink,
                    analytics=cdr_analytics,
                )
            except (ShrinkRefused, storage.DayBusy) as exc:
                raise dg.Failure(str(exc), allow_retries=False) from None
            cdr_storage.release(held.pop(0).key, context.run.run_id)
            acc = result.accounting
            fetched, valid = fetched + acc["fetched"], valid + acc["valid"]
            for key, metadata in _day_metadata(day, result, cdr_storage, charted).items():
                context.add_asset_metadata(metadata, asset_key=key, partition_key=day.key)
    finally:
        for day in held:  # a failure: the rest is not this run's to publish any more
            cdr_storage.release(day.key, context.run.run_id)
    context.log.info("run total: %d records fetched, %d valid calls published", fetched, valid)
    for spec in context.assets_def.specs:
        yield dg.MaterializeResult(asset_key=spec.key)


def _day_metadata(
    day: Day, result: ValidatedDay, cdr_storage: CdrStorageResource, charted: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Each dataset's metadata for one day: counts, where its file is, a preview."""
    acc = result.accounting
    path = {k: dg.MetadataValue.path(str(v)) for k, v in result.paths.items()}
    row = {"date": day.key, **{k: acc[k] for k in ("fetched", *ACCOUNTING_BUCKETS)}}
    reasons = acc["rejects_by_reason"]
    kpis = result.kpis
    charted.pop(day.key, None)  # just rewritten
    history = kpi_history(cdr_storage.store, days_back(day.key, TREND_DAYS), charted)
    title = f"last {TREND_DAYS} days to {day.key}"
    return {
        "cdr": {
            "dagster/row_count": acc["valid"],
            **{
                f"accounting/{k}": acc[k]
                for k in ("fetched", *ACCOUNTING_BUCKETS, "duplicates_exact")
            },
            "accounting/duplicates_conflicting": acc["duplicates_conflicting"],
            **{f"timing/{k}": round(v, 3) for k, v in result.timings.items()},
            "path": path["cdr"],
            "preview": dg.MetadataValue.md(markdown_table([row])),
        },
        "cdr_rejects": {
            "dagster/row_count": acc["rejected"],
            **{f"rejects/{r}": n for r, n in reasons.items()},
            "path": path["cdr_rejects"],
            "preview": dg.MetadataValue.md(
                markdown_table([{"reason": r, "records": n} for r, n in reasons.items()])
            ),
        },
        "call_outcome_daily": {
            "dagster/row_count": result.outcome.num_rows,
            "path": path["call_outcome_daily"],
            "preview": dg.MetadataValue.md(markdown_table(result.outcome.to_pylist())),
        },
        "call_kpis_daily": {
            # in place on the partition's page; the full chart one click further
            "trend": dg.MetadataValue.md(sparkline_markdown(history)),
            "trend_chart": dg.MetadataValue.md(
                png_markdown(trend_png(history, title=title), f"KPI trend, {title}")
            ),
            **{
                f"kpi/{k}": round(v, 4) if isinstance(v, float) else v
                for k, v in kpis.items()
                if v is not None
            },
            "path": path["call_kpis_daily"],
            "preview": dg.MetadataValue.md(
                markdown_table([{"kpi": k, "value": v} for k, v in kpis.items()])
            ),
        },
        **_analytics_metadata(result.analytics, path),
    }


def _analytics_metadata(found: Analytics, path: dict[str, Any]) -> dict[str, dict[str, Any]]:
    hourly = found.hourly.to_pylist()
    busy = next((h for h in hourly if h["busy_hour"]), None)
    risk = found.risk.to_pylist()
    flags = Counter(f for row in risk for f in row["flags"])
    return {
        "call_destinations_daily": {
            "dagster/row_count": found.destinations.num_rows,
            "path": path["call_destinations_daily"],
            "preview": dg.MetadataValue.md(
                markdown_table(found.destinations.slice(0, PREVIEW_ROWS).to_pylist())
            ),
        },
        "call_load_hourly": {
            "dagster/row_count": found.hourly.num_rows,
            # in place on the partition's page: the day's Erlangs, hour by hour
            "load": dg.MetadataValue.md(load_markdown(hourly)),
            "busy_hour": busy["local_hour"] if busy else -1,
            "busy_hour_erlangs": round(busy["erlangs"], 3) if busy else 0.0,
            "peak_concurrent_calls": max((h["peak_concurrent_calls"] for h in hourly), default=0),
            "path": path["call_load_hourly"],
            "preview": dg.MetadataValue.md(markdown_table(hourly)),
        },
        "caller_risk_daily": {
            "dagster/row_count": len(risk),
            **{f"flagged/{f}": flags.get(f, 0) for f in FLAGS},
            "path": path["caller_risk_daily"],
            "preview": dg.MetadataValue.md(
                markdown_table([{**r, "flags": ", ".join(r["flags"])} for r in risk[:PREVIEW_ROWS]])
                if risk
                else "no caller flagged"
            ),
        },
    }
