"""One run at a time per day: the day's lease, alone and between two real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import dagster as dg
import pytest

from cdr_pipeline import lease, raw
from cdr_pipeline.store import open_store
from cdr_pipeline_tests.conftest import API_ID, APP_ID
from cdr_pipeline_tests.test_crash import _one_version

DAY = "2024-04-10"  # test_crash's day: _one_version reads it
CLI = str(Path(sys.executable).parent / "cdr-pipeline")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_lease_is_held_renewed_waited_for_and_taken_over(tmp_path):
    store, clock = open_store(tmp_path), Clock()
    kw = {"ttl_s": 600, "clock": clock, "sleep": clock.sleep}
    lease.take_lease(store, DAY, "run-a", wait_s=0, **kw)
    lease.take_lease(store, DAY, "run-a", wait_s=0, **kw)  # the same run again: renewed
    with pytest.raises(lease.DayBusy, match=r"2024-04-10 is being materialized by.*run-a"):
        lease.take_lease(store, DAY, "run-b", wait_s=0, **kw)
    # waiting: run-a releases while run-b waits
    released = []

    def sleep_then_release(seconds: float) -> None:
        clock.sleep(seconds)
        if not released:
            lease.release_lease(store, DAY, "run-a")
            released.append(clock.now)

    lease.take_lease(
        store, DAY, "run-b", ttl_s=600, wait_s=30, clock=clock, sleep=sleep_then_release
    )
    lease.release_lease(store, DAY, "run-a")  # not its lease any more: nothing happens
    with pytest.raises(lease.DayBusy):
        lease.take_lease(store, DAY, "run-c", wait_s=5, **kw)
    clock.now += 601  # run-b died without releasing
    lease.take_lease(store, DAY, "run-c", wait_s=0, **kw)
    lease.release_lease(store, DAY, "run-c")
    assert list((tmp_path / "_state" / "lease").iterdir()) == []


def test_an_exclusive_create_has_one_winner(tmp_path):
    store = open_store(tmp_path)
    wins = []
    barrier = threading.Barrier(8)

    def claim(n: int) -> None:
        barrier.wait()
        if store.create("_state/lease/x.json", f"{n}".encode()):
            wins.append(n)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.read_bytes("_state/lease/x.json") == str(wins[0]).encode()
    assert [p.name for p in (tmp_path / "_state" / "lease").iterdir()] == ["x.json"]


def _env(tmp_path: Path, url: str, name: str, **extra: str) -> dict[str, str]:
    home = tmp_path / f"home-{name}"  # separate Dagster homes: only the data is shared
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDR_", "DAGSTER_"))}
    return env | {
        "DAGSTER_HOME": str(home),
        "CDR_DATA_DIR": str(tmp_path / "data"),
        "CDR_API_URL": url,
        "CDR_API_ID": API_ID,
        "CDR_APP_ID": APP_ID,
        "CDR_TIMEZONE": "Asia/Shanghai",
        **extra,
    }


def _gated(server) -> threading.Event:
    """The provider answers nothing until the gate opens: the first run is then certainly
    still fetching, holding the day, while the second one starts."""
    gate = threading.Event()
    handle = server.sim.handle

    def held(*args, **kwargs):
        gate.wait(120)
        return handle(*args, **kwargs)

    server.sim.handle = held
    return gate


def _start(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [CLI, "materialize", "--start", DAY, "--end", DAY],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_lease(tmp_path: Path, first: subprocess.Popen) -> None:
    held = tmp_path / "data" / lease.lease_key(DAY)
    for _ in range(2400):
        if held.exists():
            return
        assert first.poll() is None, first.communicate()
        threading.Event().wait(0.05)
    raise AssertionError("the first run never took the day")


@pytest.mark.slow
@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_a_second_run_of_the_same_day_fails_fast_and_clearly(tmp_path, sim_server, attempt):
    server = sim_server(calls_per_day=400, page_size=100)
    gate = _gated(server)
    first = _start(_env(tmp_path, server.url, "a"))
    _wait_for_lease(tmp_path, first)
    second = subprocess.run(
        [CLI, "materialize", "--start", DAY, "--end", DAY],
        env=_env(tmp_path, server.url, "b"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    gate.set()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-3000:]
    assert second.returncode == 1
    assert f"{DAY} is being materialized by another run" in second.stderr
    assert "CDR_LOCK_WAIT_S" in second.stderr
    _one_version(tmp_path / "data")
    assert not (tmp_path / "data" / lease.lease_key(DAY)).exists()  # released
    leftovers = [p for p in (tmp_path / "data").rglob(".*") if p.is_file()]
    assert leftovers == []


@pytest.mark.slow
def test_a_second_run_told_to_wait_publishes_after_the_first(tmp_path, sim_server):
    server = sim_server(calls_per_day=400, page_size=100)
    gate = _gated(server)
    first = _start(_env(tmp_path, server.url, "a"))
    _wait_for_lease(tmp_path, first)
    second = _start(_env(tmp_path, server.url, "b", CDR_LOCK_WAIT_S="300"))
    said = []
    for line in second.stderr:  # it says that it waits, and for whom
        said.append(line)
        if f"{DAY} is held by another run" in line:
            break
    assert said and "waiting up to 300 s" in said[-1], "".join(said)
    gate.set()  # only now can the first run finish
    for proc in (first, second):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    _one_version(tmp_path / "data")
    runs = raw.read_raw_manifest(open_store(tmp_path / "data"), DAY)
    assert runs["totals"]["records"] > 0
    assert not (tmp_path / "data" / lease.lease_key(DAY)).exists()


@pytest.mark.slow
def test_a_lease_whose_process_died_on_this_machine_is_taken_over_at_once(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    store = open_store(tmp_path)
    lease.take_lease(store, DAY, "run-killed", ttl_s=3600, wait_s=0)
    key = lease.lease_key(DAY)
    holder = json.loads(store.read_bytes(key))
    holder["pid"] = int(dead.stdout)  # as if that process had taken it, then been killed
    store.put(key, json.dumps(holder).encode())
    lease.take_lease(store, DAY, "run-next", ttl_s=3600, wait_s=0)
    with pytest.raises(lease.DayBusy):  # a live holder (this process) is waited for
        lease.take_lease(store, DAY, "run-third", ttl_s=3600, wait_s=0)


def test_a_run_of_raw_cdr_alone_leaves_the_day_free(monkeypatch, tmp_path, sim_server, instance):
    import dagster as dg

    from cdr_pipeline_tests.conftest import Env

    env = Env(monkeypatch, tmp_path, sim_server(calls_per_day=100))
    result = dg.materialize(
        [env.defs.get_assets_def("raw_cdr")],
        partition_key=DAY,
        instance=instance,
        resources=env.defs.resources,
        selection=["raw_cdr"],
    )
    assert result.success
    assert not (env.root / lease.lease_key(DAY)).exists()
    assert env.run(instance, DAY).success  # and a full run of the day goes ahead
    assert not (env.root / lease.lease_key(DAY)).exists()


# --- liveness: a heartbeat while the holder works, and its run's status in Dagster -----------


def test_a_live_holder_renews_its_lease_and_is_never_overtaken(tmp_path):
    """Before, a fetch longer than the lease's lifetime let a second run of the day in."""
    store, clock = open_store(tmp_path), Clock()
    held = lease.RunLeases(store, "run-slow", ttl_s=60, wait_s=0)
    lease.take_lease(store, DAY, "run-slow", ttl_s=60, wait_s=0, clock=clock)
    held.held.add(DAY)
    for _ in range(10):  # ten minutes of work, a beat every 15 s
        clock.now += 15
        held.beat(clock=clock)
        with pytest.raises(lease.DayBusy):
            lease.take_lease(store, DAY, "run-other", ttl_s=60, wait_s=0, clock=clock)
    clock.now += 61  # the beats stop (the worker died unseen): taken over after a lifetime
    lease.take_lease(store, DAY, "run-other", ttl_s=60, wait_s=0, clock=clock)
    held.beat(clock=clock)  # the old holder, were it alive, learns and lets the day go
    assert held.held == set()
    assert json.loads(store.read_bytes(lease.lease_key(DAY)))["owner"] == "run-other"


