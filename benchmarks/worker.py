"""One measurement, in a process of its own so its peak memory is its own.

``python -m benchmarks.worker TASK DATA_DIR [N]`` prints one JSON line: the records handled,
the seconds the work took and the peak RSS above the process's RSS just before the work
started (after imports and a warm-up, which load the shared libraries every task needs).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from benchmarks.data import DAY, TZ, day, ensure_day
from cdr_pipeline import publish, raw
from cdr_pipeline.simulator import TIME_FIELDS
from cdr_pipeline.store import Store, open_store

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE_SIZE


def _anonymous() -> int:
    """The process's anonymous resident bytes: its own memory, without the file-backed pages
    (libraries' code as it is first run, files read through a memory map) that RSS counts."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """Samples RSS (and its anonymous part) every few milliseconds while the work runs."""

    def __init__(self) -> None:
        self.base, self.base_anon = _rss(), _anonymous()
        self.peak, self.peak_anon = self.base, self.base_anon
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.peak = max(self.peak, _rss())
        self.peak_anon = max(self.peak_anon, _anonymous())

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.005)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.base) / 1e6

    @property
    def extra_anon_mb(self) -> float:
        return (self.peak_anon - self.base_anon) / 1e6


def bodies(root: Store, limit: int | None = None) -> Iterator[bytes]:
    manifest = raw.read_raw_manifest(root, DAY)
    seen = 0
    for entry in manifest["requests"]:
        yield raw.read_raw_body(root, DAY, entry)
        seen += entry["records"]
        if limit is not None and seen >= limit:
            return


# --- the project ----------------------------------------------------------------------------


def ours(root: Store, _limit: int | None) -> int:
    from cdr_pipeline.day import build_day

    # the day's datasets, published as one version (build_day sets up the allocator)
    result = build_day(root, day(), ZoneInfo(TZ))
    _timed_part.update(result.timings)
    _timed_part["rows_out"] = int(result.accounting["valid"])
    return int(result.accounting["fetched"])


BENCH_KEY = "bench-" + "k" * 32  # the pseudonym key of the bench's shared zones


def _bench_key() -> Any:
    from cdr_pipeline.privacy import Pseudonyms

    return Pseudonyms(BENCH_KEY)


def ours_private(root: Store, _limit: int | None) -> int:
    """The project with a pseudonym key and a shared zone beside the data directory: every
    dataset also published without a clear number (tokens and masks), in the same
    transaction; the difference to ``ours`` is what the privacy costs."""
    from cdr_pipeline.day import build_day
    from cdr_pipeline.store import open_store

    assert root.local
    root.shared = open_store(f"{root.url}-shared")
    result = build_day(root, day(), ZoneInfo(TZ), pseudonyms=_bench_key())
    _timed_part.update(result.timings)
    _timed_part["rows_out"] = int(result.accounting["valid"])
    return int(result.accounting["fetched"])


def ours_private_plain(root: Store, limit: int | None) -> int:
    """``ours_private`` with the tokens and masks replaced by empty columns (the shared zone
    still written): the difference is what tokens and masks cost inside the transform, as
    ``ours_unenriched`` measures the enrichment's."""
    import pyarrow as pa

    from cdr_pipeline import privacy

    def nothing(raw: Any, *_args: object) -> Any:
        return pa.nulls(len(raw), pa.string())

    privacy.canonical_column = nothing  # type: ignore[assignment]
    privacy.mask_column = nothing  # type: ignore[assignment]
    privacy.Pseudonyms.tokens = lambda _self, forms: nothing(forms)  # type: ignore[method-assign]
    return ours_private(root, limit)


def publish_private(folder: Path, the_day: Any) -> Store:
    """``the_day`` built from ``folder/data``'s raw layer with its shared zone in
    ``folder/shared``, under the bench's key; the data directory."""
    from cdr_pipeline.day import build_day

    store = open_store(folder / "data")
    store.shared = open_store(folder / "shared")
    build_day(store, the_day, ZoneInfo(TZ), pseudonyms=_bench_key())
    return store


