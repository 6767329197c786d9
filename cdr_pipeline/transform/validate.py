"""The reject rules for one record, the dataset schemas, and the accounting's buckets.

The rules here are the exact ones; :func:`columnar.check_records` is their column-wise form,
a faster way to the same answers for records it can prove clean, and :mod:`day` assembles a
day from either. The values both forms check against are stated once, in :mod:`parse`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa

from cdr_pipeline.api.spans import Unreadable
from cdr_pipeline.dictionary import described
from cdr_pipeline.transform.enrich import ENRICHED_FIELDS
from cdr_pipeline.transform.parse import (
    CALL_TYPE_ABSENT,
    CALL_TYPE_RANGE,
    DURATION_RANGE,
    KNOWN_FIELDS,
    STATUS_LABELS,
    STATUS_RANGE,
    TEXT_FIELDS,
    TIME_FIELDS,
    BadValue,
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
    "unreadable",
)

_TS = pa.timestamp("ms", tz="UTC")
# What a record gives: the rows of a day as validated and de-duplicated.
RECORD_SCHEMA = described(
    pa.schema(
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
    ),
    "cdr",
)
# ``cdr`` as published: the record's columns and those derived from them (transform/enrich.py).
CDR_SCHEMA = described(pa.schema([*RECORD_SCHEMA, *ENRICHED_FIELDS]), "cdr")

REJECTS_SCHEMA = described(
    pa.schema(
        [
            pa.field("reason", pa.string(), nullable=False),
            pa.field("detail", pa.string()),
            pa.field("raw", pa.string()),
            pa.field("source", pa.string()),
        ]
    ),
    "cdr_rejects",
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
    if isinstance(rec, Unreadable):
        return Reject("unreadable", "a JSON value nested too deeply for the parser to read", None)
    if not isinstance(rec, dict):
        return Reject("not_an_object", f"a JSON {type(rec).__name__}, not an object", None)
    call_id = rec.get("callId")
    if type(call_id) is int:  # a callId sent as a JSON number is its digits, as statuses are
        call_id = str(call_id)
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
        status = parse_small_int(rec.get("callEndStatus"), *STATUS_RANGE)
    except BadValue as exc:
        return _reject("bad_status", f"callEndStatus: {exc}", rec, tz)
    try:
        duration = parse_small_int(rec.get("duration"), *DURATION_RANGE)
    except BadValue as exc:
        return _reject("bad_duration", f"duration: {exc}", rec, tz)
    raw_type = rec.get("callType")
    if raw_type is None or raw_type == "":
        call_type = CALL_TYPE_ABSENT
    else:
        try:
            call_type = parse_small_int(raw_type, *CALL_TYPE_RANGE)
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


# Where every fetched record goes; they sum to ``fetched``.
ACCOUNTING_BUCKETS = (
    "valid",
    "rejected",
    "duplicates_dropped",
    "overlap_copies",
    "outside_day",
    "erased",  # a subscriber's erasure (cdr_pipeline/erasure.py)
)


def unaccounted(accounting: dict[str, Any]) -> int:
    """Records fetched but in no bucket: 0 unless something was lost (or counted twice)."""
    return accounting["fetched"] - sum(accounting.get(b, 0) for b in ACCOUNTING_BUCKETS)
