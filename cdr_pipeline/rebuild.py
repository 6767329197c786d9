"""A day re-built from its published version, for a build after an erasure: its rows are
those of the published ``cdr`` less the erased ones, and its accounting moves what the raw
layer lost to ``erased`` (the manifest's ``erasure``, :func:`cdr_pipeline.erasure.erase_raw`),
so it publishes the files a build from the raw layer would, without reading the raw layer.
:func:`reuse_refusal` says when the published day can stand in for it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import phonenumbers
import pyarrow as pa
import pyarrow.parquet as pq

from cdr_pipeline.erasure import NUMBER_COLUMNS, REMOVED_BUCKETS, Eraser, without
from cdr_pipeline.layout import Day, StorageError, part_key
from cdr_pipeline.privacy import shared_schema
from cdr_pipeline.publish import (
    Content,
    Kept,
    Spliced,
    day_row_groups,
    open_spliceable,
    read_day_table,
    read_state,
)
from cdr_pipeline.raw import manifest_source
from cdr_pipeline.store import Store
from cdr_pipeline.transform import TRANSFORM_VERSION
from cdr_pipeline.transform.dedup import SPILL_ABOVE_ROWS
from cdr_pipeline.transform.validate import CDR_SCHEMA, REJECT_REASONS

SLICE_ROWS = 16_384


def _slices(groups: Iterator[pa.Table]) -> Iterator[pa.Table]:
    for group in groups:
        for start in range(0, len(group), SLICE_ROWS):
            yield group.slice(start, SLICE_ROWS)


def by_reason_of(rejects: pa.Table) -> dict[str, int]:
    left = Counter(rejects.column("reason").to_pylist())
    return {r: left[r] for r in REJECT_REASONS if left[r]}


class _Rows:
    """A stream of tables taken a given number of rows at a time, whatever its own slicing."""

    def __init__(self, tables: Iterator[pa.Table]) -> None:
        self.tables, self.left = tables, None

    def take(self, n: int) -> pa.Table:
        """The next ``n`` rows (fewer at the end), as slices of the stream's tables."""
        pieces, wanted = [], n
        while wanted:
            if self.left is None or not len(self.left):
                self.left = next(self.tables, None)
                if self.left is None:
                    break
                continue
            pieces.append(self.left.slice(0, wanted))
            wanted -= len(pieces[-1])
            self.left = self.left.slice(len(pieces[-1]))
        return pa.concat_tables(pieces) if pieces else pa.table({})


def _sliced(
    parquet: pq.ParquetFile, group: int, columns: list[str] | None = None
) -> Iterator[pa.Table]:
    """A row group of ``parquet`` read a slice at a time (:data:`SLICE_ROWS`)."""
    batches = parquet.iter_batches(SLICE_ROWS, row_groups=[group], columns=columns)
    return (pa.Table.from_batches([b]) for b in batches)


def _in(gone: np.ndarray, at: int, rows: int) -> np.ndarray:
    """Of the positions ``gone`` (sorted), those of rows ``at`` to ``at + rows``, from ``at``."""
    lo, hi = np.searchsorted(gone, [at, at + rows])
    return gone[lo:hi] - at


def _cut(parts: Iterator[pa.Table], gone: np.ndarray, at: int = 0) -> Iterator[pa.Table]:
    """``parts`` (a day's rows in order, from row ``at``) less the rows at the positions
    ``gone`` (sorted)."""
    for part in parts:
        rows = _in(gone, at, len(part))
        at += len(part)
        if len(rows):
            hit = np.zeros(len(part), dtype=bool)
            hit[rows] = True
            part = without(part, pa.array(hit))
        yield part


@dataclass(frozen=True)
class Published:
    """What of a published day's aggregates a re-build after an erasure (which only takes
    rows out) keeps: the per-caller datasets (``tables``, by name), whose rows of the
    callers that lost no call stay as they are; and the unique callers and callees, less
    those the erased rows held and the day no longer does."""

    tables: dict[str, pa.Table]
    unique: tuple[int, int] | None  # (callers, callees)
    # the day's sums (``gathered.Gathered.state``), from which the erased rows' are taken out
    sums: dict[str, Any] | None = None

    def unique_less(
        self, lost: dict[str, list[str]], still: dict[str, set[str]]
    ) -> tuple[int, int]:
        """The unique callers and callees once the erased rows (their numbers ``lost``, by
        column; ``still``: those the day still holds) are gone."""
        assert self.unique is not None
        gone = [len(set(lost[c]) - still[c]) for c in ("src", "dst")]
        return self.unique[0] - gone[0], self.unique[1] - gone[1]


NONE_PUBLISHED = Published({}, None)  # a build from the raw layer counts everything
# The form of the day's ``sums`` record, which its validation record names: a day published
# with sums of another form (or none) has them gathered again from every row.
SUMS_FORM = 1


class NotReusable(StorageError):
    """The published day cannot stand in for its raw layer (why, in the message)."""


