"""The daily assets: thin glue between Dagster and :mod:`cdr_pipeline.daily`.

Every asset loops over the partitions of its run (one day, or a range in a single-run
backfill) and records each day's own figures against that day's partition.
"""

import warnings
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pyarrow as pa

from cdr_pipeline import storage
from cdr_pipeline.api.errors import CdrApiError, RetriesExhaustedError
from cdr_pipeline.daily import Day, fetch_raw_day, kpis_day, outcome_day, validate_day
from cdr_pipeline.defs.resources import CdrApiResource, CdrStorageResource
from cdr_pipeline.report import (
    TREND_DAYS,
    days_back,
    format_cell,
    kpi_history,
    png_markdown,
    trend_png,
)
from cdr_pipeline.transform.summarize import KPI_SCHEMA, OUTCOME_SCHEMA
from cdr_pipeline.transform.validate import ACCOUNTING_BUCKETS, CDR_SCHEMA, REJECTS_SCHEMA

GROUP = "cdr"
OWNERS = ["team:data-platform"]
API_POOL = "cdr_api"

warnings.filterwarnings("ignore", category=dg.BetaWarning)


def column_schema(schema: pa.Schema) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                f.name, str(f.type), constraints=dg.TableColumnConstraints(nullable=f.nullable)
            )
            for f in schema
        ]
    )


def days_of(
    context: dg.AssetExecutionContext, partitions_def: dg.TimeWindowPartitionsDefinition
) -> Iterator[Day]:
    for key in context.partition_keys:
        window = partitions_def.time_window_for_partition_key(key)
        yield Day.from_datetimes(key, window.start, window.end)


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_no rows_"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(row[c]) for c in cols) + " |")
    return "\n".join(lines)


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


