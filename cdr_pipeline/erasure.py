"""Erasing a subscriber: the request kept as a token, and the records it removes.

An erasure is a row of the audit dataset ``erasures`` (the number's token, the key's id, the
days it covers, what it removed and when; never the number). Every build of a day drops the
records whose caller or callee has the token of a request covering the day, and counts them
as ``erased``: so a day fetched again from the provider, which still holds the calls, loses
them again. The erase command also takes them out of the raw bodies (:func:`erase_raw`),
re-written without them and still re-validatable, and says how many in the day's manifest.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cdr_pipeline.api.wire import DEFAULT_MAX_BODY_BYTES, decode_body
from cdr_pipeline.layout import ERASURES_KEY, Day, StorageError
from cdr_pipeline.privacy import Pseudonyms, canonical, canonical_column
from cdr_pipeline.publish import DayTransaction, day_row_groups, read_day_table, read_state
from cdr_pipeline.raw import (
    Page,
    body_name,
    manifest_digest,
    read_raw_body,
    read_raw_manifest,
    replace_raw_bodies,
)
from cdr_pipeline.store import Store
from cdr_pipeline.transform.dedup import DayBuilder
from cdr_pipeline.transform.read import parse_pages

ERASURES_SCHEMA = pa.schema(
    [
        pa.field("token", pa.string(), nullable=False),
        pa.field("key_id", pa.string(), nullable=False),
        pa.field("region", pa.string()),  # CDR_DEFAULT_REGION (null: kept before it was)
        pa.field("start", pa.string()),  # null: from the first day
        pa.field("end", pa.string()),  # null: to the last day
        pa.field("requested_at", pa.timestamp("s", tz="UTC"), nullable=False),
        pa.field("done_at", pa.timestamp("s", tz="UTC")),
        pa.field("days", pa.list_(pa.string()), nullable=False),
        pa.field("records", pa.int64(), nullable=False),
    ]
)


def requests(store: Store) -> list[dict[str, Any]]:
    """Every erasure requested in this data directory, oldest first."""
    if not store.exists(ERASURES_KEY):
        return []
    with store.open_input(ERASURES_KEY) as source:
        return pq.read_table(source).to_pylist()


def _write(store: Store, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows, schema=ERASURES_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    store.put(ERASURES_KEY, sink.getvalue().to_pybytes())


def record(
    store: Store, token: str, pseudonyms: Pseudonyms, start: str | None, end: str | None
) -> int:
    """Keep a request before anything is removed (an interrupted erase is then still applied
    by every later build); its index."""
    rows = requests(store)
    rows.append(
        {
            "token": token,
            "key_id": pseudonyms.key_id,
            "region": pseudonyms.region,
            "start": start,
            "end": end,
            "requested_at": datetime.now(UTC).replace(microsecond=0),
            "done_at": None,
            "days": [],
            "records": 0,
        }
    )
    _write(store, rows)
    return len(rows) - 1


def finish(store: Store, index: int, days: dict[str, int], done: bool = True) -> None:
    """The days a request erased and their records; ``done`` False: some of its days are
    still to do (it has no ``done_at``), and an erase again takes them in a request of its
    own."""
    rows = requests(store)
    rows[index] |= {
        "done_at": datetime.now(UTC).replace(microsecond=0) if done else None,
        "days": sorted(days),
        "records": sum(days.values()),
    }
    _write(store, rows)


def tokens_for(store: Store, day: str, pseudonyms: Pseudonyms) -> frozenset[str]:
    """The tokens of the requests that cover ``day``; refused when they were kept under
    another key or another region (they would no longer match) or when no key is set."""
    covering = [
        r
        for r in requests(store)
        if (r["start"] is None or r["start"] <= day) and (r["end"] is None or day <= r["end"])
    ]
    if not covering:
        return frozenset()
    if not pseudonyms.enabled:
        raise StorageError(
            f"{day}: {len(covering)} erasure(s) cover this day, and CDR_PSEUDONYM_KEY is not "
            "set: without the key their records cannot be recognised; set the key they were "
            "made under"
        )
    for field, ours, setting in (
        ("key_id", pseudonyms.key_id, "CDR_PSEUDONYM_KEY"),
        ("region", pseudonyms.region, "CDR_DEFAULT_REGION"),  # (a number's E.164 form)
    ):
        if theirs := {r.get(field) for r in covering} - {None, ours}:  # None: not kept then
            raise StorageError(
                f"{day}: erasures were kept under another {setting} ({field} "
                f"{', '.join(sorted(theirs))}; this deployment's is {ours}): their records can "
                f"no longer be recognised; set the {setting} they were made under "
                "(docs/privacy.md, the key)"
            )
    return frozenset(r["token"] for r in covering)


def _tokens_of(numbers: pa.Array, e164: pa.Array | None, p: Pseudonyms) -> pa.Array:
    """Each row's token, each distinct number's made once (a day's numbers repeat)."""
    forms = canonical_column(numbers, e164, p.region)
    if isinstance(forms, pa.ChunkedArray):
        forms = forms.combine_chunks()
    distinct = forms.dictionary_encode()
    return p.tokens(distinct.dictionary).take(distinct.indices)


def erased_rows(
    part: pa.Table, tokens: frozenset[str], p: Pseudonyms, form: str | None = None
) -> pa.Array:
    """Which rows a caller or callee of ``tokens`` made (a boolean mask), by the numbers of
    ``cdr`` or ``caller_risk_daily``, or by their tokens where a day was cleared of them.
    ``form``: the number's canonical form, when it is known (the erase command's), compared
    as it is, without the key's work."""
    wanted = pa.array(sorted(tokens), pa.string())
    names = set(part.column_names)
    hit = pa.nulls(len(part), pa.bool_())
    for c in ("src", "dst"):
        if f"{c}_token" in names:
            found = pc.is_in(part.column(f"{c}_token"), value_set=wanted)
        elif c in names:
            e164 = part.column(f"{c}_e164") if f"{c}_e164" in names else None
            if form is not None:
                found = pc.equal(canonical_column(part.column(c), e164, p.region), form)
            else:
                found = pc.is_in(_tokens_of(part.column(c), e164, p), value_set=wanted)
        else:
            continue
        hit = pc.or_kleene(hit, found)
    return pc.fill_null(hit, False)


# Rows erased from a slice beyond which it is filtered, not cut into pieces: each piece is a
# chunk the Parquet writer takes on its own (docs/performance.md, "Erasure").
FEW_ERASED = 16


def without(part: pa.Table, hit: pa.Array | pa.ChunkedArray) -> pa.Table:
    """``part`` less the rows ``hit`` marks (a boolean mask without nulls). A few rows go by
    joining slices of the rest, so nothing is copied: a filter copies every column."""
    gone = np.flatnonzero(hit.to_numpy(zero_copy_only=False))
    if len(gone) > FEW_ERASED:
        return part.filter(pc.invert(hit))
    starts, ends = [0, *(gone + 1).tolist()], [*gone.tolist(), len(part)]
    pieces = [part.slice(a, b - a) for a, b in zip(starts, ends, strict=True) if b > a]
    return pa.concat_tables(pieces) if pieces else part.slice(0, 0)


def _matches(rec: Any, tokens: frozenset[str], p: Pseudonyms, needle: Needle | None = None) -> bool:
    """Whether a record's caller or callee has one of ``tokens``; with ``needle``
    (:func:`needle_of`), only a number whose text has it is tokenised."""
    if not isinstance(rec, dict):
        return False
    for field in ("src", "dst"):
        value = rec.get(field)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            continue
        if needle is not None and not needle.in_value(value):
            continue
        if p.token(value) in tokens:
            return True
    return False


def erased_rejects(rejects: pa.Table, tokens: frozenset[str], p: Pseudonyms) -> pa.Array:
    """Which rejects were records of a caller or callee of ``tokens`` (by their raw text)."""
    found = []
    for raw in rejects.column("raw").to_pylist():
        try:
            rec = json.loads(raw) if raw else None
        except (ValueError, RecursionError):
            rec = None
        found.append(_matches(rec, tokens, p))
    return pa.array(found, pa.bool_())


def _encoded(data: bytes, encoding: str) -> bytes:
    if encoding == "zlib":
        return zlib.compress(data)
    return gzip.compress(data, mtime=0) if encoding == "gzip" else data


class Eraser:
    """Drops the rows and rejects of the callers and callees of ``tokens`` from a day being
    built, counting the rows (a day no request covers passes through untouched)."""

    def __init__(self, tokens: frozenset[str], pseudonyms: Pseudonyms) -> None:
        self.tokens, self.pseudonyms, self.dropped = tokens, pseudonyms, 0
        self.numbers: list[pa.Table] = []  # the dropped rows' callers and callees
        self.gather: Callable[[pa.Table], None] | None = None  # handed the rows dropped

    def __call__(self, part: pa.Table) -> pa.Table:
        return self.drop(part, self.hits(part))

    def hits(self, numbers: pa.Table) -> pa.Array | None:
        """Which rows are erased, by their numbers or their tokens (as the shared zone's
        ``cdr`` holds them: no key's work); None when none is."""
        if not self.tokens or not len(numbers):
            return None
        hit = erased_rows(numbers, self.tokens, self.pseudonyms)
        return hit if pc.any(hit).as_py() else None

    def drop(self, part: pa.Table, hit: pa.Array | None) -> pa.Table:
        if hit is None:
            return part
        self.dropped += pc.sum(hit).as_py()
        self.numbers.append(part.select(["src", "dst"]).filter(hit))
        if self.gather is not None:
            self.gather(part.filter(hit))
        return without(part, hit)

    def lost(self) -> dict[str, list[str]]:
        """The distinct callers and callees (``src``, ``dst``) of the rows dropped."""
        if not self.numbers:
            return {"src": [], "dst": []}
        rows = pa.concat_tables(self.numbers)
        return {c: pc.unique(rows.column(c).drop_null()).to_pylist() for c in ("src", "dst")}

    def rejects(self, table: pa.Table) -> pa.Table:
        if not self.tokens or not len(table):
            return table
        return table.filter(pc.invert(erased_rejects(table, self.tokens, self.pseudonyms)))


@dataclass(frozen=True)
class Found:
    """What an erasure would remove from a day's published datasets."""

    day: str
    calls: int
    rejects: int
    cleared: bool = False  # of its numbers (retention.py): erased in place


NUMBER_COLUMNS = ("src", "dst", "src_e164", "dst_e164")  # what finds a number in cdr


def find(
    store: Store, days: Iterable[str], number: str, tokens: frozenset[str], p: Pseudonyms
) -> list[Found]:
    """The published days that hold a record of ``number`` (whose token is in ``tokens``):
    the dry run; and which days an erasure rebuilds."""
    form = canonical(number, p.region)
    out = []
    for day in days:
        try:
            calls = _count(store, day, list(NUMBER_COLUMNS), tokens, p, form)
            rejects = read_day_table(store, "cdr_rejects", day, columns=["raw"])
        except (StorageError, pa.ArrowInvalid):  # pa: a day cleared of its numbers
            try:
                calls = _count(store, day, ["src_token", "dst_token"], tokens, p, form)
            except (StorageError, pa.ArrowInvalid):  # none at all: removed
                continue
            rejects = None
        bad = 0 if rejects is None else pc.sum(erased_rejects(rejects, tokens, p)).as_py() or 0
        if calls or bad:
            out.append(Found(day, calls, bad, cleared=rejects is None))
    return out


def _count(
    store: Store, day: str, columns: list[str], tokens: frozenset[str], p: Pseudonyms, form: str
) -> int:
    """The rows of ``day``'s ``cdr`` a caller or callee of ``tokens`` made, a row group at a
    time (a day of millions of calls is not held)."""
    groups = day_row_groups(store, "cdr", day, columns)
    return sum(pc.sum(erased_rows(g, tokens, p, form)).as_py() or 0 for g in groups)


def erase_cleared(store: Store, day: str, tokens: frozenset[str], p: Pseudonyms) -> int:
    """Erase from a day cleared of its numbers (retention.py): its raw bodies are gone, so
    the rows are taken out of ``cdr`` and ``caller_risk_daily`` of both zones by token (the
    other aggregates hold no one's number and keep their counts)."""
    record = read_state(store, "validation", day)
    removed = 0
    with DayTransaction(store, day) as txn:
        for name in ("cdr", "caller_risk_daily"):
            for shared in (False, True) if store.shared is not None else (False,):
                where = store.shared if shared else store
                assert where is not None
                try:
                    table = read_day_table(where, name, day)
                except StorageError:
                    continue
                hit = erased_rows(table, tokens, p)
                if name == "cdr" and not shared:
                    removed = pc.sum(hit).as_py() or 0
                txn.stage(name, without(table, hit), shared=shared)
        record.pop("sums", None)  # its rows changed without them: none stand for the day
        acc = record["accounting"]
        acc["valid"] -= removed
        acc["erased"] = acc.get("erased", 0) + removed
        txn.stage_record("validation", record)
        txn.commit()
    return removed


_DROPPED = str.maketrans("", "", " \t-()")  # what normalise() removes


@dataclass(frozen=True)
class Needle:
    """What any spelling of a number leaves once the separators :func:`normalise` removes are
    gone: the digits of its national significant number, in order (its text, when it has no
    digit). A page or a value without it holds no record of the number. A page is tested in
    one pass of Arrow's RE2, a third quicker than deleting the separators and searching what
    is left, which Python's own regular expressions were slower still at (the erase figures
    of docs/performance.md)."""

    text: str

    def in_value(self, value: str) -> bool:
        return self.text in value.translate(_DROPPED)

    def in_page(self, page: bytes) -> bool:
        """``page``'s JSON text, where a separator may be escaped (``\\t``, dropped here as
        its two characters: that only joins digits, so no spelling is missed) and a page
        with an escaped ASCII character (``\\u00..``, maybe a digit) is parsed."""
        escaped = b"\\" in page  # rare, and found at memchr's speed
        if escaped and b"\\u00" in page:
            return True
        drop = _SEPARATORS + (b"\\t" if escaped else b"")
        if self._ascii:
            pattern = _between(self._spellings, drop)
            return pc.match_substring_regex(_one_value(page), pattern)[0].as_py()
        bare = page.translate(None, drop)
        return any(t.translate(None, drop) in bare for t in self._spellings)

    @cached_property
    def _spellings(self) -> frozenset[bytes]:
        return frozenset(
            json.dumps(self.text, ensure_ascii=a)[1:-1].encode() for a in (False, True)
        )

    @cached_property
    def _ascii(self) -> bool:
        return all(s.isascii() for s in self._spellings)


_SEPARATORS = b" -()"  # what normalise() removes but the tab, which JSON text escapes


@functools.lru_cache(maxsize=8)
def _between(spellings: frozenset[bytes], drop: bytes) -> str:
    """An RE2 pattern that finds what deleting ``drop`` from a page and searching it for the
    ``spellings`` (less ``drop``) finds: their characters with any run of ``drop`` between."""
    gap = "[" + "".join(re.escape(chr(b)) for b in drop) + "]*"
    return "|".join(
        gap.join(re.escape(chr(b)) for b in s.translate(None, drop)) for s in sorted(spellings)
    )


def _one_value(data: bytes) -> pa.Array:
    """``data`` as a binary array of one value, not copied."""
    offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64))
    return pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(data)])


