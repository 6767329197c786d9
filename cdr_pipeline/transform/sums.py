"""The analytics that are sums over a day's rows, gathered slice by slice as the rows pass,
in flat memory: the hourly load (``call_load_hourly``, from a per-second difference array of
the day: no sort) and the billing reconciliation's counts (columns of ``call_kpis_daily``).
Like the outcome and KPI sums (:mod:`summarize`), each gives its ``state`` as JSON, which
the day keeps, and takes another's rows out of itself (``less``): a re-build after an
erasure, which only takes rows out, then reads only those rows (``gathered.Gathered``).
"""

from __future__ import annotations

import base64
import zlib
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cdr_pipeline.dictionary import described

INCREMENTS = (60, 30, 6)  # billing increments tried, largest first; 1 when none fits
INCREMENT_SHARE = 0.99  # of billed calls that must be multiples of an increment

HOURLY_SCHEMA = described(
    pa.schema(
        [
            pa.field("hour_start", pa.timestamp("ms", tz="UTC"), nullable=False),
            pa.field("local_hour", pa.int8(), nullable=False),
            pa.field("attempts", pa.int64(), nullable=False),
            pa.field("connected_calls", pa.int64(), nullable=False),
            pa.field("talk_seconds", pa.int64(), nullable=False),
            pa.field("erlangs", pa.float64(), nullable=False),
            pa.field("peak_concurrent_calls", pa.int64(), nullable=False),
            pa.field("busy_hour", pa.bool_(), nullable=False),
        ]
    ),
    "call_load_hourly",
)


