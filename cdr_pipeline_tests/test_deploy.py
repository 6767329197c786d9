"""The production instance config against a real PostgreSQL: queued runs, the daemon, and the
``cdr_api`` pool limit holding across runs.

PostgreSQL comes from the ``pgserver`` package (the server binaries in a wheel, installed with
the test extras), started in a temporary folder for this test only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdr_pipeline_tests.servers import BIN, ROOT, stop, tail

DAYS = ["2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04"]


@pytest.fixture
def postgres(tmp_path: Path):
    try:
        import pgserver
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI must have pgserver (the test extras install it)")
        pytest.skip("pgserver is not installed")
    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    try:
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; dagster-postgres ships psycopg2
        yield server.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)
    finally:
        server.cleanup()


def _intervals(instance, run_ids: list[str], step: str) -> list[tuple[float, float]]:
    spans = []
    for run_id in run_ids:
        began = None
        for record in instance.all_logs(run_id):
            event = record.dagster_event
            if event is None or record.step_key != step:
                continue
            if event.event_type_value == "STEP_START":
                began = record.timestamp
            elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and began:
                spans.append((began, record.timestamp))
    return spans


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = now = 0
    for _, delta in edges:
        now += delta
        most = max(most, now)
    return most


@pytest.mark.slow
def test_queued_runs_on_postgres_respect_the_api_pool(tmp_path, postgres):
    import dagster as dg

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDR_", "DAGSTER_"))}
    env |= {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": postgres,
        "CDR_DATA_DIR": str(tmp_path / "data"),
        "CDR_START_DATE": "2024-01-01",
        "CDR_SIM_CALLS_PER_DAY": "4000",
        "CDR_SIMULATOR": "true",
    }
    daemon_log = tmp_path / "daemon.log"
    with daemon_log.open("wb") as out:
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, its code server in it: stop() ends both
        )
    try:
        for day in DAYS:  # four runs, queued at once
            launched = subprocess.run(
                [
                    str(BIN / "dagster"),
                    "job",
                    "launch",
                    "-w",
                    "workspace.yaml",
                    "-j",
                    "cdr_daily_job",
                    "--tags",
                    json.dumps({"dagster/partition": day}),
                ],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert launched.returncode == 0, launched.stderr[-3000:]
        os.environ["DAGSTER_PG_URL"] = postgres
        with dg.DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + 300
            while True:
                runs = instance.get_runs()
                if len(runs) == len(DAYS) and all(r.is_finished for r in runs):
                    break
                assert time.monotonic() < deadline, ([r.status for r in runs], tail(daemon_log))
                assert daemon.poll() is None, f"the daemon exited:\n{tail(daemon_log)}"
                time.sleep(1)
            assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
            run_ids = [r.run_id for r in runs]
            fetches = _intervals(instance, run_ids, "raw_cdr")
            assert len(fetches) == len(DAYS)
            assert _most_at_once(fetches) == 1  # the pool limit held across runs
            # ... while the runs themselves did overlap, so the limit was tested
            stats = [instance.get_run_stats(r) for r in run_ids]
            runs_spans = [(s.start_time, s.end_time) for s in stats]
            assert _most_at_once(runs_spans) > 1
            partitions = instance.get_materialized_partitions(dg.AssetKey("call_kpis_daily"))
            assert partitions == set(DAYS)
    finally:
        os.environ.pop("DAGSTER_PG_URL", None)
        stop(daemon, timeout=60)


# The instance classes the deployment names. deploy/dagster.yaml names them itself (module and
# class, or the `storage: postgres` shorthand); the Helm chart renders deploy/values.yaml into
# an instance config that names these (chart "dagster", templates/helpers/instance/*.tpl).
HELM_CLASSES = {
    "runLauncher.type=K8sRunLauncher": ("dagster_k8s", "K8sRunLauncher"),
    "dagsterDaemon.runCoordinator.type=QueuedRunCoordinator": (
        "dagster.core.run_coordinator",
        "QueuedRunCoordinator",
    ),
    "postgresql (run, event log, schedule storage)": ("dagster_postgres", "DagsterPostgresStorage"),
    "scheduler": ("dagster.core.scheduler", "DagsterDaemonScheduler"),
    "computeLogManager (default)": (
        "dagster.core.storage.noop_compute_log_manager",
        "NoOpComputeLogManager",
    ),
}
SHORTHANDS = {"postgres": ("dagster_postgres", "DagsterPostgresStorage")}


def _named_in_dagster_yaml() -> dict[str, tuple[str, str]]:
    import yaml

    config = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    found = {}
    for section, body in config.items():
        if isinstance(body, dict) and {"module", "class"} <= set(body):
            found[section] = (body["module"], body["class"])
        elif isinstance(body, dict):
            found |= {f"{section}.{k}": SHORTHANDS[k] for k in body if k in SHORTHANDS}
    return found


@pytest.mark.slow
def test_the_image_holds_every_class_its_instance_names(tmp_path):
    """An environment built as deploy/Dockerfile builds it (the `deploy` extra alone, at the
    tested versions) imports every class deploy/dagster.yaml and the Helm values name, and
    loads the definitions: a K8sRunLauncher run can start in it."""
    import yaml

    values = yaml.safe_load((ROOT / "deploy" / "values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert values["postgresql"]["enabled"]
    named = _named_in_dagster_yaml() | HELM_CLASSES
    assert "run_coordinator" in named and "storage.postgres" in named

    venv = tmp_path / "image"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "-q",
            "--disable-pip-version-check",
            # no bytecode ahead: what the probe imports is compiled as it is (about a third
            # of the install's time)
            "--no-compile",
            "-c",
            str(ROOT / "constraints.txt"),
            f"{ROOT}[deploy]",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    probe = (
        "import importlib, json, sys\n"
        "from dagster._serdes.config_class import ConfigurableClassData\n"
        "missing = []\n"
        "for where, (module, name) in json.loads(sys.argv[1]).items():\n"
        "    try:\n"
        "        # as the instance loads it (dagster.core is read as dagster._core)\n"
        "        module = ConfigurableClassData(module, name, '').module_name\n"
        "        getattr(importlib.import_module(module), name)\n"
        "    except Exception as exc:\n"
        "        missing.append(f'{where}: {module}.{name}: {exc!r}')\n"
        "from cdr_pipeline.definitions import defs\n"
        "defs()\n"
        "print(json.dumps(missing))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDR_", "DAGSTER_"))}
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe, json.dumps(named)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env=env | {"CDR_DATA_DIR": str(tmp_path / "data"), "DAGSTER_HOME": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
