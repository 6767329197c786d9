"""A deterministic stand-in for the provider's getCdr API: the demo's data source and the
tests' oracle. Production code never imports it; the demo asks for it where the definitions
choose their API resource (:func:`cdr_pipeline.resources.api_resource`), and
``cdr-pipeline simulate-api`` serves it over HTTP.
"""

from cdr_pipeline.simulator.calls import CallBook, DayTruth, SimCall
from cdr_pipeline.simulator.config import (
    ABUSERS,
    DEMO_QUIRKS,
    FAULT_KINDS,
    MAX_CALL_SECONDS,
    PATH,
    REJECT_KINDS,
    TIME_FIELDS,
    SimConfig,
)
from cdr_pipeline.simulator.provider import CdrSimulator, SimResponse
from cdr_pipeline.simulator.server import SimulatorServer, serve

__all__ = [
    "ABUSERS",
    "DEMO_QUIRKS",
    "FAULT_KINDS",
    "MAX_CALL_SECONDS",
    "PATH",
    "REJECT_KINDS",
    "TIME_FIELDS",
    "CallBook",
    "CdrSimulator",
    "DayTruth",
    "SimCall",
    "SimConfig",
    "SimResponse",
    "SimulatorServer",
    "serve",
]
