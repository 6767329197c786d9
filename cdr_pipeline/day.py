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
from cdr_pipeline.erasure import Eraser, tokens_for
from cdr_pipeline.gathered import Gathered, aggregate, less_published
from cdr_pipeline.layout import SPILL_KEY, Day, StorageError
from cdr_pipeline.privacy import CLEAR, Pseudonyms, share, share_reads, shared_schema
from cdr_pipeline.publish import Content, DayTransaction, Kept, Spliced, read_state, shrink_guard
from cdr_pipeline.raw import (
    Page,
    check_cut,
    decoded_batches,
    manifest_digest,
    manifest_source,
    read_raw_manifest,
)
from cdr_pipeline.rebuild import (
    NONE_PUBLISHED,
    SUMS_FORM,
    FromPublished,
    NotReusable,
    Published,
    built_by,
    by_reason_of,
    reuse_refusal,
)
from cdr_pipeline.settings import AnalyticsSettings
from cdr_pipeline.store import Store
from cdr_pipeline.transform.dedup import DayBuilder
from cdr_pipeline.transform.enrich import Enricher
from cdr_pipeline.transform.read import ParsedPages, parse_pages
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
    from_published: bool = False  # re-used after an erasure, not read from the raw layer
    reuse_refused: str | None = None  # why not, when it was asked to


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


def write_cdr(
    txn: DayTransaction,
    rows: Content,
    gather: Callable[[pa.Table], None],
    shared: Callable[[], Content] | None = None,
) -> None:
    """``cdr``'s file of the day, staged from the rows (a stream of slices, or a splice of
    the published file's row groups with new ones); each slice is also handed to ``gather``
    on a thread of its own (its work is in numpy and Arrow, which release the GIL), at most
    one slice behind, so the aggregates' inputs are complete with the file. With ``shared``,
    the shared zone's ``cdr`` is then staged from its content, asked for once the first file
    is: written beside it, it held more memory at the peak for about the same time
    (docs/performance.md, "Pseudonyms and the shared zone")."""

    def passing(pool: ThreadPoolExecutor, parts: Iterable[Any]) -> Iterator[Any]:
        pending: deque[Future[None]] = deque()
        for part in parts:
            for rows in part.rows if isinstance(part, Kept) else (part,):
                pending.append(pool.submit(gather, rows))
                if len(pending) > 1:
                    pending.popleft().result()
            yield part
        while pending:
            pending.popleft().result()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="summary") as pool:
        if isinstance(rows, Spliced):
            txn.stage("cdr", Spliced(rows.layout, passing(pool, rows.parts)))
        else:
            schema, parts = rows
            txn.stage("cdr", (schema, passing(pool, parts)))
    if shared is not None:
        memory.release()  # the first pass's buffers: the second would not reuse them
        txn.stage("cdr", shared(), shared=True)


def shared_from_staged(txn: DayTransaction, pseudonyms: Pseudonyms) -> Content:
    """The shared zone's ``cdr`` rows, made from the staged ``cdr`` a row group at a time."""
    groups = txn.staged_row_groups("cdr", share_reads(CDR_SCHEMA, "cdr"))
    return shared_schema(CDR_SCHEMA, "cdr"), (share(g, "cdr", pseudonyms) for g in groups)


# --- 5. aggregate: cdr_pipeline/gathered.py ------------------------------------------------
# --- 6. publish -----------------------------------------------------------------------------


def publish(
    txn: DayTransaction,
    tables: dict[str, pa.Table],
    records: dict[str, Any],
    approve: Callable[[], None],
    share: Callable[[pa.Table, str], pa.Table] | None = None,
) -> dict[str, str]:
    """Stage the aggregates (and, with ``share``, their shared zone's form) and the day's
    ``records`` (by kind) beside ``cdr``, let ``approve`` refuse, then replace the published
    version at once; where each file is."""
    for name, table in tables.items():
        txn.stage(name, table)
        if share is not None:
            txn.stage(name, share(table, name), shared=True)
    for kind, record in records.items():
        txn.stage_record(kind, record)
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
        by_reason = by_reason_of(rejects)
    return accounting | {
        "fetched": accounting["fetched"] + from_raw,
        "valid": accounting["valid"] - calls,
        "rejected": len(rejects),
        "rejects_by_reason": by_reason,
        "erased": from_raw + calls + gone,
        "raw_records": manifest["totals"]["records"],
    }


