"""A deterministic stand-in for the provider's getCdr API.

Calls are generated per UTC hour from ``(seed, hour)``, so any window, in any time zone, is
reproducible and the simulator can say exactly which records a day holds (:meth:`truth`).
The same request handler serves in-process (:meth:`CdrSimulator.transport`) and over real
HTTP (:func:`serve`), with switchable paging modes, compression, data defects and faults.
"""

from __future__ import annotations

import contextlib
import gzip as _gzip
import hashlib
import json
import random
import socket
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import httpx

TIME_FIELDS = (
    "startSrcCallTime",
    "startSrcRingTime",
    "srcAcceptTime",
    "startDstCallTime",
    "startDstRingTime",
    "dstAcceptTime",
    "endCallTime",
)
REJECT_KINDS = (
    "not_an_object",
    "missing_call_id",
    "missing_start_time",
    "bad_timestamp",
    "bad_status",
    "bad_duration",
    "bad_call_type",
    "end_before_start",
)
FAULT_KINDS = ("code-203", "code-501", "http503", "http429", "drop", "slow", "malformed")
MAX_CALL_SECONDS = 3 * 3600 + 600
PATH = "/201511v3/getCdr"
# Relative call volume by local hour: quiet nights, busy office hours.
_DIURNAL = (1, 1, 1, 1, 1, 2, 4, 7, 10, 12, 12, 11, 9, 10, 12, 12, 11, 10, 8, 6, 5, 4, 3, 2)


