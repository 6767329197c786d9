"""Alerts without a paid plan: what failed, said once per failed partition, posted to a webhook
(Slack-compatible, or the alert's fields as JSON). Knows nothing of Dagster: the sensors hand
it plain facts about finished runs and check results."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from cdr_pipeline.api.redact import get_logger, install_log_redaction, register_secret
from cdr_pipeline.api.transport import deadline, transport
from cdr_pipeline.settings import ClientSettings
from cdr_pipeline.text import one_line, slack

log = get_logger(__name__)
ICONS = {"ERROR": ":red_circle:", "WARN": ":warning:"}
MAX_TEXT = 1500  # characters of an error or a check's finding put in one alert
POST_DEADLINE_S = 10.0  # one post, from connecting to the last byte of the answer
TICK_BUDGET_S = 30.0  # every post of one sensor tick: well under Dagster's 60 s limit
BURST = 5  # more alerts than this at once are posted as one summary


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


def summarise(alerts: Sequence[Alert], burst: int = BURST) -> list[tuple[Alert, list[Alert]]]:
    """What to post for ``alerts``, each with the alerts it says: one post each, or, for a
    burst (a backfill that failed on every day), one summary of them all."""
    if len(alerts) <= burst:
        return [(a, [a]) for a in alerts]
    kinds = Counter(f"{a.kind} of {a.subject}" for a in alerts)
    days = sorted({a.partition for a in alerts})
    said = "; ".join(f"{n} {what}" for what, n in kinds.most_common())
    text = (
        f"{said}, on {len(days)} day(s) from {days[0]} to {days[-1]}. The first: {alerts[0].text}"
    )
    severity = "ERROR" if any(a.severity == "ERROR" for a in alerts) else "WARN"
    first = alerts[0]
    summary = Alert(
        severity,
        "burst",
        f"{days[0]}..{days[-1]}",
        f"{len(alerts)} alerts",
        _short(text),
        first.run_url,
    )
    return [(summary, list(alerts))]


def payload(alert: Alert, form: str) -> dict[str, Any]:
    """The body posted for ``alert``: Slack's ``{"text": ...}`` or the alert's own fields."""
    if form == "json":
        return asdict(alert)
    what = {"run_failure": "run failed", "check_failure": "check failed", "burst": "alerts at once"}
    text = (  # what came from the provider is text, never Slack markup
        f"{ICONS.get(alert.severity, '')} *{alert.severity}* cdr-pipeline {what[alert.kind]}: "
        f"`{slack(alert.subject)}`, partition {slack(alert.partition)}\n"
        f"{slack(alert.text, MAX_TEXT)}"
    )
    if alert.run_url:
        text += f"\n<{alert.run_url}|open in Dagster>"
    return {"text": text}


@dataclass
class Posted:
    """What a round of posts did. ``said``: delivered, or perhaps delivered (the webhook took
    the request, then did not answer in time), so never posted again; ``retry``: certainly
    not delivered (no connection, an error status, no time left in the tick)."""

    said: list[Alert] = field(default_factory=list)
    retry: list[Alert] = field(default_factory=list)


def post(
    url: str,
    alerts: Sequence[Alert],
    form: str,
    *,
    deadline_s: float = POST_DEADLINE_S,
    budget_s: float = TICK_BUDGET_S,
    clock: Callable[[], float] = time.monotonic,
) -> Posted:
    """Post ``alerts`` (a burst as one summary), each post within ``deadline_s`` in all and
    every post within ``budget_s``: a hanging webhook can neither outlast the sensor's tick
    nor be sent the same alert again and again. The URL is a secret (a Slack webhook's path is
    its token): it never reaches a log or an error."""
    register_secret(url)  # httpx's request log lines pass the redactor
    register_secret(urlsplit(url).path)
    install_log_redaction()
    done, started = Posted(), clock()
    plan = summarise(alerts)
    # the transport holds the total deadline and the environment's proxy (never for loopback)
    made = transport(url, ClientSettings())
    with httpx.Client(transport=made, timeout=deadline_s, trust_env=False) as client:
        for i, (alert, says) in enumerate(plan):
            if clock() - started + deadline_s > budget_s:  # the rest wait for the next tick
                done.retry += [a for _, later in plan[i:] for a in later]
                break
            delivered = _post_one(client, url, payload(alert, form), deadline_s)
            (done.said if delivered else done.retry).extend(says)
    return done


def _post_one(client: httpx.Client, url: str, body: dict[str, Any], deadline_s: float) -> bool:
    """True when the webhook took the post, or may have (a timeout after it was sent)."""
    try:
        with deadline(deadline_s):
            client.post(url, json=body).raise_for_status()
    except httpx.HTTPStatusError as exc:
        log.warning("the alert webhook answered HTTP %s", exc.response.status_code)
        return False
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError) as exc:
        log.warning("the alert webhook could not be reached (%s)", type(exc).__name__)
        return False
    except httpx.TimeoutException:
        log.warning(
            "the alert webhook did not answer within %g s; the alert is not posted again (it "
            "may have arrived)",
            deadline_s,
        )
    except httpx.HTTPError as exc:
        log.warning("the alert webhook failed (%s)", type(exc).__name__)
        return False
    return True


def _short(text: str) -> str:
    return one_line(text, MAX_TEXT)
