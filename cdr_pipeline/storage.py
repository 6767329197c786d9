"""Dataset layout and atomic, idempotent day replacement, on a local folder or object store.

Each dataset holds one Parquet file per day (``<dataset>/date=YYYY-MM-DD/part-0.parquet``),
written completely under a hidden temporary name in the same folder and then moved into place
(a rename on a local disk; a server-side copy and a delete on an object store, whose copy
appears whole): a reader sees the old file or the new one, never half of one, and readers
(DuckDB's ``*.parquet`` globs, pyarrow and Spark datasets) skip the hidden temporary.

Files that belong together (``cdr``, ``cdr_rejects`` and the day's accounting) are published as
one transaction: all are staged completely first, then a journal listing the moves is written,
then the moves are made and the journal removed. A crash before the journal leaves the previous
day untouched (plus hidden debris the next write sweeps); a crash after it is rolled forward
by the next reader or writer of that day, so a day is never left mixed. The raw layer stores
bodies under their sha256 and commits a day by replacing its ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cdr_pipeline.api.redact import get_logger
from cdr_pipeline.api.wire import ENCODING_EXT
from cdr_pipeline.store import Store, StoreError, check_key, tmp_key

# Published together, as one version of a day (data contract, "A day is one version").
log = get_logger(__name__)
DATASETS = (
    "cdr",
    "cdr_rejects",
    "call_outcome_daily",
    "call_kpis_daily",
    "call_destinations_daily",
    "call_load_hourly",
    "caller_risk_daily",
)
RAW_DIR = ("raw", "cdr")
PART_NAME = "part-0.parquet"
_DAY_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_BODY_RE = re.compile(r"[0-9a-f]{64}\.(zlib|gz|json)")


class StorageError(RuntimeError):
    pass


def check_day(day: str) -> str:
    """A partition key must be a real calendar date; anything else could escape the folder."""
    if not isinstance(day, str) or not _DAY_RE.fullmatch(day):
        raise StorageError(f"partition key {day!r} is not a YYYY-MM-DD date")
    try:
        date.fromisoformat(day)
    except ValueError:
        raise StorageError(f"partition key {day!r} is not a real date") from None
    return day


def day_key(dataset: str, day: str) -> str:
    if dataset not in DATASETS:
        raise StorageError(f"unknown dataset {dataset!r}")
    return f"{dataset}/date={check_day(day)}"


def part_key(dataset: str, day: str) -> str:
    return f"{day_key(dataset, day)}/{PART_NAME}"


def raw_day_key(day: str) -> str:
    return f"{'/'.join(RAW_DIR)}/date={check_day(day)}"


def _staged(store: Store, target: str, write: Callable[[Any], object]) -> str:
    """Write ``target``'s content to a hidden temporary beside it, durably; on any failure
    nothing is left behind. The caller moves it into place."""
    tmp = tmp_key(target)
    try:
        store.write(tmp, write)
    except BaseException:
        store.delete(tmp)
        raise
    return tmp


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


# Fixed writer settings and fixed row-group size: the same rows always give the same bytes,
# whatever slices they arrive in.
# zstd level 1 and dictionaries only where values repeat: on a day of 1M calls that writes
# in 0.66 s instead of 1.0 s and makes a smaller file (42 MB instead of 50), because a
# dictionary per row group of ids, numbers and URLs is mostly overhead.
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 1,
    "write_statistics": True,
}
# Columns whose values are nearly all different: stored plain (then compressed).
HIGH_CARDINALITY = frozenset(
    {
        "call_id",
        "src",
        "dst",
        "src_e164",
        "dst_e164",
        "record_url",
        "biz_id",
        "order_id",
        "raw",
        "detail",
    }
)
ROW_GROUP_ROWS = 1 << 16

# What a day's dataset file is made from: a whole table, a stream of slices of one, or a
# function that returns a table once the datasets before it are written (a summary of a
# stream is complete only when the stream has been written).
Content = pa.Table | tuple[pa.Schema, Iterable[pa.Table]] | Callable[[], pa.Table]


def write_parquet(sink: Any, content: Content) -> int:
    """Write a table, or stream slices, into ``sink`` (a path or an output stream); return
    the row count.

    Row groups are encoded on a second thread while the next one is being produced (Arrow
    releases the GIL while it compresses), at most one waiting, so memory stays flat."""
    if callable(content):
        content = content()
    schema, parts = (content.schema, [content]) if isinstance(content, pa.Table) else content
    dictionary = [
        f.name
        for f in schema
        if f.name not in HIGH_CARDINALITY and not pa.types.is_timestamp(f.type)
    ]
    rows, pending, pending_rows = 0, [], 0
    with (
        pq.ParquetWriter(sink, schema, **PARQUET_OPTIONS, use_dictionary=dictionary) as writer,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet") as encoder,
    ):
        last: Future[None] | None = None

        def emit(table: pa.Table) -> None:
            nonlocal last
            if last is not None:
                last.result()
            last = encoder.submit(writer.write_table, table, row_group_size=ROW_GROUP_ROWS)

        for part in parts:
            pending.append(part)
            pending_rows += len(part)
            rows += len(part)
            while pending_rows >= ROW_GROUP_ROWS:
                merged = pa.concat_tables(pending)
                emit(merged.slice(0, ROW_GROUP_ROWS))
                rest = merged.slice(ROW_GROUP_ROWS)
                pending, pending_rows = [rest], len(rest)
        if pending_rows or rows == 0:
            emit(pa.concat_tables(pending) if pending else schema.empty_table())
        if last is not None:
            last.result()
    return rows


def journal_key(day: str) -> str:
    return f"_state/journal/date={check_day(day)}.json"


def recover_day(store: Store, day: str) -> bool:
    """Finish a publish of ``day`` that a crash interrupted; True if there was one."""
    journal = journal_key(day)
    try:
        moves = json.loads(store.read_bytes(journal))["moves"]
    except FileNotFoundError:
        return False
    _apply_moves(store, moves)
    store.delete(journal)
    return True


def _checked(rel: str) -> str:
    """A key from a journal, refused unless it stays inside the data directory."""
    try:
        return check_key(rel)
    except StoreError:
        raise StorageError(f"journal names a path outside the data directory: {rel!r}") from None


def _apply_moves(store: Store, moves: list[list[str]]) -> None:
    checked = [(_checked(tmp), _checked(target)) for tmp, target in moves]
    for tmp, target in checked:
        if store.exists(tmp):  # absent: this move was made before the crash
            store.move(tmp, target)
    for _, target in checked:
        _sweep_debris(store, target)


def _sweep_debris(store: Store, target: str) -> None:
    """Remove temporaries that interrupted writes of ``target`` left behind; in a dataset's
    day folder also any Parquet file that is no longer the day's."""
    folder, name = posixpath.split(target)
    for entry in store.list(folder):
        if entry == name:
            continue
        stale_tmp = entry.startswith(f".{name}.") and entry.endswith(".tmp")
        if stale_tmp or (name.endswith(".parquet") and entry.endswith(".parquet")):
            store.delete(f"{folder}/{entry}")


