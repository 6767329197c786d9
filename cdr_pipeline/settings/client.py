"""How a day is fetched: the client's settings (windows, timeouts, retries, concurrency; also
fields of the API resource), and what the built-in simulator serves in the demo."""

from __future__ import annotations

import pydantic

from cdr_pipeline.settings.fields import knob


class ClientSettings(pydantic.BaseModel):
    """How the client fetches a day: windows, timeouts, retries, concurrency."""

    model_config = pydantic.ConfigDict(frozen=True)

    window_hours: int = knob(
        6, "CDR_WINDOW_HOURS", "hours per sub-window of a day's fetch", ge=1, le=24
    )
    margin_minutes: int = knob(
        60, "CDR_MARGIN_MINUTES", "widening of the day's window on both sides", ge=0, le=720
    )
    connect_timeout_s: float = knob(
        5.0, "CDR_CONNECT_TIMEOUT_S", "seconds to wait for a connection", gt=0, le=600
    )
    read_timeout_s: float = knob(
        30.0, "CDR_READ_TIMEOUT_S", "seconds to wait for each read of an answer", gt=0, le=3600
    )
    request_deadline_s: float = knob(
        0.0,
        "CDR_REQUEST_DEADLINE_S",
        "total seconds one request may take, headers and body; 0: four times the read timeout",
        ge=0,
        le=4 * 3600,
    )
    max_attempts: int = knob(
        5, "CDR_MAX_ATTEMPTS", "attempts per request for transient failures", ge=1, le=20
    )
    backoff_base_s: float = knob(
        0.5,
        "CDR_BACKOFF_BASE_S",
        "first retry's delay, doubled each attempt, with jitter",
        ge=0,
        le=600,
    )
    backoff_max_s: float = knob(
        30.0,
        "CDR_BACKOFF_MAX_S",
        "longest delay between attempts (a Retry-After is honoured up to it)",
        ge=0,
        le=3600,
    )
    concurrency: int = knob(4, "CDR_CONCURRENCY", "requests in flight at once", ge=1, le=64)
    rate_limit_per_s: float = knob(
        0.0,
        "CDR_RATE_LIMIT_PER_S",
        "requests per second across the client, no burst; 0: no limit",
        ge=0,
        le=10_000,
    )
    split_stragglers: bool = knob(
        True,
        "CDR_SPLIT_STRAGGLERS",
        "cut a busy window's chain of pages into parts fetched side by side",
    )
    compress: bool = knob(True, "CDR_COMPRESS", "ask for zlib-compressed bodies")
    max_pages_per_query: int = knob(
        1000,
        "CDR_MAX_PAGES_PER_QUERY",
        "pages one window may take before it is an error",
        ge=1,
        le=1_000_000,
    )
    max_body_mb: float = knob(
        256, "CDR_MAX_BODY_MB", "cap on one decompressed body, in MiB", gt=0, le=4096
    )

    @property
    def deadline_s(self) -> float:
        return self.request_deadline_s or 4 * self.read_timeout_s

    @property
    def margin_s(self) -> int:
        return self.margin_minutes * 60

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


class SimulatorSettings(pydantic.BaseModel):
    """What the built-in simulator serves when CDR_SIMULATOR asks for it (the demo)."""

    model_config = pydantic.ConfigDict(frozen=True)

    simulator_seed: int = knob(
        20190123, "CDR_SIM_SEED", "the simulator's random seed", ge=0, le=2**32 - 1
    )
    simulator_calls_per_day: int = knob(
        2000, "CDR_SIM_CALLS_PER_DAY", "calls a simulated day holds", ge=0, le=50_000_000
    )
    simulator_quirks: bool = knob(
        True,
        "CDR_SIM_QUIRKS",
        "let the simulator serve a few bad records, duplicates and text timestamps",
    )
