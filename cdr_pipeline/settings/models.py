"""The models of settings (the client's and the simulator's are in ``client.py``), each
field made by :func:`knob` with its variable, default, bounds and meaning (the docs' table and
``.env.example`` are made from them)."""

from __future__ import annotations

import os
from datetime import time
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pydantic

from cdr_pipeline.api.redact import MIN_SECRET_LENGTH
from cdr_pipeline.layout import DEMO_DATA_DIR, DEMO_SHARED_DATA_DIR, LIVE_DATA_DIR, parse_day
from cdr_pipeline.settings.client import ClientSettings, SimulatorSettings
from cdr_pipeline.settings.fields import InvalidEndpointError, check_endpoint, check_link, knob
from cdr_pipeline.store import Store, StoreError, open_store, redacted

NO_API = (
    "no API is configured: set CDR_API_URL, CDR_API_ID and CDR_APP_ID (README, 'Point it at "
    "the real API'), or run the demo: make run (or CDR_SIMULATOR=true)"
)


# The demo and a real API never share a Dagster instance (nor a data directory: layout.py).

DEMO_DAYS = 30


class StorageSettings(pydantic.BaseModel):
    """Where the data goes, where a day begins and ends, and how a number is read: the
    deployment's, never a run's (a run config pointing the data elsewhere could hand the
    object store's credentials to another host, cut the days differently, or read a national
    number as another country's, whose token an erasure would not recognise)."""

    model_config = pydantic.ConfigDict(frozen=True)

    data_dir: str = knob(
        LIVE_DATA_DIR,
        "CDR_DATA_DIR",
        "where datasets go: a local folder, or an object-store URL (s3://bucket/prefix); "
        f"the demo's (CDR_SIMULATOR=true) default is {DEMO_DATA_DIR}",
        validate_default=True,
    )
    timezone: str = knob(
        "Asia/Shanghai",
        "CDR_TIMEZONE",
        "the day boundary of partitions, and the zone of yyyy-MM-dd HH:mm:ss values",
    )

    default_region: str = knob(
        "CN",
        "CDR_DEFAULT_REGION",
        "the region (ISO 3166-1 alpha-2) of numbers written without a country code",
        min_length=2,
        max_length=2,
    )

    pseudonym_key: str | None = knob(
        None,
        "CDR_PSEUDONYM_KEY",
        "the secret key of phone numbers' tokens: with it, every day is also published without "
        "a clear number to CDR_SHARED_DATA_DIR, and the UI's metadata, the checks, the alerts "
        "and the report show a number masked with its token (+86 136****4568 (token)); "
        "changing it changes every token (docs/privacy.md)",
        secret=True,
        min_length=32,
    )
    shared_data_dir: str | None = knob(
        None,
        "CDR_SHARED_DATA_DIR",
        "the shared zone, for analysts: each day's datasets without a clear number, in the "
        "same layout (a folder or object-store URL apart from CDR_DATA_DIR); required with "
        f"CDR_PSEUDONYM_KEY; the demo's default is {DEMO_SHARED_DATA_DIR}",
    )

    @pydantic.field_validator("data_dir", "shared_data_dir")
    @classmethod
    def _data_dir(cls, value: str | None, info: pydantic.ValidationInfo) -> str | None:
        if value is None:
            return None
        name = "CDR_DATA_DIR" if info.field_name == "data_dir" else "CDR_SHARED_DATA_DIR"
        try:
            store = open_store(value)
        except StoreError as exc:
            raise ValueError(f"{name}={redacted(value)!r}: {exc}") from None
        if not store.local:
            return value  # the object store is first contacted by a run, not at load time
        path = Path(store.url)
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(
                f"{name}={str(path)!r} is not a writable directory ({existing} is not one)"
            )
        return str(path)

    @pydantic.model_validator(mode="after")
    def _zones(self) -> StorageSettings:
        if self.pseudonym_key and not self.shared_data_dir:
            raise ValueError(
                "CDR_PSEUDONYM_KEY is set but CDR_SHARED_DATA_DIR is not: set it to the "
                "folder or bucket prefix analysts may read (each day is published there "
                "without a clear number), apart from CDR_DATA_DIR"
            )
        if self.shared_data_dir and not self.pseudonym_key:
            raise ValueError(
                "CDR_SHARED_DATA_DIR is set but CDR_PSEUDONYM_KEY is not: the shared zone's "
                "tokens need the key (a secret of at least 32 characters)"
            )
        if self.shared_data_dir:
            ours, theirs = self.store.url.rstrip("/"), open_store(self.shared_data_dir).url
            theirs = theirs.rstrip("/")
            if ours == theirs or ours.startswith(theirs + "/") or theirs.startswith(ours + "/"):
                raise ValueError(
                    f"CDR_SHARED_DATA_DIR={redacted(self.shared_data_dir)!r} and CDR_DATA_DIR="
                    f"{redacted(self.data_dir)!r} overlap: the shared zone lives apart, so that "
                    "permissions on one never reach the other's files"
                )
        return self

    @pydantic.field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"CDR_TIMEZONE={value!r} is not an IANA time zone (e.g. Asia/Shanghai, "
                "Europe/Berlin)"
            ) from None
        return value

    @pydantic.field_validator("default_region")
    @classmethod
    def _region(cls, value: str) -> str:
        import phonenumbers

        value = value.upper()
        if value not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(
                f"CDR_DEFAULT_REGION={value!r} is not a region libphonenumber knows (e.g. CN, "
                "US, GB)"
            )
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def store(self) -> Store:
        """The data directory, with its shared zone when there is one."""
        store = open_store(self.data_dir)
        store.shared = self.shared_store
        return store

    @property
    def shared_store(self) -> Store | None:
        """The shared zone (``None``: no key, no shared zone)."""
        return open_store(self.shared_data_dir) if self.shared_data_dir else None


