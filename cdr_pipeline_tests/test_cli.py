"""The ``cdr-pipeline`` command as a user runs it: separate processes, a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pytest

from cdr_pipeline import cli, layout, publish, raw
from cdr_pipeline.settings import ConfigError, load_settings
from cdr_pipeline.simulator import CdrSimulator, SimConfig
from cdr_pipeline.store import open_store
from cdr_pipeline_tests.conftest import API_ID, APP_ID

CLI = str(Path(sys.executable).parent / "cdr-pipeline")


@pytest.fixture
def api_process():
    proc = subprocess.Popen(
        [
            CLI,
            "simulate-api",
            "--port",
            "0",  # the server binds a free port itself and prints it: nothing can take it first
            "--seed",
            "7",
            "--page-size",
            "100",
            "--app-id",
            APP_ID,
            "--api-id",
            API_ID,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert "listening on" in line, line + proc.stderr.read()
    yield line.split("listening on ")[1].strip()
    proc.terminate()
    proc.wait(timeout=10)


def _env(tmp_path: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDR_", "DAGSTER_"))}
    env.update(CDR_DATA_DIR=str(tmp_path / "data"), DAGSTER_HOME=str(tmp_path / "home"), **extra)
    if "CDR_API_URL" not in extra:  # the demo's simulator, asked for by name, on fixed days
        env.setdefault("CDR_SIMULATOR", "true")
        env.setdefault("CDR_START_DATE", "2024-01-01")
    return env


@pytest.mark.slow
def test_lookup_and_fetch_against_the_server_process(api_process, tmp_path):
    env = _env(tmp_path, CDR_API_URL=api_process, CDR_API_ID=API_ID, CDR_APP_ID=APP_ID)
    sim = CdrSimulator(SimConfig(seed=7, page_size=100))
    call = sim.calls_between(1_709_251_200, 1_709_254_800)[0]
    out = subprocess.run(
        [CLI, "lookup", call.call_id], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == call.wire
    missing = subprocess.run([CLI, "lookup", "nope"], env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and "not found" in missing.stderr
    out = subprocess.run(
        [CLI, "fetch", "--start", "2024-03-01T09:00:00", "--end", "2024-03-01T15:00:00"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    expected = len(sim.listing(1_709_254_800, 1_709_276_400))
    assert expected > 300
    assert f"total: {expected} records" in out.stdout
    pages = [line for line in out.stdout.splitlines() if line.startswith("page ")]
    assert len(pages) == -(-expected // 100)
    for secret in (API_ID, APP_ID):
        assert secret not in out.stdout + out.stderr
    wrong = subprocess.run(
        [CLI, "lookup", call.call_id],
        capture_output=True,
        text=True,
        env=env | {"CDR_APP_ID": "APP-wrong-1"},
    )
    assert wrong.returncode == 3 and "-401" in wrong.stderr and "CDR_APP_ID" in wrong.stderr


@pytest.mark.slow
def test_materialize_a_range_then_print_kpis(tmp_path):
    env = _env(tmp_path, CDR_SIM_CALLS_PER_DAY="300")
    out = subprocess.run(
        [CLI, "materialize", "--start", "2024-02-28", "--end", "2024-03-01"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "3/3" in out.stderr
    for day in ("2024-02-28", "2024-02-29", "2024-03-01"):
        assert day in out.stdout
    glob = tmp_path / "data" / "call_kpis_daily" / "*" / "*.parquet"
    n = duckdb.sql(f"select count(*) from read_parquet('{glob}', hive_partitioning=true)")
    assert n.fetchall()[0][0] == 3
    assert (tmp_path / "home" / "history").exists()  # the runs are in the persistent instance


@pytest.mark.slow
def test_configuration_errors_name_the_setting(tmp_path):
    tomorrow = (datetime.now(ZoneInfo("Asia/Shanghai")) + timedelta(days=2)).date().isoformat()
    cases = [
        ({"CDR_TIMEZONE": "Mars/Olympus"}, "CDR_TIMEZONE"),
        ({"CDR_API_URL": "http://api.example.com/201511v3/getCdr"}, "plain http"),
        ({"CDR_API_URL": "https://api.example.com/201511v3/getCdr"}, "CDR_API_ID"),
        ({"CDR_API_URL": "https://h/201511v3/getCdr", "CDR_API_ID": "x-id"}, "CDR_APP_ID"),
        (
            {"CDR_API_URL": "https://h/201511v3/getCdr", "CDR_API_ID": "x", "CDR_APP_ID": "y"},
            "at least 4",
        ),
        ({"CDR_START_DATE": tomorrow}, "CDR_START_DATE"),
        ({"CDR_START_DATE": "2024-02-30"}, "CDR_START_DATE"),
        ({"CDR_START_DATE": "yesterday"}, "CDR_START_DATE"),
        ({"CDR_API_URL": "not a url"}, "CDR_API_URL"),
        ({"CDR_API_URL": "ftp://api.example.com/getCdr"}, "CDR_API_URL"),
        ({"CDR_API_URL": "https://"}, "CDR_API_URL"),
        ({"CDR_API_URL": "https://h/201511v3/getCdr?id=abc"}, "CDR_API_ID"),
        ({"CDR_API_URL": "http://10.0.0.8/201511v3/getCdr"}, "plain http"),
        ({"CDR_WINDOW_HOURS": "six"}, "CDR_WINDOW_HOURS"),
        ({"CDR_LATE_DAYS": "0"}, "CDR_LATE_DAYS"),
        ({"CDR_DATA_DIR": "s3://AKIDEXAMPLE:wJalrXUtnFEMI@bucket/cdr"}, "credentials"),
        ({"CDR_DATA_DIR": "s3://bucket/cdr?region=ap&secret_key=wJalrXUtnFEMI"}, "credentials"),
        ({"CDR_DATA_DIR": "s3:///cdr"}, "names no bucket"),
        ({"CDR_DATA_DIR": "nosuchstore://bucket/cdr"}, r"CDR_DATA_DIR.*nosuchstore://"),
    ]
    for env, name in cases:
        with pytest.raises(ConfigError, match=name) as caught:
            load_settings({"CDR_DATA_DIR": str(tmp_path), **env})
        assert "wJalrXUtnFEMI" not in str(caught.value)  # a secret in the URL is not echoed
    # A URL is only checked when the settings load: nothing is contacted until a run.
    assert load_settings({"CDR_DATA_DIR": "s3://bucket/cdr/"}).data_dir == "s3://bucket/cdr/"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="CDR_DATA_DIR"):
        load_settings({"CDR_DATA_DIR": str(blocker / "sub")})
    if os.geteuid() != 0:  # root writes through any permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ConfigError, match=r"CDR_DATA_DIR.*not a writable directory"):
            load_settings({"CDR_DATA_DIR": str(locked)})
    # Out-of-range tuning values are caught when the settings load, named by variable.
    with pytest.raises(ConfigError, match=r"(?s)CDR_WINDOW_HOURS='0'.*CDR_CONCURRENCY='500'"):
        load_settings(
            {"CDR_DATA_DIR": str(tmp_path), "CDR_WINDOW_HOURS": "0", "CDR_CONCURRENCY": "500"}
        )
    # ... and that is what an operator sees from Dagster's own tooling.
    env = _env(tmp_path, CDR_TIMEZONE="Mars/Olympus") | {"DAGSTER_HOME": str(tmp_path)}
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "definitions",
            "validate",
            "-m",
            "cdr_pipeline.definitions",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode != 0 and "CDR_TIMEZONE='Mars/Olympus'" in proc.stdout + proc.stderr
    out = subprocess.run(
        [CLI, "kpis", "--last", "1"],
        capture_output=True,
        text=True,
        env=_env(tmp_path, CDR_TIMEZONE="Nowhere/Land"),
    )
    assert out.returncode == 2 and "CDR_TIMEZONE" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["dagster", "asset", "materialize", "-m", "cdr_pipeline.definitions", "--select", "*"],
        ["dg", "launch", "--assets", "*"],
    ],
)
def test_dagster_clis_backfill_a_range_in_one_run(tmp_path, command):
    env = _env(tmp_path, CDR_SIM_CALLS_PER_DAY="200")
    (tmp_path / "home").mkdir()
    exe = str(Path(sys.executable).parent / command[0])
    out = subprocess.run(
        [exe, *command[1:], "--partition-range", "2024-03-01...2024-03-02"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[1],
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.count("RUN_SUCCESS") == 1  # a single-run backfill
    for day in ("2024-03-01", "2024-03-02"):
        assert (tmp_path / "data" / "call_kpis_daily" / f"date={day}" / "part-0.parquet").exists()


@pytest.mark.parametrize(
    "key",
    ["../2024-01-01", "2024-01-01/../../x", "2024-13-01", "2024-1-1", "/etc", "", "2024-01-01\n"],
)
def test_partition_keys_cannot_escape_the_data_directory(key):
    with pytest.raises(layout.StorageError, match="partition key"):
        layout.day_key("cdr", key)
    with pytest.raises(layout.StorageError):
        layout.raw_day_key(key)
    with pytest.raises(layout.StorageError):
        layout.state_key("journal", key)


def test_stored_paths_cannot_escape_the_data_directory(tmp_path):
    root = tmp_path / "data"
    store = open_store(root)
    outside = tmp_path / "victim.txt"
    outside.write_text("keep me")
    day = "2024-05-06"
    manifest = {"requests": [{"file": "../../../victim.txt", "sha256": "0" * 64}]}
    with pytest.raises(layout.StorageError, match="unexpected file"):
        raw.read_raw_body(store, day, manifest["requests"][0])
    with pytest.raises(layout.StorageError, match="unknown dataset"):
        layout.day_key("../cdr", day)
    journal = root / layout.state_key("journal", day)
    journal.parent.mkdir(parents=True)
    journal.write_text(json.dumps({"moves": [["cdr/x.tmp", "../victim.txt"]]}))
    with pytest.raises(layout.StorageError, match="outside the data directory"):
        publish.recover_day(store, day)
    assert outside.read_text() == "keep me"


@pytest.mark.slow
@pytest.mark.parametrize(("variable", "expected"), [(None, "system"), ("jemalloc", "jemalloc")])
def test_a_pipeline_process_allocates_with_malloc_unless_told(tmp_path, variable, expected):
    """The C library's malloc, its arenas capped, keeps less memory than Arrow's default
    (the benchmark shows the difference); an operator's ARROW_DEFAULT_MEMORY_POOL still wins.
    Loading the definitions changes nothing; a day's transform (``validate_day``) makes the
    switch, and leaves what was loaded out of the garbage collector's later passes."""
    env = _env(tmp_path) | {"DAGSTER_HOME": str(tmp_path)}
    env.pop("ARROW_DEFAULT_MEMORY_POOL", None)
    if variable:
        env["ARROW_DEFAULT_MEMORY_POOL"] = variable
    code = (
        "import gc, pyarrow as pa; print(pa.default_memory_pool().backend_name); "
        "from cdr_pipeline.definitions import defs; defs(); "
        "print(pa.default_memory_pool().backend_name, gc.get_freeze_count()); "
        "from cdr_pipeline.memory import setup; print(setup(), gc.get_freeze_count())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    before, loaded, switched = (line.split() for line in out.stdout.strip().splitlines()[-3:])
    assert loaded == [*before, "0"]  # no side effect at load
    assert switched[0] == expected
    assert int(switched[1]) > 10_000  # Dagster's objects, frozen


@pytest.mark.slow
def test_make_ui_refuses_a_taken_port_in_plain_words(tmp_path):
    import socket

    root = Path(__file__).resolve().parents[1]
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = subprocess.run(
            ["make", "-s", "ui", f"UI_PORT={port}", f"DAGSTER_HOME={tmp_path}"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode != 0
    assert f"port {port} is taken" in out.stderr and "UI_PORT=" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["materialize", "--start", "2024-02-30", "--end", "2024-03-01"], "--start '2024-02-30'"),
        (["kpis", "--start", "2024-03-01", "--end", "soon"], "--end 'soon'"),
        (["fetch", "--start", "2024-03-02", "--end", "2024-03-01"], "is after --end"),
    ],
)
def test_bad_dates_are_one_plain_line(tmp_path, args, said):
    out = subprocess.run([CLI, *args], capture_output=True, text=True, env=_env(tmp_path))
    assert out.returncode != 0
    assert said in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_dotenv_file_means_the_same_to_the_cli_as_to_dagster(tmp_path):
    """Dagster's commands load ``.env`` from the working directory over the environment;
    so does ``cdr-pipeline``, and ``config`` says where each value came from."""
    work = tmp_path / "work"
    work.mkdir()
    (work / ".env").write_text(
        f"CDR_DATA_DIR={tmp_path / 'from-dotenv'}\nCDR_SIM_CALLS_PER_DAY=150\n"
    )
    env = _env(tmp_path) | {"CDR_DATA_DIR": str(tmp_path / "from-environment")}
    out = subprocess.run([CLI, "config"], cwd=work, env=env, capture_output=True, text=True)
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()[1:]}
    shadowed = [str(tmp_path / "from-dotenv"), ".env,", "over", "the", "exported", "value"]
    assert rows["CDR_DATA_DIR"] == shadowed
    assert rows["CDR_SIM_CALLS_PER_DAY"] == ["150", ".env"]
    run = subprocess.run(
        [CLI, "materialize", "--start", "2024-03-01", "--end", "2024-03-01"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert list((tmp_path / "from-dotenv").glob("cdr/*/*.parquet"))
    assert not (tmp_path / "from-environment").exists()


@pytest.mark.slow
def test_a_failed_day_is_said_once_and_never_shown_with_old_figures(tmp_path):
    env = _env(tmp_path)  # the built-in simulator publishes the day first
    day = ["--start", "2024-03-01", "--end", "2024-03-01"]
    first = subprocess.run([CLI, "materialize", *day], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "replaced" not in first.stdout
    again = subprocess.run([CLI, "materialize", *day], env=env, capture_output=True, text=True)
    assert "replaced the published version of 2024-03-01 (a day is one version)" in again.stdout
    # now the real API, with a credential it refuses
    from cdr_pipeline.simulator import serve

    server = serve(SimConfig(force_error="-401"))
    try:
        real = {"CDR_API_URL": server.url, "CDR_API_ID": "ID-wrong", "CDR_APP_ID": "APP-x"}
        bad = {k: v for k, v in env.items() if k != "CDR_SIMULATOR"} | real
        out = subprocess.run([CLI, "materialize", *day], env=bad, capture_output=True, text=True)
    finally:
        server.close()
    assert out.returncode == 1
    said = [line for line in out.stderr.splitlines() if "2024-03-01 failed:" in line]
    assert len(said) == 1 and "-401" in said[0] and "CDR_APP_ID" in said[0]
    assert "Traceback" not in out.stderr
    (row,) = [line for line in out.stdout.splitlines() if line.startswith("2024-03-01")]
    assert row.split() == ["2024-03-01", "FAILED"]  # not the published day's figures
    assert "replaced" not in out.stdout and "datasets under" not in out.stdout


@pytest.mark.slow
def test_kpis_say_which_days_are_not_materialized(tmp_path):
    env = _env(tmp_path)
    subprocess.run(
        [CLI, "materialize", "--start", "2024-03-02", "--end", "2024-03-02"],
        env=env,
        capture_output=True,
        check=True,
    )
    out = subprocess.run(
        [CLI, "kpis", "--start", "2024-03-01", "--end", "2024-03-03"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0
    rows = {line.split()[0]: line for line in out.stdout.splitlines() if line[:4] == "2024"}
    assert rows["2024-03-01"].split()[1:] == ["not", "materialized"]
    assert rows["2024-03-02"].split()[-1] == "ok"
    assert "2 of 3 days are not materialized" in out.stdout


@pytest.mark.slow
def test_cli_rough_edges(tmp_path):
    """A version, a plain word for an empty callId, a folder without data, machine-readable
    KPIs, the report beside the data, and an unreachable bucket in one line."""
    env = _env(tmp_path)
    version = subprocess.run([CLI, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("cdr-pipeline ")
    empty = subprocess.run([CLI, "lookup", ""], capture_output=True, text=True, env=env)
    assert empty.returncode != 0 and "give the callId" in empty.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lost = {k: v for k, v in env.items() if k != "CDR_DATA_DIR"}
    out = subprocess.run(
        [CLI, "kpis", "--last", "3"], capture_output=True, text=True, env=lost, cwd=elsewhere
    )
    assert out.returncode != 0 and "no data directory at" in out.stderr
    assert not (elsewhere / "data").exists()  # and none was made
    day = ["--start", "2024-03-01", "--end", "2024-03-01"]
    subprocess.run([CLI, "materialize", *day], env=env, capture_output=True, check=True)
    as_json = subprocess.run(
        [CLI, "kpis", *day, "--format", "json"], capture_output=True, text=True, env=env
    )
    (row,) = json.loads(as_json.stdout)
    as_csv = subprocess.run(
        [CLI, "kpis", *day, "--format", "csv"], capture_output=True, text=True, env=env
    )
    header, line = as_csv.stdout.strip().splitlines()
    assert header.split(",")[:2] == ["date", "total_calls"]
    assert line.split(",")[1] == str(row["total_calls"])
    report = subprocess.run([CLI, "report", *day], capture_output=True, text=True, env=env)
    assert report.returncode == 0 and (tmp_path / "data" / "report.html").exists()
    bucket = env | {
        "CDR_DATA_DIR": "s3://no-such-bucket/prefix",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # nothing listens there
        "AWS_ACCESS_KEY_ID": "key-id",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    down = subprocess.run([CLI, "kpis", *day], capture_output=True, text=True, env=bucket)
    assert down.returncode == 4
    assert down.stderr.startswith("storage error: ") and len(down.stderr.splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("force_error", "code", "said"),
    [
        (None, 0, "works: the API answered"),
        ("-403", 3, "allow-list"),
        ("-401", 3, "check CDR_APP_ID"),
    ],
)
def test_check_says_what_works_and_what_to_fix(tmp_path, force_error, code, said):
    from cdr_pipeline.simulator import serve

    server = serve(SimConfig(force_error=force_error, app_id=APP_ID, api_id=API_ID))
    try:
        env = _env(tmp_path, CDR_API_URL=server.url, CDR_API_ID=API_ID, CDR_APP_ID=APP_ID)
        out = subprocess.run([CLI, "check"], capture_output=True, text=True, env=env)
    finally:
        server.close()
    assert out.returncode == code, out.stderr
    assert said in out.stdout + out.stderr
    assert server.sim.stats["requests"] == 1  # one request, even when it fails


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["kpis", "--last", "1000000"], "'1000000' is not a whole number from 1 to 3660"),
        (["prune", "--keep-days", "99999999"], "is not a whole number from 0 to 36500"),
        (["prune", "--keep-days", "-1"], "'-1' is not a whole number from 0 to 36500"),
        (["simulate-api", "--fault-rate", "inf"], "'inf' is not a number from 0.0 to 1.0"),
        (["kpis", "--start", "20250301", "--end", "2025-03-02"], "is not a date in YYYY-MM-DD"),
        (["kpis", "--start", "2025-W10-1", "--end", "2025-03-02"], "is not a date in YYYY-MM-DD"),
        (["kpis", "--last", "3", "--start", "2024-03-01"], "--last, not both"),
    ],
)
def test_every_option_is_bounded_and_said_in_one_line(tmp_path, monkeypatch, capsys, argv, said):
    monkeypatch.setenv("CDR_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    err = capsys.readouterr().err + str(stopped.value.code)
    assert said in err and "Traceback" not in err


def _in(tmp_path, monkeypatch, dotenv: str, **exported: str) -> None:
    """A project folder with this .env, and these variables exported in the shell."""
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k[:4] != "CDR_"})
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(dotenv)
    os.environ.update({"CDR_DATA_DIR": str(tmp_path / "data"), **exported})


def test_a_misspelt_url_variable_is_said_at_once_never_the_simulator(tmp_path, monkeypatch, capsys):
    """Before, `check` said the simulator "works" and `materialize` replaced a real day with
    synthetic calls."""
    _in(
        tmp_path,
        monkeypatch,
        "CDR_API_ULR=https://api.example.com/201511v3/getCdr\n"
        f"CDR_API_ID={'i' * 16}\nCDR_APP_ID={'a' * 16}\n",
    )
    for command in (["check"], ["materialize", "--last", "1"], ["config"]):
        assert cli.main(command) == 2
        said = capsys.readouterr().err
        assert "unknown setting CDR_API_ULR" in said and "did you mean CDR_API_URL?" in said
        assert "CDR_API_ID or CDR_APP_ID is set but CDR_API_URL is not" in said
    assert not (tmp_path / "data").exists()


def test_an_unknown_setting_gets_the_nearest_name(tmp_path, monkeypatch, capsys):
    _in(tmp_path, monkeypatch, "", CDR_CONCURENCY="4")
    assert cli.main(["config"]) == 2
    assert "unknown setting CDR_CONCURENCY" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"did you mean CDR_CONCURRENCY\?"):
        load_settings({"CDR_CONCURENCY": "4"})


def test_config_and_check_name_an_exported_value_that_dotenv_shadows(tmp_path, monkeypatch, capsys):
    _in(tmp_path, monkeypatch, "CDR_CONCURRENCY=7\n", CDR_CONCURRENCY="4", CDR_WINDOW_HOURS="3")
    assert cli.main(["config"]) == 0
    out, err = capsys.readouterr()
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert rows["CDR_CONCURRENCY"] == ["7", ".env,", "over", "the", "exported", "value"]
    assert rows["CDR_WINDOW_HOURS"] == ["3", "environment"]
    assert "note: .env sets CDR_CONCURRENCY over the value exported in this shell" in err


def test_config_says_where_dotenv_expanded_a_value_without_showing_it(
    tmp_path, monkeypatch, capsys
):
    """Before, an unquoted ${HOME} inside a secret in .env was expanded and masked: the
    operator could not see why the provider refused it."""
    secret = "APP-${HOME}-s3cr3t"
    _in(
        tmp_path,
        monkeypatch,
        f"CDR_APP_ID={secret}\nCDR_API_URL=https://api.example.com/201511v3/getCdr\n",
        CDR_API_ID="ID-${HOME}-kept",  # exported: never expanded
    )
    assert cli.main(["config"]) == 0
    out, err = capsys.readouterr()
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines()[1:]}
    assert rows["CDR_APP_ID"] == "*** .env, ${...} expanded"
    assert rows["CDR_API_ID"] == "*** environment"
    assert os.environ["CDR_API_ID"] == "ID-${HOME}-kept"
    assert "note: .env's CDR_APP_ID had ${...} expanded" in err
    assert os.environ["HOME"] not in out + err and "s3cr3t" not in out + err
