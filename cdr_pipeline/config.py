"""Settings from the environment (names from the data contract), validated once at load time.

A wrong setting fails here, naming the variable, rather than deep inside a run.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cdr_pipeline.api.client import InvalidEndpointError, check_endpoint
from cdr_pipeline.store import Store, StoreError, open_store, redacted

DEFAULT_START_DATE = "2024-01-01"
DEFAULT_TIMEZONE = "Asia/Shanghai"


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names it."""


@dataclass(frozen=True)
class Settings:
    data_dir: str  # an absolute local path, or an object-store URL
    timezone: str
    start_date: str
    api_url: str | None
    late_days: int
    tuning: dict[str, int | float]

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def store(self) -> Store:
        return open_store(self.data_dir)

    @property
    def uses_simulator(self) -> bool:
        return self.api_url is None


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"CDR_TIMEZONE={name!r} is not an IANA time zone (e.g. Asia/Shanghai, Europe/Berlin)"
        ) from None
    return name


def _start_date(value: str, tz: str) -> str:
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"CDR_START_DATE={value!r} is not a date in YYYY-MM-DD form") from None
    today = datetime.now(ZoneInfo(tz)).date()
    if day > today:
        raise ConfigError(f"CDR_START_DATE={value} is in the future (today is {today} in {tz})")
    return day.isoformat()


def _data_dir(value: str) -> str:
    try:
        store = open_store(value)
    except StoreError as exc:
        raise ConfigError(f"CDR_DATA_DIR={redacted(value)!r}: {exc}") from None
    if not store.local:
        return value  # the object store is first contacted by a run, not at load time
    path = Path(store.url)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"CDR_DATA_DIR={str(path)!r} is not a writable directory ({exc.strerror})"
        ) from None
    return str(path)


def _api(env: Mapping[str, str]) -> str | None:
    url = (env.get("CDR_API_URL") or "").strip()
    if not url:
        return None
    try:
        check_endpoint(url)
    except InvalidEndpointError as exc:
        raise ConfigError(str(exc)) from None
    for name in ("CDR_API_ID", "CDR_APP_ID"):
        if not (env.get(name) or "").strip():
            raise ConfigError(
                f"CDR_API_URL is set but {name} is missing: set both CDR_API_ID and CDR_APP_ID "
                "(or unset CDR_API_URL to use the built-in simulator)"
            )
    return url


# Tuning knobs of the API resource that an operator may set from the environment.
TUNING_ENV = {
    "CDR_WINDOW_HOURS": ("window_hours", int),
    "CDR_MARGIN_MINUTES": ("margin_minutes", int),
    "CDR_CONCURRENCY": ("concurrency", int),
    "CDR_RATE_LIMIT_PER_S": ("rate_limit_per_s", float),
    "CDR_MAX_ATTEMPTS": ("max_attempts", int),
    "CDR_READ_TIMEOUT_S": ("read_timeout_s", float),
    "CDR_BACKOFF_BASE_S": ("backoff_base_s", float),
    "CDR_BACKOFF_MAX_S": ("backoff_max_s", float),
    "CDR_SIM_CALLS_PER_DAY": ("simulator_calls_per_day", int),
    "CDR_SIM_SEED": ("simulator_seed", int),
}


def _tuning(env: Mapping[str, str]) -> dict[str, int | float]:
    out: dict[str, int | float] = {}
    for name, (field_name, kind) in TUNING_ENV.items():
        raw = (env.get(name) or "").strip()
        if not raw:
            continue
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} must be a {kind.__name__}") from None
        if value < 0:
            raise ConfigError(f"{name}={raw!r} must not be negative")
        out[field_name] = value
    return out


def prefer_jemalloc() -> str:
    """Have Arrow allocate with jemalloc unless ``ARROW_DEFAULT_MEMORY_POOL`` names another
    allocator; return the one in use. Arrow's default (mimalloc) keeps freed memory for
    reuse, jemalloc hands it back sooner: a day's transform peaks about 100 MB lower and is no
    slower (benchmarks/RESULTS.md). Called where a pipeline process starts, not on import."""
    import pyarrow as pa

    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        with contextlib.suppress(NotImplementedError):  # a pyarrow built without jemalloc
            pa.set_memory_pool(pa.jemalloc_memory_pool())
    return pa.default_memory_pool().backend_name


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    tz = _zone(env.get("CDR_TIMEZONE") or DEFAULT_TIMEZONE)
    late = env.get("CDR_LATE_DAYS") or "2"
    if not late.isdigit() or not 1 <= int(late) <= 60:
        raise ConfigError(f"CDR_LATE_DAYS={late!r} must be a whole number of days from 1 to 60")
    return Settings(
        data_dir=_data_dir(env.get("CDR_DATA_DIR") or "data"),
        timezone=tz,
        start_date=_start_date(env.get("CDR_START_DATE") or DEFAULT_START_DATE, tz),
        api_url=_api(env),
        late_days=int(late),
        tuning=_tuning(env),
    )
