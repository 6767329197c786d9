"""The first day on the real API, as a new user meets it: the demo and live data apart, a
provider that cannot be reached said at once, `check` saying what is wrong, retries shown."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from cdr_pipeline import cli
from cdr_pipeline.api.client import _transport_error
from cdr_pipeline.api.errors import FatalApiError
from cdr_pipeline.cli.days import _retries_shown
from cdr_pipeline.settings import ConfigError, dagster_home, load_settings
from cdr_pipeline.simulator import SimConfig, serve
from cdr_pipeline_tests.conftest import API_ID, APP_ID, FAST
from cdr_pipeline_tests.servers import Receiver

CLI = str(Path(sys.executable).parent / "cdr-pipeline")
DAY = (1709222400, 1709244000)  # the first six hours of 2024-03-01 in Shanghai


def _project(tmp_path: Path, monkeypatch, **env: str) -> None:
    """A project folder with only these CDR_ variables, and no DAGSTER_HOME."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CDR_", "DAGSTER_"))}
    monkeypatch.setattr(os, "environ", clean | env)
    monkeypatch.chdir(tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_demo_and_a_real_api_have_their_own_folders(tmp_path, monkeypatch):
    """Before, both wrote data/ and .dagster_home/, and every recipe returned both mixed."""
    _project(tmp_path, monkeypatch)
    demo = load_settings({"CDR_SIMULATOR": "true"})
    live = load_settings({"CDR_API_URL": "https://api.example.com/201511v3/getCdr"} | _creds())
    assert Path(demo.data_dir) == tmp_path / "data" / "demo"
    assert Path(live.data_dir) == tmp_path / "data" / "live"
    assert dagster_home(True) == tmp_path / ".dagster_home" / "demo"
    assert dagster_home(False) == tmp_path / ".dagster_home" / "live"
    # the demo's partitions are its last 30 days, for the UI and the CLI alike
    today = datetime.now(ZoneInfo(demo.timezone)).date()
    assert date.fromisoformat(demo.start_date) == today - timedelta(days=30)
    assert live.start_date == "2024-01-01"
    # what the operator sets wins
    mine = load_settings(
        {"CDR_SIMULATOR": "true", "CDR_DATA_DIR": str(tmp_path), "CDR_START_DATE": "2024-05-01"}
    )
    assert (mine.data_dir, mine.start_date) == (str(tmp_path), "2024-05-01")


def _creds() -> dict[str, str]:
    return {"CDR_API_ID": API_ID, "CDR_APP_ID": APP_ID}


def _check(tmp_path, monkeypatch, capsys, **env: str) -> tuple[int, str]:
    _project(tmp_path, monkeypatch, **env)
    code = cli.main(["check"])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_check_names_each_kind_of_failure_with_its_own_advice(
    tmp_path, monkeypatch, capsys, sim_server
):
    """Before, refused, TLS and a wrong path all said "the provider kept failing; the
    partition can be re-run later", without the HTTP status or the port."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/201511v3/getCdr"
    code, said = _check(tmp_path, monkeypatch, capsys, CDR_API_URL=url, **_creds())
    assert code == 3 and f"asking {url} " in said  # the port as configured
    assert "not working (unreachable): the connection was refused" in said
    assert "check the port of CDR_API_URL" in said and "re-run later" not in said

    plain = sim_server()  # https to a port that speaks plain http
    tls_url = plain.url.replace("http://", "https://")
    code, said = _check(tmp_path, monkeypatch, capsys, CDR_API_URL=tls_url, **_creds())
    assert code == 3 and "not working (unreachable): the TLS handshake failed" in said
    assert "speak https" in said

    wrong_path = Receiver(status=404)
    try:
        url = wrong_path.url.replace("/hook/T0K3N-s3cr3t", "/201511v3/getCdrr")
        code, said = _check(tmp_path, monkeypatch, capsys, CDR_API_URL=url, **_creds())
    finally:
        wrong_path.server.shutdown()
    assert code == 3 and "HTTP status 404" in said and "check CDR_API_URL (host and path)" in said
    assert len(wrong_path.requests) == 1  # not retried

    down = sim_server(fault_rate=1.0, fault_kinds=("http503",), max_faults_per_request=5)
    code, said = _check(
        tmp_path, monkeypatch, capsys, CDR_API_URL=down.url, CDR_BACKOFF_BASE_S="0", **_creds()
    )
    assert code == 3 and "HTTP status 503" in said and "failing for now" in said

    code, said = _check(tmp_path, monkeypatch, capsys, CDR_SIMULATOR="true")
    assert code == 0 and "asking the built-in simulator" in said


@pytest.mark.parametrize(
    ("cause", "said"),
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "does not resolve"),
        (ConnectionRefusedError(111, "Connection refused"), "the connection was refused"),
    ],
)
def test_an_endpoint_that_never_answered_is_not_retried(cause, said):
    """A name no resolver knows (no test can ask a real one here) or a refused connection,
    before any answer: fatal; the same after the endpoint has answered: retried."""
    exc = httpx.ConnectError(str(cause))
    exc.__cause__ = cause
    ctx = {"window": DAY, "call_id": None}
    with pytest.raises(FatalApiError, match=said) as first:
        _transport_error(exc, FAST, ctx, first=True)
    assert first.value.kind == "unreachable" and first.value.stops_run
    later = _transport_error(exc, FAST, ctx, first=False)
    assert later.retryable
    temporary = httpx.ConnectError("try again")
    temporary.__cause__ = socket.gaierror(socket.EAI_AGAIN, "Temporary failure")
    assert _transport_error(temporary, FAST, ctx, first=True).retryable


def test_retries_show_on_the_progress_line(sim_server, make_client):
    """Before, the bar stayed at 0/1 with no word while the client waited."""
    server = sim_server(fault_rate=1.0, fault_kinds=("http503",), max_faults_per_request=1)

    class Bar:
        def __init__(self) -> None:
            self.shown: list[str] = []

        def set_postfix_str(self, text: str) -> None:
            self.shown.append(text)

    bar = Bar()
    with _retries_shown(bar):
        make_client(server).query_window(*DAY)
    first = f"retry 1/{FAST.max_attempts} after HTTP 503, next in "
    assert bar.shown and bar.shown[0].startswith(first)
    assert bar.shown[0].endswith(" s")


@pytest.mark.slow
def test_an_unreachable_provider_stops_the_run_at_once(tmp_path):
    """Before, about 100 silent seconds a day (7 days: 12 minutes), then the "read the data"
    hint after every day had failed. Now one message, the other days not attempted, and with
    --verbose each run's log and the stack trace once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDR_", "DAGSTER_"))}
    url = f"http://127.0.0.1:{_free_port()}/201511v3/getCdr"
    env |= {"CDR_API_URL": url, **_creds()}
    out = subprocess.run(
        [CLI, "materialize", "--last", "7", "--verbose"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1, out.stderr[-2000:]
    failed = [line for line in out.stderr.splitlines() if " failed: [unreachable]" in line]
    assert len(failed) == 1 and "the connection was refused" in failed[0]
    assert "stopped: no other day can succeed until that is fixed; not attempted: 6 days" in (
        out.stderr
    )
    rows = [line.split() for line in out.stdout.splitlines() if line[:2] == "20"]
    assert [r[-1] for r in rows] == ["FAILED"] + ["attempted"] * 6
    assert "datasets under" not in out.stdout  # nothing to read
    assert out.stderr.count("Stack Trace:") == 1 and " ERROR raw_cdr: " in out.stderr
    assert (tmp_path / ".dagster_home" / "live").is_dir()  # the live instance, not the demo's

    server = serve(SimConfig(force_error="-401"))
    try:
        env |= {"CDR_API_URL": server.url}
        args = ["materialize", "--start", "2024-03-01", "--end", "2024-03-05"]
        out = subprocess.run([CLI, *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    finally:
        server.close()
    assert out.returncode == 1 and "not attempted: 4 days, 2024-03-02 to 2024-03-05" in out.stderr
    assert server.sim.stats["requests"] == 1  # one refused credential, said once


@pytest.mark.slow
def test_make_clean_removes_the_demo_and_never_the_live_data(tmp_path):
    root = Path(__file__).resolve().parents[1]
    work = tmp_path / "project"
    work.mkdir()
    (work / "Makefile").write_text((root / "Makefile").read_text())
    (work / ".venv").symlink_to(root / ".venv")  # `rm -rf .venv` removes the link only
    made = {
        "data/demo/cdr/date=2024-03-01/part-0.parquet": False,
        "data/demo/raw/cdr/date=2024-03-01/manifest.json": False,
        "data/demo/_state/source.json": False,
        "data/demo/my-notes.txt": True,  # not the pipeline's
        "data/live/cdr/date=2024-03-01/part-0.parquet": True,
        "data/live/_state/source.json": True,
        ".dagster_home/demo/dagster.yaml": False,
        ".dagster_home/live/dagster.yaml": True,
    }
    for name in made:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text("x")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    done = subprocess.run(["make", "-s", "clean"], cwd=work, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert {n: (work / n).exists() for n in made} == made
    assert (root / ".venv" / "bin" / "python").exists()
    # a demo folder that is a link elsewhere is left alone, and so is what it points at
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "cdr").mkdir(parents=True)
    (work / "data" / "demo").rename(tmp_path / "old-demo")
    (work / "data" / "demo").symlink_to(elsewhere)
    (work / ".venv").symlink_to(root / ".venv")
    done = subprocess.run(["make", "-s", "clean"], cwd=work, env=env, capture_output=True)
    assert done.returncode != 0 and b"symbolic link: left alone" in done.stderr
    assert (elsewhere / "cdr").is_dir()


def test_the_demo_with_a_real_api_configured_says_which_commands_are_whose(tmp_path):
    with pytest.raises(ConfigError, match="CDR_SIMULATOR=true and CDR_API_URL are both set") as e:
        load_settings(
            {"CDR_SIMULATOR": "true", "CDR_DATA_DIR": str(tmp_path)}
            | {"CDR_API_URL": "https://api.example.com/201511v3/getCdr"}
            | _creds()
        )
    assert "make ui-live" in str(e.value) and API_ID not in str(e.value)