class FromRaw:
    """The day's rows as the raw layer gives them: read, de-duplicated and enriched."""

    def __init__(
        self,
        store: Store,
        day: Day,
        tz: ZoneInfo,
        manifest: dict[str, Any],
        scratch: Path,
        enricher: Enricher,
    ) -> None:
        self.store, self.day, self.tz, self.manifest = store, day, tz, manifest
        self.enricher = enricher
        self.origin, self.fetch = manifest_source(manifest), manifest["totals"]
        self.expected = manifest["totals"]["records"]
        self.builder = DayBuilder(
            day.start, day.end, tz, expected_records=self.expected, spill_dir=scratch
        )

    def rows(self, eraser: Eraser, _gathered: tuple[str, ...] = ()) -> Content:
        pages = decoded_batches(self.store, self.day.key, self.manifest)
        deduplicate(read(pages, self.tz), self.builder)
        self.builder.settle()  # the copies decided, each bucket read once for them
        memory.release()  # what the pages and the copies' reading freed: the rows' won't reuse it
        return CDR_SCHEMA, map(eraser, enrich(self.builder.iter_cdr(), self.enricher))

    def shared_cdr(self) -> None:
        """Its shared rows are made from the staged ``cdr``."""

    def published(self, _params: dict[str, Any], _per_caller: list[str]) -> Published:
        """Nothing: every aggregate is made from the rows."""
        return NONE_PUBLISHED

    @property
    def spills(self) -> bool:
        return self.builder.spill_folder is not None

    def finish(self, eraser: Eraser) -> tuple[pa.Table, dict[str, Any]]:
        rejects = eraser.rejects(self.builder.rejects_table())
        return rejects, _erased(self.builder.accounting(), eraser.dropped, rejects, self.manifest)

    def close(self) -> None:
        self.builder.close()


