"""SIGKILL a real materialization while it writes a day; the previous day must survive.

The run is ``cdr-pipeline materialize`` in a subprocess. The only thing the test changes in
that process is *when* it stops: a wrapper around one write call announces that the write is
under way (half a file on disk, or one of two files moved into place) and then waits for the
kill. Everything else (Dagster, the simulator, the storage code) is the real thing.
"""

from __future__ import annotations

import os
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from cdr_pipeline import datasets, layout, publish
from cdr_pipeline.layout import Day
from cdr_pipeline.simulator import DEMO_QUIRKS, CdrSimulator, SimConfig
from cdr_pipeline.store import open_store
from cdr_pipeline.transform.validate import unaccounted
from cdr_pipeline_tests.conftest import (
    cli_materialize,
    digests,
    kill_when_ready,
    publish_tables,
)

DAY = "2024-04-10"
CRASHING_RUN = r"""
import os, sys, time
from pathlib import Path

point, ready = os.environ["CRASH_POINT"], Path(os.environ["CRASH_READY"])

def stop_here():
    ready.write_text("writing")
    time.sleep(600)  # the test kills us long before this ends

from cdr_pipeline import datasets, layout, publish

if point == "parquet-staging":
    real_write = publish.write_parquet
    def write_parquet(where, content):
        rows = real_write(where, content)
        if "/cdr/" in str(where):
            with open(where, "r+b") as fh:  # the file as it is half way through the write
                fh.truncate(os.path.getsize(where) // 2)
            stop_here()
        return rows
    publish.write_parquet = write_parquet
elif point == "between-moves":
    real_replace = os.replace
    def replace(src, dst):
        real_replace(src, dst)
        if str(dst).endswith("/cdr/date=%s/part-0.parquet"):
            stop_here()
    os.replace = replace
elif point == "raw-bodies":
    from cdr_pipeline.store import LocalStore
    real_write = LocalStore.write
    calls = []
    def write(self, key, fill):
        real_write(self, key, fill)
        if key.startswith("raw/"):
            calls.append(key)
            if len(calls) == 3:  # the third body, half written
                where = self.path(key)
                with open(where, "r+b") as fh:
                    fh.truncate(os.path.getsize(where) // 2)
                stop_here()
    LocalStore.write = write

from cdr_pipeline.cli import main
sys.exit(main(sys.argv[1:]))
""".replace("%s", DAY)


