"""Which numbers libphonenumber cannot tell apart (:func:`key_safe`), proven from its
metadata's own regular expressions, read as CPython's regex parser reads them: a group of
numbers that differ only in their last digits gets one parse (transform/phones.py) only where
every pattern that could tell them apart is decided before those digits.

The trees come from CPython's private parser (``re._parser``); a test pins what this module
reads of them, so a Python release that changes them fails there, not here.
"""

from __future__ import annotations

import re._constants as sre  # the regex parser's tree: sre_parse without its deprecation
import re._parser as sre_parse
from functools import cache, lru_cache

import phonenumbers as pn

_ANY_DIGIT = ([(sre.CATEGORY, sre.CATEGORY_DIGIT)], [(sre.RANGE, (48, 57))])


@cache
def _tree(pattern: str):
    """A pattern's parsed regex tree (the metadata holds a few thousand patterns)."""
    return sre_parse.parse(pattern)


MAX_LENGTH = 17  # the longest national number libphonenumber parses

# For a regex tree: string length -> (free, all_free) over every match of that length: free is
# how many trailing characters are matched by any-digit atoms on every path (a sound lower
# bound), all_free whether every character is.
_Lengths = dict[int, tuple[int, bool]]


def _lengths(tree) -> _Lengths:
    out: _Lengths = {0: (0, True)}
    for item in tree:
        out = _concat(out, _item_lengths(item))
    return out


def _item_lengths(item: tuple) -> _Lengths:
    op, av = item
    if op is sre.IN and av in _ANY_DIGIT:
        return {1: (1, True)}
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
        low, high, sub = av
        one, out = _lengths(sub), {}
        acc: _Lengths = {0: (0, True)}
        for count in range(min(high, MAX_LENGTH) + 1):
            if count >= low:
                out = _union(out, acc)
            acc = _concat(acc, one)
            if not acc:
                break
        return out
    if op is sre.SUBPATTERN:
        return _lengths(av[-1])
    if op is sre.BRANCH:
        out = {}
        for branch in av[1]:
            out = _union(out, _lengths(branch))
        return out
    if op in (sre.AT, sre.GROUPREF):  # anchors match nothing; no back-references are used
        return {0: (0, True)}
    return {1: (0, False)}  # a literal or a narrower class: a constrained place


def _concat(left: _Lengths, right: _Lengths) -> _Lengths:
    out: _Lengths = {}
    for la, (fa, aa) in left.items():
        for lb, (fb, ab) in right.items():
            if la + lb > MAX_LENGTH:
                continue
            got = (lb + fa if ab else fb, aa and ab)
            out[la + lb] = _worse(out.get(la + lb), got)
    return out


def _union(a: _Lengths, b: _Lengths) -> _Lengths:
    out = dict(a)
    for length, got in b.items():
        out[length] = _worse(out.get(length), got)
    return out


def _worse(a: tuple[int, bool] | None, b: tuple[int, bool]) -> tuple[int, bool]:
    return b if a is None else (min(a[0], b[0]), a[1] and b[1])


def _descs(md: pn.PhoneMetadata) -> list:
    return [
        md.general_desc,
        md.fixed_line,
        md.mobile,
        md.toll_free,
        md.premium_rate,
        md.shared_cost,
        md.personal_number,
        md.voip,
        md.pager,
        md.uan,
        md.voicemail,
    ]


@cache
def _metas(country_code: int) -> tuple[pn.PhoneMetadata, ...] | None:
    """The metadata of every region of a calling code (None: a code libphonenumber lacks)."""
    regions = pn.COUNTRY_CODE_TO_REGION_CODE.get(country_code)
    if not regions:
        return None
    metas = tuple(
        pn.PhoneMetadata.metadata_for_region_or_calling_code(country_code, r) for r in regions
    )
    return None if any(md is None for md in metas) else metas


@cache
def _stripped(country_code: int) -> frozenset[int]:
    """How many leading digits libphonenumber may strip from a national number of this code
    (a national or carrier prefix), 0 included."""
    widths = {0}
    for md in _metas(country_code) or ():
        if md.national_prefix_for_parsing:
            widths |= set(_lengths(_tree(md.national_prefix_for_parsing)))
        if md.national_prefix:
            widths.add(len(md.national_prefix))
    return frozenset(widths)


