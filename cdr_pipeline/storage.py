"""Dataset layout and atomic, idempotent day replacement on a local file system.

Each dataset holds one Parquet file per day (``<dataset>/date=YYYY-MM-DD/part-0.parquet``),
written to a hidden temporary name in the same folder and moved into place with
``os.replace``: a reader sees the old file or the new one, never half of one, and readers
(DuckDB's ``*.parquet`` globs, pyarrow datasets) skip the hidden temporary. The raw layer
stores bodies under their sha256 and commits a day by replacing its ``manifest.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
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


def _sweep_tmp(folder: Path, keep: set[str]) -> None:
    """Remove debris of interrupted writes and files no longer part of the day."""
    for entry in folder.iterdir():
        if entry.name in keep:
            continue
        if entry.name.endswith(".tmp") or entry.suffix == ".parquet":
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def write_bytes_atomic(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(target)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


def write_json_atomic(target: Path, obj: Any) -> None:
    write_bytes_atomic(target, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _write_parquet_tmp(table: pa.Table, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(target)
    try:
        # Fixed writer settings: the same table always gives the same bytes.
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            compression_level=3,
            row_group_size=1 << 20,
            write_statistics=True,
            use_dictionary=True,
        )
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return tmp


def publish_day(root: Path, day: str, tables: dict[str, pa.Table]) -> dict[str, Path]:
    """Replace a day's file in each dataset; every file is written before any is swapped in."""
    staged = []
    try:
        for dataset, table in tables.items():
            target = day_dir(root, dataset, day) / PART_NAME
            staged.append((_write_parquet_tmp(table, target), target))
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise
    written = {}
    for (tmp, target), dataset in zip(staged, tables, strict=True):
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        _sweep_tmp(target.parent, keep={PART_NAME})
        written[dataset] = target
    return written


def read_day_table(root: Path, dataset: str, day: str) -> pa.Table:
    path = day_dir(root, dataset, day) / PART_NAME
    if not path.exists():
        raise StorageError(f"{dataset} has no data for {day} (expected {path})")
    return pq.read_table(path)


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


def iter_raw_bodies(root: Path, day: str, manifest: dict) -> Iterator[tuple[dict, bytes]]:
    """Each request entry of the manifest with its body, checked against its sha256."""
    folder = raw_day_dir(root, day)
    for entry in manifest["requests"]:
        name = entry["file"]
        if not _BODY_RE.fullmatch(name):
            raise StorageError(f"raw manifest of {day} names an unexpected file {name!r}")
        body = (folder / name).read_bytes()
        if hashlib.sha256(body).hexdigest() != entry["sha256"]:
            raise StorageError(f"raw body {name} of {day} does not match its sha256")
        yield entry, body


def state_path(root: Path, kind: str, day: str) -> Path:
    return root / "_state" / kind / f"date={check_day(day)}.json"


def write_state(root: Path, kind: str, day: str, obj: dict) -> Path:
    path = state_path(root, kind, day)
    write_json_atomic(path, obj)
    return path


def read_state(root: Path, kind: str, day: str) -> dict:
    path = state_path(root, kind, day)
    if not path.exists():
        raise StorageError(f"no {kind} record for {day}: materialize the cdr asset first")
    return json.loads(path.read_text())
