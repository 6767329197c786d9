"""When a request is tried again, and after how long: a policy object on tenacity.

Only a transient error is retried (:class:`TransientApiError`: timeouts, refused connections,
429 and 5xx, provider codes -203 and -501, a malformed body); everything else is raised at
once. The wait is exponential with jitter (half to all of ``base * 2**(n - 1)``, capped), or
what the server asked in ``Retry-After`` (seconds or an HTTP date), capped alike.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime

import tenacity

from cdr_pipeline.api.errors import TransientApiError


def retry_after_seconds(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """A ``Retry-After`` header as seconds from now (RFC 9110: delay-seconds or an
    HTTP-date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an obsolete date form without a zone means GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now())


class RetryPolicy(tenacity.wait.wait_base):
    """How one client retries: ``attempts`` in all, the wait of each."""

    def __init__(
        self,
        attempts: int,
        base_s: float,
        max_s: float,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.attempts, self.base_s, self.max_s = attempts, base_s, max_s
        self.sleep = sleep
        self.rng = rng or random.Random()

    def __call__(self, state: tenacity.RetryCallState) -> float:
        """The wait before the next attempt."""
        failure = state.outcome.exception() if state.outcome else None
        asked = getattr(failure, "retry_after", None)
        if asked is not None:
            return min(self.max_s, asked)
        grown = min(self.max_s, self.base_s * 2 ** (state.attempt_number - 1))
        return grown * (0.5 + self.rng.random() / 2)

    def retrying(
        self,
        after: Callable[[tenacity.RetryCallState], None],
        before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
    ) -> tenacity.Retrying:
        """A fresh loop for one request; ``after`` sees every failed attempt, ``before_sleep``
        every one to be tried again, with its wait."""
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=self,
            retry=tenacity.retry_if_exception_type(TransientApiError),
            sleep=self.sleep,
            after=after,
            before_sleep=before_sleep,
        )