def _publish_for_erase(folder: str) -> None:
    """The erase's starting point, in a child process (its memory is not the erase's): the
    day published with a shared zone, and its busiest caller written to ``number.txt``."""
    import pyarrow.compute as pc

    store = publish_private(Path(folder), day())
    cdr = publish.read_day_table(store, "cdr", DAY, columns=["src_e164"])
    counts = cdr.column("src_e164").drop_null().value_counts()
    number = counts.field(0)[pc.index(counts.field(1), pc.max(counts.field(1))).as_py()]
    (Path(folder) / "number.txt").write_text(number.as_py())


def _prepared(folder: Path, source: Path) -> None:
    """A copy of ``source``'s raw layer in ``folder``, published with a shared zone by a
    child process (neither timed nor in the memory measured)."""
    import multiprocessing

    shutil.copytree(source / "raw", folder / "data" / "raw")
    child = multiprocessing.get_context("spawn").Process(target=_publish_for_erase, args=(folder,))
    child.start()
    child.join()
    if child.exitcode:
        raise SystemExit(f"publishing the erase's day failed ({child.exitcode})")


def _erase_in(folder: Path) -> dict[str, Any]:
    """The day's busiest caller erased from ``folder``, as a worker of ``cdr-pipeline erase``
    does it: finding the day, re-writing its raw bodies, re-building it from its published
    version; its timings."""
    from cdr_pipeline import erasure
    from cdr_pipeline.day import build_day

    p, tz, the_day = _bench_key(), ZoneInfo(TZ), day()
    number = (folder / "number.txt").read_text()
    store = open_store(folder / "data")
    store.shared = open_store(folder / "shared")
    tokens = frozenset({p.token(number)})
    start, cpu = time.perf_counter(), time.process_time()
    [found] = erasure.find(store, [DAY], number, tokens, p)
    erasure.record(store, p.token(number), p, None, None)
    erasure.erase_raw(store, the_day, tz, tokens, p, erasure.needle_of(number))
    built = build_day(store, the_day, tz, pseudonyms=p, reuse=True)
    if not built.from_published:
        raise SystemExit(f"the erase re-built from raw: {built.reuse_refused}")
    return {
        "seconds": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu,
        "records": int(built.accounting["fetched"]),
        "rows_out": found.calls,
        **built.timings,
    }


def _erase_worker(folder: Path, warm: Path, start: Any, out: Any) -> None:
    """One of the erase's worker processes: warmed up on a small day of its own, it erases
    its day when every worker is ready, and says its timings and its own peak memory."""
    _erase_in(warm)
    with PeakRss() as rss:
        start.wait()
        done = _erase_in(folder)
    out.put(done | {"rss_mb": rss.extra_mb, "anon_mb": rss.extra_anon_mb})


ERASE_WORKERS = 2  # as `cdr-pipeline erase` runs on two cores


def erase(root: Store, _limit: int | None) -> int:
    """Erasing the day's busiest caller from as many copies of the day as there are workers,
    all at once, each in a worker process as ``cdr-pipeline erase`` runs them: the seconds
    are from their start to the last one's end; the peak memory, the largest worker's own."""
    import multiprocessing

    assert root.local
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(dir=Path(root.url).parent) as tmp:
        days = [Path(tmp) / f"day-{i}" for i in range(ERASE_WORKERS)]
        warm = [Path(tmp) / f"warm-{i}" for i in range(ERASE_WORKERS)]
        _prepared(days[0], Path(root.url))
        _prepared(warm[0], Path(ensure_day(5_000)))
        for copies in (days, warm):
            for folder in copies[1:]:
                shutil.copytree(copies[0], folder)
        start, out = ctx.Barrier(ERASE_WORKERS + 1), ctx.Queue()
        workers = [
            ctx.Process(target=_erase_worker, args=(d, w, start, out))
            for d, w in zip(days, warm, strict=True)
        ]
        for w in workers:
            w.start()
        start.wait()
        began = time.perf_counter()
        done = [out.get() for _ in workers]
        _timed_part["seconds"] = time.perf_counter() - began
        for w in workers:
            w.join()
    _timed_part["cpu_s"] = sum(d["cpu_s"] for d in done)
    _timed_part["worker_s"] = max(d["seconds"] for d in done)
    for key in ("rss_mb", "anon_mb", "rows_out"):
        _timed_part[key] = max(d[key] for d in done)
    for key in ("analytics_s", "analytics_cpu_s", "dedup_sort_write_s", "dedup_sort_write_cpu_s"):
        _timed_part[key] = sum(d.get(key, 0.0) for d in done) / len(done)
    return sum(d["records"] for d in done)


