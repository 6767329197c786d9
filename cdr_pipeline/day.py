"""A day built in named stages, from its raw layer to one published version:

    read -> de-duplicate -> enrich -> write cdr -> aggregate -> publish

Each stage is a function with explicit inputs and outputs. A subscriber's erasure drops their
rows between the enrichment and the file (and their rejects), counted as ``erased``. The day
streams: pages are parsed ahead on worker threads while earlier ones are de-duplicated, and
``cdr``'s rows are enriched, written and gathered for the aggregates slice by slice, so memory
does not grow with the day.
Which datasets a day holds, and in which order they are published, is the registry's
(:mod:`cdr_pipeline.datasets`); this module only makes them.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from queue import Full, Queue
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa

from cdr_pipeline import memory
from cdr_pipeline.datasets import DATASETS, Dataset, queries
from cdr_pipeline.erasure import Eraser, tokens_for
from cdr_pipeline.layout import SPILL_KEY, Day, StorageError
from cdr_pipeline.privacy import CLEAR, Pseudonyms, share
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
    shared_paths: dict[str, str]  # the same in the shared zone (none without one)
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


_END = object()  # the last slice has passed


def _put(queue: Queue, item: object, writer: Future) -> None:
    """Hand ``item`` to the shared zone's writer, raising its error if it has stopped."""
    while True:
        try:
            return queue.put(item, timeout=0.05)
        except Full:
            if writer.done():
                writer.result()
                raise RuntimeError("the shared zone's writer stopped early") from None


def write_cdr(
    txn: DayTransaction,
    rows: Iterable[pa.Table],
    gather: Callable[[pa.Table], None],
    share: Callable[[pa.Table], pa.Table] | None = None,
) -> None:
    """``cdr``'s file of the day, staged from the rows; each slice is also handed to
    ``gather`` on a thread of its own (its work is in numpy and Arrow, which release the
    GIL), at most one slice behind, so the aggregates' inputs are complete with the file; and,
    with ``share``, to the shared zone's writer on a third thread, a slice behind at most."""
    queue: Queue = Queue(maxsize=1)

    def shared_rows() -> Iterator[pa.Table]:
        while (part := queue.get()) is not _END:
            if isinstance(part, BaseException):
                raise part
            assert share is not None
            yield share(part)

    def passing(pool: ThreadPoolExecutor, writer: Future | None) -> Iterator[pa.Table]:
        pending: deque[Future[None]] = deque()
        for part in rows:
            pending.append(pool.submit(gather, part))
            if len(pending) > 1:
                pending.popleft().result()
            if writer is not None:
                _put(queue, part, writer)
            yield part
        while pending:
            pending.popleft().result()

    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="summary") as pool,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="shared") as sharing,
    ):
        writer = None
        if share is not None:
            schema = share(CDR_SCHEMA.empty_table()).schema
            writer = sharing.submit(txn.stage, "cdr", (schema, shared_rows()), shared=True)
        try:
            txn.stage("cdr", (CDR_SCHEMA, passing(pool, writer)))
        except BaseException as exc:
            if writer is not None and not writer.done():
                while not queue.empty():  # make room for the stop
                    queue.get_nowait()
                queue.put(RuntimeError(f"the day stopped: {type(exc).__name__}"))
            raise
        if writer is not None:
            _put(queue, _END, writer)
            writer.result()


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
    share: Callable[[pa.Table, str], pa.Table] | None = None,
) -> dict[str, str]:
    """Stage the aggregates (and, with ``share``, their shared zone's form) and the day's
    record beside ``cdr``, let ``approve`` refuse, then replace the published version at once;
    where each file is."""
    for name, table in tables.items():
        txn.stage(name, table)
        if share is not None:
            txn.stage(name, share(table, name), shared=True)
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


def _erased(
    accounting: dict[str, Any], calls: int, rejects: pa.Table, manifest: dict[str, Any]
) -> dict[str, Any]:
    """The accounting with the ``erased`` bucket: the calls and rejects a build dropped, and
    the records the erase command took out of the raw bodies (still counted as fetched)."""
    from_raw = manifest["totals"].get("erased", 0)
    gone = accounting["rejected"] - len(rejects)
    by_reason = accounting["rejects_by_reason"]
    if gone:  # only a day an erasure covers counts its rejects again
        left = Counter(rejects.column("reason").to_pylist())
        by_reason = {r: left[r] for r in by_reason if left[r]}
    return accounting | {
        "fetched": accounting["fetched"] + from_raw,
        "valid": accounting["valid"] - calls,
        "rejected": len(rejects),
        "rejects_by_reason": by_reason,
        "erased": from_raw + calls + gone,
    }


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
    pseudonyms: Pseudonyms = CLEAR,
) -> BuiltDay:
    """The raw layer of ``day`` to every dataset of ``registry``, published as one version
    (unless :func:`shrink_guard` refuses it), and to the shared zone when there is one."""
    settings = analytics or AnalyticsSettings()
    memory.setup()
    if store.shared is not None and not pseudonyms.enabled:
        raise StorageError("the shared zone needs CDR_PSEUDONYM_KEY to make its tokens")
    manifest = read_raw_manifest(store, day.key)
    expected = manifest["totals"]["records"]
    eraser = Eraser(tokens_for(store, day.key, pseudonyms), pseudonyms)

    def shared(table: pa.Table, name: str = "cdr") -> pa.Table:
        return share(table, name, pseudonyms)

    sharing = shared if store.shared is not None else None
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
            rows = map(eraser, enrich(builder.iter_cdr(), enricher))
            write_cdr(txn, rows, gathered.add, sharing)
            rejects = eraser.rejects(builder.rejects_table())
            accounting = _erased(builder.accounting(), eraser.dropped, rejects, manifest)
            accounting["raw_records"] = expected
            clock = _Clock()  # the aggregates' lap starts here
            tables = aggregate(gathered, accounting, rejects, registry, settings)
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
                txn,
                tables,
                record,
                lambda: shrink_guard(store, day.key, valid, max_shrink),
                sharing,
            )
        finally:
            builder.close()
        after_read.lap("dedup_sort_write", timings)
    return BuiltDay(accounting, source, tables, paths, txn.shared_paths, timings)
