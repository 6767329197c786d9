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

_NUMBERS = (
    "Parsed with Google's libphonenumber metadata after removing spaces, -, ( and ) and "
    "reading a leading 00 as +; a number without + is read in CDR_DEFAULT_REGION (CN). A "
    "number that does not parse gives nulls, never a reject"
)
_RECONCILED = "Over connected calls with dst_accept_time and end_call_time"
NUMBER_TYPES = (
    "fixed_line",
    "mobile",
    "fixed_line_or_mobile",
    "toll_free",
    "premium_rate",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "unknown",
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
        "start_local": "start_src_call_time as a local wall-clock time in CDR_TIMEZONE (no zone "
        "attached: what a clock on the wall showed), for grouping by local hour or day",
        "src_e164": f"the caller's number in E.164 form (+ country code, national number) when "
        f"libphonenumber says it is a possible number; else null. {_NUMBERS}",
        "src_country": "the caller's country, ISO 3166-1 alpha-2: the region of the number when "
        "it is valid, else the region of its country code; null when unknown",
        "dst_e164": "the callee's number in E.164 form, as src_e164",
        "dst_country": "the callee's country, as src_country",
        "dst_type": "the callee's number type by libphonenumber when the number is valid: "
        + ", ".join(NUMBER_TYPES[:-1])
        + "; else unknown",
    },
    "cdr_rejects": {
        "reason": "why the record was rejected: the first failing rule, in this order: "
        "not_an_object, missing_call_id, missing_start_time, bad_timestamp, bad_status, "
        "bad_duration, bad_call_type, end_before_start, bad_field; unreadable: a record nested "
        "beyond the parser's depth",
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
        "billing_increment_s": f"{_RECONCILED}: the largest of 60, 30, 6 seconds that at least "
        "99% of those billed (duration_s > 0) are multiples of; else 1",
        "billing_match_rate": f"{_RECONCILED}: the share billed exactly the talk "
        "(end_call_time - dst_accept_time) rounded up to billing_increment_s; null when none",
        "billed_without_answer": "calls with duration_s > 0 and no dst_accept_time",
        "answered_without_billing": "calls with dst_accept_time and a later end_call_time, "
        "and duration_s = 0",
    },
    "call_destinations_daily": {
        "dst_country": "the callee's country as in cdr; null when unknown",
        "dst_type": "the callee's number type as in cdr",
        "calls": "calls of the day to this country and type",
        "connected_calls": "those with call_end_status 1",
        "billed_seconds": "sum of their duration_s",
        "connect_rate": "connected_calls / calls",
        "acd_s": "billed seconds of connected calls / connected_calls; null when none",
        "share_of_calls": "calls / all calls of the day",
        "low_sample": "calls < CDR_LOW_SAMPLE_CALLS (30): its rates say little",
    },
    "call_load_hourly": {
        "hour_start": "the clock hour's start, UTC (a local day has 23 or 25 of them when "
        "clocks change)",
        "local_hour": "the hour on the local clock, 0..23 (repeated on the day clocks go back)",
        "attempts": "calls whose start_src_call_time is in the hour",
        "connected_calls": "those with call_end_status 1",
        "talk_seconds": "seconds of talk (dst_accept_time to end_call_time) of the day's calls "
        "inside the hour: a call's talk is split exactly across the hours it spans; talk after "
        "the day's end is not counted",
        "erlangs": "talk_seconds / 3600: the average number of calls in progress (ITU-T E.500)",
        "peak_concurrent_calls": "the most calls talking at one instant of the hour (an exact "
        "sweep; a call ending at t and one starting at t do not overlap)",
        "busy_hour": "the hour with the most talk_seconds (the earliest on ties); all false on a "
        "day without talk",
    },
    "caller_risk_daily": {
        "src": "the caller, as in cdr (callers with at least one flag only)",
        "src_country": "as in cdr",
        "calls": "calls of the day by this caller",
        "distinct_destinations": "distinct dst called",
        "unanswered_share": "calls without dst_accept_time / calls",
        "short_call_share": "connected calls with duration_s < 10 / calls",
        "international_share": "calls whose dst_country and src_country are both known and "
        "differ / calls",
        "premium_rate_calls": "calls to premium_rate numbers",
        "night_calls": "calls starting at local hours 0..5",
        "max_calls_10min": "the most calls starting in any 10 minutes [t, t + 600 s)",
        "max_calls_one_number": "the most calls to any one dst",
        "short_ring_unanswered_calls": "calls whose callee rang (start_dst_ring_time), did not "
        "answer, and the call ended at most CDR_RISK_SHORT_RING_S (5) seconds after the ring "
        "began",
        "flags": "why the caller is listed, sorted: burst (max_calls_10min >= "
        "CDR_RISK_BURST_CALLS, 20), fan_out (distinct_destinations >= CDR_RISK_FAN_OUT, 50), "
        "premium_night (calls to premium_rate numbers at local hours 0..5 >= "
        "CDR_RISK_PREMIUM_NIGHT, 1), repeat_target (max_calls_one_number >= "
        "CDR_RISK_REPEAT_TARGET, 20), short_ring_unanswered (short_ring_unanswered_calls >= "
        "CDR_RISK_SHORT_RING, 10)",
    },
}
NOTE_RATIOS = "A ratio whose denominator is zero is null, never NaN."
# Columns that hold a subscriber's number, or may (a recording's URL, fields the contract does
# not know, a record's raw text): personal data under PIPL and the GDPR (docs/privacy.md). In
# the shared zone a NUMBER column gives way to its token and masked form, and a DROPPED one
# is left out (an E.164 column's number has the token of the column it was read from).
NUMBER, DROPPED = "number", "dropped"
PERSONAL = {
    "cdr": {
        "src": NUMBER,
        "dst": NUMBER,
        "src_e164": DROPPED,
        "dst_e164": DROPPED,
        "record_url": DROPPED,
        "extra": DROPPED,
    },
    "cdr_rejects": {"raw": DROPPED},
    "caller_risk_daily": {"src": NUMBER},
}


