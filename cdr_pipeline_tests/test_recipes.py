"""The analysts' guide's recipes (docs/analysts.md), run as written against freshly
materialized data."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cdr_pipeline_tests.conftest import Env

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "analysts.md"
RECIPES = dict(re.findall(r"<!-- recipe: (\w+) -->\n```python\n(.*?)```", GUIDE.read_text(), re.S))


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory, sim_server_module):
    folder = tmp_path_factory.mktemp("analyst")
    with pytest.MonkeyPatch.context() as monkeypatch:
        import dagster as dg

        live = str(folder / "data" / "live")  # where the guide's recipes read
        server = sim_server_module(calls_per_day=500, abuse=True)
        env = Env(monkeypatch, folder, server, CDR_DATA_DIR=live)
        with dg.instance_for_test() as instance:
            assert env.run(instance, "2024-03-01", "2024-03-02").success
    return folder  # holds data/live


@pytest.fixture(scope="module")
def s3_lake(tmp_path_factory, sim_server_module, s3_server):
    """The same two days in ``s3://cdr-lake/cdr-pipeline`` (moto's S3 server on loopback)."""
    folder = tmp_path_factory.mktemp("analyst-s3")
    s3_server.bucket("cdr-lake")
    with pytest.MonkeyPatch.context() as monkeypatch:
        import dagster as dg

        for k, v in s3_server.env().items():
            monkeypatch.setenv(k, v)
        env = Env(
            monkeypatch,
            folder,
            sim_server_module(calls_per_day=500),
            CDR_DATA_DIR="s3://cdr-lake/cdr-pipeline",
        )
        with dg.instance_for_test() as instance:
            assert env.run(instance, "2024-03-01", "2024-03-02").success
    return s3_server


def test_the_guide_has_the_recipes():
    assert set(RECIPES) == {
        "duckdb",
        "pandas",
        "polars",
        "pandas_s3",
        "duckdb_s3",
        "destinations",
        "busy_hour",
        "flagged",
        "premium",
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pandas_s3", "duckdb_s3"])
def test_object_storage_recipe_runs_as_written(s3_lake, tmp_path, name):
    """Run where no local data exists, with only the variables a user sets for S3."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDR_"))}
    proc = subprocess.run(
        [sys.executable, "-c", RECIPES[name]],
        cwd=tmp_path,
        env=env | s3_lake.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2024-03-01" in proc.stdout and "2024-03-02" in proc.stdout
    assert ("connect_rate" if name == "pandas_s3" else "connected") in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["duckdb", "pandas", "polars", "destinations", "busy_hour", "flagged", "premium"]
)
def test_recipe_runs_as_written(data_folder, name):
    proc = subprocess.run(
        [sys.executable, "-c", RECIPES[name]],
        cwd=data_folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    if name == "duckdb":
        assert "datetime.date(2024, 3, 1)" in out and "datetime.date(2024, 3, 2)" in out
    elif name == "pandas":
        assert "connected" in out and "caller_no_answer" in out
    elif name == "destinations":
        assert "('CN', 'mobile'," in out and "'premium_rate'" in out
    elif name == "busy_hour":
        assert "2024-03-01" in out and "2024-03-02" in out and "erlangs" in out
    elif name == "flagged":
        for flag in ("burst", "fan_out", "premium_night", "repeat_target", "short_ring"):
            assert flag in out
    elif name == "premium":
        assert "'008613900000005'" in out  # the premium_night caller
    else:
        assert "2024-03-01" in out and "total_calls" in out
