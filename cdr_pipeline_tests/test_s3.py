"""Object storage: ``CDR_DATA_DIR=s3://bucket/prefix`` against moto's S3 server on loopback.

The runs are ``cdr-pipeline materialize`` subprocesses configured only by the variables a user
sets (``CDR_DATA_DIR`` and the usual ``AWS_*``); the checks read the bucket back with their own
pyarrow S3 client, and the readers an analyst would use.
"""

from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from cdr_pipeline import datasets, layout, publish
from cdr_pipeline.store import LocalStore, Store, open_store
from cdr_pipeline.transform.validate import unaccounted
from cdr_pipeline_tests.conftest import (
    S3_KEY_ID,
    S3_SECRET,
    S3Server,
    cli_materialize,
    kill_when_ready,
    publish_tables,
)

DAYS = ("2024-05-01", "2024-05-02")


def _env(tmp_path: Path, s3: S3Server, data_dir: str, calls: int = 300) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("CDR_", "DAGSTER_", "AWS_"))}
    return (
        keep
        | s3.env()
        | {
            "CDR_DATA_DIR": data_dir,
            "DAGSTER_HOME": str(tmp_path / "home"),
            "CDR_SIM_CALLS_PER_DAY": str(calls),
            "CDR_SIMULATOR": "true",
            "CDR_START_DATE": "2024-01-01",  # fixed days, not the demo's last 30
            "CDR_TIMEZONE": "Asia/Shanghai",
        }
    )


def _is_hidden(key: str) -> bool:
    return posixpath.basename(key).startswith(".") or key.startswith("_state/journal/")


@pytest.fixture(scope="module")
def lake(s3_server, tmp_path_factory):
    """The same two days materialized into a bucket and into a local folder."""
    bucket = s3_server.bucket("cdr-lake-test")
    s3_dir = tmp_path_factory.mktemp("s3-run")
    local_dir = tmp_path_factory.mktemp("local-run")
    s3_run = cli_materialize(_env(s3_dir, s3_server, f"s3://{bucket}/prod/cdr-pipeline"), *DAYS)
    cli_materialize(_env(local_dir, s3_server, str(local_dir / "data")), *DAYS)
    objects = s3_server.objects(f"{bucket}/prod/cdr-pipeline")
    return objects, local_dir / "data", s3_run, s3_dir / "home"


def test_a_bucket_gets_the_same_layout_and_bytes_as_a_local_folder(lake):
    objects, local, _, _ = lake
    files = {str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()}
    files -= {p for p in files if Path(p).name.startswith(".write-test-")}
    assert set(objects) == files
    assert not [k for k in objects if _is_hidden(k)], "no temporaries or journals remain"
    for key, data in objects.items():
        if key.endswith("manifest.json"):  # differs only in when it was fetched
            ours, theirs = json.loads(data), json.loads((local / key).read_text())
            assert ours.pop("fetched_at") and theirs.pop("fetched_at")
            assert ours == theirs
        else:
            assert data == (local / key).read_bytes(), key
    for day in DAYS:
        for dataset in datasets.NAMES:
            assert f"{layout.part_key(dataset, day)}" in objects


def test_readers_see_the_bucket_as_a_hive_dataset(lake, s3_server):
    _, local, run, _ = lake
    fs = s3_server.fs()
    for dataset in datasets.NAMES:
        remote = ds.dataset(
            f"cdr-lake-test/prod/cdr-pipeline/{dataset}",
            filesystem=fs,
            format="parquet",
            partitioning="hive",
        ).to_table()
        mine = ds.dataset(local / dataset, format="parquet", partitioning="hive").to_table()
        assert remote.sort_by("date").equals(mine.sort_by("date"))
    # The CLI read the KPIs back from the bucket and says where the data is.
    assert "connect_rate" in run.stdout
    assert "datasets under s3://cdr-lake-test/prod/cdr-pipeline/" in run.stdout


def test_s3_credentials_are_nowhere(lake):
    objects, _, run, home = lake
    texts = [run.stdout, run.stderr, *(data.decode("latin-1") for data in objects.values())]
    # the Dagster instance: run storage, event logs (metadata), compute logs
    texts += [p.read_bytes().decode("latin-1") for p in home.rglob("*") if p.is_file()]
    assert len(texts) > len(objects) + 2
    for secret in (S3_SECRET, S3_KEY_ID):
        assert not [t for t in texts if secret in t]


