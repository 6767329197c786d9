"""Running unattended, without Dagster: which days to catch up and which raw days to prune
(lateness is Dagster's own freshness check, in defs/sensors.py). The plans are pure functions
of what is known (dates, statuses, settings); the sensors, schedules and the CLI gather the
facts and carry the plans out."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from cdr_pipeline import layout, lease, raw
from cdr_pipeline.store import Store

# What Dagster says of a partition, as plain words (None: never materialized).
FINE, FAILED, RUNNING = "materialized", "failed", "in_progress"


def complete_days(now: datetime, tz: ZoneInfo, back: int, first: str) -> list[str]:
    """The ``back`` most recent complete local days (yesterday first is not implied: oldest
    first), none before ``first``."""
    today = now.astimezone(tz).date()
    days = [(today - timedelta(days=n)).isoformat() for n in range(back, 0, -1)]
    return [d for d in days if d >= first and layout.day_exists(d, tz)]


def overdue_day(deadline: float, tz: ZoneInfo) -> str:
    """The day a freshness deadline (``CDR_FRESHNESS_DEADLINE``, on the next day) was for."""
    local = datetime.fromtimestamp(deadline, tz).date()
    return (local - timedelta(days=1)).isoformat()


VOLUME_DAYS = 7  # the days before a day whose volume it is compared with


def volume_finding(calls: int, recent: Sequence[int], share: float) -> str | None:
    """Why a day's volume looks wrong (a wrong account, the provider's retention, an outage
    answered with no rows), or None: no calls at all, or fewer than ``share`` of the median
    of the days before (at least three of them)."""
    if calls == 0:
        return "no calls at all"
    if len(recent) < 3:
        return None
    median = statistics.median(recent)
    if calls < share * median:
        return (
            f"{calls} calls, under {share:.0%} of the median of the {len(recent)} days "
            f"before ({median:g})"
        )
    return None


def catch_up_plan(window: Sequence[str], status: Mapping[str, str | None]) -> list[str]:
    """The days of ``window`` that are missing or whose last attempt failed, oldest first;
    a day that is fine or being materialized is left alone."""
    return [day for day in window if status.get(day) not in (FINE, RUNNING)]


def prune_plan(raw_days: Iterable[str], today: date, keep_days: int) -> list[str]:
    """Raw days older than the ``keep_days`` complete days before ``today`` (0 keeps all)."""
    if keep_days <= 0:
        return []
    cutoff = (today - timedelta(days=keep_days)).isoformat()
    return sorted(d for d in raw_days if d < cutoff)


@dataclass
class Pruned:
    """What a prune did: the days removed (with their file counts) and the days skipped
    because a run held them."""

    removed: dict[str, int] = field(default_factory=dict)
    busy: list[str] = field(default_factory=list)

    def said(self) -> str:
        if not self.removed and not self.busy:
            return "nothing to prune"
        parts = []
        if self.removed:
            files = sum(self.removed.values())
            days = sorted(self.removed)
            parts.append(
                f"removed the raw bodies of {len(days)} day(s) ({days[0]} to {days[-1]}, "
                f"{files} files); the datasets of those days stay"
            )
        if self.busy:
            parts.append(f"skipped {', '.join(self.busy)}: being materialized")
        return "; ".join(parts)


def prune_raw(
    store: Store, tz: ZoneInfo, keep_days: int, *, now: datetime, dry_run: bool = False
) -> Pruned:
    """Remove raw days older than ``keep_days``, each under its lease (a day being fetched or
    validated is skipped, never pulled from under a run)."""
    done = Pruned()
    owner = f"prune-{now.timestamp():.0f}"
    for day in prune_plan(raw.raw_days(store), now.astimezone(tz).date(), keep_days):
        if dry_run:
            done.removed[day] = len(raw.pipeline_files(store, day))
            continue
        try:
            with lease.run_leases(store, [day], owner, ttl_s=600, wait_s=0) as held:
                held.take(day)
                done.removed[day] = raw.prune_raw_day(store, day)
        except lease.DayBusy:
            done.busy.append(day)
    return done
