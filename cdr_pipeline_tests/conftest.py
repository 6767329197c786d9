"""Shared fixtures: the simulator on a real loopback port, fast client settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from cdr_pipeline.api.client import CdrApiClient, ClientSettings
from cdr_pipeline.api.simulator import SimConfig, SimulatorServer, serve

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


@pytest.fixture
def sim_server() -> Iterator[Callable[..., SimulatorServer]]:
    """Start simulators on 127.0.0.1 (random port); all are stopped after the test."""
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