def built_by(tz: ZoneInfo, default_region: str) -> dict[str, str]:
    """What a day's rows depend on beside its raw layer: a published day built by the same
    may be re-used for an erasure instead of its raw layer."""
    return {
        "transform": TRANSFORM_VERSION,
        "timezone": tz.key,
        "default_region": default_region,
        "phonenumbers": phonenumbers.__version__,
    }


def reuse_refusal(
    record: dict[str, Any] | None,
    manifest: dict[str, Any] | None,
    digest: str | None,
    built: dict[str, str],
) -> str | None:
    """Why the published day (its validation ``record``) cannot stand in for the raw layer
    (``manifest``, whose stored bytes have ``digest``) in a build; ``None`` when it can: it
    was built by the same code and settings from this raw layer, or from the one the last
    erasure changed, and no call's versions disagree (an erasure could then let another
    version of a call through, which only the raw layer has); or the raw layer was pruned
    (``manifest`` is None), and the published day is all there is."""
    if record is None:
        return "nothing is published for the day"
    if record.get("cleared"):
        return "the day was cleared of its numbers"
    if manifest is None:
        return None
    if record.get("built") != built:
        return "the published day was built by other code or settings"
    erasure = manifest.get("erasure") or {}
    if record.get("raw") not in (digest, erasure.get("from")):
        return "the raw layer changed since the published day was built"
    if record["accounting"].get("duplicates_conflicting"):
        return "some calls' versions disagree"
    return None


