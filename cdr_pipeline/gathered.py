"""Stage 5 of a day (:mod:`cdr_pipeline.day`), the aggregates: what they need of ``cdr``'s
rows, gathered as the rows pass (sums in flat memory; on an object store, also the narrow rows
DuckDB reads), and every dataset but ``cdr`` made from it. The sums are kept with the day, so
a re-build after an erasure takes the erased rows' out of them rather than read the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa

from cdr_pipeline.datasets import Dataset, queries
from cdr_pipeline.erasure import Eraser
from cdr_pipeline.layout import Day
from cdr_pipeline.rebuild import NONE_PUBLISHED, Published
from cdr_pipeline.settings import AnalyticsSettings
from cdr_pipeline.transform.analytics import Amend, DayAnalytics
from cdr_pipeline.transform.summarize import KpiSummary, OutcomeSummary, kpi_table
from cdr_pipeline.transform.validate import CDR_SCHEMA


class Gathered:
    """What the aggregates need of ``cdr``'s rows, gathered as they pass: the outcome and KPI
    sums (exact, in flat memory), the hourly load and, on an object store, the narrow rows
    DuckDB queries."""

    def __init__(
        self,
        day: Day,
        tz: ZoneInfo,
        settings: AnalyticsSettings,
        scratch: Path,
        *,
        expected_rows: int,
        spills: bool,
        keep_rows: bool = True,
        distinct: bool = True,
    ) -> None:
        """``spills``: the day is large; the distinct counts keep their keys in ``scratch``.
        ``keep_rows`` False: the aggregates will read ``cdr``'s staged file, a local one.
        ``distinct`` False: the unique callers and callees are the published day's, amended."""
        self._made = {
            "day": day,
            "tz": tz,
            "settings": settings,
            "scratch": scratch,
            "expected_rows": expected_rows,
            "spills": spills,
            "keep_rows": keep_rows,
            "distinct": distinct,
        }
        self.outcome = OutcomeSummary()
        spill = scratch if spills else None
        self.kpis = KpiSummary(
            tz, expected_rows=expected_rows, spill_folder=spill, distinct=distinct
        )
        self.analytics = DayAnalytics(
            scratch, day.start, day.end, tz, settings, keep_rows=keep_rows
        )

    def twin(self, **changes: Any) -> Gathered:
        """An empty gatherer made as this one was, but for ``changes``."""
        return Gathered(**(self._made | changes))

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns of ``cdr`` :meth:`add` reads."""
        wanted = (*OutcomeSummary.COLUMNS, *self.kpis.columns, *self.analytics.columns)
        return tuple(dict.fromkeys(wanted))

    def add(self, part: pa.Table) -> None:
        self.outcome.add(part)
        self.kpis.add(part)
        self.analytics.add(part)

    def state(self) -> dict[str, Any]:
        """The sums, as the day's ``sums`` record keeps them (JSON): a re-build after an
        erasure takes the erased rows' out of them (:meth:`less`) instead of reading every
        row again."""
        return {
            "outcome": self.outcome.state(),
            "kpis": self.kpis.state(),
            "load": self.analytics.load.state(),
            "billing": self.analytics.billing.state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.outcome.restore(state["outcome"])
        self.kpis.restore(state["kpis"])
        self.analytics.load.restore(state["load"])
        self.analytics.billing.restore(state["billing"])

    def less(self, other: Gathered) -> None:
        """Take ``other``'s rows (some of those gathered here) out of the sums."""
        self.outcome.less(other.outcome)
        self.kpis.less(other.kpis)
        self.analytics.load.less(other.analytics.load)
        self.analytics.billing.less(other.analytics.billing)


def aggregate(
    gathered: Gathered,
    accounting: dict[str, Any],
    rejects: pa.Table,
    registry: tuple[Dataset, ...],
    settings: AnalyticsSettings,
    cdr_file: Path | None = None,
    amend: tuple[Published, dict[str, list[str]]] = (NONE_PUBLISHED, {}),
) -> dict[str, pa.Table]:
    """Every dataset but ``cdr``, by name: the query datasets asked of DuckDB in one
    connection over the day's rows (``cdr``'s staged file where it is local, else the rows
    gathered; once the file is closed, so DuckDB's memory does not add to its writer's), the
    rest from what was gathered. ``amend``: what of the published day stays after an
    erasure, and the erased rows' numbers (:meth:`Eraser.lost`)."""
    published, lost = amend
    asked = None if published is NONE_PUBLISHED else Amend(published.tables, lost)
    found = gathered.analytics.finish(CDR_SCHEMA, queries(registry, settings), cdr_file, asked)
    unique = None if gathered.kpis.distinct else published.unique_less(lost, found.still)
    made = {
        "rejects": rejects,
        "outcome": gathered.outcome.table().combine_chunks(),
        "kpis": kpi_table(gathered.kpis.values(accounting, unique) | found.billing),
        "hourly": found.hourly,
    }
    return {
        d.name: found.queried[d.name] if d.stage == "query" else made[d.stage]
        for d in registry
        if d.stage != "cdr"
    }


def less_published(
    gathered: Gathered, published: Published, eraser: Eraser
) -> tuple[Gathered, Gathered | None]:
    """What gathers the aggregates' sums: ``gathered``; or, where the published day's sums
    stand in for the rows (a re-build after an erasure, on a local disk), ``gathered`` holding
    them, and what gathers the erased rows (handed them by ``eraser``), which
    :meth:`Gathered.less` then takes out: the kept rows are not read for the sums
    (docs/performance.md, "Erasure")."""
    if published.sums is None or gathered.analytics.keep_rows:  # DuckDB reads rows gathered
        return gathered, None
    try:
        gathered.restore(published.sums)
    except (KeyError, TypeError, ValueError):  # sums of another day or form: all rows read
        return gathered.twin(), None
    erased = gathered.twin(expected_rows=0, spills=False, distinct=False)
    eraser.gather = erased.add
    return gathered, erased
