"""Running unattended: catch-up, retention, freshness and alerts.

The rules are pure functions, tested as such; then the real pieces: ``cdr-pipeline`` against
the simulator, Dagster's freshness check, and ``dagster-daemon`` running the alert and catch-up
sensors against a local HTTP receiver that records what a webhook would get."""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from cdr_pipeline import alerts, cli, layout, lease, operations, raw
from cdr_pipeline.operations import FAILED, FINE, RUNNING
from cdr_pipeline.store import open_store
from cdr_pipeline_tests.conftest import API_ID, APP_ID, load_defs
from cdr_pipeline_tests.servers import BIN, ROOT, Receiver, daemon_process, stop, tail

CLI = str(BIN / "cdr-pipeline")
SH = ZoneInfo("Asia/Shanghai")


# --- the rules --------------------------------------------------------------------------------


def test_catch_up_runs_only_days_that_are_missing_or_failed():
    window = ["2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04"]
    status = {"2024-03-01": FINE, "2024-03-02": FAILED, "2024-03-03": RUNNING}
    assert operations.catch_up_plan(window, status) == ["2024-03-02", "2024-03-04"]
    assert operations.catch_up_plan(window, dict.fromkeys(window, FINE)) == []


def test_complete_days_end_yesterday_in_the_zone_and_respect_the_start():
    now = datetime(2024, 3, 10, 17, 0, tzinfo=UTC)  # already 2024-03-11 01:00 in Shanghai
    assert operations.complete_days(now, SH, 3, "2024-01-01") == [
        "2024-03-08",
        "2024-03-09",
        "2024-03-10",
    ]
    assert operations.complete_days(now, SH, 3, "2024-03-10") == ["2024-03-10"]


def test_prune_plan_keeps_the_last_days_and_zero_keeps_all():
    days = ["2024-03-01", "2024-03-05", "2024-03-08", "2024-03-09"]
    assert operations.prune_plan(days, date(2024, 3, 10), 2) == ["2024-03-01", "2024-03-05"]
    assert operations.prune_plan(days, date(2024, 3, 10), 0) == []


def _run(**kw) -> alerts.FinishedRun:
    base = dict(
        run_id="abcd1234-run",
        job="cdr_daily_job",
        failed=True,
        will_retry=False,
        partitions=["2024-03-01", "2024-03-02"],
        error="getCdr answered -401 (authentication failed)",
        checks=[],
    )
    return alerts.FinishedRun(**(base | kw))


def test_one_alert_per_failed_partition_and_none_while_a_retry_is_coming():
    said = alerts.run_alerts(_run(), "http://ui:3000/")
    assert [(a.severity, a.kind, a.partition) for a in said] == [
        ("ERROR", "run_failure", "2024-03-01"),
        ("ERROR", "run_failure", "2024-03-02"),
    ]
    assert said[0].run_url == "http://ui:3000/runs/abcd1234-run"
    assert alerts.run_alerts(_run(will_retry=True), "http://ui") == []
    assert alerts.run_alerts(_run(failed=False), "http://ui") == []


def test_a_failed_check_is_said_per_failed_day_with_its_severity():
    checks = [
        alerts.CheckOutcome(
            "caller_risk_daily",
            "flagged_callers",
            False,
            "WARN",
            ["2024-03-02"],
            "008613900000001: burst",
        ),
        alerts.CheckOutcome("cdr", "accounting_balances", True, "ERROR", [], ""),
    ]
    said = alerts.run_alerts(_run(failed=False, checks=checks), "http://ui")
    assert [(a.severity, a.kind, a.partition, a.subject) for a in said] == [
        ("WARN", "check_failure", "2024-03-02", "caller_risk_daily:flagged_callers")
    ]
    slack = alerts.payload(said[0], "slack")
    assert set(slack) == {"text"} and "WARN" in slack["text"] and "burst" in slack["text"]
    assert alerts.payload(said[0], "json")["partition"] == "2024-03-02"


