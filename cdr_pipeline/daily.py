"""One day, end to end, without Dagster: fetch it to the raw layer, then validate and
summarize it into one published version of the day.

The Dagster assets are thin wrappers around these two functions.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa

from cdr_pipeline import storage
from cdr_pipeline.api.client import CdrApiClient, Window
from cdr_pipeline.api.wire import DEFAULT_MAX_BODY_BYTES, decode_body
from cdr_pipeline.settings import AnalyticsSettings
from cdr_pipeline.store import Store
from cdr_pipeline.transform.analytics import Analytics, DayAnalytics
from cdr_pipeline.transform.day import DayBuilder, ParsedPages, parse_pages
from cdr_pipeline.transform.enrich import Enricher
from cdr_pipeline.transform.summarize import KpiSummary, OutcomeSummary, kpi_table
from cdr_pipeline.transform.validate import CDR_SCHEMA

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Day:
    """A partition: its key and its bounds as epoch seconds, ``[start, end)``."""

    key: str
    start: int
    end: int

    @classmethod
    def from_datetimes(cls, key: str, start: datetime, end: datetime) -> Day:
        return cls(storage.check_day(key), int(start.timestamp()), int(end.timestamp()))

    @classmethod
    def from_key(cls, key: str, tz: ZoneInfo) -> Day:
        """Local midnight to local midnight: 23 or 25 hours on daylight-saving days."""
        d = datetime.fromisoformat(storage.check_day(key)).date()
        start = datetime(d.year, d.month, d.day, tzinfo=tz)
        nxt = d.fromordinal(d.toordinal() + 1)
        end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz)
        return cls.from_datetimes(key, start, end)


def fetch_windows(day: Day, window_hours: int, margin_s: int) -> list[Window]:
    """Sub-windows covering the day widened by the margin; neighbours share one second.

    Only the day's two outer edges are widened: inner boundaries need no margin because the
    same partition fetches both sides of them.
    """
    step = window_hours * 3600
    edges = [*list(range(day.start, day.end, step)), day.end]
    edges[0] -= margin_s
    edges[-1] += margin_s
    return list(itertools.pairwise(edges))


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fetch_raw_day(
    client: CdrApiClient,
    store: Store,
    day: Day,
    *,
    src: str | None = None,
    endpoint: str = "simulator",
) -> dict[str, Any]:
    """Fetch a day into ``raw/cdr/date=DAY/`` and return its manifest."""
    margin_s = client.settings.margin_s
    windows = fetch_windows(day, client.settings.window_hours, margin_s)
    max_body_bytes = client.settings.max_body_bytes
    before = client.stats
    requests, bodies = [], []
    for _window, pages in client.fetch_windows(windows, src):
        for page in pages:
            name, digest = storage.body_name(page.body, page.encoding)
            bodies.append((page.body, page.encoding))
            requests.append(
                {
                    "file": name,
                    "sha256": digest,
                    "window": list(page.window),
                    "window_utc": [_iso(page.window[0]), _iso(page.window[1])],
                    "cursor_sent": page.cursor_sent,
                    "cursor_received": page.cursor_received,
                    "attempts": page.attempts,
                    "encoding": page.encoding,
                    "bytes": len(page.body),
                    "decoded_bytes": page.decoded_bytes,
                    "records": page.record_count,
                }
            )
    after = client.stats
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "date": day.key,
        "day_window": [day.start, day.end],
        "day_window_utc": [_iso(day.start), _iso(day.end)],
        "fetch_windows": [list(w) for w in windows],
        "margin_s": margin_s,
        "max_body_bytes": max_body_bytes,
        "src": src,
        "endpoint": endpoint,
        "fetched_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "requests": requests,
        "totals": {
            "pages": len(requests),
            "records": sum(r["records"] for r in requests),
            "bytes": sum(r["bytes"] for r in requests),
            "decoded_bytes": sum(r["decoded_bytes"] for r in requests),
            "http_requests": delta.get("requests", 0),
            "retries": delta.get("retries", 0),
            "window_splits": delta.get("window_splits", 0),
            "chain_splits": delta.get("chain_splits", 0),
            "pages_discarded": delta.get("pages_discarded", 0),
        },
    }
    storage.write_raw_day(store, day.key, bodies, manifest)
    return manifest


@dataclass
class ValidatedDay:
    """What one version of a day holds, as the assets report it."""

    accounting: dict[str, Any]
    outcome: pa.Table  # call_outcome_daily
    kpis: dict[str, Any]  # call_kpis_daily's one row
    paths: dict[str, str]  # dataset -> where its file is
    timings: dict[str, float]  # seconds: reading and checking pages; de-duplicating,
    # sorting and writing the files; the analytics (within the latter); each also as the
    # process's CPU seconds (``*_cpu_s``, every thread): over the wall time, the cores kept busy
    analytics: Analytics  # call_destinations_daily, call_load_hourly, caller_risk_daily


def prefer_allocator() -> str:
    """Have Arrow allocate with the C library's malloc unless ``ARROW_DEFAULT_MEMORY_POOL``
    names another allocator (the package sets it for Arrow's C++ before pyarrow loads; this
    also switches pyarrow's own default in a process that loaded pyarrow first); return the
    one in use. mimalloc, pyarrow's default, keeps freed pages for reuse: on the 1M-call bench
    day the transform peaked at 149 MB on malloc with two arenas (:func:`cap_malloc_arenas`),
    150 MB on jemalloc and 235 MB on mimalloc, at the same speed (benchmarks/RESULTS.md);
    malloc needs no allocator built into pyarrow."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL", "system") == "system":
        pa.set_memory_pool(pa.system_memory_pool())
    return pa.default_memory_pool().backend_name


