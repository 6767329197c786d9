"""``TRANSFORM_VERSION`` is the day assets' ``code_version``: a change that alters what a day
publishes must bump it, or Dagster would not show the days built before as stale. The digest
of a chaos day's datasets is pinned to the version: a change of output without a new version
fails here."""

from __future__ import annotations

import hashlib
import json
import zlib
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from cdr_pipeline import raw
from cdr_pipeline.datasets import DATASETS
from cdr_pipeline.day import build_day
from cdr_pipeline.defs.assets import day_asset
from cdr_pipeline.defs.partitions import partitions_for
from cdr_pipeline.layout import Day
from cdr_pipeline.publish import read_day_table
from cdr_pipeline.settings import AnalyticsSettings, load_settings
from cdr_pipeline.simulator import CdrSimulator, SimConfig
from cdr_pipeline.store import open_store
from cdr_pipeline.transform import TRANSFORM_VERSION

TZ = ZoneInfo("Asia/Shanghai")
DAY = "2024-05-07"
# Every defect the simulator makes: duplicates, conflicting copies, rejects, text and
# millisecond times, schema drift, soft anomalies, abusive callers.
CHAOS = SimConfig(
    seed=11,
    calls_per_day=3000,
    timezone="Asia/Shanghai",
    duplicate_rate=0.05,
    conflict_rate=0.02,
    bad_record_rate=0.03,
    datetime_text_rate=0.1,
    epoch_ms_rate=0.05,
    schema_drift_rate=0.02,
    anomaly_rate=0.02,
    abuse=True,
)
# The datasets' content (not their bytes, which a new pyarrow may encode otherwise), by
# the version that publishes it. A new version adds its line; the old ones stay as a record.
DIGESTS = {
    "1": "b74eaaab0abe1237f0c859c8e7bc1964e674daddc2ea2a19a9902a6d6ed3eb6e",
}


def _chaos_day(root) -> Day:
    day = Day.from_key(DAY, TZ)
    sim = CdrSimulator(CHAOS)
    bodies, requests = [], []
    for hour in range(day.start - 3600, day.end + 3600, 3600):
        records = sim.listing(hour, hour + 3600)
        doc = {"cdr": records, "errorCode": "0", "offset": "0", "result": "Call Details"}
        body = zlib.compress(json.dumps(doc).encode())
        name, digest = raw.body_name(body, "zlib")
        bodies.append((body, "zlib"))
        window = [hour, hour + 3600]
        requests.append({"file": name, "sha256": digest, "window": window, "records": len(records)})
    manifest = {
        "date": DAY,
        "requests": requests,
        "totals": {"records": sum(r["records"] for r in requests), "pages": len(requests)},
    }
    raw.write_raw_day(open_store(root), DAY, bodies, manifest)
    return day


def content_digest(root) -> str:
    store, whole = open_store(root), hashlib.sha256()
    for dataset in DATASETS:
        rows = read_day_table(store, dataset.name, DAY).to_pylist()
        whole.update(json.dumps([dataset.name, rows], default=str, sort_keys=True).encode())
    return whole.hexdigest()


@pytest.mark.parametrize("grouping", [True, False], ids=["grouped", "each-number-parsed"])
def test_a_change_of_output_comes_with_a_new_transform_version(tmp_path, grouping):
    """Also the same output with CDR_NUMBER_GROUPING off (each number parsed)."""
    day = _chaos_day(tmp_path)
    analytics = AnalyticsSettings(number_grouping=grouping)
    build_day(open_store(tmp_path), day, TZ, analytics=analytics)
    digest = content_digest(tmp_path)
    assert DIGESTS.get(TRANSFORM_VERSION) == digest, (
        f"the datasets of the chaos day changed (digest {digest}): if that is meant, bump "
        f"TRANSFORM_VERSION in cdr_pipeline/transform/__init__.py and add its digest here"
    )


def test_the_day_assets_carry_the_transform_version():
    cdr_day = day_asset(DATASETS, partitions_for(load_settings({})))
    versions = {spec.key.path[0]: spec.code_version for spec in cdr_day.specs}
    assert versions == dict.fromkeys((d.name for d in DATASETS), TRANSFORM_VERSION)
    for spec in cdr_day.specs:  # each built from raw_cdr
        assert [dep.asset_key for dep in spec.deps] == [dg.AssetKey("raw_cdr")]
