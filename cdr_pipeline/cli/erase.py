"""``cdr-pipeline erase``: a subscriber's records out of every day, and out of every later
fetch of those days (cdr_pipeline/erasure.py); the days re-built through Dagster, each
through the day's one atomic publish."""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache, partial
from multiprocessing import get_context
from typing import TYPE_CHECKING

from tabulate import tabulate

from cdr_pipeline.cli.days import _data_present, _date, _report_failure, local_home
from cdr_pipeline.settings import ConfigError, load_settings

if TYPE_CHECKING:
    from cdr_pipeline.privacy import Pseudonyms

RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
ONE_DAY = timedelta(days=1)


def _published(store, start: str | None, end: str | None) -> list[str]:
    from cdr_pipeline.layout import is_day

    days = sorted(n.removeprefix("date=") for n in store.folders("cdr") if is_day(n))
    return [d for d in days if (start is None or d >= start) and (end is None or d <= end)]


def default_workers() -> int:
    """One worker more than the cores, three at most: each leaves its core idle for about a
    tenth of its time (files written, Dagster's events recorded), which another fills
    (docs/performance.md, "Erasure"); each holds about a day's build's memory."""
    return min(3, (os.cpu_count() or 1) + 1)


# Days re-built by one Dagster run at most: each run ends with a line of progress, at a cost of
# about half a second a run (docs/performance.md, "Erasure").
RUN_DAYS = 7


def _runs_of(found: list, most: int = RUN_DAYS) -> list[list]:
    """The days in runs of at most ``most`` consecutive dates: each taken out of the raw
    layer, then re-built by one Dagster run, whose own cost weighs on a small day."""
    runs: list[list] = []
    for f in found:
        last = runs[-1] if runs else None
        if (
            last
            and len(last) < most
            and date.fromisoformat(f.day) - date.fromisoformat(last[-1].day) == ONE_DAY
        ):
            last.append(f)
        else:
            runs.append([f])
    return runs


def cmd_erase(args: argparse.Namespace) -> int:
    from cdr_pipeline import erasure
    from cdr_pipeline.privacy import pseudonyms_of

    settings = load_settings()
    _data_present(settings)
    p = pseudonyms_of(settings)
    if not p.enabled:
        raise ConfigError(
            "erase keeps the request as the number's token, so that a later fetch drops the "
            "records again: set CDR_PSEUDONYM_KEY (and CDR_SHARED_DATA_DIR; docs/privacy.md)"
        )
    start = _date(args.start, "--start").isoformat() if args.start else None
    end = _date(args.end, "--end").isoformat() if args.end else None
    if start and end and start > end:
        raise SystemExit(f"--start {start} is after --end {end}")
    token = _token(args.number, p)
    store, tokens = settings.store, frozenset({token})
    shown = p.shown(args.number)
    days = _published(store, start, end)
    if args.dry_run:
        _say(erasure.find(store, days, args.number, tokens, p), shown, "would erase")
        return 0
    local_home(settings.uses_simulator)  # the workers' Dagster instance, in their environment
    workers = min(args.workers, len(days))
    with _pool(workers) as pool:
        found = _find(pool, workers, days, args.number)
        _say(found, shown, "erasing")
        index = erasure.record(store, token, p, start, end)  # later fetches drop them
        shares = _shares(found, args.workers)
        work = partial(_erase_share, tokens=tokens, needle=erasure.needle_of(args.number, p.region))
        done, raised = _in_workers(pool, work, shares)
    erased = {day: n for d in done for day, n in d.erased.items()}
    failed = [day for d in done for day in d.failed]
    for line in (line for d in done for line in d.said):
        print(line, file=sys.stderr)
    erasure.finish(store, index, erased, done=not (failed or raised))
    if any(isinstance(e, KeyboardInterrupt) for e in raised):
        print(f"interrupted: {KEPT}; run erase again to finish", file=sys.stderr)
        return 130
    if any(isinstance(e, BrokenProcessPool) for e in raised):
        raise SystemExit(
            f"a worker process died (out of memory?): {KEPT}; run erase again, with fewer --workers"
        )
    if raised:
        raise raised[0]  # said by main as what it is (a day another run holds: storage)
    if failed:
        print(
            f"failed to re-build {', '.join(failed)}: the erasure is kept, and the next build "
            "of those days (cdr-pipeline erase again, or any materialization) applies it"
        )
        return 1
    print(f"erased {shown} from {len(erased)} days; recorded in {store.uri('erasures')}")
    return 0


