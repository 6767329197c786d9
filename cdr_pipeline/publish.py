"""A day's new version as one transaction, and reading the published one back.

Each dataset holds one Parquet file per day (``<dataset>/date=YYYY-MM-DD/part-0.parquet``).
A :class:`DayTransaction` writes every file of the new version completely under a hidden
temporary name beside its target (readers, DuckDB's ``*.parquet`` globs, pyarrow and Spark
datasets, skip it); then, once the shrink guard has approved, it writes a journal listing the
moves, makes them (a rename on a local disk; a server-side copy and a delete on an object
store, whose copy appears whole) and removes the journal. A crash before the journal leaves
the previous version untouched (plus hidden debris the next write sweeps); a crash after it is
rolled forward by the next reader or writer of the day, so a day is never left mixed.
"""

from __future__ import annotations

import functools
import json
import posixpath
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cdr_pipeline import footer
from cdr_pipeline.layout import StorageError, check_day, part_key, state_key
from cdr_pipeline.store import (
    LocalStore,
    Store,
    StoreError,
    check_key,
    is_tmp_of,
    json_bytes,
    tmp_key,
)

# Fixed writer settings and fixed row-group size: the same rows always give the same bytes,
# whatever slices they arrive in (but for a re-build after an erasure, which keeps the row
# groups without an erased row as they were: :class:`Spliced`). zstd level 1, and
# dictionaries only where values repeat (a dictionary per row group of ids, numbers and URLs
# is mostly overhead: benchmarks/RESULTS.md).
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 1,
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
        # the shared zone's tokens (privacy.py); its masked numbers repeat enough that a
        # dictionary pays (docs/performance.md, "Pseudonyms and the shared zone")
        "src_token",
        "dst_token",
    }
)
# Columns whose min and max prune nothing (keyed hashes, masks of random numbers): written
# without statistics, a good part of their write (docs/performance.md).
NO_STATISTICS = frozenset({"src_token", "dst_token", "src_masked", "dst_masked"})
ROW_GROUP_ROWS = 1 << 16


@dataclass(frozen=True)
class Kept:
    """A row group of a published file, to be copied into the new one as it is encoded;
    ``rows``, its rows in slices where whoever else the stream serves reads them."""

    source: Any  # the published file, open
    group: footer.Group
    rows: Iterable[pa.Table] = ()


@dataclass(frozen=True)
class Spliced:
    """A file made of a published file's row groups (:class:`Kept`, copied) and of tables
    (each encoded as row groups of its own), in order, under that file's ``layout`` (its
    footer: schema, writer and metadata)."""

    layout: footer.Struct
    parts: Iterable[pa.Table | Kept]


# What a day's dataset file is made from: a whole table, a stream of slices of one, or a
# published file's row groups with new ones.
Content = pa.Table | tuple[pa.Schema, Iterable[pa.Table]] | Spliced


def open_spliceable(store: Store, dataset: str, day: str, schema: pa.Schema) -> Any | None:
    """The published file of ``dataset`` open, with its footer and groups, when its row
    groups can be copied into a file of ``schema`` written now (same schema and writer, no
    page indexes); else None."""
    source = _open_part(store, dataset, day)
    try:
        layout = footer.read_footer(source, source.size())
        groups = footer.groups(layout)
        if footer.same_layout(layout, _layout_of(schema.serialize().to_pybytes())):
            return source, layout, groups
    except footer.FooterError:
        pass
    source.close()
    return None


@functools.lru_cache(maxsize=8)
def _layout_of(schema: bytes) -> footer.Struct:
    """The footer of a file of the (serialized) ``schema`` written now, as a splice's rows
    will be."""
    blank = pa.BufferOutputStream()
    write_parquet(blank, pa.ipc.read_schema(pa.py_buffer(schema)).empty_table())
    data = blank.getvalue()
    return footer.read_footer(pa.BufferReader(data), len(data))


def _write_spliced(sink: Any, content: Spliced) -> int:
    def pieces() -> Iterator[footer.Piece]:
        for part in content.parts:
            if isinstance(part, Kept):
                yield footer.Piece(part.source, part.group)
            elif len(part):
                encoded = pa.BufferOutputStream()
                write_parquet(encoded, part)
                reader = pa.BufferReader(encoded.getvalue())
                meta = footer.read_footer(reader, reader.size())
                yield from (footer.Piece(reader, g) for g in footer.groups(meta))

    with ExitStack() as stack:
        out = stack.enter_context(open(sink, "wb")) if isinstance(sink, str) else sink
        return footer.splice(out, content.layout, pieces())