def needle_of(number: str, region: str = "CN") -> Needle:
    form = canonical(number, region)
    digits = re.sub(r"\D", "", form)
    if form.startswith("+"):
        with contextlib.suppress(phonenumbers.NumberParseException):
            digits = phonenumbers.national_significant_number(phonenumbers.parse(form)) or digits
    return Needle(digits or form)


# What the records an erasure took out of the raw bodies were, had they stayed: a build that
# re-uses the published day (day.py) moves them to ``erased`` without reading the raw layer.
REMOVED_BUCKETS = (
    "valid",
    "rejected",
    "duplicates_dropped",
    "overlap_copies",
    "outside_day",
    "duplicates_exact",
    "duplicates_conflicting",
)


def _classified(pages: list[Page], day: Day, tz: ZoneInfo) -> dict[str, int]:
    """The accounting of the removed records alone, by the day's own rules: every copy of a
    record holds the same number, so it is their share of the day's accounting (unless a
    call's versions disagree on it, when day.py reads the raw layer again)."""
    builder = DayBuilder(day.start, day.end, tz)
    try:
        if pages:
            builder.add_parsed(pages, parse_pages(pages, tz.key))
        accounting = builder.accounting()
    finally:
        builder.close()
    return {b: accounting[b] for b in REMOVED_BUCKETS}


