"""The daily call-outcome summary and KPIs, exactly as the data contract defines them."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cdr_pipeline.dictionary import described
from cdr_pipeline.transform.hashing import fingerprint
from cdr_pipeline.transform.keylog import KeyLog
from cdr_pipeline.transform.parse import TIME_FIELDS

OUTCOME_SCHEMA = described(
    pa.schema(
        [
            pa.field("call_type", pa.int8()),
            pa.field("call_end_status", pa.int8()),
            pa.field("call_end_status_label", pa.string()),
            pa.field("calls", pa.int64()),
            pa.field("billed_seconds", pa.int64()),
            pa.field("avg_billed_seconds", pa.float64()),
            pa.field("share_of_calls", pa.float64()),
        ]
    ),
    "call_outcome_daily",
)


KPI_COUNTS = (
    "total_calls",
    "connected_calls",
    "unique_callers",
    "unique_callees",
    "rejected_records",
    "duplicates_dropped",
)
KPI_FLOATS = (
    "connect_rate",
    "caller_answer_rate",
    "callee_answer_rate",
    "ner_proxy",
    "acd_s",
    "aloc_s",
    "billed_minutes",
    "median_caller_pdd_s",
    "median_callee_pdd_s",
    "median_bridge_s",
    "short_call_ratio",
    "recording_coverage",
)
KPI_SCHEMA = described(
    pa.schema(
        [pa.field(n, pa.int64()) for n in KPI_COUNTS[:2]]
        + [pa.field(n, pa.float64()) for n in KPI_FLOATS]
        + [pa.field(n, pa.int64()) for n in KPI_COUNTS[2:4]]
        + [pa.field("peak_hour", pa.int8())]
        + [pa.field(n, pa.int64()) for n in KPI_COUNTS[4:]]
        # billing reconciliation (transform/analytics.py)
        + [
            pa.field("billing_increment_s", pa.int32()),
            pa.field("billing_match_rate", pa.float64()),
            pa.field("billed_without_answer", pa.int64()),
            pa.field("answered_without_billing", pa.int64()),
        ]
    ),
    "call_kpis_daily",
)


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


TIME_COLUMNS = [col for _, col in TIME_FIELDS]
_OUTCOME_KEYS = ["call_type", "call_end_status", "call_end_status_label"]
_PARTIAL_SCHEMA = pa.schema(  # an outcome summary's partial sums
    [
        pa.field("call_type", pa.int8()),
        pa.field("call_end_status", pa.int8()),
        pa.field("call_end_status_label", pa.string()),
        pa.field("count_all", pa.int64()),
        pa.field("duration_s_sum", pa.int64()),
    ]
)


class OutcomeSummary:
    """``call_outcome_daily`` accumulated over a day's rows in any slices."""

    COLUMNS = (*_OUTCOME_KEYS, "duration_s")  # what :meth:`add` reads (rows are counted)

    def __init__(self) -> None:
        self._partial: list[pa.Table] = []

    def add(self, part: pa.Table) -> None:
        if part.num_rows:
            self._partial.append(
                part.group_by(_OUTCOME_KEYS).aggregate([([], "count_all"), ("duration_s", "sum")])
            )

    def _grouped(self) -> pa.Table:
        """The day's calls and billed seconds by outcome; a group whose calls were all taken
        out (:meth:`less`) is gone, as it is from a day that never had them."""
        grouped = (
            pa.concat_tables(self._partial)
            .group_by(_OUTCOME_KEYS)
            .aggregate([("count_all", "sum"), ("duration_s_sum", "sum")])
        )
        grouped = grouped.filter(pc.greater(grouped["count_all_sum"], 0))
        return grouped.sort_by([("call_type", "ascending"), ("call_end_status", "ascending")])

    def state(self) -> dict[str, list]:
        """What :meth:`restore` takes back (JSON)."""
        if not self._partial:
            return _PARTIAL_SCHEMA.empty_table().to_pydict()
        grouped = self._grouped().select([*_OUTCOME_KEYS, "count_all_sum", "duration_s_sum_sum"])
        return grouped.rename_columns(_PARTIAL_SCHEMA.names).to_pydict()

    def restore(self, state: dict[str, list]) -> None:
        self._partial = [pa.table(state, schema=_PARTIAL_SCHEMA)]

    def less(self, other: OutcomeSummary) -> None:
        """Take ``other``'s rows (a part of this one's) out."""
        for part in other._partial:
            negated = {c: pc.negate(part[c]) for c in ("count_all", "duration_s_sum")}
            self._partial.append(pa.table({**{k: part[k] for k in _OUTCOME_KEYS}, **negated}))

    def table(self) -> pa.Table:
        if not self._partial:
            return OUTCOME_SCHEMA.empty_table()
        grouped = self._grouped()
        if not len(grouped):
            return OUTCOME_SCHEMA.empty_table()
        calls = pc.cast(grouped["count_all_sum"], pa.int64())
        billed = pc.cast(grouped["duration_s_sum_sum"], pa.int64())
        total = float(pc.sum(calls).as_py())
        return pa.table(
            {
                "call_type": grouped["call_type"],
                "call_end_status": grouped["call_end_status"],
                "call_end_status_label": grouped["call_end_status_label"],
                "calls": calls,
                "billed_seconds": billed,
                "avg_billed_seconds": pc.divide(
                    pc.cast(billed, pa.float64()), pc.cast(calls, pa.float64())
                ),
                "share_of_calls": pc.divide(pc.cast(calls, pa.float64()), total),
            },
            schema=OUTCOME_SCHEMA,
        )


