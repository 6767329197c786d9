"""Where people and neighbouring systems touch the project, tried as an attacker, a careless
operator and a hostile provider would: provider text in the UI, the checks and the alerts;
the file system around the data directory; records the parser cannot read; days that never
existed; a webhook that hangs."""

from __future__ import annotations

import json
import os
import re
import zlib
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import duckdb
import pytest

from cdr_pipeline import alerts, cli, operations, raw, text
from cdr_pipeline import day as day_module
from cdr_pipeline.datasets import DATASETS, NAMES
from cdr_pipeline.defs import sensors
from cdr_pipeline.layout import Day
from cdr_pipeline.settings import AnalyticsSettings, ConfigError, load_settings
from cdr_pipeline.simulator import CdrSimulator, SimConfig
from cdr_pipeline.store import Store, open_store
from cdr_pipeline_tests.conftest import Env, load_defs
from cdr_pipeline_tests.servers import Receiver

# A provider's caller number that is markup in every sink, and far too long to show.
MARKUP = (
    "<!channel> <https://evil.example/login|open in Dagster> "
    "![x](https://evil.example/pixel.png) [verify](https://evil.example/phish) www.evil.example"
    "\n| forged | row |\n"
)
HOSTILE = MARKUP + "9" * 50_000
NEVER = ("<!channel>", "<https://", "![", "](https://", "\n| forged", "www.evil.example")


def _unescaped(value: str) -> list[str]:
    return [bad for bad in NEVER if bad in value]


def test_the_sinks_escape_and_cap_whatever_they_are_given():
    assert _unescaped(text.markdown(MARKUP, 500)) == []
    assert text.markdown("a|b") == "a\\|b" and "\n" not in text.markdown("a\nb")
    slack = text.slack(MARKUP, 500)  # Slack's markup is <...>: no ping, no labelled link
    assert "<" not in slack and ">" not in slack and "&lt;!channel&gt;" in slack
    assert len(text.one_line(HOSTILE)) < 100 and "[+" in text.one_line(HOSTILE)
    assert text.one_line("a\x1b[31mb\u202ec") == "a\\u001b[31mb\\u202ec"


def test_provider_markup_is_text_and_capped_in_previews_checks_and_alerts(
    monkeypatch, tmp_path, sim_server, instance
):
    """Abusive callers whose numbers are markup 50 kB long: the caller-risk preview, the
    flagged-callers check and the alert about it show them escaped and capped."""
    env = Env(monkeypatch, tmp_path, sim_server(abuse=True, hostile_text=HOSTILE))
    result = env.run(instance, "2024-03-01")
    assert result.success
    events = instance.get_latest_materialization_event(dg.AssetKey("caller_risk_daily"))
    metadata = events.asset_materialization.metadata
    preview = metadata["preview"].value
    assert "evil" in preview and _unescaped(preview) == []
    assert len(preview.splitlines()) == 2 + 5  # header, rule, the five flagged callers
    size = len(json.dumps({k: str(v.value) for k, v in metadata.items()}))
    assert size < 10_000, size  # before, every row was padded to the widest (uncapped) cell
    for key in ("cdr", "cdr_rejects", "call_destinations_daily", "call_kpis_daily"):
        event = instance.get_latest_materialization_event(dg.AssetKey(key))
        for value in event.asset_materialization.metadata.values():
            assert "evil" not in str(value.value) or _unescaped(str(value.value)) == []
    (flagged,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "flagged_callers"
    ]
    finding = flagged.metadata["2024-03-01"].value
    assert "evil" in finding and "\n" not in finding and len(finding) < 2_000
    said = alerts.run_alerts(
        alerts.FinishedRun(
            "run-1",
            "cdr_daily_job",
            failed=False,
            will_retry=False,
            partitions=["2024-03-01"],
            error="",
            checks=[
                alerts.CheckOutcome(
                    "caller_risk_daily", "flagged_callers", False, "WARN", ["2024-03-01"], finding
                )
            ],
        ),
        "https://dagster.example",
    )
    slack = alerts.payload(said[0], "slack")["text"]
    assert "&lt;!channel&gt;" in slack and "<!channel>" not in slack
    assert re.findall(r"<[^>]*\|", slack) == ["<https://dagster.example/runs/run-1|"]


