"""Data-quality checks, run in the same run as the asset they guard.

The accounting check re-counts from the files themselves (raw manifest, Parquet footers,
the accounting record) so it catches a day whose files disagree, not only a bad sum.
"""

from typing import Any

import dagster as dg
import pyarrow.compute as pc

from cdr_pipeline import layout, publish, raw
from cdr_pipeline.operations import VOLUME_DAYS
from cdr_pipeline.report import volume_findings
from cdr_pipeline.resources import CdrAnalyticsResource, CdrApiResource, CdrStorageResource
from cdr_pipeline.store import Store
from cdr_pipeline.text import MAX_VALUE, cap, one_line
from cdr_pipeline.transform.analytics import MATCH_WARN, WORST_CALLS, worst_billed
from cdr_pipeline.transform.validate import ACCOUNTING_BUCKETS, unaccounted

REJECT_RATE_WARN = 0.05
FAILED_DAYS = "failed_days"  # in every check's metadata: the days it failed (alerts name them)


def _result(
    failed: list[str],
    metadata: dict[str, Any],
    *,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.WARN,
    description: str | None = None,
) -> dg.AssetCheckResult:
    """A check's result: passed when no day ``failed``, which its metadata names."""
    return dg.AssetCheckResult(
        passed=not failed,
        severity=severity,
        description=description,
        metadata={**metadata, FAILED_DAYS: ",".join(failed)},
    )


def _days(context: dg.AssetCheckExecutionContext) -> list[str]:
    return list(context.partition_keys)


def _accounting_problems(store: Store, day: str) -> tuple[dict[str, Any], list[str]]:
    state = publish.read_state(store, "validation", day)
    acc = state["accounting"]
    manifest = raw.read_raw_manifest(store, day)
    cdr_rows = publish.day_rows(store, "cdr", day)
    rej_rows = publish.day_rows(store, "cdr_rejects", day)
    # records the erase command took out of the raw bodies are still counted as fetched
    raw_records = manifest["totals"]["records"] + manifest["totals"].get("erased", 0)
    problems = []
    missing = unaccounted(acc)
    if missing:
        problems.append(
            f"fetched {acc['fetched']} != {' + '.join(ACCOUNTING_BUCKETS)} "
            f"({acc['fetched'] - missing}): {missing} records unaccounted for"
        )
    if raw_records != acc["fetched"]:
        problems.append(f"raw manifest holds {raw_records} records but {acc['fetched']} were read")
    if cdr_rows != acc["valid"]:
        problems.append(f"cdr file has {cdr_rows} rows, accounting says {acc['valid']}")
    if rej_rows != acc["rejected"]:
        problems.append(f"cdr_rejects file has {rej_rows} rows, accounting says {acc['rejected']}")
    return acc, problems


@dg.asset_check(
    asset="cdr",
    name="accounting_balances",
    blocking=True,
    description="fetched = valid + rejected + duplicates_dropped + overlap_copies + outside_day "
    "+ erased, per day, "
    "and the files hold exactly those counts.",
)
def accounting_balances(
    context: dg.AssetCheckExecutionContext, cdr_storage: CdrStorageResource
) -> dg.AssetCheckResult:
    meta: dict[str, Any] = {}
    failures = []
    for day in _days(context):
        try:
            acc, problems = _accounting_problems(cdr_storage.store, day)
        except (layout.StorageError, OSError) as exc:
            problems, acc = [str(exc)], {}
        meta[day] = (
            " / ".join(problems)
            if problems
            else f"{acc['fetched']} = " + " + ".join(str(acc.get(b, 0)) for b in ACCOUNTING_BUCKETS)
        )
        failures += [f"{day}: {p}" for p in problems]
    failed = sorted({f.split(":")[0] for f in failures})
    metadata = {"days": len(meta), **meta, "failures": "\n".join(failures) or "none"}
    return _result(failed, metadata, severity=dg.AssetCheckSeverity.ERROR)


