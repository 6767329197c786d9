"""An httpx client of getCdr that is right about retries, paging, truncation and secrets.

It knows nothing of Dagster: it takes windows in epoch seconds and returns every response
body it kept, exactly as received, with what it took to get it.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from queue import Empty, PriorityQueue
from typing import Any
from urllib.parse import urlsplit

import httpx

from cdr_pipeline.api.errors import (
    CdrApiError,
    FatalApiError,
    MalformedResponseError,
    RetriesExhaustedError,
    TransientApiError,
    TransportError,
    describe_window,
    error_for_code,
)
from cdr_pipeline.api.wire import (
    Document,
    decode_body,
    encode_request,
    install_log_redaction,
    parse_document,
    redact,
    register_secret,
)
from cdr_pipeline.settings import ClientSettings, check_endpoint

log = logging.getLogger(__name__)
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


class TokenBucket:
    """A thread-safe requests-per-second limit shared by every worker of a client."""

    def __init__(
        self, rate: float, burst: float | None = None, clock=time.monotonic, sleep=time.sleep
    ):
        self.rate = rate
        # No burst by default: a rate of N/s never lets more than N requests out in a second.
        self.capacity = burst if burst is not None else 1.0
        self.tokens = self.capacity
        self.clock, self.sleep = clock, sleep
        self.updated = clock()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        if self.rate <= 0:
            return
        while True:
            with self.lock:
                now = self.clock()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            self.sleep(wait)


class CdrApiClient:
    """Talks to one getCdr endpoint with one set of credentials."""

    def __init__(
        self,
        url: str,
        api_id: str,
        app_id: str,
        settings: ClientSettings | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = check_endpoint(url)
        self.settings = settings or ClientSettings()
        register_secret(api_id)
        register_secret(app_id)
        install_log_redaction()
        self._api_id = api_id
        self._app_id = app_id
        self._sleep = sleep
        self._jitter = random.Random()
        self._bucket = TokenBucket(self.settings.rate_limit_per_s)
        self._stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        # Until one request has succeeded, requests go one at a time, so a fatal answer
        # (a wrong id, -423) costs exactly one request however many workers are waiting;
        # after a fatal answer the client sends nothing more.
        self._proven = False
        self._probe = threading.Lock()
        self._halted: CdrApiError | None = None
        s = self.settings
        self._http = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(s.read_timeout_s, connect=s.connect_timeout_s),
            limits=httpx.Limits(max_connections=max(4, s.concurrency * 2)),
            follow_redirects=False,
            headers={
                "User-Agent": "cdr-pipeline",
                "Content-Type": "application/json; charset=utf-8",
            },
        )

    def __repr__(self) -> str:
        return f"CdrApiClient(host={urlsplit(self.url).hostname!r}, credentials=<redacted>)"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CdrApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> dict[str, int]:
        with self._stats_lock:
            return dict(self._stats)

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[name] += n

    # --- one request, with retries --------------------------------------------------

    def _post_once(self, params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        cap = self.settings.max_body_bytes
        with self._http.stream(
            "POST", self.url, params={"id": self._api_id}, content=encode_request(params)
        ) as resp:
            chunks, size = [], 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > cap:
                    raise FatalApiError(
                        f"response body passed the cap of {cap} bytes while downloading",
                        kind="response-too-large",
                    )
                chunks.append(chunk)
            return resp.status_code, dict(resp.headers), b"".join(chunks)

    def _request(
        self, params: dict[str, str], *, window: Window | None = None, call_id: str | None = None
    ) -> tuple[Document, bytes, str, int, int]:
        """Send one logical request; return (document, body, encoding, decoded size, attempts)."""
        if not self._proven:
            with self._probe:
                if not self._proven:
                    result = self._guarded(params, window, call_id)
                    self._proven = True
                    return result
        return self._guarded(params, window, call_id)

    def _guarded(
        self, params: dict[str, str], window: Window | None, call_id: str | None
    ) -> tuple[Document, bytes, str, int, int]:
        if self._halted is not None:
            raise self._halted
        try:
            return self._attempts(params, window=window, call_id=call_id)
        except CdrApiError as exc:
            if exc.code != "-201":  # an unknown callId says nothing about the account
                self._halted = exc
            raise

    def _attempts(
        self, params: dict[str, str], *, window: Window | None = None, call_id: str | None = None
    ) -> tuple[Document, bytes, str, int, int]:
        s = self.settings
        full = {"appId": self._app_id, **params}
        if s.compress:
            full["compress"] = "1"
        last: CdrApiError | None = None
        for attempt in range(1, s.max_attempts + 1):
            self._bucket.acquire()
            self._count("requests")
            ctx = {"window": window, "call_id": call_id}
            try:
                status, headers, body = self._post_once(full)
            except httpx.TimeoutException as exc:
                last = TransportError(f"the request timed out ({type(exc).__name__})", **ctx)
            except httpx.TransportError as exc:
                last = TransportError(
                    f"the connection failed ({type(exc).__name__}: {redact(str(exc))[:200]})", **ctx
                )
            else:
                self._count("bytes_received", len(body))
                if status == 429 or status >= 500:
                    last = TransientApiError(
                        "the server is overloaded or failing",
                        http_status=status,
                        retry_after=_retry_after(headers.get("retry-after")),
                        **ctx,
                    )
                elif status >= 400 or status < 200 or status >= 300:
                    hint = (
                        "check CDR_API_URL (host and path)"
                        if status in (301, 302, 404)
                        else "check the endpoint and credentials"
                    )
                    raise FatalApiError(
                        "the server refused the request", http_status=status, hint=hint, **ctx
                    )
                else:
                    try:
                        decoded, encoding = decode_body(body, max_bytes=s.max_body_bytes)
                        doc = parse_document(decoded)
                    except MalformedResponseError as exc:
                        exc.window, exc.call_id = window, call_id
                        last = exc
                    except FatalApiError as exc:  # a body past the cap
                        exc.window, exc.call_id = window, call_id
                        raise
                    else:
                        if doc.error_code == "0":
                            return doc, body, encoding, len(decoded), attempt
                        err = error_for_code(doc.error_code, doc.result, http_status=status, **ctx)
                        if not err.retryable:
                            raise err
                        last = err
            self._count("retries")
            log.info("getCdr attempt %d of %d failed: %s", attempt, s.max_attempts, last)
            if attempt < s.max_attempts:
                self._sleep(self._backoff(attempt, getattr(last, "retry_after", None)))
        assert last is not None
        raise RetriesExhaustedError(
            f"gave up after {s.max_attempts} attempts; the last one failed with: {last.message}",
            code=last.code,
            meaning=last.meaning,
            http_status=last.http_status,
            hint="the provider kept failing; the partition can be re-run later",
            window=window,
            call_id=call_id,
            attempts=s.max_attempts,
            last=last,
        )

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        s = self.settings
        if retry_after is not None:
            return min(s.backoff_max_s, retry_after)
        base = min(s.backoff_max_s, s.backoff_base_s * 2 ** (attempt - 1))
        return base * (0.5 + self._jitter.random() / 2)

    # --- queries --------------------------------------------------------------------

    def lookup(self, call_id: str) -> dict[str, Any] | None:
        """One call's CDR, or None when the provider says the callId is unknown (-201)."""
        try:
            doc, *_ = self._request({"callId": call_id}, call_id=call_id)
        except CdrApiError as exc:
            if exc.code == "-201":
                return None
            raise
        return doc.records[0] if doc.records else None

    def query_window(self, start: int, end: int, src: str | None = None) -> list[Exchange]:
        """Every response needed to hold all records of ``[start, end]``, following cursors
        and splitting the window when the server ignores them."""
        if start > end:
            raise ValueError(f"window start {start} is after its end {end}")
        return self._list((start, end), src)

    def _page(self, window: Window, src: str | None, cursor: str | None) -> Exchange:
        """One page of a window's listing: the first (no cursor) or the one a cursor names."""
        base = {"startTimeStamp": str(window[0]), "endTimeStamp": str(window[1])}
        if src:
            base["src"] = src
        params = dict(base, offset=cursor) if cursor is not None else base
        doc, body, encoding, size, attempts = self._request(params, window=window)
        self._count("pages")
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

    def _list(
        self, window: Window, src: str | None, first: Exchange | None = None
    ) -> list[Exchange]:
        """Follow a window's cursors to the end (from ``first`` if it was fetched already)."""
        pages: list[Exchange] = []
        seen: set[str] = set()
        cursor: str | None = None
        page = first
        while True:
            if page is None:
                page = self._page(window, src, cursor)
            if not page.truncated:
                pages.append(page)
                return pages
            received = str(page.cursor_received)
            if cursor is not None and received == cursor:
                return self._split(window, src, len(pages) + 1)
            if received in seen:
                raise FatalApiError(
                    f"the server's cursor {received!r} repeated after {len(pages) + 1} pages",
                    window=window,
                    hint="the provider's paging loops; report it, and try a smaller window_hours",
                    kind="paging",
                )
            pages.append(page)
            seen.add(received)
            if len(pages) >= self.settings.max_pages_per_query:
                raise FatalApiError(
                    f"more than {self.settings.max_pages_per_query} pages for one query",
                    window=window,
                    hint="lower window_hours, or raise max_pages_per_query if this is real volume",
                    kind="paging",
                )
            cursor, page = received, None

    def _split(self, window: Window, src: str | None, discarded: int) -> list[Exchange]:
        start, end = window
        if end - start <= MIN_WINDOW_S:
            raise FatalApiError(
                "the server truncates even a one-second window and ignores the cursor, "
                "so some records of it cannot be fetched",
                window=window,
                hint="ask the provider for a larger page size; the day is not published partially",
                kind="paging",
            )
        self._count("window_splits")
        self._count("pages_discarded", discarded)
        log.info("server ignored the cursor; splitting %s in two", describe_window(window))
        mid = (start + end) // 2
        # Halves share their boundary second: the API may treat the end as exclusive.
        return self._list((start, mid), src) + self._list((mid, end), src)

    def fetch_windows(
        self, windows: Sequence[Window], src: str | None = None
    ) -> Iterator[tuple[Window, list[Exchange]]]:
        """Query several windows with bounded concurrency; results come back in order.

        A window's pages must be fetched one after another (each needs the last cursor), so
        what bounds the wall time is the longest chain. The first page of every window is
        fetched before any chain goes on; it shows how much of its window one page covered.
        The chains then run longest-expected first, and a chain expected to take more than
        its share of all the pages (a busy window, or fewer windows than workers) is split
        into parts that run side by side: its first page is set aside and each part is
        listed from scratch (parts share their boundary second, like all windows). Which
        chains are split is decided from the first pages alone, once all are in, so the same
        answers give the same requests whatever the timing. Every record of every window is
        still fetched."""
        if self.settings.concurrency <= 1:
            for w in windows:
                yield w, self.query_window(w[0], w[1], src)
            return
        workers = self.settings.concurrency  # more than windows: parts of a split use them
        # With at least two windows a worker, the longest-first order keeps every worker busy
        # to the end; below that, a chain can outlast the rest, and the split is worth the
        # wait for all first pages that deciding it takes.
        splitting = self.settings.split_stragglers and len(windows) < 2 * workers
        # (priority, tie-break, window index, (part of) its window, its first page if fetched,
        # whether it is a part of a split window)
        tasks: PriorityQueue[tuple[float, int, int, Window, Exchange | None, bool]] = (
            PriorityQueue()
        )
        order = itertools.count()
        for i, w in enumerate(windows):
            tasks.put((-_FIRST_PAGE_EXPECTED, next(order), i, w, None, False))
        results: dict[int, list[Exchange] | BaseException] = {}
        parts: dict[int, dict[Window, list[Exchange]]] = {i: {} for i in range(len(windows))}
        open_parts = dict.fromkeys(range(len(windows)), 1)
        done = threading.Condition()
        stop = threading.Event()
        # The plan: each worker's share of all pages, known once every first page is in;
        # chains long enough to be split wait for it.
        plan: dict[str, float | None] = {"waiting": len(windows), "pages": 0.0, "share": None}
        held: list[tuple[int, Window, Exchange]] = []
        rates: dict[int, float | None] = {}  # calls per second at the start of each window

        def finish(i: int, window: Window, result: list[Exchange] | BaseException) -> None:
            with done:
                if i in results:
                    return  # the window failed already
                if isinstance(result, BaseException):
                    results[i] = result
                else:
                    parts[i][window] = result
                    open_parts[i] -= 1
                    if open_parts[i]:
                        return
                    results[i] = [page for w in sorted(parts[i]) for page in parts[i][w]]
                done.notify_all()

        def cuts(window: Window, expected: float) -> int:
            """How many parts a chain of ``expected`` more pages is cut into (1: none)."""
            share = plan["share"]
            if not splitting or share is None or expected <= _SPLIT_ABOVE * share:
                return 1
            span = window[1] - window[0]
            target = max(_PART_OF_SHARE * share, 1.0)
            return max(1, min(math.ceil(expected / target), workers, span))

        def schedule(
            i: int, window: Window, first: Exchange, expected: float | None = None
        ) -> None:
            """A truncated first page: queue the rest of its chain, or cut it into parts."""
            expected = _pages_left(first) if expected is None else expected
            k = cuts(window, expected)
            if k == 1:
                tasks.put((-expected, next(order), i, window, first, False))
                return
            self._count("chain_splits")
            self._count("pages_discarded")
            edges = [window[0] + (window[1] - window[0]) * j // k for j in range(k)]
            edges.append(window[1])
            with done:
                open_parts[i] += k - 1
            for part in itertools.pairwise(edges):
                tasks.put((-(expected + 1) / k, next(order), i, part, None, True))

        def first_page_of_window(
            i: int, page: Exchange | None
        ) -> list[tuple[int, Window, Exchange, float]]:
            """Count a window's first page in (None: it failed); the held chains to schedule
            once it was the last one."""
            left = _pages_left(page) if page is not None and page.truncated else 0.0
            with done:
                plan["waiting"] -= 1
                plan["pages"] += 1 + left
                if page is not None and page.truncated:
                    if splitting and left >= _STRAGGLER_MIN_PAGES and plan["share"] is None:
                        held.append((i, page.window, page))
                    else:
                        tasks.put((-left, next(order), i, page.window, page, False))
                if page is not None:
                    rates[page.window[0]] = _calls_per_s(page)
                if plan["waiting"] or plan["share"] is not None:
                    return []
                release = [
                    (j, w, first, _refined_pages_left(first, rates.get(w[1])))
                    for j, w, first in held
                ]
                held[:] = []
                plan["pages"] += sum(left - _pages_left(first) for _, _, first, left in release)
                plan["share"] = plan["pages"] / workers
            return release

        def work() -> None:
            while not stop.is_set():
                try:
                    _, _, i, window, first, is_part = tasks.get(timeout=0.05)
                except Empty:
                    if len(results) == len(windows):
                        return
                    continue
                result: list[Exchange] | BaseException
                try:
                    if first is not None:
                        result = self._list(window, src, first)
                    elif is_part:
                        page = self._page(window, src, None)
                        if page.truncated:
                            schedule(i, window, page)
                            continue
                        result = [page]
                    else:
                        try:
                            page = self._page(window, src, None)
                        except BaseException:
                            for args in first_page_of_window(i, None):
                                schedule(*args)
                            raise
                        for args in first_page_of_window(i, page):
                            schedule(*args)
                        if page.truncated:
                            continue
                        result = [page]
                except BaseException as exc:  # handed to the caller, in window order
                    result = exc
                finish(i, window, result)

        threads = [
            threading.Thread(target=work, name=f"getCdr-{n}", daemon=True) for n in range(workers)
        ]
        for thread in threads:
            thread.start()
        try:
            for i, w in enumerate(windows):
                with done:
                    done.wait_for(lambda i=i: i in results)
                    result = results[i]
                if isinstance(result, BaseException):
                    raise result
                yield w, result
        finally:
            stop.set()
            for thread in threads:
                thread.join()


# Every window's first page goes before any chain: only with all of them in are the chains'
# lengths known, and longest-first packs the workers well only then. (Starting a long chain as
# soon as its first page was in, ahead of other windows' first pages, found the busiest windows
# late and left workers idle at the end: 1.14x of ideal against 1.09x on a 200k-call day.)
_FIRST_PAGE_EXPECTED = math.inf
# A chain this short is never split: its parts would cost about as many requests again.
_STRAGGLER_MIN_PAGES = 3
# A chain expected to take more than this part of a worker's share of all pages is cut into
# parts of about _PART_OF_SHARE of it: estimates from one page are rough (calls are not
# spread evenly over a window), and small parts pack the workers evenly whatever the error.
_SPLIT_ABOVE = 0.75
_PART_OF_SHARE = 0.5


def _covered_s(page: Exchange) -> int | None:
    """How many seconds of its window a page reached into, from its records' start times
    (records usually come in time order); None when that cannot be told."""
    start, end = page.window
    latest = start
    for record in page.records:
        value = record.get("startSrcCallTime") if isinstance(record, dict) else None
        if isinstance(value, str) and value.isdigit() and len(value) <= 11:
            latest = max(latest, int(value))
    covered = latest - start
    return covered if 0 < covered <= end - start else None


def _pages_left(page: Exchange) -> float:
    """How many more pages a window probably has, from how far into it its first page got
    (if records are not in time order, this only changes the order and split of work)."""
    covered = _covered_s(page)
    if covered is None:
        return 2.0
    return max(1.0, (page.window[1] - page.window[0]) / covered - 1)


def _calls_per_s(page: Exchange) -> float | None:
    """The call rate at the start of a page's window: the whole window's when the page
    holds all of it."""
    span = page.window[1] - page.window[0]
    if not page.truncated:
        return page.record_count / max(1, span)
    covered = _covered_s(page)
    return None if covered is None else page.record_count / covered


def _refined_pages_left(page: Exchange, rate_at_end: float | None) -> float:
    """Pages a window probably has left, from the call rate at its start and at its end (the
    next window's first page): traffic ramps up and down over a day, and one page's view of
    a window's first minutes alone misjudges busy windows by half."""
    rate_at_start = _calls_per_s(page)
    if rate_at_start is None or rate_at_end is None or not page.record_count:
        return _pages_left(page)
    span = page.window[1] - page.window[0]
    calls = span * (rate_at_start + rate_at_end) / 2
    return max(1.0, calls / page.record_count - 1)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


__all__ = ["CdrApiClient", "ClientSettings", "Exchange", "TokenBucket"]
