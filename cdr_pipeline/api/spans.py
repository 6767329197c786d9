"""Where each record of a page lies in its bytes, found without parsing the page.

One odd record (a string where an object belongs, a number where a string does) stops
Arrow's JSON reader for its whole page, and most pages of a dirty day hold one.
Reading such a page with Python costs ten times what Arrow does. Instead the page is cut at
its ``cdr`` array's element boundaries: the odd elements stand in as ``{}`` for Arrow, which
reads the page whole again, and Python reads only those, each on its own. The same cut gives
the exact rules the few records they must decide without parsing the rest of the page.

The cut is found with numpy over the bytes (quotes, escapes, brackets and commas outside
strings); whatever it cannot vouch for (a second array at the top level, an unbalanced
quote, a count that does not match) answers None, and the caller reads the page the slow,
certain way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

_MAX_INT_DIGITS = 4000  # below Python's int-from-string limit (4300)


@dataclass(frozen=True)
class Unreadable:
    """A JSON value nested beyond the parser's depth, kept as its text: the validator rejects
    it as ``unreadable`` and the rest of its page is read as usual."""

    text: str


def parse_int(text: str) -> int | str:
    """A number too long to be anything real stays its digits, for the validator to reject
    (Python refuses to convert it, which would otherwise fail the whole page)."""
    return int(text) if len(text) <= _MAX_INT_DIGITS else text


def parse_value(json_bytes: bytes) -> Any:
    """Any JSON value, read as :func:`wire.parse_document` reads the values in a body (a part
    of a body the cut has vouched for: a syntax error is the caller's); one nested too deeply
    is :class:`Unreadable`."""
    try:
        return json.loads(json_bytes, parse_int=parse_int)
    except RecursionError:
        return Unreadable(bytes(json_bytes).decode("utf-8", "replace"))


_QUOTE, _BACKSLASH, _COMMA = ord('"'), ord("\\"), ord(",")
_OBJECT, _ARRAY, _ARRAY_END = ord("{"), ord("["), ord("]")
# { and [ are 0x7B and 0x5B, } and ] 0x7D and 0x5D: one bit apart
_OPENER, _CLOSER, _CASE = 0x7B, 0x7D, 0x20
_ONE = np.uint64(1)


@dataclass(frozen=True)
class Spans:
    """The ``cdr`` array of a page: where it opens and closes, and each element's bytes."""

    opens: int  # the position of its [
    closes: int  # ... and of its ]
    starts: np.ndarray
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

    def element(self, page: bytes, i: int) -> Any:
        """Element ``i`` as Python reads it (as :func:`wire.parse_document` would)."""
        return parse_value(page[self.starts[i] : self.ends[i]])


class _Strings:
    """Where a text's strings lie: a bitmap of the quotes that open or close them (not escaped
    ones), with a count of them before every 64 bytes. A position lies outside strings when an
    even number of those quotes come before it. Bits, because listing the positions of a
    page's quotes was most of the cut's time (docs/performance.md)."""

    def __init__(self, text: bytes, b: np.ndarray) -> None:
        quote = b == _QUOTE
        if b"\\" in text:  # a search in C; most pages have no escape at all
            for at in (np.flatnonzero(quote[1:] & (b[:-1] == _BACKSLASH)) + 1).tolist():
                # escaped when an odd run of backslashes ends just before it: few, one by one
                run = 0
                while at - run - 1 >= 0 and b[at - run - 1] == _BACKSLASH:
                    run += 1
                quote[at] = run % 2 == 0
        bits = np.packbits(quote, bitorder="little")
        self.words = np.concatenate([bits, np.zeros(-len(bits) % 8, np.uint8)]).view("<u8")
        self.before = np.concatenate([[0], np.cumsum(np.bitwise_count(self.words))])
        self.count = int(self.before[-1])

    def outside(self, at: np.ndarray) -> np.ndarray:
        """Which of the positions ``at`` lie outside strings."""
        word = at >> 6
        below = self.words[word] & ((_ONE << (at & 63).astype(np.uint64)) - _ONE)
        return (self.before[word] + np.bitwise_count(below)) % 2 == 0


def _brackets(b: np.ndarray) -> np.ndarray:
    """Positions of the brackets, in strings or not. With the 0x20 bit set, ``[{`` are 0x7B
    and ``]}`` 0x7D: less 0x7B (modulo 256) 0 and 2, both 0 once bit 1 is masked away; worked
    in place on one copy of the bytes, a temporary the size of the page costing as much as
    the scan."""
    folded = b | _CASE
    np.subtract(folded, _OPENER, out=folded)
    np.bitwise_and(folded, 0xFD, out=folded)
    return np.flatnonzero(folded == 0)


def cdr_spans(page: bytes) -> Spans | None:
    """The elements of the page's one top-level array, or None where the bytes do not
    show exactly one (the caller then parses the page whole).

    Brackets outside strings give the depth; the elements that are objects or arrays are
    the brackets opened and closed at the array's depth; what lies between them is a comma
    (read as such when it is a single byte) or, rarely, other elements, split at the commas
    outside strings."""
    b = np.frombuffer(page, dtype=np.uint8)
    strings = _Strings(page, b)
    if strings.count % 2:
        return None
    marks = _brackets(b)
    marks = marks[strings.outside(marks)]
    chars = b[marks]
    step = np.where((chars | _CASE) == _OPENER, 1, -1)
    after = np.cumsum(step)
    before = after - step
    if (after < 0).any():
        return None
    opens = marks[(chars == _ARRAY) & (before == 1)]
    closes = marks[(chars == _ARRAY_END) & (after == 1)]
    if len(opens) != 1 or len(closes) != 1 or closes[0] < opens[0]:
        return None
    at, end = int(opens[0]), int(closes[0])
    inside = (marks > at) & (marks < end)
    first, last = marks[inside & (before == 2)], marks[inside & (after == 2)]
    # the stretches between bracketed elements (and before the first, after the last)
    gap_starts = np.concatenate([[at + 1], last + 1])
    gap_ends = np.concatenate([first, [end]])
    single = (gap_ends - gap_starts == 1) & (b[np.minimum(gap_starts, len(b) - 1)] == _COMMA)
    single[[0, -1]] = False
    commas = [gap_starts[single]]
    for i in np.flatnonzero(~single).tolist():
        gap = page[gap_starts[i] : gap_ends[i]]
        if not gap.strip(b" \t\r\n"):
            continue
        found = np.flatnonzero(b[gap_starts[i] : gap_ends[i]] == _COMMA) + gap_starts[i]
        commas.append(found[strings.outside(found)])
    cuts = np.sort(np.concatenate(commas))
    starts = np.concatenate([[at + 1], cuts + 1])
    ends = np.concatenate([cuts, [end]])
    if len(starts) == 1 and not page[at + 1 : end].strip(b" \t\r\n"):
        return Spans(at, end, starts[:0], ends[:0])  # an empty array
    return Spans(at, end, starts, ends)


# --- a page too large to hold at once, cut as it is inflated -----------------------------------

_COMMA_OR_BRACKET = frozenset(b"[]{},")
_CDR_KEY = re.compile(rb'"cdr"\s*:\s*$')
_SLICE_HEAD = b'{"errorCode":"0","cdr":['


def _array_start(page: bytes) -> int | None:
    """Just past the ``[`` of the top-level ``"cdr"`` array, if ``page`` (a beginning of a
    document) shows it; None where it cannot vouch for it."""
    b = np.frombuffer(page, dtype=np.uint8)
    marks = _brackets(b)
    marks = marks[_Strings(page, b).outside(marks)]
    if not len(marks):
        return None
    chars = b[marks]
    depth = np.cumsum(np.where((chars | _CASE) == _OPENER, 1, -1))
    opens = marks[(chars == _ARRAY) & (depth == 2)]
    if not len(opens) or depth[0] != 1 or (depth[: np.searchsorted(marks, opens[0])] < 1).any():
        return None
    at = int(opens[0])
    return at + 1 if _CDR_KEY.search(page[:at]) else None


def _elements_end(tail: bytes) -> tuple[int | None, int | None]:
    """In ``tail`` (bytes of the array from an element's start): the last comma between
    elements, and where the array closes (its ``]``), each None if not there."""
    b = np.frombuffer(tail, dtype=np.uint8)
    marks = np.flatnonzero(np.isin(b, np.frombuffer(bytes(_COMMA_OR_BRACKET), np.uint8)))
    marks = marks[_Strings(tail, b).outside(marks)]
    chars = b[marks]
    folded = chars | _CASE
    depth = np.cumsum(np.where(folded == _OPENER, 1, np.where(folded == _CLOSER, -1, 0)))
    closes = marks[depth < 0]
    close = int(closes[0]) if len(closes) else None
    commas = marks[(chars == _COMMA) & (depth == 0)]
    if close is not None:
        commas = commas[commas < close]
    return (int(commas[-1]) if len(commas) else None), close


def page_slices(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    """A page's decoded bytes, arriving a chunk at a time, as page documents of whole records
    of about ``size`` bytes each (``{"errorCode":"0","cdr":[...]}``), so that memory holds a
    slice, never the page. Its envelope, read at the end, follows as an empty page of its own
    code when that is not ``"0"`` (the reader then says so). A beginning this cannot vouch for
    is passed on whole, as one page."""
    first = next(chunks, b"")
    at = _array_start(first)
    if at is None:
        yield b"".join([first, *chunks])
        return
    prefix, tail, need = first[:at], first[at:], size
    while True:
        comma, close = _elements_end(tail)
        if close is not None:
            if tail[:close].strip():
                yield _SLICE_HEAD + tail[:close] + b"]}"
            yield from _envelope(prefix + b"]" + b"".join([tail[close + 1 :], *chunks]))
            return
        if comma is not None and comma >= size // 2:
            yield _SLICE_HEAD + tail[:comma] + b"]}"
            tail, need = tail[comma + 1 :], size
        else:
            need = max(need, 2 * len(tail))  # one long element: look again when twice as far
        while len(tail) < need:
            more = next(chunks, None)
            if more is None:
                yield b"".join([prefix, tail])  # cut short: the reader says how
                return
            tail += more


def _envelope(doc: bytes) -> Iterator[bytes]:
    """Nothing when the page's own fields say success; else them, with no records."""
    try:
        fields = json.loads(doc, parse_int=parse_int)
    except (ValueError, RecursionError):
        yield doc
        return
    code = fields.get("errorCode") if isinstance(fields, dict) else None
    if str(code if code is not None else "").strip() != "0":
        yield doc
