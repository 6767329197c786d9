"""The registry: every dataset a day publishes, declared once.

An entry says what the dataset is (its name, its Arrow schema with each column's meaning), how
it is made (a stage of :mod:`cdr_pipeline.day`, or a SQL query over the day's calls) and what
the Dagster UI shows of each day of it. Everything else is derived from this tuple: the day's
publish and its order, the asset specs, the data dictionary, ``make clean``, the CLI's list.
Adding an aggregate is one entry here and its query.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from cdr_pipeline.report import (
    TREND_DAYS,
    load_markdown,
    markdown_table,
    png_markdown,
    sparkline_markdown,
    trend_png,
)
from cdr_pipeline.settings import AnalyticsSettings
from cdr_pipeline.transform import analytics
from cdr_pipeline.transform.summarize import KPI_SCHEMA, OUTCOME_SCHEMA
from cdr_pipeline.transform.sums import HOURLY_SCHEMA
from cdr_pipeline.transform.validate import ACCOUNTING_BUCKETS, CDR_SCHEMA, REJECTS_SCHEMA

PREVIEW_ROWS = 10


class Markdown(str):
    """A metadata value the UI renders as markdown (the glue makes it ``MetadataValue.md``)."""


@dataclass(frozen=True)
class DayFacts:
    """What a built day tells its metadata: the accounting, the stages' timings, every table
    but ``cdr`` (streamed to its file, never held) and the KPI rows of the trend window."""

    day: str
    accounting: Mapping[str, Any]
    timings: Mapping[str, float]
    tables: Mapping[str, pa.Table]
    history: Callable[[], list[dict[str, Any]]] = list
    shown: Callable[[str | None], str | None] = lambda number: number  # a number for people


Metadata = Callable[[DayFacts], dict[str, Any]]


@dataclass(frozen=True)
class Dataset:
    """One dataset of the day. ``stage``: the :mod:`cdr_pipeline.day` stage that makes it
    (``cdr``, ``rejects``, ``outcome``, ``kpis``, ``hourly``), or ``query``: SQL over the
    view ``calls`` (the columns of :data:`analytics.COLUMNS`) with ``params`` from the
    analytics settings, in DuckDB, out of core. ``per_caller``: the ORDER BY of a query's
    rows when each is one caller's (``src``), made from that caller's calls alone: a day
    re-built after an erasure asks it only of the callers that lost calls, and keeps the
    published rows of the others."""

    name: str
    schema: pa.Schema
    description: str
    stage: str = "query"
    query: str | None = None
    params: Callable[[AnalyticsSettings], dict[str, Any]] = field(default=lambda s: {})
    metadata: Metadata = field(default=lambda facts: {})
    per_caller: str | None = None

    def __post_init__(self) -> None:
        if (self.stage == "query") != (self.query is not None):
            raise ValueError(f"{self.name}: a query dataset needs its query, and only it")
        if self.per_caller is not None and "src" not in self.schema.names:
            raise ValueError(f"{self.name}: a per-caller dataset has the caller's src")


def _preview(rows: list[dict[str, Any]]) -> Markdown:
    return Markdown(markdown_table(rows[:PREVIEW_ROWS]))


def _cdr(facts: DayFacts) -> dict[str, Any]:
    acc = facts.accounting
    counts = ("fetched", *ACCOUNTING_BUCKETS)
    row = {"date": facts.day, **{k: acc[k] for k in counts}}
    return {
        "dagster/row_count": acc["valid"],
        **{f"accounting/{k}": acc[k] for k in (*counts, "duplicates_exact")},
        "accounting/duplicates_conflicting": acc["duplicates_conflicting"],
        **{f"timing/{k}": round(v, 3) for k, v in facts.timings.items()},
        "preview": _preview([row]),
    }


def _rejects(facts: DayFacts) -> dict[str, Any]:
    reasons = facts.accounting["rejects_by_reason"]
    return {
        "dagster/row_count": facts.accounting["rejected"],
        **{f"rejects/{r}": n for r, n in reasons.items()},
        "preview": Markdown(
            markdown_table([{"reason": r, "records": n} for r, n in reasons.items()])
        ),
    }


def _kpis(facts: DayFacts) -> dict[str, Any]:
    kpis = facts.tables["call_kpis_daily"].to_pylist()[0]
    history = facts.history()
    title = f"last {TREND_DAYS} days to {facts.day}"
    return {
        # in place on the partition's page; the full chart one click further
        "trend": Markdown(sparkline_markdown(history)),
        "trend_chart": Markdown(
            png_markdown(trend_png(history, title=title), f"KPI trend, {title}")
        ),
        **{
            f"kpi/{k}": round(v, 4) if isinstance(v, float) else v
            for k, v in kpis.items()
            if v is not None
        },
        "preview": Markdown(markdown_table([{"kpi": k, "value": v} for k, v in kpis.items()])),
    }


def _hourly(facts: DayFacts) -> dict[str, Any]:
    hourly = facts.tables["call_load_hourly"].to_pylist()
    busy = next((h for h in hourly if h["busy_hour"]), None)
    return {
        # in place on the partition's page: the day's Erlangs, hour by hour
        "load": Markdown(load_markdown(hourly)),
        "busy_hour": busy["local_hour"] if busy else -1,
        "busy_hour_erlangs": round(busy["erlangs"], 3) if busy else 0.0,
        "peak_concurrent_calls": max((h["peak_concurrent_calls"] for h in hourly), default=0),
        "preview": Markdown(markdown_table(hourly)),
    }


def _risk(facts: DayFacts) -> dict[str, Any]:
    risk = facts.tables["caller_risk_daily"].to_pylist()
    flags = Counter(f for row in risk for f in row["flags"])
    return {
        **{f"flagged/{f}": flags.get(f, 0) for f in analytics.FLAGS},
        "preview": _preview(
            [{**r, "src": facts.shown(r["src"]), "flags": ", ".join(r["flags"])} for r in risk]
        )
        if risk
        else Markdown("no caller flagged"),
    }


def _rows(name: str) -> Metadata:
    return lambda facts: {"preview": _preview(facts.tables[name].to_pylist())}


# Published in this order, as one version of a day (data contract, "A day is one version"):
# ``cdr`` first, since the aggregates are made from its rows.
DATASETS: tuple[Dataset, ...] = (
    Dataset(
        "cdr", CDR_SCHEMA, "Validated, typed, de-duplicated CDRs of the day.", "cdr", metadata=_cdr
    ),
    Dataset(
        "cdr_rejects",
        REJECTS_SCHEMA,
        "Every record that failed validation, with why.",
        "rejects",
        metadata=_rejects,
    ),
    Dataset(
        "call_outcome_daily",
        OUTCOME_SCHEMA,
        "Calls and billed seconds by call type and end status.",
        "outcome",
        metadata=_rows("call_outcome_daily"),
    ),
    Dataset(
        "call_kpis_daily",
        KPI_SCHEMA,
        "One row of call KPIs per day (connect rate, ACD, ALOC, PDD, billing reconciliation, ...).",
        "kpis",
        metadata=_kpis,
    ),
    Dataset(
        "call_destinations_daily",
        analytics.DESTINATIONS_SCHEMA,
        "Where calls go: calls, connect rate, billed seconds and ACD by destination country "
        "and number type.",
        query=analytics.DESTINATIONS_SQL,
        params=lambda s: {"low": s.low_sample_calls},
        metadata=_rows("call_destinations_daily"),
    ),
    Dataset(
        "call_load_hourly",
        HOURLY_SCHEMA,
        "The load of each clock hour of the local day: attempts, talk, Erlangs, peak "
        "simultaneous calls, the busy hour.",
        "hourly",
        metadata=_hourly,
    ),
    Dataset(
        "caller_risk_daily",
        analytics.RISK_SCHEMA,
        "Callers whose traffic looks like abuse (burst, fan_out, repeat_target, "
        "short_ring_unanswered, premium_night), with the signals behind the flags.",
        query=analytics.RISK_SQL,
        params=analytics.risk_params,
        metadata=_risk,
        per_caller=analytics.RISK_ORDER,
    ),
)
NAMES = tuple(d.name for d in DATASETS)
STAGES = ("cdr", "rejects", "outcome", "kpis", "hourly", "query")


def queries(
    registry: tuple[Dataset, ...], settings: AnalyticsSettings
) -> dict[str, analytics.Query]:
    """The query datasets of ``registry`` as the analytics ask them."""
    return {
        d.name: analytics.Query(d.query, d.params(settings), d.schema, d.per_caller)
        for d in registry
        if d.query is not None
    }


def check(registry: tuple[Dataset, ...]) -> tuple[Dataset, ...]:
    """A registry a day can be built from: names unique, ``cdr`` first, every stage known and
    every column described (the dictionary and the UI show each one)."""
    names = [d.name for d in registry]
    if len(set(names)) != len(names) or not names or names[0] != "cdr":
        raise ValueError(f"a registry names each dataset once, cdr first: {names}")
    for d in registry:
        if d.stage not in STAGES:
            raise ValueError(f"{d.name}: unknown stage {d.stage!r}; known: {STAGES}")
        missing = [f.name for f in d.schema if not (f.metadata or {}).get(b"description")]
        if missing:
            raise ValueError(f"{d.name}: columns without a meaning: {missing}")
    return registry


def main() -> None:
    """``python -m cdr_pipeline.datasets``: the dataset folders, one a line (``make clean``)."""
    print("\n".join(NAMES))


if __name__ == "__main__":
    main()
