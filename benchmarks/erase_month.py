"""The erase command end to end, as an operator runs it: one subscriber out of a month of
days of a million calls each (``cdr-pipeline erase NUMBER``, its workers as it sets them, a
shared zone), against issue 26's goal of under a minute. ``make bench`` measures two days
erased at once and multiplies; this runs the real command over the real month, with what the
multiplying leaves out: finding the days in the command's own process, starting the workers, loading
the definitions and one Dagster run per stretch of days.

``python -m benchmarks.erase_month [--days 30] [--calls 1000000] [--rounds 2]`` writes
``benchmarks/RESULTS-erase.md``. The month is generated and published once, under
``benchmarks/.data`` (its size and time: docs/performance.md); each round erases from a
copy of it.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, date, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from zoneinfo import ZoneInfo

from benchmarks.data import DATA, TZ, write_day
from benchmarks.run import GOALS
from benchmarks.worker import BENCH_KEY, ERASE_WORKERS, publish_private
from cdr_pipeline.cli.erase import default_workers
from cdr_pipeline.layout import Day, raw_day_key

FIRST = date(2024, 5, 1)
RESULTS = Path(__file__).resolve().parent / "RESULTS-erase.md"


def _days(n: int) -> list[Day]:
    tz = ZoneInfo(TZ)
    return [Day.from_key((FIRST + timedelta(days=i)).isoformat(), tz) for i in range(n)]


def _publish(args: tuple[Path, Day]) -> None:
    """One day built with a shared zone, in a worker process of its own (memory)."""
    publish_private(*args)


def _busiest(root: Path, days: list[Day]) -> str:
    """The number that called on the most days, then the most calls: the one whose erasure
    touches the most."""
    import pyarrow.parquet as pq

    on_days: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    for d in days:
        path = root / "data" / "cdr" / f"date={d.key}" / "part-0.parquet"
        numbers = pq.read_table(path, columns=["src_e164"]).column("src_e164").to_pylist()
        counted = Counter(n for n in numbers if n)
        calls.update(counted)
        on_days.update(counted.keys())
    return max(on_days, key=lambda n: (on_days[n], calls[n], n))


def _published_as_now(root: Path, day: Day) -> bool:
    """Whether ``day`` was published as this code publishes it (its record's ``built`` and
    ``params``): a re-build takes other paths over days published otherwise."""
    from cdr_pipeline.day import made_with
    from cdr_pipeline.publish import read_state
    from cdr_pipeline.settings import AnalyticsSettings, StorageSettings
    from cdr_pipeline.store import open_store

    record = read_state(open_store(root / "data"), "validation", day.key)
    region = StorageSettings.model_fields["default_region"].default
    now = made_with(ZoneInfo(TZ), region, AnalyticsSettings())
    return {k: record.get(k) for k in now} == now


def ensure_month(n: int, calls: int) -> Path:
    """The month's days generated once, and published (with a shared zone) once for each
    way this code publishes them; its folder."""
    root = DATA / f"month-{n}x{calls}"
    done = root / "number.txt"
    days = _days(n)
    if done.exists() and _published_as_now(root, days[0]):
        return root
    for i, d in enumerate(days):
        if (root / "data" / raw_day_key(d.key) / "manifest.json").exists():
            continue  # made by a run that stopped before the end
        print(f"  generating {d.key} ({i + 1} of {n})", flush=True)
        write_day(root / "data", d, calls)
    with ProcessPoolExecutor(ERASE_WORKERS, mp_context=get_context("spawn")) as pool:
        list(pool.map(_publish, [(root, d) for d in days]))
    done.write_text(_busiest(root, days))
    return root


def _erase(month: Path, number: str, *extra: str) -> tuple[float, float, str, str]:
    """The command on a copy of the month (on the month itself for a dry run, which changes
    nothing): its wall seconds, its CPU seconds (its processes', user and system: what a
    busy or shared machine changes least), stdout and stderr."""
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        work = month if "--dry-run" in extra else Path(tmp)
        if work != month:
            for zone in ("data", "shared"):
                shutil.copytree(month / zone, work / zone)
            os.sync()  # the copy's 5 GB on disk first: its writeback is not the erase's
        env = os.environ | {
            "CDR_DATA_DIR": str(work / "data"),
            "CDR_SHARED_DATA_DIR": str(work / "shared"),
            "CDR_PSEUDONYM_KEY": BENCH_KEY,
            "CDR_TIMEZONE": TZ,
            "DAGSTER_HOME": tmp,  # erase needs no API: it reads and writes the data only
        }
        cli = str(Path(sys.executable).parent / "cdr-pipeline")
        began, before = time.perf_counter(), _children_cpu()
        done = subprocess.run(
            [cli, "erase", number, *extra],  # its workers as it sets them (default_workers)
            env=env,
            capture_output=True,
            text=True,
        )
        seconds, cpu = time.perf_counter() - began, _children_cpu() - before
    if done.returncode:
        raise SystemExit(f"erase failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds, cpu, done.stdout, done.stderr


def _children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    print(f"a month of {args.days} days of {args.calls:,} calls (generated once)", flush=True)
    month = ensure_month(args.days, args.calls)
    number = (month / "number.txt").read_text()
    dry, _, said, _ = _erase(month, number, "--dry-run")
    found = re.search(r"would erase (\d+) records of .* from (\d+) published days", said)
    assert found, said
    records, days = int(found[1]), int(found[2])
    walls, cpus, runs = [], [], 0
    for i in range(args.rounds):
        seconds, cpu, out, err = _erase(month, number)
        assert f"from {days} days" in out, out
        runs = len(re.findall(r"^erase: \S+ done", err, re.M))  # a line per Dagster run
        walls.append(seconds)
        cpus.append(cpu)
        print(f"  round {i + 1}: {seconds:.1f} s, {cpu:.0f} CPU s", flush=True)
    wall = statistics.median(walls)
    goal_size = args.days >= 30 and args.calls >= 1_000_000
    goal = GOALS["erase_30_days_s"]
    verdict = ("met" if wall < goal else "missed") if goal_size else "not the goal's month"
    rounds = ", ".join(f"{w:.1f}" for w in walls)
    lines = [
        "# Erasing a subscriber from a month",
        "",
        f"Written by `make bench-erase` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in "
        f"{time.perf_counter() - began:.0f} s.",
        "",
        f"Machine: {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}.",
        "",
        f"- `cdr-pipeline erase NUMBER` ({default_workers()} workers, its default here) on "
        f"{args.days} days of "
        f"{args.calls:,} calls each, with a shared zone, the number that called on the most "
        f"days ({days} of them, {records} records), re-built in {runs} Dagster runs: "
        f"**{wall:.1f} s** (goal under {goal:.0f} s: **{verdict}**); rounds: {rounds} s",
        f"- CPU seconds of the command's processes (user and system), each round: "
        f"{', '.join(f'{c:.0f}' for c in cpus)}; {statistics.median(cpus) / days:.2f} a day",
        f"- of it, the command's start and finding the days (its `--dry-run`): {dry:.1f} s",
        "",
        "Each round erases from a fresh copy of the published month; the seconds are the "
        "command's, from its start to its exit, as an operator waits for them.",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print(lines[6])
    print(f"erase: month {wall:.1f} s ({verdict}), written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
