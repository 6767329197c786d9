"""Reject rules, day assignment, de-duplication and the accounting of one day.

The accounting is the promise to operators: every fetched record ends up in exactly one of
``valid``, ``rejected``, ``duplicates_dropped``, ``overlap_copies`` or ``outside_day``.

Two kinds of copies are told apart so the figures do not depend on how the day was fetched:
a *duplicate* is a copy the provider serves (a record listed twice by one query), an *overlap
copy* is one the client caused by asking for the same instant twice (windows share their
boundary second, and split windows more of them). A record's provider multiplicity is the most
copies any single query returned; every further copy is an overlap copy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa

from cdr_pipeline.transform.parse import (
    INT32_MAX,
    KNOWN_FIELDS,
    STATUS_LABELS,
    TEXT_FIELDS,
    TIME_FIELDS,
    BadValue,
    RawPage,
    is_valid_unicode,
    parse_small_int,
    parse_text,
    parse_time,
    to_json,
)

REJECT_REASONS = (
    "not_an_object",
    "missing_call_id",
    "missing_start_time",
    "bad_timestamp",
    "bad_status",
    "bad_duration",
    "bad_call_type",
    "end_before_start",
    "bad_field",
)

_TS = pa.timestamp("ms", tz="UTC")
CDR_SCHEMA = pa.schema(
    [
        pa.field("call_id", pa.string(), nullable=False),
        pa.field("src", pa.string()),
        pa.field("dst", pa.string()),
        *[pa.field(col, _TS) for _, col in TIME_FIELDS],
        pa.field("call_end_status", pa.int8()),
        pa.field("call_end_status_label", pa.string()),
        pa.field("duration_s", pa.int32()),
        pa.field("record_url", pa.string()),
        pa.field("call_type", pa.int8()),
        pa.field("biz_id", pa.string()),
        pa.field("order_id", pa.string()),
        pa.field("extra", pa.string()),
    ]
)
REJECTS_SCHEMA = pa.schema(
    [
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("raw", pa.string()),
        pa.field("source", pa.string()),
    ]
)


@dataclass(frozen=True)
class Reject:
    reason: str
    detail: str
    day_time: int | None  # the instant that decides its day, if any time was readable


def _reject(reason: str, detail: str, rec: dict[str, Any] | None, tz: ZoneInfo) -> Reject:
    return Reject(reason, detail, _fallback_time(rec, tz) if rec is not None else None)


def _fallback_time(rec: dict[str, Any], tz: ZoneInfo) -> int | None:
    """The day of a reject: its start if readable, else its end (a record-only rule, so two
    neighbouring days agree on it whatever windows fetched it)."""
    for wire in ("startSrcCallTime", "endCallTime"):
        try:
            value = parse_time(rec.get(wire), tz)
        except BadValue:
            continue
        if value is not None:
            return value
    return None


def validate_record(rec: Any, tz: ZoneInfo) -> dict[str, Any] | Reject:
    """One wire record to a row of the ``cdr`` dataset (epoch seconds for times), or a Reject.

    Checks run in the contract's order; the first failing one names the reason.
    """
    if not isinstance(rec, dict):
        return Reject("not_an_object", f"a JSON {type(rec).__name__}, not an object", None)
    call_id = rec.get("callId")
    if not isinstance(call_id, str) or not call_id.strip() or not is_valid_unicode(call_id):
        if call_id is None:
            what = "absent"
        elif isinstance(call_id, str) and call_id.strip():
            what = "not valid Unicode (a lone surrogate)"
        else:
            what = f"not a non-empty string ({type(call_id).__name__})"
        return _reject("missing_call_id", f"callId is {what}", rec, tz)
    times: dict[str, int | None] = {}
    bad_times = []
    for wire, col in TIME_FIELDS:
        try:
            times[col] = parse_time(rec.get(wire), tz)
        except BadValue as exc:
            times[col] = None
            bad_times.append(f"{wire}: {exc}")
    start_unreadable = any(b.startswith("startSrcCallTime:") for b in bad_times)
    if times["start_src_call_time"] is None and not start_unreadable:
        shown = to_json(rec.get("startSrcCallTime"))[:40]
        return _reject("missing_start_time", f"startSrcCallTime is {shown}", rec, tz)
    if bad_times:
        return _reject("bad_timestamp", "; ".join(bad_times)[:500], rec, tz)
    try:
        status = parse_small_int(rec.get("callEndStatus"), 0, 5)
    except BadValue as exc:
        return _reject("bad_status", f"callEndStatus: {exc}", rec, tz)
    try:
        duration = parse_small_int(rec.get("duration"), 0, INT32_MAX)
    except BadValue as exc:
        return _reject("bad_duration", f"duration: {exc}", rec, tz)
    raw_type = rec.get("callType")
    if raw_type is None or raw_type == "":
        call_type = 3
    else:
        try:
            call_type = parse_small_int(raw_type, 1, 3)
        except BadValue as exc:
            return _reject("bad_call_type", f"callType: {exc}", rec, tz)
    start, end = times["start_src_call_time"], times["end_call_time"]
    if end is not None and start is not None and end < start:
        return _reject(
            "end_before_start", f"endCallTime is {start - end} s before startSrcCallTime", rec, tz
        )
    row: dict[str, Any] = {"call_id": call_id.strip()}
    for wire, col in TEXT_FIELDS:
        try:
            row[col] = parse_text(rec.get(wire))
        except BadValue as exc:
            return _reject("bad_field", f"{wire} is {exc}", rec, tz)
    row.update(times)
    row["call_end_status"] = status
    row["call_end_status_label"] = STATUS_LABELS[status]
    row["duration_s"] = duration
    row["call_type"] = call_type
    extra = {k: v for k, v in rec.items() if k not in KNOWN_FIELDS}
    row["extra"] = to_json(extra, sort_keys=True) if extra else None
    return row


def _completeness(row: dict[str, Any]) -> tuple[int, int, str]:
    filled = sum(1 for v in row.values() if v is not None)
    end = row["end_call_time"] if row["end_call_time"] is not None else -1
    return filled, end, to_json(row, sort_keys=True)


@dataclass
class DayResult:
    cdr: pa.Table
    rejects: pa.Table
    accounting: dict[str, Any]


# Where every fetched record goes; they sum to ``fetched``.
ACCOUNTING_BUCKETS = ("valid", "rejected", "duplicates_dropped", "overlap_copies", "outside_day")


def unaccounted(accounting: dict[str, Any]) -> int:
    """Records fetched but in no bucket: 0 unless something was lost (or counted twice)."""
    return accounting["fetched"] - sum(accounting[b] for b in ACCOUNTING_BUCKETS)


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


@dataclass
class DayBuilder:
    """Feeds pages of one day in, keeps what belongs to ``[day_start, day_end)``.

    Pages of one query (same window) must arrive together, as the raw manifest lists them.
    """

    day_start: int
    day_end: int
    tz: ZoneInfo
    fetched: int = 0
    outside_day: int = 0
    _rows: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)
    _rejects: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    _reasons: Counter[str] = field(default_factory=Counter)
    _copies: dict[str, _Copies] = field(default_factory=dict)
    # call ids served in more than one version: the distinct versions seen
    _versions: dict[str, set[str]] = field(default_factory=dict)

    def _in_day(self, t: int) -> bool:
        return self.day_start <= t < self.day_end

    def add_page(self, page: RawPage) -> None:
        mid = (page.window[0] + page.window[1]) // 2
        for rec in page.records:
            self.add(rec, page.source, mid, page.window)

    def _first_copy(self, key: str, query: object) -> bool:
        copies = self._copies.get(key)
        if copies is None:
            self._copies[key] = _Copies(query)
            return True
        copies.see(query)
        return False

    def add(self, rec: Any, source: str, window_mid: int, query: object = None) -> None:
        self.fetched += 1
        result = validate_record(rec, self.tz)
        if isinstance(result, Reject):
            day_time = result.day_time if result.day_time is not None else window_mid
            if not self._in_day(day_time):
                self.outside_day += 1
                return
            raw = to_json(rec)
            if self._first_copy("R" + raw, query):
                self._rejects[raw] = (result.reason, result.detail, source)
                self._reasons[result.reason] += 1
            return
        if not self._in_day(result["start_src_call_time"]):
            self.outside_day += 1
            return
        raw = to_json(rec)
        call_id = result["call_id"]
        if self._first_copy("V" + call_id, query):
            self._rows[call_id] = (result, raw)
            return
        seen = self._rows[call_id]
        if seen[1] == raw or seen[0] == result:
            return
        mine = _completeness(result)
        kept = _completeness(seen[0])
        self._versions.setdefault(call_id, {kept[2]}).add(mine[2])
        if mine > kept:
            self._rows[call_id] = (result, raw)

    def accounting(self) -> dict[str, Any]:
        provider = sum(c.max_in_query - 1 for c in self._copies.values())
        copies = sum(c.total - 1 for c in self._copies.values())
        conflicting = sum(
            min(len(v) - 1, self._copies["V" + k].max_in_query - 1)
            for k, v in self._versions.items()
        )
        return {
            "fetched": self.fetched,
            "valid": len(self._rows),
            "rejected": len(self._rejects),
            "duplicates_dropped": provider,
            "overlap_copies": copies - provider,
            "outside_day": self.outside_day,
            "duplicates_exact": provider - conflicting,
            "duplicates_conflicting": conflicting,
            "rejects_by_reason": {r: self._reasons[r] for r in REJECT_REASONS if self._reasons[r]},
        }

    def finish(self) -> DayResult:
        rows = sorted(
            (r for r, _ in self._rows.values()),
            key=lambda r: (r["start_src_call_time"], r["call_id"]),
        )
        cdr = rows_to_table(rows)
        rejects = sorted(
            (
                (reason, detail, raw, source)
                for raw, (reason, detail, source) in self._rejects.items()
            ),
            key=lambda r: (REJECT_REASONS.index(r[0]), r[2]),
        )
        rej = pa.table(
            {
                "reason": pa.array([r[0] for r in rejects], pa.string()),
                "detail": pa.array([r[1] for r in rejects], pa.string()),
                "raw": pa.array([r[2] for r in rejects], pa.string()),
                "source": pa.array([r[3] for r in rejects], pa.string()),
            },
            schema=REJECTS_SCHEMA,
        )
        return DayResult(cdr, rej, self.accounting())


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    columns = {}
    for f in CDR_SCHEMA:
        values = [r[f.name] for r in rows]
        if f.type == _TS:
            values = [None if v is None else v * 1000 for v in values]
            columns[f.name] = pa.array(values, pa.int64()).cast(_TS)
        else:
            columns[f.name] = pa.array(values, f.type)
    return pa.table(columns, schema=CDR_SCHEMA)


def build_day(pages: Iterable[RawPage], day_start: int, day_end: int, tz: ZoneInfo) -> DayResult:
    builder = DayBuilder(day_start, day_end, tz)
    for page in pages:
        builder.add_page(page)
    return builder.finish()
