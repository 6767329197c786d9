"""Number intelligence: E.164 form, country and number type of ``src`` and ``dst``, from Google's
libphonenumber metadata (the ``phonenumbers`` package), as the data contract defines them.

Parsing one number costs tens of µs in Python, and a busy day holds a million distinct numbers.
So numbers are resolved by *prefix*: an all-digit number is grouped with the numbers that differ
from it only in their last few digits, one of them is parsed, and the group's answer is spread
to its members. That is exact only where libphonenumber cannot tell the members apart, which is
proven from the metadata's own patterns (:func:`key_safe`): the prefixes libphonenumber strips
or matches (international, national, carrier, the leading digits that pick a region) end within
the group's key, and no pattern that can match the key leaves a constrained digit in the tail.
Numbers are grouped by their last 8 digits first, then by 7, 6 ... 2 where the longer tail was
not proven, and the analysis (which costs as much as a few dozen parses) is asked only of groups
that have met enough numbers.

The grouping is integer arithmetic: each plain number is read once off Arrow's buffers as an
integer (:func:`read_digits`), a group is the integer before the tail with the digit count and
the leading ``+``, and a member's E.164 form is its group's head times 10^tail plus its own tail,
made text by one Arrow cast: faster than grouping with Arrow's string kernels (a slice, a
dictionary, a join and takes per tail), by the figures in docs/performance.md.

Everything else (other spellings, short numbers, sparse groups) is parsed one by one, through a
bounded cache. Property tests over every region's numbers hold the grouped answers to the
per-number ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import phonenumbers as pn
import pyarrow as pa
import pyarrow.compute as pc
from phonenumbers import PhoneNumberType
from phonenumbers.phonenumberutil import _number_type_helper

from cdr_pipeline.dictionary import NUMBER_TYPES
from cdr_pipeline.transform.hashing import string_layout
from cdr_pipeline.transform.patterns import key_safe

TAILS = (8, 7, 6, 5, 4, 3, 2)  # digits a group's members may differ in, tried longest first
MIN_ANALYSED = 32  # numbers a group needs (in the day so far) before its patterns are analysed
MIN_GROUPED = 8  # digits (with the country code) a number needs to be grouped
MAX_DIGITS = 19  # the most a uint64 holds whole: longer numbers are parsed one by one
_POW10 = np.array([10**k for k in range(MAX_DIGITS + 1)], dtype=np.uint64)
CACHE = 1 << 16  # numbers and prefixes remembered (bounded: memory stays flat)

_TYPES = {
    getattr(pn.PhoneNumberType, name): name.lower()
    for name in (
        "FIXED_LINE",
        "MOBILE",
        "FIXED_LINE_OR_MOBILE",
        "TOLL_FREE",
        "PREMIUM_RATE",
        "SHARED_COST",
        "VOIP",
        "PERSONAL_NUMBER",
        "PAGER",
        "UAN",
        "VOICEMAIL",
    )
}
UNKNOWN = "unknown"
assert (*_TYPES.values(), UNKNOWN) == NUMBER_TYPES  # the data dictionary lists the same


@dataclass(frozen=True)
class Parsed:
    e164: str | None
    country: str | None
    number_type: str


_NOTHING = Parsed(None, None, UNKNOWN)


def normalise(number: str) -> str:
    """The contract's normal form: spaces, ``-``, ``(`` and ``)`` removed; ``00`` becomes ``+``."""
    for ch in " \t-()":
        number = number.replace(ch, "")
    return "+" + number[2:] if number.startswith("00") else number


@lru_cache(maxsize=CACHE)
def parse_number(normalised: str, region: str) -> Parsed:
    """One normalised number, exactly as the contract says; never raises."""
    if not normalised:
        return _NOTHING
    try:
        p = pn.parse(normalised, None if normalised.startswith("+") else region)
    except pn.NumberParseException:
        return _NOTHING
    e164 = pn.format_number(p, pn.PhoneNumberFormat.E164) if pn.is_possible_number(p) else None
    # is_valid_number and number_type each look the region up again: once is enough (the
    # property tests hold this to the public functions). Half the time per number.
    found = pn.region_code_for_number(p)
    kind = PhoneNumberType.UNKNOWN
    if found is not None:
        metadata = pn.PhoneMetadata.metadata_for_region_or_calling_code(p.country_code, found)
        if metadata is not None:
            kind = _number_type_helper(pn.national_significant_number(p), metadata)
    valid = kind != PhoneNumberType.UNKNOWN
    country = found if valid else pn.region_code_for_country_code(p.country_code)
    return Parsed(
        e164,
        None if country in (None, pn.UNKNOWN_REGION) else country,
        _TYPES.get(kind, UNKNOWN),
    )


def _country_code(digits: str) -> int | None:
    """The calling code an international number starts with (as libphonenumber reads it)."""
    for size in (1, 2, 3):
        code = int(digits[:size]) if digits[:size].isdigit() else 0
        if code in pn.COUNTRY_CODE_TO_REGION_CODE:
            return code
    return None


