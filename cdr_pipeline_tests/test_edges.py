"""Where people and neighbouring systems touch the project, tried as an attacker, a careless
operator and a hostile provider would: provider text in the UI, the checks and the alerts;
the file system around the data directory; records the parser cannot read; days that never
existed; a webhook that hangs."""

from __future__ import annotations

import json
import re

import dagster as dg

from cdr_pipeline import alerts, text
from cdr_pipeline_tests.conftest import Env

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
    assert size < 10_000, size  # 3 MB before: every row padded to the widest cell
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
