"""Benchmark input: one simulated day as the project's raw layer (1,000-record zlib pages).

Generated once per size and kept under ``benchmarks/.data`` (git-ignored); the simulator is
deterministic, so every run measures the same bytes. Clean data for the comparisons: the
baselines (plain pandas, dlt) cannot cope with bad records. A dirty day measures the project
alone on duplicates, conflicting copies, rejects and text times.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from cdr_pipeline import layout, raw
from cdr_pipeline.layout import Day
from cdr_pipeline.simulator import CdrSimulator, SimConfig
from cdr_pipeline.store import open_store

DATA = Path(__file__).resolve().parent / ".data"
DAY = "2024-05-07"
TZ = "Asia/Shanghai"
PAGE = 1000


def day() -> Day:
    return Day.from_key(DAY, ZoneInfo(TZ))


# What a day of real traffic may hold beyond clean calls (the project only: the baselines
# cannot cope with bad records): copies served twice, less complete versions of a call,
# records that must be rejected, times written as local text.
DIRTY = {
    "duplicate_rate": 0.02,
    "conflict_rate": 0.005,
    "bad_record_rate": 0.01,
    "datetime_text_rate": 0.01,
}
# The same calls as the clean day, every time written as the provider's page documents it:
# local ``yyyy-MM-dd HH:mm:ss`` text (its example shows epoch seconds).
TEXT_TIMES = {"datetime_text_rate": 1.0}
# Every defect the simulator makes, far denser than a real day: the day a change that must not
# change behaviour is checked on (``benchmarks/identical.py``).
CHAOS = {
    "duplicate_rate": 0.05,
    "conflict_rate": 0.02,
    "bad_record_rate": 0.03,
    "datetime_text_rate": 0.1,
    "epoch_ms_rate": 0.05,
    "schema_drift_rate": 0.02,
    "anomaly_rate": 0.02,
    "abuse": True,
}
VARIANTS = {"clean": {}, "dirty": DIRTY, "text": TEXT_TIMES, "chaos": CHAOS}


def _hour_pages(args: tuple[int, int, str]) -> list[tuple[bytes, list[int], int]]:
    calls_per_day, hour, variant = args
    quirks = VARIANTS[variant]
    sim = CdrSimulator(SimConfig(seed=7, calls_per_day=calls_per_day, timezone=TZ, **quirks))
    start, end = hour * 3600, hour * 3600 + 3599
    records = sim.listing(start, end)
    pages = []
    for i in range(0, len(records), PAGE):
        chunk = records[i : i + PAGE]
        offset = str(i + PAGE) if i + PAGE < len(records) else "0"
        doc = {"cdr": chunk, "errorCode": "0", "offset": offset, "result": "Call Details"}
        raw = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
        pages.append((zlib.compress(raw), [start, end], len(chunk)))
    return pages


def ensure_day(calls_per_day: int, variant: str = "clean") -> Path:
    """The data directory holding the day's raw layer for this size and variant (one of
    :data:`VARIANTS`), generated if missing."""
    root = DATA / f"day-{calls_per_day}{'' if variant == 'clean' else '-' + variant}"
    if not (root / layout.raw_day_key(DAY) / "manifest.json").exists():
        write_day(root, day(), calls_per_day, variant)
    return root


def write_day(root: Path, the_day: Day, calls_per_day: int, variant: str = "clean") -> None:
    """``the_day``'s raw layer in ``root``, as the fetch keeps it: the simulator's listing of
    each hour in pages of :data:`PAGE` records (two processes make the hours)."""
    hours = range(the_day.start // 3600, the_day.end // 3600)
    bodies, requests = [], []
    with ProcessPoolExecutor(max_workers=2) as pool:
        for pages in pool.map(_hour_pages, [(calls_per_day, h, variant) for h in hours]):
            for body, window, count in pages:
                name, digest = raw.body_name(body, "zlib")
                bodies.append((body, "zlib"))
                requests.append(
                    {"file": name, "sha256": digest, "window": window, "records": count}
                )
    manifest = {
        "manifest_version": 1,
        "date": the_day.key,
        "day_window": [the_day.start, the_day.end],
        "requests": requests,
        "totals": {
            "pages": len(requests),
            "records": sum(r["records"] for r in requests),
            "bytes": sum(len(b) for b, _ in bodies),
        },
        "generated_at": datetime.now().isoformat(timespec="seconds"),
    }
    raw.write_raw_day(open_store(root), the_day.key, bodies, manifest)


@contextmanager
def simulator_process(*options: str) -> Iterator[str]:
    """``cdr-pipeline simulate-api`` in a process of its own on a free loopback port; yields
    its URL and stops it afterwards."""
    cli = str(Path(sys.executable).parent / "cdr-pipeline")
    server = subprocess.Popen(
        [cli, "simulate-api", "--port", "0", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = server.stdout.readline() if server.stdout else ""
        if "listening on " not in line:
            raise RuntimeError(f"the simulator did not start (exit code {server.poll()})")
        yield line.split("listening on ")[1].strip()
    finally:
        server.terminate()
        server.wait(timeout=10)