class Decoded:
    """A slice's columns as numpy, each converted once for every sum that reads it: called
    with a name, (its values as int64, epoch milliseconds for a timestamp, 0 where absent;
    present)."""

    def __init__(self, part: pa.Table) -> None:
        self.part, self._done = part, {}

    def __call__(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self._done:
            ints = self.part.column(name).cast(pa.int64())
            valid = ints.is_valid().to_numpy(zero_copy_only=False)
            self._done[name] = (pc.fill_null(ints, 0).to_numpy(zero_copy_only=False), valid)
        return self._done[name]


class Load:
    """``call_load_hourly``'s figures, gathered slice by slice in flat memory: attempts and
    connected calls by the hour they start in, and the talk intervals ``[accept, end)`` (cut
    at the day's end) as a difference array over the day's seconds. Its running sum is the
    number of calls talking in each second (times are whole seconds), so an hour's talk is
    its sum and the hour's peak its maximum: the exact sweep, without sorting the day."""

    COLUMNS = ("start_src_call_time", "call_end_status", "dst_accept_time", "end_call_time")

    def __init__(self, day_start: int, day_end: int) -> None:
        self.start, self.seconds = day_start, max(0, day_end - day_start)
        hours = -(-self.seconds // 3600)
        self.attempts = np.zeros(hours, dtype=np.int64)
        self.connected = np.zeros(hours, dtype=np.int64)
        self.diff = np.zeros(self.seconds + 1, dtype=np.int64)

    def add(self, part: Decoded) -> None:
        start = part("start_src_call_time")[0] // 1000
        in_day = (start >= self.start) & (start < self.start + self.seconds)
        hour = (start[in_day] - self.start) // 3600
        size = len(self.attempts)
        self.attempts += np.bincount(hour, minlength=size)
        status = part("call_end_status")[0][in_day]  # 0 where absent
        self.connected += np.bincount(hour[status == 1], minlength=size)
        accept, answered = part("dst_accept_time")
        end, ended = part("end_call_time")
        accept, end = accept // 1000, end // 1000  # whole seconds
        # an interval counts for the seconds it covers inside the day
        a = np.maximum(accept, self.start) - self.start
        e = np.minimum(end, self.start + self.seconds) - self.start
        talking = answered & ended & (e > a)
        self.diff += np.bincount(a[talking], minlength=self.seconds + 1)
        self.diff -= np.bincount(e[talking], minlength=self.seconds + 1)

    def state(self) -> dict[str, Any]:
        """What :meth:`restore` takes back (JSON): the difference array zlib-compressed (its
        size: docs/performance.md, "Erasure")."""
        diff = base64.b64encode(zlib.compress(self.diff.astype("<i8").tobytes()))
        return {
            "attempts": self.attempts.tolist(),
            "connected": self.connected.tolist(),
            "diff": diff.decode(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        diff = np.frombuffer(zlib.decompress(base64.b64decode(state["diff"])), "<i8")
        if len(diff) != len(self.diff) or len(state["attempts"]) != len(self.attempts):
            raise ValueError("the load's sums are of a day of another length")
        self.attempts = np.array(state["attempts"], dtype=np.int64)
        self.connected = np.array(state["connected"], dtype=np.int64)
        self.diff = diff.astype(np.int64)

    def less(self, other: Load) -> None:
        self.attempts -= other.attempts
        self.connected -= other.connected
        self.diff -= other.diff

    def hourly(self) -> tuple[np.ndarray, np.ndarray]:
        """(talk seconds, peak concurrent calls) of each hour."""
        if not self.seconds:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        level = np.cumsum(self.diff[:-1])
        edges = np.arange(0, self.seconds, 3600)
        return np.add.reduceat(level, edges), np.maximum.reduceat(level, edges)

    def table(self, tz: ZoneInfo) -> pa.Table:
        """``call_load_hourly``."""
        starts = list(range(self.start, self.start + self.seconds, 3600))
        talk, peak = self.hourly()
        # the hour with the most talk, the earliest on ties; none on a day without talk
        busiest = int(np.argmax(talk)) if talk.any() else None
        return pa.table(
            {
                "hour_start": pa.array([v * 1000 for v in starts], pa.timestamp("ms", tz="UTC")),
                "local_hour": [_local_hour(s, tz) for s in starts],
                "attempts": self.attempts,
                "connected_calls": self.connected,
                "talk_seconds": talk,
                "erlangs": talk / 3600,
                "peak_concurrent_calls": peak,
                "busy_hour": [i == busiest for i in range(len(starts))],
            }
        ).cast(HOURLY_SCHEMA)


class Billing:
    """The billing reconciliation's counts (data contract, "Billing reconciliation"),
    gathered slice by slice from the columns the other sums decode: for every increment tried,
    how many reconciled calls' bills are a multiple of it and how many match the talk rounded
    up to it, so the increment is chosen at the end without a second pass over the day (three
    scans of its file in DuckDB took more: docs/performance.md). ``expected`` is computed as
    ``analytics._RECONCILE`` computes it (the talk's milliseconds over ``1000.0 * inc`` in
    doubles, rounded up), so both give the same calls."""

    COLUMNS = ("call_end_status", "duration_s", "dst_accept_time", "end_call_time")
    TRIED = (*INCREMENTS, 1)
    _COUNTS = ("reconciled", "billed", "billed_without_answer", "answered_without_billing")

    def __init__(self) -> None:
        self.reconciled = 0  # connected calls with both times
        self.billed = 0  # of those, with duration_s > 0
        self.multiples = dict.fromkeys(INCREMENTS, 0)
        self.matched = dict.fromkeys(self.TRIED, 0)
        self.billed_without_answer = 0
        self.answered_without_billing = 0

    def add(self, part: Decoded) -> None:
        status, has_status = part("call_end_status")
        connected = has_status & (status == 1)
        duration, has_duration = part("duration_s")
        accept, answered = part("dst_accept_time")
        end, ended = part("end_call_time")
        reconciled = connected & answered & ended
        self.reconciled += int(reconciled.sum())
        rows = reconciled & has_duration
        bill, talk_ms = duration[rows], end[rows] - accept[rows]
        self.billed += int((bill > 0).sum())
        for inc in INCREMENTS:
            self.multiples[inc] += int(((bill > 0) & (bill % inc == 0)).sum())
        for inc in self.TRIED:
            expected = np.ceil(talk_ms / (1000.0 * inc)).astype(np.int64) * inc
            self.matched[inc] += int((bill == expected).sum())
        self.billed_without_answer += int((has_duration & (duration > 0) & ~answered).sum())
        self.answered_without_billing += int(
            (answered & ended & (end > accept) & has_duration & (duration == 0)).sum()
        )

    def state(self) -> dict[str, Any]:
        """What :meth:`restore` takes back (JSON), each increment's counts in the order of
        :data:`TRIED`."""
        return {
            "tried": list(self.TRIED),
            **{name: getattr(self, name) for name in self._COUNTS},
            "multiples": [self.multiples[i] for i in INCREMENTS],
            "matched": [self.matched[i] for i in self.TRIED],
        }

    def restore(self, state: dict[str, Any]) -> None:
        if state["tried"] != list(self.TRIED):
            raise ValueError("the billing sums are of other increments")
        for name in self._COUNTS:
            setattr(self, name, state[name])
        self.multiples = dict(zip(INCREMENTS, state["multiples"], strict=True))
        self.matched = dict(zip(self.TRIED, state["matched"], strict=True))

    def less(self, other: Billing) -> None:
        for name in self._COUNTS:
            setattr(self, name, getattr(self, name) - getattr(other, name))
        for inc in INCREMENTS:
            self.multiples[inc] -= other.multiples[inc]
        for inc in self.TRIED:
            self.matched[inc] -= other.matched[inc]

    def figures(self) -> dict[str, Any]:
        inc = next(
            (
                i
                for i in INCREMENTS
                if self.billed and self.multiples[i] >= INCREMENT_SHARE * self.billed
            ),
            1,
        )
        return {
            "billing_increment_s": inc,
            "billing_match_rate": self.matched[inc] / self.reconciled if self.reconciled else None,
            "billed_without_answer": self.billed_without_answer,
            "answered_without_billing": self.answered_without_billing,
        }


def _local_hour(epoch_s: int, tz: ZoneInfo) -> int:
    return datetime.fromtimestamp(epoch_s, tz).hour
