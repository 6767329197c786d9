"""Data-quality checks, run in the same run as the asset they guard.

The accounting check re-counts from the files themselves (raw manifest, Parquet footers,
the accounting record) so it catches a day whose files disagree, not only a bad sum.
"""

from typing import Any

import dagster as dg
import pyarrow.compute as pc

from cdr_pipeline import storage
from cdr_pipeline.resources import CdrStorageResource
from cdr_pipeline.store import Store
from cdr_pipeline.transform.validate import ACCOUNTING_BUCKETS, unaccounted

REJECT_RATE_WARN = 0.05
BILLED_TOLERANCE_S = 60
EXAMPLES = 5


def _days(context: dg.AssetCheckExecutionContext) -> list[str]:
    return list(context.partition_keys)


def _accounting_problems(store: Store, day: str) -> tuple[dict[str, Any], list[str]]:
    state = storage.read_state(store, "validation", day)
    acc = state["accounting"]
    manifest = storage.read_raw_manifest(store, day)
    cdr_rows = storage.day_rows(store, "cdr", day)
    rej_rows = storage.day_rows(store, "cdr_rejects", day)
    raw_records = manifest["totals"]["records"]
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
    description="fetched = valid + rejected + duplicates_dropped + overlap_copies + outside_day, "
    "per day, "
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
        except (storage.StorageError, OSError) as exc:
            problems, acc = [str(exc)], {}
        meta[day] = (
            " / ".join(problems)
            if problems
            else f"{acc['fetched']} = " + " + ".join(str(acc[b]) for b in ACCOUNTING_BUCKETS)
        )
        failures += [f"{day}: {p}" for p in problems]
    return dg.AssetCheckResult(
        passed=not failures,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"days": len(meta), **meta, "failures": "\n".join(failures) or "none"},
    )


def soft_anomalies(cdr) -> dict[str, tuple[int, list[str]]]:
    """Counts and example call ids of what is suspicious but not a reject."""
    status = cdr["call_end_status"]
    duration = cdr["duration_s"]
    no_answer = pc.is_null(cdr["dst_accept_time"])
    billed_no_answer = pc.and_(pc.greater(duration, 0), no_answer)
    connected_no_answer = pc.and_(pc.equal(status, 1), no_answer)
    talk = pc.divide(
        pc.cast(pc.subtract(cdr["end_call_time"], cdr["dst_accept_time"]), "int64"), 1000
    )
    far = pc.fill_null(
        pc.greater(pc.abs(pc.subtract(pc.cast(duration, "int64"), talk)), BILLED_TOLERANCE_S), False
    )
    out = {}
    for name, mask in (
        ("billed_without_answer", billed_no_answer),
        ("connected_without_callee_answer", connected_no_answer),
        ("billed_far_from_timestamps", far),
    ):
        mask = pc.fill_null(mask, False)
        ids = cdr["call_id"].filter(mask)
        out[name] = (len(ids), ids.slice(0, EXAMPLES).to_pylist())
    return out


@dg.asset_check(
    asset="cdr",
    name="billing_consistency",
    description="Billed seconds without an answer, status 1 without a callee answer, billed "
    f"seconds more than {BILLED_TOLERANCE_S} s from the timestamps (warnings, not rejects).",
)
def billing_consistency(
    context: dg.AssetCheckExecutionContext, cdr_storage: CdrStorageResource
) -> dg.AssetCheckResult:
    totals: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    for day in _days(context):
        cdr = storage.read_day_table(cdr_storage.store, "cdr", day)
        for name, (count, ids) in soft_anomalies(cdr).items():
            totals[name] = totals.get(name, 0) + count
            if ids:
                examples.setdefault(name, []).extend(f"{day}: {i}" for i in ids)
    return dg.AssetCheckResult(
        passed=not any(totals.values()),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            **totals,
            "examples": dg.MetadataValue.md(
                "\n".join(f"- **{k}**: " + ", ".join(v[:EXAMPLES]) for k, v in examples.items())
                or "none"
            ),
        },
    )


@dg.asset_check(
    asset="cdr_rejects",
    name="reject_rate",
    description=f"Warns when more than {REJECT_RATE_WARN:.0%} of a day's records are rejected.",
)
def reject_rate(
    context: dg.AssetCheckExecutionContext, cdr_storage: CdrStorageResource
) -> dg.AssetCheckResult:
    meta: dict[str, Any] = {}
    worst = 0.0
    for day in _days(context):
        acc = storage.read_state(cdr_storage.store, "validation", day)["accounting"]
        denom = acc["valid"] + acc["rejected"]
        rate = acc["rejected"] / denom if denom else 0.0
        worst = max(worst, rate)
        meta[day] = f"{rate:.2%} ({acc['rejected']} of {denom})"
    return dg.AssetCheckResult(
        passed=worst <= REJECT_RATE_WARN,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"worst_rate": worst, "threshold": REJECT_RATE_WARN, **meta},
    )