def publish_day(
    store: Store,
    day: str,
    tables: dict[str, Content],
    state: dict[str, dict[str, Any]] | None = None,
    approve: Callable[[], None] | None = None,
) -> dict[str, str]:
    """Replace a day's file in each dataset (and its state records) as one transaction;
    return where each dataset's file is (as the user would type it).

    Tables are written in order, so a table given as a function, and a ``state`` record
    (serialised only after every table is staged), may describe a table streamed before it.
    ``approve`` runs once everything is staged and nothing replaced: if it raises, the
    published version stays as it was."""
    recover_day(store, day)
    staged: list[tuple[str, str]] = []
    try:
        for dataset, table in tables.items():
            target = part_key(dataset, day)
            staged.append((_staged(store, target, partial(write_parquet, content=table)), target))
        for kind, obj in (state or {}).items():
            target = state_key(kind, day)
            data = _json_bytes(obj)
            staged.append((_staged(store, target, partial(_write_all, data=data)), target))
        if approve is not None:
            approve()
    except BaseException:
        for tmp, _ in staged:
            store.delete(tmp)
        raise
    moves = [[tmp, target] for tmp, target in staged]
    if len(moves) > 1:
        journal = journal_key(day)
        store.put(journal, _json_bytes({"date": day, "moves": moves}))
        _apply_moves(store, moves)
        store.delete(journal)
    else:
        _apply_moves(store, moves)
    return {dataset: store.uri(part_key(dataset, day)) for dataset in tables}


def _write_all(sink: Any, data: bytes) -> None:
    if isinstance(sink, str):
        with open(sink, "wb") as fh:
            fh.write(data)
    else:
        sink.write(data)


def _open_part(store: Store, dataset: str, day: str) -> Any:
    recover_day(store, day)
    key = part_key(dataset, day)
    try:
        return store.open_input(key)
    except FileNotFoundError:
        raise StorageError(f"{dataset} has no data for {day} (expected {store.uri(key)})") from None


