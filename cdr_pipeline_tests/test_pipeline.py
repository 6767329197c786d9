"""The daily assets through real Dagster execution, over the simulator on loopback HTTP,
with the datasets read back by DuckDB and pandas."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import duckdb
import pandas as pd
import pytest

from cdr_pipeline import datasets, publish
from cdr_pipeline_tests.conftest import API_ID, APP_ID, Env, digests

QUIRKS = dict(
    bad_record_rate=0.02,
    duplicate_rate=0.02,
    conflict_rate=0.01,
    datetime_text_rate=0.1,
    epoch_ms_rate=0.05,
    schema_drift_rate=0.01,
    calls_per_day=1500,
    page_size=150,
)
CDR_COLUMNS = {
    "call_id": "VARCHAR",
    "src": "VARCHAR",
    "dst": "VARCHAR",
    **{
        c: "TIMESTAMP WITH TIME ZONE"
        for c in (
            "start_src_call_time",
            "start_src_ring_time",
            "src_accept_time",
            "start_dst_call_time",
            "start_dst_ring_time",
            "dst_accept_time",
            "end_call_time",
        )
    },
    "call_end_status": "TINYINT",
    "call_end_status_label": "VARCHAR",
    "duration_s": "INTEGER",
    "record_url": "VARCHAR",
    "call_type": "TINYINT",
    "biz_id": "VARCHAR",
    "order_id": "VARCHAR",
    "extra": "VARCHAR",
    "start_local": "TIMESTAMP",
    "src_e164": "VARCHAR",
    "src_country": "VARCHAR",
    "dst_e164": "VARCHAR",
    "dst_country": "VARCHAR",
    "dst_type": "VARCHAR",
    "date": "DATE",
}


def _none(value):
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


def _epoch(ts) -> int | None:
    return None if ts is None or pd.isna(ts) else int(pd.Timestamp(ts).timestamp())


def test_range_equals_simulator_truth(monkeypatch, tmp_path, sim_server, instance):
    env = Env(monkeypatch, tmp_path, sim_server(**QUIRKS, app_id=APP_ID, api_id=API_ID))
    result = env.run(instance, "2024-03-01", "2024-03-03")
    assert result.success
    con = duckdb.connect()
    cols = con.execute(
        f"describe select * from read_parquet('{env.glob('cdr')}', hive_partitioning=true)"
    ).fetchall()
    assert {c[0]: c[1] for c in cols} == CDR_COLUMNS
    sim = env.server.sim
    for key in ("2024-03-01", "2024-03-02", "2024-03-03"):
        day = env.day(key)
        truth = sim.truth(day.start, day.end)
        got = con.execute(
            f"select * from read_parquet('{env.glob('cdr')}', hive_partitioning=true) "
            f"where date = DATE '{key}'"
        ).df()
        assert got["call_id"].is_unique
        assert set(got["call_id"]) == set(truth.valid)
        for row in got.itertuples():
            call = truth.valid[row.call_id]
            assert _epoch(row.start_src_call_time) == call.start
            assert _epoch(row.dst_accept_time) == call.times["dstAcceptTime"]
            assert _epoch(row.end_call_time) == call.end
            assert (row.call_end_status, row.duration_s) == (call.status, call.duration)
            assert (row.src, row.dst, row.call_type) == (call.src, call.dst, call.call_type)
            assert _none(row.record_url) == call.record_url
            assert _none(row.biz_id) == call.biz_id
            assert (json.loads(row.extra) if _none(row.extra) else None) == call.extra
        rejects = con.execute(
            f"select reason, count(*) from read_parquet('{env.glob('cdr_rejects')}', "
            f"hive_partitioning=true) where date = DATE '{key}' group by reason"
        ).fetchall()
        assert dict(rejects) == dict(truth.rejects)
        _assert_summaries(env, con, key, got)
    # pandas reads the same dataset folder, with the date from the folder name
    frame = pd.read_parquet(env.root / "cdr")
    assert (
        len(frame)
        == con.execute(f"select count(*) from read_parquet('{env.glob('cdr')}')").fetchone()[0]
    )
    assert "date" in frame.columns


def _assert_summaries(env: Env, con, key: str, cdr: pd.DataFrame) -> None:
    """Recompute the KPIs and the outcome table independently, with pandas."""
    kpi = con.execute(
        f"select * from read_parquet('{env.glob('call_kpis_daily')}', hive_partitioning=true) "
        f"where date = DATE '{key}'"
    ).df()
    assert len(kpi) == 1
    k = kpi.iloc[0]
    n = len(cdr)
    connected = cdr[cdr.call_end_status == 1]
    assert k.total_calls == n and k.connected_calls == len(connected)
    assert k.connect_rate == pytest.approx(len(connected) / n)
    assert k.caller_answer_rate == pytest.approx(cdr.src_accept_time.notna().mean())
    assert k.callee_answer_rate == pytest.approx(
        cdr.dst_accept_time.notna().sum() / cdr.start_dst_call_time.notna().sum()
    )
    assert k.ner_proxy == pytest.approx(cdr.call_end_status.isin([1, 2, 3]).mean())
    assert k.acd_s == pytest.approx(connected.duration_s.mean())
    talk = (connected.end_call_time - connected.dst_accept_time).dt.total_seconds()
    assert k.aloc_s == pytest.approx(talk.mean())
    assert k.billed_minutes == pytest.approx(cdr.duration_s.sum() / 60)
    pdd = (cdr.start_src_ring_time - cdr.start_src_call_time).dt.total_seconds().dropna()
    assert k.median_caller_pdd_s == pytest.approx(pdd.median())
    bridge = (cdr.start_dst_call_time - cdr.src_accept_time).dt.total_seconds().dropna()
    assert k.median_bridge_s == pytest.approx(bridge.median())
    assert k.short_call_ratio == pytest.approx((connected.duration_s < 10).mean())
    assert k.recording_coverage == pytest.approx(connected.record_url.notna().mean())
    assert k.unique_callers == cdr.src.nunique() and k.unique_callees == cdr.dst.nunique()
    hours = cdr.start_src_call_time.dt.tz_convert(env.tz).dt.hour.value_counts()
    assert k.peak_hour == min(h for h, c in hours.items() if c == hours.max())
    outcome = con.execute(
        f"select * from read_parquet('{env.glob('call_outcome_daily')}', hive_partitioning=true) "
        f"where date = DATE '{key}' order by call_type, call_end_status"
    ).df()
    expected = (
        cdr.groupby(["call_type", "call_end_status"])
        .agg(calls=("call_id", "size"), billed_seconds=("duration_s", "sum"))
        .reset_index()
    )
    assert outcome.calls.tolist() == expected.calls.tolist()
    assert outcome.billed_seconds.tolist() == expected.billed_seconds.tolist()
    assert outcome.share_of_calls.sum() == pytest.approx(1.0)


def test_rematerializing_gives_identical_bytes(monkeypatch, tmp_path, sim_server, instance):
    env = Env(monkeypatch, tmp_path, sim_server(**QUIRKS))
    assert env.run(instance, "2024-03-05").success
    first = digests(env.root)
    assert len(first) == len(datasets.NAMES)
    assert env.run(instance, "2024-03-05").success
    assert digests(env.root) == first
    leftovers = [p for p in env.root.rglob("*") if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.parametrize("filter_on", ["start", "end"])
def test_midnight_nothing_lost_nothing_doubled(
    monkeypatch, tmp_path, sim_server, instance, filter_on
):
    env = Env(monkeypatch, tmp_path, sim_server(filter_on=filter_on, calls_per_day=4000))
    assert env.run(instance, "2024-03-01", "2024-03-02").success
    con = duckdb.connect()
    rows = con.execute(
        f"select call_id, date, end_call_time from read_parquet('{env.glob('cdr')}', "
        "hive_partitioning=true)"
    ).fetchall()
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids))
    sim = env.server.sim
    a, b = env.day("2024-03-01"), env.day("2024-03-02")
    truth = set(sim.truth(a.start, a.end).valid) | set(sim.truth(b.start, b.end).valid)
    assert set(ids) == truth
    crossing = [r for r in rows if str(r[1]) == "2024-03-01" and r[2].timestamp() >= a.end]
    assert crossing, "the simulator should produce calls that cross midnight"


def test_dst_day_is_23_hours(monkeypatch, tmp_path, sim_server, instance):
    env = Env(
        monkeypatch,
        tmp_path,
        sim_server(timezone="Europe/Berlin", datetime_text_rate=0.2, calls_per_day=1500),
        tz="Europe/Berlin",
    )
    assert env.run(instance, "2024-03-30", "2024-03-31").success
    manifest = json.loads(
        (env.root / "raw" / "cdr" / "date=2024-03-31" / "manifest.json").read_text()
    )
    start, end = manifest["day_window"]
    assert end - start == 23 * 3600
    assert datetime.fromtimestamp(start, UTC).hour == 23  # 00:00 CET is 23:00 UTC
    con = duckdb.connect()
    for key in ("2024-03-30", "2024-03-31"):
        day = env.day(key)
        got = con.execute(
            f"select call_id from read_parquet('{env.glob('cdr')}', hive_partitioning=true) "
            f"where date = DATE '{key}'"
        ).fetchall()
        assert {r[0] for r in got} == set(env.server.sim.truth(day.start, day.end).valid)


def test_each_partition_records_its_own_figures(monkeypatch, tmp_path, sim_server, instance):
    env = Env(monkeypatch, tmp_path, sim_server(**QUIRKS))
    result = env.run(instance, "2024-03-01", "2024-03-02")
    assert result.success
    for key in ("2024-03-01", "2024-03-02"):
        meta = _latest(instance, "cdr", key).metadata
        state = json.loads((env.root / "_state" / "validation" / f"date={key}.json").read_text())
        acc = state["accounting"]
        assert meta["accounting/fetched"].value == acc["fetched"]
        assert meta["dagster/row_count"].value == acc["valid"]
        raw = _latest(instance, "raw_cdr", key)
        assert raw.metadata["fetch/records"].value == acc["fetched"]
        kpis = _latest(instance, "call_kpis_daily", key).metadata
        assert kpis["kpi/total_calls"].value == acc["valid"]
        outcome = _latest(instance, "call_outcome_daily", key).metadata
        assert outcome["dagster/row_count"].value > 0
        # a day shows its own figures only: a run's totals are not copied onto every day
        for asset in ("raw_cdr", "cdr", "cdr_rejects", "call_outcome_daily", "call_kpis_daily"):
            keys = _latest(instance, asset, key).metadata
            assert not [k for k in keys if k.startswith("run_")], (asset, list(keys))
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["accounting_balances"].passed
    assert checks["reject_rate"].passed  # 2% bad records: under the 5% threshold
    assert 0.005 < checks["reject_rate"].metadata["worst_rate"].value < 0.05


def _latest(instance, asset: str, partition: str):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    return records[0].asset_materialization


def test_schedules_target_the_right_partitions(monkeypatch, tmp_path, sim_server):
    env = Env(monkeypatch, tmp_path, sim_server(), CDR_LATE_DAYS="3")
    daily = env.defs.resolve_schedule_def("cdr_daily_schedule")
    late = env.defs.resolve_schedule_def("cdr_late_data_schedule")
    assert daily.execution_timezone == "Asia/Shanghai"
    tick = datetime(2024, 3, 10, 0, 20, tzinfo=ZoneInfo("Asia/Shanghai"))
    repo = env.defs.get_repository_def()
    with dg.build_schedule_context(scheduled_execution_time=tick, repository_def=repo) as ctx:
        data = daily.evaluate_tick(ctx)
    assert [r.partition_key for r in data.run_requests] == ["2024-03-09"]
    late_tick = datetime(2024, 3, 10, 3, 40, tzinfo=ZoneInfo("Asia/Shanghai"))
    with dg.build_schedule_context(scheduled_execution_time=late_tick, repository_def=repo) as ctx:
        data = late.evaluate_tick(ctx)
    assert [r.partition_key for r in data.run_requests] == ["2024-03-07"]


def test_one_code_location_name_for_every_tool():
    """`dg dev`, `dg launch`, `dagster dev -w workspace.yaml` and `dagster dev` name the code
    location alike, so schedule and sensor state started under one shows under the others."""
    import tomllib

    import yaml

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["tool"]
    workspace = yaml.safe_load((root / "workspace.yaml").read_text())
    names = {
        project["dg"]["project"]["code_location_name"],
        project["dagster"]["code_location_name"],
        *(e["python_module"]["location_name"] for e in workspace["load_from"]),
    }
    assert names == {"cdr_pipeline"}


@pytest.mark.slow
def test_definitions_load(monkeypatch, tmp_path, sim_server):
    env = Env(monkeypatch, tmp_path, sim_server())
    dg.Definitions.validate_loadable(env.defs)
    graph = env.defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"raw_cdr", *datasets.NAMES}
    raw = graph.get(dg.AssetKey("raw_cdr"))
    assert raw.pools == {"cdr_api"}
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    bin_dir = Path(sys.executable).parent
    for cmd in (
        [str(bin_dir / "dagster"), "definitions", "validate", "-m", "cdr_pipeline.definitions"],
        [str(bin_dir / "dg"), "check", "defs"],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_summaries_are_the_same_however_the_day_is_held(
    monkeypatch, tmp_path, sim_server, instance
):
    """The summaries are taken from the rows on their way to the `cdr` file. A day held in
    memory and the same day spilled to disk (its call-id and distinct-count keys in many
    partitions) give the same bytes, and both equal the summaries recomputed from the
    published `cdr` file."""
    from cdr_pipeline.transform import dedup as day_module
    from cdr_pipeline.transform import keylog

    server = sim_server(**(QUIRKS | {"calls_per_day": 2000, "duplicate_rate": 0.05}))
    key = "2024-03-05"
    memory = Env(monkeypatch, tmp_path / "memory", server)
    assert memory.run(instance, key).success
    monkeypatch.setattr(day_module, "SPILL_ABOVE_ROWS", 0)
    monkeypatch.setattr(keylog, "KEYS_PER_PART", 64)
    spilled = Env(monkeypatch, tmp_path / "spilled", server)
    assert spilled.run(instance, key).success
    summaries = ("call_outcome_daily", "call_kpis_daily")
    for dataset in ("cdr", "cdr_rejects", *summaries):
        assert digests(spilled.root / dataset) == digests(memory.root / dataset), dataset

    cdr = f"read_parquet('{spilled.glob('cdr')}')"
    outcome = duckdb.sql(
        f"select call_type, call_end_status, count(*), sum(duration_s) from {cdr} "
        "group by all order by all"
    ).fetchall()
    published = publish.read_day_table(spilled.store, "call_outcome_daily", key)
    columns = ["call_type", "call_end_status", "calls", "billed_seconds"]
    assert [tuple(r.values()) for r in published.select(columns).to_pylist()] == outcome
    kpis = publish.read_day_table(spilled.store, "call_kpis_daily", key).to_pylist()[0]
    ((total, connected, minutes, callers, callees),) = duckdb.sql(
        f"select count(*), count(*) filter (call_end_status = 1), sum(duration_s) / 60, "
        f"count(distinct src), count(distinct dst) from {cdr}"
    ).fetchall()
    assert (kpis["total_calls"], kpis["connected_calls"]) == (total, connected)
    assert kpis["billed_minutes"] == pytest.approx(minutes)
    assert (kpis["unique_callers"], kpis["unique_callees"]) == (callers, callees) != (0, 0)


def test_billing_rounds_the_talk_up_so_acd_and_aloc_differ(
    monkeypatch, tmp_path, sim_server, instance
):
    """The simulator bills as providers do (6-second increments): acd_s is billed time,
    aloc_s measured talk, and the two KPIs show the difference the data dictionary explains."""

    env = Env(monkeypatch, tmp_path, sim_server(calls_per_day=300))
    assert env.run(instance, "2024-03-05").success
    rows = duckdb.sql(
        "select duration_s, date_diff('second', dst_accept_time, end_call_time) "
        f"from read_parquet('{env.glob('cdr')}') where call_end_status = 1"
    ).fetchall()
    assert rows and all(billed == -(-talk // 6) * 6 for billed, talk in rows)
    kpis = publish.read_day_table(env.store, "call_kpis_daily", "2024-03-05").to_pylist()[0]
    assert kpis["acd_s"] > kpis["aloc_s"]
