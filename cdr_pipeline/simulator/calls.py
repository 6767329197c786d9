"""The simulated traffic: calls generated per UTC hour from ``(seed, hour)``, so any window,
in any time zone, is reproducible, and the simulator can say exactly which records a day holds
(:meth:`CallBook.truth`): the tests' oracle."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from cdr_pipeline.simulator.config import (
    DIURNAL,
    INTERNATIONAL,
    MAX_CALL_SECONDS,
    PREMIUM,
    REJECT_KINDS,
    SCRIPTS,
    TIME_FIELDS,
    SimConfig,
)


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


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from its inputs."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class CallBook:
    """Every call the simulated provider holds, deterministic for a given :class:`SimConfig`."""

    def __init__(self, config: SimConfig | None = None, **overrides: Any) -> None:
        self.config = replace(config or SimConfig(), **overrides)
        self._tz = ZoneInfo(self.config.timezone)
        self._hour_calls = lru_cache(maxsize=8192)(self._generate_hour)
        self._listings = lru_cache(maxsize=64)(self._listing)

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
        weight = DIURNAL[self._local_hour(hour * 3600)]
        n = round(cfg.calls_per_day * weight / sum(DIURNAL) * (0.8 + 0.4 * rng.random()))
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
        for src, (hours, per_hour, spacing_s, shape, dst_of) in SCRIPTS.items():
            if local not in hours:
                continue
            for k in range(per_hour):
                n = hours.index(local) * per_hour + k
                t0 = hour * 3600 + 30 + k * spacing_s
                call_id = self._call_id(hour, first + len(out))
                caller = self.config.hostile_text + src
                out.append(self._scripted_call(rng, call_id, caller, dst_of(n), t0, shape))
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

    def _timeline(self, rng: random.Random, t0: int) -> tuple[dict[str, int | None], int, int]:
        """A call's seven times, its end status and billed seconds, as a call that starts at
        ``t0`` unfolds (the random draws in a fixed order: the same seed, the same calls)."""
        cfg = self.config
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
        return t, status, duration

    def _make_call(self, rng: random.Random, call_id: str, t0: int, pool: int) -> SimCall:
        cfg = self.config
        src = f"008613{rng.randrange(pool):09d}"
        dst = self._destination(call_id, f"008615{rng.randrange(pool * 3):09d}", t0)
        t, status, duration = self._timeline(rng, t0)
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