def test_a_provider_error_text_is_capped_one_line_in_the_failure(
    monkeypatch, tmp_path, sim_server, instance
):
    env = Env(
        monkeypatch,
        tmp_path,
        sim_server(force_error="-402", hostile_text=HOSTILE),
        CDR_MAX_ATTEMPTS="1",
        CDR_FETCH_RETRIES="0",
    )
    result = env.run(instance, "2024-03-01", raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    said = failure.step_failure_data.error.message
    assert "forced error -402" in said and len(said) < 1_500 and "9" * 100 not in said
    assert "\n| forged" not in said


@pytest.mark.parametrize("depth", [2_000, 200_000])
def test_a_record_nested_beyond_the_parser_is_rejected_and_the_day_published(
    monkeypatch, tmp_path, sim_server, instance, depth
):
    """Before, one such record failed the whole day, retried as transient for minutes (and
    Arrow, asked to infer its type, took time quadratic in the depth, then overflowed)."""
    clean = Env(monkeypatch, tmp_path / "clean", sim_server(calls_per_day=300))
    assert clean.run(instance, "2024-03-01").success
    env = Env(
        monkeypatch,
        tmp_path / "deep",
        sim_server(calls_per_day=300, nested_depth=depth),
        CDR_MAX_ATTEMPTS="1",
        CDR_FETCH_RETRIES="0",
    )
    result = env.run(instance, "2024-03-01")
    assert result.success
    con = duckdb.connect()
    rejects = con.sql(f"select reason, raw from '{env.glob('cdr_rejects')}'").fetchall()
    assert [r for r, _ in rejects] == ["unreadable"]
    assert rejects[0][1].startswith('{"callId":"deep-1","extra":[[[[')
    same = f"select * from '{clean.glob('cdr')}' except select * from '{env.glob('cdr')}'"
    assert con.sql(same).fetchall() == []
    assert con.sql(f"select count(*) from '{env.glob('cdr')}'").fetchall()[0][0] > 250
    acc = json.loads((env.root / "_state" / "validation" / "date=2024-03-01.json").read_text())
    assert acc["accounting"]["rejects_by_reason"]["unreadable"] == 1


# --- the file system around the data directory ----------------------------------------------


def _materialized(monkeypatch, tmp_path, sim_server, instance, *days: str) -> Env:
    env = Env(monkeypatch, tmp_path, sim_server(calls_per_day=100))
    for day in days:
        assert env.run(instance, day).success
    monkeypatch.chdir(tmp_path)  # no .env of the project's folder
    return env


def test_prune_removes_only_the_files_the_pipeline_wrote(
    monkeypatch, tmp_path, sim_server, instance, capsys
):
    env = _materialized(monkeypatch, tmp_path, sim_server, instance, "2024-03-01")
    folder = env.root / "raw" / "cdr" / "date=2024-03-01"
    ours = sorted(p.name for p in folder.iterdir())
    (folder / "README.txt").write_text("the operator's notes")
    (folder / "billing-export.csv").write_text("a,b\n1,2\n")
    assert cli.main(["prune", "--keep-days", "1", "--dry-run"]) == 0
    assert f"{len(ours)} files" in capsys.readouterr().out
    assert cli.main(["prune", "--keep-days", "1"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["README.txt", "billing-export.csv"]


def test_prune_refuses_a_linked_day_folder_and_deletes_nothing_through_it(
    monkeypatch, tmp_path, sim_server, instance, capsys
):
    env = _materialized(monkeypatch, tmp_path, sim_server, instance, "2024-03-01")
    folder = env.root / "raw" / "cdr" / "date=2024-03-01"
    elsewhere = tmp_path / "other-disk" / "day"
    elsewhere.parent.mkdir()
    folder.rename(elsewhere)
    (elsewhere / "README.txt").write_text("the operator's notes")
    folder.symlink_to(elsewhere, target_is_directory=True)
    before = sorted(p.name for p in elsewhere.iterdir())
    for dry in ([], ["--dry-run"]):
        assert cli.main(["prune", "--keep-days", "1", *dry]) == 4
        said = capsys.readouterr().err
        assert f"{folder} is a symbolic link" in said and "Traceback" not in said
    assert sorted(p.name for p in elsewhere.iterdir()) == before


def test_the_report_is_never_written_through_a_link_in_the_data_directory(
    monkeypatch, tmp_path, sim_server, instance, capsys
):
    env = _materialized(monkeypatch, tmp_path, sim_server, instance, "2024-03-01")
    day = ["--start", "2024-03-01", "--end", "2024-03-01"]
    assert cli.main(["report", *day]) == 0
    ours = env.root / "report.html"
    assert "<h1>Call KPIs 2024-03-01 to 2024-03-01</h1>" in ours.read_text()
    assert f"wrote {ours} " in capsys.readouterr().out
    theirs = tmp_path / "operators-notes.txt"
    theirs.write_text("the operator's notes")
    ours.unlink()
    ours.symlink_to(theirs)
    assert cli.main(["report", *day]) == 4
    said = capsys.readouterr().err
    assert f"{ours} is a symbolic link" in said and "Traceback" not in said
    assert theirs.read_text() == "the operator's notes"
    # a place the operator names is theirs to choose
    assert cli.main(["report", *day, "--out", str(tmp_path / "elsewhere.html")]) == 0
    assert (tmp_path / "elsewhere.html").read_text().startswith("<!doctype html>")


def test_a_published_file_that_cannot_be_read_is_said_not_shown_as_missing(
    monkeypatch, tmp_path, sim_server, instance, capsys
):
    env = _materialized(monkeypatch, tmp_path, sim_server, instance, "2024-03-01")
    kpis = env.root / "call_kpis_daily" / "date=2024-03-01" / "part-0.parquet"
    kpis.write_bytes(kpis.read_bytes()[:100])  # a disk that lost the file's end
    for command in ("kpis", "report"):
        assert cli.main([command, "--start", "2024-03-01", "--end", "2024-03-01"]) == 4
        said = capsys.readouterr()
        assert f"storage error: {kpis} cannot be read (" in said.err
        assert "materialize 2024-03-01 again" in said.err and "not materialized" not in said.out
    journal = env.root / "_state" / "journal" / "date=2024-03-01.json"
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text("{")  # a publish's journal cut short
    assert cli.main(["kpis", "--start", "2024-03-01", "--end", "2024-03-01"]) == 4
    said = capsys.readouterr()
    assert f"{journal} is damaged (" in said.err and "not materialized" not in said.out


def test_a_damaged_record_is_said_with_its_place_and_the_way_out(
    monkeypatch, tmp_path, sim_server, instance
):
    """Before, a validation record cut short failed every run of its day with "JSONDecodeError:
    Expecting value", and no way out."""
    env = _materialized(monkeypatch, tmp_path, sim_server, instance, "2024-03-01")
    record = env.root / "_state" / "validation" / "date=2024-03-01.json"
    record.write_text(record.read_text()[:50])
    result = env.run(instance, "2024-03-01", raise_on_error=False)
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    said = failure.step_failure_data.error.message
    assert f"{record} is damaged (" in said and "allow_shrink: true" in said
    allowed = {"ops": {"cdr_day": {"config": {"allow_shrink": True}}}}
    assert env.run(instance, "2024-03-01", run_config=allowed).success
    assert json.loads(record.read_text())["accounting"]["valid"] > 0  # written anew
    manifest = env.root / "raw" / "cdr" / "date=2024-03-01" / "manifest.json"
    manifest.write_text("{")
    with pytest.raises(day_module.StorageError, match=f"{re.escape(str(manifest))} is damaged"):
        day_module.build_day(env.store, env.day("2024-03-01"), env.tz)
    assert env.run(instance, "2024-03-01").success  # fetched again


def test_publishing_refuses_a_linked_dataset_folder_and_is_not_retried(
    monkeypatch, tmp_path, sim_server, instance
):
    env = _materialized(monkeypatch, tmp_path, sim_server, instance)
    other_team = tmp_path / "other-team"
    other_team.mkdir()
    theirs = other_team / "part-0.parquet"
    theirs.write_bytes(b"PAR1 their data PAR1")
    (env.root / "cdr").mkdir(parents=True)
    (env.root / "cdr" / "date=2024-03-02").symlink_to(other_team, target_is_directory=True)
    monkeypatch.setenv("CDR_FETCH_RETRIES", "2")
    result = Env(monkeypatch, tmp_path, env.server).run(
        instance, "2024-03-02", raise_on_error=False
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "is a symbolic link" in failure.step_failure_data.error.message
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert theirs.read_bytes() == b"PAR1 their data PAR1"
    assert sorted(p.name for p in other_team.iterdir()) == ["part-0.parquet"]


def test_a_fetch_into_a_linked_raw_folder_fails_once_without_retries(
    monkeypatch, tmp_path, sim_server, instance
):
    env = _materialized(monkeypatch, tmp_path, sim_server, instance)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (env.root / "raw" / "cdr").mkdir(parents=True)
    (env.root / "raw" / "cdr" / "date=2024-03-03").symlink_to(elsewhere)
    monkeypatch.setenv("CDR_FETCH_RETRIES", "2")
    result = Env(monkeypatch, tmp_path, env.server).run(
        instance, "2024-03-03", raise_on_error=False
    )
    assert not result.success
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "is a symbolic link" in failure.step_failure_data.error.message
    assert list(elsewhere.iterdir()) == []


# --- a day that never existed ---------------------------------------------------------------


def _apia(monkeypatch, tmp_path, sim_server) -> Env:
    server = sim_server(calls_per_day=100, timezone="Pacific/Apia")
    return Env(monkeypatch, tmp_path, server, tz="Pacific/Apia", CDR_START_DATE="2011-12-01")


def test_a_date_the_zone_skipped_is_refused_and_never_published_as_another(
    monkeypatch, tmp_path, sim_server, instance, capsys
):
    """Samoa moved across the date line: 2011-12-30 has no local hours in Pacific/Apia."""
    env = _apia(monkeypatch, tmp_path, sim_server)
    result = env.run(instance, "2011-12-30", raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "2011-12-30 never existed in Pacific/Apia" in failure.step_failure_data.error.message
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert not env.root.exists() or not list(env.root.rglob("*2011-12-30*"))
    assert not instance.get_materialized_partitions(dg.AssetKey("cdr"))
    assert operations.complete_days(
        datetime(2012, 1, 1, 12, tzinfo=UTC), ZoneInfo("Pacific/Apia"), 4, "2011-01-01"
    ) == ["2011-12-29", "2011-12-31", "2012-01-01"]  # the catch-up sensor never asks for it


@pytest.mark.slow  # a persistent Dagster instance starts its compute-log process
def test_the_cli_leaves_a_skipped_date_out_of_a_range(monkeypatch, tmp_path, sim_server, capsys):
    env = _apia(monkeypatch, tmp_path, sim_server)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert cli.main(["materialize", "--start", "2011-12-29", "--end", "2011-12-31"]) == 0
    assert "2011-12-30 never existed in Pacific/Apia" in capsys.readouterr().out
    days = sorted(p.name for p in (env.root / "cdr").iterdir())
    assert days == ["date=2011-12-29", "date=2011-12-31"]


# --- alerts -----------------------------------------------------------------------------------


def _tick(env: Env, instance, cursor: str | None) -> tuple[str, str | None]:
    sensor = env.defs.resolve_sensor_def("cdr_alert_sensor")
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    said = sensor(context)
    return getattr(said, "skip_message", str(said)), context.cursor


@pytest.mark.slow  # waits out real deadlines: 15-30 s
@pytest.mark.parametrize(("days", "posts"), [(8, 1), (3, 3)])
def test_a_hanging_webhook_gets_each_alert_at_most_once_within_the_ticks_budget(
    monkeypatch, tmp_path, sim_server, instance, days, posts
):
    """Eight failed days to a webhook that never answers: before, 80 s a tick (past Dagster's
    60 s limit, so the cursor never moved) and the same alerts again every minute. Now a
    burst is one summary, each post has a total deadline, each tick a budget, and what was
    (perhaps) delivered is never posted again."""
    monkeypatch.setattr(alerts, "POST_DEADLINE_S", 1.0)
    monkeypatch.setattr(alerts, "TICK_BUDGET_S", 2.5)
    hanging = Receiver(hang_s=60)
    try:
        env = Env(
            monkeypatch,
            tmp_path,
            sim_server(force_error="-401"),
            CDR_ALERT_WEBHOOK_URL=hanging.url,
            CDR_ALERT_FORMAT="json",
        )
        for day in range(1, days + 1):
            assert not env.run(instance, f"2024-03-{day:02d}", raise_on_error=False).success
        cursor, said = None, []
        for _ in range(4):  # enough ticks for every alert, then some that find nothing new
            message, cursor = _tick(env, instance, cursor)
            said.append(message)
        assert len(hanging.requests) == posts, said
        bodies = hanging.bodies
        assert len({json.dumps(b, sort_keys=True) for b in bodies}) == posts  # none twice
        if days > alerts.BURST:
            (summary,) = bodies
            assert summary["kind"] == "burst" and summary["subject"] == f"{days} alerts"
            assert summary["partition"] == f"2024-03-01..2024-03-{days:02d}"
        else:
            assert sorted(b["partition"] for b in bodies) == [
                "2024-03-01",
                "2024-03-02",
                "2024-03-03",
            ]
        assert said[-1] == "nothing failed"
    finally:
        hanging.close()


def test_freshness_is_the_sensors_alone_and_names_the_overdue_day(
    monkeypatch, tmp_path, sim_server, instance
):
    """A backfill of old days evaluated freshness in every run and warned about the day it ran;
    now the job leaves the check to its sensor, whose alert names the late day."""
    env = Env(monkeypatch, tmp_path, sim_server(calls_per_day=50), CDR_FRESHNESS_DEADLINE="00:00")
    backfill = env.run(instance, "2024-03-01", "2024-03-02")
    assert backfill.success
    checks = {e.check_name for e in backfill.get_asset_check_evaluations()}
    assert "freshness_check" not in checks and "accounting_balances" in checks
    check = dg.AssetCheckKey(dg.AssetKey("cdr"), "freshness_check")
    only = dg.define_asset_job("freshness", selection=dg.AssetSelection.checks(check))
    late = dg.Definitions.merge(env.defs, dg.Definitions(jobs=[only])).resolve_job_def("freshness")
    run = late.execute_in_process(instance=instance)
    (evaluation,) = run.get_asset_check_evaluations()
    assert not evaluation.passed
    finished = sensors._finished(instance, run.dagster_run, env.job.partitions_def)
    yesterday = (datetime.now(env.tz).date() - timedelta(days=1)).isoformat()
    (said,) = alerts.run_alerts(finished, "https://dagster.example")
    assert said.partition == yesterday and said.kind == "check_failure"


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "https://metadata.google.internal/computeMetadata/v1/",
        "https://[fe80::1]/hook",
        "http://hooks.example.com/T0K3N",
        "ftp://hooks.example.com/T0K3N",
        "https://user:pw@hooks.example.com/T0K3N",
    ],
)
def test_a_webhook_or_ui_link_that_is_not_https_or_is_link_local_is_refused(tmp_path, url):
    for variable in ("CDR_ALERT_WEBHOOK_URL", "CDR_UI_URL"):
        with pytest.raises(ConfigError) as refused:
            load_settings({"CDR_DATA_DIR": str(tmp_path), variable: url})
        assert str(refused.value).startswith(variable) and "T0K3N" not in str(refused.value)


# --- a day served as one page -----------------------------------------------------------------


def _raw_days(one: Store, paged: Store, day: Day, calls: int) -> None:
    """The same calls twice: as one page of the whole day, and as pages of 1,000 an hour."""
    sim = CdrSimulator(SimConfig(seed=11, calls_per_day=calls))
    whole = zlib.compressobj()
    parts = [whole.compress(b'{"errorCode":"0","offset":"0","result":"Call Details","cdr":[')]
    pages, total, sep = [], 0, b""
    for hour in range(day.start // 3600, day.end // 3600):
        window = [hour * 3600, hour * 3600 + 3599]
        records = sim.listing(*window)
        sim._hour_calls.cache_clear()  # an hour at a time: a million calls do not fit twice
        sim._listings.cache_clear()
        for at in range(0, len(records), 1000):
            chunk = records[at : at + 1000]
            text = json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode()
            parts.append(whole.compress(sep + text[1:-1]))
            sep, total = b",", total + len(chunk)
            more = "0" if at + 1000 >= len(records) else str(at + 1000)
            doc = b'{"errorCode":"0","offset":"%s","cdr":%s}' % (more.encode(), text)
            pages.append((zlib.compress(doc), window, len(chunk)))
    parts.append(whole.compress(b"]}") + whole.flush())
    for store, bodies in (
        (one, [(b"".join(parts), [day.start, day.end], total)]),
        (paged, pages),
    ):
        requests = []
        for body, window, count in bodies:
            name, digest = raw.body_name(body, "zlib")
            requests.append(
                {"file": name, "sha256": digest, "window": window, "records": count}
                | {"bytes": len(body)}
            )
        manifest = {
            "manifest_version": 1,
            "date": day.key,
            "day_window": [day.start, day.end],
            "requests": requests,
            "max_body_bytes": 2**31,
            "totals": {"pages": len(bodies), "records": total, "bytes": 0},
        }
        raw.write_raw_day(store, day.key, [(b, "zlib") for b, _, _ in bodies], manifest)


@pytest.mark.slow  # 300,000 calls, twice
def test_a_day_served_as_one_huge_page_is_read_a_slice_at_a_time(tmp_path, monkeypatch):
    """Before, the page was parsed at once: about 1 GB more at the peak for a million calls
    (benchmarks/RESULTS.md has that day's figures). Now it is inflated and cut into slices of
    whole records as it is read, and the day is the same as when paged. 300,000 calls make a
    page a hundred times a slice, at a third of the suite's time."""
    tz = ZoneInfo("Asia/Shanghai")
    day = Day.from_key("2024-03-01", tz)
    one, paged = open_store(tmp_path / "one"), open_store(tmp_path / "paged")
    _raw_days(one, paged, day, 300_000)
    (body,) = (tmp_path / "one" / "raw" / "cdr" / "date=2024-03-01").glob("*.zlib")
    assert len(zlib.decompress(body.read_bytes())) > 100 * raw.SLICE_BYTES  # one page, inflated
    largest: list[int] = []
    parse = day_module.parse_pages

    def watched(pages, *args, **kw):
        largest.append(sum(len(p[0]) for p in pages))
        return parse(pages, *args, **kw)

    monkeypatch.setattr(day_module, "parse_pages", watched)
    built = {
        name: day_module.build_day(store, day, tz, analytics=AnalyticsSettings(), registry=DATASETS)
        for name, store in (("one", one), ("paged", paged))
    }
    assert max(largest) < 3 * raw.BATCH_BYTES  # a slice or a batch, never the page
    assert built["one"].accounting == built["paged"].accounting
    assert built["one"].accounting["fetched"] > 290_000
    for name in NAMES:
        ours = (tmp_path / "one" / name / "date=2024-03-01" / "part-0.parquet").read_bytes()
        theirs = (tmp_path / "paged" / name / "date=2024-03-01" / "part-0.parquet").read_bytes()
        assert ours == theirs, name


# --- the demo and the live API ----------------------------------------------------------------


def test_a_data_directory_holds_one_source_and_refuses_another(
    monkeypatch, tmp_path, sim_server, instance
):
    """Before, demo and real days shared data/ and every recipe returned both mixed."""
    live = Env(monkeypatch, tmp_path, sim_server(calls_per_day=100))
    assert live.run(instance, "2024-03-01").success
    source = json.loads((live.root / "_state" / "source.json").read_text())["source"]
    assert source == "http://127.0.0.1"  # the endpoint's host: no port, path or secret
    # each day says where its calls came from: manifest, accounting, the UI's metadata
    day = "date=2024-03-01"
    manifest = json.loads((live.root / "raw" / "cdr" / day / "manifest.json").read_text())
    record = json.loads((live.root / "_state" / "validation" / f"{day}.json").read_text())
    assert manifest["source"] == record["source"] == source
    for asset in ("cdr", "call_kpis_daily"):
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        assert event.asset_materialization.metadata["source"].value == source
    before = sorted(p.name for p in live.root.rglob("*") if p.is_file())
    monkeypatch.delenv("CDR_API_URL")
    monkeypatch.delenv("CDR_API_ID")
    monkeypatch.delenv("CDR_APP_ID")
    monkeypatch.setenv("CDR_SIMULATOR", "true")
    demo = Env.__new__(Env)
    demo.defs = load_defs()
    result = demo.defs.resolve_job_def("cdr_daily_job").execute_in_process(
        instance=instance, partition_key="2024-03-02", raise_on_error=False
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    said = failure.step_failure_data.error.message
    assert "holds calls from http://127.0.0.1; this run fetches from the built-in simulator" in said
    assert "the demo's data go to data/demo" in said
    assert failure.step_failure_data.user_failure_data.metadata["stops_run"].value
    assert sorted(p.name for p in live.root.rglob("*") if p.is_file()) == before


def test_a_data_directory_cuts_its_days_in_one_zone(monkeypatch, tmp_path, sim_server, instance):
    """Before, a changed CDR_TIMEZONE cut the days it ran anew: Berlin's 2024-03-02 begins
    seven hours after Shanghai's 2024-03-01 ends, and the calls between were in no day. A day
    re-built from its raw layer lost the calls outside its new window (with allow_shrink)."""
    server = sim_server(calls_per_day=100)
    assert Env(monkeypatch, tmp_path, server).run(instance, "2024-03-01").success
    root = tmp_path / "data"
    marker = json.loads((root / "_state" / "source.json").read_text())
    assert marker == {"source": "http://127.0.0.1", "timezone": "Asia/Shanghai"}
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}

    berlin = Env(monkeypatch, tmp_path, server, tz="Europe/Berlin")
    fetched = berlin.run(instance, "2024-03-02", raise_on_error=False)
    rebuilt = berlin.defs.resolve_job_def("cdr_rebuild_job").execute_in_process(
        instance=instance, partition_key="2024-03-01", raise_on_error=False
    )
    for result, said in (
        (fetched, "holds days cut in Asia/Shanghai; this run cuts them in Europe/Berlin"),
        (rebuilt, "2024-03-01: its raw layer was fetched for 2024-02-29T16:00:00Z to"),
    ):
        assert not result.success
        (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert said in failure.step_failure_data.error.message
    assert "set CDR_TIMEZONE=Asia/Shanghai" in str(fetched.all_events)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before

    # a folder recorded before its zone was takes the zone of its next fetch
    (root / "_state" / "source.json").write_text(json.dumps({"source": "http://127.0.0.1"}))
    assert Env(monkeypatch, tmp_path, server).run(instance, "2024-03-02").success
    assert json.loads((root / "_state" / "source.json").read_text())["timezone"] == (
        "Asia/Shanghai"
    )


def test_without_an_endpoint_the_definitions_load_and_a_run_says_how_to_configure(
    monkeypatch, tmp_path, instance, capsys
):
    """Before, no CDR_API_URL meant the simulator, silently: a misspelt variable turned a real
    deployment into the demo."""
    for name in [k for k in os.environ if k.startswith("CDR_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CDR_DATA_DIR", str(tmp_path / "data"))
    defs = load_defs()  # a code server, `dg check defs`: no endpoint needed
    result = defs.resolve_job_def("cdr_daily_job").execute_in_process(
        instance=instance, partition_key="2024-03-01", raise_on_error=False
    )
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "no API is configured" in failure.step_failure_data.error.message
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    monkeypatch.chdir(tmp_path)
    for command in (
        ["materialize", "--last", "1"],
        ["check"],
        ["fetch", "--start", "1", "--end", "2"],
    ):
        assert cli.main(command) == 2
        assert "no API is configured" in capsys.readouterr().err
    assert not (tmp_path / "data" / "raw").exists()


def test_the_demo_says_why_its_flagged_callers_check_warns(monkeypatch, tmp_path, instance):
    """Before, the demo opened on a failed flagged_callers check that nothing explained."""
    for name in [k for k in os.environ if k.startswith("CDR_")]:
        monkeypatch.delenv(name)
    for k, v in {
        "CDR_SIMULATOR": "true",
        "CDR_DATA_DIR": str(tmp_path / "data"),
        "CDR_START_DATE": "2024-01-01",
    }.items():
        monkeypatch.setenv(k, v)
    job = load_defs().resolve_job_def("cdr_daily_job")
    result = job.execute_in_process(instance=instance, partition_key="2024-03-01")
    (flagged,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "flagged_callers"
    ]
    assert not flagged.passed
    assert "not a fault in the data" in flagged.description
    assert "The built-in simulator's traffic has such callers" in flagged.description