@dataclass(frozen=True)
class SimConfig:
    """Everything that shapes the simulated provider. Defaults: a clean, honest server."""

    seed: int = 20190123
    calls_per_day: int = 2000
    page_size: int = 1000
    honour_cursor: bool = True
    filter_on: str = "start"  # "start" or "end": which time field windows select on
    timezone: str = "Asia/Shanghai"
    app_id: str | None = None  # expected credentials; None accepts anything
    api_id: str | None = None
    max_window_s: int = 3 * 86400
    # data quirks
    bad_record_rate: float = 0.0
    duplicate_rate: float = 0.0
    conflict_rate: float = 0.0
    datetime_text_rate: float = 0.0
    epoch_ms_rate: float = 0.0
    schema_drift_rate: float = 0.0
    anomaly_rate: float = 0.0
    # faults
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    max_faults_per_request: int = 2
    slow_seconds: float = 1.5
    retry_after_s: int = 1
    uncompressed_rate: float = 0.0
    gzip: bool = False
    force_error: str | None = None
    force_error_after: int = 0  # answer this many requests normally before force_error
    paging_fault: str | None = None  # "cycle": cursors loop back; "endless": never ends
    latency_s: float = 0.0
    # billed seconds are the talk time rounded up to this (6-second billing is common): so
    # acd_s (billed) and aloc_s (talk) differ, as on a real bill
    billing_increment_s: int = 6
    # a few callers whose traffic looks like abuse (see ABUSERS), added to the normal traffic
    abuse: bool = False
    # a hostile or misconfigured provider
    content_encoding: str | None = None  # this Content-Encoding header on every answer
    echo_secrets: bool = False  # error answers repeat the appId, the id and the request line
    cdr_list: str = "present"  # "absent" or "null": success answers without their cdr list
    bomb_from_request: int = 0  # from this request on (1-based), answer a decompression bomb
    bomb_bytes: int = 512 * 1024 * 1024  # what the bomb inflates to
    empty_from_request: int = 0  # from this request on (1-based), every day has no calls

    def __post_init__(self) -> None:
        if self.filter_on not in ("start", "end"):
            raise ValueError("filter_on must be 'start' or 'end'")
        if self.page_size < 1:
            raise ValueError("page_size must be at least 1")
        unknown = set(self.fault_kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")


# Destinations abroad ({} takes 8 digits): US, UK mobile, Tokyo, Singapore mobile, German mobile.
INTERNATIONAL = (
    "0012122{:.6}",
    "00447400{:.6}",
    "00813{}",
    "00659{:.7}",
    "0049151{}",
)
PREMIUM = "0044909{}"  # a UK premium-rate number (09xx)

# Callers of the abuse patterns (SimConfig.abuse): each shows exactly one flag of the data
# contract's caller-risk rules, at fixed local hours. Caller -> (local hours, calls per hour,
# seconds between them, shape, the n-th call's destination).
_SCRIPTS: dict[str, tuple[tuple[int, ...], int, int, str, Any]] = {
    "008613900000001": ((10,), 25, 20, "answered", lambda n: f"00861590001{n:04d}"),
    "008613900000002": (tuple(range(8, 20)), 5, 600, "answered", lambda n: f"00861590002{n:04d}"),
    "008613900000003": (tuple(range(9, 14)), 5, 700, "answered", lambda n: "008615900030000"),
    "008613900000004": ((14, 15), 6, 500, "short_ring", lambda n: f"00861590004{n:04d}"),
    "008613900000005": ((2,), 1, 0, "answered", lambda n: "00449090000005"),
}
ABUSERS = {
    "008613900000001": ["burst"],
    "008613900000002": ["fan_out"],
    "008613900000003": ["repeat_target"],
    "008613900000004": ["short_ring_unanswered"],
    "008613900000005": ["premium_night"],
}

# What the built-in simulator serves by default, so a first run shows rejects and duplicates.
DEMO_QUIRKS = {
    "bad_record_rate": 0.003,
    "duplicate_rate": 0.01,
    "conflict_rate": 0.002,
    "datetime_text_rate": 0.05,
    "epoch_ms_rate": 0.02,
    "anomaly_rate": 0.001,
    "abuse": True,
}


@dataclass(frozen=True)
class SimCall:
    """One call as the simulator knows it (true values) and as it serves it (``wire``)."""

    call_id: str
    src: str
    dst: str
    times: dict[str, int | None]
    status: int
    duration: int
    record_url: str | None
    call_type: int  # 3 when the wire omits it
    biz_id: str | None
    order_id: str | None
    extra: dict[str, Any] | None
    defect: str | None
    wire: Any
    duplicate: bool
    conflict: Any  # a less complete copy served too, or None

    @property
    def start(self) -> int:
        return self.times["startSrcCallTime"]  # type: ignore[return-value]

    @property
    def end(self) -> int:
        return self.times["endCallTime"]  # type: ignore[return-value]

    def filter_time(self, on: str) -> int:
        return self.start if on == "start" else self.end

    def assigned_time(self) -> int:
        """The instant that decides this record's day, by the project's contract."""
        if self.defect == "missing_start_time":
            return self.end
        return self.start


@dataclass
class SimResponse:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    action: str = "respond"  # "respond", "drop" or "slow"


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from its inputs."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class CdrSimulator:
    """The provider, deterministic for a given :class:`SimConfig`."""

    def __init__(self, config: SimConfig | None = None, **overrides: Any) -> None:
        self.config = replace(config or SimConfig(), **overrides)
        self._tz = ZoneInfo(self.config.timezone)
        self._lock = threading.Lock()
        self._attempts: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()
        self._hour_calls = lru_cache(maxsize=8192)(self._generate_hour)
        self._listings = lru_cache(maxsize=64)(self._listing)
        self._bodies: dict[str, bytes] = {}
        self._bomb_body: bytes | None = None
        self._zipped: dict[bytes, bytes] = {}

    # --- data -------------------------------------------------------------------------

    def _local_hour(self, epoch: int) -> int:
        return datetime.fromtimestamp(epoch, self._tz).hour

    def _render_time(self, value: int | None, rng: random.Random) -> str:
        if value is None:
            return "0"
        roll = rng.random()
        cfg = self.config
        if roll < cfg.datetime_text_rate:
            local = datetime.fromtimestamp(value, self._tz)
            naive = local.replace(tzinfo=None)
            # An ambiguous local time (the repeated hour at the end of DST) cannot round-trip:
            # the provider's text format loses the offset, so such values stay epoch seconds.
            if (
                int(naive.replace(tzinfo=self._tz).timestamp()) == value
                and int(naive.replace(tzinfo=self._tz, fold=1).timestamp()) == value
            ):
                return naive.strftime("%Y-%m-%d %H:%M:%S")
        elif roll < cfg.datetime_text_rate + cfg.epoch_ms_rate:
            return str(value * 1000)
        return str(value)

    def _generate_hour(self, hour: int) -> tuple[SimCall, ...]:
        cfg = self.config
        rng = random.Random(f"{cfg.seed}:{hour}")
        weight = _DIURNAL[self._local_hour(hour * 3600)]
        n = round(cfg.calls_per_day * weight / sum(_DIURNAL) * (0.8 + 0.4 * rng.random()))
        starts = sorted(hour * 3600 + rng.randrange(3600) for _ in range(n))
        pool = max(50, cfg.calls_per_day // 3)
        calls = []
        for idx, t0 in enumerate(starts):
            calls.append(self._make_call(rng, self._call_id(hour, idx), t0, pool))
        if cfg.abuse:
            calls += self._abuse_calls(hour, len(calls))
        return tuple(calls)

    def _call_id(self, hour: int, idx: int) -> str:
        cfg = self.config
        sig = hashlib.blake2b(f"{cfg.seed}:{hour}:{idx}".encode(), digest_size=10).hexdigest()
        return f"{cfg.seed % 100:02d}-{hour:x}-{idx:06x}{sig}"

    def _abuse_calls(self, hour: int, first: int) -> list[SimCall]:
        """The scripted calls of :data:`ABUSERS` that start in this (UTC) hour: each pattern
        at fixed local hours, so exactly its caller shows exactly its flag."""
        local = self._local_hour(hour * 3600)
        rng = random.Random(f"{self.config.seed}:{hour}:abuse")
        out: list[SimCall] = []
        for src, (hours, per_hour, spacing_s, shape, dst_of) in _SCRIPTS.items():
            if local not in hours:
                continue
            for k in range(per_hour):
                n = hours.index(local) * per_hour + k
                t0 = hour * 3600 + 30 + k * spacing_s
                call_id = self._call_id(hour, first + len(out))
                out.append(self._scripted_call(rng, call_id, src, dst_of(n), t0, shape))
        return out

    def _scripted_call(
        self, rng: random.Random, call_id: str, src: str, dst: str, t0: int, shape: str
    ) -> SimCall:
        """One clean call of a fixed shape: ``answered`` (a minute of talk) or ``short_ring``
        (the callee rings three seconds, then the caller hangs up)."""
        t: dict[str, int | None] = dict.fromkeys(TIME_FIELDS)
        t["startSrcCallTime"] = t0
        t["startSrcRingTime"] = t0 + 2
        t["srcAcceptTime"] = t0 + 7
        t["startDstCallTime"] = t0 + 8
        dring = t["startDstRingTime"] = t0 + 11
        if shape == "answered":
            status, dacc = 1, t0 + 17
            t["dstAcceptTime"] = dacc
            t["endCallTime"] = dacc + 60
            step = max(1, self.config.billing_increment_s)
            duration = -(-60 // step) * step
        else:
            status, duration = 3, 0
            t["endCallTime"] = dring + 3
        wire = self._wire(rng, call_id, src, dst, t, status, duration, None)
        return SimCall(
            call_id,
            src,
            dst,
            t,
            status,
            duration,
            None,
            3,
            None,
            None,
            None,
            None,
            wire,
            False,
            None,
        )

    def _wire(
        self,
        rng: random.Random,
        call_id: str,
        src: str,
        dst: str,
        t: dict[str, int | None],
        status: int,
        duration: int,
        record_url: str | None,
    ) -> dict[str, Any]:
        """A record as the provider serves it (times in the configured mix of forms)."""
        wire: dict[str, Any] = {"callId": call_id, "src": src, "dst": dst}
        for name in TIME_FIELDS:
            wire[name] = self._render_time(t[name], rng)
        wire["callEndStatus"] = str(status)
        wire["duration"] = str(duration)
        wire["recordUrl"] = record_url or ""
        return wire

    def _destination(self, call_id: str, mobile: str, t0: int) -> str:
        """Where a call goes: mostly a Chinese mobile in the provider's 00 form; some written
        in national form, some abroad, a few to premium-rate numbers (by day only: a premium
        call at night is one of the abuse patterns). Drawn from the call's id, not from the
        call stream's generator, so the rest of every call stays as it was."""
        u = _unit(call_id, "destination")
        if u < 0.10:
            return mobile[4:]  # national form: 15xxxxxxxxx
        digits = f"{int(_unit(call_id, 'number') * 10**8):08d}"
        if u < 0.13:
            return INTERNATIONAL[int(u * 10**6) % len(INTERNATIONAL)].format(digits)
        if u < 0.14 and self._local_hour(t0) >= 6:
            return PREMIUM.format(digits[:7])
        return mobile

    def _make_call(self, rng: random.Random, call_id: str, t0: int, pool: int) -> SimCall:
        cfg = self.config
        src = f"008613{rng.randrange(pool):09d}"
        dst = self._destination(call_id, f"008615{rng.randrange(pool * 3):09d}", t0)
        t: dict[str, int | None] = dict.fromkeys(TIME_FIELDS)
        t["startSrcCallTime"] = t0
        duration = 0
        roll = rng.random()
        if roll < 0.005:
            status = 0
            t["endCallTime"] = t0 + rng.randint(5, 40)
        elif roll < 0.045:
            status = 4
            t["endCallTime"] = t0 + rng.randint(3, 30)
        else:
            ring = t["startSrcRingTime"] = t0 + rng.randint(1, 4)
            if rng.random() < 0.12:
                status = 2
                t["endCallTime"] = ring + rng.randint(15, 45)
            else:
                acc = t["srcAcceptTime"] = ring + rng.randint(2, 20)
                dcall = t["startDstCallTime"] = acc + rng.randint(0, 2)
                r2 = rng.random()
                if r2 < 0.05:
                    status = 5
                    t["endCallTime"] = dcall + rng.randint(3, 20)
                else:
                    dring = t["startDstRingTime"] = dcall + rng.randint(1, 6)
                    if r2 < 0.22:
                        status = 3
                        t["endCallTime"] = dring + rng.randint(15, 60)
                    else:
                        status = 1
                        dacc = t["dstAcceptTime"] = dring + rng.randint(2, 15)
                        talk = min(int(rng.expovariate(1 / 150)), 3 * 3600)
                        t["endCallTime"] = dacc + talk
                        step = max(1, cfg.billing_increment_s)
                        duration = -(-talk // step) * step
        if status != 1 and rng.random() < cfg.anomaly_rate:
            duration = rng.randint(1, 30)  # billed without an answer: a soft anomaly
        record_url = (
            f"https://record.example.com/{call_id}.mp3"
            if status == 1 and rng.random() < 0.9
            else None
        )
        type_roll = rng.random()
        call_type_wire = (
            None if type_roll < 0.3 else (1 if type_roll < 0.45 else 2 if type_roll < 0.65 else 3)
        )
        biz_id = f"biz{rng.randrange(10**6):06d}" if rng.random() < 0.5 else None
        order_roll = rng.random()
        order_id = f"order-{rng.randrange(10**9)}" if order_roll < 0.1 else None
        extra = (
            {"userData": f"u{rng.randrange(1000)}"}
            if rng.random() < cfg.schema_drift_rate
            else None
        )

        wire = self._wire(rng, call_id, src, dst, t, status, duration, record_url)
        if call_type_wire is not None:
            wire["callType"] = str(call_type_wire)
        if biz_id is not None or rng.random() < 0.5:
            wire["bizId"] = biz_id or ""
        if order_id is not None or order_roll < 0.5:
            wire["orderId"] = order_id or ""
        if extra:
            wire.update(extra)

        defect = None
        if rng.random() < cfg.bad_record_rate:
            defect = REJECT_KINDS[rng.randrange(len(REJECT_KINDS))]
            if defect == "not_an_object" and not 4 <= self._local_hour(t0) < 20:
                # A record with no readable time belongs to the day of the window's middle;
                # only away from midnight is that day the same for every client window.
                defect = "bad_status"
            wire = _apply_defect(wire, defect, t0)
        duplicate = rng.random() < cfg.duplicate_rate
        conflict = None
        if defect is None and rng.random() < cfg.conflict_rate:
            conflict = dict(wire)
            if conflict["recordUrl"]:
                conflict["recordUrl"] = ""  # less complete: loses
            else:
                end = t["endCallTime"]
                conflict["endCallTime"] = str(end - 1)  # ends earlier: loses
        return SimCall(
            call_id,
            src,
            dst,
            t,
            status,
            duration,
            record_url,
            call_type_wire or 3,
            biz_id,
            order_id,
            extra,
            defect,
            wire,
            duplicate,
            conflict,
        )

    def calls_between(self, start: int, end: int, on: str = "start") -> list[SimCall]:
        """Calls whose ``on`` time lies in ``[start, end]`` (both ends inclusive)."""
        first_hour = (start - (MAX_CALL_SECONDS if on == "end" else 0)) // 3600
        out = []
        for hour in range(first_hour, end // 3600 + 1):
            for call in self._hour_calls(hour):
                if start <= call.filter_time(on) <= end:
                    out.append(call)
        return out

    def find_call(self, call_id: str) -> SimCall | None:
        try:
            _, hour_hex, rest = call_id.split("-", 2)
            hour, idx = int(hour_hex, 16), int(rest[:6], 16)
        except ValueError:
            return None
        calls = self._hour_calls(hour)
        if 0 <= idx < len(calls) and calls[idx].call_id == call_id:
            return calls[idx]
        return None

    def truth(self, day_start: int, day_end: int) -> DayTruth:
        """What a correct pipeline must produce for the day ``[day_start, day_end)``."""
        valid: dict[str, SimCall] = {}
        rejects: Counter[str] = Counter()
        for call in self.calls_between(day_start - MAX_CALL_SECONDS, day_end, "start"):
            if not day_start <= call.assigned_time() < day_end:
                continue
            if call.defect is None:
                valid[call.call_id] = call
            else:
                rejects[call.defect] += 1
        return DayTruth(valid, rejects)

    def listing(self, start: int, end: int, src: str | None = None) -> list[Any]:
        """The records a query for ``[start, end]`` returns, before paging, in served order
        (built once per window: every page of a query pages through the same list)."""
        return self._listings(start, end, src)

    def _listing(self, start: int, end: int, src: str | None) -> list[Any]:
        calls = self.calls_between(start, end, self.config.filter_on)
        if src:
            calls = [c for c in calls if c.src == src]
        calls.sort(key=lambda c: (c.filter_time(self.config.filter_on), c.call_id))
        records: list[Any] = []
        tail: list[Any] = []
        for call in calls:
            if call.conflict is not None:
                records.append(call.conflict)
            records.append(call.wire)
            if call.duplicate:
                tail.append(call.wire)
        return records + tail

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
            return self._error(cfg.force_error, f"forced error {cfg.force_error}")
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
            return SimResponse(
                429, b"too many requests", {"Retry-After": str(self.config.retry_after_s)}
            )
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


@dataclass
class DayTruth:
    valid: dict[str, SimCall]
    rejects: Counter[str]


def _apply_defect(wire: dict[str, Any], defect: str, t0: int) -> Any:
    bad = dict(wire)
    if defect == "not_an_object":
        return f"corrupt record {wire['callId']}"
    if defect == "missing_call_id":
        del bad["callId"]
    elif defect == "missing_start_time":
        bad["startSrcCallTime"] = "0"
    elif defect == "bad_timestamp":
        bad["startSrcRingTime"] = "2019-13-45 99:61:00"
    elif defect == "bad_status":
        bad["callEndStatus"] = "9"
    elif defect == "bad_duration":
        bad["duration"] = "-12"
    elif defect == "bad_call_type":
        bad["callType"] = "7"
    elif defect == "end_before_start":
        bad["endCallTime"] = str(t0 - 100)
    return bad


# --- a real HTTP server -------------------------------------------------------------------


class SimulatorServer:
    """The simulator listening on a loopback port, in a background thread."""

    def __init__(self, sim: CdrSimulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sim = sim
        handler = _make_handler(sim)
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{PATH}"

    def start(self) -> SimulatorServer:
        if not self._thread.is_alive():
            self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _make_handler(sim: CdrSimulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without TCP_NODELAY, Nagle holds the body
        # until the client's delayed ACK (40 ms) arrives, and every answer looks slow.
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            resp = sim.handle(self.command, parts.path, query, body)
            if resp.action == "drop":
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if resp.action == "slow":
                time.sleep(sim.config.slow_seconds)
                self.close_connection = True
                return
            self.send_response(resp.status)
            for name, value in resp.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(resp.body)))
            self.end_headers()
            self.wfile.write(resp.body)

        do_POST = _serve
        do_GET = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the request line carries the id= credential: never log it

    return Handler


def serve(
    config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> SimulatorServer:
    return SimulatorServer(CdrSimulator(config), host, port).start()