def write_parquet(sink: Any, content: Content) -> int:
    """Write a table, streamed slices or a splice into ``sink`` (a path or an output
    stream); return the row count.

    Row groups are encoded on a second thread while the next one is being produced (Arrow
    releases the GIL while it compresses), at most one waiting, so memory stays flat."""
    if isinstance(content, Spliced):
        return _write_spliced(sink, content)
    schema, parts = (content.schema, [content]) if isinstance(content, pa.Table) else content
    dictionary = [
        f.name
        for f in schema
        if f.name not in HIGH_CARDINALITY and not pa.types.is_timestamp(f.type)
    ]
    statistics = [f.name for f in schema if f.name not in NO_STATISTICS]
    rows, pending, pending_rows = 0, [], 0
    with (
        pq.ParquetWriter(
            sink,
            schema,
            **PARQUET_OPTIONS,
            use_dictionary=dictionary,
            write_statistics=statistics,
        ) as writer,
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


def _write_all(sink: Any, data: bytes) -> None:
    if isinstance(sink, str):
        with open(sink, "wb") as fh:
            fh.write(data)
    else:
        sink.write(data)


SHARED = "shared"  # a journal's mark of a move in the shared zone


def zone(store: Store, name: str | None) -> Store:
    """The data directory (``None``) or its shared zone."""
    if name is None:
        return store
    if name != SHARED or store.shared is None:
        raise StorageError(
            f"{store.url}: a journal names a move in zone {name!r}, and no such zone is "
            "configured (CDR_SHARED_DATA_DIR)"
        )
    return store.shared


class DayTransaction:
    """The next version of one day: files staged one by one, in the data directory or its
    shared zone, then published together by :meth:`commit`; leaving the ``with`` block on an
    error removes what was staged."""

    def __init__(self, store: Store, day: str) -> None:
        self.store, self.day = store, check_day(day)
        self.staged: list[tuple[str, str, str | None]] = []  # (temporary, target, zone)
        self.paths: dict[str, str] = {}  # dataset -> where its file will be
        self.shared_paths: dict[str, str] = {}  # the same, in the shared zone
        recover_day(store, day, writer=True)

    def __enter__(self) -> DayTransaction:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is not None:
            self.abort()

    def _stage(self, target: str, write: Callable[[Any], object], name: str | None) -> None:
        where, tmp = zone(self.store, name), tmp_key(target)
        try:
            where.write(tmp, write)
        except BaseException:
            where.delete(tmp)
            raise
        self.staged.append((tmp, target, name))

    def stage(self, dataset: str, content: Content, *, shared: bool = False) -> None:
        """Write ``dataset``'s file of the day, complete and durable, under a hidden name (in
        the shared zone when ``shared``)."""
        target = part_key(dataset, self.day)
        self._stage(target, partial(write_parquet, content=content), SHARED if shared else None)
        paths = self.shared_paths if shared else self.paths
        paths[dataset] = zone(self.store, SHARED if shared else None).uri(target)

    def staged_row_groups(
        self, dataset: str, columns: list[str] | None = None
    ) -> Iterator[pa.Table]:
        """The file staged for ``dataset`` in the data directory, a row group at a time."""
        with self.store.open_input(self._staged(dataset)) as source:
            yield from _row_groups(source, columns)

    def staged_file(self, dataset: str) -> Path | None:
        """The local file staged for ``dataset`` in the data directory (None on an object
        store), for a reader that takes a path (DuckDB)."""
        if not self.store.local:
            return None
        assert isinstance(self.store, LocalStore)
        return self.store.path(self._staged(dataset))

    def _staged(self, dataset: str) -> str:
        target = part_key(dataset, self.day)
        [tmp] = [t for t, key, name in self.staged if name is None and key == target]
        return tmp

    def stage_record(self, kind: str, record: Any) -> None:
        """A JSON record of the day (the accounting) that is published with the files."""
        self._stage(state_key(kind, self.day), partial(_write_all, data=json_bytes(record)), None)

    def abort(self) -> None:
        for tmp, _, name in self.staged:
            zone(self.store, name).delete(tmp)
        self.staged = []

    def commit(self) -> dict[str, str]:
        """Replace the published version by the staged one; return where each file is."""
        moves = [[tmp, target, *([name] if name else [])] for tmp, target, name in self.staged]
        if len(moves) > 1:
            journal = state_key("journal", self.day)
            self.store.put(journal, json_bytes({"date": self.day, "moves": moves}))
            self.staged = []  # the journal's now: an interruption is rolled forward, not back
            _apply_moves(self.store, moves)
            self.store.delete(journal)
        else:
            self.staged = []
            _apply_moves(self.store, moves)
        return self.paths


def recover_day(store: Store, day: str, *, writer: bool = False) -> bool:
    """Finish a publish of ``day`` that a crash interrupted, or that its writer is making
    right now (a reader cannot tell them apart, and rolling forward is right for both); True
    if there was one. Only a ``writer``, who holds the day, sweeps debris: a reader could
    otherwise delete what another run is staging."""
    journal = state_key("journal", day)
    try:
        moves = _json(store, journal)["moves"]
    except FileNotFoundError:
        return False
    _apply_moves(store, moves, sweep=writer)
    store.delete(journal)
    return True


def _checked(rel: str) -> str:
    """A key from a journal, refused unless it stays inside the data directory."""
    try:
        return check_key(rel)
    except StoreError:
        raise StorageError(f"journal names a path outside the data directory: {rel!r}") from None


def _apply_moves(store: Store, moves: list[list[str]], *, sweep: bool = True) -> None:
    """Make a journal's moves; a move whose temporary is gone was made already (before a
    crash, or by a reader and the writer of the same journal at once, both rolling forward)."""
    checked = [
        (zone(store, name[0] if name else None), _checked(tmp), _checked(target))
        for tmp, target, *name in moves
    ]
    for where, tmp, target in checked:
        try:
            where.move(tmp, target)
        except OSError:  # a local disk's FileNotFoundError; an object store's own error
            if where.exists(tmp):
                raise
    if sweep:
        for where, _, target in checked:
            _sweep_debris(where, target)


def _sweep_debris(store: Store, target: str) -> None:
    """Remove temporaries that interrupted writes of ``target`` left behind: only those, by
    their own name pattern (anything else in the folder is not the pipeline's to delete)."""
    folder, name = posixpath.split(target)
    for entry in store.list(folder):
        if is_tmp_of(entry, name):
            store.delete(f"{folder}/{entry}")


# --- the published version ---------------------------------------------------------------


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


def day_row_groups(
    store: Store, dataset: str, day: str, columns: list[str] | None = None
) -> Iterator[pa.Table]:
    """A day's file a row group at a time, so memory holds one."""
    with _open_part(store, dataset, day) as source:
        yield from _row_groups(source, columns)


def _row_groups(source: Any, columns: list[str] | None = None) -> Iterator[pa.Table]:
    parquet = pq.ParquetFile(source)
    for group in range(parquet.num_row_groups):
        yield parquet.read_row_group(group, columns=columns)


def day_rows(store: Store, dataset: str, day: str) -> int:
    """A day's row count, from the Parquet footer alone."""
    with _open_part(store, dataset, day) as source:
        return pq.read_metadata(source).num_rows


class DamagedRecord(StorageError):
    """A record of the data directory that is there but is not the JSON the pipeline wrote."""


def _json(store: Store, key: str) -> Any:
    """A JSON record (FileNotFoundError: none); one that cannot be read is said, with its place
    (the pipeline writes each whole, so only a disk or a hand can have damaged it)."""
    data = store.read_bytes(key)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise DamagedRecord(f"{store.uri(key)} is damaged ({exc})") from None


def read_state(store: Store, kind: str, day: str) -> dict:
    recover_day(store, day)
    key = state_key(kind, day)
    try:
        return _json(store, key)
    except FileNotFoundError:
        raise StorageError(f"no {kind} record for {day}: materialize the cdr asset first") from None


# --- the shrink guard ---------------------------------------------------------------------


class ShrinkRefused(RuntimeError):
    """A re-run would publish markedly fewer valid calls than the published day."""


def shrink_guard(store: Store, day: str, valid: int, max_shrink: float | None) -> None:
    """Refuse to replace a published day by one with no valid calls, or with more than
    ``max_shrink`` (a share) fewer; ``None`` allows anything (the operator's choice for a run).
    A provider that suddenly answers nothing must not empty a good day."""
    if max_shrink is None:
        return
    try:
        published = read_state(store, "validation", day)["accounting"]["valid"]
    except DamagedRecord as exc:
        raise ShrinkRefused(
            f"{day}: {exc}, so the published day's size is not known and nothing was replaced. "
            "Re-run it with run config allow_shrink: true (cdr-pipeline materialize "
            "--allow-shrink), which writes the record anew"
        ) from None
    except StorageError:
        return  # nothing published yet
    if published == 0 or (valid >= published * (1 - max_shrink) and valid > 0):
        return
    drop = (published - valid) / published
    raise ShrinkRefused(
        f"{day}: this run would publish {valid} valid calls where the published version has "
        f"{published} (a drop of {drop:.1%}; CDR_MAX_SHRINK allows {max_shrink:.1%}, and a "
        "drop to zero only when allowed); nothing was replaced. If the provider really holds "
        "fewer calls for the day, re-run it with run config allow_shrink: true "
        "(cdr-pipeline materialize --allow-shrink)"
    )
