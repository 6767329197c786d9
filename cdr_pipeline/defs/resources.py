"""Dagster resources: the getCdr API client, and where the datasets live."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from zoneinfo import ZoneInfo

import dagster as dg
from pydantic import Field

from cdr_pipeline.api.client import CdrApiClient, ClientSettings
from cdr_pipeline.api.simulator import PATH, CdrSimulator, SimConfig
from cdr_pipeline.store import Store, open_store

SIMULATOR_URL = f"http://127.0.0.1{PATH}"
_announced = False
# What the built-in simulator serves by default, so a first run shows rejects and duplicates.
DEMO_QUIRKS = {
    "bad_record_rate": 0.003,
    "duplicate_rate": 0.01,
    "conflict_rate": 0.002,
    "datetime_text_rate": 0.05,
    "epoch_ms_rate": 0.02,
    "anomaly_rate": 0.001,
}


class CdrApiResource(dg.ConfigurableResource):
    """The provider's getCdr API; with no ``api_url`` it is the built-in simulator."""

    api_url: str | None = Field(
        default=None, description="Full endpoint (CDR_API_URL); unset = built-in simulator"
    )
    api_id: str | None = Field(default=None, description="The id query value (CDR_API_ID)")
    app_id: str | None = Field(default=None, description="appId (CDR_APP_ID)")
    window_hours: int = Field(default=6, ge=1, le=24, description="Hours per sub-window")
    margin_minutes: int = Field(
        default=60, ge=0, le=720, description="Widening of the day's window on both sides"
    )
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, le=20, description="Attempts per request")
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    concurrency: int = Field(default=4, ge=1, le=64, description="Sub-windows fetched at once")
    rate_limit_per_s: float = Field(default=0.0, ge=0, description="Requests/s cap; 0 = none")
    split_stragglers: bool = Field(
        default=True,
        description="Cut a busy window's chain of pages into parts fetched side by side when "
        "it would otherwise run last, alone",
    )
    compress: bool = Field(default=True, description="Ask for zlib bodies")
    max_pages_per_query: int = Field(default=1000, ge=1)
    max_body_mb: int = Field(default=256, ge=1, description="Cap on a decompressed body")
    simulator_seed: int = Field(default=20190123)
    simulator_calls_per_day: int = Field(default=2000, ge=0)
    simulator_quirks: bool = Field(
        default=True,
        description="Let the simulator serve a few bad records, duplicates and text timestamps",
    )

    @property
    def uses_simulator(self) -> bool:
        return not self.api_url

    @property
    def margin_s(self) -> int:
        return self.margin_minutes * 60

    @property
    def max_body_bytes(self) -> int:
        return self.max_body_mb * 1024 * 1024

    def settings(self) -> ClientSettings:
        return ClientSettings(
            connect_timeout_s=self.connect_timeout_s,
            read_timeout_s=self.read_timeout_s,
            max_attempts=self.max_attempts,
            backoff_base_s=self.backoff_base_s,
            backoff_max_s=self.backoff_max_s,
            compress=self.compress,
            max_body_bytes=self.max_body_bytes,
            max_pages_per_query=self.max_pages_per_query,
            concurrency=self.concurrency,
            rate_limit_per_s=self.rate_limit_per_s,
            split_stragglers=self.split_stragglers,
        )

    def endpoint_label(self) -> str:
        """Where the data came from, safe to record (no credentials)."""
        if self.uses_simulator:
            return "built-in simulator"
        from urllib.parse import urlsplit

        parts = urlsplit(self.api_url)
        return f"{parts.scheme}://{parts.hostname}{parts.path}"

    @contextmanager
    def open_client(self, timezone: str = "Asia/Shanghai") -> Iterator[CdrApiClient]:
        global _announced
        if self.uses_simulator:
            if not _announced:
                logging.getLogger("cdr_pipeline").warning(
                    "CDR_API_URL is not set: fetching from the built-in simulator "
                    "(synthetic calls, seed %s, %s calls/day)",
                    self.simulator_seed,
                    self.simulator_calls_per_day,
                )
                _announced = True
            sim = CdrSimulator(
                SimConfig(
                    seed=self.simulator_seed,
                    calls_per_day=self.simulator_calls_per_day,
                    timezone=timezone,
                    **(DEMO_QUIRKS if self.simulator_quirks else {}),
                )
            )
            client = CdrApiClient(
                SIMULATOR_URL, "simulator", "simulator", self.settings(), transport=sim.transport()
            )
        else:
            missing = [
                n for n, v in (("CDR_API_ID", self.api_id), ("CDR_APP_ID", self.app_id)) if not v
            ]
            if missing:
                raise dg.Failure(f"CDR_API_URL is set but {' and '.join(missing)} is missing")
            client = CdrApiClient(self.api_url, self.api_id, self.app_id, self.settings())
        try:
            yield client
        finally:
            client.close()


class CdrStorageResource(dg.ConfigurableResource):
    """Where the datasets live and which zone draws the day boundary."""

    data_dir: str = Field(default="data", description="CDR_DATA_DIR")
    timezone: str = Field(default="Asia/Shanghai", description="CDR_TIMEZONE")

    @property
    def store(self) -> Store:
        """The data directory: a local folder or an object-store prefix."""
        return open_store(self.data_dir)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)
