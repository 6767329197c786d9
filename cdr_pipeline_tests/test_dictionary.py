"""One data dictionary: the Parquet field metadata, the Dagster column schemas and
docs/data-dictionary.md all say the same thing about every column."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from cdr_pipeline import dictionary
from cdr_pipeline.datasets import DATASETS
from cdr_pipeline_tests.conftest import Env

ROOT = Path(__file__).resolve().parents[1]


def test_every_column_is_described_everywhere(monkeypatch, tmp_path, sim_server, instance):
    for d in DATASETS:
        assert set(d.schema.names) == set(dictionary.COLUMNS[d.name]), d.name
    assert set(dictionary.COLUMNS) == {d.name for d in DATASETS}
    assert (ROOT / "docs" / "data-dictionary.md").read_text() == dictionary.registry_markdown(), (
        "regenerate: .venv/bin/python -m cdr_pipeline.dictionary > docs/data-dictionary.md"
    )
    env = Env(monkeypatch, tmp_path, sim_server(calls_per_day=200))
    assert env.run(instance, "2024-03-05").success
    for dataset, meanings in dictionary.COLUMNS.items():
        (path,) = (env.root / dataset).glob("*/*.parquet")
        written = pq.read_schema(path)  # what pandas, DuckDB's and Spark's readers see
        assert {f.name: f.metadata[b"description"].decode() for f in written} == meanings
        spec = env.defs.resolve_assets_def(dataset).specs_by_key[dg.AssetKey(dataset)]
        columns = spec.metadata["dagster/column_schema"].columns
        assert {c.name: c.description for c in columns} == meanings
