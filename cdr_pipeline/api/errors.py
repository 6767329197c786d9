"""The provider's error codes as typed exceptions.

Every exception carries the code, its meaning, whether a retry can help and a hint for the
operator, plus the query window it happened in. Messages never contain credentials: every
message is redacted when the exception is made and again when it is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cdr_pipeline.api.redact import redact
from cdr_pipeline.text import one_line


@dataclass(frozen=True)
class CodeInfo:
    meaning: str
    retryable: bool
    kind: str
    hint: str


ERROR_CODES: dict[str, CodeInfo] = {
    "-1": CodeInfo(
        "version not supported",
        False,
        "configuration",
        "check CDR_API_URL: the path must end in /201511v3/getCdr",
    ),
    "-2": CodeInfo(
        "bad parameters",
        False,
        "request",
        "the request was rejected as malformed; report it with the window below",
    ),
    "-201": CodeInfo("bad callId", False, "request", "the callId is unknown or malformed"),
    "-202": CodeInfo(
        "bad timestamp parameters",
        False,
        "request",
        "the window was refused; try a smaller window_hours on the API resource",
    ),
    "-203": CodeInfo("network error (provider side)", True, "transient", "retried with backoff"),
    "-401": CodeInfo("appId invalid", False, "credentials", "check CDR_APP_ID"),
    "-402": CodeInfo(
        "URL mismatch",
        False,
        "configuration",
        "check CDR_API_URL (host and path) and CDR_API_ID",
    ),
    "-403": CodeInfo(
        "caller IP not on the allow-list",
        False,
        "deployment",
        "ask the provider to add this machine's public IP to the account's allow-list",
    ),
    "-423": CodeInfo(
        "calls blocked by the server (caller compromised or abusive)",
        False,
        "blocked",
        "the provider blocked this account: stop all jobs, rotate the credentials and "
        "contact the provider before retrying",
    ),
    "-501": CodeInfo("server error", True, "transient", "retried with backoff"),
}


# What no retry and no other day can fix: the configuration, the credentials, the allow-list,
# a blocked account, a certificate, an endpoint that never answered. A run stops at the first.
STOPS_RUN = frozenset(
    {"configuration", "credentials", "deployment", "blocked", "tls", "unreachable"}
)


def _fmt_ts(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe_window(window: tuple[int, int] | None) -> str:
    if window is None:
        return "no window"
    start, end = window
    return f"window [{_fmt_ts(start)}, {_fmt_ts(end)}] (epoch {start}..{end})"


class CdrApiError(Exception):
    """Base of every error the client raises."""

    retryable: bool = False
    kind: str = "api"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        meaning: str | None = None,
        hint: str | None = None,
        window: tuple[int, int] | None = None,
        call_id: str | None = None,
        http_status: int | None = None,
    ) -> None:
        # Provider text (an echoed appId or id) and body snippets land here: scrubbed once
        # when made, and the whole text again when shown.
        message = redact(message)
        self.message = message
        self.code = None if code is None else one_line(code)
        self.meaning = meaning
        self.hint = hint
        self.window = window
        self.call_id = None if call_id is None else one_line(call_id)
        self.http_status = http_status
        self.partition: str | None = None
        super().__init__(message)

    def with_partition(self, partition: str) -> CdrApiError:
        self.partition = partition
        return self

    def __str__(self) -> str:
        parts = []
        if self.partition:
            parts.append(f"partition {self.partition}")
        if self.code is not None:
            parts.append(f"API code {self.code} ({self.meaning or 'unknown code'})")
        if self.http_status is not None:
            parts.append(f"HTTP {self.http_status}")
        if self.window is not None:
            parts.append(describe_window(self.window))
        if self.call_id is not None:
            parts.append(f"callId {self.call_id!r}")
        head = f"[{self.kind}] {self.message}"
        text = head + (": " + ", ".join(parts) if parts else "")
        if self.hint:
            text += f". What to check: {self.hint}"
        return redact(text)

    @property
    def stops_run(self) -> bool:
        return self.kind in STOPS_RUN

    @property
    def brief(self) -> str:
        """A few words for a progress line: the code, the status, or the kind."""
        if self.code is not None:
            return f"API code {self.code}"
        if self.http_status is not None:
            return f"HTTP {self.http_status}"
        return self.kind

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __reduce__(self):  # keep exceptions picklable across Dagster's process boundary
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[CdrApiError], state: dict) -> CdrApiError:
    obj = cls.__new__(cls)
    Exception.__init__(obj, state.get("message", ""))
    obj.__dict__.update(state)
    return obj


class TransientApiError(CdrApiError):
    """Worth retrying: provider-side network/server errors, 429, 5xx, timeouts."""

    retryable = True
    kind = "transient"

    def __init__(self, *args, retry_after: float | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class TransportError(TransientApiError):
    kind = "transport"


class MalformedResponseError(TransientApiError):
    """A body that does not decode or parse; retried a bounded number of times, then fatal."""

    kind = "malformed-response"


class FatalApiError(CdrApiError):
    """Not worth retrying; ``kind`` says what the operator must look at (``configuration``,
    ``credentials``, ``deployment``, ``blocked``, ``tls``, ``unreachable``, ``request``,
    ``unknown-code``, ``response-too-large``, ``paging``)."""

    retryable = False
    kind = "fatal"

    def __init__(self, *args, kind: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if kind is not None:
            self.kind = kind


class RetriesExhaustedError(FatalApiError):
    """A transient failure that outlasted every attempt: the partition may succeed later."""

    kind = "retries-exhausted"

    def __init__(self, *args, attempts: int = 0, last: CdrApiError | None = None, **kw) -> None:
        super().__init__(*args, **kw)
        self.attempts = attempts
        self.last = last


def error_for_code(
    code: str,
    result_text: str | None,
    *,
    window: tuple[int, int] | None = None,
    call_id: str | None = None,
    http_status: int | None = None,
) -> CdrApiError:
    """Map a non-zero ``errorCode`` to its exception (unknown codes are fatal)."""
    info = ERROR_CODES.get(code)
    detail = one_line((result_text or "").strip())
    if info is None:
        return FatalApiError(
            f"the API answered an unknown error code; its text: {detail!r}",
            code=code,
            meaning="unknown code",
            hint="compare with the provider's documentation; the code is not retried",
            kind="unknown-code",
            window=window,
            call_id=call_id,
            http_status=http_status,
        )
    message = f"the API answered {info.meaning!r}" + (f" (text: {detail!r})" if detail else "")
    kind = {} if info.retryable else {"kind": info.kind}
    cls: type[CdrApiError] = TransientApiError if info.retryable else FatalApiError
    return cls(
        message,
        **kind,
        code=code,
        meaning=info.meaning,
        hint=info.hint,
        window=window,
        call_id=call_id,
        http_status=http_status,
    )