@lru_cache(maxsize=4096)
def key_safe(
    country_code: int, prefix: str, national_length: int, national_form: bool, tail: int
) -> bool:
    """Whether every ``national_length``-digit national number of this country that starts with
    ``prefix`` (and has ``tail`` digits after it) gets the same answer from libphonenumber: the
    patterns matched at the start are decided within the prefix, and the patterns that can
    match the prefix leave the tail free (a Tokyo number is not held back by a Japanese
    short-number pattern)."""
    metas = _metas(country_code)
    if metas is None or len(prefix) + tail != national_length:
        return False
    # the patterns libphonenumber matches at the start (prefixes it strips, leading digits
    # that pick a region) must be decided by the prefix alone
    starts = [
        pattern
        for md in metas
        for pattern in (
            md.national_prefix_for_parsing,
            md.national_prefix,
            md.leading_digits,
            md.international_prefix if national_form else None,
        )
        if pattern
    ]
    if not all(_decided_within(pattern, prefix, national_length) for pattern in starts):
        return False
    for md in metas:
        for desc in _descs(md):
            pattern = desc.national_number_pattern if desc is not None else None
            if pattern is None:
                continue
            for w in _stripped(country_code):
                if w <= len(prefix) and not _prefix_free(pattern, prefix[w:], national_length - w):
                    return False
    return True


def _prefix_free(pattern: str, prefix: str, length: int) -> bool:
    """No match of ``pattern`` of ``length`` characters that starts with ``prefix`` has a
    constrained atom after the prefix: then membership does not depend on the rest."""
    ends = _walk(_tree(pattern), {(0, False)}, prefix, length)
    return not any(bad for pos, bad in ends if pos == length)


def _decided_within(pattern: str, prefix: str, length: int) -> bool:
    """Whether every way ``pattern`` can match at the start of a ``length``-digit number that
    begins with ``prefix`` ends within the prefix (so the match is the same whatever follows; a
    way that reads on and then fails for every number of that length does not count)."""
    ends = _walk(_tree(pattern), {(0, False)}, prefix, length)
    return all(pos <= len(prefix) for pos, _ in ends)


def _walk(tree, states: set, prefix: str, length: int) -> set:
    """Run ``tree`` over strings of ``length`` that start with ``prefix``: states are
    (position, whether a constrained atom was met after the prefix)."""
    for item in tree:
        if not states:
            break
        states = _step(item, states, prefix, length)
    return states


def _step(item: tuple, states: set, prefix: str, length: int) -> set:
    op, av = item
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
        low, high, sub = av
        out = set(states) if low == 0 else set()
        current = states
        for count in range(1, min(high, length) + 1):
            current = _walk(sub, current, prefix, length)
            if not current:
                break
            if count >= low:
                out |= current
        return out
    if op is sre.SUBPATTERN:
        return _walk(av[-1], states, prefix, length)
    if op is sre.BRANCH:
        return set().union(*(_walk(b, states, prefix, length) for b in av[1]))
    if op is sre.AT:
        if av in (sre.AT_END, sre.AT_END_STRING):
            return {(pos, bad) for pos, bad in states if pos == length}
        if av in (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING):
            return {(pos, bad) for pos, bad in states if pos == 0}
        return states
    accepted = _digits(item)
    if accepted is None:  # an atom this reader does not know: it may match, and constrains
        accepted, unknown = list("0123456789"), True
    else:
        unknown = False
    out = set()
    for pos, bad in states:
        if pos >= length:
            continue
        if pos < len(prefix):
            if prefix[pos] in accepted:
                out.add((pos + 1, bad))
        elif accepted:
            out.add((pos + 1, bad or unknown or len(accepted) < 10))
    return out


def _digits(item: tuple) -> list[str] | None:
    """The digits one atom of a pattern matches (None: an atom this reader does not know)."""
    op, av = item
    if op is sre.LITERAL:
        return [d for d in "0123456789" if ord(d) == av]
    if op is sre.NOT_LITERAL:
        return [d for d in "0123456789" if ord(d) != av]
    if op is sre.ANY:
        return list("0123456789")
    if op is not sre.IN:
        return None
    hit: set[str] = set()
    negate = False
    for kind, value in av:
        if kind is sre.NEGATE:
            negate = True
        elif kind is sre.LITERAL:
            hit |= {d for d in "0123456789" if ord(d) == value}
        elif kind is sre.RANGE:
            hit |= {d for d in "0123456789" if value[0] <= ord(d) <= value[1]}
        elif kind is sre.CATEGORY and value is sre.CATEGORY_DIGIT:
            hit |= set("0123456789")
        else:
            return None
    return sorted(set("0123456789") - hit if negate else hit)
