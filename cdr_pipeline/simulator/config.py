"""What the simulator is told: its configuration, the wire's field names, the demo's quirks
and the scripted abusive callers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TIME_FIELDS = (
    "startSrcCallTime",
    "startSrcRingTime",
    "srcAcceptTime",
    "startDstCallTime",
    "startDstRingTime",
    "dstAcceptTime",
    "endCallTime",
)
REJECT_KINDS = (
    "not_an_object",
    "missing_call_id",
    "missing_start_time",
    "bad_timestamp",
    "bad_status",
    "bad_duration",
    "bad_call_type",
    "end_before_start",
)
FAULT_KINDS = ("code-203", "code-501", "http503", "http429", "drop", "slow", "malformed")
MAX_CALL_SECONDS = 3 * 3600 + 600
PATH = "/201511v3/getCdr"
# Relative call volume by local hour: quiet nights, busy office hours.
DIURNAL = (1, 1, 1, 1, 1, 2, 4, 7, 10, 12, 12, 11, 9, 10, 12, 12, 11, 10, 8, 6, 5, 4, 3, 2)


@dataclass(frozen=True)
class SimConfig:
    """Everything that shapes the simulated provider. Defaults: a clean, honest server."""

    seed: int = 20190123
    calls_per_day: int = 2000
    page_size: int = 1000
    honour_cursor: bool = True
    filter_on: str = "start"  # "start" or "end": which time field windows select on
    timezone: str = "Asia/Shanghai"
    app_id: str | None = None  # expected credentials; None accepts anything
    api_id: str | None = None
    max_window_s: int = 3 * 86400
    # data quirks
    bad_record_rate: float = 0.0
    duplicate_rate: float = 0.0
    conflict_rate: float = 0.0
    datetime_text_rate: float = 0.0
    epoch_ms_rate: float = 0.0
    schema_drift_rate: float = 0.0
    anomaly_rate: float = 0.0
    # faults
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    max_faults_per_request: int = 2
    slow_seconds: float = 1.5
    retry_after_s: int = 1
    retry_after_date: bool = False  # send Retry-After as an HTTP date, retry_after_s ahead
    uncompressed_rate: float = 0.0
    gzip: bool = False
    force_error: str | None = None
    force_error_after: int = 0  # answer this many requests normally before force_error
    paging_fault: str | None = None  # "cycle": cursors loop back; "endless": never ends
    latency_s: float = 0.0
    # billed seconds are the talk time rounded up to this (6-second billing is common): so
    # acd_s (billed) and aloc_s (talk) differ, as on a real bill
    billing_increment_s: int = 6
    # a few callers whose traffic looks like abuse (see ABUSERS), added to the normal traffic
    abuse: bool = False
    # a hostile or misconfigured provider
    content_encoding: str | None = None  # this Content-Encoding header on every answer
    # a provider that serves markup: put before every abusive caller's number (abuse=True) and
    # in every forced error's text
    hostile_text: str = ""
    # a record nested this deep (beyond the parser's reach) first in every listing's first page
    nested_depth: int = 0
    echo_secrets: bool = False  # error answers repeat the appId, the id and the request line
    cdr_list: str = "present"  # "absent" or "null": success answers without their cdr list
    bomb_from_request: int = 0  # from this request on (1-based), answer a decompression bomb
    bomb_bytes: int = 512 * 1024 * 1024  # what the bomb inflates to
    empty_from_request: int = 0  # from this request on (1-based), every day has no calls

    def __post_init__(self) -> None:
        if self.filter_on not in ("start", "end"):
            raise ValueError("filter_on must be 'start' or 'end'")
        if self.page_size < 1:
            raise ValueError("page_size must be at least 1")
        unknown = set(self.fault_kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")


# Destinations abroad ({} takes 8 digits): US, UK mobile, Tokyo, Singapore mobile, German mobile.
INTERNATIONAL = (
    "0012122{:.6}",
    "00447400{:.6}",
    "00813{}",
    "00659{:.7}",
    "0049151{}",
)
PREMIUM = "0044909{}"  # a UK premium-rate number (09xx)

# Callers of the abuse patterns (SimConfig.abuse): each shows exactly one flag of the data
# contract's caller-risk rules, at fixed local hours. Caller -> (local hours, calls per hour,
# seconds between them, shape, the n-th call's destination).
SCRIPTS: dict[str, tuple[tuple[int, ...], int, int, str, Any]] = {
    "008613900000001": ((10,), 25, 20, "answered", lambda n: f"00861590001{n:04d}"),
    "008613900000002": (tuple(range(8, 20)), 5, 600, "answered", lambda n: f"00861590002{n:04d}"),
    "008613900000003": (tuple(range(9, 14)), 5, 700, "answered", lambda n: "008615900030000"),
    "008613900000004": ((14, 15), 6, 500, "short_ring", lambda n: f"00861590004{n:04d}"),
    "008613900000005": ((2,), 1, 0, "answered", lambda n: "00449090000005"),
}
ABUSERS = {
    "008613900000001": ["burst"],
    "008613900000002": ["fan_out"],
    "008613900000003": ["repeat_target"],
    "008613900000004": ["short_ring_unanswered"],
    "008613900000005": ["premium_night"],
}

# What the built-in simulator serves by default, so a first run shows rejects and duplicates.
DEMO_QUIRKS = {
    "bad_record_rate": 0.003,
    "duplicate_rate": 0.01,
    "conflict_rate": 0.002,
    "datetime_text_rate": 0.05,
    "epoch_ms_rate": 0.02,
    "anomaly_rate": 0.001,
    "abuse": True,
}
