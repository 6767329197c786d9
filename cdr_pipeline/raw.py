"""The raw layer: every response body of a day exactly as received, and its manifest.

Bodies are stored under their sha256 (``raw/cdr/date=DAY/<sha256>.zlib``); a day is committed
by replacing its ``manifest.json``, which lists the requests, sizes and digests (never a
secret). The day's datasets are built from here alone, so a day can be re-validated without
asking the provider again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from cdr_pipeline.api.client import CdrApiClient, Window
from cdr_pipeline.api.spans import page_slices
from cdr_pipeline.api.wire import DEFAULT_MAX_BODY_BYTES, ENCODING_EXT, inflate
from cdr_pipeline.layout import (
    DEMO_DATA_DIR,
    LIVE_DATA_DIR,
    MANIFEST,
    RAW_ROOT,
    SOURCE_KEY,
    Day,
    StorageError,
    is_day,
    manifest_key,
    raw_day_key,
)
from cdr_pipeline.store import Store, json_bytes

MANIFEST_VERSION = 1
_BODY_CHARS = frozenset("0123456789abcdef")


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fetch_windows(day: Day, window_hours: int, margin_s: int) -> list[Window]:
    """Sub-windows covering the day widened by the margin; neighbours share one second.

    Only the day's two outer edges are widened: inner boundaries need no margin because the
    same partition fetches both sides of them."""
    step = window_hours * 3600
    edges = [*list(range(day.start, day.end, step)), day.end]
    edges[0] -= margin_s
    edges[-1] += margin_s
    return list(itertools.pairwise(edges))


def fetch_raw_day(
    client: CdrApiClient,
    store: Store,
    day: Day,
    *,
    src: str | None = None,
    endpoint: str,
    timezone: str,
) -> dict[str, Any]:
    """Fetch a day (local midnight to midnight in ``timezone``) into ``raw/cdr/date=DAY/`` and
    return its manifest (nothing is written when the data directory holds another source's
    calls, or days cut in another zone)."""
    settings = client.settings
    windows = fetch_windows(day, settings.window_hours, settings.margin_s)
    before = client.stats
    requests, bodies = [], []
    for _window, pages in client.fetch_windows(windows, src):
        for page in pages:
            name, digest = body_name(page.body, page.encoding)
            bodies.append((page.body, page.encoding))
            requests.append(
                {
                    "file": name,
                    "sha256": digest,
                    "window": list(page.window),
                    "window_utc": [_iso(page.window[0]), _iso(page.window[1])],
                    "cursor_sent": page.cursor_sent,
                    "cursor_received": page.cursor_received,
                    "attempts": page.attempts,
                    "encoding": page.encoding,
                    "bytes": len(page.body),
                    "decoded_bytes": page.decoded_bytes,
                    "records": page.record_count,
                }
            )
    after = client.stats
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    counted = ("retries", "window_splits", "chain_splits", "pages_discarded")
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "date": day.key,
        "day_window": [day.start, day.end],
        "day_window_utc": [_iso(day.start), _iso(day.end)],
        "fetch_windows": [list(w) for w in windows],
        "margin_s": settings.margin_s,
        "max_body_bytes": settings.max_body_bytes,
        "src": src,
        "endpoint": endpoint,
        "source": source_of(endpoint),
        "fetched_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "requests": requests,
        "totals": {
            "pages": len(requests),
            "records": sum(r["records"] for r in requests),
            "bytes": sum(r["bytes"] for r in requests),
            "decoded_bytes": sum(r["decoded_bytes"] for r in requests),
            "http_requests": delta.get("requests", 0),
            **{k: delta.get(k, 0) for k in counted},
        },
    }
    claim_source(store, endpoint, timezone)  # after the fetch: a refused credential first
    write_raw_day(store, day.key, bodies, manifest)
    return manifest


SIMULATOR = "the built-in simulator"


def source_of(endpoint: str) -> str:
    """A data directory's source: the built-in simulator, or the endpoint's host (no port,
    path or secret)."""
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.hostname}" if parts.hostname else endpoint


def manifest_source(manifest: dict[str, Any]) -> str:
    """A raw day's source (a manifest from before ``source`` was recorded: from its endpoint)."""
    return manifest.get("source") or source_of(manifest.get("endpoint") or "unknown")


class OtherSource(StorageError):
    """The data directory holds the calls of another source, or days cut in another zone."""