KILL_BETWEEN_MOVES = r"""
import os, sys, time
from pathlib import Path
from cdr_pipeline.store import Store

ready = Path(os.environ["CRASH_READY"])
real_move = Store.move
def move(self, src, dst):
    real_move(self, src, dst)
    if dst.startswith("cdr/date="):  # cdr is in place; cdr_rejects and the accounting are not
        ready.write_text("moved")
        time.sleep(600)
Store.move = move

from cdr_pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_rerun_replaces_a_day_cleanly_even_when_killed_half_way(s3_server, tmp_path):
    bucket = s3_server.bucket("cdr-lake-rerun")
    url, day = f"s3://{bucket}/cdr", DAYS[0]
    cli_materialize(_env(tmp_path, s3_server, url, calls=300), day, day)
    before = s3_server.objects(f"{bucket}/cdr")

    # Kill the re-run (400 calls a day now) after cdr is moved into place, before the rest.
    ready = tmp_path / "ready"
    env = _env(tmp_path, s3_server, url, calls=400) | {"CRASH_READY": str(ready)}
    args = ["materialize", "--start", day, "--end", day]
    kill_when_ready(KILL_BETWEEN_MOVES, args, env, ready)

    mid = s3_server.objects(f"{bucket}/cdr")
    journal = layout.state_key("journal", day)
    assert journal in mid  # the transaction is recorded, so it can be finished
    rejects = layout.part_key("cdr_rejects", day)
    assert mid[rejects] == before[rejects]  # not yet replaced: the journal makes it so
    assert mid[layout.part_key("cdr", day)] != before[layout.part_key("cdr", day)]
    # Every object a reader lists is whole: the staged ones are hidden.
    visible = [k for k in mid if k.endswith(".parquet") and not _is_hidden(k)]
    for key in visible:
        assert pq.read_metadata(pa.BufferReader(mid[key])).num_rows >= 0

    # The next reader of the day finishes the publish; a re-run then replaces it cleanly.
    store = open_store(url)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in s3_server.env().items():
            mp.setenv(k, v)
        acc = publish.read_state(store, "validation", day)["accounting"]
        assert unaccounted(acc) == 0
        after_recovery = s3_server.objects(f"{bucket}/cdr")
        assert not [k for k in after_recovery if _is_hidden(k)]
        assert publish.day_rows(store, "cdr_rejects", day) == acc["rejected"]
        assert publish.day_rows(store, "cdr", day) == acc["valid"]

    cli_materialize(_env(tmp_path, s3_server, url, calls=400), day, day)
    final = s3_server.objects(f"{bucket}/cdr")
    assert not [k for k in final if _is_hidden(k)]
    for dataset in datasets.NAMES:  # exactly one file per day folder, the new one
        folder = layout.day_key(dataset, day)
        assert [k for k in final if k.startswith(folder)] == [f"{folder}/part-0.parquet"]
    manifest = json.loads(final[f"{layout.raw_day_key(day)}/manifest.json"])
    raw = {k for k in final if k.startswith(layout.raw_day_key(day))}
    listed = {f"{layout.raw_day_key(day)}/{r['file']}" for r in manifest["requests"]}
    assert raw == listed | {f"{layout.raw_day_key(day)}/manifest.json"}  # old bodies gone
    assert (
        manifest["totals"]["records"]
        > json.loads(before[f"{layout.raw_day_key(day)}/manifest.json"])["totals"]["records"]
    )


def test_a_failed_write_leaves_the_previous_day_and_no_debris(s3_server, monkeypatch):
    bucket = s3_server.bucket("cdr-lake-fail")
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    store = open_store(f"s3://{bucket}/x")
    assert isinstance(store, Store) and not isinstance(store, LocalStore)
    day = "2024-06-01"
    old = {"cdr": pa.table({"v": [1, 2]}), "cdr_rejects": pa.table({"v": [3]})}
    publish_tables(store, day, old, state={"validation": {"v": 1}})
    before = s3_server.objects(f"{bucket}/x")

    def slices():
        yield pa.table({"v": list(range(1000))})
        raise RuntimeError("the transform failed half way through the day")

    schema = pa.schema([("v", pa.int64())])
    with pytest.raises(RuntimeError, match="half way"):
        publish_tables(
            store,
            day,
            {"cdr_rejects": pa.table({"v": [9]}), "cdr": (schema, slices())},
            state={"validation": {"v": 2}},
        )
    assert s3_server.objects(f"{bucket}/x") == before
    assert publish.read_day_table(store, "cdr", day).column("v").to_pylist() == [1, 2]


def test_any_fsspec_filesystem_serves_as_a_store(tmp_path):
    """Schemes pyarrow has no client for go through fsspec (here its in-memory one)."""
    store = open_store("memory://cdr-test/lake")
    assert not store.local and store.uri("cdr") == "memory://cdr-test/lake/cdr"
    day = "2024-06-02"
    for version in (1, 2):
        publish_tables(
            store,
            day,
            {"cdr": pa.table({"v": [version] * version}), "cdr_rejects": pa.table({"v": [0]})},
            state={"validation": {"v": version}},
        )
    assert publish.read_day_table(store, "cdr", day).column("v").to_pylist() == [2, 2]
    assert publish.read_state(store, "validation", day) == {"v": 2}
    assert store.list(layout.day_key("cdr", day)) == ["part-0.parquet"]
