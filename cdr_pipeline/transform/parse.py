"""Wire values to Python values: time stamps in every form the provider uses, and records.

Every function here either returns a value or raises :class:`BadValue` with a short reason;
nothing else may escape, whatever the input (the property tests hold us to that).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

TIME_FIELDS = (
    ("startSrcCallTime", "start_src_call_time"),
    ("startSrcRingTime", "start_src_ring_time"),
    ("srcAcceptTime", "src_accept_time"),
    ("startDstCallTime", "start_dst_call_time"),
    ("startDstRingTime", "start_dst_ring_time"),
    ("dstAcceptTime", "dst_accept_time"),
    ("endCallTime", "end_call_time"),
)
TEXT_FIELDS = (
    ("src", "src"),
    ("dst", "dst"),
    ("recordUrl", "record_url"),
    ("bizId", "biz_id"),
    ("orderId", "order_id"),
)
KNOWN_FIELDS = frozenset(
    ["callId", "callEndStatus", "duration", "callType"]
    + [w for w, _ in TIME_FIELDS]
    + [w for w, _ in TEXT_FIELDS]
)
STATUS_LABELS = (
    "unknown",
    "connected",
    "caller_no_answer",
    "callee_no_answer",
    "caller_unreachable",
    "callee_unreachable",
)
# Plausible epoch range: 2000-01-01 .. 2100-01-01. Outside it a number is not a call time.
MIN_EPOCH, MAX_EPOCH = 946_684_800, 4_102_444_800
INT32_MAX = 2**31 - 1
# The value rules, stated once for both forms that apply them: exactly, record by record
# (validate.validate_record), and column-wise (columnar.check_records). The property tests
# in test_transform.py (_both_paths) hold the two forms equal.
STATUS_RANGE = (0, len(STATUS_LABELS) - 1)  # callEndStatus
DURATION_RANGE = (0, INT32_MAX)  # billed seconds
CALL_TYPE_RANGE = (1, 3)
CALL_TYPE_ABSENT = 3  # the callType of a record that has none
_DATETIME_RE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


class BadValue(ValueError):
    pass


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadValue(f"a boolean ({value})")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if not value.isascii() and not is_valid_unicode(value):
            raise BadValue("text with a lone surrogate (\\ud800-\\udfff): not valid Unicode")
        return value.strip()
    raise BadValue(f"a JSON {type(value).__name__}")


def parse_time(value: Any, tz: ZoneInfo) -> int | None:
    """Epoch seconds from epoch seconds, epoch milliseconds or ``yyyy-MM-dd HH:mm:ss`` in ``tz``.

    ``"0"``, ``""`` and null mean the event never happened (None).
    """
    text = _text(value)
    if text is None or text in ("", "0"):
        return None
    if text.isascii() and text.isdigit():
        if len(text) == 13:
            seconds = int(text) // 1000
        elif len(text) <= 11:
            seconds = int(text)
        else:
            raise BadValue(
                f"{text[:40]!r} has {len(text)} digits: neither epoch seconds nor milliseconds"
            )
    elif _DATETIME_RE.fullmatch(text):
        try:
            local = datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
        except ValueError:
            raise BadValue(f"{text!r} is not a real date and time") from None
        seconds = int(local.replace(tzinfo=tz).timestamp())
    else:
        raise BadValue(f"{text[:40]!r} is not epoch seconds, milliseconds or yyyy-MM-dd HH:mm:ss")
    if not MIN_EPOCH <= seconds < MAX_EPOCH:
        raise BadValue(f"{text[:40]!r} is outside 2000..2100")
    return seconds


def parse_small_int(value: Any, low: int, high: int) -> int:
    text = _text(value)
    if text is None or text == "":
        raise BadValue("missing")
    if not (text.isascii() and text.lstrip("-").isdigit()) or len(text) > 12:
        raise BadValue(f"{text[:40]!r} is not a whole number")
    number = int(text)
    if not low <= number <= high:
        raise BadValue(f"{number} is outside {low}..{high}")
    return number


def parse_text(value: Any) -> str | None:
    """A free-text field; empty means null."""
    text = _text(value)
    return text or None


def is_valid_unicode(text: str) -> bool:
    """False for strings holding lone surrogates, which JSON escapes can produce but UTF-8
    (and so Parquet) cannot store."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def to_json(value: Any, *, sort_keys: bool = False) -> str:
    """A value as JSON text (key order kept, non-ASCII kept) that UTF-8 can always store:
    lone surrogates stay ``\\u`` escapes."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys)
        if text.isascii() or is_valid_unicode(text):
            return text
        return json.dumps(value, separators=(",", ":"), sort_keys=sort_keys)
    except RecursionError:
        return '"(a JSON value nested too deeply to show; see the raw layer)"'
