"""The README's analyst recipes, run as written against a freshly materialized data folder."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cdr_pipeline_tests.conftest import Env

README = Path(__file__).resolve().parents[1] / "README.md"
RECIPES = dict(re.findall(r"<!-- recipe: (\w+) -->\n```python\n(.*?)```", README.read_text(), re.S))


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory, sim_server_module):
    folder = tmp_path_factory.mktemp("analyst")
    with pytest.MonkeyPatch.context() as monkeypatch:
        import dagster as dg

        env = Env(monkeypatch, folder, sim_server_module(calls_per_day=500))
        with dg.instance_for_test() as instance:
            assert env.run(instance, "2024-03-01", "2024-03-02").success
    return folder  # holds data/


def test_the_readme_has_the_recipes():
    assert set(RECIPES) == {"duckdb", "pandas", "polars"}


@pytest.mark.parametrize("name", ["duckdb", "pandas", "polars"])
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
    else:
        assert "2024-03-01" in out and "total_calls" in out
