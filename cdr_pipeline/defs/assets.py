"""The daily assets: thin glue between Dagster and :mod:`cdr_pipeline.raw` and
:mod:`cdr_pipeline.day`.

``raw_cdr`` fetches a day's bodies as received; ``cdr_day`` turns them into the datasets of
the registry (:mod:`cdr_pipeline.datasets`), published together as one version. Every asset
loops over the partitions of its run (one day, or a range in a single-run backfill) and
records each day's figures against that day's partition; totals of a run go to its log.
"""

from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
import pyarrow as pa
from pydantic import Field

from cdr_pipeline.api.client import CdrApiClient
from cdr_pipeline.api.errors import CdrApiError, RetriesExhaustedError
from cdr_pipeline.datasets import DATASETS, Dataset, DayFacts, Markdown, check
from cdr_pipeline.day import build_day
from cdr_pipeline.defs.partitions import partitions_for
from cdr_pipeline.layout import Day, NoSuchDay, parse_day, raw_day_key
from cdr_pipeline.lease import DayBusy, RunLeases
from cdr_pipeline.publish import ShrinkRefused
from cdr_pipeline.raw import OtherSource, fetch_raw_day
from cdr_pipeline.report import TREND_DAYS, days_back, kpi_history
from cdr_pipeline.resources import CdrAnalyticsResource, CdrApiResource, CdrStorageResource
from cdr_pipeline.settings import Settings, load_settings
from cdr_pipeline.text import MAX_VALUE, cap, one_line
from cdr_pipeline.transform import TRANSFORM_VERSION

GROUP = "cdr"
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