def _seconds(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Epoch seconds as float, NaN where null."""
    ms = pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)
    return np.asarray(ms, dtype="float64") / 1000.0


class _Median:
    """Exact median of whole-second gaps, kept as a histogram: a day has few distinct gaps,
    so memory does not grow with the number of calls."""

    def __init__(self) -> None:
        self.counts: Counter[float] = Counter()

    def add(self, later: np.ndarray, earlier: np.ndarray) -> None:
        gap = later - earlier
        values, counts = np.unique(gap[~np.isnan(gap)], return_counts=True)
        self.counts.update(dict(zip(values.tolist(), counts.tolist(), strict=True)))

    def less(self, other: _Median) -> None:
        self.counts.subtract(other.counts)
        self.counts = +self.counts  # the gaps no call has left

    def value(self) -> float | None:
        total = sum(self.counts.values())
        if not total:
            return None
        wanted = [(total - 1) // 2, total // 2]  # the two middle ranks (equal when odd)
        found, seen = [], 0
        for value in sorted(self.counts):
            seen += self.counts[value]
            while wanted and wanted[0] < seen:
                found.append(value)
                wanted.pop(0)
        return float((found[0] + found[1]) / 2)


class _Distinct:
    """Distinct count of strings through 64-bit fingerprints (8 bytes a value, however long
    the string; a collision between two of a day's numbers is vanishingly unlikely), on disk
    in partitions for a large day."""

    def __init__(self, keys: KeyLog) -> None:
        self.keys = keys

    def add(self, col: pa.ChunkedArray) -> None:
        values = col.combine_chunks().drop_null()
        if len(values):
            self.keys.add(fingerprint(values))

    def count(self) -> int:
        return self.keys.distinct()


class KpiSummary:
    """``call_kpis_daily`` accumulated over a day's rows in any slices: the same values
    whatever the slicing (sums are of whole seconds, medians exact histograms)."""

    NUMBERS = ("src", "dst")  # whose distinct values are counted

    def __init__(
        self,
        tz: ZoneInfo,
        *,
        expected_rows: int = 0,
        spill_folder: Path | None = None,
        distinct: bool = True,
    ) -> None:
        """``spill_folder``: where a large day keeps the distinct counts' keys. ``distinct``
        False: the unique callers and callees are known otherwise (given to :meth:`values`),
        and the numbers are not read."""
        self.tz, self.distinct = tz, distinct
        self.counts = Counter[str]()
        self.sums = {"billed": 0, "billed_connected": 0, "talk_ms": 0}
        self.medians = {"caller_pdd": _Median(), "callee_pdd": _Median(), "bridge": _Median()}
        self.hours = np.zeros(24, dtype=np.int64)
        self.callers, self.callees = (
            _Distinct(KeyLog(expected_rows, spill_folder if distinct else None, name=name))
            for name in ("callers", "callees")
        )

    def add(self, part: pa.Table) -> None:
        if not part.num_rows:
            return
        counts, sums, medians = self.counts, self.sums, self.medians
        status = part["call_end_status"].to_numpy(zero_copy_only=False).astype("int64")
        duration = part["duration_s"].to_numpy(zero_copy_only=False).astype("int64")
        t = {name: _seconds(part[name]) for name in TIME_COLUMNS}
        connected = status == 1
        with_url = pc.is_valid(part["record_url"]).to_numpy(zero_copy_only=False)
        # milliseconds, so the sum is exact however the rows are sliced or taken out
        talk = pc.subtract(
            part["end_call_time"].cast(pa.int64()), part["dst_accept_time"].cast(pa.int64())
        )
        talk = talk.to_numpy(zero_copy_only=False)[connected]
        talk = talk[~np.isnan(talk)]
        counts["total"] += part.num_rows
        counts["connected"] += int(connected.sum())
        counts["ner"] += int(np.isin(status, (1, 2, 3)).sum())
        counts["src_accept"] += int((~np.isnan(t["src_accept_time"])).sum())
        counts["dst_accept"] += int((~np.isnan(t["dst_accept_time"])).sum())
        counts["dst_call"] += int((~np.isnan(t["start_dst_call_time"])).sum())
        counts["short"] += int((connected & (duration < 10)).sum())
        counts["recorded"] += int((connected & with_url).sum())
        counts["talk"] += talk.size
        sums["talk_ms"] += int(talk.sum())
        sums["billed"] += int(duration.sum())
        sums["billed_connected"] += int(duration[connected].sum())
        medians["caller_pdd"].add(t["start_src_ring_time"], t["start_src_call_time"])
        medians["callee_pdd"].add(t["start_dst_ring_time"], t["start_dst_call_time"])
        medians["bridge"].add(t["start_dst_call_time"], t["src_accept_time"])
        quarters, per_quarter = np.unique(
            t["start_src_call_time"].astype(np.int64) // 900, return_counts=True
        )
        local = np.array([_local_hour(int(q), self.tz) for q in quarters], dtype=np.int64)
        self.hours += np.bincount(local, weights=per_quarter, minlength=24).astype(np.int64)
        if self.distinct:
            self.callers.add(part["src"])
            self.callees.add(part["dst"])

    def state(self) -> dict[str, Any]:
        """What :meth:`restore` takes back (JSON), the distinct counts aside."""
        return {
            "counts": {name: n for name, n in self.counts.items() if n},
            "sums": self.sums,
            "medians": {n: sorted(m.counts.items()) for n, m in self.medians.items()},
            "hours": self.hours.tolist(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.counts = Counter(state["counts"])
        self.sums = dict(state["sums"])
        for name, counts in state["medians"].items():
            self.medians[name].counts = Counter(dict(counts))
        self.hours = np.array(state["hours"], dtype=np.int64)

    def less(self, other: KpiSummary) -> None:
        """Take ``other``'s rows (a part of this one's) out, the distinct counts aside."""
        self.counts.subtract(other.counts)
        for name in self.sums:
            self.sums[name] -= other.sums[name]
        for name, median in self.medians.items():
            median.less(other.medians[name])
        self.hours -= other.hours

    @property
    def columns(self) -> tuple[str, ...]:
        """What :meth:`add` reads."""
        numbers = self.NUMBERS if self.distinct else ()
        return ("call_end_status", "duration_s", "record_url", *TIME_COLUMNS, *numbers)

    def values(
        self, accounting: dict[str, Any], unique: tuple[int, int] | None = None
    ) -> dict[str, Any]:
        """The KPIs; ``unique``: the unique callers and callees, where they are not counted
        here."""
        counts, sums, medians = self.counts, self.sums, self.medians
        if unique is None:
            unique = (self.callers.count(), self.callees.count())
        n, n_conn = counts["total"], counts["connected"]
        return {
            "total_calls": n,
            "connected_calls": n_conn,
            "connect_rate": _ratio(n_conn, n),
            "caller_answer_rate": _ratio(counts["src_accept"], n),
            "callee_answer_rate": _ratio(counts["dst_accept"], counts["dst_call"]),
            "ner_proxy": _ratio(counts["ner"], n),
            "acd_s": _ratio(sums["billed_connected"], n_conn),
            "aloc_s": sums["talk_ms"] / 1000 / counts["talk"] if counts["talk"] else None,
            "billed_minutes": float(sums["billed"]) / 60.0,
            "median_caller_pdd_s": medians["caller_pdd"].value(),
            "median_callee_pdd_s": medians["callee_pdd"].value(),
            "median_bridge_s": medians["bridge"].value(),
            "short_call_ratio": _ratio(counts["short"], n_conn),
            "recording_coverage": _ratio(counts["recorded"], n_conn),
            "unique_callers": unique[0],
            "unique_callees": unique[1],
            # argmax returns the earliest hour on ties
            "peak_hour": int(np.argmax(self.hours)) if n else None,
            "rejected_records": int(accounting["rejected"]),
            "duplicates_dropped": int(accounting["duplicates_dropped"]),
        }


@lru_cache(maxsize=65536)
def _local_hour(quarter: int, tz: ZoneInfo) -> int:
    """Local hour of a UTC quarter-hour (every zone offset in use is a multiple of 15 min)."""
    return datetime.fromtimestamp(quarter * 900, tz).hour


def kpi_table(values: dict[str, Any]) -> pa.Table:
    return pa.table(
        {f.name: pa.array([values[f.name]], f.type) for f in KPI_SCHEMA}, schema=KPI_SCHEMA
    )
