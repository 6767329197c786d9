"""Fetch against the simulator in its own process, with injected latency, vs the ideal.

ideal = max(requests x latency / concurrency, requests / rate): what a perfect client would
take for the same requests. The simulator's own work (building and compressing each page)
runs on the same two cores, which is part of what the ratio shows.
"""

from __future__ import annotations

import time
from collections import Counter
from zoneinfo import ZoneInfo

from benchmarks.data import simulator_process
from cdr_pipeline.api.client import CdrApiClient
from cdr_pipeline.layout import Day
from cdr_pipeline.raw import fetch_windows
from cdr_pipeline.settings import ClientSettings


def measure(
    *,
    latency_ms: float,
    concurrency: int,
    rate: float,
    calls_per_day: int = 60_000,
    page_size: int = 500,
    window_hours: int = 1,
    margin_s: int = 0,
    split: bool = True,
) -> dict[str, float]:
    with simulator_process(
        "--calls-per-day",
        str(calls_per_day),
        "--page-size",
        str(page_size),
        "--latency-ms",
        str(latency_ms),
    ) as url:
        day = Day.from_key("2024-05-07", ZoneInfo("Asia/Shanghai"))
        windows = fetch_windows(day, window_hours, margin_s)
        settings = ClientSettings(
            concurrency=concurrency,
            rate_limit_per_s=rate,
            read_timeout_s=60,
            max_attempts=2,
            split_stragglers=split,
        )
        with CdrApiClient(url, "bench", "bench", settings) as warm:
            list(warm.fetch_windows(windows))  # the simulator builds and caches its hours
        with CdrApiClient(url, "bench", "bench", settings) as client:
            start = time.perf_counter()
            chains = [pages for _, pages in client.fetch_windows(windows)]
            wall = time.perf_counter() - start
            requests = client.stats["requests"]
    records = sum(page.record_count for pages in chains for page in pages)
    latency_bound = requests * latency_ms / 1000.0 / concurrency
    rate_bound = requests / rate if rate else 0.0
    ideal = max(latency_bound, rate_bound)
    # A window's pages come one after another (each needs the last cursor): no client can
    # finish before its longest chain of pages has been fetched in sequence.
    longest = max(Counter(page.window for pages in chains for page in pages).values())
    chain_s = longest * latency_ms / 1000.0
    return {
        "calls_per_day": calls_per_day,
        "window_hours": window_hours,
        "split": split,
        "latency_ms": latency_ms,
        "concurrency": concurrency,
        "rate": rate,
        "requests": requests,
        "records": records,
        "wall_s": wall,
        "ideal_s": ideal,
        "ratio": wall / ideal,
        "longest_chain": longest,
        "chain_s": chain_s,
        "ratio_achievable": wall / max(ideal, chain_s),
    }
