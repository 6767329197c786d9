"""The registry is the one list of datasets: a dataset added there, with its query and nothing
else, is published with the day, appears in the definitions and in the data dictionary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pytest

from cdr_pipeline import dictionary
from cdr_pipeline.datasets import DATASETS, NAMES, Dataset, check
from cdr_pipeline.defs.assets import day_asset, raw_cdr_asset
from cdr_pipeline.defs.partitions import partitions_for
from cdr_pipeline.resources import analytics_resource, api_resource, storage_resource
from cdr_pipeline.settings import load_settings
from cdr_pipeline_tests.conftest import API_ID, APP_ID

DAY = "2024-03-05"
ROOT = Path(__file__).resolve().parents[1]


def _described(*fields: tuple[str, pa.DataType, str]) -> pa.Schema:
    return pa.schema([pa.field(n, t, metadata={"description": d}) for n, t, d in fields])


TOY = Dataset(
    "calls_by_status_daily",
    _described(
        ("call_end_status", pa.int8(), "as in cdr"),
        ("calls", pa.int64(), "calls of the day that ended so"),
        ("night_calls", pa.int64(), "those starting at local hours 0..5"),
    ),
    "Calls by how they ended (a toy dataset of the registry's test).",
    query="select call_end_status, count(*) as calls, count(*) filter (where lh < 6) "
    "as night_calls from calls group by call_end_status order by call_end_status",
    metadata=lambda facts: {"statuses": facts.tables["calls_by_status_daily"].num_rows},
)


def test_a_dataset_declared_once_is_published_defined_and_described(sim_server, tmp_path):
    registry = (*DATASETS, TOY)
    server = sim_server(calls_per_day=400)
    settings = load_settings(
        {
            "CDR_DATA_DIR": str(tmp_path / "data"),
            "CDR_API_URL": server.url,
            "CDR_API_ID": API_ID,
            "CDR_APP_ID": APP_ID,
        }
    )
    partitions = partitions_for(settings)
    result = dg.materialize(
        [raw_cdr_asset(settings, partitions), day_asset(registry, partitions)],
        partition_key=DAY,
        resources={
            "cdr_api": api_resource(settings),
            "cdr_storage": storage_resource(settings),
            "cdr_analytics": analytics_resource(settings),
        },
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    # in the definitions, with its meanings in the UI's column schema
    materialized = {m.asset_key.path[0]: m for m in result.get_asset_materialization_events()}
    assert set(materialized) == {"raw_cdr", *NAMES, TOY.name}
    toy = materialized[TOY.name].event_specific_data.materialization
    assert toy.partition == DAY and toy.metadata["statuses"].value >= 2
    assert toy.metadata["dagster/row_count"].value == toy.metadata["statuses"].value
    spec = day_asset(registry, partitions).specs_by_key[dg.AssetKey(TOY.name)]
    columns = spec.metadata["dagster/column_schema"].columns
    assert [c.description for c in columns] == [
        f.metadata[b"description"].decode() for f in TOY.schema
    ]
    # published with the day, and what its query says of the day's cdr
    root = tmp_path / "data"
    got = duckdb.sql(
        f"select {', '.join(TOY.schema.names)} from '{root}/{TOY.name}/date={DAY}/*.parquet'"
    ).fetchall()
    want = duckdb.sql(
        f"select call_end_status, count(*), count(*) filter (where hour(start_local) < 6) "
        f"from '{root}/cdr/date={DAY}/*.parquet' group by 1 order by 1"
    ).fetchall()
    assert got == want and sum(r[1] for r in got) > 0
    # in the dictionary page
    page = dictionary.markdown({d.name: d.schema for d in registry})
    assert f"## `{TOY.name}`" in page and "| `night_calls` | int64 |" in page


def test_a_registry_is_checked_before_a_day_is_built():
    with pytest.raises(ValueError, match="cdr first"):
        check((TOY, *DATASETS))
    with pytest.raises(ValueError, match="each dataset once"):
        check((*DATASETS, DATASETS[1]))
    undescribed = Dataset("bare", pa.schema([("n", pa.int64())]), "no meanings", query="select 1")
    with pytest.raises(ValueError, match=r"columns without a meaning: \['n'\]"):
        check((*DATASETS, undescribed))
    with pytest.raises(ValueError, match="needs its query"):
        Dataset("x", TOY.schema, "a query dataset without its query")
    with pytest.raises(ValueError, match="has the caller's src"):  # its rows are by src
        Dataset("x", TOY.schema, "per caller, but no src", query="select 1", per_caller="n")


@pytest.mark.slow
def test_every_list_of_datasets_is_the_registrys():
    """``make clean`` and the CLI's list come from the registry, not a list of their own."""
    out = subprocess.run(
        [sys.executable, "-m", "cdr_pipeline.datasets"], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == list(NAMES)
    assert NAMES[0] == "cdr" and len(set(NAMES)) == len(NAMES)
    assert "python -m cdr_pipeline.datasets" in (ROOT / "Makefile").read_text()
