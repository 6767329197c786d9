"""Phone numbers as people may see them: a keyed token and a masked form, never the number.

With a key (``CDR_PSEUDONYM_KEY``), a number's token is HMAC-SHA256 under the key of its E.164
form where it has one (else of its text without separators), the first 96 bits in base32: the
same number gets the same token on every day and every run, and without the key a token can
be neither reversed nor recomputed from a list of candidate numbers. 96 bits keep a collision
among a billion numbers below one in 10^11. The masked form keeps the country code, the first
three and the last four digits (``+86 136****4568``), for a person to recognise a number they
already know.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from functools import lru_cache

import phonenumbers

from cdr_pipeline.api.redact import register_secret
from cdr_pipeline.settings import Settings

MIN_KEY_LENGTH = 32
TOKEN_BITS = 96
_SEPARATORS = re.compile(r"[\s\-().]")


def canonical(number: str, region: str = "CN") -> str:
    """The form a token is made of: E.164 where libphonenumber reads the number as possible,
    else its text without separators."""
    text = _SEPARATORS.sub("", number.strip())
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return text
    if not phonenumbers.is_possible_number(parsed):
        return text
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def mask(number: str, region: str = "CN") -> str:
    """``+86 136****4568``: the country code, the first three and the last four digits; a
    number too short to keep seven of its digits shows only its last two, and text that is not
    a number shows nothing of itself."""
    form = canonical(number, region)
    digits = form.lstrip("+")
    if not digits.isdigit():
        return "***"
    code = ""
    if form.startswith("+"):
        try:
            cc = phonenumbers.parse(form).country_code
            code, digits = f"+{cc} ", digits[len(str(cc)) :]
        except phonenumbers.NumberParseException:
            pass
    if len(digits) >= 9:
        return f"{code}{digits[:3]}{'*' * (len(digits) - 7)}{digits[-4:]}"
    return f"{code}{'*' * max(len(digits) - 2, 1)}{digits[-2:]}"


class Pseudonyms:
    """Tokens and masks under one key; without a key, numbers are shown as they are."""

    def __init__(self, key: str | None, region: str = "CN") -> None:
        if key is not None and len(key.encode()) < MIN_KEY_LENGTH:
            raise ValueError(f"the pseudonym key must be at least {MIN_KEY_LENGTH} bytes")
        self._key = key.encode() if key else None
        self.region = region
        if key:
            register_secret(key)  # never in a log, an error or metadata
        self._token = lru_cache(maxsize=1 << 16)(self._compute)

    def __repr__(self) -> str:
        return f"Pseudonyms(key={'<set>' if self._key else None})"

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def _compute(self, number: str) -> str:
        assert self._key is not None
        digest = hmac.new(self._key, canonical(number, self.region).encode(), hashlib.sha256)
        return base64.b32encode(digest.digest()[: TOKEN_BITS // 8]).decode().lower().rstrip("=")

    def token(self, number: str) -> str:
        if self._key is None:
            raise ValueError("no pseudonym key is set (CDR_PSEUDONYM_KEY)")
        return self._token(number)

    def shown(self, number: str | None) -> str | None:
        """How a number is shown to people: masked with its token when a key is set."""
        if number is None or self._key is None:
            return number
        return f"{mask(number, self.region)} ({self.token(number)})"


CLEAR = Pseudonyms(None)


def pseudonyms_of(settings: Settings) -> Pseudonyms:
    """The deployment's: its key, and the region its national numbers are read in."""
    return Pseudonyms(settings.storage.pseudonym_key, settings.analytics.default_region)