@dg.asset_check(
    asset="call_kpis_daily",
    name="billing_reconciliation",
    description=f"Warns when under {MATCH_WARN:.0%} of connected calls are billed their talk "
    "rounded up to the day's billing increment, or any call is billed without an answer; "
    f"lists the {WORST_CALLS} calls billed furthest from their talk.",
)
def billing_reconciliation(
    context: dg.AssetCheckExecutionContext, cdr_storage: CdrStorageResource
) -> dg.AssetCheckResult:
    store, meta, warned = cdr_storage.store, {}, []
    for day in _days(context):
        kpis = publish.read_day_table(store, "call_kpis_daily", day).to_pylist()[0]
        rate, unanswered = kpis["billing_match_rate"], kpis["billed_without_answer"]
        bad = (rate is not None and rate < MATCH_WARN) or unanswered > 0
        if bad:
            warned.append(day)
        said = (
            f"increment {kpis['billing_increment_s']} s, "
            f"{'no reconciled calls' if rate is None else f'{rate:.2%} billed as talk'}, "
            f"{unanswered} billed without an answer"
        )
        if bad:
            columns = ["call_id", "call_end_status", "duration_s", "dst_accept_time"]
            cdr = publish.read_day_table(store, "cdr", day, columns=[*columns, "end_call_time"])
            worst = worst_billed(cdr, kpis["billing_increment_s"])
            unanswered_ids = pc.filter(
                cdr["call_id"],
                pc.and_(pc.greater(cdr["duration_s"], 0), pc.is_null(cdr["dst_accept_time"])),
            )
            said += (
                "; worst: "
                + (
                    ", ".join(
                        f"{one_line(w['call_id'])} (billed {w['billed']} s, talk {w['expected']} s)"
                        for w in worst
                    )
                    or "none"
                )
                + "; billed without an answer: "
                + (
                    ", ".join(map(one_line, unanswered_ids.slice(0, WORST_CALLS).to_pylist()))
                    or "none"
                )
            )
        meta[day] = cap(said, MAX_VALUE)
    return _result(warned, meta)


@dg.asset_check(
    asset="caller_risk_daily",
    name="flagged_callers",
    description="Warns when a caller's traffic looks like abuse (burst, fan_out, "
    "premium_night, repeat_target, short_ring_unanswered), naming the callers and flags.",
)
def flagged_callers(
    context: dg.AssetCheckExecutionContext,
    cdr_storage: CdrStorageResource,
    cdr_api: CdrApiResource,
) -> dg.AssetCheckResult:
    meta: dict[str, Any] = {}
    shown = cdr_storage.pseudonyms.shown
    for day in _days(context):
        risk = publish.read_day_table(cdr_storage.store, "caller_risk_daily", day).to_pylist()
        if risk:
            said = "; ".join(
                f"{one_line(shown(r['src']))}: {', '.join(r['flags'])}" for r in risk[:20]
            )
            more = f"; and {len(risk) - 20} more" if len(risk) > 20 else ""
            meta[day] = cap(said + more, MAX_VALUE)
    return _result(
        list(meta),
        {"flagged_days": len(meta), **meta},
        # the data directory holds the deployment's source alone (raw.claim_source)
        description=_flagged_said(len(meta), cdr_api.uses_simulator) if meta else None,
    )


def _flagged_said(days: int, simulated: bool) -> str:
    """Why the check warns: the data are fine, some callers are worth a look."""
    said = (
        f"callers on {days} day(s) look like abuse by the CDR_RISK_* thresholds (listed below "
        "by day, with their flags; caller_risk_daily has the figures): a call for someone to "
        "look at them, not a fault in the data"
    )
    if simulated:
        said += (
            ". The built-in simulator's traffic has such callers: it plants one of each "
            "pattern for the check to find, so the demo shows this warning"
        )
    return said


@dg.asset_check(
    asset="cdr",
    name="volume",
    description="Warns when a day has no calls, or fewer than CDR_VOLUME_WARN_SHARE of the "
    f"median of the {VOLUME_DAYS} days before (a wrong account, the provider's retention, an "
    "outage answered with no rows), naming the day and both counts.",
)
def volume(
    context: dg.AssetCheckExecutionContext,
    cdr_storage: CdrStorageResource,
    cdr_analytics: CdrAnalyticsResource,
) -> dg.AssetCheckResult:
    days = _days(context)
    said = volume_findings(cdr_storage.store, days, cdr_analytics.volume_warn_share)
    return _result(list(said), said)


@dg.asset_check(
    asset="cdr_rejects",
    name="reject_rate",
    description=f"Warns when more than {REJECT_RATE_WARN:.0%} of a day's records are rejected.",
)
def reject_rate(
    context: dg.AssetCheckExecutionContext, cdr_storage: CdrStorageResource
) -> dg.AssetCheckResult:
    meta: dict[str, Any] = {}
    worst, high = 0.0, []
    for day in _days(context):
        acc = publish.read_state(cdr_storage.store, "validation", day)["accounting"]
        denom = acc["valid"] + acc["rejected"]
        rate = acc["rejected"] / denom if denom else 0.0
        worst = max(worst, rate)
        if rate > REJECT_RATE_WARN:
            high.append(day)
        meta[day] = f"{rate:.2%} ({acc['rejected']} of {denom})"
    return _result(high, {"worst_rate": worst, "threshold": REJECT_RATE_WARN, **meta})
