"""Who may fetch and publish a day: one run at a time, by a lease in the data directory.

A lease is a small JSON file created exclusively (a hard link on a local disk; a claim read
back after a pause on an object store). It names its run, host and process and expires after
its lifetime, which the holder renews while it works (a heartbeat every quarter of it), so a
live holder is never overtaken however long its day takes. A holder is taken over at once
when its run is finished in Dagster's instance (failed, cancelled, done: a retry on another
host need not wait) or its process on this machine is gone; otherwise when its heartbeat
stops for a lifetime. Taken and released here only: :func:`run_leases` is the one way a run
holds days.
"""

from __future__ import annotations

import json
import os
import socket
import threading
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


# Whether a run (a lease's owner) is finished: from Dagster's instance, given by the glue.
RunGone = Callable[[str], bool]
BEATS_PER_LIFETIME = 4


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
    """The lease's record; one that cannot be read is an error naming the file (retrying would
    read the same bytes)."""
    key = lease_key(day)
    try:
        record = json.loads(store.read_bytes(key))
    except FileNotFoundError:
        return None
    except ValueError as exc:  # not JSON, not UTF-8
        record, why = None, str(exc)
    else:
        why = "not a lease record"
    if isinstance(record, dict) and isinstance(record.get("expires_at"), (int, float)):
        return record
    raise StorageError(
        f"the lease {store.uri(key)} cannot be read ({why[:120]}); if no run of {day} is "
        "going on, delete it"
    )


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
    gone: RunGone | None = None,
) -> None:
    """Hold ``day`` for ``owner`` (a run) until it is released or ``ttl_s`` passes without a
    renewal. Another holder's lease is waited for up to ``wait_s`` seconds, then
    :class:`DayBusy`; an expired one, one whose run is finished (``gone``) or whose process on
    this machine is gone, is taken over. The same owner taking it again renews it."""
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
        if _is_gone(holder, clock(), gone):
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


def _is_gone(holder: dict[str, Any], now: float, gone: RunGone | None) -> bool:
    if holder["expires_at"] < now or _died_here(holder):
        return True
    owner = holder.get("owner")
    return gone is not None and isinstance(owner, str) and gone(owner)


def renew_lease(
    store: Store, day: str, owner: str, *, ttl_s: float, clock: Callable[[], float] = time.time
) -> bool:
    """Push ``owner``'s lease of ``day`` a lifetime ahead; False if it is not its any more."""
    holder = _holder(store, day)
    if holder is None or holder.get("owner") != owner:
        return False
    store.put(lease_key(day), _lease(owner, ttl_s, clock))
    return True


def release_lease(store: Store, day: str, owner: str) -> None:
    try:
        holder = _holder(store, day)
    except StorageError:  # unreadable: not this run's to delete (taking it says so)
        return
    if holder is not None and holder.get("owner") == owner:
        store.delete(lease_key(day))


class RunLeases:
    """The days one run holds: :meth:`take` each before its work, :meth:`release` each once
    published; :meth:`beat` renews those held. Made by :func:`run_leases`, which beats on a
    thread while the step works and lets go of them all when it ends."""

    def __init__(
        self, store: Store, owner: str, ttl_s: float, wait_s: float, gone: RunGone | None = None
    ) -> None:
        self.store, self.owner, self.ttl_s, self.wait_s = store, owner, ttl_s, wait_s
        self.gone = gone
        self.held: set[str] = set()
        self._lock = threading.Lock()

    def take(self, day: str) -> None:
        take_lease(
            self.store, day, self.owner, ttl_s=self.ttl_s, wait_s=self.wait_s, gone=self.gone
        )
        with self._lock:
            self.held.add(day)

    def release(self, day: str) -> None:
        with self._lock:
            self.held.discard(day)
        release_lease(self.store, day, self.owner)

    def beat(self, clock: Callable[[], float] = time.time) -> None:
        """Renew every day held; a day taken over meanwhile (this run was presumed dead) is
        dropped, and the publish's own check of the lease fails it."""
        with self._lock:
            days = sorted(self.held)
        for day in days:
            try:
                if not renew_lease(self.store, day, self.owner, ttl_s=self.ttl_s, clock=clock):
                    log.warning("%s: this run's lease was taken over by another run", day)
                    with self._lock:
                        self.held.discard(day)
            except (OSError, StorageError) as exc:  # the next beat tries again
                log.warning("%s: could not renew this run's lease (%s)", day, exc)

    @contextmanager
    def beating(self) -> Iterator[None]:
        """Renew the held days every quarter of their lifetime until the block ends."""
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(self.ttl_s / BEATS_PER_LIFETIME):
                self.beat()

        thread = threading.Thread(target=run, name="lease-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


@contextmanager
def run_leases(
    store: Store,
    days: list[str],
    owner: str,
    *,
    ttl_s: float,
    wait_s: float,
    keep: bool = False,
    gone: RunGone | None = None,
) -> Iterator[RunLeases]:
    """Hold days for ``owner`` inside the block, renewed while it runs. On an error every one
    of ``days`` is let go (the rest is not this run's to publish any more); after a block that
    succeeded too, unless ``keep``: ``raw_cdr`` keeps the days its run's ``cdr_day`` will
    publish, renewed once more for the hand-over."""
    leases = RunLeases(store, owner, ttl_s, wait_s, gone)
    try:
        with leases.beating():
            yield leases
    except BaseException:
        for day in days:
            leases.release(day)
        raise
    if keep:
        leases.beat()
    else:
        for day in days:
            leases.release(day)
