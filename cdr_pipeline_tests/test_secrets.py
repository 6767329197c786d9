"""The credentials never leave the process: not in files, logs, the Dagster home or errors.

The whole pipeline runs through the ``dagster`` and ``cdr-pipeline`` commands against a
simulator that demands distinctive credentials, with httpx and httpcore logging at DEBUG into
Dagster's event log, transient faults (so retries are logged) and failing runs (so errors
and stack traces are stored). Then every byte written anywhere is searched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import pytest

from cdr_pipeline.api.client import CdrApiClient
from cdr_pipeline.api.errors import CdrApiError
from cdr_pipeline_tests.conftest import FAST, Env

# Distinctive values, and with characters that URL-encoding changes.
API_ID = "ID+leak/canary=7Qx9"
APP_ID = "APPleakCanary4471"
BIN = Path(sys.executable).parent
DAGSTER_YAML = """
python_logs:
  python_log_level: DEBUG
  managed_python_loggers: [httpx, httpcore, cdr_pipeline]
"""


def _forms(secret: str) -> list[bytes]:
    return [secret.encode(), quote(secret, safe="").encode(), quote(secret).encode()]


def _leaks(haystack: bytes) -> list[str]:
    return [form.decode() for s in (API_ID, APP_ID) for form in _forms(s) if form in haystack]


def _scan_tree(root: Path) -> dict[str, list[str]]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            leaks = _leaks(path.read_bytes())
            if leaks:
                found[str(path)] = leaks
    return found


def test_the_canary_is_findable(tmp_path):
    """The scan itself works: a file holding the id in URL form is caught."""
    (tmp_path / "f.log").write_text(f"POST /getCdr?id={quote(API_ID, safe='')}")
    assert _scan_tree(tmp_path)


@pytest.mark.slow
def test_no_secret_anywhere_after_real_runs(tmp_path, sim_server):
    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    good = sim_server(
        app_id=APP_ID,
        api_id=API_ID,
        echo_secrets=True,  # its error answers repeat appId, id and the request line
        fault_rate=0.3,
        fault_kinds=("code-501", "http503", "drop", "malformed"),
        page_size=80,
        calls_per_day=400,
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CDR_", "DAGSTER_"))}
    base |= {
        "DAGSTER_HOME": str(home),
        "CDR_DATA_DIR": str(data),
        "CDR_START_DATE": "2024-01-01",
        "CDR_API_ID": API_ID,
        "CDR_APP_ID": APP_ID,
        "CDR_READ_TIMEOUT_S": "0.5",
        "CDR_BACKOFF_BASE_S": "0.01",
        "CDR_BACKOFF_MAX_S": "0.02",
    }
    outputs: list[str] = []

    def run(args: list[str], server, expect_ok: bool) -> str:
        proc = subprocess.run(
            args,
            env=base | {"CDR_API_URL": server.url},
            capture_output=True,
            text=True,
            timeout=300,
            cwd=Path(__file__).parents[1],
        )
        outputs.extend([proc.stdout, proc.stderr])
        assert (proc.returncode == 0) == expect_ok, proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    materialize = [str(BIN / "dagster"), "asset", "materialize", "-m", "cdr_pipeline.definitions"]
    log = run(
        [*materialize, "--select", "*", "--partition-range", "2024-05-06...2024-05-07"],
        good,
        expect_ok=True,
    )
    assert "HTTP Request: POST" in log  # httpx's own request lines did reach the logs
    assert "***" in log  # ... with the id redacted
    assert "getCdr attempt" in log and "invalid for id ***" in log  # echoed, redacted
    assert good.sim.stats["fault:drop"] + good.sim.stats["fault:code-501"] > 0

    log = run(
        [*materialize, "--select", "raw_cdr", "--partition", "2024-05-08"],
        sim_server(force_error="-401", echo_secrets=True),
        expect_ok=False,
    )
    assert "-401" in log and "appId *** invalid" in log
    cli = str(BIN / "cdr-pipeline")
    run([cli, "materialize", "--start", "2024-05-08", "--end", "2024-05-08"], good, True)
    run([cli, "lookup", "no-such-call"], good, expect_ok=False)  # -201: exit 1
    run(
        [cli, "fetch", "--start", "2024-05-09", "--end", "2024-05-09"],
        sim_server(force_error="-403", echo_secrets=True),
        expect_ok=False,
    )

    assert (home / "history").exists() and (home / "storage").exists()
    assert list(data.rglob("*.parquet"))
    assert _scan_tree(data) == {}
    assert _scan_tree(home) == {}
    assert _leaks("\n".join(outputs).encode()) == []


def test_no_secret_in_raised_errors_or_dagster_failures(monkeypatch, tmp_path, sim_server, caplog):
    """In-process: the exceptions themselves, their tracebacks, and Dagster's error records."""
    import logging

    caplog.set_level(logging.DEBUG)
    texts = []
    for code in ("-401", "-403"):
        server = sim_server(force_error=code)
        with pytest.raises(CdrApiError) as info:
            CdrApiClient(server.url, API_ID, APP_ID, FAST).query_window(1715000000, 1715003600)
        texts += [str(info.value), repr(info.value)]
        texts += traceback.format_exception(info.value)
    dead = sim_server()
    dead.close()
    with pytest.raises(CdrApiError) as info:
        CdrApiClient(dead.url, API_ID, APP_ID, FAST).query_window(1715000000, 1715003600)
    texts += traceback.format_exception(info.value)

    monkeypatch.setenv("CDR_API_ID", API_ID)
    monkeypatch.setenv("CDR_APP_ID", APP_ID)
    env = Env(monkeypatch, tmp_path, sim_server(force_error="-401"))
    monkeypatch.setenv("CDR_API_ID", API_ID)
    monkeypatch.setenv("CDR_APP_ID", APP_ID)
    with dg.instance_for_test() as instance:
        result = env.run(instance, "2024-05-06", raise_on_error=False)
        assert not result.success
        for event in instance.all_logs(result.run_id):
            texts.append(repr(event))
        run = instance.get_run_by_id(result.run_id)
        texts.append(repr(run))
    texts.append(caplog.text)
    assert _leaks("\n".join(texts).encode()) == []


