"""The read stage: a batch of decoded pages to checked records, with no day state.

Pages go through the fast path (:mod:`columnar`) where Arrow can type them, and record by
record through :func:`validate.validate_record` where it cannot (:class:`ParsedPages` says
which records need which). A batch Arrow cannot read whole is read again with its pages' odd
elements standing in as ``{}`` (found by :mod:`spans`). Runs on worker threads, ahead of the
de-duplication that takes its result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cdr_pipeline.api.errors import error_for_code
from cdr_pipeline.api.spans import Spans, cdr_spans
from cdr_pipeline.api.wire import parse_document
from cdr_pipeline.transform.columnar import (
    PAGE_SCHEMA,
    WIRE_FIELDS,
    CheckedRecords,
    NotFastPath,
    check_records,
    read_pages,
)
from cdr_pipeline.transform.parse import is_valid_unicode


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
class _Mended:
    """A page whose ``cdr`` elements that are not objects (found by :mod:`spans`) stand in
    as ``{}``, so that Arrow reads it whole, each record at its own place; the elements
    replaced are kept as Python reads them."""

    page: bytes
    odd: dict[int, Any]  # by place
    spans: Spans  # where each element lies (the exact rules read their records through it)


_SPACE = b" \t"


def _mend_page(decoded: bytes) -> _Mended | None:
    """None where the cut cannot vouch for the page's shape: then Python reads it whole."""
    spans = cdr_spans(decoded)
    if spans is None:
        return None
    if not len(spans):
        return _Mended(decoded, {}, spans)
    starts = spans.starts
    heads = np.frombuffer(decoded, dtype=np.uint8)[np.minimum(starts, len(decoded) - 1)]
    odd: dict[int, Any] = {}
    view = memoryview(decoded)  # the pieces kept are joined once, not copied first
    keep, at = [], 0
    try:
        for i in np.flatnonzero(heads != ord("{")).tolist():
            if decoded[starts[i] : spans.ends[i]].lstrip(_SPACE)[:1] == b"{":
                continue
            odd[i] = spans.element(decoded, i)
            keep += [view[at : starts[i]], b"{}"]
            at = int(spans.ends[i])
    except (ValueError, RecursionError):
        return None
    return _Mended(b"".join([*keep, view[at:]]) if odd else decoded, odd, spans)


def _flattened(lists: pa.ListArray) -> tuple[pa.StructArray, np.ndarray, np.ndarray]:
    """The pages' records, and the page and place of each."""
    records = lists.flatten()
    parents = pc.list_parent_indices(lists).to_numpy()
    positions = np.arange(len(records)) - lists.offsets.to_numpy()[parents]
    return records, parents, positions


def _read_batch_mended(
    pages: Sequence[tuple[bytes, str, Sequence[int]]],
) -> tuple[pa.StructArray, np.ndarray, np.ndarray, list[_Mended]] | None:
    """Every page mended, then read whole by Arrow at once: (the objects, the page and place
    of each, the mended pages); None where any page resists or Arrow's count of a page's
    records is not the cut's."""
    mended = []
    for decoded, _source, _w in pages:
        one = _mend_page(decoded)
        if one is None:
            return None
        mended.append(one)
    try:
        table = read_pages([m.page for m in mended])
    except NotFastPath:
        return None
    if table.schema != PAGE_SCHEMA:
        return None
    _check_codes(table, [p[1] for p in pages])
    lists = table.column("cdr").combine_chunks()
    counts = pc.fill_null(pc.list_value_length(lists), -1).to_numpy()
    if counts.tolist() != [len(m.spans) for m in mended]:
        return None
    records, parents, positions = _flattened(lists)
    if any(m.odd for m in mended):
        first = counts.cumsum() - counts
        typed = np.ones(len(records), dtype=bool)
        for page, m in enumerate(mended):
            typed[first[page] + np.array(list(m.odd), dtype=np.int64)] = False
        records = records.filter(pa.array(typed))
        parents, positions = parents[typed], positions[typed]
    return records, parents, positions, mended


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
    pages are cut at their elements, those that are not objects stand in as ``{}``, and Arrow
    reads the pages whole again; failing that, each page is tried on its own, whole, then
    mended, then read by Python, whose records that are all strings are still checked
    column-wise. Only the rest is left to the exact rules: one odd record no longer sends its
    page the slow way. ``cut``: start with the mended pages (the previous batch needed them;
    a failed read of a whole batch costs as much as a good one)."""
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
        records, parents, positions = _flattened(table.column("cdr").combine_chunks())
        total = len(records)
        needed_cut = False
    elif (batch := _read_batch_mended(pages)) is not None:
        records, parents, positions, mended = batch
        for page, one in enumerate(mended):
            spans[page] = one.spans
            if one.odd:
                odd[page] = one.odd
        untyped = [(page, place) for page, places in odd.items() for place in places]
        total = len(records) + len(untyped)
        needed_cut = bool(odd)  # else the batch could have been read whole
    else:
        needed_cut = True
        records, parents, positions, total, slow = _read_page_by_page(pages, documents, odd, spans)
        untyped += slow
    checked = (
        check_records(records, tz) if len(records) else CheckedRecords({}, pa.array([], pa.bool_()))
    )
    unsure = np.flatnonzero(~checked.clean.to_numpy(zero_copy_only=False))
    exact = sorted(
        [*untyped, *zip(parents[unsure].tolist(), positions[unsure].tolist(), strict=True)]
    )
    needed = _exact_records(pages, exact, documents, odd, spans)
    return ParsedPages(total, checked, parents, positions, exact, needed, needed_cut)


def _read_page_by_page(
    pages: Sequence[tuple[bytes, str, Sequence[int]]],
    documents: dict[int, list[Any]],
    odd: dict[int, dict[int, Any]],
    spans: dict[int, Spans | None],
) -> tuple[pa.Array, np.ndarray, np.ndarray, int, list[tuple[int, int]]]:
    """A batch Arrow could not read even mended: each page whole, else mended, else by Python
    (filling ``documents``, ``odd`` and ``spans``). Its typed records with their pages and
    places, the count of all records, and the (page, place) of the untyped ones."""
    untyped: list[tuple[int, int]] = []
    parts, parent_list, position_list, total = [], [], [], 0
    for page, (decoded, source, _w) in enumerate(pages):
        arrow = _read_whole(decoded, source)
        if arrow is not None:
            places, count = list(range(len(arrow))), len(arrow)
        elif (alone := _read_batch_mended([pages[page]])) is not None:
            arrow, _, at, (one,) = alone
            places, count, spans[page] = at.tolist(), len(one.spans), one.spans
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
    return records, parents, positions, total, untyped


def _exact_records(
    pages: Sequence[tuple[bytes, str, Sequence[int]]],
    exact: list[tuple[int, int]],
    documents: dict[int, list[Any]],
    odd: dict[int, dict[int, Any]],
    spans: dict[int, Spans | None],
) -> dict[int, dict[int, Any]]:
    """The records for the exact rules, read by Python here, on this thread: each alone where
    the page's elements can be cut apart, else with the whole page."""
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
    return needed
