"""Clear numbers kept for less time than the data: a day past ``CDR_CLEAR_RETENTION_DAYS``
keeps only what holds no clear number.

Clearing a day replaces its personal datasets (:data:`dictionary.PERSONAL`) in place by
their shared-zone form (``pseudonymise``: tokens and masks, as analysts already see them) or
deletes them (``remove``), and removes its raw bodies either way: re-validating a day needs
the numbers, so a pseudonymised raw body could rebuild nothing the datasets do not already
hold. The aggregates and the shared zone stay. The day's validation record says when and how
it was cleared, in the same transaction, so a day is cleared once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq

from cdr_pipeline import lease, raw
from cdr_pipeline.dictionary import PERSONAL
from cdr_pipeline.layout import StorageError, is_day, part_key
from cdr_pipeline.operations import prune_plan
from cdr_pipeline.privacy import Pseudonyms, share, shared_schema
from cdr_pipeline.publish import DayTransaction, read_state
from cdr_pipeline.store import Store

PSEUDONYMISE, REMOVE = "pseudonymise", "remove"


@dataclass
class Cleared:
    """What a clearing did: the days cleared and those a run held."""

    days: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    mode: str = PSEUDONYMISE

    def said(self) -> str:
        if not self.days and not self.busy:
            return "no day to clear of clear numbers"
        parts = []
        if self.days:
            how = "pseudonymised" if self.mode == PSEUDONYMISE else "removed"
            parts.append(
                f"cleared {len(self.days)} day(s) of clear numbers ({self.days[0]} to "
                f"{self.days[-1]}): cdr, cdr_rejects and caller_risk_daily {how}, raw bodies "
                "removed; the aggregates and the shared zone stay"
            )
        if self.busy:
            parts.append(f"skipped {', '.join(self.busy)}: being materialized")
        return "; ".join(parts)


def published_days(store: Store) -> list[str]:
    return sorted(n.removeprefix("date=") for n in store.folders("cdr") if is_day(n))


def is_cleared(store: Store, day: str) -> bool:
    """Whether ``day`` was cleared, all of it (a clearing cut short is finished next time)."""
    try:
        cleared = read_state(store, "validation", day).get("cleared")
    except StorageError:
        return False
    if not cleared or raw.pipeline_files(store, day):
        return False
    return cleared["mode"] != REMOVE or not any(store.exists(part_key(n, day)) for n in PERSONAL)


def _shared_slices(store: Store, name: str, day: str, p: Pseudonyms) -> Iterator[pa.Table]:
    with store.open_input(part_key(name, day)) as source:
        for batch in pq.ParquetFile(source).iter_batches(batch_size=1 << 16):
            yield share(pa.Table.from_batches([batch]), name, p)


def clear_day(store: Store, day: str, p: Pseudonyms, mode: str, now: datetime) -> None:
    """Clear one day (its lease held by the caller), or finish a clearing cut short."""
    record = read_state(store, "validation", day)
    if record.get("cleared"):
        mode = record["cleared"]["mode"]
    else:
        record["cleared"] = {"mode": mode, "at": now.strftime("%Y-%m-%dT%H:%M:%SZ")}
        with DayTransaction(store, day) as txn:
            for name in PERSONAL:
                if mode == PSEUDONYMISE and store.exists(part_key(name, day)):
                    with store.open_input(part_key(name, day)) as source:
                        schema = shared_schema(pq.read_schema(source), name)
                    txn.stage(name, (schema, _shared_slices(store, name, day, p)))
            txn.stage_record("validation", record)
            txn.commit()
    if mode == REMOVE:  # the record says so first: a removal cut short is finished next time
        for name in PERSONAL:
            store.delete(part_key(name, day))
    raw.prune_raw_day(store, day)


def clear_old_days(
    store: Store,
    tz: ZoneInfo,
    keep_days: int,
    p: Pseudonyms,
    mode: str,
    *,
    now: datetime,
    dry_run: bool = False,
) -> Cleared:
    """Clear the published days older than ``keep_days`` that are not cleared yet, each under
    its lease (a day being fetched or validated is skipped)."""
    if keep_days > 0 and not p.enabled:
        raise StorageError("CDR_CLEAR_RETENTION_DAYS needs CDR_PSEUDONYM_KEY")
    done = Cleared(mode=mode)
    days = prune_plan(published_days(store), now.astimezone(tz).date(), keep_days)
    owner = f"clear-{now.timestamp():.0f}"
    for day in [d for d in days if not is_cleared(store, d)]:
        if dry_run:
            done.days.append(day)
            continue
        try:
            with lease.run_leases(store, [day], owner, ttl_s=600, wait_s=0) as held:
                held.take(day)
                clear_day(store, day, p, mode, now)
            done.days.append(day)
        except lease.DayBusy:
            done.busy.append(day)
    return done
