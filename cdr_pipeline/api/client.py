"""An httpx client of getCdr that is right about retries, paging, truncation and secrets.

It knows nothing of Dagster: it takes windows in epoch seconds and returns every response
body it kept, exactly as received, with what it took to get it.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
import tenacity

from cdr_pipeline.api.errors import (
    CdrApiError,
    FatalApiError,
    RetriesExhaustedError,
    TransientApiError,
    TransportError,
    error_for_code,
)
from cdr_pipeline.api.fetch import fetch_windows
from cdr_pipeline.api.paging import Exchange, follow
from cdr_pipeline.api.redact import get_logger, install_log_redaction, redact, register_secret
from cdr_pipeline.api.retry import RetryPolicy, retry_after_seconds
from cdr_pipeline.api.transport import DeadlinePassed, deadline
from cdr_pipeline.api.transport import transport as http_transport
from cdr_pipeline.api.wire import (
    Document,
    decode_body,
    encode_request,
    parse_document,
)
from cdr_pipeline.settings import ClientSettings, check_endpoint

log = get_logger(__name__)
Window = tuple[int, int]


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
        self._policy = RetryPolicy(
            self.settings.max_attempts,
            self.settings.backoff_base_s,
            self.settings.backoff_max_s,
            sleep=sleep,
        )
        self._bucket = TokenBucket(self.settings.rate_limit_per_s)
        self._stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        # Until one request has succeeded, requests go one at a time, so a fatal answer
        # (a wrong id, -423) costs exactly one request however many workers are waiting;
        # after a fatal answer the client sends nothing more.
        self._proven = False
        self._probe = threading.Lock()
        self._halted: CdrApiError | None = None
        # One body inflated and parsed at a time: each may grow to max_body_bytes, and a bomb
        # answered to every worker at once must not cost that many times over. (Inflating
        # is fast and parsing holds the GIL anyway: the lock costs next to nothing.)
        self._decoding = threading.Lock()
        s = self.settings
        self._http = httpx.Client(
            transport=transport or http_transport(self.url, s),
            timeout=httpx.Timeout(s.read_timeout_s, connect=s.connect_timeout_s),
            follow_redirects=False,
            headers={
                "User-Agent": "cdr-pipeline",
                "Content-Type": "application/json; charset=utf-8",
                # bodies are stored as sent, and decoded by what they hold (wire.decode_body):
                # a wrong Content-Encoding header cannot break them
                "Accept-Encoding": "identity",
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

    def count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[name] += n

    # --- one request, with retries --------------------------------------------------

    def _post_once(self, params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        cap = self.settings.max_body_bytes
        with (
            deadline(self.settings.deadline_s),
            self._http.stream(
                "POST", self.url, params={"id": self._api_id}, content=encode_request(params)
            ) as resp,
        ):
            chunks, size = [], 0
            for chunk in resp.iter_raw():
                size += len(chunk)
                if size > cap:
                    raise FatalApiError(
                        f"response body passed the cap of {cap} bytes while downloading",
                        kind="response-too-large",
                    )
                chunks.append(chunk)
            return resp.status_code, dict(resp.headers), b"".join(chunks)

    def request(
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
        ctx = {"window": window, "call_id": call_id}

        def failed(state: tenacity.RetryCallState) -> None:
            self.count("retries")

        def waiting(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            brief = exc.brief if isinstance(exc, CdrApiError) else type(exc).__name__
            # ``retry`` is for whoever shows progress (the CLI's progress line)
            retry = {
                "attempt": state.attempt_number,
                "of": s.max_attempts,
                "reason": brief,
                "wait_s": state.upcoming_sleep,
            }
            log.info(
                "getCdr attempt %(attempt)d of %(of)d failed (%(reason)s); the next in "
                "%(wait_s).1f s: %(error)s",
                retry | {"error": exc},
                extra={"retry": retry},
            )

        try:
            for attempt in self._policy.retrying(after=failed, before_sleep=waiting):
                with attempt:
                    doc, body, encoding, size = self._once(full, ctx)
                    return doc, body, encoding, size, attempt.retry_state.attempt_number
        except tenacity.RetryError as exc:
            last = exc.last_attempt.exception()
            assert isinstance(last, CdrApiError)
            raise RetriesExhaustedError(
                f"gave up after {s.max_attempts} attempts; the last one failed with: "
                f"{last.message}",
                code=last.code,
                meaning=last.meaning,
                http_status=last.http_status,
                hint="the provider kept failing; the partition can be re-run later",
                window=window,
                call_id=call_id,
                attempts=s.max_attempts,
                last=last,
            ) from None
        raise AssertionError("unreachable: tenacity returns or raises")

    def _once(self, full: dict[str, str], ctx: dict[str, Any]) -> tuple[Document, bytes, str, int]:
        """One attempt: its document, or a transient error to retry (raised like a fatal
        one; the policy tells them apart)."""
        self._bucket.acquire()
        self.count("requests")
        try:
            status, headers, body = self._post_once(full)
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.settings, ctx, first=not self._proven) from None
        self.count("bytes_received", len(body))
        if not 200 <= status < 300:
            raise _http_error(status, headers, ctx)
        try:
            with self._decoding:
                decoded, encoding = decode_body(body, max_bytes=self.settings.max_body_bytes)
                doc = parse_document(decoded)
        except CdrApiError as exc:  # malformed (transient) or past the cap (fatal)
            exc.window, exc.call_id = ctx["window"], ctx["call_id"]
            raise
        if doc.error_code != "0":
            raise error_for_code(doc.error_code, doc.result, http_status=status, **ctx)
        return doc, body, encoding, len(decoded)

    # --- queries --------------------------------------------------------------------

    def lookup(self, call_id: str) -> dict[str, Any] | None:
        """One call's CDR, or None when the provider says the callId is unknown (-201)."""
        try:
            doc, *_ = self.request({"callId": call_id}, call_id=call_id)
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
        return follow(self, (start, end), src)

    def fetch_windows(
        self, windows: Sequence[Window], src: str | None = None
    ) -> Iterator[tuple[Window, list[Exchange]]]:
        """Several windows with bounded concurrency, planned from their first pages
        (:mod:`cdr_pipeline.api.plan`); results come back in window order."""
        return fetch_windows(self, windows, src)


