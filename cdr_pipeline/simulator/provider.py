"""The simulated provider's protocol: getCdr's answers to a request (paging, compression,
error codes) and the faults it can be told to make, served in process
(:meth:`CdrSimulator.transport`) or over HTTP (:mod:`cdr_pipeline.simulator.server`)."""

from __future__ import annotations

import gzip as _gzip
import hashlib
import json
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from typing import Any

import httpx

from cdr_pipeline.simulator.calls import CallBook, _unit
from cdr_pipeline.simulator.config import PATH, SimConfig


@dataclass
class SimResponse:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    action: str = "respond"  # "respond", "drop" or "slow"


class CdrSimulator(CallBook):
    """The provider, deterministic for a given :class:`SimConfig`."""

    def __init__(self, config: SimConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self._lock = threading.Lock()
        self._attempts: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()
        self._bodies: dict[str, bytes] = {}
        self._bomb_body: bytes | None = None
        self._zipped: dict[bytes, bytes] = {}

    # --- protocol ---------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], body: bytes) -> SimResponse:
        """Answer one request the way the provider would (plus configured faults)."""
        resp = self._handle(method, path, query, body)
        cfg = self.config
        if cfg.content_encoding and resp.action == "respond":
            resp.headers["Content-Encoding"] = cfg.content_encoding
        if cfg.echo_secrets and resp.action == "respond":
            resp = _echoed(resp, method, path, query, body)
        return resp

    def _handle(self, method: str, path: str, query: dict[str, str], body: bytes) -> SimResponse:
        cfg = self.config
        with self._lock:
            self.stats["requests"] += 1
            served = self.stats["requests"]
        if cfg.latency_s:
            time.sleep(cfg.latency_s)
        if method != "POST":
            return SimResponse(405, b"method not allowed")
        if not path.endswith("/getCdr"):
            return SimResponse(404, b"not found")
        if path != PATH:
            return self._error("-1", "version not supported")
        if cfg.api_id is not None and query.get("id") != cfg.api_id:
            return self._error("-402", "URL mismatch")
        try:
            params = json.loads(body or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError):
            return self._error("-2", "parameter exception")
        if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
            return self._error("-2", "parameter exception")
        if cfg.app_id is not None and params.get("appId") != cfg.app_id:
            return self._error("-401", "appId invalid")
        if cfg.force_error and served > cfg.force_error_after:
            return self._error(cfg.force_error, f"forced error {cfg.force_error}{cfg.hostile_text}")
        key = json.dumps(params, sort_keys=True)
        with self._lock:
            attempt = self._attempts[key]
            self._attempts[key] += 1
        fault = self._pick_fault(key, attempt)
        if fault is not None:
            with self._lock:
                self.stats[f"fault:{fault}"] += 1
            response = self._fault(fault)
            if response is not None:
                return response
        if cfg.bomb_from_request and served >= cfg.bomb_from_request:
            return SimResponse(200, self._bomb(), {"Content-Type": "application/octet-stream"})
        compress = params.get("compress", "0")
        if compress not in ("0", "1"):
            return self._error("-2", "parameter exception")
        raw_or_error = self._answer(params)
        if isinstance(raw_or_error, SimResponse):
            return raw_or_error
        raw = raw_or_error
        if fault == "malformed":
            return SimResponse(
                200, raw[: max(1, len(raw) // 2)], {"Content-Type": "application/json"}
            )
        if compress == "1" and _unit(cfg.seed, key, attempt, "plain") >= cfg.uncompressed_rate:
            raw = self._compressed(raw)
            with self._lock:
                self.stats["compressed"] += 1
            return SimResponse(200, raw, {"Content-Type": "application/octet-stream"})
        return SimResponse(200, raw, {"Content-Type": "application/json; charset=utf-8"})

    def _answer(self, params: dict[str, str]) -> bytes | SimResponse:
        """The JSON body for a query, built once: the same question gets the same bytes, and
        a benchmark then measures the client rather than the simulator's own encoding."""
        key = json.dumps(
            {k: v for k, v in params.items() if k not in ("appId", "compress")}, sort_keys=True
        )
        if self.config.empty_from_request:  # the answers change over time: none are kept
            key += f"#{self.stats['requests']}"
        with self._lock:
            cached = self._bodies.get(key)
        if cached is not None:
            return cached
        doc = self._lookup(params["callId"]) if params.get("callId") else self._query(params)
        if isinstance(doc, SimResponse):
            return doc
        raw = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if self.config.nested_depth and doc.get("cdr") and not params.get("offset"):
            depth = self.config.nested_depth  # written as text: json.dumps would recurse too
            deep = b'{"callId":"deep-1","extra":' + b"[" * depth + b"]" * depth + b"},"
            raw = raw.replace(b'"cdr":[', b'"cdr":[' + deep, 1)
        with self._lock:
            self._bodies[key] = raw
            if len(self._bodies) > 4096:
                self._bodies.pop(next(iter(self._bodies)))
        return raw

    def _bomb(self) -> bytes:
        """A small zlib stream of a huge JSON-looking body, made a megabyte at a time."""
        with self._lock:
            if self._bomb_body is None:
                packer, chunk = zlib.compressobj(9), b" " * (1 << 20)
                parts = [packer.compress(b'{"errorCode":"0","cdr":[')]
                parts += [packer.compress(chunk) for _ in range(self.config.bomb_bytes >> 20)]
                self._bomb_body = b"".join(parts) + packer.flush()
            return self._bomb_body

    def _compressed(self, raw: bytes) -> bytes:
        key = hashlib.blake2b(raw, digest_size=16).digest()
        with self._lock:
            cached = self._zipped.get(key)
        if cached is None:
            cached = _gzip.compress(raw, mtime=0) if self.config.gzip else zlib.compress(raw)
            with self._lock:
                self._zipped[key] = cached
                if len(self._zipped) > 4096:
                    self._zipped.pop(next(iter(self._zipped)))
        return cached

    def _pick_fault(self, key: str, attempt: int) -> str | None:
        cfg = self.config
        if not cfg.fault_rate or attempt >= cfg.max_faults_per_request:
            return None
        if _unit(cfg.seed, key, attempt, "fault") >= cfg.fault_rate:
            return None
        kinds = cfg.fault_kinds
        return kinds[int(_unit(cfg.seed, key, attempt, "kind") * len(kinds))]

    def _fault(self, kind: str) -> SimResponse | None:
        if kind == "code-203":
            return self._error("-203", "network exception")
        if kind == "code-501":
            return self._error("-501", "server exception")
        if kind == "http503":
            return SimResponse(503, b"<html>503 Service Unavailable</html>")
        if kind == "http429":
            after = str(self.config.retry_after_s)
            if self.config.retry_after_date:
                after = formatdate(time.time() + self.config.retry_after_s, usegmt=True)
            return SimResponse(429, b"too many requests", {"Retry-After": after})
        if kind == "drop":
            return SimResponse(0, action="drop")
        if kind == "slow":
            return SimResponse(0, action="slow")
        return None  # "malformed" is applied to the real answer

    @staticmethod
    def _error(code: str, text: str, status: int = 200) -> SimResponse:
        body = json.dumps({"errorCode": code, "result": text}).encode()
        return SimResponse(status, body, {"Content-Type": "application/json"})

    def _lookup(self, call_id: str) -> dict[str, Any] | SimResponse:
        call = self.find_call(call_id)
        if call is None:
            return self._error("-201", "callId exception")
        return {"cdr": [call.wire], "errorCode": "0", "offset": "0", "result": "Call Details"}

    def _query(self, params: dict[str, str]) -> dict[str, Any] | SimResponse:
        cfg = self.config
        s, e = params.get("startTimeStamp", ""), params.get("endTimeStamp", "")
        if (
            not (s.isdigit() and e.isdigit())
            or int(s) > int(e)
            or int(e) - int(s) > cfg.max_window_s
        ):
            return self._error("-202", "timestamp parameter exception")
        records = self.listing(int(s), int(e), params.get("src") or None)
        if cfg.empty_from_request and self.stats["requests"] >= cfg.empty_from_request:
            records = []
        cursor = params.get("offset", "")
        if cfg.paging_fault == "cycle":  # cursors c1 -> c2 -> c1 -> ...
            page, offset = records[: cfg.page_size], "c2" if cursor == "c1" else "c1"
        elif cfg.paging_fault == "endless":  # a fresh cursor every time, never the end
            page, offset = records[: cfg.page_size], str(int(cursor or "0") + 1)
        else:
            pos = 0
            if cfg.honour_cursor and cursor not in ("", "0"):
                if not cursor.isdigit() or int(cursor) > len(records):
                    return self._error("-2", "parameter exception")
                pos = int(cursor)
            page = records[pos : pos + cfg.page_size]
            nxt = pos + cfg.page_size
            offset = str(nxt) if nxt < len(records) else "0"
        with self._lock:
            self.stats["pages"] += 1
            self.stats["records_served"] += len(page)
        doc: dict[str, Any] = {"errorCode": "0", "offset": offset, "result": "Call Details"}
        if cfg.cdr_list == "null":
            doc["cdr"] = None
        elif cfg.cdr_list != "absent":
            doc["cdr"] = page
        return doc

    def transport(self) -> httpx.MockTransport:
        """An in-process httpx transport; drops and slow answers become httpx errors."""

        def handler(request: httpx.Request) -> httpx.Response:
            query = {k: v for k, v in request.url.params.items()}
            resp = self.handle(request.method, request.url.path, query, request.read())
            if resp.action == "drop":
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            if resp.action == "slow":
                raise httpx.ReadTimeout("timed out")
            # a stream, as from a socket: the client reads the raw bytes
            return httpx.Response(
                resp.status, headers=resp.headers, stream=httpx.ByteStream(resp.body)
            )

        return httpx.MockTransport(handler)


def _echoed(
    resp: SimResponse, method: str, path: str, query: dict[str, str], body: bytes
) -> SimResponse:
    """An error answer that repeats what it was sent, as careless providers' do."""
    try:
        app_id = json.loads(body).get("appId", "")
    except (ValueError, AttributeError):
        app_id = ""
    request_line = f"{method} {path}?id={query.get('id', '')} HTTP/1.1"
    if resp.status >= 400:
        page = f"<html><h1>{resp.status}</h1><pre>{request_line}</pre></html>"
        return replace(resp, body=page.encode())
    try:
        doc = json.loads(resp.body)
    except ValueError:
        return resp
    if not isinstance(doc, dict) or doc.get("errorCode") in (None, "0"):
        return resp
    doc["result"] = f"{doc.get('result')}: appId {app_id} invalid for id {query.get('id')}"
    return replace(resp, body=json.dumps(doc).encode())
