"""A day built in named stages, from its raw layer to one published version:

    read -> de-duplicate -> enrich -> write cdr -> aggregate -> publish

Each stage is a function with explicit inputs and outputs. The day streams: pages are parsed
ahead on worker threads while earlier ones are de-duplicated, and ``cdr``'s rows are enriched,
written and gathered for the aggregates slice by slice, so memory does not grow with the day.
Which datasets a day holds, and in which order they are published, is the registry's
(:mod:`cdr_pipeline.datasets`); this module only makes them.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa

from cdr_pipeline import memory
from cdr_pipeline.datasets import DATASETS, Dataset, queries
from cdr_pipeline.layout import SPILL_KEY, Day
from cdr_pipeline.publish import DayTransaction, shrink_guard
from cdr_pipeline.raw import Page, decoded_batches, manifest_source, read_raw_manifest
from cdr_pipeline.settings import AnalyticsSettings
from cdr_pipeline.store import Store
from cdr_pipeline.transform.analytics import DayAnalytics
from cdr_pipeline.transform.dedup import DayBuilder
from cdr_pipeline.transform.enrich import Enricher
from cdr_pipeline.transform.read import ParsedPages, parse_pages
from cdr_pipeline.transform.summarize import KpiSummary, OutcomeSummary, kpi_table
from cdr_pipeline.transform.validate import CDR_SCHEMA

__all__ = ["BuiltDay", "Day", "build_day"]

# Batches parsed side by side, each by a single-threaded Arrow reader: on two cores this does
# the same work as Arrow's own threads in about two thirds of the CPU.
PARSE_AHEAD = 2


@dataclass
class BuiltDay:
    """One published version of a day, as the assets report it."""

    accounting: dict[str, Any]
    source: str  # the built-in simulator, or the API's scheme and host
    tables: dict[str, pa.Table]  # every dataset but cdr (streamed to its file, never held)
    paths: dict[str, str]  # dataset -> where its file is
    # seconds: reading and checking pages; de-duplicating, sorting and writing the files; the
    # aggregates (within the latter); each also as the process's CPU seconds (``*_cpu_s``,
    # every thread): over the wall time, the cores kept busy
    timings: dict[str, float]


# --- 1. read --------------------------------------------------------------------------------


def read(batches: Iterable[list[Page]], tz: ZoneInfo) -> Iterator[tuple[list[Page], ParsedPages]]:
    """Decoded pages to checked records, parsed :data:`PARSE_AHEAD` batches ahead on other
    threads (Arrow releases the GIL), in order. A batch Arrow could not read whole tells the
    next ones to cut their pages first."""
    cut = False
    with ThreadPoolExecutor(max_workers=PARSE_AHEAD, thread_name_prefix="parse") as parser:
        ahead: deque[tuple[list[Page], Future[ParsedPages]]] = deque()
        for batch in batches:
            ahead.append((batch, parser.submit(parse_pages, batch, tz.key, cut=cut)))
            if len(ahead) > PARSE_AHEAD:
                pages, parsing = ahead.popleft()
                done = parsing.result()
                cut = done.cut
                yield pages, done
        while ahead:
            pages, parsing = ahead.popleft()
            yield pages, parsing.result()


# --- 2. de-duplicate ------------------------------------------------------------------------


def deduplicate(parsed: Iterable[tuple[list[Page], ParsedPages]], builder: DayBuilder) -> None:
    """Every checked record into the day's de-duplication (rows, rejects, accounting)."""
    for pages, done in parsed:
        builder.add_parsed(pages, done)


# --- 3. enrich ------------------------------------------------------------------------------


def enrich(
    rows: Iterable[pa.Table], enricher: Callable[[pa.Table], pa.Table]
) -> Iterator[pa.Table]:
    """The de-duplicated rows with number intelligence and the local start time."""
    for part in rows:
        yield enricher(part)


# --- 4. write cdr ---------------------------------------------------------------------------


def write_cdr(txn: DayTransaction, rows: Iterable[pa.Table], gather: Callable[[pa.Table], None]):
    """``cdr``'s file of the day, staged from the rows; each slice is also handed to
    ``gather`` on a thread of its own (its work is in numpy and Arrow, which release the
    GIL), at most one slice behind, so the aggregates' inputs are complete with the file."""

    def passing(pool: ThreadPoolExecutor) -> Iterator[pa.Table]:
        pending: deque[Future[None]] = deque()
        for part in rows:
            pending.append(pool.submit(gather, part))
            if len(pending) > 1:
                pending.popleft().result()
            yield part
        while pending:
            pending.popleft().result()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="summary") as pool:
        txn.stage("cdr", (CDR_SCHEMA, passing(pool)))


# --- 5. aggregate ---------------------------------------------------------------------------