def shared_meanings(column: str) -> dict[str, str]:
    """What stands for a NUMBER column in the shared zone."""
    return {
        f"{column}_token": f"{column}'s keyed token (docs/privacy.md): 24 hex digits, the same "
        "for every spelling of one number on every day under one CDR_PSEUDONYM_KEY; null "
        f"when {column} is",
        f"{column}_masked": f"{column} for people: the country code, the first three and the "
        "last four digits (+86 136****4568); *** for text that is not a number",
    }


def described(schema: pa.Schema, dataset: str) -> pa.Schema:
    """``schema`` with each field's description in its metadata (written into the Parquet)."""
    meanings = dict(COLUMNS[dataset])
    for column, kind in PERSONAL.get(dataset, {}).items():
        if kind == NUMBER:
            meanings |= shared_meanings(column)
    return pa.schema(
        [f.with_metadata({"description": meanings[f.name]}) for f in schema],
        metadata=schema.metadata,
    )


def markdown(schemas: dict[str, pa.Schema]) -> str:
    """The dictionary page: each dataset's columns, types and meanings (from the schemas'
    field metadata, as readers of the files see them)."""
    lines = [
        "# Data dictionary",
        "",
        "Made from `cdr_pipeline/dictionary.py`, which also writes each description into the",
        "Parquet files' field metadata and the Dagster UI's column schemas. Every dataset is",
        "partitioned by `date` (the folder `date=YYYY-MM-DD`, the local day in `CDR_TIMEZONE`).",
    ]
    for dataset, schema in schemas.items():
        lines += ["", f"## `{dataset}`", "", "| column | type | meaning |", "|---|---|---|"]
        personal = PERSONAL.get(dataset, set())
        lines += [
            f"| `{f.name}`{' (personal)' if f.name in personal else ''} | {f.type} | "
            f"{f.metadata[b'description'].decode()} |"
            for f in schema
        ]
    lines += [
        "",
        NOTE_RATIOS,
        "",
        "*(personal)*: the column holds a subscriber's phone number, or may (a recording's URL, "
        "fields the contract does not know, a record's raw text): personal data under PIPL and "
        "the GDPR. See [Privacy](privacy.md).",
        "",
        "## The shared zone",
        "",
        "With `CDR_PSEUDONYM_KEY` set, every day is also published to `CDR_SHARED_DATA_DIR`, in "
        "the same layout and the same transaction, without a clear number; every dataset not "
        "named here is there as it is:",
        "",
    ]
    for dataset, columns in PERSONAL.items():
        if dataset not in schemas:
            continue
        swaps = [
            f"`{c}` becomes `{c}_token` and `{c}_masked`" for c, k in columns.items() if k == NUMBER
        ]
        gone = [f"`{c}`" for c, k in columns.items() if k == DROPPED]
        said = swaps + ([f"{', '.join(gone)} left out"] if gone else [])
        lines.append(f"- `{dataset}`: {'; '.join(said)}.")
    lines += ["", *(f"- `{c}`: {m}." for c, m in shared_meanings("src").items()), ""]
    return "\n".join(lines)


def registry_markdown() -> str:
    """The page for the datasets of the registry (``python -m cdr_pipeline.dictionary``)."""
    from cdr_pipeline.datasets import DATASETS

    return markdown({d.name: d.schema for d in DATASETS})


if __name__ == "__main__":
    print(registry_markdown(), end="")
