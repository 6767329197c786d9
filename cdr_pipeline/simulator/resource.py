"""The simulator behind the same resource interface as the live API, for the demo."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

from cdr_pipeline.api.client import CdrApiClient
from cdr_pipeline.raw import SIMULATOR
from cdr_pipeline.resources import CdrApiResource
from cdr_pipeline.settings import SimulatorSettings
from cdr_pipeline.simulator.config import DEMO_QUIRKS, PATH, SimConfig
from cdr_pipeline.simulator.provider import CdrSimulator


class SimulatedCdrApi(CdrApiResource, SimulatorSettings):
    """The built-in simulator, answered in process: synthetic calls, no credentials."""

    uses_simulator: ClassVar[bool] = True

    @contextmanager
    def open_client(self, timezone: str) -> Iterator[CdrApiClient]:
        sim = CdrSimulator(
            SimConfig(
                seed=self.simulator_seed,
                calls_per_day=self.simulator_calls_per_day,
                timezone=timezone,
                **(DEMO_QUIRKS if self.simulator_quirks else {}),
            )
        )
        url = f"http://127.0.0.1{PATH}"
        # dummy credentials, distinctive enough that redacting them spares ordinary words
        creds = ("simulated-id-0000", "simulated-app-0000")
        with CdrApiClient(url, *creds, self, transport=sim.transport()) as c:
            yield c

    def endpoint_label(self) -> str:
        return SIMULATOR
