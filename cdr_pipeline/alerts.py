"""Alerts without a paid plan: what failed, said once per failed partition, posted to a webhook
(Slack-compatible, or the alert's fields as JSON). Knows nothing of Dagster: the sensors hand
it plain facts about finished runs and check results."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from cdr_pipeline.api.redact import get_logger, install_log_redaction, register_secret
from cdr_pipeline.api.transport import proxy_for
from cdr_pipeline.text import one_line, slack

log = get_logger(__name__)
ICONS = {"ERROR": ":red_circle:", "WARN": ":warning:"}
MAX_TEXT = 1500  # characters of an error or a check's finding put in one alert


@dataclass(frozen=True)
class Alert:
    severity: str  # ERROR or WARN
    kind: str  # run_failure or check_failure
    partition: str
    subject: str  # the job, or asset:check
    text: str  # what happened, in plain words
    run_url: str | None = None

    def key(self) -> str:
        """What makes two alerts the same alert (a sensor says each once)."""
        return f"{self.kind}|{self.subject}|{self.partition}|{self.run_url or ''}"


@dataclass(frozen=True)
class FinishedRun:
    """A run as the alert rules need it."""

    run_id: str
    job: str
    failed: bool
    will_retry: bool
    partitions: Sequence[str]
    error: str  # the failure in plain words ("" for a successful run)
    checks: Sequence[CheckOutcome]


@dataclass(frozen=True)
class CheckOutcome:
    asset: str
    check: str
    passed: bool
    severity: str
    failed_days: Sequence[str]
    finding: str


def run_alerts(run: FinishedRun, ui_url: str) -> list[Alert]:
    """One alert per failed partition of a failed run (none while Dagster will retry it), and
    one per failed day of each check that did not pass."""
    link = f"{ui_url.rstrip('/')}/runs/{run.run_id}"
    alerts: list[Alert] = []
    if run.failed and not run.will_retry:
        alerts += [
            Alert("ERROR", "run_failure", day, run.job, _short(run.error), link)
            for day in run.partitions or ["(no partition)"]
        ]
    for check in run.checks:
        if check.passed:
            continue
        days = check.failed_days or run.partitions or ["(no partition)"]
        alerts += [
            Alert(
                check.severity,
                "check_failure",
                day,
                f"{check.asset}:{check.check}",
                _short(check.finding),
                link,
            )
            for day in days
        ]
    return alerts


def payload(alert: Alert, form: str) -> dict[str, Any]:
    """The body posted for ``alert``: Slack's ``{"text": ...}`` or the alert's own fields."""
    if form == "json":
        return asdict(alert)
    what = {"run_failure": "run failed", "check_failure": "check failed"}
    text = (  # what came from the provider is text, never Slack markup
        f"{ICONS.get(alert.severity, '')} *{alert.severity}* cdr-pipeline {what[alert.kind]}: "
        f"`{slack(alert.subject)}`, partition {slack(alert.partition)}\n"
        f"{slack(alert.text, MAX_TEXT)}"
    )
    if alert.run_url:
        text += f"\n<{alert.run_url}|open in Dagster>"
    return {"text": text}


def post(url: str, alerts: Iterable[Alert], form: str, *, timeout_s: float = 10) -> list[Alert]:
    """Post each alert; return those the webhook did not take (to be tried again). The URL is
    a secret (a Slack webhook's path is its token): it never reaches a log or an error."""
    register_secret(url)  # httpx's request log lines pass the redactor
    register_secret(urlsplit(url).path)
    install_log_redaction()
    failed = []
    with httpx.Client(timeout=timeout_s, proxy=proxy_for(url), trust_env=False) as client:
        for alert in alerts:
            try:
                client.post(url, json=payload(alert, form)).raise_for_status()
            except httpx.HTTPStatusError as exc:
                log.warning("the alert webhook answered HTTP %s", exc.response.status_code)
                failed.append(alert)
            except httpx.HTTPError as exc:
                log.warning("the alert webhook could not be reached (%s)", type(exc).__name__)
                failed.append(alert)
    return failed


def _short(text: str) -> str:
    return one_line(text, MAX_TEXT)