# glibc gives each thread that contends for malloc an arena of its own (up to eight per core),
# and what is freed in one stays mapped: numpy's and DuckDB's temporaries on the transform's
# six threads held 20-40 MB more at the peak than on two arenas, at the same speed (measured
# with MALLOC_ARENA_MAX, which an operator may still set).
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)


def cap_malloc_arenas() -> bool:
    """Cap glibc's malloc arenas for this process; False where that is not glibc's to do or
    ``MALLOC_ARENA_MAX`` already decides."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS))
    except (OSError, AttributeError):  # not glibc: musl, macOS ...
        return False


# Decoded pages handed to the transform at once: large enough that the per-batch work is
# small beside the parse (2 MB batches measured 25% slower), small enough that memory does
# not grow with the day.
BATCH_BYTES = 4 * 1024 * 1024
# Batches parsed side by side, each by a single-threaded Arrow reader: on two cores this does
# the same work as Arrow's own threads in about two thirds of the CPU.
PARSE_AHEAD = 2


def decoded_batches(
    store: Store, day: str, manifest: dict[str, Any], max_bytes: int
) -> Iterator[list[tuple[bytes, str, list[int]]]]:
    """The day's raw bodies, read, checked and decompressed a few ahead on other threads
    (hashing and zlib release the GIL), in batches."""

    def decode(entry: dict[str, Any]) -> tuple[bytes, str, list[int]]:
        body = storage.read_raw_body(store, day, entry)
        decoded, _ = decode_body(body, max_bytes=max_bytes)
        return decoded, entry["file"], entry["window"]

    batch: list[tuple[bytes, str, list[int]]] = []
    size = 0
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="inflate") as pool:
        pending: deque[Future[tuple[bytes, str, list[int]]]] = deque()
        for entry in manifest["requests"]:
            pending.append(pool.submit(decode, entry))
            if len(pending) < 8:
                continue
            page = pending.popleft().result()
            batch.append(page)
            size += len(page[0])
            if size >= BATCH_BYTES:
                yield batch
                batch, size = [], 0
        while pending:
            batch.append(pending.popleft().result())
    if batch:
        yield batch


class ShrinkRefused(RuntimeError):
    """A re-run would publish markedly fewer valid calls than the published day."""


def shrink_guard(store: Store, day: str, valid: int, max_shrink: float | None) -> None:
    """Refuse to replace a published day by one with no valid calls, or with more than
    ``max_shrink`` (a share) fewer; ``None`` allows anything (the operator's choice for a run).
    A provider that suddenly answers nothing must not empty a good day."""
    if max_shrink is None:
        return
    try:
        published = storage.read_state(store, "validation", day)["accounting"]["valid"]
    except storage.StorageError:
        return  # nothing published yet
    if published == 0 or (valid >= published * (1 - max_shrink) and valid > 0):
        return
    drop = (published - valid) / published
    raise ShrinkRefused(
        f"{day}: this run would publish {valid} valid calls where the published version has "
        f"{published} (a drop of {drop:.1%}; CDR_MAX_SHRINK allows {max_shrink:.1%}, and a "
        "drop to zero only when allowed); nothing was replaced. If the provider really holds "
        "fewer calls for the day, re-run it with run config allow_shrink: true "
        "(cdr-pipeline materialize --allow-shrink)"
    )


def validate_day(
    store: Store,
    day: Day,
    tz: ZoneInfo,
    *,
    max_shrink: float | None = None,
    analytics: AnalyticsSettings | None = None,
) -> ValidatedDay:
    """Raw layer -> the day's ``cdr`` (enriched), ``cdr_rejects``, ``call_outcome_daily``,
    ``call_kpis_daily`` and the analytics datasets with its accounting record, published as one
    version (unless :func:`shrink_guard` refuses it)."""
    analytics = analytics or AnalyticsSettings()
    prefer_allocator()
    cap_malloc_arenas()
    manifest = storage.read_raw_manifest(store, day.key)
    max_bytes = manifest.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES)
    expected = manifest["totals"]["records"]
    # The day's scratch: the builder's spill folder, the analytics' rows and a large day's
    # distinct-count keys. Named by the day, whose lease this run holds, so a run killed
    # before it could clean up leaves nothing the next run of the day does not remove.
    spill_root = storage.spill_dir(store) or Path(tempfile.gettempdir())
    prefix = f".cdr-day-{day.key}-"
    for stale in spill_root.glob(f"{prefix}*"):
        shutil.rmtree(stale, ignore_errors=True)
    scratch = tempfile.TemporaryDirectory(prefix=prefix, dir=spill_root, ignore_cleanup_errors=True)
    builder = DayBuilder(
        day.start, day.end, tz, expected_records=expected, spill_dir=Path(scratch.name)
    )
    enrich = Enricher(tz, analytics.default_region)
    day_analytics = DayAnalytics(Path(scratch.name), day.start, day.end, tz, analytics)
    tz_name = tz.key
    timings: dict[str, float] = {}
    started, started_cpu = time.perf_counter(), time.process_time()
    try:
        # Arrow parses and checks the next batches on other threads while this one is added
        # (Arrow releases the GIL); results are taken in order, PARSE_AHEAD at most waiting.
        # A batch Arrow could not read whole tells the next ones to cut their pages first.
        cut = False
        with ThreadPoolExecutor(max_workers=PARSE_AHEAD, thread_name_prefix="parse") as parser:
            ahead: deque[tuple[list, Future[ParsedPages]]] = deque()
            for batch in decoded_batches(store, day.key, manifest, max_bytes):
                ahead.append((batch, parser.submit(parse_pages, batch, tz_name, cut=cut)))
                if len(ahead) > PARSE_AHEAD:
                    pages, parsing = ahead.popleft()
                    done = parsing.result()
                    cut = done.cut
                    builder.add_parsed(pages, done)
            while ahead:
                pages, parsing = ahead.popleft()
                builder.add_parsed(pages, parsing.result())
        parsed, parsed_cpu = time.perf_counter(), time.process_time()
        state: dict[str, Any] = {"date": day.key, "fetch": manifest["totals"]}

        outcome = OutcomeSummary()
        kpis = KpiSummary(
            tz,
            expected_rows=expected,
            spill_folder=Path(scratch.name) if builder.spill_folder is not None else None,
        )

        def summarize(part: pa.Table) -> None:
            outcome.add(part)
            kpis.add(part)
            day_analytics.add(part)

        def cdr_rows() -> Iterator[pa.Table]:
            # The summaries are taken from the rows on their way to the file, on a thread of
            # their own (most of their work is in numpy and Arrow, which release the GIL).
            pending: deque[Future[None]] = deque()
            for part in builder.iter_cdr():
                part = enrich(part)
                pending.append(summarizer.submit(summarize, part))
                if len(pending) > 1:
                    pending.popleft().result()
                yield part
            while pending:
                pending.popleft().result()
            # the accounting is complete once every row has been produced
            state["accounting"] = builder.accounting() | {
                "raw_records": manifest["totals"]["records"]
            }
            summary["outcome"] = outcome.table().combine_chunks()

        def analysed() -> Analytics:
            # asked once ``cdr``'s file is closed: DuckDB's memory does not add to its writer's
            if "analytics" not in summary:
                begun, begun_cpu = time.perf_counter(), time.process_time()
                summary["analytics"] = day_analytics.finish(CDR_SCHEMA)
                timings["analytics_s"] = time.perf_counter() - begun
                timings["analytics_cpu_s"] = time.process_time() - begun_cpu
            return summary["analytics"]

        def kpi_row() -> pa.Table:
            summary["kpis"] = kpis.values(state["accounting"]) | analysed().billing
            return kpi_table(summary["kpis"])

        summary: dict[str, Any] = {}
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="summary") as summarizer:
            # Written in this order: the summaries are complete once ``cdr`` is.
            paths = storage.publish_day(
                store,
                day.key,
                {
                    "cdr": (CDR_SCHEMA, cdr_rows()),
                    "cdr_rejects": builder.rejects_table(),
                    "call_outcome_daily": lambda: summary["outcome"],
                    "call_kpis_daily": kpi_row,
                    "call_destinations_daily": lambda: analysed().destinations,
                    "call_load_hourly": lambda: analysed().hourly,
                    "caller_risk_daily": lambda: analysed().risk,
                },
                state={"validation": state},
                approve=lambda: shrink_guard(
                    store, day.key, state["accounting"]["valid"], max_shrink
                ),
            )
    finally:
        builder.close()
        scratch.cleanup()
    finished, finished_cpu = time.perf_counter(), time.process_time()
    timings |= {
        "read_check_s": parsed - started,
        "dedup_sort_write_s": finished - parsed,
        "read_check_cpu_s": parsed_cpu - started_cpu,
        "dedup_sort_write_cpu_s": finished_cpu - parsed_cpu,
    }
    return ValidatedDay(
        state["accounting"],
        summary["outcome"],
        summary["kpis"],
        paths,
        timings,
        summary["analytics"],
    )