def ours_unenriched(root: Store, limit: int | None) -> int:
    """The project with its enrichment (number intelligence, local start) replaced by empty
    columns: the difference to ``ours`` is what the enrichment costs inside the transform."""
    import pyarrow as pa

    from cdr_pipeline import day as daily
    from cdr_pipeline.transform.enrich import ENRICHED_FIELDS

    class Unenriched:
        def __init__(self, *_args: object, **_kwargs: object) -> None:
            pass

        def __call__(self, part: pa.Table) -> pa.Table:
            n = len(part)
            for f in ENRICHED_FIELDS:
                empty = pa.nulls(n, f.type) if f.nullable else pa.repeat(pa.scalar("unknown"), n)
                part = part.append_column(f, empty)
            return part

    daily.Enricher = Unenriched  # type: ignore[misc,assignment]
    return ours(root, limit)


def enrich(root: Store, _limit: int | None) -> int:
    """The number intelligence and local start time alone, over the published day's rows in
    the transform's slices: its share of the transform's time."""
    from cdr_pipeline.transform.enrich import Enricher
    from cdr_pipeline.transform.validate import RECORD_SCHEMA

    table = publish.read_day_table(root, "cdr", DAY, columns=RECORD_SCHEMA.names)
    enricher = Enricher(ZoneInfo(TZ), "CN")
    start = time.perf_counter()
    for offset in range(0, len(table), 1 << 16):
        enricher(table.slice(offset, 1 << 16))
    _timed_part["seconds"] = time.perf_counter() - start
    return len(table)


def ours_warmup() -> None:
    ours(open_store(ensure_day(5_000)), None)


# --- baselines, written the way users write them ----------------------------------------------

TIME_COLUMNS = list(TIME_FIELDS)  # the wire names


def naive_pandas(root: Store, limit: int | None) -> int:
    import pandas as pd

    records: list[dict[str, Any]] = []
    for body in bodies(root, limit):
        records.extend(json.loads(zlib.decompress(body))["cdr"])
    frame = pd.DataFrame(records)
    for col in TIME_COLUMNS:
        seconds = frame[col].astype("int64")
        frame[col] = pd.to_datetime(seconds.where(seconds > 0), unit="s", utc=True)
    frame["callEndStatus"] = frame["callEndStatus"].astype("int8")
    frame["duration"] = frame["duration"].astype("int32")
    frame["callType"] = frame["callType"].fillna("3").astype("int8")
    frame = frame.drop_duplicates("callId")
    out = Path(tempfile.mkdtemp(prefix="bench-pandas-"))
    try:
        frame.to_parquet(out / "cdr.parquet", index=False)
        summary = frame.groupby(["callType", "callEndStatus"]).agg(
            calls=("callId", "size"), billed=("duration", "sum")
        )
        summary.reset_index().to_parquet(out / "outcome.parquet", index=False)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return len(records)


def dlt_filesystem(root: Store, limit: int | None) -> int:
    count = 0

    def cdrs() -> Iterator[dict[str, Any]]:
        nonlocal count
        for body in bodies(root, limit):
            for record in json.loads(zlib.decompress(body))["cdr"]:
                count += 1
                yield record

    _run_dlt("bench_cdr", cdrs())
    return count


def _run_dlt(name: str, items: Iterator[Any]) -> None:
    """A dlt pipeline into a Parquet filesystem destination, in a folder of its own."""
    import dlt

    out = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    try:
        os.environ["DLT_DATA_DIR"] = str(out / "dlt")
        os.environ["RUNTIME__LOG_LEVEL"] = "WARNING"
        pipeline = dlt.pipeline(
            pipeline_name=name,
            destination=dlt.destinations.filesystem(bucket_url=str(out / "lake")),
            dataset_name="cdr",
            pipelines_dir=str(out / "pipelines"),
        )
        pipeline.run(items, table_name="cdr", loader_file_format="parquet")
    finally:
        shutil.rmtree(out, ignore_errors=True)


# pyarrow is imported where it is used: cdr_pipeline (imported above) chooses Arrow's allocator
# before pyarrow loads, as it does in the pipeline's own processes.