def erase_raw(
    store: Store, day: Day, tz: ZoneInfo, tokens: frozenset[str], p: Pseudonyms, needle: Needle
) -> int:
    """Re-write ``day``'s raw bodies without the records of ``tokens``; the count removed.
    Only a page whose text may hold ``needle`` (:func:`needle_of`) is parsed, and rewritten
    when it holds such a record; the manifest's ``totals.erased`` keeps the count, so the
    day's accounting still balances against what was fetched, and its ``erasure`` says which
    version it changed, what the records were and which bodies were renamed."""
    try:
        manifest = read_raw_manifest(store, day.key)
    except StorageError:
        return 0  # pruned: the datasets alone hold the day
    before = manifest_digest(manifest)
    changed: dict[str, tuple[bytes, str]] = {}
    renamed: dict[str, str] = {}
    gone: list[Page] = []
    count = 0
    max_bytes = manifest.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES)
    for entry in manifest["requests"]:
        text, encoding = decode_body(read_raw_body(store, day.key, entry), max_bytes=max_bytes)
        page = _page(text) if needle.in_page(text) else None
        if page is None:  # no record of it; or kept whole: every build still drops them
            continue
        records = page["cdr"]
        hits = [_matches(r, tokens, p, needle) for r in records]
        if not any(hits):
            continue
        kept = [r for r, hit in zip(records, hits, strict=True) if not hit]
        removed = [r for r, hit in zip(records, hits, strict=True) if hit]
        count += len(removed)
        gone.append((_dumps(page | {"cdr": removed}), entry["file"], entry["window"]))
        body = _encoded(_dumps(page | {"cdr": kept}), encoding)
        name, digest = body_name(body, encoding)
        changed[entry["file"]], renamed[entry["file"]] = (body, encoding), name
        entry.update(file=name, sha256=digest, bytes=len(body), records=len(kept))
    if not gone:
        return 0
    totals = manifest["totals"]
    totals["records"] -= count
    totals["erased"] = totals.get("erased", 0) + count
    manifest["erasure"] = {
        "from": before,
        "removed": _classified(gone, day, tz),
        "renamed": renamed,
    }
    replace_raw_bodies(store, day.key, changed, manifest)
    return count


def _page(text: bytes) -> dict[str, Any] | None:
    try:
        page = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return page if isinstance(page, dict) and isinstance(page.get("cdr"), list) else None


def _dumps(page: dict[str, Any]) -> bytes:
    return json.dumps(page, ensure_ascii=False, separators=(",", ":")).encode()