def _env(tmp_path: Path, calls: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDR_", "DAGSTER_"))}
    env.update(
        CDR_DATA_DIR=str(tmp_path / "data"),
        DAGSTER_HOME=str(tmp_path / "home"),
        CDR_SIM_CALLS_PER_DAY=str(calls),
        CDR_SIMULATOR="true",
        CDR_START_DATE="2024-01-01",  # the demo's window is its last 30 days: fixed days here
        CDR_TIMEZONE="Asia/Shanghai",
    )
    return env


def _visible(root: Path) -> dict[str, str]:
    """What a reader can see: the day's Parquet files, its accounting and its raw manifest."""
    out = digests(root, "*.parquet")
    out |= digests(root / "_state" / "validation", "*.json")
    out |= digests(root / "raw", "manifest.json")
    return {k: v for k, v in out.items() if not _hidden(Path(k))}


def _hidden(path: Path) -> bool:
    return any(part.startswith(".") for part in path.parts)


def _scratch_or_temporary(root: Path, path: Path) -> bool:
    """A hidden temporary beside its target, or in the day's scratch folder (named by the day,
    swept by the day's next run)."""
    inside = path.relative_to(root).parts
    scratch = len(inside) > 3 and inside[:2] == ("_state", "spill")
    scratch = scratch and inside[2].startswith(f".cdr-day-{DAY}-")
    return path.name.endswith(".tmp") or scratch


def _readers_see_whole_files(root: Path) -> dict[str, int]:
    counts = {}
    for dataset in datasets.NAMES:
        glob = root / dataset / "*" / "*.parquet"
        n = duckdb.sql(f"select count(*) from read_parquet('{glob}', hive_partitioning=true)")
        counts[dataset] = n.fetchall()[0][0]
        table = ds.dataset(root / dataset, format="parquet", partitioning="hive").to_table()
        assert table.num_rows == counts[dataset]
        assert pq.read_table(root / layout.part_key(dataset, DAY))
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("point", ["parquet-staging", "between-moves", "raw-bodies"])
def test_sigkill_while_writing_a_day(tmp_path, point):
    root = tmp_path / "data"
    cli_materialize(_env(tmp_path, calls=300), DAY, DAY)  # the previous version of the day
    before = _visible(root)
    counts_before = _readers_see_whole_files(root)

    ready = tmp_path / "ready"
    env = _env(tmp_path, calls=400) | {"CRASH_POINT": point, "CRASH_READY": str(ready)}
    kill_when_ready(CRASHING_RUN, ["materialize", "--start", DAY, "--end", DAY], env, ready)

    # Readers see whole files only, and no debris: every leftover is a hidden temporary.
    counts = _readers_see_whole_files(root)
    debris = [p for p in root.rglob("*") if p.is_file() and _hidden(p.relative_to(root))]
    assert debris, "the kill should have left a temporary behind"
    assert all(_scratch_or_temporary(root, p) for p in debris), debris
    after = _visible(root)
    raw = "cdr/date=2024-04-10/manifest.json"
    if point != "raw-bodies":  # the raw asset had completed: its new version is committed
        assert after.pop(raw) != before.pop(raw)
    if point == "between-moves":
        # cdr is the new version already; the journal makes the next touch finish the rest
        assert after.pop("cdr/date=2024-04-10/part-0.parquet") != before.pop(
            "cdr/date=2024-04-10/part-0.parquet"
        )
        assert after == before
        assert (root / layout.state_key("journal", DAY)).exists()
        assert counts["cdr_rejects"] == counts_before["cdr_rejects"]
    else:
        assert after == before  # the previous version, byte for byte
        assert counts == counts_before

    # Whichever version a reader now sees (rolled forward by this first touch), the day's
    # datasets and accounting all come from the same run.
    _one_version(root)

    # The next run completes normally, sweeps the debris and publishes the new day in full.
    cli_materialize(_env(tmp_path, calls=400), DAY, DAY)
    leftovers = [p for p in root.rglob("*") if p.name.startswith(".")]
    assert leftovers == []
    assert not (root / layout.state_key("journal", DAY)).exists()
    tz = ZoneInfo("Asia/Shanghai")
    day = Day.from_key(DAY, tz)
    sim = CdrSimulator(SimConfig(calls_per_day=400, **DEMO_QUIRKS))
    truth = sim.truth(day.start, day.end)
    cdr = publish.read_day_table(open_store(root), "cdr", DAY)
    assert set(cdr.column("call_id").to_pylist()) == set(truth.valid)
    acc = publish.read_state(open_store(root), "validation", DAY)["accounting"]
    assert unaccounted(acc) == 0 and acc["valid"] == len(truth.valid)
    assert acc["rejected"] == sum(truth.rejects.values())
    _one_version(root)


def _one_version(root: Path) -> None:
    """The day's cdr, cdr_rejects, summaries and accounting describe the same rows."""
    store = open_store(root)
    acc = publish.read_state(store, "validation", DAY)["accounting"]
    valid = publish.day_rows(store, "cdr", DAY)
    kpis = publish.read_day_table(store, "call_kpis_daily", DAY).to_pylist()[0]
    outcome = publish.read_day_table(store, "call_outcome_daily", DAY)
    assert valid == acc["valid"] == kpis["total_calls"] == sum(outcome["calls"].to_pylist())
    assert publish.day_rows(store, "cdr_rejects", DAY) == acc["rejected"]
    assert kpis["rejected_records"] == acc["rejected"]


def test_an_interrupted_publish_is_rolled_forward_by_the_next_reader(tmp_path):
    """In-process: stage two files, record the journal, move one; a reader finishes it."""
    import pyarrow as pa

    root = tmp_path / "data"
    store = open_store(root)
    old = {"cdr": pa.table({"x": [1]}), "cdr_rejects": pa.table({"y": [1]})}
    publish_tables(store, DAY, old, state={"validation": {"v": 1}})
    new = {"cdr": pa.table({"x": [2, 2]}), "cdr_rejects": pa.table({"y": [2, 2]})}
    real = os.replace
    moved = []

    def crash_after_first(src, dst):
        if moved:
            raise KeyboardInterrupt  # the process dies here
        real(src, dst)
        moved.append(dst)

    os.replace = crash_after_first
    try:
        with pytest.raises(KeyboardInterrupt):
            publish_tables(store, DAY, new, state={"validation": {"v": 2}})
    finally:
        os.replace = real
    assert (root / layout.state_key("journal", DAY)).exists()
    assert publish.read_state(store, "validation", DAY) == {"v": 2}  # rolled forward
    assert publish.read_day_table(store, "cdr_rejects", DAY).num_rows == 2
    assert not (root / layout.state_key("journal", DAY)).exists()
    assert [p for p in root.rglob("*") if p.name.startswith(".")] == []


def test_a_reader_rolling_forward_a_publish_under_way_fails_neither(tmp_path):
    """A reader that finds the journal of a live writer's commit (another run's check reading
    the day) makes the same moves: the writer's own moves then find their files gone, and
    that is success. Only the writer, who holds the day, sweeps temporaries."""
    import pyarrow as pa

    store = open_store(tmp_path)
    publish_tables(store, DAY, {"cdr": pa.table({"x": [1]})}, state={"validation": {"v": 1}})
    folder = tmp_path / "cdr" / f"date={DAY}"
    other = folder / ".part-0.parquet.0123456789abcdef0123456789abcdef.tmp"
    journal = layout.state_key("journal", DAY)
    real_put, seen = store.put, {}

    def put(key, data):
        real_put(key, data)
        if key == journal:  # the writer is about to move: a reader gets there first
            other.write_bytes(b"being staged")
            seen["read"] = publish.read_state(store, "validation", DAY)
            seen["kept"] = other.exists()

    store.put = put
    publish_tables(store, DAY, {"cdr": pa.table({"x": [2, 2]})}, state={"validation": {"v": 2}})
    assert seen == {"read": {"v": 2}, "kept": True}
    assert publish.day_rows(store, "cdr", DAY) == 2
    assert not (tmp_path / journal).exists()
    assert not other.exists()  # the writer's sweep: it holds the day