def claim_source(store: Store, endpoint: str, timezone: str) -> None:
    """A data directory holds the calls of one source, cut into days in one zone: the first
    fetch records both, and a fetch from another source or in another zone is refused before
    anything is written (demo data never mixes with live data, nor one provider account's with
    another's; days cut in two zones overlap, and a call would count twice or not at all)."""
    source = source_of(endpoint)
    if store.create(SOURCE_KEY, json_bytes({"source": source, "timezone": timezone})):
        return
    recorded = json.loads(store.read_bytes(SOURCE_KEY))
    theirs = recorded.get("source")
    if theirs != source:
        hint = ""
        if source == SIMULATOR:
            hint = f"; the demo's data go to {DEMO_DATA_DIR} (unset CDR_DATA_DIR)"
        elif theirs == SIMULATOR:
            hint = f"; this is the demo's folder, a real API's days go to {LIVE_DATA_DIR} "
            hint += "(unset CDR_DATA_DIR)"
        raise OtherSource(
            f"{store.url} holds calls from {theirs}; this run fetches from {source}, and the "
            f"two never mix in one data directory: set CDR_DATA_DIR to another folder{hint}"
        )
    zone = recorded.get("timezone")
    if zone is None:  # recorded before the zone was: the zone of its days from now on
        store.put(SOURCE_KEY, json_bytes(recorded | {"timezone": timezone}))
    elif zone != timezone:
        raise OtherSource(
            f"{store.url} holds days cut in {zone}; this run cuts them in {timezone} "
            "(CDR_TIMEZONE), and days cut in two zones overlap, so a call would count in two "
            f"days or in none: set CDR_TIMEZONE={zone}, or CDR_DATA_DIR to another folder"
        )


def check_cut(manifest: dict[str, Any], day: Day, timezone: str) -> None:
    """A raw day is built as the day it was fetched for: the same window, so the same zone."""
    window = manifest.get("day_window")  # (a manifest made by hand may not say)
    if window is not None and window != [day.start, day.end]:
        fetched = " to ".join(_iso(t) for t in window)
        raise StorageError(
            f"{day.key}: its raw layer was fetched for {fetched}, not for {day.key} in "
            f"{timezone} ({_iso(day.start)} to {_iso(day.end)}): its days were cut in "
            f"another CDR_TIMEZONE, which must be set back (the zone {SOURCE_KEY} names)"
        )


def body_name(body: bytes, encoding: str) -> tuple[str, str]:
    digest = hashlib.sha256(body).hexdigest()
    return f"{digest}.{ENCODING_EXT[encoding]}", digest


def _is_body_name(name: str) -> bool:
    digest, _, ext = name.partition(".")
    return len(digest) == 64 and set(digest) <= _BODY_CHARS and ext in ENCODING_EXT.values()


def _is_ours(name: str) -> bool:
    """A file of a raw day folder the pipeline wrote: the manifest, a body, or a temporary of
    either. Nothing else there is ever deleted (an operator's notes, an export)."""
    if name.startswith(".") and name.endswith(".tmp"):
        name = name[1:].rsplit(".", 2)[0]
    return name == MANIFEST or _is_body_name(name)


def write_raw_day(store: Store, day: str, bodies: list[tuple[bytes, str]], manifest: dict) -> str:
    """Store bodies under their hash, then commit the day by replacing ``manifest.json``."""
    folder = raw_day_key(day)
    present = set(store.list(folder))
    keep = {MANIFEST}
    added: list[str] = []
    try:
        for body, encoding in bodies:
            name, _ = body_name(body, encoding)
            keep.add(name)
            if name not in present:
                store.put(f"{folder}/{name}", body)
                present.add(name)
                added.append(name)
        store.put(manifest_key(day), json_bytes(manifest))
    except BaseException:  # a full disk, a permission: no orphan bodies are left
        for name in added:
            store.delete(f"{folder}/{name}")
        raise
    for entry in present - keep:
        if _is_ours(entry):
            store.delete(f"{folder}/{entry}")
    return store.uri(folder)


def replace_raw_bodies(
    store: Store, day: str, changed: dict[str, tuple[bytes, str]], manifest: dict
) -> None:
    """Replace some bodies of a committed day (an erasure's: old name -> new body): the new
    ones stored under their hash, the day committed by replacing ``manifest.json``, then the
    old ones no entry names any more removed; the others are never read or held."""
    folder = raw_day_key(day)
    present = set(store.list(folder))
    added: list[str] = []
    try:
        for body, encoding in changed.values():
            name, _ = body_name(body, encoding)
            if name not in present:
                store.put(f"{folder}/{name}", body)
                present.add(name)
                added.append(name)
        store.put(manifest_key(day), json_bytes(manifest))
    except BaseException:  # the old manifest still names the old bodies: the day is whole
        for name in added:
            store.delete(f"{folder}/{name}")
        raise
    named = {entry["file"] for entry in manifest["requests"]}
    for old in set(changed) - named:
        if _is_ours(old):
            store.delete(f"{folder}/{old}")


def raw_days(store: Store) -> list[str]:
    """The days the raw layer holds a folder for (with or without a manifest)."""
    return [name.removeprefix("date=") for name in store.folders(RAW_ROOT) if is_day(name)]


def prune_raw_day(store: Store, day: str) -> int:
    """Remove a day's raw bodies; return how many files went. The manifest goes first: it is
    the commit record, so from then on the day has no raw layer (a re-validation says so
    plainly), and a prune cut short leaves only bodies no manifest lists, which the next prune
    (or the day's next fetch) removes. The validated datasets are not touched."""
    names = pipeline_files(store, day)
    if MANIFEST in names:
        store.delete(manifest_key(day))
    folder = raw_day_key(day)
    for name in names:
        if name != MANIFEST:
            store.delete(f"{folder}/{name}")
    store.remove_folder(folder)  # stays if anything not ours is left in it
    return len(names)