class _Clock:
    """Wall and CPU seconds since the last lap."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self, name: str, into: dict[str, float]) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        into[f"{name}_s"], into[f"{name}_cpu_s"] = wall - self.wall, cpu - self.cpu
        self.wall, self.cpu = wall, cpu


def _published_record(store: Store, day: str) -> dict[str, Any] | None:
    try:
        return read_state(store, "validation", day)
    except StorageError:
        return None


Source = FromRaw | FromPublished


@dataclass(frozen=True)
class _Job:
    """What a build of a day is asked to do, whichever layer its rows come from."""

    store: Store
    day: Day
    tz: ZoneInfo
    settings: AnalyticsSettings
    registry: tuple[Dataset, ...]
    pseudonyms: Pseudonyms
    max_shrink: float | None


def made_with(
    tz: ZoneInfo,
    region: str,
    settings: AnalyticsSettings,
    registry: tuple[Dataset, ...] = DATASETS,
) -> dict[str, Any]:
    """What a day's datasets depend on beside its rows, as its record keeps it: the code and
    settings of its rows (``built``: a re-build may re-use rows built by the same), what the
    query datasets were asked with (``params``: a re-build may keep rows asked the same), and
    the form of the day's ``sums`` record (a re-build takes the erased rows' out of sums of
    its own form)."""
    return {
        "built": built_by(tz, region),
        "params": {name: q.params for name, q in queries(registry, settings).items()},
        "sums": SUMS_FORM,
    }


def build_day(
    store: Store,
    day: Day,
    tz: ZoneInfo,
    *,
    max_shrink: float | None = None,
    analytics: AnalyticsSettings | None = None,
    registry: tuple[Dataset, ...] = DATASETS,
    pseudonyms: Pseudonyms = CLEAR,
    reuse: bool = False,
) -> BuiltDay:
    """The raw layer of ``day`` to every dataset of ``registry``, published as one version
    (unless :func:`shrink_guard` refuses it), and to the shared zone when there is one.
    ``reuse``: build from the published version where it can stand in for the raw layer
    (after an erasure: the same rows but the erased ones; the same files a build from the
    raw layer makes, in a fraction of the time), else from the raw layer. ``pseudonyms``:
    the deployment's key, and the region its national numbers are read in (tokens, and so
    erasures, depend on it)."""
    settings = analytics or AnalyticsSettings()
    memory.setup()
    if store.shared is not None and not pseudonyms.enabled:
        raise StorageError("the shared zone needs CDR_PSEUDONYM_KEY to make its tokens")
    job = _Job(store, day, tz, settings, registry, pseudonyms, max_shrink)
    try:
        manifest = read_raw_manifest(store, day.key)
        digest = manifest_digest(manifest)
    except StorageError:
        if not reuse:
            raise
        manifest = digest = None  # pruned: the published day may be all there is
    facts = {
        **made_with(tz, pseudonyms.region, settings, registry),
        "raw": digest,
        # the key the shared zone's tokens were made under: a re-build may take them as made
        "shared_key_id": pseudonyms.key_id if store.shared is not None else None,
    }
    why = None
    if reuse:
        record = _published_record(store, day.key)
        why = reuse_refusal(record, manifest, digest, facts["built"])
        if why is None:
            assert record is not None
            if manifest is None:  # its rows stay as they were built
                facts |= {"built": record.get("built"), "raw": record.get("raw")}
            try:
                key_id = facts["shared_key_id"]  # the key the new shared zone is made under
                published = FromPublished(store, day, manifest, record, digest, key_id)
                return _build(job, lambda _scratch: published, facts)
            except NotReusable as exc:
                why = str(exc)
        if manifest is None:
            raise StorageError(f"no raw CDRs for {day.key}, and no published day to use: {why}")
    assert manifest is not None
    check_cut(manifest, day, tz.key)

    def from_raw(scratch: Path) -> FromRaw:
        enricher = Enricher(tz, pseudonyms.region, grouping=settings.number_grouping)
        return FromRaw(store, day, tz, manifest, scratch, enricher)

    built = _build(job, from_raw, facts)
    built.reuse_refused = why
    return built


def _nothing(_part: pa.Table) -> None:
    """The rows are not gathered: the published sums stand for them."""


def _build(job: _Job, source_in: Callable[[Path], Source], facts: dict[str, Any]) -> BuiltDay:
    """The day's datasets from ``source_in``'s rows (given the day's scratch folder)."""
    store, day, settings = job.store, job.day, job.settings
    memory.release()  # what an earlier day or step of this process left freed
    eraser = Eraser(tokens_for(store, day.key, job.pseudonyms), job.pseudonyms)

    def shared(table: pa.Table, name: str) -> pa.Table:
        return share(table, name, job.pseudonyms)

    def shared_cdr() -> Content:
        return source.shared_cdr() or shared_from_staged(txn, job.pseudonyms)

    sharing = shared if store.shared is not None else None
    timings: dict[str, float] = {}
    clock = _Clock()
    with day_scratch(store, day.key) as scratch, DayTransaction(store, day.key) as txn:
        source = source_in(scratch)
        try:
            asked = queries(job.registry, settings)
            per_caller = [n for n, q in asked.items() if q.per_caller]
            published = source.published({n: q.params for n, q in asked.items()}, per_caller)
            gathered = Gathered(
                day,
                job.tz,
                settings,
                scratch,
                expected_rows=source.expected,
                spills=source.spills,
                keep_rows=not store.local,
                distinct=published.unique is None,
            )
            gathered, erased_sums = less_published(gathered, published, eraser)
            only_erased = erased_sums is not None  # the published sums stand for the rest
            rows = source.rows(eraser, () if only_erased else gathered.columns)
            clock.lap("read_check", timings)
            after_read = _Clock()
            gather = _nothing if only_erased else gathered.add
            write_cdr(txn, rows, gather, shared_cdr if sharing else None)
            if erased_sums is not None:
                gathered.less(erased_sums)
            rejects, accounting = source.finish(eraser)
            memory.release()  # DuckDB allocates on its own: not from what malloc keeps
            clock = _Clock()  # the aggregates' lap starts here
            tables = aggregate(
                gathered,
                accounting,
                rejects,
                job.registry,
                settings,
                txn.staged_file("cdr"),
                (published, eraser.lost()),
            )
            clock.lap("analytics", timings)
            record = {
                "date": day.key,
                "source": source.origin,
                "fetch": source.fetch,
                "accounting": accounting,
                **facts,
            }
            paths = publish(
                txn,
                tables,
                {"validation": record, "sums": gathered.state()},
                lambda: shrink_guard(store, day.key, accounting["valid"], job.max_shrink),
                sharing,
            )
        finally:
            source.close()
        after_read.lap("dedup_sort_write", timings)
    return BuiltDay(
        accounting,
        source.origin,
        tables,
        paths,
        txn.shared_paths,
        timings,
        from_published=isinstance(source, FromPublished),
    )