class PublishSettings(pydantic.BaseModel):
    """How a day is published and held while it is built (fields of the storage resource
    too, so a run may change them)."""

    model_config = pydantic.ConfigDict(frozen=True)

    max_shrink: float = knob(
        0.05,
        "CDR_MAX_SHRINK",
        "a re-run may publish at most this share fewer valid calls than the published day "
        "(never zero); a run with allow_shrink may publish anything",
        ge=0,
        le=1,
    )
    lock_wait_s: float = knob(
        0.0,
        "CDR_LOCK_WAIT_S",
        "seconds a run waits for another run of the same day to finish; 0: fail at once",
        ge=0,
        le=86_400,
    )
    lease_ttl_s: float = knob(
        300.0,
        "CDR_LEASE_TTL_S",
        "seconds a run's hold on a day lasts without renewal (its holder renews it every "
        "quarter of that while it works): after it, a run that died unseen is taken over; one "
        "Dagster knows is finished is taken over at once",
        ge=30,
        le=86_400,
    )


class ProjectSettings(pydantic.BaseModel):
    """Which days there are, when they run, and which API to ask."""

    model_config = pydantic.ConfigDict(frozen=True)

    start_date: str = knob(
        "2024-01-01",
        "CDR_START_DATE",
        "the first daily partition; the demo's (CDR_SIMULATOR=true) default is "
        f"{DEMO_DAYS} days before today, so the UI and the CLI show the days it makes",
    )
    late_days: int = knob(
        2, "CDR_LATE_DAYS", "days back the late-data schedule re-materializes", ge=1, le=60
    )
    fetch_retries: int = knob(
        2,
        "CDR_FETCH_RETRIES",
        "times Dagster runs raw_cdr again when the provider kept failing transiently",
        ge=0,
        le=10,
    )
    fetch_retry_delay_s: float = knob(
        30.0,
        "CDR_FETCH_RETRY_DELAY_S",
        "seconds before the first of those runs (doubled each time, with jitter)",
        ge=0,
        le=3600,
    )
    api_url: str | None = knob(
        None,
        "CDR_API_URL",
        "full getCdr endpoint, e.g. https://HOST/201511v3/getCdr (http:// only to loopback)",
    )
    simulator: bool = knob(
        False,
        "CDR_SIMULATOR",
        "fetch synthetic calls from the built-in simulator instead of an API (the demo: make run "
        "and make ui set it); never together with CDR_API_URL",
    )
    api_id: str | None = knob(
        None, "CDR_API_ID", "the id query value", secret=True, min_length=MIN_SECRET_LENGTH
    )
    app_id: str | None = knob(
        None, "CDR_APP_ID", "appId", secret=True, min_length=MIN_SECRET_LENGTH
    )

    @pydantic.field_validator("start_date")
    @classmethod
    def _start(cls, value: str) -> str:
        try:
            return parse_day(value).isoformat()
        except ValueError as exc:
            raise ValueError(f"CDR_START_DATE={exc}") from None

    @pydantic.field_validator("api_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if not value:
            return None
        try:
            return check_endpoint(value)
        except InvalidEndpointError as exc:
            raise ValueError(str(exc)) from None

    @pydantic.model_validator(mode="after")
    def _together(self) -> ProjectSettings:
        if self.simulator and self.api_url:
            raise ValueError(
                "CDR_SIMULATOR=true and CDR_API_URL are both set: the demo's simulator and a "
                "real API never feed one deployment; unset one of them (make run and make ui "
                "are the demo; with a real API, use cdr-pipeline materialize and make ui-live)"
            )
        if not self.api_url and (self.api_id or self.app_id):
            raise ValueError(
                "CDR_API_ID or CDR_APP_ID is set but CDR_API_URL is not: set CDR_API_URL to "
                "the provider's endpoint, or unset both to run the demo (make run)"
            )
        if self.api_url:
            missing = [
                n for n, v in (("CDR_API_ID", self.api_id), ("CDR_APP_ID", self.app_id)) if not v
            ]
            if missing:
                verb = "are" if len(missing) > 1 else "is"
                raise ValueError(
                    f"CDR_API_URL is set but {' and '.join(missing)} {verb} missing: set both "
                    "CDR_API_ID and CDR_APP_ID (or, for the demo, unset CDR_API_URL and set "
                    "CDR_SIMULATOR=true)"
                )
        return self

    @property
    def uses_simulator(self) -> bool:
        return self.simulator

    def no_api(self) -> str | None:
        """Why nothing can be fetched, or None: no endpoint, and the simulator not asked for.
        Loading the definitions does not need one; a run or a command that fetches does."""
        return None if self.api_url or self.simulator else NO_API


class AnalyticsSettings(pydantic.BaseModel):
    """How numbers are grouped, and the thresholds of the caller-risk flags (fields of the
    analytics resource too, so a run can try other thresholds from the launchpad)."""

    model_config = pydantic.ConfigDict(frozen=True)

    number_grouping: bool = knob(
        True,
        "CDR_NUMBER_GROUPING",
        "resolve numbers by prefix groups proven exact (fast); false parses each distinct "
        "number with libphonenumber: the same answers, slower. The fallback should a Python or "
        "phonenumbers upgrade break the analysis the grouping relies on",
    )
    low_sample_calls: int = knob(
        30,
        "CDR_LOW_SAMPLE_CALLS",
        "a destination with fewer calls is flagged low_sample",
        ge=1,
        le=1_000_000,
    )
    burst_calls_10min: int = knob(
        20,
        "CDR_RISK_BURST_CALLS",
        "burst: this many calls by one caller within 10 minutes",
        ge=2,
        le=1_000_000,
    )
    fan_out_destinations: int = knob(
        50,
        "CDR_RISK_FAN_OUT",
        "fan_out: this many distinct numbers called by one caller",
        ge=2,
        le=1_000_000,
    )
    repeat_target_calls: int = knob(
        20,
        "CDR_RISK_REPEAT_TARGET",
        "repeat_target: this many calls by one caller to one number",
        ge=2,
        le=1_000_000,
    )
    short_ring_calls: int = knob(
        10,
        "CDR_RISK_SHORT_RING",
        "short_ring_unanswered: this many calls hung up within CDR_RISK_SHORT_RING_S of the "
        "callee's ring, unanswered",
        ge=1,
        le=1_000_000,
    )
    short_ring_s: int = knob(
        5,
        "CDR_RISK_SHORT_RING_S",
        "seconds of ringing that count as a short ring",
        ge=0,
        le=3600,
    )
    volume_warn_share: float = knob(
        0.5,
        "CDR_VOLUME_WARN_SHARE",
        "the volume check warns when a day has no calls, or fewer than this share of the "
        "median of the 7 days before",
        ge=0,
        le=1,
    )
    premium_night_calls: int = knob(
        1,
        "CDR_RISK_PREMIUM_NIGHT",
        "premium_night: this many calls to premium-rate numbers at local hours 0-5",
        ge=1,
        le=1_000_000,
    )


class OperationsSettings(pydantic.BaseModel):
    """Running unattended: alerts, freshness, catch-up and the raw layer's retention."""

    model_config = pydantic.ConfigDict(frozen=True)

    alert_webhook_url: str | None = knob(
        None,
        "CDR_ALERT_WEBHOOK_URL",
        "where failed runs and checks are posted (a Slack incoming webhook, or any URL taking "
        "JSON); unset: no alerts",
        secret=True,
    )
    alert_format: Literal["slack", "json"] = knob(
        "slack",
        "CDR_ALERT_FORMAT",
        "slack: {text: ...} for a Slack-compatible webhook; json: the alert's fields",
    )
    ui_url: str = knob(
        "http://127.0.0.1:3000",
        "CDR_UI_URL",
        "the Dagster UI's address, for the links in alerts",
    )
    freshness_deadline: str = knob(
        "02:00",
        "CDR_FRESHNESS_DEADLINE",
        "local time (HH:MM) of the next day by which a day's data is expected; later is late",
    )
    catchup_days: int = knob(
        14,
        "CDR_CATCHUP_DAYS",
        "days back the catch-up sensor and materialize --missing look for missing or failed days",
        ge=1,
        le=366,
    )
    raw_retention_days: int = knob(
        0,
        "CDR_RAW_RETENTION_DAYS",
        "days of raw bodies kept (older raw days are pruned; the datasets stay); 0: forever",
        ge=0,
        le=36_500,
    )
    clear_retention_days: int = knob(
        0,
        "CDR_CLEAR_RETENTION_DAYS",
        "days a day keeps its clear numbers in CDR_DATA_DIR (cdr, cdr_rejects, "
        "caller_risk_daily, the raw bodies); older days are cleared by the prune schedule and "
        "command (CDR_CLEAR_RETENTION says how); the shared zone and the aggregates stay; "
        "needs CDR_PSEUDONYM_KEY; 0: forever",
        ge=0,
        le=36_500,
    )
    clear_retention: Literal["pseudonymise", "remove"] = knob(
        "pseudonymise",
        "CDR_CLEAR_RETENTION",
        "how a day past CDR_CLEAR_RETENTION_DAYS is cleared: pseudonymise (its personal "
        "datasets replaced in place by their shared-zone form: tokens and masks) or remove "
        "(those datasets deleted); its raw bodies are removed either way",
    )

    @pydantic.field_validator("freshness_deadline")
    @classmethod
    def _deadline(cls, value: str) -> str:
        try:
            return time.fromisoformat(value).strftime("%H:%M")
        except ValueError:
            raise ValueError(
                f"CDR_FRESHNESS_DEADLINE={value!r} is not a time of day in HH:MM form"
            ) from None

    @pydantic.field_validator("alert_webhook_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return check_link("CDR_ALERT_WEBHOOK_URL", value) if value else None

    @pydantic.field_validator("ui_url")
    @classmethod
    def _ui(cls, value: str) -> str:
        return check_link("CDR_UI_URL", value)


MODELS: tuple[type[pydantic.BaseModel], ...] = (
    StorageSettings,
    PublishSettings,
    ProjectSettings,
    ClientSettings,
    AnalyticsSettings,
    OperationsSettings,
    SimulatorSettings,
)
