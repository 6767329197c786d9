"""Provider text is data, never markup: each place people read it gets it escaped for that
place and capped, so a caller number, a callId or an error text from the provider can neither
ping a channel, draw an image, forge a table row or a log line, nor grow an event to megabytes.

One function per sink; each takes any value, makes it one line and caps it first."""

from __future__ import annotations

import re
import string
from typing import Any

CAP = 80  # characters of one provider string shown anywhere
MAX_VALUE = 100_000  # characters of one whole metadata value (the inline KPI chart is ~45k)
_PUNCTUATION = re.compile("([" + re.escape(string.punctuation) + "])")
_SPACE = re.compile(r"\s+")


def cap(text: Any, limit: int = CAP) -> str:
    """``text`` cut to ``limit`` characters, with a marker saying how much went."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[+{len(text) - limit} chars]"


def one_line(text: Any, limit: int = CAP) -> str:
    """Plain text for a log line or a check result: whitespace runs (newlines too) become one
    space, other unprintable characters (controls, bidi overrides) a visible escape, and the
    whole is capped."""
    flat = _SPACE.sub(" ", str(text))
    head = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in flat[:limit])
    return head if len(flat) <= limit else f"{head}…[+{len(flat) - limit} chars]"


def markdown(text: Any, limit: int = CAP) -> str:
    """Literal text inside markdown (a table cell too): every ASCII punctuation character is
    backslash-escaped, which CommonMark allows for all of them, so nothing is a link, an
    image, an HTML tag, emphasis, a cell border or an autolink."""
    return _PUNCTUATION.sub(r"\\\1", one_line(text, limit))


def slack(text: Any, limit: int = CAP) -> str:
    """Literal text inside a Slack message: Slack's own rule (``&``, ``<``, ``>`` as
    entities), so no ``<!channel>`` ping and no labelled link."""
    line = one_line(text, limit)
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