# --- the real pieces ----------------------------------------------------------------------------


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDR_", "DAGSTER_"))}
    return env | {
        "CDR_DATA_DIR": str(tmp_path / "data"),
        "DAGSTER_HOME": str(tmp_path / "home"),
        "CDR_SIM_CALLS_PER_DAY": "300",
        **({} if "CDR_API_URL" in extra else {"CDR_SIMULATOR": "true"}),
        "CDR_START_DATE": "2024-01-01",  # fixed days, not the demo's last 30
        **extra,
    }


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_prune_removes_old_raw_days_only_and_says_so(tmp_path):
    env = _env(tmp_path)
    assert _cli(env, "materialize", "--start", "2024-03-01", "--end", "2024-03-03").returncode == 0
    store = open_store(tmp_path / "data")
    datasets = {p: p.read_bytes() for p in (tmp_path / "data").rglob("part-0.parquet")}
    assert raw.raw_days(store) == ["2024-03-01", "2024-03-02", "2024-03-03"]

    dry = _cli(env, "prune", "--keep-days", "1", "--dry-run")
    assert dry.returncode == 0 and "would have removed the raw bodies of 3 day(s)" in dry.stdout
    assert raw.raw_days(store) == ["2024-03-01", "2024-03-02", "2024-03-03"]

    lease.take_lease(store, "2024-03-02", "someone-else", ttl_s=600, wait_s=0)
    done = _cli(env, "prune", "--keep-days", "1")
    assert done.returncode == 0, done.stderr
    assert "removed the raw bodies of 2 day(s) (2024-03-01 to 2024-03-03" in done.stdout
    assert "skipped 2024-03-02: being materialized" in done.stdout
    assert raw.raw_days(store) == ["2024-03-02"]
    # the validated datasets are untouched, byte for byte
    assert {p: p.read_bytes() for p in (tmp_path / "data").rglob("part-0.parquet")} == datasets
    # a pruned day says plainly that its raw layer is gone
    with pytest.raises(layout.StorageError, match="no raw CDRs for 2024-03-01"):
        raw.read_raw_manifest(store, "2024-03-01")
    assert "raw bodies are kept forever" in _cli(env, "prune").stdout


@pytest.mark.slow
def test_a_prune_cut_short_leaves_nothing_a_reader_trips_on(tmp_path):
    """The manifest goes first: bodies left behind are listed nowhere, and the next prune
    removes them."""
    env = _env(tmp_path)
    assert _cli(env, "materialize", "--start", "2024-03-01", "--end", "2024-03-01").returncode == 0
    store = open_store(tmp_path / "data")
    folder = tmp_path / "data" / layout.raw_day_key("2024-03-01")
    (folder / "manifest.json").unlink()  # as if killed right after the manifest went
    assert any(folder.iterdir())
    with pytest.raises(layout.StorageError):
        raw.read_raw_manifest(store, "2024-03-01")
    assert _cli(env, "prune", "--keep-days", "1").returncode == 0
    assert not folder.exists() and raw.raw_days(store) == []