def _token(number: str, p: Pseudonyms) -> str:
    """The token of the number to erase, refused before anything is kept unless it is digits
    (libphonenumber would drop a stray letter and erase another subscriber's number)."""
    from cdr_pipeline.transform.phones import normalise, parse_number

    text = normalise(number)
    if not text:
        raise SystemExit("give the number to erase (it is empty)")
    if not text.removeprefix("+").isdecimal():
        raise SystemExit(
            "the number to erase holds something other than digits, a leading + and the "
            "separators ' -()' (a letter O for a zero?): nothing was kept or erased"
        )
    if parse_number(text, p.region).e164 is None:
        print(
            f"note: {p.shown(number)} is not a possible phone number in {p.region} to "
            "libphonenumber: only records holding these digits as written match it",
            file=sys.stderr,
        )
    return p.token(number)


def _say(found: list, shown: str, verb: str) -> None:
    rows = [(f.day, f.calls, f.rejects) for f in found]
    if rows:
        print(tabulate(rows, headers=("day", "calls", "rejects"), tablefmt="simple"))
    total = sum(f.calls + f.rejects for f in found)
    print(f"{verb} {total} records of {shown} from {len(found)} published days")


KEPT = "the erasure is kept, every day is whole (old or new), and every later build applies it"


@contextmanager
def _pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """The worker processes (None: one worker, which is this process). They start before
    the days are found, and find them: their start and the search take the cores at once,
    not one after the other (docs/performance.md, "Erasure")."""
    if workers <= 1:
        yield None
        return
    import dagster as dg

    with dg.DagsterInstance.get():  # a new instance's storage made here, not raced for by two
        pass
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        yield pool


def _find(pool: ProcessPoolExecutor | None, workers: int, days: list[str], number: str) -> list:
    """The published ``days`` holding a record of ``number``, in order, found by the
    ``workers`` processes of ``pool`` (every n-th day each) where there are some."""
    if pool is None:
        return _find_in(days, number, warm=False)
    parts = [days[i::workers] for i in range(workers)]
    found = pool.map(partial(_find_in, number=number), parts)
    return sorted((f for part in found for f in part), key=lambda f: f.day)


def _find_in(days: list[str], number: str, warm: bool = True) -> list:
    """What :func:`cdr_pipeline.erasure.find` says of ``days``, in this process; ``warm``: a
    worker's, which then loads what re-building needs (Dagster, the definitions) while the
    others still search."""
    from cdr_pipeline import erasure
    from cdr_pipeline.privacy import pseudonyms_of

    settings = load_settings()
    p = pseudonyms_of(settings)
    found = erasure.find(settings.store, days, number, frozenset({p.token(number)}), p)
    if warm:
        _rebuild_job()
    return found


def _in_workers(
    pool: ProcessPoolExecutor | None, work, shares: list[list]
) -> tuple[list[_Done], list[BaseException]]:
    """``work`` done on each share, in the worker processes where there are some (a
    re-build leaves a core idle, docs/performance.md), else here: what each did, and what
    each that failed raised. One failing does not stop the others, so that every day erased
    is kept in the audit."""
    if pool is None:
        return _outcomes([partial(work, share) for share in shares])
    return _outcomes([pool.submit(work, share).result for share in shares])


def _outcomes(calls: list) -> tuple[list[_Done], list[BaseException]]:
    done: list[_Done] = []
    raised: list[BaseException] = []
    for call in calls:
        try:
            done.append(call())
        except (Exception, KeyboardInterrupt) as exc:  # Ctrl-C: the others' days still count
            raised.append(exc)
    return done, raised


