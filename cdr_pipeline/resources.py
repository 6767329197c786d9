"""The Dagster resources: the getCdr API (live or simulated, one interface) and where the
datasets live. Their tuning fields are the declarations of :mod:`cdr_pipeline.settings`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import ClassVar
from urllib.parse import urlsplit

import dagster as dg
from pydantic import Field

from cdr_pipeline.api.client import CdrApiClient
from cdr_pipeline.lease import RunLeases, run_leases
from cdr_pipeline.settings import (
    AnalyticsSettings,
    ClientSettings,
    Settings,
    StorageSettings,
)


class CdrApiResource(dg.ConfigurableResource, ClientSettings):
    """The provider's getCdr API as the assets see it: :class:`LiveCdrApi` or
    :class:`SimulatedCdrApi`, chosen where the definitions are built."""

    uses_simulator: ClassVar[bool] = False

    def open_client(self, timezone: str) -> AbstractContextManager[CdrApiClient]:
        raise NotImplementedError

    def endpoint_label(self) -> str:
        """Where the data came from, safe to record (no credentials)."""
        raise NotImplementedError


class LiveCdrApi(CdrApiResource):
    """The real endpoint; the credentials come in as ``dg.EnvVar`` so their values never
    enter run config or the UI."""

    api_url: str = Field(description="full getCdr endpoint (CDR_API_URL)")
    api_id: str = Field(description="the id query value (CDR_API_ID)", repr=False)
    app_id: str = Field(description="appId (CDR_APP_ID)", repr=False)

    @contextmanager
    def open_client(self, timezone: str) -> Iterator[CdrApiClient]:
        with CdrApiClient(self.api_url, self.api_id, self.app_id, self) as client:
            yield client

    def endpoint_label(self) -> str:
        parts = urlsplit(self.api_url)
        return f"{parts.scheme}://{parts.hostname}{parts.path}"


class CdrStorageResource(dg.ConfigurableResource, StorageSettings):
    """Where the datasets live, which zone draws the day boundary, and one run at a time per
    day (its fields are the declarations of :class:`StorageSettings`)."""

    def leases(
        self, days: list[str], run_id: str, *, keep: bool = False
    ) -> AbstractContextManager[RunLeases]:
        """The days a run's step holds (see :func:`lease.run_leases`)."""
        return run_leases(
            self.store,
            days,
            run_id,
            ttl_s=self.lease_ttl_s,
            wait_s=self.lock_wait_s,
            keep=keep,
        )


class CdrAnalyticsResource(dg.ConfigurableResource, AnalyticsSettings):
    """How numbers are read and when a caller is flagged (its fields are the declarations of
    :class:`AnalyticsSettings`; set per run in the launchpad to try other thresholds)."""


def api_resource(settings: Settings, *, secrets_from_env: bool = True) -> CdrApiResource:
    """The live API when ``CDR_API_URL`` is set, else the simulator. Under Dagster the
    secrets stay ``dg.EnvVar`` references; the CLI, outside Dagster, passes their values."""
    tuning = settings.client.model_dump()
    if settings.uses_simulator:  # the demo's choice, and the only place it is made
        from cdr_pipeline.simulator.resource import SimulatedCdrApi

        return SimulatedCdrApi(**tuning, **settings.simulator.model_dump())
    if secrets_from_env:
        secrets = {"api_id": dg.EnvVar("CDR_API_ID"), "app_id": dg.EnvVar("CDR_APP_ID")}
    else:
        secrets = {"api_id": settings.api_id, "app_id": settings.app_id}
    return LiveCdrApi(api_url=settings.api_url, **secrets, **tuning)


def storage_resource(settings: Settings) -> CdrStorageResource:
    return CdrStorageResource(**settings.storage.model_dump())


def analytics_resource(settings: Settings) -> CdrAnalyticsResource:
    return CdrAnalyticsResource(**settings.analytics.model_dump())