@pytest.mark.slow
def test_the_prune_job_runs_on_the_retention_setting(tmp_path, monkeypatch):
    env = _env(tmp_path)
    assert _cli(env, "materialize", "--start", "2024-03-01", "--end", "2024-03-02").returncode == 0
    for k, v in _env(tmp_path, CDR_RAW_RETENTION_DAYS="1").items():
        monkeypatch.setenv(k, v)
    defs = load_defs()
    schedule = defs.resolve_schedule_def("cdr_prune_raw_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("cdr_prune_raw_job").execute_in_process(instance=instance)
    assert result.success
    assert raw.raw_days(open_store(tmp_path / "data")) == []


@pytest.mark.slow
def test_materialize_missing_runs_only_missing_and_failed_days(tmp_path, sim_server):
    start = (datetime.now(SH).date() - timedelta(days=3)).isoformat()
    env = _env(tmp_path, CDR_CATCHUP_DAYS="3", CDR_START_DATE=start)
    days = operations.complete_days(datetime.now(UTC), SH, 3, start)
    assert _cli(env, "materialize", "--start", days[0], "--end", days[0]).returncode == 0
    # the last day fails (a wrong credential), so it stays to be caught up
    failing = _env(
        tmp_path,
        CDR_CATCHUP_DAYS="3",
        CDR_START_DATE=start,
        CDR_API_URL=sim_server(force_error="-401").url,
        CDR_API_ID=API_ID,
        CDR_APP_ID=APP_ID,
    )
    assert _cli(failing, "materialize", "--start", days[2], "--end", days[2]).returncode == 1
    out = _cli(env, "materialize", "--missing")
    assert out.returncode == 0, out.stderr
    assert "2 of the last 3 days are missing or failed" in out.stdout
    shown = [line.split()[0] for line in out.stdout.splitlines() if line.endswith(" ok")]
    assert shown == [days[1], days[2]]
    again = _cli(env, "materialize", "--missing")
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_freshness_check_warns_for_a_late_day_and_passes_once_it_is_in(tmp_path, monkeypatch):
    """Dagster's per-partition freshness check, with the deadline at midnight: the last
    complete day is due, whatever the hour the test runs at."""
    for k, v in _env(tmp_path, CDR_FRESHNESS_DEADLINE="00:00").items():
        monkeypatch.setenv(k, v)
    check = dg.AssetCheckKey(dg.AssetKey("cdr"), "freshness_check")
    only_check = dg.define_asset_job("freshness", selection=dg.AssetSelection.checks(check))
    defs = dg.Definitions.merge(load_defs(), dg.Definitions(jobs=[only_check]))
    late = defs.resolve_job_def("freshness")
    yesterday = (datetime.now(SH).date() - timedelta(days=1)).isoformat()
    with dg.instance_for_test() as instance:
        result = late.execute_in_process(instance=instance)
        (evaluation,) = result.get_asset_check_evaluations()
        assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
        daily = defs.resolve_job_def("cdr_daily_job")
        assert daily.execute_in_process(instance=instance, partition_key=yesterday).success
        (evaluation,) = late.execute_in_process(instance=instance).get_asset_check_evaluations()
        assert evaluation.passed


def _wait(what, timeout: float = 240.0):
    """Poll the daemon's effects (its sensors tick every 30 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(1)
    return what()


@pytest.mark.slow
def test_the_daemon_alerts_once_per_failed_partition_and_catches_up(tmp_path, sim_server):
    receiver = Receiver()
    start = (datetime.now(SH).date() - timedelta(days=2)).isoformat()
    days = operations.complete_days(datetime.now(UTC), SH, 2, start)
    env = _env(
        tmp_path,
        CDR_ALERT_WEBHOOK_URL=receiver.url,
        CDR_ALERT_FORMAT="json",
        CDR_UI_URL="https://dagster.example:3000",
        CDR_CATCHUP_DAYS="2",
        CDR_START_DATE="2024-01-01",
    )
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    with dg.DagsterInstance.from_config(str(home)):
        pass  # the storage, made once, not raced for by the daemon and the CLI
    # before the daemon: two days fail (a wrong credential), one succeeds with WARN checks
    failing = {k: v for k, v in env.items() if k != "CDR_SIMULATOR"} | {
        "CDR_API_URL": sim_server(force_error="-401").url,
        "CDR_API_ID": API_ID,
        "CDR_APP_ID": APP_ID,
    }
    for day in ("2024-03-01", "2024-03-02"):  # one run each: a refused credential stops a run
        assert _cli(failing, "materialize", "--start", day, "--end", day).returncode
    assert _cli(env, "materialize", "--start", "2024-03-05", "--end", "2024-03-05").returncode == 0
    started = subprocess.run(
        [
            str(BIN / "dagster"),
            "sensor",
            "start",
            "cdr_catch_up_sensor",
            "-w",
            str(ROOT / "workspace.yaml"),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    log = tmp_path / "daemon.log"
    daemon = daemon_process(env, log)
    try:
        runs = _wait(lambda: _receiver_has(receiver, {"2024-03-01", "2024-03-02"}))
        assert runs, f"no alerts arrived; the daemon's log ends:\n{tail(log)}"
        caught = _wait(lambda: _materialized(home, days))
        assert caught, f"the missing days were not caught up:\n{tail(log)}"
    finally:
        stop(daemon)
        receiver.close()
    failures = [b for b in receiver.bodies if b["kind"] == "run_failure"]
    assert sorted(b["partition"] for b in failures) == ["2024-03-01", "2024-03-02"]
    assert all(b["severity"] == "ERROR" and "-401" in b["text"] for b in failures)
    assert all(b["run_url"].startswith("https://dagster.example:3000/runs/") for b in failures)
    warned = {(b["subject"], b["partition"]) for b in receiver.bodies if b["severity"] == "WARN"}
    assert ("caller_risk_daily:flagged_callers", "2024-03-05") in warned
    keys = [(b["kind"], b["subject"], b["partition"], b["run_url"]) for b in receiver.bodies]
    assert len(keys) == len(set(keys))  # each said once
    text = json.dumps(receiver.bodies)
    assert API_ID not in text and APP_ID not in text
    with dg.DagsterInstance.from_config(str(home)) as instance:
        caught_up = instance.get_runs(filters=dg.RunsFilter(tags={"cdr/catch_up": "true"}))
    assert sorted(r.tags["dagster/partition"] for r in caught_up) == days
    assert "T0K3N-s3cr3t" not in log.read_text()


def _receiver_has(receiver: Receiver, days: set[str]) -> bool:
    said = {b["partition"] for b in receiver.bodies if b["kind"] == "run_failure"}
    warned = any(b["subject"].endswith("flagged_callers") for b in receiver.bodies)
    return days <= said and warned


def _materialized(home: Path, days: list[str]) -> bool:
    from cdr_pipeline.defs.partitions import daily_partitions

    partitions = daily_partitions("2024-01-01", "Asia/Shanghai")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        status = instance.get_status_by_partition(dg.AssetKey("cdr"), days, partitions)
    return bool(status) and all(status.get(d) == dg.AssetPartitionStatus.MATERIALIZED for d in days)


def test_the_volume_rule_flags_an_empty_day_and_one_far_below_the_days_before():
    assert operations.volume_finding(0, [], 0.5) == "no calls at all"
    assert operations.volume_finding(40, [100, 120, 90], 0.5) == (
        "40 calls, under 50% of the median of the 3 days before (100)"
    )
    assert operations.volume_finding(60, [100, 120, 90], 0.5) is None
    assert operations.volume_finding(1, [100, 120], 0.5) is None  # too few days to judge


def test_the_volume_check_warns_for_an_empty_or_thin_day_naming_both_counts(
    monkeypatch, tmp_path, sim_server, instance, capsys
):
    """Before, a provider that answered nothing (a wrong account, its retention) gave a green
    day."""
    from cdr_pipeline_tests.conftest import Env

    env = Env(monkeypatch, tmp_path, sim_server(calls_per_day=300))
    for day in ("2024-03-01", "2024-03-02", "2024-03-03"):
        result = env.run(instance, day)
        (volume,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "volume"]
        assert volume.passed
    thin = Env(monkeypatch, tmp_path, sim_server(calls_per_day=30))
    (volume,) = [
        e
        for e in thin.run(instance, "2024-03-04").get_asset_check_evaluations()
        if e.check_name == "volume"
    ]
    assert not volume.passed and volume.severity == dg.AssetCheckSeverity.WARN
    said = volume.metadata["2024-03-04"].value
    assert "calls, under 50% of the median of the 3 days before" in said
    empty = Env(monkeypatch, tmp_path, sim_server(empty_from_request=1))
    (volume,) = [
        e
        for e in empty.run(instance, "2024-03-05").get_asset_check_evaluations()
        if e.check_name == "volume"
    ]
    assert volume.metadata["2024-03-05"].value == "no calls at all"
    assert volume.metadata["failed_days"].value == "2024-03-05"
    monkeypatch.chdir(tmp_path)
    assert cli.main(["kpis", "--start", "2024-03-01", "--end", "2024-03-05"]) == 0
    shown = {
        line.split()[0]: line.split()[-1]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("2024-03-0")
    }
    assert shown["2024-03-03"] == "ok" and shown["2024-03-04"] == "VOLUME"
