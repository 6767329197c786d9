"""Shared fixtures: the simulator on a real loopback port, fast client settings."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from cdr_pipeline.api.client import CdrApiClient, ClientSettings
from cdr_pipeline.api.simulator import SimConfig, SimulatorServer, serve
from cdr_pipeline.config import load_settings
from cdr_pipeline.daily import Day
from cdr_pipeline.definitions import build_definitions
from cdr_pipeline.defs.schedules import DAILY_JOB
from cdr_pipeline.store import Store, open_store

API_ID = "ID-s3cr3t-4f9a77"
APP_ID = "APP-s3cr3t-b81c02"

# Fast but real: backoff is tiny, timeouts short enough that "slow" faults trip them.
FAST = ClientSettings(
    connect_timeout_s=2.0,
    read_timeout_s=0.4,
    max_attempts=4,
    backoff_base_s=0.001,
    backoff_max_s=0.01,
    concurrency=4,
)


def _simulators() -> Iterator[Callable[..., SimulatorServer]]:
    servers: list[SimulatorServer] = []

    def start(**overrides) -> SimulatorServer:
        config = SimConfig(**{"slow_seconds": 0.8, "retry_after_s": 0, **overrides})
        server = serve(config)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def sim_server() -> Iterator[Callable[..., SimulatorServer]]:
    """Start simulators on 127.0.0.1 (random port); all are stopped after the test."""
    yield from _simulators()


@pytest.fixture(scope="module")
def sim_server_module() -> Iterator[Callable[..., SimulatorServer]]:
    """The same, kept for a whole test module."""
    yield from _simulators()


@pytest.fixture
def make_client() -> Iterator[Callable[..., CdrApiClient]]:
    clients: list[CdrApiClient] = []

    def make(server: SimulatorServer, settings: ClientSettings = FAST, **kw) -> CdrApiClient:
        client = CdrApiClient(
            server.url, kw.pop("api_id", API_ID), kw.pop("app_id", APP_ID), settings, **kw
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


class Env:
    """One project set-up: env vars, a data dir, a Dagster instance, the loaded definitions."""

    def __init__(self, monkeypatch, tmp_path: Path, server, tz: str = "Asia/Shanghai", **env):
        self.root = tmp_path / "data"
        self.server = server
        self.tz = ZoneInfo(tz)
        values = {
            "CDR_DATA_DIR": str(self.root),
            "CDR_TIMEZONE": tz,
            "CDR_START_DATE": "2024-01-01",
            "CDR_API_URL": server.url,
            "CDR_API_ID": API_ID,
            "CDR_APP_ID": APP_ID,
            "CDR_READ_TIMEOUT_S": "2",
            **env,
        }
        for k, v in values.items():
            monkeypatch.setenv(k, v)
        self.defs = build_definitions(load_settings())
        self.job = self.defs.resolve_job_def(DAILY_JOB)

    def run(self, instance, start: str, end: str | None = None, **kw):
        if end is None:
            return self.job.execute_in_process(instance=instance, partition_key=start, **kw)
        tags = {
            "dagster/asset_partition_range_start": start,
            "dagster/asset_partition_range_end": end,
        }
        return self.job.execute_in_process(instance=instance, tags=tags, **kw)

    @property
    def store(self) -> Store:
        return open_store(self.root)

    def day(self, key: str) -> Day:
        return Day.from_key(key, self.tz)

    def glob(self, dataset: str) -> str:
        return str(self.root / dataset / "*" / "*.parquet")


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def digests(root: Path, pattern: str = "*.parquet") -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob(pattern))
        if p.is_file()
    }
