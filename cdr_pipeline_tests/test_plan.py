"""The fetch plan as pure functions of first pages: no server, no threads, no clock."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from cdr_pipeline.api import plan
from cdr_pipeline.api.paging import Exchange

HOUR = 3600


def first_page(window, covered_s=None, records=40, truncated=True) -> Exchange:
    """A first page whose records reach ``covered_s`` seconds into its window."""
    start = window[0]
    reach = covered_s if covered_s is not None else window[1] - window[0]
    recs = [{"startSrcCallTime": str(start + reach * (i + 1) // records)} for i in range(records)]
    return Exchange(
        window, None, "c1" if truncated else "0", 1, b"", "plain", 0, records, recs, truncated
    )


def test_pages_left_follow_how_far_the_first_page_reached():
    window = (0, 4 * HOUR)
    assert plan.pages_left(first_page(window, covered_s=HOUR)) == 3.0
    assert plan.pages_left(first_page(window, covered_s=4 * HOUR)) == 1.0  # at least one more
    text_times = first_page(window)
    text_times.records[:] = [{"startSrcCallTime": "2024-03-01 08:00:00"}] * 40
    assert plan.pages_left(text_times) == 2.0  # cannot be told: a guess, never a failure


def test_a_busy_window_among_few_is_cut_into_parts_and_a_quiet_one_goes_on():
    busy, quiet = (8 * HOUR, 12 * HOUR), (12 * HOUR, 16 * HOUR)
    firsts = [first_page(busy, covered_s=240), first_page(quiet, covered_s=2 * HOUR)]
    assert plan.splitting(len(firsts), 8, True)
    chains = plan.plan_chains(firsts, workers=8, split=True)
    by_window = {i: [t for t in chains.tasks if t.index == i] for i in (0, 1)}
    parts = by_window[0]
    assert {t.kind for t in parts} == {"part"} and 2 <= len(parts) <= 8
    windows = sorted(t.window for t in parts)
    assert windows[0][0] == busy[0] and windows[-1][1] == busy[1]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))  # they tile the window
    assert by_window[1] == []  # three pages at most: never waits for the plan (plan.go_on)
    assert not plan.may_be_cut(firsts[1], True) and plan.may_be_cut(firsts[0], True)
    # The same first pages, the same plan: nothing depends on timing.
    again = plan.plan_chains(firsts, workers=8, split=True)
    assert [(t.kind, t.window) for t in again.tasks] == [(t.kind, t.window) for t in chains.tasks]


def test_without_splitting_or_with_many_windows_every_chain_goes_on_whole():
    firsts = [first_page((i * HOUR, (i + 1) * HOUR), covered_s=60) for i in range(24)]
    assert not plan.splitting(len(firsts), 4, True)  # six windows a worker: longest first packs
    assert plan.plan_chains(firsts, workers=4, split=False).tasks == []
    assert [t.kind for t in plan.go_on(3, firsts[3])] == ["chain"]


def test_the_share_counts_every_window_and_its_expected_pages():
    firsts = [
        first_page((0, HOUR), covered_s=HOUR // 4),  # truncated: about 3 more pages
        first_page((HOUR, 2 * HOUR), truncated=False),  # the whole window in one page
        None,  # failed: counts as the one page it cost
    ]
    chains = plan.plan_chains(firsts, workers=2, split=False)
    assert chains.share == (3 + 3.0) / 2


@given(
    st.integers(0, 10**6),
    st.integers(1, 10**5),
    st.integers(1, 64),
)
def test_parts_tile_their_window(start, span, parts):
    window = (start, start + span)
    k = min(parts, span)
    cut = plan.cut(window, k)
    assert len(cut) == k and cut[0][0] == window[0] and cut[-1][1] == window[1]
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in itertools.pairwise(cut))


@given(st.floats(0, 10_000), st.floats(0.1, 1000), st.integers(1, 64), st.integers(1, 86400))
def test_part_counts_stay_within_workers_and_seconds(expected, share, workers, span):
    k = plan.part_count(expected, (0, span), share, workers)
    assert 1 <= k <= max(1, min(workers, span))
    if expected <= plan.SPLIT_ABOVE * share:
        assert k == 1