def _arrow_page_table(decoded: bytes) -> Any:
    """One page's records as a table, read by ``pyarrow.json`` (every value a string)."""
    import pyarrow as pa

    from cdr_pipeline.transform.columnar import read_pages

    page = read_pages([decoded])
    return pa.Table.from_struct_array(page.column("cdr").combine_chunks().flatten())


def _typed(records: Any) -> Any:
    """The casts a competent user writes: times to timestamps ("0" is null), numbers to
    integers; what does not cast fails the run (these baselines assume clean data)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = {}
    for name in records.column_names:
        col = records.column(name)
        if name in TIME_COLUMNS:
            seconds = pc.cast(col, pa.int64())
            col = pc.cast(pc.if_else(pc.equal(seconds, 0), None, seconds), pa.timestamp("s", "UTC"))
        elif name in ("callEndStatus", "callType"):
            col = pc.cast(pc.fill_null(col, "3"), pa.int8())
        elif name == "duration":
            col = pc.cast(col, pa.int32())
        columns[name] = col
    return pa.table(columns)


def _cast_flag_dedup(records: Any, seen: set[str]) -> Any:
    """Typed, the records a competent user keeps (a start time, a known status, a duration
    not below zero), and the first of each callId against ``seen`` (which it extends)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = _typed(records)
    ok = pc.and_(
        pc.is_valid(table.column("startSrcCallTime")),
        pc.and_(
            pc.less_equal(table.column("callEndStatus"), 5),
            pc.greater_equal(table.column("duration"), 0),
        ),
    )
    table = table.filter(ok)
    fresh = [i not in seen and not seen.add(i) for i in table.column("callId").to_pylist()]
    return table.filter(pa.array(fresh))


def dlt_arrow(root: Store, limit: int | None) -> int:
    """dlt fed Arrow tables, as its docs recommend for speed: one typed table per page."""
    count = 0

    def tables() -> Iterator[Any]:
        nonlocal count
        from isal import isal_zlib

        for body in bodies(root, limit):
            table = _typed(_arrow_page_table(isal_zlib.decompress(body)))
            count += len(table)
            yield table

    _run_dlt("bench_cdr_arrow", tables())
    return count


def arrow_pipeline(root: Store, limit: int | None) -> int:
    """A plain two-thread pyarrow pipeline, as an Arrow-savvy engineer writes it in an
    afternoon: ISA-L inflate; pages of about 4 MB joined as lines and read by
    ``pyarrow.json`` on this thread; cast and flag with Arrow compute; keep-first
    de-duplication against the ids seen so far (a Python set); a ``ParquetWriter`` on a second
    thread. No rejects dataset, no exact rules, memory grows with the day."""
    import queue

    import pyarrow as pa
    import pyarrow.parquet as pq
    from isal import isal_zlib

    from cdr_pipeline.publish import PARQUET_OPTIONS
    from cdr_pipeline.transform.columnar import read_pages

    out = Path(tempfile.mkdtemp(prefix="bench-arrow-"))
    todo: queue.Queue[Any] = queue.Queue(maxsize=2)
    count = 0

    def write() -> None:
        writer = None
        while (table := todo.get()) is not None:
            if writer is None:
                writer = pq.ParquetWriter(out / "cdr.parquet", table.schema, **PARQUET_OPTIONS)
            writer.write_table(table)
        if writer is not None:
            writer.close()

    def flush(batch: list[bytes]) -> None:
        nonlocal count
        page = read_pages(batch)
        records = pa.Table.from_struct_array(page.column("cdr").combine_chunks().flatten())
        count += len(records)
        todo.put(_cast_flag_dedup(records, seen))

    seen: set[str] = set()
    writer = threading.Thread(target=write)
    writer.start()
    try:
        batch: list[bytes] = []
        size = 0
        for body in bodies(root, limit):
            batch.append(isal_zlib.decompress(body))
            size += len(batch[-1])
            if size >= 4 << 20:
                flush(batch)
                batch, size = [], 0
        if batch:
            flush(batch)
    finally:
        todo.put(None)
        writer.join()
        shutil.rmtree(out, ignore_errors=True)
    return count


# --- the strong baselines: as careful engineers write them (issue 27) -------------------------

