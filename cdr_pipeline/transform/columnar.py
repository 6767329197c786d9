"""The fast path: whole pages parsed by Arrow's JSON reader and checked with Arrow compute.

It only ever *accepts* a record when the per-record rules of :mod:`validate` would accept it
with the same values; everything it is unsure of (a reject, an odd spelling of a number,
whitespace it does not trim the way Python does, a local time in a daylight-saving gap) is
handed back by position to :func:`validate.validate_record`, which decides exactly. So the
output is the same whichever path a record took, and clean data never touches Python objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from cdr_pipeline.transform.hashing import string_layout
from cdr_pipeline.transform.parse import (
    CALL_TYPE_ABSENT,
    CALL_TYPE_RANGE,
    DURATION_RANGE,
    MAX_EPOCH,
    MIN_EPOCH,
    STATUS_LABELS,
    STATUS_RANGE,
    TEXT_FIELDS,
    TIME_FIELDS,
)

WIRE_FIELDS = (
    "callId",
    *(w for w, _ in TEXT_FIELDS),
    *(w for w, _ in TIME_FIELDS),
    "callEndStatus",
    "duration",
    "callType",
)
_RECORD = pa.struct([pa.field(name, pa.string()) for name in WIRE_FIELDS])
PAGE_SCHEMA = pa.schema(
    [
        pa.field("cdr", pa.list_(_RECORD)),
        pa.field("errorCode", pa.string()),
        pa.field("offset", pa.string()),
        pa.field("result", pa.string()),
    ]
)
# What Python's str.strip() removes among ASCII characters (str.isspace() is also true for
# the four separators \x1c-\x1f, which Unicode's White_Space leaves out).
_ASCII_SPACE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"
_TEXT_TIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}$"
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_STATUS_LABELS = pa.array(STATUS_LABELS, pa.string())


class NotFastPath(Exception):
    """These pages cannot be read by the fast path; read them the exact, slow way."""


def one_line(page: bytes) -> bytes:
    # Newlines can only be whitespace between JSON tokens, so each page becomes one line.
    if b"\n" in page or b"\r" in page:
        return page.replace(b"\n", b" ").replace(b"\r", b" ")
    return page


def read_pages(decoded: list[bytes]) -> pa.Table:
    """Decoded page documents to one table, a row per page; raises NotFastPath when Arrow
    cannot type them (a non-string value, an invalid escape, a repeated key ...)."""
    lines = b"\n".join(one_line(d) for d in decoded)
    # One block, one thread: the caller parses several batches at once, and Arrow's own
    # threads cost about half as much CPU again per record for the same wall time (measured:
    # docs/performance.md). One block also gives one chunk.
    try:
        return pj.read_json(
            pa.BufferReader(lines),
            read_options=pj.ReadOptions(use_threads=False, block_size=len(lines) + 1),
            # "error", not "infer": a field the schema does not know sends the pages the
            # slow way either way, and inferring a deeply nested one takes time quadratic in
            # its depth, then overflows the stack (a hostile page could crash the worker)
            parse_options=pj.ParseOptions(
                explicit_schema=PAGE_SCHEMA, unexpected_field_behavior="error"
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise NotFastPath(str(exc)) from None


@dataclass
class CheckedRecords:
    """Typed columns (times as epoch seconds) of the records, and which ones are clean."""

    columns: dict[str, pa.Array]
    clean: pa.Array  # bool, no nulls


def _trim(col: pa.Array) -> pa.Array:
    return pc.utf8_trim(col, characters=_ASCII_SPACE)


# --- shortcuts for the common case, read straight off the string buffers -----------------
# Each one answers only when the answer is plain (no spaces at the ends, digits only ...);
# otherwise it returns None and the general Arrow compute path decides.


def _plain_ends(col: pa.Array) -> bool:
    """True when no value starts or ends with a byte Python's strip() could remove (ASCII
    space or control, or the first or last byte of a non-ASCII character): then trimming
    changes nothing, and Python would agree."""
    _, offsets, data = string_layout(col)
    starts, ends = offsets[:-1], offsets[1:]
    filled = ends > starts
    if col.null_count:
        filled &= col.is_valid().to_numpy(zero_copy_only=False)
    edges = np.concatenate([data[starts[filled]], data[ends[filled] - 1]])
    return not ((edges <= 0x20) | (edges >= 0x80)).any()


def _text(col: pa.Array) -> tuple[pa.Array, pa.Array | None]:
    """(trimmed text, where Python's strip() gives the same; None: everywhere)."""
    if _plain_ends(col):
        return col, None
    trimmed = _trim(col)
    return trimmed, _python_strip_agrees(trimmed)


def _digit_lengths(col: pa.Array) -> np.ndarray | None:
    """The lengths of the values when every one is present and one or more ASCII digits."""
    if col.null_count or not len(col):
        return None
    _, offsets, data = string_layout(col)
    lengths = np.diff(offsets)
    if lengths.min() < 1:
        return None
    if ((data[offsets[0] : offsets[-1]] - np.uint8(ord("0"))) > 9).any():
        return None
    return lengths


def _digit_time_column(raw: pa.Array) -> tuple[pa.Array, pa.Array] | None:
    """:func:`_time_column` for a column of epoch seconds or milliseconds (and ``"0"``)."""
    lengths = _digit_lengths(raw)
    if lengths is None or not ((lengths <= 11) | (lengths == 13)).all():
        return None
    number = pc.cast(raw, pa.int64()).to_numpy()
    seconds = np.where(lengths == 13, number // 1000, number)
    empty = (lengths == 1) & (number == 0)
    ok = empty | ((seconds >= MIN_EPOCH) & (seconds < MAX_EPOCH))
    return pa.array(seconds, pa.int64(), mask=empty), pa.array(ok)


_TEXT_LENGTH = 19  # yyyy-MM-dd HH:mm:ss
_SEPARATORS = {4: ord("-"), 7: ord("-"), 10: ord(" "), 13: ord(":"), 16: ord(":")}
_SEPARATOR_AT = np.array(list(_SEPARATORS))
_SEPARATOR = np.array(list(_SEPARATORS.values()), dtype=np.uint8)
_DIGITS = np.array([i for i in range(_TEXT_LENGTH) if i not in _SEPARATORS])
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
# Arrow's zone rules stop where the tz database's listed changes do (2037); Python's go on
# by the zone's rule. Local text times from then on are left to the exact rules.
_ZONE_RULES_END = 2_114_380_800  # 2037-01-01


def _days_from_civil(year: np.ndarray, month: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's algorithm)."""
    y = year - (month <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    doy = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _local_text_seconds(
    data: np.ndarray, starts: np.ndarray, tz: str
) -> tuple[np.ndarray, np.ndarray]:
    """(epoch seconds, exact) of values that are each 19 bytes at ``starts``, read as
    ``yyyy-MM-dd HH:mm:ss`` in ``tz``: *exact* where the text is a real date and time that
    Python's ``strptime`` reads to the same instant (no 30 February, no second 60, not in a
    daylight-saving gap); the rest go to the exact rules."""
    # each value's 19 bytes copied as a row (a gather of rows, not of bytes)
    chars = np.lib.stride_tricks.sliding_window_view(data, _TEXT_LENGTH)[starts]
    d = chars.astype(np.int32) - ord("0")
    exact = ((d[:, _DIGITS] >= 0) & (d[:, _DIGITS] <= 9)).all(axis=1)
    exact &= (chars[:, _SEPARATOR_AT] == _SEPARATOR).all(axis=1)
    year = d[:, 0] * 1000 + d[:, 1] * 100 + d[:, 2] * 10 + d[:, 3]
    month, day, hour, minute, second = (d[:, i] * 10 + d[:, i + 1] for i in (5, 8, 11, 14, 17))
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_ok = (month >= 1) & (month <= 12)
    last_day = _DAYS_IN_MONTH[np.where(month_ok, month, 0)] + ((month == 2) & leap)
    exact &= month_ok & (day >= 1) & (day <= last_day) & (year >= 1)
    exact &= (hour <= 23) & (minute <= 59) & (second <= 59)
    local = (
        _days_from_civil(year, np.where(exact, month, 1), np.where(exact, day, 1)).astype(np.int64)
        * 86400
        + hour * 3600
        + minute * 60
        + second
    )
    exact &= local < _ZONE_RULES_END
    # Arrow's zone rules agree with Python's where a local time exists once, or twice (the
    # earlier instant, as Python's fold=0); a time in a gap sends the values to the exact rules.
    stamps = pa.array(np.where(exact, local, 0), pa.timestamp("s"))
    try:
        utc = pc.assume_timezone(stamps, timezone=tz, ambiguous="earliest", nonexistent="raise")
    except pa.ArrowInvalid:
        return local, np.zeros(len(local), dtype=bool)
    return pc.cast(utc, pa.int64()).to_numpy(), exact


def _plain_time_column(raw: pa.Array, tz: str) -> tuple[pa.Array, pa.Array] | None:
    """:func:`_time_column` for a column whose every value is absent, empty, digits or
    19 bytes long (the provider's text form), read off Arrow's buffers; None otherwise."""
    if not len(raw):
        return None
    _, offsets, data = string_layout(raw)
    starts, lengths = offsets[:-1], np.diff(offsets)
    present = lengths > 0
    if raw.null_count:
        present &= raw.is_valid().to_numpy(zero_copy_only=False)
    text = present & (lengths == _TEXT_LENGTH)
    number = present & ~text
    if not ((lengths[number] <= 11) | (lengths[number] == 13)).all():
        return None
    seconds = np.zeros(len(raw), dtype=np.int64)
    if number.any():
        numbers = pc.filter(raw, pa.array(number))
        if not pc.all(pc.ascii_is_decimal(numbers)).as_py():
            return None  # a sign, a space, a letter: the general path
        values = pc.cast(numbers, pa.int64()).to_numpy()
        seconds[number] = np.where(lengths[number] == 13, values // 1000, values)
    ok = ~present
    if text.any():
        seconds[text], exact = _local_text_seconds(data, starts[text], tz)
        ok[text] = exact
    empty = ~present | (number & (lengths == 1) & (seconds == 0))
    in_range = (seconds >= MIN_EPOCH) & (seconds < MAX_EPOCH)
    ok = empty | (in_range & (ok | number))
    return pa.array(seconds, pa.int64(), mask=empty), pa.array(ok)


def _python_strip_agrees(trimmed: pa.Array) -> pa.Array:
    """True where Python's strip() would give the same text as our ASCII trim: nothing
    left at either end that Unicode calls white space (U+3000, U+00A0 ...)."""
    plain = pc.fill_null(pc.string_is_ascii(trimmed), True)
    if pc.all(plain).as_py():
        return plain
    return pc.fill_null(pc.equal(trimmed, pc.utf8_trim_whitespace(trimmed)), True)


def _time_column(raw: pa.Array, tz: str) -> tuple[pa.Array, pa.Array]:
    """(epoch seconds or null, ok) for one wire time field."""
    plain = _digit_time_column(raw) or _plain_time_column(raw, tz)
    if plain is not None:
        return plain
    s = _trim(raw)
    empty = pc.fill_null(pc.or_(pc.equal(s, ""), pc.equal(s, "0")), True)
    length = pc.binary_length(s)
    digits = pc.fill_null(
        pc.and_(pc.ascii_is_decimal(s), pc.or_(pc.less_equal(length, 11), pc.equal(length, 13))),
        False,
    )
    number = pc.cast(pc.if_else(digits, s, None), pa.int64())
    millis = pc.equal(length, 13)
    seconds = pc.if_else(millis, pc.divide(number, 1000), number)
    if not pc.all(pc.or_(empty, digits)).as_py():
        text = pc.fill_null(pc.match_substring_regex(s, _TEXT_TIME), False)
    else:
        text = None
    if text is not None and pc.any(text).as_py():
        local = pc.strptime(pc.if_else(text, s, None), _TIME_FORMAT, "s", error_is_null=True)
        # exact only if it formats back to the same text (no normalised 30 February)
        roundtrip = pc.fill_null(pc.equal(pc.strftime(local, _TIME_FORMAT), s), False)
        try:
            utc = pc.assume_timezone(local, timezone=tz, ambiguous="earliest", nonexistent="raise")
        except pa.ArrowInvalid:  # a time in a daylight-saving gap: let Python decide
            roundtrip = pa.array([False] * len(s))
            utc = local
        text_seconds = pc.cast(pc.cast(utc, pa.timestamp("s")), pa.int64())
        roundtrip = pc.and_(roundtrip, pc.fill_null(pc.less(text_seconds, _ZONE_RULES_END), False))
        seconds = pc.if_else(pc.and_(text, roundtrip), text_seconds, seconds)
    in_range = pc.and_(pc.greater_equal(seconds, MIN_EPOCH), pc.less(seconds, MAX_EPOCH))
    ok = pc.or_(empty, pc.fill_null(in_range, False))
    return pc.if_else(empty, pa.scalar(None, pa.int64()), seconds), ok


def _time_columns(raws: list[pa.Array], tz: str) -> list[tuple[pa.Array, pa.Array]]:
    """:func:`_time_column` of each wire time field. Columns of anything but epoch digits
    are decided together, once per distinct value: a batch's times fall within an hour or
    two, so its seven columns hold a few thousand distinct values among tens of thousands."""
    digits = [_digit_time_column(raw) for raw in raws]
    others = [raw for raw, got in zip(raws, digits, strict=True) if got is None]
    decided = iter(_decided_together(others, tz) if others else [])
    return [got if got is not None else next(decided) for got in digits]


def _decided_together(raws: list[pa.Array], tz: str) -> list[tuple[pa.Array, pa.Array]]:
    encoded = pc.dictionary_encode(pa.concat_arrays(raws))
    seconds, ok = _time_column(encoded.dictionary, tz)
    seconds, ok = pc.take(seconds, encoded.indices), pc.take(ok, encoded.indices)
    # an absent time is allowed here (whether the start may be absent is checked apart)
    ok = pc.fill_null(ok, True)
    out, at = [], 0
    for raw in raws:
        out.append((seconds.slice(at, len(raw)), ok.slice(at, len(raw))))
        at += len(raw)
    return out


def _small_number(text: pa.Array, max_digits: int) -> pa.Array:
    """ASCII digits only, 1..max_digits of them (no sign, no spaces: those go the slow way)."""
    return pc.fill_null(
        pc.and_(pc.ascii_is_decimal(text), pc.less_equal(pc.binary_length(text), max_digits)),
        False,
    )


def _within(values: pa.Array, bounds: tuple[int, int]) -> pa.Array:
    return pc.and_(pc.greater_equal(values, bounds[0]), pc.less_equal(values, bounds[1]))


def check_records(records: pa.StructArray, tz: str) -> CheckedRecords:
    """The column-wise form of :func:`validate.validate_record` (the exact rules), for
    records whose fields are all strings; the values it checks against come from
    :mod:`parse`, as the exact rules' do."""
    n = len(records)
    field = {name: records.field(name) for name in WIRE_FIELDS}
    ok = pc.is_valid(records) if records.null_count else pa.array(np.ones(n, dtype=bool))

    call_id, agrees = _text(field["callId"])
    ok = pc.and_(ok, pc.fill_null(pc.greater(pc.binary_length(call_id), 0), False))
    if agrees is not None:
        ok = pc.and_(ok, agrees)
    columns: dict[str, pa.Array] = {"call_id": call_id}
    for wire, col in TEXT_FIELDS:
        text, agrees = _text(field[wire])
        if agrees is not None:
            ok = pc.and_(ok, agrees)
        empty = pc.equal(text, "")
        if pc.any(empty).as_py():
            text = pc.if_else(empty, pa.scalar(None, pa.string()), text)
        columns[col] = text
    for (_, col), (seconds, good) in zip(
        TIME_FIELDS, _time_columns([field[wire] for wire, _ in TIME_FIELDS], tz), strict=True
    ):
        columns[col] = seconds
        ok = pc.and_(ok, good)
    start, end = columns["start_src_call_time"], columns["end_call_time"]
    ok = pc.and_(ok, pc.is_valid(start))
    ok = pc.and_(ok, pc.fill_null(pc.greater_equal(end, start), True))

    status = _trim(field["callEndStatus"])
    status_ok = _small_number(status, len(str(STATUS_RANGE[1])))
    status_value = pc.cast(pc.if_else(status_ok, status, "0"), pa.int8())
    status_ok = pc.and_(status_ok, _within(status_value, STATUS_RANGE))
    ok = pc.and_(ok, status_ok)
    columns["call_end_status"] = pc.if_else(status_ok, status_value, pa.scalar(0, pa.int8()))
    columns["call_end_status_label"] = pc.take(
        _STATUS_LABELS, pc.cast(columns["call_end_status"], pa.int32())
    )
    duration = _trim(field["duration"])
    duration_ok = _small_number(duration, len(str(DURATION_RANGE[1])))
    seconds = pc.cast(pc.if_else(duration_ok, duration, "0"), pa.int64())
    in_range = _within(seconds, DURATION_RANGE)
    ok = pc.and_(ok, pc.and_(duration_ok, in_range))
    columns["duration_s"] = pc.cast(pc.if_else(in_range, seconds, 0), pa.int32())
    raw_type = field["callType"]
    absent = pc.fill_null(pc.equal(raw_type, ""), True)
    call_type = _trim(raw_type)
    type_digit = _small_number(call_type, 1)
    type_value = pc.cast(pc.if_else(type_digit, call_type, "0"), pa.int8())
    type_ok = pc.or_(absent, pc.and_(type_digit, _within(type_value, CALL_TYPE_RANGE)))
    ok = pc.and_(ok, type_ok)
    default = str(CALL_TYPE_ABSENT)
    columns["call_type"] = pc.cast(
        pc.if_else(pc.or_(absent, pc.invert(type_ok)), default, call_type), pa.int8()
    )
    columns["extra"] = pa.nulls(n, pa.string())
    return CheckedRecords(columns, pc.fill_null(ok, False))