@pytest.mark.parametrize(
    ("resource", "config"),
    [
        ("cdr_api", {"api_url": "ATTACKER"}),
        ("cdr_api", {"app_id": {"env": "AWS_SECRET_ACCESS_KEY"}}),
        ("cdr_api", {"api_id": "x" * 16}),
        ("cdr_api", {"endpoint": {"url": "ATTACKER"}}),
        ("cdr_storage", {"data_dir": "s3://bucket/cdr?endpoint_override=ATTACKER"}),
        ("cdr_storage", {"home": {"store": "/tmp/elsewhere"}}),
        ("cdr_storage", {"timezone": "UTC"}),
        # a national number read as another country's gets a token an erasure misses
        ("cdr_analytics", {"default_region": "US"}),
        ("cdr_storage", {"default_region": "US"}),
    ],
)
def test_a_run_config_cannot_repoint_the_endpoint_credentials_or_data(
    monkeypatch, tmp_path, sim_server, instance, resource, config
):
    """Anyone who can launch a run could otherwise send the credentials to their own host."""
    env = Env(monkeypatch, tmp_path, sim_server())
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-canary-secret-0001")
    attacker = sim_server()
    config = json.loads(json.dumps(config).replace("ATTACKER", attacker.url))
    with pytest.raises(dg.DagsterInvalidConfigError) as refused:
        env.run(instance, "2024-03-01", run_config={"resources": {resource: {"config": config}}})
    (field,) = config
    assert f'unexpected config entry "{field}"' in str(refused.value)
    assert not attacker.sim.stats  # nothing was sent anywhere
    assert not env.root.exists() or not any(env.root.rglob("*.parquet"))
    # the tuning a run may change still takes
    tuned = {"resources": {"cdr_api": {"config": {"max_attempts": 2}}}}
    assert env.run(instance, "2024-03-01", run_config=tuned).success