STRONG_PAGES = 64  # pages a group: one read_json call over about 6 MB of lines
ROW_GROUP = 128 * 1024


def _pipe(produce: Callable[[], Iterator[Any]], depth: int = 2) -> Iterator[Any]:
    """``produce`` on a thread of its own, its items handed over through a bounded queue (about
    ``depth`` items held at a time); its exception raised here."""
    import queue

    handoff: queue.Queue[Any] = queue.Queue(maxsize=depth)
    done = object()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            for item in produce():
                handoff.put(item)
        except BaseException as exc:  # handed to the consumer
            failed.append(exc)
        finally:
            handoff.put(done)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while (item := handoff.get()) is not done:
        yield item
    thread.join()
    if failed:
        raise failed[0]


def _strong_groups(root: Store, limit: int | None) -> Iterator[Any]:
    """Stage 1: about 64 pages at a time inflated (ISA-L), joined with newlines into one
    buffer and read by ``pyarrow.json`` with an explicit schema of the page's ``cdr`` list
    (Arrow's threads, a block of half the buffer), flattened to one table of strings."""
    import pyarrow as pa
    import pyarrow.json as pj
    from isal import isal_zlib

    from cdr_pipeline.transform.columnar import PAGE_SCHEMA

    schema = pa.schema([PAGE_SCHEMA.field("cdr")])
    group: list[bytes] = []

    def read(pages: list[bytes]) -> Any:
        buf = b"\n".join(pages)
        page = pj.read_json(
            pa.BufferReader(buf),
            read_options=pj.ReadOptions(use_threads=True, block_size=len(buf) // 2 + 1),
            parse_options=pj.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
        return pa.Table.from_struct_array(page.column("cdr").combine_chunks().flatten())

    for body in bodies(root, limit):
        group.append(isal_zlib.decompress(body))
        if len(group) == STRONG_PAGES:
            yield read(group)
            group = []
    if group:
        yield read(group)


def _strong_cast_and_dedup(groups: Iterator[Any]) -> Iterator[Any]:
    """Stage 2: casts and flags with Arrow compute, copies dropped keep-first as rows stream
    (against the ids seen so far)."""
    seen: set[str] = set()
    for records in groups:
        yield _cast_flag_dedup(records, seen)


def _strong_write(tables: Iterator[Any], path: Path) -> tuple[int, Any]:
    """Stage 3: the daily summary kept and Parquet written (zstd, 128k-row groups)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer, pending, rows, parts = None, [], 0, []

    def flush(final: bool = False) -> None:
        nonlocal pending
        table = pa.concat_tables(pending)
        cut = len(table) if final else len(table) // ROW_GROUP * ROW_GROUP
        writer.write_table(table.slice(0, cut), row_group_size=ROW_GROUP)
        pending = [table.slice(cut)] if cut < len(table) else []

    for table in tables:
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="zstd")
        parts.append(
            table.group_by(["callType", "callEndStatus"], use_threads=False).aggregate(
                [("callId", "count"), ("duration", "sum")]
            )
        )
        pending.append(table)
        rows += len(table)
        if sum(len(t) for t in pending) >= ROW_GROUP:
            flush()
    if writer is not None:
        if pending:
            flush(final=True)
        writer.close()
    if not parts:
        return rows, None
    summary = pa.concat_tables(parts).group_by(["callType", "callEndStatus"])
    return rows, summary.aggregate([("callId_count", "sum"), ("duration_sum", "sum")])


def arrow_strong(root: Store, limit: int | None) -> int:
    """The strongest plain pyarrow pipeline we can write: three stages on three threads joined
    by bounded queues (read, cast and dedup, write), about two groups held per hop."""
    count = 0

    def counted() -> Iterator[Any]:
        nonlocal count
        for records in _pipe(lambda: _strong_groups(root, limit)):
            count += len(records)
            yield records

    out = Path(tempfile.mkdtemp(prefix="bench-arrow-strong-"))
    try:
        written = _pipe(lambda: _strong_cast_and_dedup(counted()))
        rows, _summary = _strong_write(written, out / "cdr.parquet")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    _timed_part["rows_out"] = rows
    return count


def dlt_arrow_strong(root: Store, limit: int | None) -> int:
    """dlt fed the same groups' typed Arrow tables (the strong pipeline's reading and casts),
    into its filesystem destination as Parquet, as dlt's docs advise for speed."""
    count = rows = 0

    def counted() -> Iterator[Any]:
        nonlocal count
        for records in _pipe(lambda: _strong_groups(root, limit)):
            count += len(records)
            yield records

    def tables() -> Iterator[Any]:
        nonlocal rows
        for typed in _strong_cast_and_dedup(counted()):
            rows += len(typed)
            yield typed

    _run_dlt("bench_cdr_arrow_strong", tables())
    _timed_part["rows_out"] = rows
    return count


# --- the floors: each stage alone ------------------------------------------------------------


def floor_inflate(root: Store, limit: int | None) -> int:
    """Inflating alone, one thread, as the transform does it (ISA-L where installed)."""
    from cdr_pipeline.api.wire import decode_body

    n = 0
    for body in bodies(root, limit):
        decode_body(body)
        n += 1000
    return n


def floor_json_to_arrow(root: Store, limit: int | None) -> int:
    """Arrow's JSON reader alone, on two threads as the transform runs it."""
    from concurrent.futures import ThreadPoolExecutor

    from cdr_pipeline.day import PARSE_AHEAD
    from cdr_pipeline.transform.columnar import read_pages

    pages = [zlib.decompress(b) for b in bodies(root, limit)]

    def records(batch: list[bytes]) -> int:
        return len(read_pages(batch).column("cdr").combine_chunks().flatten())

    start, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max_workers=PARSE_AHEAD) as pool:
        n = sum(pool.map(records, [pages[i : i + 10] for i in range(0, len(pages), 10)]))
    _timed_part["seconds"] = time.perf_counter() - start
    _timed_part["cpu_s"] = time.process_time() - cpu
    return n


