"""The de-duplication stage: a day's checked records to its ``cdr`` rows and ``cdr_rejects``,
in bounded memory, with the day's accounting.

The valid rows of the day collect as Arrow batches in slices by start time (on disk for a
large day), with an 8-byte key of each ``call_id`` kept aside. Once every page is in, the keys
seen more than once name the only rows that can be copies: those alone are gathered and
de-duplicated exactly (the key only groups; the real ids are compared), and each time slice is
then sorted by
``(start, call_id)`` and handed on, so memory holds one slice of the day at a time.

The accounting is the promise to operators: every fetched record ends up in exactly one of
``valid``, ``rejected``, ``duplicates_dropped``, ``overlap_copies`` or ``outside_day``.
A *duplicate* is a copy the provider serves (a record listed twice by one query), an *overlap
copy* one the client caused by asking for the same instant twice (windows share their boundary
second, split windows more of them): a record's provider multiplicity is the most copies any
single query returned, and every further copy is an overlap copy. So the figures do not depend
on how the day was fetched.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from cdr_pipeline.api.spans import Unreadable
from cdr_pipeline.transform.columnar import (
    CheckedRecords,
)
from cdr_pipeline.transform.hashing import fingerprint
from cdr_pipeline.transform.keylog import KeyLog
from cdr_pipeline.transform.parse import TIME_FIELDS, to_json
from cdr_pipeline.transform.read import ParsedPages
from cdr_pipeline.transform.validate import (
    RECORD_SCHEMA,
    REJECT_REASONS,
    REJECTS_SCHEMA,
    Reject,
    validate_record,
)

TIME_COLUMNS = tuple(col for _, col in TIME_FIELDS)
# Valid rows while the day is being built: times as epoch seconds, plus the query they came in.
WORK_SCHEMA = pa.schema(
    [pa.field(f.name, pa.int64()) if f.name in TIME_COLUMNS else f for f in RECORD_SCHEMA]
    + [pa.field("_q", pa.int32())]
)
SPILL_ABOVE_ROWS = 200_000  # a day expected to hold more than this spills to disk
ROWS_PER_BUCKET = 64_000
_TS = pa.timestamp("ms", tz="UTC")


class _Copies:
    """How often one key was seen: in total, and at most within a single query."""

    __slots__ = ("in_query", "max_in_query", "query", "total")

    def __init__(self, query: object) -> None:
        self.query, self.in_query, self.max_in_query, self.total = query, 1, 1, 1

    def see(self, query: object) -> None:
        self.total += 1
        if query == self.query:
            self.in_query += 1
            self.max_in_query = max(self.max_in_query, self.in_query)
        else:
            self.query, self.in_query = query, 1


class _Buckets:
    """Tables grouped by a bucket number: in memory, or in Arrow IPC files on disk."""

    def __init__(self, count: int, folder: Path | None, name: str) -> None:
        self.count = count
        self.folder = folder
        self.name = name
        self._memory: dict[int, list[pa.Table]] = {}
        self._writers: dict[int, ipc.RecordBatchStreamWriter] = {}
        self._closed = False

    def add(self, table: pa.Table, bucket: np.ndarray | int) -> None:
        if isinstance(bucket, int) or self.count == 1:
            self._put(bucket if isinstance(bucket, int) else 0, table)
            return
        if len(bucket) and bucket.min() == bucket.max():  # pages come in time order: common
            self._put(int(bucket[0]), table)
            return
        order = np.argsort(bucket, kind="stable")
        sorted_buckets = bucket[order]
        table = table.take(pa.array(order))
        edges = np.flatnonzero(np.diff(sorted_buckets)) + 1
        starts = np.concatenate([[0], edges])
        ends = np.concatenate([edges, [len(order)]])
        for s, e in zip(starts, ends, strict=True):
            self._put(int(sorted_buckets[s]), table.slice(s, e - s))

    def _put(self, bucket: int, table: pa.Table) -> None:
        if self.folder is None:
            self._memory.setdefault(bucket, []).append(table)
            return
        writer = self._writers.get(bucket)
        if writer is None:
            path = self.folder / f"{self.name}-{bucket:05d}.arrow"
            writer = self._writers[bucket] = ipc.new_stream(str(path), table.schema)
        writer.write_table(table)

    def read(self, *, free: bool) -> Iterator[tuple[int, pa.Table]]:
        """Each non-empty bucket, in bucket order; ``free`` drops each once it is read."""
        if not self._closed:
            for writer in self._writers.values():
                writer.close()
            self._closed = True
        for bucket in range(self.count):
            if self.folder is None:
                parts = self._memory.pop(bucket, []) if free else self._memory.get(bucket, [])
                if parts:
                    yield bucket, pa.concat_tables(parts)
                continue
            path = self.folder / f"{self.name}-{bucket:05d}.arrow"
            if bucket in self._writers and path.exists():
                with ipc.open_stream(str(path)) as reader:
                    table = reader.read_all()
                if free:
                    path.unlink()
                yield bucket, table


class DayBuilder:
    """Feeds the pages of one day in; keeps what belongs to ``[day_start, day_end)``.

    Pages of one query (same window) must arrive together, as the raw manifest lists them.
    ``expected_records`` (the manifest's count) decides whether the day spills to disk.
    """

    def __init__(
        self,
        day_start: int,
        day_end: int,
        tz: ZoneInfo,
        *,
        expected_records: int = 0,
        spill_dir: Path | None = None,
        spill_above: int | None = None,
        rows_per_bucket: int = ROWS_PER_BUCKET,
        keys_per_part: int | None = None,
    ) -> None:
        self.day_start, self.day_end, self.tz = day_start, day_end, tz
        self.fetched = 0
        self.outside_day = 0
        self._queries: dict[tuple[int, int], int] = {}
        self._rejects: dict[str, tuple[str, str, str]] = {}
        self._reasons: Counter[str] = Counter()
        self._reject_copies: dict[str, _Copies] = {}
        self._dup = {"provider": 0, "copies": 0, "conflicting": 0}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        folder = None
        buckets = 1
        if expected_records > (SPILL_ABOVE_ROWS if spill_above is None else spill_above):
            self._tmp = tempfile.TemporaryDirectory(
                prefix=".cdr-day-", dir=spill_dir, ignore_cleanup_errors=True
            )
            folder = Path(self._tmp.name)
            # time slices of equal length; busy hours hold about twice the average
            buckets = 2 * -(-expected_records // rows_per_bucket)
        self._by_time = _Buckets(buckets, folder, "time")
        self.spill_folder = folder  # None: the day is held in memory
        self._keys = KeyLog(expected_records, folder, keys_per_part, "call-ids")
        self._repeated = pa.array([], pa.uint64())
        self._winners: dict[int, pa.Table] = {}
        self._slow_rows: list[dict[str, Any]] = []
        self._slow_queries: list[int] = []
        self._finished = False
        self._settled = False
        self._valid_count = 0

    # --- input ------------------------------------------------------------------------

    def _query(self, window: Sequence[int]) -> int:
        key = (int(window[0]), int(window[1]))
        return self._queries.setdefault(key, len(self._queries))

    def add_parsed(
        self, pages: Sequence[tuple[bytes, str, Sequence[int]]], parsed: ParsedPages
    ) -> None:
        """Pages ``(json bytes, source, window)`` with :func:`parse_pages`'s result for them
        (which a caller may run ahead on another thread): the one way pages come in."""
        self.fetched += parsed.records
        for page, place in parsed.exact:
            _, source, window = pages[page]
            mid = (int(window[0]) + int(window[1])) // 2
            self._add_slow(parsed.documents[page][place], source, mid, self._query(window))
        checked = parsed.checked
        if len(checked.clean):
            queries = np.array([self._query(w) for _, _, w in pages], dtype=np.int32)
            self._add_checked(checked, queries[parsed.parents])
        self._flush_slow()

    def _add_checked(self, checked: CheckedRecords, queries: np.ndarray) -> None:
        """The records the column-wise checks accepted: those of the day are kept."""
        clean = checked.clean.to_numpy(zero_copy_only=False)
        start = checked.columns["start_src_call_time"]
        in_day = pc.fill_null(
            pc.and_(pc.greater_equal(start, self.day_start), pc.less(start, self.day_end)), False
        ).to_numpy(zero_copy_only=False)
        keep = clean & in_day
        self.outside_day += int((clean & ~in_day).sum())
        if keep.any():
            # usually every record is kept: then the columns go on as they are
            mask = None if keep.all() else pa.array(keep)
            cols = {
                name: checked.columns[name]
                if mask is None
                else pc.filter(checked.columns[name], mask)
                for name in WORK_SCHEMA.names
                if name != "_q"
            }
            cols["_q"] = pa.array(queries if mask is None else queries[keep], pa.int32())
            self._add_valid(pa.table(cols, schema=WORK_SCHEMA))

    def _add_slow(self, rec: Any, source: str, window_mid: int, q: int) -> None:
        result = validate_record(rec, self.tz)
        if isinstance(result, Reject):
            self._add_reject(rec, result, source, window_mid, q)
            return
        if not self.day_start <= result["start_src_call_time"] < self.day_end:
            self.outside_day += 1
            return
        self._slow_rows.append(result)
        self._slow_queries.append(q)

    def _flush_slow(self) -> None:
        if not self._slow_rows:
            return
        cols = {
            f.name: pa.array([r[f.name] for r in self._slow_rows], f.type)
            for f in WORK_SCHEMA
            if f.name != "_q"
        }
        cols["_q"] = pa.array(self._slow_queries, pa.int32())
        self._slow_rows, self._slow_queries = [], []
        self._add_valid(pa.table(cols, schema=WORK_SCHEMA))

    def _add_reject(self, rec: Any, reject: Reject, source: str, window_mid: int, q: int) -> None:
        day_time = reject.day_time if reject.day_time is not None else window_mid
        if not self.day_start <= day_time < self.day_end:
            self.outside_day += 1
            return
        raw = rec.text if isinstance(rec, Unreadable) else to_json(rec)
        copies = self._reject_copies.get(raw)
        if copies is None:
            self._reject_copies[raw] = _Copies(q)
            self._rejects[raw] = (reject.reason, reject.detail, source)
            self._reasons[reject.reason] += 1
        else:
            copies.see(q)

    def _add_valid(self, table: pa.Table) -> None:
        key = fingerprint(table.column("call_id"))
        self._keys.add(key)
        table = table.append_column("_k", pa.array(key, pa.uint64()))
        self._by_time.add(table, 0 if self._by_time.count == 1 else self._time_bucket(table))

    # --- output -----------------------------------------------------------------------

    def _dedup(self, table: pa.Table) -> pa.Table:
        """Exact de-duplication of one id bucket, with its share of the accounting."""
        if pc.count_distinct(table.column("call_id")).as_py() == len(table):
            return table.drop_columns(["_q"])  # no copies at all: the common case
        per_query = table.group_by(["call_id", "_q"]).aggregate([("_q", "count")])
        per_call = per_query.group_by("call_id").aggregate(
            [("_q_count", "max"), ("_q_count", "sum")]
        )
        most = per_call.column("_q_count_max").to_numpy()
        self._dup["provider"] += int((most - 1).sum())
        self._dup["copies"] += int((per_call.column("_q_count_sum").to_numpy() - 1).sum())
        content = [pc.cast(table.column(f.name), pa.string()) for f in RECORD_SCHEMA]
        key = pc.binary_join_element_wise(
            *content, "\x1f", null_handling="replace", null_replacement="\x00"
        )
        filled = pc.cast(table.column("call_id").is_valid(), pa.int8())
        for f in RECORD_SCHEMA:
            filled = pc.add(filled, pc.cast(table.column(f.name).is_valid(), pa.int8()))
        work = table.append_column("_key", key).append_column("_filled", filled)
        work = work.append_column("_end", pc.fill_null(table.column("end_call_time"), -1))
        versions = work.group_by("call_id").aggregate([("_key", "count_distinct")])
        many = pc.filter(versions, pc.greater(versions.column("_key_count_distinct"), 1))
        if len(many):
            joined = many.join(per_call, "call_id")
            nv = joined.column("_key_count_distinct").to_numpy()
            mx = joined.column("_q_count_max").to_numpy()
            self._dup["conflicting"] += int(np.minimum(nv - 1, mx - 1).sum())
        work = work.sort_by(
            [
                ("call_id", "ascending"),
                ("_filled", "descending"),
                ("_end", "descending"),
                ("_key", "descending"),
            ]
        )
        ids = work.column("call_id").combine_chunks()
        first = np.ones(len(ids), dtype=bool)
        if len(ids) > 1:
            first[1:] = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)).to_numpy(
                zero_copy_only=False
            )
        return work.filter(pa.array(first)).drop_columns(["_q", "_key", "_filled", "_end"])

    def _time_bucket(self, table: pa.Table) -> np.ndarray:
        span = max(1, self.day_end - self.day_start)
        start = table.column("start_src_call_time").to_numpy()
        return ((start - self.day_start) * self._by_time.count // span).astype(np.int64)

    def settle(self) -> None:
        """Find the ids seen more than once (by key: equal ids have equal keys) and decide
        them exactly, once; every other row is a single copy and passes straight through."""
        if self._settled:
            return
        self._settled = True
        self._flush_slow()
        self._valid_count = self._keys.count
        self._repeated = pa.array(self._keys.repeated(), pa.uint64())
        if not len(self._repeated):
            return
        copies = [
            table.filter(self._is_repeated(table)) for _, table in self._by_time.read(free=False)
        ]
        copies_table = pa.concat_tables([c for c in copies if len(c)])
        winners = self._dedup(copies_table.drop_columns(["_k"]))
        self._valid_count += len(winners) - len(copies_table)
        if self._by_time.count == 1:
            self._winners = {0: winners}
        else:
            slices = self._time_bucket(winners)
            for bucket in np.unique(slices):
                self._winners[int(bucket)] = winners.filter(pa.array(slices == bucket))

    def _is_repeated(self, table: pa.Table) -> pa.ChunkedArray:
        # Arrow's hash set of the few repeated keys, not a binary search per row (measured:
        # docs/performance.md, "Copies left out by the sort's gather")
        return pc.is_in(table.column("_k"), value_set=self._repeated)

    def iter_cdr(self) -> Iterator[pa.Table]:
        """The day's valid rows in ``(start, call_id)`` order, a slice at a time."""
        if self._finished:
            raise RuntimeError("a DayBuilder can be finished only once")
        self._finished = True
        try:
            self.settle()
            order = [("start_src_call_time", "ascending"), ("call_id", "ascending")]
            winners = self._winners
            for bucket, table in self._by_time.read(free=True):
                parts = [w for b, w in sorted(winners.items()) if b < bucket]
                for b in [b for b in winners if b < bucket]:
                    del winners[b]
                ahead = sum(len(p) for p in parts)
                parts.append(table.drop_columns(["_k", "_q"]))
                if bucket in winners:
                    parts.append(winners.pop(bucket))
                drop = None
                if len(self._repeated):  # the copies, left out by the sort's own gather
                    drop = np.zeros(sum(len(p) for p in parts), dtype=bool)
                    drop[ahead : ahead + len(table)] = self._is_repeated(table).to_numpy()
                yield from _sorted_part(parts, order, drop)
            yield from _sorted_part([w for _, w in sorted(winners.items())], order)
        finally:
            self.close()

    def close(self) -> None:
        self._keys.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def rejects_table(self) -> pa.Table:
        rejects = sorted(
            (
                (reason, detail, raw, source)
                for raw, (reason, detail, source) in self._rejects.items()
            ),
            key=lambda r: (REJECT_REASONS.index(r[0]), r[2]),
        )
        return pa.table(
            {
                "reason": pa.array([r[0] for r in rejects], pa.string()),
                "detail": pa.array([r[1] for r in rejects], pa.string()),
                "raw": pa.array([r[2] for r in rejects], pa.string()),
                "source": pa.array([r[3] for r in rejects], pa.string()),
            },
            schema=REJECTS_SCHEMA,
        )

    def accounting(self) -> dict[str, Any]:
        """The day's figures (settling the de-duplication if that has not happened yet)."""
        self.settle()
        reject_provider = sum(c.max_in_query - 1 for c in self._reject_copies.values())
        reject_copies = sum(c.total - 1 for c in self._reject_copies.values())
        provider = self._dup["provider"] + reject_provider
        copies = self._dup["copies"] + reject_copies
        conflicting = self._dup["conflicting"]
        return {
            "fetched": self.fetched,
            "valid": self._valid_count,
            "rejected": len(self._rejects),
            "duplicates_dropped": provider,
            "overlap_copies": copies - provider,
            "outside_day": self.outside_day,
            "duplicates_exact": provider - conflicting,
            "duplicates_conflicting": conflicting,
            "rejects_by_reason": {r: self._reasons[r] for r in REJECT_REASONS if self._reasons[r]},
        }


def _sorted_part(
    parts: list[pa.Table], order: list[tuple[str, str]], drop: np.ndarray | None = None
) -> Iterator[pa.Table]:
    """The parts' rows in ``order``, but those ``drop`` marks: one gather does both (a filter
    first was a second copy of the slice)."""
    part = pa.concat_tables(parts) if parts else None
    if part is None or not len(part):
        return
    indices = pc.sort_indices(part, sort_keys=order).to_numpy()
    if drop is not None:
        indices = indices[~drop[indices]]
    if not len(indices):
        return
    # Providers list calls in time order, so a slice is often in order already; then the
    # gather, dearer than the sort (docs/performance.md, "No gather for a slice already in
    # order"), is skipped.
    if len(indices) < len(part) or (np.diff(indices) != 1).any():
        part = part.take(indices)
    yield _to_cdr(part)


def _to_cdr(part: pa.Table) -> pa.Table:
    columns = []
    for f in RECORD_SCHEMA:
        col = part.column(f.name)
        if f.name in TIME_COLUMNS:
            col = pc.cast(pc.multiply(col, 1000), pa.timestamp("ms")).cast(_TS)
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=RECORD_SCHEMA)
