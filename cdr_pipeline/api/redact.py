"""The secret redactor: every text that leaves the client passes through here.

Credentials are registered when a client is made; from then on exception messages (the
provider's own error text, the first bytes of a body that is not JSON, a transport error) and
log records of httpx, httpcore and this package's loggers have every form of them (as typed,
URL-encoded, JSON-escaped) replaced by ``***``. Settings refuse credentials shorter than
:data:`MIN_SECRET_LENGTH`, which would make redaction destroy ordinary text.
"""

from __future__ import annotations

import json
import logging
import threading
from urllib.parse import quote, quote_plus

REDACTED = "***"
MIN_SECRET_LENGTH = 4

_SECRETS: set[str] = set()
_LOCK = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a credential, in the forms a URL or a JSON body may carry it too (httpx logs
    the encoded query string)."""
    if not value:
        return
    forms = {value, quote(value, safe=""), quote(value), quote_plus(value)}
    forms.add(json.dumps(value)[1:-1])
    with _LOCK:
        _SECRETS.update(f for f in forms if len(f) >= MIN_SECRET_LENGTH)


def redact(text: str) -> str:
    if not _SECRETS:
        return text
    with _LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a log record so no registered secret survives, then lets it through."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _SECRETS:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken record: let logging report it as usual
            return True
        clean = redact(message)
        if clean != message:
            record.msg = clean
            record.args = None
        return True


_FILTER = RedactingFilter()
# A logger's filters see only the records made on that logger, not its children's: each of
# these gets its own (httpx logs every request URL, ``id=`` and all, at INFO).
_HTTP_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
)


def get_logger(name: str) -> logging.Logger:
    """A logger whose records are redacted: what every module of the client logs with."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


def install_log_redaction() -> None:
    for name in _HTTP_LOGGERS:
        get_logger(name)
