"""One day of pages to its ``cdr`` and ``cdr_rejects`` tables, in bounded memory.

Pages go through the fast path (:mod:`columnar`) where Arrow can type them and record by
record through :func:`validate.validate_record` where it cannot; either way the valid rows
of the day collect as Arrow batches in slices by start time (on disk for a large day), with an
8-byte key of each ``call_id`` kept aside. Once every page is in, the keys seen more than once
name the only rows that can be copies: those alone are gathered and de-duplicated exactly (the
key only groups; the real ids are compared), and each time slice is then sorted by
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from cdr_pipeline.api.errors import MalformedResponseError, error_for_code
from cdr_pipeline.api.wire import parse_document
from cdr_pipeline.transform.columnar import (
    LINE_SCHEMA,
    PAGE_SCHEMA,
    WIRE_FIELDS,
    CheckedRecords,
    NotFastPath,
    check_records,
    one_line,
    read_pages,
)
from cdr_pipeline.transform.hashing import fingerprint
from cdr_pipeline.transform.keylog import KeyLog
from cdr_pipeline.transform.parse import TIME_FIELDS, is_valid_unicode, to_json
from cdr_pipeline.transform.spans import Spans, cdr_spans
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


@dataclass
class ParsedPages:
    """The work on a batch of pages that needs no day state, done before (and possibly on
    another thread than) adding it to a day.

    *Typed* records are those Arrow holds as strings and checked column-wise; the exact rules
    decide the rest (*untyped*: not an object, a value that is not a string, an unknown
    field) and the typed ones the checks were unsure of. Those need the pages' records as
    Python values: ``documents`` holds just those, by page and place (a page's other records
    are let go at once: a batch of pages as Python objects is ten times its size)."""

    records: int  # all records of the pages
    checked: CheckedRecords  # of the typed records
    parents: np.ndarray  # page of each typed record
    positions: np.ndarray  # its place among its page's records
    # (page, place) of every record for the exact rules, in the order of the pages
    exact: list[tuple[int, int]]
    documents: dict[int, dict[int, Any]]
    cut: bool = False  # Arrow could not read the batch whole


_WIRE_KEYS = frozenset(WIRE_FIELDS)
_RECORD_TYPE = PAGE_SCHEMA.field("cdr").type.value_type


def _all_text(rec: dict[str, Any]) -> bool:
    return all(
        v is None or (isinstance(v, str) and (v.isascii() or is_valid_unicode(v)))
        for v in rec.values()
    )


def _typed_records(records: list[Any]) -> tuple[list[int], pa.StructArray]:
    """The places of the records Arrow can hold as the contract's strings, and those records
    as Arrow holds them (as its JSON reader would have read them)."""
    places = [i for i, r in enumerate(records) if type(r) is dict and r.keys() <= _WIRE_KEYS]
    try:
        return places, pa.array([records[i] for i in places], _RECORD_TYPE)
    except (pa.ArrowException, UnicodeEncodeError):  # a number, a lone surrogate ...
        places = [i for i in places if _all_text(records[i])]
        return places, pa.array([records[i] for i in places], _RECORD_TYPE)


def _read_whole(decoded: bytes, source: str) -> pa.StructArray | None:
    """One page's records as Arrow reads them whole, or None where it cannot type them."""
    try:
        table = read_pages([decoded])
    except NotFastPath:
        return None
    if table.schema != PAGE_SCHEMA:
        return None
    _check_codes(table, [source])
    return table.column("cdr").combine_chunks().flatten()


@dataclass
class _Cut:
    """A page cut at its elements (:mod:`spans`): its objects as lines for Arrow, and the
    other elements (not objects) as Python reads them, each standing in as ``{}``."""

    lines: bytes
    odd: dict[int, Any]  # by place
    spans: Spans  # where each element lies (the exact rules read their records through it)

    @property
    def count(self) -> int:
        """Elements in all."""
        return len(self.spans)


_SPACE = b" \t"


