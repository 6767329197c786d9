"""One window's listing: its pages, following the server's cursors, and splitting the window
in two when the server ignores them (every record of the window is still fetched)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cdr_pipeline.api.errors import FatalApiError, describe_window
from cdr_pipeline.api.redact import get_logger

if TYPE_CHECKING:
    from cdr_pipeline.api.client import CdrApiClient

log = get_logger(__name__)
Window = tuple[int, int]
# The narrowest window a truncating server's window is split down to.
MIN_WINDOW_S = 1


@dataclass(frozen=True)
class Exchange:
    """One successful response, kept exactly as received."""

    window: Window
    cursor_sent: str | None
    cursor_received: str | None
    attempts: int
    body: bytes
    encoding: str
    decoded_bytes: int
    record_count: int
    records: list[Any] = field(repr=False, compare=False)
    truncated: bool = False  # the server said there is more (a cursor to follow)


def page(client: CdrApiClient, window: Window, src: str | None, cursor: str | None) -> Exchange:
    """One page of a window's listing: the first (no cursor) or the one a cursor names."""
    params = {"startTimeStamp": str(window[0]), "endTimeStamp": str(window[1])}
    if src:
        params["src"] = src
    if cursor is not None:
        params["offset"] = cursor
    doc, body, encoding, size, attempts = client.request(params, window=window)
    client.count("pages")
    return Exchange(
        window,
        cursor,
        doc.offset,
        attempts,
        body,
        encoding,
        size,
        len(doc.records),
        doc.records,
        doc.truncated,
    )


def follow(
    client: CdrApiClient, window: Window, src: str | None, first: Exchange | None = None
) -> list[Exchange]:
    """Follow a window's cursors to the end (from ``first`` if it was fetched already)."""
    pages: list[Exchange] = []
    seen: set[str] = set()
    cursor: str | None = None
    current = first
    cap = client.settings.max_pages_per_query
    while True:
        if current is None:
            current = page(client, window, src, cursor)
        if not current.truncated:
            pages.append(current)
            return pages
        received = str(current.cursor_received)
        if cursor is not None and received == cursor:
            return _split(client, window, src, len(pages) + 1)
        if received in seen:
            raise FatalApiError(
                f"the server's cursor {received!r} repeated after {len(pages) + 1} pages",
                window=window,
                hint="the provider's paging loops; report it, and try a smaller window_hours",
                kind="paging",
            )
        pages.append(current)
        seen.add(received)
        if len(pages) >= cap:
            raise FatalApiError(
                f"more than {cap} pages for one query",
                window=window,
                hint="lower window_hours, or raise max_pages_per_query if this is real volume",
                kind="paging",
            )
        cursor, current = received, None


def _split(client: CdrApiClient, window: Window, src: str | None, discarded: int) -> list[Exchange]:
    start, end = window
    if end - start <= MIN_WINDOW_S:
        raise FatalApiError(
            "the server truncates even a one-second window and ignores the cursor, "
            "so some records of it cannot be fetched",
            window=window,
            hint="ask the provider for a larger page size; the day is not published partially",
            kind="paging",
        )
    client.count("window_splits")
    client.count("pages_discarded", discarded)
    log.info("server ignored the cursor; splitting %s in two", describe_window(window))
    mid = (start + end) // 2
    # Halves share their boundary second: the API may treat the end as exclusive.
    return follow(client, (start, mid), src) + follow(client, (mid, end), src)
