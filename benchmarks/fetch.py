"""Fetch against the simulator in its own process, with injected latency, vs the ideal.

ideal = max(requests x latency / concurrency, requests / rate): what a perfect client would
take for the same requests. The simulator's own work (building and compressing each page)
runs on the same two cores, which is part of what the ratio shows.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from cdr_pipeline.api.client import CdrApiClient, ClientSettings
from cdr_pipeline.daily import Day, fetch_windows

CLI = str(Path(sys.executable).parent / "cdr-pipeline")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(
    *,
    latency_ms: float,
    concurrency: int,
    rate: float,
    calls_per_day: int = 60_000,
    page_size: int = 500,
    window_hours: int = 1,
) -> dict[str, float]:
    port = _free_port()
    server = subprocess.Popen(
        [
            CLI,
            "simulate-api",
            "--port",
            str(port),
            "--calls-per-day",
            str(calls_per_day),
            "--page-size",
            str(page_size),
            "--latency-ms",
            str(latency_ms),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = server.stdout.readline() if server.stdout else ""
        url = line.split("listening on ")[1].strip()
        day = Day.from_key("2024-05-07", ZoneInfo("Asia/Shanghai"))
        windows = fetch_windows(day, window_hours, 0)
        settings = ClientSettings(
            concurrency=concurrency, rate_limit_per_s=rate, read_timeout_s=60, max_attempts=2
        )
        with CdrApiClient(url, "bench", "bench", settings) as warm:
            list(warm.fetch_windows(windows))  # the simulator builds and caches its hours
        with CdrApiClient(url, "bench", "bench", settings) as client:
            start = time.perf_counter()
            records = sum(
                page.record_count for _, pages in client.fetch_windows(windows) for page in pages
            )
            wall = time.perf_counter() - start
            requests = client.stats["requests"]
    finally:
        server.terminate()
        server.wait(timeout=10)
    latency_bound = requests * latency_ms / 1000.0 / concurrency
    rate_bound = requests / rate if rate else 0.0
    ideal = max(latency_bound, rate_bound)
    return {
        "latency_ms": latency_ms,
        "concurrency": concurrency,
        "rate": rate,
        "requests": requests,
        "records": records,
        "wall_s": wall,
        "ideal_s": ideal,
        "ratio": wall / ideal,
    }