def _cut_page(decoded: bytes, source: str) -> _Cut | None:
    """None where the cut cannot vouch for the page's shape: then Python reads it whole."""
    spans = cdr_spans(decoded)
    if spans is None:
        return None
    try:
        top = parse_document(decoded[: spans.opens + 1] + decoded[spans.closes :])
    except MalformedResponseError:
        return None
    if top.raw.get("cdr") != []:
        return None
    _check_code(top.error_code, source)
    if not len(spans):
        return _Cut(b"", {}, spans)
    # the array's bytes, one element a line (JSON has no newline inside a string)
    body = np.frombuffer(one_line(decoded), dtype=np.uint8)[spans.opens + 1 : spans.closes]
    body = body.copy()
    starts, ends = spans.starts - spans.opens - 1, spans.ends - spans.opens - 1
    body[starts[1:] - 1] = ord("\n")
    lines = body.tobytes()
    odd: dict[int, Any] = {}
    maybe = np.flatnonzero(body[np.minimum(starts, len(body) - 1)] != ord("{")).tolist()
    keep, at = [], 0
    try:
        for i in maybe:
            if lines[starts[i] : ends[i]].lstrip(_SPACE)[:1] == b"{":
                continue
            odd[i] = spans.element(decoded, i)
            keep += [lines[at : starts[i]], b"{}"]
            at = int(ends[i])
    except (ValueError, RecursionError):
        return None
    if odd:
        lines = b"".join([*keep, lines[at:]])
    return _Cut(lines, odd, spans)


def _read_cuts(cuts: list[_Cut]) -> pa.StructArray | None:
    """Every line of the cut pages, read at once; None where Arrow cannot vouch for all."""
    try:
        table = read_pages([c.lines for c in cuts if c.count], LINE_SCHEMA)
    except NotFastPath:
        return None
    if table.schema != LINE_SCHEMA or len(table) != sum(c.count for c in cuts):
        return None
    return table.to_struct_array().combine_chunks()


def _read_batch_cut(
    pages: Sequence[tuple[bytes, str, Sequence[int]]],
) -> tuple[pa.StructArray, np.ndarray, np.ndarray, list[_Cut]] | None:
    """Every page cut, all their objects read by Arrow at once: (the objects, the page and
    place of each, the cuts); None where any page resists."""
    cuts = []
    for decoded, source, _w in pages:
        one = _cut_page(decoded, source)
        if one is None:
            return None
        cuts.append(one)
    lines = _read_cuts(cuts)
    if lines is None:
        return None
    counts = np.array([c.count for c in cuts], dtype=np.int64)
    first = np.cumsum(counts) - counts
    parents = np.repeat(np.arange(len(cuts)), counts)
    positions = np.arange(len(parents)) - first[parents]
    if any(c.odd for c in cuts):
        typed = np.ones(len(parents), dtype=bool)
        for page, c in enumerate(cuts):
            typed[first[page] + np.array(list(c.odd), dtype=np.int64)] = False
        lines = lines.filter(pa.array(typed))
        parents, positions = parents[typed], positions[typed]
    return lines, parents, positions, cuts


def _check_codes(table: pa.Table, sources: list[str]) -> None:
    for code, source in zip(table.column("errorCode").to_pylist(), sources, strict=True):
        _check_code(code, source)


def _check_code(code: object, source: str) -> None:
    """An error answer stored as a page is an error, named by its page, whichever reader
    read it."""
    if str(code if code is not None else "").strip() != "0":
        raise error_for_code(str(code), f"stored page {source} is an error answer")