def _shares(found: list, workers: int) -> list[list]:
    """The days split into at most ``workers`` stretches of about as many days each, in
    order (a worker then takes its stretch a run of consecutive days at a time)."""
    n = min(workers, len(found))
    return [found[i * len(found) // n : (i + 1) * len(found) // n] for i in range(n)]


@dataclass
class _Done:
    erased: dict[str, int]  # the records each day lost
    failed: list[str]  # the days whose re-build failed
    said: list[str]  # why, a line each


def _erase_share(found: list, tokens: frozenset[str], needle) -> _Done:
    """Take the records out of ``found``'s days and re-build them, a run of consecutive days
    at a time, each said done on stderr as it is, in this process or a worker of its own
    (which reads the settings from the same environment)."""
    import dagster as dg

    from cdr_pipeline.privacy import pseudonyms_of

    settings = load_settings()
    p = pseudonyms_of(settings)
    job = _rebuild_job()
    done = _Done({}, [], [])
    with dg.DagsterInstance.get() as instance:
        for days in _runs_of(found):
            removed = _take_out(settings, days, tokens, p, needle)
            stays = [f for f in days if not f.cleared]  # a cleared day is erased in place
            rebuilt, failed = _rebuild(instance, job, stays, done.said)
            done.erased |= removed | rebuilt
            done.failed += failed
            erased = sum(f.calls + f.rejects for f in days)
            outcome = "failed" if failed else f"done, {erased} records erased"
            print(f"erase: {_label(days)} {outcome}", file=sys.stderr, flush=True)
    return done


@cache
def _rebuild_job():
    """The re-build job, resolved once a process: the definitions are built for it, and the
    process set up as a day's build sets it (``memory.setup``) before any day is erased."""
    from cdr_pipeline import memory
    from cdr_pipeline.definitions import defs
    from cdr_pipeline.defs.schedules import REBUILD_JOB

    job = defs().resolve_job_def(REBUILD_JOB)
    memory.setup()
    return job


def _take_out(settings, found: list, tokens: frozenset[str], p, needle) -> dict[str, int]:
    """Each day's records out of its raw bodies, under the day's lease; a day cleared of its
    numbers has none left to re-build from, so it is erased in place: those days' counts."""
    from cdr_pipeline import erasure
    from cdr_pipeline.layout import Day
    from cdr_pipeline.lease import run_leases

    store, ops, owner = settings.store, settings.publish, f"erase-{uuid.uuid4().hex}"
    removed: dict[str, int] = {}
    for f in found:
        with run_leases(
            store, [f.day], owner, ttl_s=ops.lease_ttl_s, wait_s=ops.lock_wait_s
        ) as held:
            held.take(f.day)
            if f.cleared:
                removed[f.day] = erasure.erase_cleared(store, f.day, tokens, p)
            else:
                day = Day.from_key(f.day, settings.tz)
                erasure.erase_raw(store, day, settings.tz, tokens, p, needle)
    return removed


# The re-build's run: the erased calls may be many of a day's, so no shrink guard stands in
# the way; the day's rows come from its published version.
_REBUILD_CONFIG = {
    "loggers": {"console": {"config": {"log_level": "CRITICAL"}}},
    "ops": {"cdr_day": {"config": {"allow_shrink": True, "reuse_published": True}}},
}


def _rebuild(instance, job, found: list, said: list[str]) -> tuple[dict[str, int], list[str]]:
    """The days re-built from their published versions by ``job``, one run per stretch of
    consecutive days: the records each lost, and the days that failed (each said in
    ``said``)."""
    removed: dict[str, int] = {}
    failed: list[str] = []
    for days in _runs_of(found):
        first, last = days[0].day, days[-1].day
        tags = {RANGE_START: first, RANGE_END: last}
        result = job.execute_in_process(
            instance=instance, run_config=_REBUILD_CONFIG, tags=tags, raise_on_error=False
        )
        if result.success:
            removed |= {f.day: f.calls + f.rejects for f in days}
        else:
            failed += [f.day for f in days]
            _report_failure(result, _label(days), lambda text, **_: said.append(text), False)
    return removed, failed


def _label(days: list) -> str:
    first, last = days[0].day, days[-1].day
    return first if first == last else f"{first}..{last}"
