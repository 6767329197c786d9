"""The provider's API: client, wire format, error codes and a simulator. No Dagster here."""

from cdr_pipeline.api.client import (
    CdrApiClient,
    ClientSettings,
    Exchange,
    check_endpoint,
)
from cdr_pipeline.api.errors import CdrApiError
from cdr_pipeline.simulator import CdrSimulator, SimConfig, serve

__all__ = [
    "CdrApiClient",
    "CdrApiError",
    "CdrSimulator",
    "ClientSettings",
    "Exchange",
    "SimConfig",
    "check_endpoint",
    "serve",
]
