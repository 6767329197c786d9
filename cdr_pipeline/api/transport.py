"""The HTTP transport under the client: a total deadline for every request, proxies from the
environment but never for loopback, and the body exactly as the server sent it.

httpx's timeouts bound each socket read, so a server that trickles a byte a second (in its
headers or its body) would hold a request for ever; here every read and write of a request is
bounded by what is left of that request's deadline (httpx has no total timeout of its own:
encode/httpx#1450). The deadline is kept per thread, because the client's workers share the
connection pool.
"""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpcore
import httpx

from cdr_pipeline.settings import ClientSettings, is_loopback

_deadline = threading.local()


def _bounded(timeout: float | None) -> float | None:
    """A socket operation's timeout, cut to what is left of this thread's request."""
    end = getattr(_deadline, "at", None)
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("the request's total deadline has passed")
    # a timeout of this operation is the deadline's when what is left of it is the bound
    _deadline.binding = timeout is None or left < timeout
    return left if timeout is None else min(timeout, left)


class DeadlinePassed(httpx.TimeoutException):
    """A request outlasted its total deadline (each read may still have been quick)."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Bound every socket operation of this thread's request to ``seconds`` in all."""
    end = _deadline.at = time.monotonic() + seconds
    _deadline.binding = False
    try:
        yield
    except httpx.TimeoutException as exc:
        if _deadline.binding or time.monotonic() >= end:
            raise DeadlinePassed(f"total deadline of {seconds:g} s passed") from exc
        raise
    finally:
        _deadline.at = None


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, _bounded(timeout)))

    def get_extra_info(self, info: str):
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        stream = self._inner.connect_tcp(
            host, port, _bounded(timeout), local_address, socket_options
        )
        return _Stream(stream)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return _Stream(self._inner.connect_unix_socket(path, _bounded(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY,
    honouring NO_PROXY); never one for a loopback host, whose requests carry the id too."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if is_loopback(host) or urllib.request.proxy_bypass(host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


def transport(url: str, settings: ClientSettings) -> httpx.HTTPTransport:
    loopback = is_loopback(urlsplit(url).hostname or "")
    made = httpx.HTTPTransport(
        limits=httpx.Limits(max_connections=max(4, settings.concurrency * 2)),
        proxy=proxy_for(url),
        trust_env=not loopback,  # SSL_CERT_FILE and friends, for a real endpoint
    )
    # httpx takes no network backend; its pool (a plain ConnectionPool or a proxy's) keeps
    # one here (httpcore 1.0). The deadline test fails if that ever moves.
    pool = made._pool
    pool._network_backend = _Backend(pool._network_backend)
    return made