def _transport_error(
    exc: httpx.TransportError, settings: ClientSettings, ctx: dict[str, Any], *, first: bool
) -> CdrApiError:
    """What a failed exchange means: a transient error to retry, or (raised) one that is this
    deployment's to fix: a certificate that does not verify, or, before the endpoint ever
    answered, a refused connection, a host name that does not resolve or a failed TLS
    handshake (a mistake in CDR_API_URL, not an outage worth minutes of retries)."""
    if isinstance(exc, DeadlinePassed):
        return TransportError(
            f"the request passed its total deadline of {settings.deadline_s:g} s (the server "
            "is answering too slowly)",
            **ctx,
        )
    if isinstance(exc, httpx.TimeoutException):
        return TransportError(f"the request timed out ({type(exc).__name__})", **ctx)
    text = f"{type(exc).__name__}: {redact(str(exc))[:200]}"
    if isinstance(exc, httpx.ConnectError) and _certificate_failed(exc):
        raise FatalApiError(
            f"the server's TLS certificate was not accepted ({text})",
            hint="the endpoint's certificate does not verify against this machine's CA bundle: "
            "fix the certificate, or point SSL_CERT_FILE at the CA bundle that signs it "
            "(never turn verification off)",
            kind="tls",
            **ctx,
        ) from None
    if first and (unreachable := _unreachable(exc)):
        what, hint = unreachable
        raise FatalApiError(f"{what} ({text})", hint=hint, kind="unreachable", **ctx) from None
    return TransportError(f"the connection failed ({text})", **ctx)


def _unreachable(exc: BaseException) -> tuple[str, str] | None:
    """Why nothing could answer, and what to check: a refused connection, an unknown host, a
    failed TLS handshake; None otherwise (a timeout, a reset, or a name server that failed for
    now may pass)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return (
                "the connection was refused: nothing listens at that host and port",
                "check the port of CDR_API_URL (https is 443 unless it says otherwise), and "
                "that no firewall or proxy (HTTPS_PROXY) stands between",
            )
        if isinstance(seen, socket.gaierror) and seen.errno != socket.EAI_AGAIN:
            return (
                "the host name does not resolve",
                "check the host name in CDR_API_URL for a typo, and this machine's DNS",
            )
        if isinstance(seen, ssl.SSLError):
            return (
                "the TLS handshake failed",
                "check that CDR_API_URL's host and port speak https (a port serving plain "
                "http, or a proxy that intercepts TLS, fails this way)",
            )
        seen = seen.__cause__ or seen.__context__
    return None


def _http_error(status: int, headers: dict[str, str], ctx: dict[str, Any]) -> CdrApiError:
    """429 and 5xx are worth another try (after any Retry-After); the rest (raised) are not."""
    if status == 429 or status >= 500:
        return TransientApiError(
            "the server is overloaded or failing",
            http_status=status,
            retry_after=retry_after_seconds(headers.get("retry-after")),
            **ctx,
        )
    hint = (
        "check CDR_API_URL (host and path)"
        if status in (301, 302, 404)
        else "check the endpoint and credentials"
    )
    raise FatalApiError("the server refused the request", http_status=status, hint=hint, **ctx)


def _certificate_failed(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(
            seen
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


__all__ = ["CdrApiClient", "ClientSettings", "Exchange", "TokenBucket"]
