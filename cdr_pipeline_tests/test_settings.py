"""Every setting declared once: what is made from the declarations stays equal to them, and a
bad environment is reported whole, in plain words."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cdr_pipeline.resources import (
    CdrStorageResource,
    LiveCdrApi,
    api_resource,
    storage_resource,
)
from cdr_pipeline.settings import (
    ClientSettings,
    ConfigError,
    PublishSettings,
    SimulatorSettings,
    StorageSettings,
    env_example,
    knobs,
    load_settings,
    markdown_table,
)
from cdr_pipeline.simulator.resource import SimulatedCdrApi

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "cdr-pipeline")


@pytest.mark.slow
def test_env_example_and_the_operators_table_are_made_from_the_declarations():
    assert (ROOT / ".env.example").read_text() == env_example(), (
        "regenerate: cdr-pipeline config --env-example > .env.example"
    )
    guide = (ROOT / "docs" / "operators.md").read_text()
    table = re.search(r"<!-- settings -->\n(.*?)<!-- /settings -->", guide, re.S)
    assert table, "docs/operators.md lost its settings table"
    assert table.group(1) == markdown_table(), "regenerate: cdr-pipeline config --markdown"
    out = subprocess.run([CLI, "config", "--env-example"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == env_example()


def test_every_variable_is_declared_once_and_the_resources_carry_the_knobs():
    names = [k.env for k in knobs()]
    assert len(names) == len(set(names))
    assert all(n.startswith("CDR_") for n in names)
    client_fields = set(ClientSettings.model_fields)
    sim_fields = set(SimulatorSettings.model_fields)
    assert client_fields <= set(LiveCdrApi.model_fields)
    assert client_fields | sim_fields <= set(SimulatedCdrApi.model_fields)
    assert not sim_fields & set(LiveCdrApi.model_fields)  # simulator knobs: simulated only
    assert set(PublishSettings.model_fields) <= set(CdrStorageResource.model_fields)
    # where data and credentials go is the deployment's: no resource field (no run config) sets it
    fields = {f for r in (LiveCdrApi, SimulatedCdrApi, CdrStorageResource) for f in r.model_fields}
    assert not (set(StorageSettings.model_fields) | {"api_url", "api_id", "app_id"}) & fields


def test_the_environment_reaches_the_resource(tmp_path):
    settings = load_settings(
        {
            "CDR_DATA_DIR": str(tmp_path),
            "CDR_SIMULATOR": "true",
            "CDR_WINDOW_HOURS": "3",
            "CDR_SPLIT_STRAGGLERS": "false",
            "CDR_SIM_CALLS_PER_DAY": "17",
            "CDR_MAX_BODY_MB": "1.5",
        }
    )
    sim = api_resource(settings)
    assert isinstance(sim, SimulatedCdrApi)
    assert (sim.window_hours, sim.split_stragglers, sim.simulator_calls_per_day) == (3, False, 17)
    assert sim.max_body_bytes == 1_572_864
    assert storage_resource(settings).store.url == str(tmp_path)
    live = api_resource(
        load_settings(
            {
                "CDR_DATA_DIR": str(tmp_path),
                "CDR_API_URL": "https://api.example.com/201511v3/getCdr",
                "CDR_API_ID": "the-id",
                "CDR_APP_ID": "the-app",
                "CDR_CONCURRENCY": "9",
            }
        )
    )
    assert isinstance(live, LiveCdrApi) and live.concurrency == 9
    assert "the-id" not in repr(live) and "the-app" not in repr(live)


def test_every_bad_variable_is_reported_at_once_in_plain_words(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {
                "CDR_DATA_DIR": str(tmp_path),
                "CDR_CONCURRENCY": "abc",
                "CDR_WINDOW_HOURS": "0",
                "CDR_MAX_ATTEMPTS": "500",
                "CDR_READ_TIMEOUT_S": "soon",
                "CDR_COMPRESS": "perhaps",
                "CDR_TIMEZONE": "Mars/Olympus",
                "CDR_LATE_DAYS": "-1",
            }
        )
    text = str(caught.value)
    assert text.startswith("7 settings are wrong:")
    for line in (
        "CDR_CONCURRENCY='abc': must be a whole number",
        "CDR_WINDOW_HOURS='0': must be at least 1",
        "CDR_MAX_ATTEMPTS='500': must be at most 20",
        "CDR_READ_TIMEOUT_S='soon': must be a number",
        "CDR_COMPRESS='perhaps': must be true or false",
        "CDR_TIMEZONE='Mars/Olympus' is not an IANA time zone",
        "CDR_LATE_DAYS='-1': must be at least 1",
    ):
        assert line in text
    assert "Input should" not in text and "pydantic" not in text


def test_a_secret_is_never_echoed_in_an_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {
                "CDR_DATA_DIR": str(tmp_path),
                "CDR_API_URL": "https://api.example.com/201511v3/getCdr",
                "CDR_API_ID": "s3cr3t-id-value",
            }
        )
    assert "CDR_APP_ID is missing" in str(caught.value)
    assert "s3cr3t-id-value" not in str(caught.value)


@pytest.mark.slow
def test_config_prints_the_effective_settings_with_secrets_masked(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "CDR_DATA_DIR": str(tmp_path),
        "CDR_API_URL": "https://api.example.com/201511v3/getCdr",
        "CDR_API_ID": "s3cr3t-id-value",
        "CDR_APP_ID": "s3cr3t-app-value",
        "CDR_CONCURRENCY": "7",
    }
    out = subprocess.run([CLI, "config"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()[1:]}
    assert rows["CDR_CONCURRENCY"] == ["7", "environment"]
    assert rows["CDR_WINDOW_HOURS"] == ["6", "default"]
    assert rows["CDR_API_ID"] == ["***", "environment"]
    assert "s3cr3t" not in out.stdout


def test_no_setting_is_read_at_import(monkeypatch):
    """Importing the definitions reads nothing; building them reads the settings of now, so
    a test (or a code server) changes a setting without dropping any module."""
    import importlib
    import traceback

    from cdr_pipeline import definitions

    for name in ("assets", "checks", "partitions", "resources", "schedules", "sensors"):
        importlib.import_module(f"cdr_pipeline.defs.{name}")
    monkeypatch.setenv("CDR_TIMEZONE", "Mars/Olympus_Mons")
    with pytest.raises(Exception) as failed:
        definitions.defs()
    said = "".join(traceback.format_exception(failed.value))
    assert "CDR_TIMEZONE" in said and "Mars/Olympus_Mons" in said
    for zone, start in (("Europe/Berlin", "2024-02-01"), ("America/Sao_Paulo", "2024-03-01")):
        monkeypatch.setenv("CDR_TIMEZONE", zone)
        monkeypatch.setenv("CDR_START_DATE", start)
        built = definitions.defs()
        partitions = built.resolve_job_def("cdr_daily_job").partitions_def
        assert (partitions.timezone, partitions.get_first_partition_key()) == (zone, start)
        schedule = built.resolve_schedule_def("cdr_daily_schedule")
        assert schedule.execution_timezone == zone


def test_a_url_with_a_user_or_password_is_refused_without_printing_it(tmp_path):
    for url in (
        "https://user:pa55word-canary@api.example.com/201511v3/getCdr",
        "https://pa55word-canary@api.example.com/201511v3/getCdr",
    ):
        with pytest.raises(ConfigError) as caught:
            load_settings({"CDR_DATA_DIR": str(tmp_path), "CDR_API_URL": url})
        assert "must not carry a user name or password" in str(caught.value)
        assert "pa55word-canary" not in str(caught.value)


def test_every_number_has_finite_bounds_and_infinity_is_refused(tmp_path):
    numeric = [k for k in knobs() if type(k.default) in (int, float)]
    assert numeric
    for k in numeric:
        assert "<=" in k.bounds and (">=" in k.bounds or ">" in k.bounds), k.env
        for value in ("inf", "-inf", "nan", "1e400"):
            with pytest.raises(ConfigError) as caught:
                load_settings({"CDR_DATA_DIR": str(tmp_path), k.env: value})
            assert str(caught.value).startswith(f"{k.env}="), (k.env, value)


@pytest.mark.parametrize("text", ["20250301", "2025-W10-1", "2025-3-1", "2025-02-30", " "])
def test_a_date_is_strictly_yyyy_mm_dd(tmp_path, text):
    with pytest.raises(ConfigError, match="CDR_START_DATE"):
        load_settings({"CDR_DATA_DIR": str(tmp_path), "CDR_START_DATE": text + "x" * (text == " ")})