def days_of(context: dg.AssetExecutionContext) -> list[Day]:
    """The run's days, local midnight to midnight, from the keys it was asked for. A date the
    zone skipped is refused before any work: Dagster would give it the next day's window and
    publish that day a second time under the skipped key."""
    partitions = context.assets_def.partitions_def
    assert isinstance(partitions, dg.TimeWindowPartitionsDefinition)
    tz = ZoneInfo(partitions.timezone)
    asked = context.partition_key_range
    first, last = parse_day(asked.start), parse_day(asked.end)
    keys = [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    try:
        return [Day.from_key(key, tz) for key in keys]
    except NoSuchDay as exc:
        raise dg.Failure(
            f"{exc}; run the days before and after it on their own", allow_retries=False
        ) from None


def _api_failure(exc: CdrApiError, day: Day) -> dg.Failure:
    exc.with_partition(day.key)
    return dg.Failure(
        description=str(exc),
        metadata={
            "partition": day.key,
            "api_code": exc.code or "",
            "error_kind": exc.kind,
            "retryable": isinstance(exc, RetriesExhaustedError),
            # no other day can succeed either: a command running several days stops
            "stops_run": exc.stops_run,
        },
        # A fatal code (-423 above all) must not be re-sent by Dagster's retry policy;
        # only a provider that kept failing transiently is worth another try later.
        allow_retries=isinstance(exc, RetriesExhaustedError),
    )


def raw_cdr_asset(settings: Settings, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    """``raw_cdr``: its partitions and Dagster's retry policy come from the settings."""

    @dg.asset(
        group_name=GROUP,
        kinds={"python", "json"},
        owners=OWNERS,
        partitions_def=partitions,
        backfill_policy=BACKFILL,
        retry_policy=dg.RetryPolicy(
            max_retries=settings.fetch_retries,
            delay=settings.fetch_retry_delay_s,
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
                "CDR_SIMULATOR=true: these CDRs come from the built-in simulator, not the API"
            )
        records = 0
        days = days_of(context)
        # held until this run's cdr_day publishes them, unless there is none or this step fails
        selection = context.run.asset_selection
        keep = selection is None or dg.AssetKey("cdr") in selection
        with (
            cdr_storage.leases(
                [d.key for d in days], context.run.run_id, keep=keep, instance=context.instance
            ) as held,
            cdr_api.open_client(cdr_storage.timezone) as client,
        ):
            for day in days:
                manifest = _fetch(held, client, cdr_api, cdr_storage, day)
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
                        "path": dg.MetadataValue.path(cdr_storage.store.uri(raw_day_key(day.key))),
                    },
                    partition_key=day.key,
                )
        context.log.info("run total: %d records fetched", records)
        return dg.MaterializeResult()

    return raw_cdr


def _fetch(
    held: RunLeases,
    client: CdrApiClient,
    cdr_api: CdrApiResource,
    cdr_storage: CdrStorageResource,
    day: Day,
) -> dict[str, Any]:
    """One day's raw layer, the day held for this run; every way it can fail, said once."""
    try:
        held.take(day.key)
        return fetch_raw_day(
            client,
            cdr_storage.store,
            day,
            endpoint=cdr_api.endpoint_label(),
            timezone=cdr_storage.timezone,
        )
    except CdrApiError as exc:
        raise _api_failure(exc, day) from None
    except DayBusy as exc:
        raise dg.Failure(str(exc), metadata={"partition": day.key}, allow_retries=False) from None
    except OtherSource as exc:  # every other day of the run would be refused alike
        metadata = {"partition": day.key, "stops_run": True}
        raise dg.Failure(str(exc), metadata=metadata, allow_retries=False) from None
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
    except Exception as exc:
        raise _not_retried(day, exc) from exc


def _not_retried(day: Day, exc: Exception) -> dg.Failure:
    """A failure another try would repeat: a link in the data directory, a corrupt file, a
    bug. Said plainly, with the day, and never retried as if the provider were at fault."""
    return dg.Failure(
        f"{day.key}: {type(exc).__name__}: {one_line(exc, 1000)}. Running it again would fail "
        "the same way: it is not retried",
        metadata={"partition": day.key},
        allow_retries=False,
    )


class DayConfig(dg.Config):
    """Run config of ``cdr_day``."""

    allow_shrink: bool = Field(
        default=False,
        description="publish even if the day loses more valid calls than CDR_MAX_SHRINK allows "
        "(or all of them): for a provider that really holds fewer",
    )
    reuse_published: bool = Field(
        default=False,
        description="build each day from its published version where that can stand in for "
        "the raw layer (after an erasure: the same files, in a fraction of the time), else "
        "from the raw layer, saying why in the log",
    )


def _spec(dataset: Dataset) -> dg.AssetSpec:
    return dg.AssetSpec(
        dataset.name,
        deps=["raw_cdr"],
        group_name=GROUP,
        kinds={"parquet", "pyarrow"},
        owners=OWNERS,
        description=dataset.description,
        code_version=TRANSFORM_VERSION,
        metadata={"dagster/column_schema": column_schema(dataset.schema)},
    )


def day_asset(
    registry: tuple[Dataset, ...], partitions: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    """The multi-asset that builds a day's datasets of ``registry`` as one version."""

    @dg.multi_asset(
        name="cdr_day",
        specs=[_spec(d) for d in check(registry)],
        partitions_def=partitions,
        backfill_policy=BACKFILL,
        description="The raw layer of a day to its datasets, published as one version: a "
        "reader sees all of them from this run or all from the previous one.",
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
        days = days_of(context)
        with cdr_storage.leases(
            [d.key for d in days], context.run.run_id, instance=context.instance
        ) as held:
            for day in days:
                try:
                    held.take(day.key)  # held since raw_cdr, or taken now
                    built = build_day(
                        cdr_storage.store,
                        day,
                        cdr_storage.tz,
                        max_shrink=max_shrink,
                        analytics=cdr_analytics,
                        registry=registry,
                        pseudonyms=cdr_storage.pseudonyms,
                        reuse=config.reuse_published,
                    )
                except (ShrinkRefused, DayBusy) as exc:
                    raise dg.Failure(str(exc), allow_retries=False) from None
                except Exception as exc:
                    raise _not_retried(day, exc) from exc
                held.release(day.key)
                if built.reuse_refused:
                    context.log.info(
                        "%s: built from the raw layer: %s", day.key, built.reuse_refused
                    )
                fetched += built.accounting["fetched"]
                valid += built.accounting["valid"]
                charted.pop(day.key, None)  # just rewritten

                def history(key: str = day.key) -> list[dict[str, Any]]:
                    return kpi_history(cdr_storage.store, days_back(key, TREND_DAYS), charted)

                facts = DayFacts(
                    day.key,
                    built.accounting,
                    built.timings,
                    built.tables,
                    history,
                    cdr_storage.pseudonyms.shown,
                )
                for dataset in registry:
                    metadata = _metadata(dataset, facts, built.paths[dataset.name])
                    metadata["source"] = built.source  # the simulator's days say so
                    if shared := built.shared_paths.get(dataset.name):
                        metadata["shared_path"] = dg.MetadataValue.path(shared)
                    context.add_asset_metadata(
                        metadata, asset_key=dataset.name, partition_key=day.key
                    )
        context.log.info("run total: %d records fetched, %d valid calls published", fetched, valid)
        for spec in context.assets_def.specs:
            yield dg.MaterializeResult(asset_key=spec.key)

    return cdr_day


def _metadata(dataset: Dataset, facts: DayFacts, path: str) -> dict[str, Any]:
    """A dataset's metadata for one day, as the registry says, with its row count and file."""
    found = dataset.metadata(facts)
    if "dagster/row_count" not in found:
        found["dagster/row_count"] = facts.tables[dataset.name].num_rows
    found["path"] = dg.MetadataValue.path(path)
    return {k: _bounded(v) for k, v in found.items()}


def _bounded(value: Any) -> Any:
    """Each text value capped whole (each provider string in it is capped where it is put)."""
    if isinstance(value, Markdown):
        return dg.MetadataValue.md(cap(value, MAX_VALUE))
    return cap(value, MAX_VALUE) if isinstance(value, str) else value


@dg.definitions
def assets() -> dg.Definitions:
    settings = load_settings()
    partitions = partitions_for(settings)
    return dg.Definitions(
        assets=[raw_cdr_asset(settings, partitions), day_asset(DATASETS, partitions)]
    )