def read_day_table(
    store: Store, dataset: str, day: str, columns: list[str] | None = None
) -> pa.Table:
    with _open_part(store, dataset, day) as source:
        return pq.read_table(source, columns=columns)


def day_rows(store: Store, dataset: str, day: str) -> int:
    """A day's row count, from the Parquet footer alone."""
    with _open_part(store, dataset, day) as source:
        return pq.read_metadata(source).num_rows


# --- a day's lease: one run at a time fetches and publishes a day -------------------------


class DayBusy(StorageError):
    """Another run holds the day's lease."""


def lease_key(day: str) -> str:
    return f"_state/lease/date={check_day(day)}.json"


def _lease(owner: str, ttl_s: float, clock: Callable[[], float]) -> bytes:
    now = clock()
    return _json_bytes(
        {
            "owner": owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "taken_at": now,
            "expires_at": now + ttl_s,
            "nonce": uuid.uuid4().hex,  # two claims never write the same bytes
        }
    )


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


# --- the raw layer ------------------------------------------------------------------------


def body_name(body: bytes, encoding: str) -> tuple[str, str]:
    digest = hashlib.sha256(body).hexdigest()
    return f"{digest}.{ENCODING_EXT[encoding]}", digest


def write_raw_day(store: Store, day: str, bodies: list[tuple[bytes, str]], manifest: dict) -> str:
    """Store bodies under their hash, then commit the day by replacing ``manifest.json``."""
    folder = raw_day_key(day)
    present = set(store.list(folder))
    keep = {"manifest.json"}
    added: list[str] = []
    try:
        for body, encoding in bodies:
            name, _ = body_name(body, encoding)
            keep.add(name)
            if name not in present:
                store.put(f"{folder}/{name}", body)
                present.add(name)
                added.append(name)
        manifest_key = f"{folder}/manifest.json"
        store.put(manifest_key, _json_bytes(manifest))
    except BaseException:  # a full disk, a permission: no orphan bodies are left
        for name in added:
            store.delete(f"{folder}/{name}")
        raise
    for entry in present - keep:
        store.delete(f"{folder}/{entry}")
    return store.uri(folder)


def raw_days(store: Store) -> list[str]:
    """The days the raw layer holds a folder for (with or without a manifest)."""
    return [
        name.removeprefix("date=")
        for name in store.folders("/".join(RAW_DIR))
        if name.startswith("date=") and _DAY_RE.fullmatch(name.removeprefix("date="))
    ]


def prune_raw_day(store: Store, day: str) -> int:
    """Remove a day's raw bodies; return how many files went. The manifest goes first: it is
    the commit record, so from then on the day has no raw layer (a re-validation says so
    plainly), and a prune cut short leaves only bodies no manifest lists, which the next prune
    (or the day's next fetch) removes. The validated datasets are not touched."""
    folder = raw_day_key(day)
    names = store.list(folder)
    if "manifest.json" in names:
        store.delete(f"{folder}/manifest.json")
    removed = 0
    for name in names:
        if name != "manifest.json":
            store.delete(f"{folder}/{name}")
        removed += 1
    store.remove_folder(folder)
    return removed


def read_raw_manifest(store: Store, day: str) -> dict:
    key = f"{raw_day_key(day)}/manifest.json"
    try:
        return json.loads(store.read_bytes(key))
    except FileNotFoundError:
        raise StorageError(
            f"no raw CDRs for {day}: materialize the raw asset first ({store.uri(key)})"
        ) from None


def read_raw_body(store: Store, day: str, entry: dict) -> bytes:
    """One body the manifest lists, checked against its sha256 (thread-safe)."""
    name = entry["file"]
    if not _BODY_RE.fullmatch(name):
        raise StorageError(f"raw manifest of {day} names an unexpected file {name!r}")
    body = store.read_bytes(f"{raw_day_key(day)}/{name}")
    if hashlib.sha256(body).hexdigest() != entry["sha256"]:
        raise StorageError(f"raw body {name} of {day} does not match its sha256")
    return body


def spill_dir(store: Store) -> Path | None:
    """Where a large day's transform spills: a hidden folder of a local data directory (no
    dataset reader looks there), the system's temp folder for an object store."""
    return store.local_dir("_state/spill")


def state_key(kind: str, day: str) -> str:
    return f"_state/{kind}/date={check_day(day)}.json"


def read_state(store: Store, kind: str, day: str) -> dict:
    recover_day(store, day)
    key = state_key(kind, day)
    try:
        return json.loads(store.read_bytes(key))
    except FileNotFoundError:
        raise StorageError(f"no {kind} record for {day}: materialize the cdr asset first") from None