def test_the_heartbeat_thread_renews_while_the_block_runs(tmp_path):
    store = open_store(tmp_path)
    key = lease.lease_key(DAY)
    with lease.run_leases(store, [DAY], "run-a", ttl_s=0.4, wait_s=0) as held:
        held.take(DAY)
        first = json.loads(store.read_bytes(key))["expires_at"]
        renewed = threading.Event()
        while not renewed.wait(0.05):  # the beat comes every 0.1 s: wait for its effect
            if json.loads(store.read_bytes(key))["expires_at"] > first:
                renewed.set()
    assert not store.exists(key)


def test_a_retry_takes_over_at_once_from_a_run_dagster_knows_failed(
    monkeypatch, tmp_path, sim_server, instance
):
    """A worker that died on another host (a lost pod): its lease is an hour from expiry and
    its pid means nothing here, but its run is failed in Dagster's instance."""
    from cdr_pipeline_tests.conftest import Env

    dead = Env(monkeypatch, tmp_path, sim_server(force_error="-401"))
    failed = dead.run(instance, DAY, raise_on_error=False)
    assert not failed.success
    store = dead.store
    lease.take_lease(store, DAY, failed.run_id, ttl_s=3600, wait_s=0)
    holder = json.loads(store.read_bytes(lease.lease_key(DAY)))
    store.put(lease.lease_key(DAY), json.dumps(holder | {"host": "pod-7f9c", "pid": 1}).encode())
    retry = Env(monkeypatch, tmp_path, sim_server(calls_per_day=100))
    assert retry.run(instance, DAY).success  # at once: no wait, no "another run"
    assert not store.exists(lease.lease_key(DAY))
    # a holder whose run is still going is waited for (here: not at all, CDR_LOCK_WAIT_S=0)
    going = str(uuid.uuid4())
    started = instance.create_run_for_job(
        retry.job, run_id=going, status=dg.DagsterRunStatus.STARTED
    )
    lease.take_lease(store, DAY, started.run_id, ttl_s=3600, wait_s=0)
    holder = json.loads(store.read_bytes(lease.lease_key(DAY)))
    store.put(lease.lease_key(DAY), json.dumps(holder | {"host": "pod-7f9c", "pid": 1}).encode())
    busy = retry.run(instance, DAY, raise_on_error=False)
    assert not busy.success
    (failure,) = [e for e in busy.all_events if e.event_type_value == "STEP_FAILURE"]
    assert f"being materialized by another run ({going}" in failure.step_failure_data.error.message


def test_a_lease_that_cannot_be_read_is_a_clear_error_not_a_retried_transient(
    monkeypatch, tmp_path, sim_server, instance
):
    from cdr_pipeline_tests.conftest import Env

    env = Env(monkeypatch, tmp_path, sim_server(calls_per_day=100), CDR_FETCH_RETRIES="2")
    path = env.root / "_state" / "lease" / f"date={DAY}.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"owner": "run-a", "expires_at": 17')  # cut short: a full disk
    result = env.run(instance, DAY, raise_on_error=False)
    assert not result.success
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    said = failure.step_failure_data.error.message
    assert f"the lease {path} cannot be read" in said and "delete it" in said
