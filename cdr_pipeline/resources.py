"""The Dagster resources: the getCdr API (live or simulated, one interface) and where the
datasets live. Their tuning fields are the declarations of :mod:`cdr_pipeline.settings`."""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import dagster as dg

from cdr_pipeline.api.client import CdrApiClient
from cdr_pipeline.lease import RunLeases, run_leases
from cdr_pipeline.privacy import CLEAR, Pseudonyms, pseudonyms_of
from cdr_pipeline.settings import (
    NO_API,
    AnalyticsSettings,
    ClientSettings,
    PublishSettings,
    Settings,
)
from cdr_pipeline.store import Store


class CdrApiResource(dg.ConfigurableResource, ClientSettings):
    """The provider's getCdr API as the assets see it: :class:`LiveCdrApi` or
    :class:`SimulatedCdrApi`, chosen where the definitions are built."""

    uses_simulator: ClassVar[bool] = False

    def open_client(self, timezone: str) -> AbstractContextManager[CdrApiClient]:
        raise NotImplementedError

    def endpoint_label(self) -> str:
        """Where the data came from, safe to record (no credentials)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Endpoint:
    """The deployment's endpoint and credentials (``CDR_API_URL``, ``CDR_API_ID``,
    ``CDR_APP_ID``). A nested resource with no config schema: no run config can re-point
    them, so a launch cannot send the credentials to another host."""

    url: str
    api_id: str = field(repr=False)
    app_id: str = field(repr=False)

    def label(self) -> str:
        """Where the data came from, safe to record (no credentials)."""
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


class LiveCdrApi(CdrApiResource):
    """The real endpoint, with the tuning a run may change."""

    endpoint: dg.ResourceDependency[Endpoint]

    @contextmanager
    def open_client(self, timezone: str) -> Iterator[CdrApiClient]:
        e = self.endpoint
        with CdrApiClient(e.url, e.api_id, e.app_id, self) as client:
            yield client

    def endpoint_label(self) -> str:
        return self.endpoint.label()


@dataclass(frozen=True)
class DataHome:
    """Where the datasets live and where a day begins: the deployment's (``CDR_DATA_DIR``,
    ``CDR_TIMEZONE``), a nested resource no run config can change (a run pointing the data
    at another object store would hand it the store's credentials)."""

    store: Store
    timezone: str
    pseudonyms: Pseudonyms = CLEAR  # how numbers are shown to people (CDR_PSEUDONYM_KEY)


class CdrStorageResource(dg.ConfigurableResource, PublishSettings):
    """Where the datasets live, which zone draws the day boundary, and one run at a time per
    day (its fields are the declarations of :class:`PublishSettings`)."""

    home: dg.ResourceDependency[DataHome]

    @property
    def store(self) -> Store:
        return self.home.store

    @property
    def timezone(self) -> str:
        return self.home.timezone

    @property
    def pseudonyms(self) -> Pseudonyms:
        return self.home.pseudonyms

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.home.timezone)

    def leases(
        self,
        days: list[str],
        run_id: str,
        *,
        keep: bool = False,
        instance: dg.DagsterInstance | None = None,
    ) -> AbstractContextManager[RunLeases]:
        """The days a run's step holds (see :func:`lease.run_leases`); a holder whose run
        ``instance`` knows as finished is taken over at once."""
        return run_leases(
            self.store,
            days,
            run_id,
            ttl_s=self.lease_ttl_s,
            wait_s=self.lock_wait_s,
            keep=keep,
            gone=None if instance is None else finished_in(instance),
        )


def finished_in(instance: dg.DagsterInstance) -> Callable[[str], bool]:
    """Whether a lease's owner is a run ``instance`` knows as finished (succeeded, failed or
    cancelled): such a run holds nothing, wherever its worker was."""

    def gone(owner: str) -> bool:
        run = instance.get_run_by_id(owner)
        return run is not None and run.is_finished

    return gone


class CdrAnalyticsResource(dg.ConfigurableResource, AnalyticsSettings):
    """How numbers are read and when a caller is flagged (its fields are the declarations of
    :class:`AnalyticsSettings`; set per run in the launchpad to try other thresholds)."""


class NoApi(CdrApiResource):
    """Neither an endpoint nor the simulator: the definitions load (a code server, `dg check
    defs`), and a run that would fetch fails at once, saying how to configure one."""

    @contextmanager
    def open_client(self, timezone: str) -> Iterator[CdrApiClient]:
        raise dg.Failure(NO_API, allow_retries=False)  # no retry can configure one
        yield  # pragma: no cover

    def endpoint_label(self) -> str:
        return "none"


def api_resource(settings: Settings) -> CdrApiResource:
    """The live API when ``CDR_API_URL`` is set, the simulator when ``CDR_SIMULATOR`` asks for
    it, else :class:`NoApi`."""
    tuning = settings.client.model_dump()
    if settings.uses_simulator:  # the demo's choice, and the only place it is made
        from cdr_pipeline.simulator.resource import SimulatedCdrApi

        return SimulatedCdrApi(**tuning, **settings.simulator.model_dump())
    if settings.project.no_api():
        return NoApi(**tuning)
    p = settings.project
    assert p.api_url and p.api_id and p.app_id  # ProjectSettings holds them together
    return LiveCdrApi(endpoint=Endpoint(p.api_url, p.api_id, p.app_id), **tuning)


def storage_resource(settings: Settings) -> CdrStorageResource:
    home = DataHome(settings.storage.store, settings.storage.timezone, pseudonyms_of(settings))
    return CdrStorageResource(home=home, **settings.publish.model_dump())


def analytics_resource(settings: Settings) -> CdrAnalyticsResource:
    return CdrAnalyticsResource(**settings.analytics.model_dump())
