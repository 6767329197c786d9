"""The data dictionary, in one place: what every column of every dataset means.

It feeds the Parquet files (each field's ``description`` metadata, which pyarrow, pandas and
Spark readers keep), the column schemas the Dagster UI shows, and ``docs/data-dictionary.md``
(``python -m cdr_pipeline.dictionary > docs/data-dictionary.md``; a test keeps them equal).
"""

from __future__ import annotations

import pyarrow as pa

_TIME = (
    "UTC timestamp, whole seconds; null when it did not happen. The date folder is the local day "
    "(CDR_TIMEZONE) of start_src_call_time"
)

CALL_END_STATUS = {
    0: "unknown",
    1: "connected: a normal call, both legs answered",
    2: "caller_no_answer: the caller (leg 1) did not answer",
    3: "callee_no_answer: the caller answered, the callee (leg 2) did not",
    4: "caller_unreachable",
    5: "callee_unreachable",
}
CALL_TYPE = {
    1: "VoIP",
    2: "IP to PSTN",
    3: "PSTN to PSTN (callback); also when the provider sends no callType",
}

COLUMNS: dict[str, dict[str, str]] = {
    "cdr": {
        "call_id": "the provider's callId, unique within a day",
        "src": "caller number as the provider sent it, e.g. 008613500000000 (00, country code, "
        "national number)",
        "dst": "callee number, in the same form",
        "start_src_call_time": f"the platform starts calling the caller (leg 1). {_TIME}",
        "start_src_ring_time": f"the caller's phone rings. {_TIME}",
        "src_accept_time": f"the caller answers. {_TIME}",
        "start_dst_call_time": f"the platform starts calling the callee (leg 2). {_TIME}",
        "start_dst_ring_time": f"the callee's phone rings. {_TIME}",
        "dst_accept_time": f"the callee answers: the talk begins. {_TIME}",
        "end_call_time": f"the call ends (hang-up). {_TIME}",
        "call_end_status": "how the call ended, a code: "
        + "; ".join(f"{k} {v}" for k, v in CALL_END_STATUS.items()),
        "call_end_status_label": "call_end_status as a word (unknown, connected, "
        "caller_no_answer, callee_no_answer, caller_unreachable, callee_unreachable)",
        "duration_s": "seconds billed by the provider (billing may round the talk time up to "
        "its increment, so it can differ from end_call_time - dst_accept_time)",
        "record_url": "URL of the call's recording; null when not recorded or recording failed",
        "call_type": "the kind of call: " + "; ".join(f"{k} {v}" for k, v in CALL_TYPE.items()),
        "biz_id": "the bizId of the callback request, echoed; null when empty",
        "order_id": "order id (in bills only); null when empty",
        "extra": "fields the provider sent that the contract does not know, as a JSON object "
        "(schema drift, kept rather than lost); null when none",
    },
    "cdr_rejects": {
        "reason": "why the record was rejected: the first failing rule, in this order: "
        "not_an_object, missing_call_id, missing_start_time, bad_timestamp, bad_status, "
        "bad_duration, bad_call_type, end_before_start, bad_field",
        "detail": "the rule's finding in words (which field, what value)",
        "raw": "the record exactly as received, as JSON text",
        "source": "the raw body it came from (a file of raw/cdr/date=.../, in its manifest)",
    },
    "call_outcome_daily": {
        "call_type": "as in cdr",
        "call_end_status": "as in cdr",
        "call_end_status_label": "as in cdr",
        "calls": "calls of the day with this call_type and call_end_status",
        "billed_seconds": "sum of their duration_s",
        "avg_billed_seconds": "billed_seconds / calls",
        "share_of_calls": "calls / all calls of the day",
    },
    "call_kpis_daily": {
        "total_calls": "valid calls of the day",
        "connected_calls": "calls with call_end_status 1",
        "connect_rate": "connected_calls / total_calls",
        "caller_answer_rate": "calls with src_accept_time / total_calls",
        "callee_answer_rate": "calls with dst_accept_time / calls with start_dst_call_time "
        "(of the calls that reached leg 2, the share the callee answered)",
        "ner_proxy": "calls with status 1, 2 or 3 / total_calls (network effectiveness: the "
        "network did its part, whoever did not answer)",
        "acd_s": "average call duration, billed: billed seconds of connected calls / "
        "connected_calls",
        "aloc_s": "average length of conversation, measured: mean of end_call_time - "
        "dst_accept_time over connected calls (equals acd_s only when billing is to the "
        "second)",
        "billed_minutes": "all billed seconds of the day / 60",
        "median_caller_pdd_s": "median post-dial delay of leg 1: start_src_ring_time - "
        "start_src_call_time, seconds",
        "median_callee_pdd_s": "median post-dial delay of leg 2: start_dst_ring_time - "
        "start_dst_call_time, seconds",
        "median_bridge_s": "median time from the caller's answer to the callee's dialling: "
        "start_dst_call_time - src_accept_time, seconds",
        "short_call_ratio": "connected calls with duration_s < 10 / connected_calls",
        "recording_coverage": "connected calls with a record_url / connected_calls",
        "unique_callers": "distinct src",
        "unique_callees": "distinct dst",
        "peak_hour": "local hour (0..23, CDR_TIMEZONE) with the most call starts; the earliest "
        "on ties",
        "rejected_records": "records of the day rejected (cdr_rejects rows)",
        "duplicates_dropped": "copies the provider served twice, dropped",
    },
}
NOTE_RATIOS = "A ratio whose denominator is zero is null, never NaN."


def described(schema: pa.Schema, dataset: str) -> pa.Schema:
    """``schema`` with each field's description in its metadata (written into the Parquet)."""
    meanings = COLUMNS[dataset]
    return pa.schema(
        [f.with_metadata({"description": meanings[f.name]}) for f in schema],
        metadata=schema.metadata,
    )


def markdown(schemas: dict[str, pa.Schema]) -> str:
    lines = [
        "# Data dictionary",
        "",
        "Made from `cdr_pipeline/dictionary.py`, which also writes each description into the",
        "Parquet files' field metadata and the Dagster UI's column schemas. Every dataset is",
        "partitioned by `date` (the folder `date=YYYY-MM-DD`, the local day in `CDR_TIMEZONE`).",
    ]
    for dataset, schema in schemas.items():
        lines += ["", f"## `{dataset}`", "", "| column | type | meaning |", "|---|---|---|"]
        lines += [f"| `{f.name}` | {f.type} | {COLUMNS[dataset][f.name]} |" for f in schema]
    lines += ["", NOTE_RATIOS, ""]
    return "\n".join(lines)


def _schemas() -> dict[str, pa.Schema]:
    from cdr_pipeline.transform.summarize import KPI_SCHEMA, OUTCOME_SCHEMA
    from cdr_pipeline.transform.validate import CDR_SCHEMA, REJECTS_SCHEMA

    return {
        "cdr": CDR_SCHEMA,
        "cdr_rejects": REJECTS_SCHEMA,
        "call_outcome_daily": OUTCOME_SCHEMA,
        "call_kpis_daily": KPI_SCHEMA,
    }


if __name__ == "__main__":
    print(markdown(_schemas()), end="")
