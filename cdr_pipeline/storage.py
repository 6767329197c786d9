"""Dataset layout and atomic, idempotent day replacement on a local file system.

Each dataset holds one Parquet file per day (``<dataset>/date=YYYY-MM-DD/part-0.parquet``),
written to a hidden temporary name in the same folder and moved into place with
``os.replace``: a reader sees the old file or the new one, never half of one, and readers
(DuckDB's ``*.parquet`` globs, pyarrow and Spark datasets) skip the hidden temporary.

Files that belong together (``cdr``, ``cdr_rejects`` and the day's accounting) are published as
one transaction: all are staged completely first, then a journal listing the moves is written,
then the moves are made and the journal removed. A crash before the journal leaves the previous
day untouched (plus hidden debris the next write sweeps); a crash after it is rolled forward
by the next reader or writer of that day, so a day is never left mixed. The raw layer stores
bodies under their sha256 and commits a day by replacing its ``manifest.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cdr_pipeline.api.wire import ENCODING_EXT

DATASETS = ("cdr", "cdr_rejects", "call_outcome_daily", "call_kpis_daily")
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


def day_dir(root: Path, dataset: str, day: str) -> Path:
    if dataset not in DATASETS:
        raise StorageError(f"unknown dataset {dataset!r}")
    return root / dataset / f"date={check_day(day)}"


def raw_day_dir(root: Path, day: str) -> Path:
    return root.joinpath(*RAW_DIR) / f"date={check_day(day)}"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _tmp_name(target: Path) -> Path:
    return target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"


def _staged(target: Path, write: Callable[[Path], object]) -> Path:
    """Write ``target``'s content to a hidden temporary beside it, flushed to disk; on any
    failure nothing is left behind. The caller moves it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(target)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return tmp


def _write_bytes_tmp(target: Path, data: bytes) -> Path:
    return _staged(target, lambda tmp: tmp.write_bytes(data))


def write_bytes_atomic(target: Path, data: bytes) -> None:
    tmp = _write_bytes_tmp(target, data)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def write_json_atomic(target: Path, obj: Any) -> None:
    write_bytes_atomic(target, _json_bytes(obj))


# Fixed writer settings and fixed row-group size: the same rows always give the same bytes,
# whatever slices they arrive in.
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "write_statistics": True,
    "use_dictionary": True,
}
ROW_GROUP_ROWS = 1 << 17

# What a day's dataset file is made from: a whole table, or a stream of slices of one.
Content = pa.Table | tuple[pa.Schema, Iterable[pa.Table]]