def pipeline_files(store: Store, day: str) -> list[str]:
    """The files of a raw day the pipeline wrote (what a prune removes)."""
    return [name for name in store.list(raw_day_key(day)) if _is_ours(name)]


def read_raw_manifest(store: Store, day: str) -> dict:
    key = manifest_key(day)
    try:
        return json.loads(store.read_bytes(key))
    except FileNotFoundError:
        raise StorageError(
            f"no raw CDRs for {day}: materialize the raw asset first ({store.uri(key)})"
        ) from None
    except ValueError as exc:  # written whole: only a disk or a hand can have damaged it
        raise StorageError(f"{store.uri(key)} is damaged ({exc}): fetch {day} again") from None


def manifest_digest(manifest: dict) -> str:
    """Which version of the raw layer a build read (an erasure names the version it
    changed): the sha256 of its manifest without the time it was fetched, so the same
    answers fetched twice, or into another store, are the same version."""
    content = {k: v for k, v in manifest.items() if k != "fetched_at"}
    return hashlib.sha256(json_bytes(content)).hexdigest()


def read_raw_body(store: Store, day: str, entry: dict) -> bytes:
    """One body the manifest lists, checked against its sha256 (thread-safe)."""
    name = entry["file"]
    if not _is_body_name(name):
        raise StorageError(f"raw manifest of {day} names an unexpected file {name!r}")
    body = store.read_bytes(f"{raw_day_key(day)}/{name}")
    if hashlib.sha256(body).hexdigest() != entry["sha256"]:
        raise StorageError(f"raw body {name} of {day} does not match its sha256")
    return body


# A decoded page as the transform takes it: its JSON, its file (named in rejects), its window.
Page = tuple[bytes, str, list[int]]
# Decoded pages handed to the transform at once: large enough that the per-batch work is
# small beside the parse, small enough that memory does not grow with the day
# (docs/performance.md).
BATCH_BYTES = 4 * 1024 * 1024
READ_AHEAD = 8  # bodies read and inflated ahead of the batch being filled
# A page that inflates past a batch is cut into slices of whole records about this large (as
# pages usually are): larger slices cost more memory in parsing, measured in
# benchmarks/RESULTS.md ("A day served as one page").
SLICE_BYTES = 1024 * 1024


def _body_pieces(store: Store, day: str, entry: dict) -> Iterator[bytes]:
    """A raw body read a piece at a time, checked against its sha256 at the end (a body too
    large to hold: a corrupt one fails the day, which then publishes nothing)."""
    name = entry["file"]
    if not _is_body_name(name):
        raise StorageError(f"raw manifest of {day} names an unexpected file {name!r}")
    digest = hashlib.sha256()
    with store.open_input(f"{raw_day_key(day)}/{name}") as source:
        while piece := source.read(1 << 20):
            digest.update(piece)
            yield piece
    if digest.hexdigest() != entry["sha256"]:
        raise StorageError(f"raw body {name} of {day} does not match its sha256")


def decoded_pages(store: Store, day: str, entry: dict[str, Any], max_bytes: int) -> Iterable[Page]:
    """A raw body's page, whole; or, when it is large (a provider that serves a day as one
    page), its records a slice of :data:`SLICE_BYTES` at a time, read and inflated as they
    are parsed, so memory holds a few slices and never the page."""
    large = entry.get("bytes", 0) > BATCH_BYTES  # as received, compressed
    body = _body_pieces(store, day, entry) if large else [read_raw_body(store, day, entry)]
    pieces = inflate(body, max_bytes=max_bytes, chunk=BATCH_BYTES)
    first = next(pieces, b"")
    second = next(pieces, None)
    if second is None:
        return [(first, entry["file"], entry["window"])]
    slices = page_slices(itertools.chain([first, second], pieces), SLICE_BYTES)
    return ((piece, entry["file"], entry["window"]) for piece in slices)


def decoded_batches(store: Store, day: str, manifest: dict[str, Any]) -> Iterator[list[Page]]:
    """The day's raw bodies, read, checked and decompressed a few ahead on other threads
    (hashing and zlib release the GIL), in batches of about :data:`BATCH_BYTES`."""
    max_bytes = manifest.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES)

    def decode(entry: dict[str, Any]) -> Iterable[Page]:
        return decoded_pages(store, day, entry, max_bytes)

    batch: list[Page] = []
    size = 0
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="inflate") as pool:
        pending: deque[Future[Iterable[Page]]] = deque()
        for entry in [*manifest["requests"], *[None] * READ_AHEAD]:
            if entry is not None:
                pending.append(pool.submit(decode, entry))
            if (entry is not None and len(pending) < READ_AHEAD) or not pending:
                continue
            for page in pending.popleft().result():
                batch.append(page)
                size += len(page[0])
                if size >= BATCH_BYTES:
                    yield batch
                    batch, size = [], 0
    if batch:
        yield batch