_UNSAFE = ("", None, UNKNOWN)  # a group whose members libphonenumber might tell apart
_Answer = tuple[str | None, str | None, str]  # E.164 head ("" when not exact), country, type


@dataclass
class Digits:
    """A column's *plain* numbers, read off Arrow's buffers: digits with at most a leading
    ``+``, :data:`MIN_GROUPED` characters or more and :data:`MAX_DIGITS` digits or fewer, each
    held as an integer (its digit count keeps its leading zeros)."""

    plain: np.ndarray  # bool
    plus: np.ndarray  # bool, where plain
    count: np.ndarray  # digits, where plain
    value: np.ndarray  # uint64, where plain

    def patch(self, rows: np.ndarray, other: Digits) -> None:
        """Take ``other``'s plain numbers for ``rows`` (``other`` holds those rows, in order)."""
        got = rows[other.plain]
        for mine, theirs in (
            (self.plain, other.plain),
            (self.plus, other.plus),
            (self.count, other.count),
            (self.value, other.value),
        ):
            mine[got] = theirs[other.plain]


def read_digits(numbers: pa.Array) -> Digits:
    """The plain numbers of ``numbers``, off Arrow's buffers: a leading ``+`` is read as ``0``,
    then Arrow's own kernels say which values are ASCII digits and parse those as integers."""
    arr, offsets, data = string_layout(numbers)
    n = len(arr)
    first = int(offsets[0])
    body = data[first : offsets[-1]]
    lengths = np.diff(offsets)
    starts = np.minimum(offsets[:-1] - first, max(body.size - 1, 0))
    plus = (lengths > 0) & (body[starts] == ord("+")) if body.size else lengths > 0
    text = body.copy()
    text[starts[plus]] = ord("0")
    layout = (pa.py_buffer((offsets - first).astype(np.int32)), pa.py_buffer(text))
    digits = lengths - plus
    plain = (lengths >= MIN_GROUPED) & (digits <= MAX_DIGITS)
    plain &= pc.ascii_is_decimal(pa.StringArray.from_buffers(n, *layout)).to_numpy(
        zero_copy_only=False
    )
    if arr.null_count:
        plain &= arr.is_valid().to_numpy(zero_copy_only=False)
    plus &= plain
    bits = pa.py_buffer(np.packbits(plain, bitorder="little"))
    parsed = pc.cast(pa.StringArray.from_buffers(n, *layout, bits), pa.uint64())
    value = np.frombuffer(parsed.buffers()[1], np.uint64)[parsed.offset : parsed.offset + n]
    return Digits(plain, plus, digits, np.where(plain, value, np.uint64(0)))


_SEPARATORS = np.zeros(256, dtype=bool)
_SEPARATORS[[ord(ch) for ch in " \t-()"]] = True  # what :func:`normalise` removes


def without_separators(numbers: pa.Array) -> pa.Array:
    """``numbers`` with the separators :func:`normalise` removes removed, off the buffers."""
    arr, offsets, data = string_layout(numbers)
    first = int(offsets[0])
    body = data[first : offsets[-1]]
    keep = ~_SEPARATORS[body]
    kept = np.zeros(body.size + 1, dtype=np.int64)
    np.cumsum(keep, out=kept[1:])
    return pa.StringArray.from_buffers(
        len(arr),
        pa.py_buffer(kept[offsets - first].astype(np.int32)),
        pa.py_buffer(body[keep]),
        pa.py_buffer(np.packbits(arr.is_valid().to_numpy(zero_copy_only=False), bitorder="little")),
    )


@dataclass
class _Found:
    """What one column's resolving has found so far: per row the digits of its E.164 form
    (0: none) and indices into the names of countries and types met."""

    e164: np.ndarray
    country: np.ndarray
    kind: np.ndarray
    names: dict[str | None, int] = field(default_factory=lambda: {None: 0, UNKNOWN: 1})

    def index(self, name: str | None) -> int:
        return self.names.setdefault(name, len(self.names))

    def columns(self) -> tuple[pa.Array, pa.Array, pa.Array]:
        has = self.e164 > 0
        e164 = pc.utf8_replace_slice(
            pc.cast(pa.array(self.e164, mask=~has), pa.string()), start=0, stop=0, replacement="+"
        )
        names = pa.array(list(self.names), pa.string())
        return e164, pc.take(names, self.country), pc.take(names, self.kind)