def floor_parquet_write(root: Store, limit: int | None) -> int:
    table = publish.read_day_table(root, "cdr", DAY)
    start, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        publish.write_parquet(Path(tmp) / "x.parquet", table)
    _timed_part["seconds"] = time.perf_counter() - start
    _timed_part["cpu_s"] = time.process_time() - cpu
    return table.num_rows


_timed_part: dict[str, float] = {}


def _warm(task: Callable[[Store, int | None], int]) -> Callable[[], None]:
    def warm() -> None:
        task(open_store(ensure_day(5_000)), 2_000)

    return warm


TASKS: dict[str, tuple[Callable[[Store, int | None], int], Callable[[], None] | None]] = {
    "ours": (ours, ours_warmup),
    "enrich": (enrich, None),
    "ours_unenriched": (ours_unenriched, ours_warmup),
    "ours_private": (ours_private, ours_warmup),
    "ours_private_plain": (ours_private_plain, ours_warmup),
    "erase": (erase, None),  # each worker warms up on its own
    "pandas": (naive_pandas, _warm(naive_pandas)),
    "dlt": (dlt_filesystem, _warm(dlt_filesystem)),
    "dlt_arrow": (dlt_arrow, _warm(dlt_arrow)),
    "arrow": (arrow_pipeline, _warm(arrow_pipeline)),
    "arrow_strong": (arrow_strong, _warm(arrow_strong)),
    "dlt_arrow_strong": (dlt_arrow_strong, _warm(dlt_arrow_strong)),
    "floor_inflate": (floor_inflate, None),
    "floor_json": (floor_json_to_arrow, _warm(floor_json_to_arrow)),
    "floor_parquet": (floor_parquet_write, None),
}


def main(argv: list[str]) -> int:
    task, root = argv[0], open_store(argv[1])
    limit = int(argv[2]) if len(argv) > 2 and argv[2] != "-" else None
    work, warmup = TASKS[task]
    if warmup is not None:
        warmup()
    with PeakRss() as rss:
        start, cpu = time.perf_counter(), time.process_time()
        records = work(root, limit)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    seconds = _timed_part.pop("seconds", seconds)
    cpu = _timed_part.pop("cpu_s", cpu)
    result = {
        "task": task,
        "records": records,
        "seconds": seconds,
        "cpu_s": cpu,  # every thread's, so cpu_s / seconds is the cores kept busy
        "rss_mb": rss.extra_mb,
        "anon_mb": rss.extra_anon_mb,
    }
    result |= _timed_part
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