class FromPublished:
    """The day's rows as its published version holds them, for a build after an erasure
    (:func:`reuse_refusal` says when): only the erased rows are dropped, and the accounting
    moves what the raw layer lost (the manifest's ``erasure``) to ``erased``."""

    def __init__(
        self,
        store: Store,
        day: Day,
        manifest: dict[str, Any] | None,
        record: dict[str, Any],
        digest: str | None,
        key_id: str | None = None,
    ) -> None:
        """``manifest`` None: the raw layer was pruned; the day keeps what it was fetched
        as. ``key_id``: the key of the build's tokens; where the shared zone's ``cdr`` was
        made under it, its tokens say which rows are erased and its rows, less those, are
        the new shared ``cdr`` (no number is tokenised or masked again)."""
        self.store, self.day, self.record = store, day, record
        tokens_key, shared = record.get("shared_key_id"), store.shared
        usable = shared is not None and shared.exists(part_key("cdr", day.key))
        self.shared = shared if usable and tokens_key is not None and tokens_key == key_id else None
        self.gone: list[np.ndarray] = []  # the erased rows' positions in the day, for the shared
        self.opened = ExitStack()  # the published files whose row groups are copied
        self.origin = record["source"] if manifest is None else manifest_source(manifest)
        self.fetch = record["fetch"] if manifest is None else manifest["totals"]
        self.expected = self.fetch["records"]
        erasure = (manifest or {}).get("erasure") or {}
        changed = manifest is not None and record["raw"] != digest
        self.removed = erasure["removed"] if changed else dict.fromkeys(REMOVED_BUCKETS, 0)
        self.renamed = erasure["renamed"] if changed else {}
        self.spills = self.expected > SPILL_ABOVE_ROWS

    def _spliceable(self, store: Store, schema: pa.Schema) -> Any | None:
        """The published ``cdr`` of ``store`` open, its row groups ready to be copied into
        the new file (where its layout allows: :func:`open_spliceable`)."""
        opened = open_spliceable(store, "cdr", self.day.key, schema)
        if opened is not None:
            self.opened.callback(opened[0].close)
        return opened

    def rows(self, eraser: Eraser, gathered: tuple[str, ...] = ()) -> Content:
        """``cdr``'s rows less the erased: the published file's row groups without an erased
        row copied as they are encoded (only the ``gathered`` columns read, for the
        aggregates), the others less theirs; or, where its groups cannot be copied, every row
        in slices as small as the raw layer's, so fewer rows wait in the writer and the
        aggregates' thread at once (docs/performance.md, "Erasure")."""
        tokens = None
        if self.shared is not None:
            columns = ["call_id", "src_token", "dst_token"]
            tokens = _Rows(day_row_groups(self.shared, "cdr", self.day.key, columns))
        opened = self._spliceable(self.store, CDR_SCHEMA)
        if opened is None:
            slices = _slices(day_row_groups(self.store, "cdr", self.day.key))
            cut = self._hits(slices, eraser, tokens)
            return CDR_SCHEMA, (eraser.drop(part, hit) for part, hit in cut)
        source, layout, groups = opened
        parquet = pq.ParquetFile(source)
        # which rows go is read first, from what finds them; the rest a slice at a time: of a
        # kept group only what the aggregates read, a group losing rows whole, written again
        # as groups of a slice each (every column decoded, and whole groups, cost more time
        # and memory: docs/performance.md, "Erasure")
        finds = ["call_id", *(NUMBER_COLUMNS if tokens is None else ())]
        narrow = [c for c in CDR_SCHEMA.names if c in gathered]
        ids = (parquet.read_row_group(i, columns=finds) for i in range(len(groups)))

        def parts() -> Iterator[pa.Table | Kept]:
            cut = self._hits(ids, eraser, tokens)
            for i, ((_, hit), group) in enumerate(zip(cut, groups, strict=True)):
                if hit is None:
                    yield Kept(source, group, _sliced(parquet, i, narrow) if narrow else ())
                    continue
                at = 0
                for part in _sliced(parquet, i):
                    yield eraser.drop(part, hit.slice(at, len(part)))
                    at += len(part)

        return Spliced(layout, parts())

    def _hits(
        self, parts: Iterator[pa.Table], eraser: Eraser, tokens: _Rows | None
    ) -> Iterator[tuple[pa.Table, pa.Array | None]]:
        """Each part with its erased rows (None when none is), by its numbers, or by the
        shared zone's ``tokens`` where they were made under this key (no key's work)."""
        at = 0
        for part in parts:
            if tokens is None:
                hit = eraser.hits(part)
            else:
                numbers = tokens.take(len(part))  # the same rows, however each file is grouped
                # the tokens decide which rows go: only those of the very same calls may
                if len(numbers) < len(part) or not part["call_id"].equals(numbers["call_id"]):
                    raise NotReusable(
                        "the shared zone's cdr does not hold the restricted one's calls"
                    )
                hit = eraser.hits(numbers)
            if hit is not None:
                self.gone.append(np.flatnonzero(hit.to_numpy(zero_copy_only=False)) + at)
            at += len(part)
            yield part, hit
        if tokens is not None and len(tokens.take(1)):
            raise NotReusable("the shared zone's cdr holds calls the restricted one does not")

    def shared_cdr(self) -> Content | None:
        """The shared zone's new ``cdr``: its published rows less the erased ones (after
        :meth:`rows`), its row groups without one copied as they are encoded; None when it
        cannot serve (made under another key, or none)."""
        if self.shared is None:
            return None
        gone = np.concatenate(self.gone) if self.gone else np.zeros(0, np.int64)
        schema = shared_schema(CDR_SCHEMA, "cdr")
        opened = self._spliceable(self.shared, schema)
        if opened is None:
            return schema, _cut(_slices(day_row_groups(self.shared, "cdr", self.day.key)), gone)
        source, layout, groups = opened
        parquet = pq.ParquetFile(source)

        def parts() -> Iterator[pa.Table | Kept]:
            at = 0
            for i, group in enumerate(groups):
                if len(_in(gone, at, group.rows)):  # a slice at a time, as the restricted cdr's
                    yield from _cut(_sliced(parquet, i), gone, at)
                else:
                    yield Kept(source, group)
                at += group.rows

        return Spliced(layout, parts())

    def published(self, params: dict[str, dict[str, Any]], per_caller: list[str]) -> Published:
        """What of the published aggregates stays true of the day less the erased rows
        (:class:`Published`): ``per_caller``, the per-caller datasets, whose published rows
        were made with the query ``params`` (by name) they are asked with now."""
        made_with = self.record.get("params") or {}
        tables = {}
        for name in per_caller:
            if made_with.get(name) == params[name]:
                with suppress(StorageError):
                    tables[name] = read_day_table(self.store, name, self.day.key)
        try:
            kpis = read_day_table(self.store, "call_kpis_daily", self.day.key).to_pylist()
        except StorageError:
            kpis = []
        unique = (kpis[0]["unique_callers"], kpis[0]["unique_callees"]) if kpis else None
        sums = None
        if unique is not None and self.record.get("sums") == SUMS_FORM:
            with suppress(StorageError):
                sums = read_state(self.store, "sums", self.day.key)
        return Published(tables, unique, sums)

    def finish(self, eraser: Eraser) -> tuple[pa.Table, dict[str, Any]]:
        rejects = read_day_table(self.store, "cdr_rejects", self.day.key)
        if self.renamed:  # a reject names its body, which the erasure re-wrote
            source = [self.renamed.get(s, s) for s in rejects.column("source").to_pylist()]
            index = rejects.schema.get_field_index("source")
            rejects = rejects.set_column(
                index, rejects.schema.field(index), pa.array(source, pa.string())
            )
        rejects = eraser.rejects(rejects)
        old, removed = self.record["accounting"], self.removed
        gone = old["rejected"] - len(rejects)
        if eraser.dropped < removed["valid"] or gone < removed["rejected"]:
            raise NotReusable("the published day lacks records the erasure took from raw")
        others = ("duplicates_dropped", "overlap_copies", "outside_day")
        accounting = (
            old
            | {b: old[b] - removed[b] for b in REMOVED_BUCKETS[2:]}
            | {
                "valid": old["valid"] - eraser.dropped,
                "rejected": len(rejects),
                "rejects_by_reason": by_reason_of(rejects) if gone else old["rejects_by_reason"],
                "erased": old.get("erased", 0)
                + eraser.dropped
                + gone
                + sum(removed[b] for b in others),
                "raw_records": self.expected,
            }
        )
        return rejects, accounting

    def close(self) -> None:
        self.opened.close()
