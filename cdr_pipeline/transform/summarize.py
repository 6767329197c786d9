"""The daily call-outcome summary and KPIs, exactly as the data contract defines them."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

OUTCOME_SCHEMA = pa.schema(
    [
        pa.field("call_type", pa.int8()),
        pa.field("call_end_status", pa.int8()),
        pa.field("call_end_status_label", pa.string()),
        pa.field("calls", pa.int64()),
        pa.field("billed_seconds", pa.int64()),
        pa.field("avg_billed_seconds", pa.float64()),
        pa.field("share_of_calls", pa.float64()),
    ]
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
KPI_SCHEMA = pa.schema(
    [pa.field(n, pa.int64()) for n in KPI_COUNTS[:2]]
    + [pa.field(n, pa.float64()) for n in KPI_FLOATS]
    + [pa.field(n, pa.int64()) for n in KPI_COUNTS[2:4]]
    + [pa.field("peak_hour", pa.int8())]
    + [pa.field(n, pa.int64()) for n in KPI_COUNTS[4:]]
)


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def call_outcome_daily(cdr: pa.Table) -> pa.Table:
    total = cdr.num_rows
    if total == 0:
        return OUTCOME_SCHEMA.empty_table()
    keys = ["call_type", "call_end_status", "call_end_status_label"]
    grouped = cdr.group_by(keys).aggregate([("call_id", "count"), ("duration_s", "sum")])
    grouped = grouped.sort_by([("call_type", "ascending"), ("call_end_status", "ascending")])
    calls = pc.cast(grouped["call_id_count"], pa.int64())
    billed = pc.cast(grouped["duration_s_sum"], pa.int64())
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
            "share_of_calls": pc.divide(pc.cast(calls, pa.float64()), float(total)),
        },
        schema=OUTCOME_SCHEMA,
    )


def _seconds(col: pa.ChunkedArray) -> np.ndarray:
    """Epoch seconds as float, NaN where null."""
    ms = pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)
    return np.asarray(ms, dtype="float64") / 1000.0


def _median_gap(later: np.ndarray, earlier: np.ndarray) -> float | None:
    gap = later - earlier
    gap = gap[~np.isnan(gap)]
    return float(np.median(gap)) if gap.size else None


def kpi_values(cdr: pa.Table, accounting: dict[str, Any], tz: ZoneInfo) -> dict[str, Any]:
    n = cdr.num_rows
    status = (
        cdr["call_end_status"].to_numpy(zero_copy_only=False).astype("int64") if n else np.zeros(0)
    )
    duration = (
        cdr["duration_s"].to_numpy(zero_copy_only=False).astype("int64") if n else np.zeros(0)
    )
    t = {name: _seconds(cdr[name]) for name in cdr.column_names if name.endswith("_time")}
    connected = status == 1
    n_conn = int(connected.sum())
    has = {k: ~np.isnan(v) for k, v in t.items()}
    with_url = (
        pc.is_valid(cdr["record_url"]).to_numpy(zero_copy_only=False) if n else np.zeros(0, bool)
    )
    talk = (t["end_call_time"] - t["dst_accept_time"])[connected] if n else np.zeros(0)
    talk = talk[~np.isnan(talk)]
    peak = None
    if n:
        hours = np.array(
            [_local_hour(int(s) // 900, tz) for s in t["start_src_call_time"]], dtype="int64"
        )
        counts = np.bincount(hours, minlength=24)
        peak = int(np.argmax(counts))  # argmax returns the earliest hour on ties
    return {
        "total_calls": n,
        "connected_calls": n_conn,
        "connect_rate": _ratio(n_conn, n),
        "caller_answer_rate": _ratio(int(has["src_accept_time"].sum()) if n else 0, n),
        "callee_answer_rate": _ratio(
            int(has["dst_accept_time"].sum()) if n else 0,
            int(has["start_dst_call_time"].sum()) if n else 0,
        ),
        "ner_proxy": _ratio(int(np.isin(status, (1, 2, 3)).sum()), n),
        "acd_s": _ratio(int(duration[connected].sum()), n_conn),
        "aloc_s": float(talk.mean()) if talk.size else None,
        "billed_minutes": float(duration.sum()) / 60.0,
        "median_caller_pdd_s": _median_gap(t["start_src_ring_time"], t["start_src_call_time"])
        if n
        else None,
        "median_callee_pdd_s": _median_gap(t["start_dst_ring_time"], t["start_dst_call_time"])
        if n
        else None,
        "median_bridge_s": _median_gap(t["start_dst_call_time"], t["src_accept_time"])
        if n
        else None,
        "short_call_ratio": _ratio(int((connected & (duration < 10)).sum()), n_conn),
        "recording_coverage": _ratio(int((connected & with_url).sum()), n_conn),
        "unique_callers": pc.count_distinct(cdr["src"]).as_py() if n else 0,
        "unique_callees": pc.count_distinct(cdr["dst"]).as_py() if n else 0,
        "peak_hour": peak,
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
