"""Who may fetch and publish a day: one run at a time, by a lease in the data directory.

A lease is a small JSON file created exclusively (a hard link on a local disk; a claim read
back after a pause on an object store). It names its run, host and process and expires after
its lifetime; a holder whose process on this machine is gone is taken over at once. Taken and
released here only: :func:`day_lease` is the one way the assets hold a day.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from cdr_pipeline.api.redact import get_logger
from cdr_pipeline.layout import StorageError, state_key
from cdr_pipeline.store import Store, json_bytes

log = get_logger(__name__)


class DayBusy(StorageError):
    """Another run holds the day's lease."""


def lease_key(day: str) -> str:
    return state_key("lease", day)


def _lease(owner: str, ttl_s: float, clock: Callable[[], float]) -> bytes:
    now = clock()
    record = {
        "owner": owner,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "taken_at": now,
        "expires_at": now + ttl_s,
        "nonce": uuid.uuid4().hex,  # two claims never write the same bytes
    }
    return json_bytes(record)


def _holder(store: Store, day: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.read_bytes(lease_key(day)))
    except FileNotFoundError:
        return None


def _died_here(holder: dict[str, Any]) -> bool:
    """A holder on this machine whose process is gone (killed, crashed) need not be waited
    for until its lease expires."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, someone else's
        return False
    return False


def take_lease(
    store: Store,
    day: str,
    owner: str,
    *,
    ttl_s: float,
    wait_s: float,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Hold ``day`` for ``owner`` (a run) until it is released or ``ttl_s`` passes. Another
    holder's lease is waited for up to ``wait_s`` seconds, then :class:`DayBusy`; an expired
    one, or one whose process on this machine is gone, is taken over. The same owner taking
    it again renews it."""
    key = lease_key(day)
    give_up = clock() + wait_s
    said = False
    while True:
        if store.create(key, _lease(owner, ttl_s, clock)):
            return
        holder = _holder(store, day)
        if holder is None:
            continue  # released meanwhile
        if holder.get("owner") == owner:
            store.put(key, _lease(owner, ttl_s, clock))
            return
        if holder.get("expires_at", 0) < clock() or _died_here(holder):
            store.delete(key)  # its run is gone: take it over
            continue
        if clock() >= give_up:
            expires = datetime.fromtimestamp(holder["expires_at"], UTC)
            raise DayBusy(
                f"{day} is being materialized by another run ({holder.get('owner')} on "
                f"{holder.get('host')}, pid {holder.get('pid')}; its lease ends "
                f"{expires:%Y-%m-%d %H:%M:%S} UTC unless released sooner). Wait for it, or set "
                f"CDR_LOCK_WAIT_S to wait (now {wait_s:g} s)"
            )
        if not said:
            log.warning(
                "%s is held by another run (%s); waiting up to %g s",
                day,
                holder.get("owner"),
                wait_s,
            )
            said = True
        sleep(min(1.0, max(0.0, give_up - clock())))


def release_lease(store: Store, day: str, owner: str) -> None:
    holder = _holder(store, day)
    if holder is not None and holder.get("owner") == owner:
        store.delete(lease_key(day))


class RunLeases:
    """The days one run holds: :meth:`take` each before its work, :meth:`release` each once
    published. Made by :func:`run_leases`, which lets go of them all when the run's step ends."""

    def __init__(self, store: Store, owner: str, ttl_s: float, wait_s: float) -> None:
        self.store, self.owner, self.ttl_s, self.wait_s = store, owner, ttl_s, wait_s

    def take(self, day: str) -> None:
        take_lease(self.store, day, self.owner, ttl_s=self.ttl_s, wait_s=self.wait_s)

    def release(self, day: str) -> None:
        release_lease(self.store, day, self.owner)


@contextmanager
def run_leases(
    store: Store, days: list[str], owner: str, *, ttl_s: float, wait_s: float, keep: bool = False
) -> Iterator[RunLeases]:
    """Hold days for ``owner`` inside the block. On an error every one of ``days`` is let go
    (the rest is not this run's to publish any more); after a block that succeeded too,
    unless ``keep``: ``raw_cdr`` keeps the days its run's ``cdr_day`` will publish."""
    leases = RunLeases(store, owner, ttl_s, wait_s)
    try:
        yield leases
    except BaseException:
        for day in days:
            leases.release(day)
        raise
    if not keep:
        for day in days:
            leases.release(day)
