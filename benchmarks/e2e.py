"""A backfill of many days through the real Dagster machinery, with its wall time split.

``python -m benchmarks.e2e DAYS CALLS_PER_DAY`` starts the simulator in its own process,
materializes DAYS partitions as one single-run backfill (``execute_in_process`` with a
partition range, the same code path ``dagster asset materialize --partition-range`` takes)
and prints one JSON line: fetch (the ``raw_cdr`` step), transform (reading and checking
pages), write (de-duplication, sort and Parquet, plus the summary assets), checks, and what
is left of the wall time: Dagster's own overhead.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from benchmarks.data import simulator_process


def main(days: int, calls_per_day: int) -> dict[str, float]:
    with (
        simulator_process("--calls-per-day", str(calls_per_day)) as url,
        tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp,
    ):
        os.environ.update(
            CDR_API_URL=url,
            CDR_API_ID="bench",
            CDR_APP_ID="bench",
            CDR_DATA_DIR=str(Path(tmp) / "data"),
            CDR_START_DATE="2024-01-01",
            CDR_TIMEZONE="Asia/Shanghai",
            CDR_CONCURRENCY="4",
        )
        return _run(days)


def _run(days: int) -> dict[str, float]:
    import dagster as dg

    from cdr_pipeline.definitions import defs

    first = date(2024, 4, 1)
    last = first + timedelta(days=days - 1)
    job = defs().resolve_job_def("cdr_daily_job")
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    tags = {
        "dagster/asset_partition_range_start": first.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat(),
    }
    with dg.DagsterInstance.ephemeral() as instance:
        start = time.perf_counter()
        result = job.execute_in_process(instance=instance, tags=tags, run_config=quiet)
        wall = time.perf_counter() - start
        assert result.success
        steps: dict[str, float] = {}
        began: dict[str, float] = {}
        for record in instance.all_logs(result.run_id):
            event = record.dagster_event
            if event is None or record.step_key is None:
                continue
            if event.event_type_value == "STEP_START":
                began[record.step_key] = record.timestamp
            elif event.event_type_value == "STEP_SUCCESS":
                steps[record.step_key] = record.timestamp - began[record.step_key]
        timing = {"read_check_s": 0.0, "dedup_sort_write_s": 0.0}
        records = 0
        for record in instance.fetch_materializations(dg.AssetKey("cdr"), limit=10_000).records:
            meta = record.asset_materialization.metadata
            for key in timing:
                if f"timing/{key}" in meta:
                    timing[key] += float(meta[f"timing/{key}"].value)
            if "accounting/fetched" in meta:
                records += int(meta["accounting/fetched"].value)
    fetch = steps.get("raw_cdr", 0.0)
    validated = steps.get("cdr_day", 0.0)
    summaries = 0.0  # published with cdr, in the same step
    checks = sum(
        v for k, v in steps.items() if "accounting" in k or "consistency" in k or "rate" in k
    )
    transform = timing["read_check_s"]
    write = timing["dedup_sort_write_s"] + summaries
    other_in_steps = validated - transform - timing["dedup_sort_write_s"]
    return {
        "days": days,
        "records": records,
        "wall_s": wall,
        "fetch_s": fetch,
        "transform_s": transform,
        "write_s": write,
        "checks_s": checks,
        "dagster_overhead_s": wall - fetch - validated - summaries - checks + other_in_steps,
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), int(sys.argv[2]))))