@dataclass
class NumberBook:
    """Resolves columns of numbers for one default region; remembers groups across slices."""

    region: str = "CN"
    # False: every number is parsed one by one (CDR_NUMBER_GROUPING), the same answers slower
    grouping: bool = True
    _groups: dict[tuple[str, int], _Answer] = field(default_factory=dict)
    _sizes: dict[tuple[str, int], int] = field(default_factory=dict)  # numbers seen per group

    def resolve(self, numbers: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array, pa.Array]:
        """(E.164, country, type) of every number; nulls and numbers that do not parse give
        nulls and ``unknown``."""
        if isinstance(numbers, pa.ChunkedArray):
            numbers = numbers.combine_chunks()
        n = len(numbers)
        found = _Found(np.zeros(n, np.uint64), np.zeros(n, np.int32), np.ones(n, np.int32))
        # Plain numbers (digits, maybe a leading +: as providers send them) are grouped as
        # integers, by the longest tail proven exact; no strings are made until the answers.
        digits = read_digits(numbers)
        valid = numbers.is_valid().to_numpy(zero_copy_only=False) if numbers.null_count else True
        spelled = ~digits.plain & valid
        if spelled.any():  # "+86 136-3123-4568": the contract's separators go, in bulk
            rows = np.flatnonzero(spelled)
            digits.patch(rows, read_digits(without_separators(numbers.take(rows))))
        todo = digits.plain.copy()
        for tail in TAILS if self.grouping else ():
            if not todo.any():
                break
            self._by_groups(digits, np.flatnonzero(todo & (digits.count > tail)), tail, found, todo)
        # other spellings, short numbers, sparse or unproven groups: one by one (cached)
        rows = np.flatnonzero((todo | ~digits.plain) & valid)
        for i, text in zip(rows.tolist(), numbers.take(rows).to_pylist(), strict=True):
            got = parse_number(normalise(text), self.region)
            # (an E.164 form has at most MAX_DIGITS digits: a test holds the metadata to it)
            found.e164[i] = int(got.e164[1:]) if got.e164 else 0
            found.country[i] = found.index(got.country)
            found.kind[i] = found.index(got.number_type)
        return found.columns()

    def _by_groups(
        self, digits: Digits, rows: np.ndarray, tail: int, found: _Found, todo: np.ndarray
    ) -> None:
        """Answer ``rows`` whose group of ``tail`` digits is exact; they are done."""
        if not rows.size:
            return
        cut = _POW10[tail]
        count, plus = digits.count[rows].astype(np.uint64), digits.plus[rows].astype(np.uint64)
        # a group: the digits before the tail, how many there are, and whether a + leads
        group = ((digits.value[rows] // cut) << np.uint64(6)) | (count << np.uint64(1)) | plus
        coded = pc.dictionary_encode(pa.array(group))
        at = coded.indices.to_numpy()
        keys = coded.dictionary.to_numpy()
        sizes = np.bincount(at, minlength=len(keys)).tolist()
        exact, head, country, kind = [], [], [], []
        for key, size in zip(keys.tolist(), sizes, strict=True):
            width = ((key >> 1) & 31) - tail
            text = ("+" if key & 1 else "") + str(key >> 6).zfill(width)
            e164, name, number_type = self._group(text, tail, size)
            exact.append(e164 != "")
            head.append(int(e164[1:]) if e164 else 0)
            country.append(found.index(name))
            kind.append(found.index(number_type))
        hit = np.asarray(exact)[at]
        done, at = rows[hit], at[hit]
        heads = np.asarray(head, np.uint64)[at]
        value = digits.value[done]
        found.e164[done] = np.where(heads > 0, heads * cut + value - value // cut * cut, 0)
        found.country[done] = np.asarray(country, np.int32)[at]
        found.kind[done] = np.asarray(kind, np.int32)[at]
        todo[done] = False

    def _group(self, key: str, tail: int, size: int) -> _Answer:
        """The group's answer, once it has met :data:`MIN_ANALYSED` numbers in the day so far
        (the pattern analysis costs as much as parsing a few dozen numbers; a group too small
        to repay it goes on to shorter tails, then alone)."""
        got = self._groups.get((key, tail))
        if got is not None:
            return got
        seen = self._sizes[key, tail] = self._sizes.get((key, tail), 0) + size
        if seen < MIN_ANALYSED:
            if len(self._sizes) > CACHE:
                self._sizes.pop(next(iter(self._sizes)))
            return _UNSAFE
        del self._sizes[key, tail]
        got = self._groups[key, tail] = self._parse_group(key, tail)
        if len(self._groups) > CACHE:
            self._groups.pop(next(iter(self._groups)))
        return got

    def _parse_group(self, key: str, tail: int) -> _Answer:
        """The answer for every number ``key`` followed by ``tail`` digits, or ``_UNSAFE``."""
        key = normalise(key)
        if key.startswith("+"):
            code = _country_code(key[1:])
            before_tail = len(key) - 1 - len(str(code))
        else:
            code = pn.country_code_for_region(self.region) or None
            before_tail = len(key)
            md = pn.PhoneMetadata.metadata_for_region(self.region)
            # a national-form number that starts like an international prefix or like the
            # region's own country code may be read as international: one by one
            if (
                md is None
                or key.startswith(str(code))
                or (md.international_prefix and re.match(md.international_prefix, key))
            ):
                return _UNSAFE
        form = not key.startswith("+")
        national = key[len(key) - before_tail :]
        if not code or not key_safe(code, national, before_tail + tail, form, tail):
            return _UNSAFE
        parsed = parse_number(key + "0" * tail, self.region)
        if parsed.e164 is None:
            return (None, parsed.country, parsed.number_type)
        if not parsed.e164.endswith("0" * tail):
            return _UNSAFE
        return (parsed.e164[:-tail], parsed.country, parsed.number_type)
