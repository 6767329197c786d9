"""Which windows and parts to fetch, in what order: pure functions of the first pages.

A window's pages come one after another (each needs the last cursor), so what bounds a day's
wall time is its longest chain of pages. The plan:

1. every window's first page before any chain: only with all of them in are the chains'
   lengths known (starting a long chain as soon as its first page was in, ahead of other
   windows' first pages, found the busiest windows late and left workers idle at the end:
   1.14x of ideal against 1.09x on a 200k-call day);
2. from the first pages, how many pages each chain probably has left, and each worker's share
   of all pages;
3. a chain expected to take more than its share is cut into parts fetched side by side (its
   first page is set aside and each part is listed from scratch; parts share their boundary
   second, like all windows); the rest continue from their first page;
4. chains and parts run longest-expected first.

Decided from the answers alone, never from timing, so the same answers give the same requests.
Nothing here does I/O; :mod:`cdr_pipeline.api.fetch` carries the plan out.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from cdr_pipeline.api.paging import Exchange

Window = tuple[int, int]

# A chain this short is never cut: its parts would cost about as many requests again.
STRAGGLER_MIN_PAGES = 3
# A chain expected to take more than this part of a worker's share of all pages is cut into
# parts of about PART_OF_SHARE of it: estimates from one page are rough (calls are not spread
# evenly over a window), and small parts pack the workers evenly whatever the error.
SPLIT_ABOVE = 0.75
PART_OF_SHARE = 0.5


@dataclass(frozen=True, order=True)
class Task:
    """One unit of work: a window's first page, the rest of a chain, or a part listed from
    scratch. Tasks run in ``(priority, seq)`` order: first pages, then longest expected."""

    priority: float
    seq: int
    index: int = field(compare=False)  # the window it belongs to
    window: Window = field(compare=False)  # the window, or the part of it
    kind: Literal["first", "chain", "part"] = field(compare=False)
    first: Exchange | None = field(default=None, compare=False, repr=False)


_seq = itertools.count()


def first_pages(windows: Sequence[Window]) -> list[Task]:
    return [Task(-math.inf, next(_seq), i, w, "first") for i, w in enumerate(windows)]


def splitting(windows: int, workers: int, split_stragglers: bool) -> bool:
    """With at least two windows a worker, longest-first keeps every worker busy to the end;
    below that a chain can outlast the rest, and cutting it is worth waiting for all first
    pages."""
    return split_stragglers and windows < 2 * workers


def covered_s(page: Exchange) -> int | None:
    """How many seconds of its window a page reached into, from its records' start times
    (records usually come in time order); None when that cannot be told."""
    start, end = page.window
    latest = start
    for record in page.records:
        value = record.get("startSrcCallTime") if isinstance(record, dict) else None
        if isinstance(value, str) and value.isdigit() and len(value) <= 11:
            latest = max(latest, int(value))
    covered = latest - start
    return covered if 0 < covered <= end - start else None


def pages_left(page: Exchange) -> float:
    """How many more pages a window probably has, from how far into it its first page got
    (if records are not in time order, this only changes the order and cut of work)."""
    covered = covered_s(page)
    if covered is None:
        return 2.0
    return max(1.0, (page.window[1] - page.window[0]) / covered - 1)


def calls_per_s(page: Exchange) -> float | None:
    """The call rate at the start of a page's window: the whole window's when the page holds
    all of it."""
    span = page.window[1] - page.window[0]
    if not page.truncated:
        return page.record_count / max(1, span)
    covered = covered_s(page)
    return None if covered is None else page.record_count / covered


def refined_pages_left(page: Exchange, rate_at_end: float | None) -> float:
    """Pages a window probably has left, from the call rate at its start and at its end (the
    next window's first page): traffic ramps up and down over a day, and one page's view of a
    window's first minutes alone misjudges busy windows by half."""
    rate_at_start = calls_per_s(page)
    if rate_at_start is None or rate_at_end is None or not page.record_count:
        return pages_left(page)
    span = page.window[1] - page.window[0]
    calls = span * (rate_at_start + rate_at_end) / 2
    return max(1.0, calls / page.record_count - 1)


def may_be_cut(page: Exchange | None, split: bool) -> bool:
    """Whether a truncated first page's chain waits for the plan (it may be cut) or can go
    on at once (it is never cut)."""
    return split and page is not None and page.truncated and pages_left(page) >= STRAGGLER_MIN_PAGES


def part_count(expected: float, window: Window, share: float, workers: int) -> int:
    """How many parts a chain of ``expected`` more pages is cut into (1: none)."""
    if expected <= SPLIT_ABOVE * share:
        return 1
    target = max(PART_OF_SHARE * share, 1.0)
    return max(1, min(math.ceil(expected / target), workers, window[1] - window[0]))


def cut(window: Window, parts: int) -> list[Window]:
    start, end = window
    edges = [start + (end - start) * j // parts for j in range(parts)] + [end]
    return list(itertools.pairwise(edges))


def go_on(index: int, first: Exchange) -> list[Task]:
    """A truncated first page whose chain is never cut: the rest of it, at once."""
    return [Task(-pages_left(first), next(_seq), index, first.window, "chain", first)]


def continue_or_cut(
    index: int, window: Window, first: Exchange, expected: float, share: float, workers: int
) -> list[Task]:
    """A truncated first page (of a window or a part): the rest of its chain, or its parts."""
    k = part_count(expected, window, share, workers)
    if k == 1:
        return [Task(-expected, next(_seq), index, window, "chain", first)]
    return [Task(-(expected + 1) / k, next(_seq), index, part, "part") for part in cut(window, k)]


@dataclass(frozen=True)
class Plan:
    share: float  # each worker's share of all the pages expected
    tasks: list[Task]  # for the windows whose chain waited for the plan


def plan_chains(firsts: Sequence[Exchange | None], workers: int, split: bool) -> Plan:
    """Once every window's first page is in (None: it failed): each worker's share of all
    pages, and what becomes of the chains that waited for it."""
    rates = {p.window[0]: calls_per_s(p) for p in firsts if p is not None}
    expected: dict[int, float] = {}
    for i, page in enumerate(firsts):
        if page is None or not page.truncated:
            continue
        if may_be_cut(page, split):
            expected[i] = refined_pages_left(page, rates.get(page.window[1]))
        else:
            expected[i] = pages_left(page)
    share = (len(firsts) + sum(expected.values())) / workers
    tasks = [
        task
        for i, page in enumerate(firsts)
        if page is not None and may_be_cut(page, split)
        for task in continue_or_cut(i, page.window, page, expected[i], share, workers)
    ]
    return Plan(share, tasks)