def build_assets(partitions_def: dg.TimeWindowPartitionsDefinition) -> list[dg.AssetsDefinition]:
    backfill = dg.BackfillPolicy.single_run()

    @dg.asset(
        name="raw_cdr",
        group_name=GROUP,
        kinds={"python", "json"},
        owners=OWNERS,
        partitions_def=partitions_def,
        backfill_policy=backfill,
        retry_policy=dg.RetryPolicy(
            max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
        ),
        pool=API_POOL,
        description="Every getCdr response body of the day exactly as received, with a manifest.",
    )
    def raw_cdr(
        context: dg.AssetExecutionContext, cdr_api: CdrApiResource, cdr_storage: CdrStorageResource
    ) -> dg.MaterializeResult:
        totals: dict[str, int] = {}
        if cdr_api.uses_simulator:
            context.log.warning(
                "CDR_API_URL is not set: these CDRs come from the built-in simulator, not the API"
            )
        with cdr_api.open_client(cdr_storage.timezone) as client:
            for day in days_of(context, partitions_def):
                try:
                    manifest = fetch_raw_day(
                        client,
                        cdr_storage.store,
                        day,
                        window_hours=cdr_api.window_hours,
                        margin_s=cdr_api.margin_s,
                        endpoint=cdr_api.endpoint_label(),
                    )
                except CdrApiError as exc:
                    raise _api_failure(exc, day) from None
                t = manifest["totals"]
                for k, v in t.items():
                    totals[k] = totals.get(k, 0) + v
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
        return dg.MaterializeResult(metadata={f"run_total/{k}": v for k, v in totals.items()})

    @dg.multi_asset(
        specs=[
            dg.AssetSpec(
                "cdr",
                deps=[raw_cdr],
                group_name=GROUP,
                kinds={"parquet", "pyarrow"},
                owners=OWNERS,
                description="Validated, typed, de-duplicated CDRs of the day.",
                metadata={"dagster/column_schema": column_schema(CDR_SCHEMA)},
            ),
            dg.AssetSpec(
                "cdr_rejects",
                deps=[raw_cdr],
                group_name=GROUP,
                kinds={"parquet", "pyarrow"},
                owners=OWNERS,
                description="Every record that failed validation, with its reason.",
                metadata={"dagster/column_schema": column_schema(REJECTS_SCHEMA)},
            ),
        ],
        partitions_def=partitions_def,
        backfill_policy=backfill,
        name="validated_cdr",
    )
    def validated_cdr(
        context: dg.AssetExecutionContext, cdr_api: CdrApiResource, cdr_storage: CdrStorageResource
    ) -> Iterator[dg.MaterializeResult]:
        rows, total = [], {"fetched": 0, "valid": 0, "rejected": 0}
        for day in days_of(context, partitions_def):
            result = validate_day(
                cdr_storage.store, day, cdr_storage.tz, max_bytes=cdr_api.max_body_bytes
            )
            acc = result.accounting
            for k in total:
                total[k] += acc[k]
            row = {
                "date": day.key,
                **{k: acc[k] for k in ("fetched", *ACCOUNTING_BUCKETS)},
            }
            rows.append(row)
            common = {
                "accounting/" + k: acc[k]
                for k in (
                    "fetched",
                    *ACCOUNTING_BUCKETS,
                    "duplicates_exact",
                    "duplicates_conflicting",
                )
            }
            reasons = acc["rejects_by_reason"]
            context.add_asset_metadata(
                {
                    "dagster/row_count": acc["valid"],
                    **common,
                    **{f"timing/{k}": round(v, 3) for k, v in result.timings.items()},
                    "path": dg.MetadataValue.path(str(result.paths["cdr"])),
                    "preview": dg.MetadataValue.md(_markdown_table([row])),
                },
                asset_key="cdr",
                partition_key=day.key,
            )
            context.add_asset_metadata(
                {
                    "dagster/row_count": acc["rejected"],
                    **{f"rejects/{r}": n for r, n in reasons.items()},
                    "path": dg.MetadataValue.path(str(result.paths["cdr_rejects"])),
                    "preview": dg.MetadataValue.md(
                        _markdown_table([{"reason": r, "records": n} for r, n in reasons.items()])
                    ),
                },
                asset_key="cdr_rejects",
                partition_key=day.key,
            )
        yield dg.MaterializeResult(
            asset_key="cdr",
            metadata={f"run_total/{k}": v for k, v in total.items()}
            | {"run_preview": dg.MetadataValue.md(_markdown_table(rows))},
        )
        yield dg.MaterializeResult(asset_key="cdr_rejects")

    # The two summaries share everything but their name, schema and description.
    summary_kwargs = dict(
        deps=["cdr"],
        group_name=GROUP,
        kinds={"parquet", "pyarrow"},
        owners=OWNERS,
        partitions_def=partitions_def,
        backfill_policy=backfill,
    )

    @dg.asset(
        name="call_outcome_daily",
        **summary_kwargs,
        description="Calls and billed seconds by call type and end status.",
        metadata={"dagster/column_schema": column_schema(OUTCOME_SCHEMA)},
    )
    def call_outcome_daily(
        context: dg.AssetExecutionContext, cdr_storage: CdrStorageResource
    ) -> dg.MaterializeResult:
        for day in days_of(context, partitions_def):
            table, path = outcome_day(cdr_storage.store, day)
            context.add_asset_metadata(
                {
                    "dagster/row_count": table.num_rows,
                    "path": dg.MetadataValue.path(str(path)),
                    "preview": dg.MetadataValue.md(_markdown_table(table.to_pylist())),
                },
                partition_key=day.key,
            )
        return dg.MaterializeResult()

    @dg.asset(
        name="call_kpis_daily",
        **summary_kwargs,
        description="One row of call KPIs per day (connect rate, ACD, ALOC, PDD, ...).",
        metadata={"dagster/column_schema": column_schema(KPI_SCHEMA)},
    )
    def call_kpis_daily(
        context: dg.AssetExecutionContext, cdr_storage: CdrStorageResource
    ) -> dg.MaterializeResult:
        rows = []
        charted: dict[str, Any] = {}  # KPI rows read for the charts, each day's file once
        for day in days_of(context, partitions_def):
            values, path = kpis_day(cdr_storage.store, day, cdr_storage.tz)
            rows.append({"date": day.key, **values})
            numeric = {f"kpi/{k}": v for k, v in values.items() if v is not None}
            charted.pop(day.key, None)  # just rewritten
            history = kpi_history(cdr_storage.store, days_back(day.key, TREND_DAYS), charted)
            title = f"last {TREND_DAYS} days to {day.key}"
            context.add_asset_metadata(
                {
                    "trend": dg.MetadataValue.md(
                        png_markdown(trend_png(history, title=title), f"KPI trend, {title}")
                    ),
                    **numeric,
                    "path": dg.MetadataValue.path(str(path)),
                    "preview": dg.MetadataValue.md(_markdown_table(_transpose(values))),
                },
                partition_key=day.key,
            )
        return dg.MaterializeResult(
            metadata={"run_preview": dg.MetadataValue.md(_markdown_table(rows))}
        )

    return [raw_cdr, validated_cdr, call_outcome_daily, call_kpis_daily]


def _transpose(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"kpi": k, "value": v} for k, v in values.items()]