def parse_pages(
    pages: Sequence[tuple[bytes, str, Sequence[int]]], tz: str, *, cut: bool = False
) -> ParsedPages:
    """Read and check decoded pages (no state: safe on another thread).

    The whole batch goes through Arrow's JSON reader at once. If Arrow cannot type it (a
    record that is not an object, a number where a string belongs, an unknown field), its
    pages are cut at their elements and Arrow reads all their objects at once; failing that,
    each page is tried on its own, whole, then cut, then read by Python, whose records that
    are all strings are still checked column-wise. Only the rest is left to the exact rules:
    one odd record no longer sends its page the slow way. ``cut``: start with the cut (the
    previous batch needed it; a failed read of a whole batch costs as much as a good one)."""
    sources = [p[1] for p in pages]
    table = None
    if not cut:
        try:
            table = read_pages([p[0] for p in pages])
        except NotFastPath:
            table = None
    documents: dict[int, list[Any]] = {}  # pages Python read whole
    odd: dict[int, dict[int, Any]] = {}  # elements Python read alone, by page and place
    spans: dict[int, Spans | None] = {}  # where the elements of a page lie, once found
    untyped: list[tuple[int, int]] = []
    if table is not None and table.schema == PAGE_SCHEMA:
        _check_codes(table, sources)
        lists = table.column("cdr").combine_chunks()
        records = lists.flatten()
        parents = pc.list_parent_indices(lists).to_numpy()
        positions = np.arange(len(records)) - lists.offsets.to_numpy()[parents]
        total = len(records)
        needed_cut = False
    elif (batch := _read_batch_cut(pages)) is not None:
        records, parents, positions, cuts = batch
        for page, one in enumerate(cuts):
            spans[page] = one.spans
            if one.odd:
                odd[page] = one.odd
        untyped = [(page, place) for page, places in odd.items() for place in places]
        total = len(records) + len(untyped)
        needed_cut = bool(odd)  # else the batch could have been read whole
    else:
        needed_cut = True
        parts, parent_list, position_list, total = [], [], [], 0
        for page, (decoded, source, _w) in enumerate(pages):
            arrow = _read_whole(decoded, source)
            if arrow is not None:
                places, count = list(range(len(arrow))), len(arrow)
            elif (alone := _read_batch_cut([pages[page]])) is not None:
                arrow, _, at, (one,) = alone
                places, count, spans[page] = at.tolist(), one.count, one.spans
                odd[page] = one.odd
                untyped += [(page, i) for i in one.odd]
            else:
                doc = parse_document(decoded)
                _check_code(doc.error_code, source)
                python = documents[page] = doc.records
                places, arrow = _typed_records(python)
                typed = set(places)
                untyped += [(page, i) for i in range(len(python)) if i not in typed]
                count = len(python)
            total += count
            parts.append(arrow)
            parent_list.append(np.full(len(places), page, dtype=np.int64))
            position_list.append(np.array(places, dtype=np.int64))
        records = pa.concat_arrays(parts) if parts else pa.array([], _RECORD_TYPE)
        parents = np.concatenate(parent_list) if parent_list else np.zeros(0, np.int64)
        positions = np.concatenate(position_list) if position_list else np.zeros(0, np.int64)
    checked = (
        check_records(records, tz) if len(records) else CheckedRecords({}, pa.array([], pa.bool_()))
    )
    unsure = np.flatnonzero(~checked.clean.to_numpy(zero_copy_only=False))
    exact = sorted(
        [*untyped, *zip(parents[unsure].tolist(), positions[unsure].tolist(), strict=True)]
    )
    # The records for the exact rules, read by Python here, on this thread: each alone where
    # the page's elements can be cut apart, else with the whole page.
    needed: dict[int, dict[int, Any]] = {}
    for page, place in exact:
        if page in odd and place in odd[page]:
            value = odd[page][place]
        elif page in documents:
            value = documents[page][place]
        else:
            decoded = pages[page][0]
            if page not in spans:
                spans[page] = cdr_spans(decoded)
            where = spans[page]
            if where is not None and place < len(where):
                value = where.element(decoded, place)
            else:
                documents[page] = parse_document(decoded).records
                value = documents[page][place]
        needed.setdefault(page, {})[place] = value
    return ParsedPages(total, checked, parents, positions, exact, needed, needed_cut)


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
        self._repeated = np.zeros(0, dtype=np.uint64)
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
        raw = to_json(rec)
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

    def _settle(self) -> None:
        """Find the ids seen more than once (by key: equal ids have equal keys) and decide
        them exactly, once; every other row is a single copy and passes straight through."""
        if self._settled:
            return
        self._settled = True
        self._flush_slow()
        self._valid_count = self._keys.count
        self._repeated = self._keys.repeated()
        if not self._repeated.size:
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

    def _is_repeated(self, table: pa.Table) -> pa.Array:
        # the repeated keys are few and sorted: a binary search per row, not a sort of both
        keys = table.column("_k").to_numpy()
        at = np.minimum(np.searchsorted(self._repeated, keys), self._repeated.size - 1)
        return pa.array(self._repeated[at] == keys)

    def iter_cdr(self) -> Iterator[pa.Table]:
        """The day's valid rows in ``(start, call_id)`` order, a slice at a time."""
        if self._finished:
            raise RuntimeError("a DayBuilder can be finished only once")
        self._finished = True
        try:
            self._settle()
            order = [("start_src_call_time", "ascending"), ("call_id", "ascending")]
            winners = self._winners
            for bucket, table in self._by_time.read(free=True):
                parts = [w for b, w in sorted(winners.items()) if b < bucket]
                for b in [b for b in winners if b < bucket]:
                    del winners[b]
                if self._repeated.size:
                    table = table.filter(pc.invert(self._is_repeated(table)))
                parts.append(table.drop_columns(["_k", "_q"]))
                if bucket in winners:
                    parts.append(winners.pop(bucket))
                yield from _sorted_part(parts, order)
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
        self._settle()
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


def _sorted_part(parts: list[pa.Table], order: list[tuple[str, str]]) -> Iterator[pa.Table]:
    part = pa.concat_tables(parts) if parts else None
    if part is not None and len(part):
        indices = pc.sort_indices(part, sort_keys=order).to_numpy()
        # Providers list calls in time order, so a slice is often in order already; then the
        # gather, four times the cost of the sort, is skipped.
        if (np.diff(indices) != 1).any():
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