def write_parquet(path: Path, content: Content) -> int:
    """Write a table, or stream slices, into ``path``; return the row count.

    Row groups are encoded on a second thread while the next one is being produced (Arrow
    releases the GIL while it compresses), at most one waiting, so memory stays flat."""
    schema, parts = (content.schema, [content]) if isinstance(content, pa.Table) else content
    rows, pending, pending_rows = 0, [], 0
    with (
        pq.ParquetWriter(str(path), schema, **PARQUET_OPTIONS) as writer,
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


def _write_parquet_tmp(content: Content, target: Path) -> Path:
    return _staged(target, lambda tmp: write_parquet(tmp, content))


def journal_path(root: Path, day: str) -> Path:
    return root / "_state" / "journal" / f"date={check_day(day)}.json"


def recover_day(root: Path, day: str) -> bool:
    """Finish a publish of ``day`` that a crash interrupted; True if there was one."""
    journal = journal_path(root, day)
    try:
        moves = json.loads(journal.read_text())["moves"]
    except FileNotFoundError:
        return False
    _apply_moves(root, moves)
    journal.unlink()
    _fsync_dir(journal.parent)
    return True


def _inside(root: Path, rel: str) -> Path:
    """A path from a journal, refused unless it stays inside the data directory."""
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise StorageError(f"journal names a path outside the data directory: {rel!r}")
    return path


def _apply_moves(root: Path, moves: list[list[str]]) -> None:
    checked = [(_inside(root, tmp), _inside(root, target)) for tmp, target in moves]
    for tmp, target in checked:
        if tmp.exists():  # absent: this move was made before the crash
            os.replace(tmp, target)
            _fsync_dir(target.parent)
    for _, target in checked:
        _sweep_debris(target)


def _sweep_debris(target: Path) -> None:
    """Remove temporaries that interrupted writes of ``target`` left behind; in a dataset's
    day folder also any Parquet file that is no longer the day's."""
    for entry in target.parent.iterdir():
        if entry == target:
            continue
        stale_tmp = entry.name.startswith(f".{target.name}.") and entry.name.endswith(".tmp")
        if stale_tmp or (target.suffix == ".parquet" and entry.suffix == ".parquet"):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def publish_day(
    root: Path,
    day: str,
    tables: dict[str, Content],
    state: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """Replace a day's file in each dataset (and its state records) as one transaction.

    Tables are written in order, so a ``state`` record may be filled in while a streamed
    table is being written (it is serialised only after every table is staged)."""
    recover_day(root, day)
    staged: list[tuple[Path, Path]] = []
    try:
        for dataset, table in tables.items():
            target = day_dir(root, dataset, day) / PART_NAME
            staged.append((_write_parquet_tmp(table, target), target))
        for kind, obj in (state or {}).items():
            target = state_path(root, kind, day)
            staged.append((_write_bytes_tmp(target, _json_bytes(obj)), target))
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise
    moves = [[str(tmp.relative_to(root)), str(target.relative_to(root))] for tmp, target in staged]
    if len(moves) > 1:
        journal = journal_path(root, day)
        write_json_atomic(journal, {"date": day, "moves": moves})
        _apply_moves(root, moves)
        journal.unlink()
        _fsync_dir(journal.parent)
    else:
        _apply_moves(root, moves)
    return {dataset: day_dir(root, dataset, day) / PART_NAME for dataset in tables}


def read_day_table(root: Path, dataset: str, day: str) -> pa.Table:
    recover_day(root, day)
    path = day_dir(root, dataset, day) / PART_NAME
    if not path.exists():
        raise StorageError(f"{dataset} has no data for {day} (expected {path})")
    return pq.read_table(path)


def iter_day_table(
    root: Path, dataset: str, day: str, columns: list[str] | None = None
) -> Iterator[pa.Table]:
    """A day's file a row group at a time (only ``columns``), so memory stays flat."""
    recover_day(root, day)
    path = day_dir(root, dataset, day) / PART_NAME
    if not path.exists():
        raise StorageError(f"{dataset} has no data for {day} (expected {path})")
    with pq.ParquetFile(path) as parquet:
        for i in range(parquet.num_row_groups):
            yield parquet.read_row_group(i, columns=columns)


# --- the raw layer ------------------------------------------------------------------------


def body_name(body: bytes, encoding: str) -> tuple[str, str]:
    digest = hashlib.sha256(body).hexdigest()
    return f"{digest}.{ENCODING_EXT[encoding]}", digest


def write_raw_day(root: Path, day: str, bodies: list[tuple[bytes, str]], manifest: dict) -> Path:
    """Store bodies under their hash, then commit the day by replacing ``manifest.json``."""
    folder = raw_day_dir(root, day)
    folder.mkdir(parents=True, exist_ok=True)
    keep = {"manifest.json"}
    for body, encoding in bodies:
        name, _ = body_name(body, encoding)
        keep.add(name)
        target = folder / name
        if not target.exists():
            write_bytes_atomic(target, body)
    manifest_path = folder / "manifest.json"
    write_json_atomic(manifest_path, manifest)
    for entry in folder.iterdir():
        if entry.name not in keep:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
    return manifest_path


def read_raw_manifest(root: Path, day: str) -> dict:
    path = raw_day_dir(root, day) / "manifest.json"
    if not path.exists():
        raise StorageError(f"no raw CDRs for {day}: materialize the raw asset first ({path})")
    return json.loads(path.read_text())


def read_raw_body(root: Path, day: str, entry: dict) -> bytes:
    """One body the manifest lists, checked against its sha256 (thread-safe)."""
    name = entry["file"]
    if not _BODY_RE.fullmatch(name):
        raise StorageError(f"raw manifest of {day} names an unexpected file {name!r}")
    body = (raw_day_dir(root, day) / name).read_bytes()
    if hashlib.sha256(body).hexdigest() != entry["sha256"]:
        raise StorageError(f"raw body {name} of {day} does not match its sha256")
    return body


def iter_raw_bodies(root: Path, day: str, manifest: dict) -> Iterator[tuple[dict, bytes]]:
    """Each request entry of the manifest with its body, checked against its sha256."""
    for entry in manifest["requests"]:
        yield entry, read_raw_body(root, day, entry)


def spill_dir(root: Path) -> Path:
    """Where a large day's transform spills: hidden from every dataset reader."""
    path = root / "_state" / "spill"
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_path(root: Path, kind: str, day: str) -> Path:
    return root / "_state" / kind / f"date={check_day(day)}.json"


def read_state(root: Path, kind: str, day: str) -> dict:
    recover_day(root, day)
    path = state_path(root, kind, day)
    if not path.exists():
        raise StorageError(f"no {kind} record for {day}: materialize the cdr asset first")
    return json.loads(path.read_text())