class Gathered:
    """What the aggregates need of ``cdr``'s rows, gathered as they pass: the outcome and KPI
    sums (exact, in flat memory), the hourly load and the narrow rows DuckDB queries."""

    def __init__(
        self,
        day: Day,
        tz: ZoneInfo,
        settings: AnalyticsSettings,
        scratch: Path,
        *,
        expected_rows: int,
        spills: bool,
    ) -> None:
        """``spills``: the day is large; the distinct counts keep their keys in ``scratch``."""
        self.outcome = OutcomeSummary()
        spill = scratch if spills else None
        self.kpis = KpiSummary(tz, expected_rows=expected_rows, spill_folder=spill)
        self.analytics = DayAnalytics(scratch, day.start, day.end, tz, settings)

    def add(self, part: pa.Table) -> None:
        self.outcome.add(part)
        self.kpis.add(part)
        self.analytics.add(part)


def aggregate(
    gathered: Gathered,
    accounting: dict[str, Any],
    rejects: pa.Table,
    registry: tuple[Dataset, ...],
    settings: AnalyticsSettings,
) -> dict[str, pa.Table]:
    """Every dataset but ``cdr``, by name: the query datasets asked of DuckDB in one
    connection over the day's rows (once ``cdr``'s file is closed, so DuckDB's memory does
    not add to its writer's), the rest from what was gathered."""
    found = gathered.analytics.finish(CDR_SCHEMA, queries(registry, settings))
    made = {
        "rejects": rejects,
        "outcome": gathered.outcome.table().combine_chunks(),
        "kpis": kpi_table(gathered.kpis.values(accounting) | found.billing),
        "hourly": found.hourly,
    }
    return {
        d.name: found.queried[d.name] if d.stage == "query" else made[d.stage]
        for d in registry
        if d.stage != "cdr"
    }


# --- 6. publish -----------------------------------------------------------------------------


def publish(
    txn: DayTransaction,
    tables: dict[str, pa.Table],
    record: dict[str, Any],
    approve: Callable[[], None],
) -> dict[str, str]:
    """Stage the aggregates and the day's record beside ``cdr``, let ``approve`` refuse, then
    replace the published version at once; where each file is."""
    for name, table in tables.items():
        txn.stage(name, table)
    txn.stage_record("validation", record)
    approve()
    return txn.commit()


# --- the day, stage by stage ----------------------------------------------------------------


@contextmanager
def day_scratch(store: Store, day: str) -> Iterator[Path]:
    """The day's scratch folder (the de-duplication's spill, the aggregates' rows), in the
    data directory when it is local (no dataset reader looks there), else the system's temp
    folder. Named by the day, whose lease this run holds, so a run killed before it could
    clean up leaves nothing the next run of the day does not remove."""
    root = store.local_dir(SPILL_KEY) or Path(tempfile.gettempdir())
    prefix = f".cdr-day-{day}-"
    for stale in root.glob(f"{prefix}*"):
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=prefix, dir=root, ignore_cleanup_errors=True) as tmp:
        yield Path(tmp)


class _Clock:
    """Wall and CPU seconds since the last lap."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self, name: str, into: dict[str, float]) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        into[f"{name}_s"], into[f"{name}_cpu_s"] = wall - self.wall, cpu - self.cpu
        self.wall, self.cpu = wall, cpu


def build_day(
    store: Store,
    day: Day,
    tz: ZoneInfo,
    *,
    max_shrink: float | None = None,
    analytics: AnalyticsSettings | None = None,
    registry: tuple[Dataset, ...] = DATASETS,
) -> BuiltDay:
    """The raw layer of ``day`` to every dataset of ``registry``, published as one version
    (unless :func:`shrink_guard` refuses it)."""
    settings = analytics or AnalyticsSettings()
    memory.setup()
    manifest = read_raw_manifest(store, day.key)
    expected = manifest["totals"]["records"]
    timings: dict[str, float] = {}
    clock = _Clock()
    with day_scratch(store, day.key) as scratch, DayTransaction(store, day.key) as txn:
        builder = DayBuilder(day.start, day.end, tz, expected_records=expected, spill_dir=scratch)
        try:
            deduplicate(read(decoded_batches(store, day.key, manifest), tz), builder)
            clock.lap("read_check", timings)
            after_read = _Clock()
            spills = builder.spill_folder is not None
            gathered = Gathered(day, tz, settings, scratch, expected_rows=expected, spills=spills)
            enricher = Enricher(tz, settings.default_region, grouping=settings.number_grouping)
            rows = enrich(builder.iter_cdr(), enricher)
            write_cdr(txn, rows, gathered.add)
            accounting = builder.accounting() | {"raw_records": expected}
            clock = _Clock()  # the aggregates' lap starts here
            tables = aggregate(gathered, accounting, builder.rejects_table(), registry, settings)
            clock.lap("analytics", timings)
            source = manifest_source(manifest)
            record = {
                "date": day.key,
                "source": source,
                "fetch": manifest["totals"],
                "accounting": accounting,
            }
            valid = accounting["valid"]
            paths = publish(
                txn, tables, record, lambda: shrink_guard(store, day.key, valid, max_shrink)
            )
        finally:
            builder.close()
        after_read.lap("dedup_sort_write", timings)
    return BuiltDay(accounting, source, tables, paths, timings)
