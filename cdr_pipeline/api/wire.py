"""The wire format: request bodies, decompression by content, response parsing.

Nothing here does I/O, so the transform can reuse :func:`decode_body` and
:func:`parse_document` on the raw layer without touching HTTP.
"""

from __future__ import annotations

import itertools
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cdr_pipeline.api.errors import FatalApiError, MalformedResponseError
from cdr_pipeline.api.spans import cdr_spans, parse_int

try:  # ISA-L inflates the same streams to the same bytes, faster (docs/performance.md)
    from isal import isal_zlib as _inflate_lib
except ImportError:  # pragma: no cover - a platform without an isal wheel
    _inflate_lib = zlib
INFLATE_ERRORS: tuple[type[Exception], ...] = tuple({zlib.error, _inflate_lib.error})

DEFAULT_MAX_BODY_BYTES = 256 * 1024 * 1024

ENCODING_EXT = {"zlib": "zlib", "gzip": "gz", "plain": "json"}


def encode_request(params: dict[str, str]) -> bytes:
    """Every parameter is a string on the wire; keys sorted so bodies are reproducible."""
    return json.dumps({k: str(v) for k, v in params.items()}, sort_keys=True).encode("utf-8")


def sniff_encoding(body: bytes) -> str:
    """Tell zlib, gzip and plain JSON apart by their first bytes, never by headers."""
    if len(body) >= 2:
        b0, b1 = body[0], body[1]
        if b0 == 0x1F and b1 == 0x8B:
            return "gzip"
        if (b0 & 0x0F) == 8 and (b0 >> 4) <= 7 and ((b0 << 8) | b1) % 31 == 0:
            return "zlib"
    return "plain"


_INFLATE_STEP = 1 << 20


def inflate(pieces: Iterable[bytes], *, max_bytes: int, chunk: int) -> Iterator[bytes]:
    """A body, arriving in ``pieces``, decoded at most ``chunk`` bytes at a time (a page larger
    than memory should hold at once); the cap, a broken and a truncated stream are errors."""
    pieces = iter(pieces)
    head = next(pieces, b"")
    encoding = sniff_encoding(head)
    total = 0
    if encoding == "plain":
        for piece in itertools.chain([head], pieces):
            total += len(piece)
            if total > max_bytes:
                raise FatalApiError(
                    f"response body of {total} bytes or more exceeds the cap of {max_bytes} bytes",
                    kind="response-too-large",
                )
            yield piece
        return
    if encoding == "gzip":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    else:
        inflater = _inflate_lib.decompressobj(zlib.MAX_WBITS)
    received = 0
    # the input a slice at a time: what is left of it is copied after every output chunk
    steps = itertools.chain.from_iterable(map(_steps, itertools.chain([head], pieces)))
    for piece in itertools.chain(steps, [b""]):
        data: bytes | memoryview = piece
        received += len(piece)
        while True:
            try:
                out = inflater.decompress(data, chunk)
            except INFLATE_ERRORS as exc:
                raise MalformedResponseError(f"broken {encoding} stream: {exc}") from None
            data, total = inflater.unconsumed_tail, total + len(out)
            if total > max_bytes:
                # the traceback keeps this frame: let the inflated bytes go first, or a bomb
                # answered to several workers is held once per worker until the run ends
                del out, data
                raise FatalApiError(
                    f"{encoding} body inflates past the cap of {max_bytes} bytes "
                    "(a decompression bomb or a far too large page)",
                    kind="response-too-large",
                )
            if out:
                yield out
            if inflater.eof:
                return
            if not data and len(out) < chunk:  # this slice is in, and all it gave is out
                break
    raise MalformedResponseError(f"truncated {encoding} stream ({received} bytes received)")


def _steps(piece: bytes) -> Iterator[memoryview]:
    view = memoryview(piece)
    return (view[at : at + _INFLATE_STEP] for at in range(0, len(piece), _INFLATE_STEP))


def decode_body(body: bytes, *, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> tuple[bytes, str]:
    """Return ``(json_bytes, encoding)``: the body decoded in one piece by :func:`inflate`, so
    a stream inflating past ``max_bytes`` is refused the same way."""
    decoded = b"".join(inflate([body], max_bytes=max_bytes, chunk=max_bytes + 1))
    return decoded, sniff_encoding(body)


@dataclass(frozen=True)
class Document:
    """A parsed, successful-or-not response document."""

    error_code: str
    result: str | None
    records: list[Any]
    offset: str | None
    raw: dict[str, Any]

    @property
    def truncated(self) -> bool:
        return more_follows(self.raw.get("offset"))


def more_follows(offset: Any) -> bool:
    """Whether an answer's ``offset`` is a cursor (more follows) or the end: null, empty,
    ``false`` and any spelling of zero (``0``, ``"0.0"``, ``"00"``) are the end; anything
    else is a cursor, sent back as it came."""
    if offset is None or offset is False:
        return False
    if isinstance(offset, (int, float)):
        return offset != 0
    text = str(offset).strip()
    if not text:
        return False
    try:
        return float(text) != 0
    except ValueError:
        return True


def parse_document(json_bytes: bytes) -> Document:
    """Parse a decoded body; structural problems are :class:`MalformedResponseError`. A
    record nested beyond the parser's depth is kept as :class:`Unreadable` (a reject for the
    validator), never a reason to refuse the page: fetching it again would not change it."""
    try:
        doc = json.loads(json_bytes, parse_int=parse_int)
    except RecursionError:
        doc = _parse_deep(json_bytes)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and the like
        snippet = json_bytes[:80].decode("utf-8", "replace")
        raise MalformedResponseError(
            f"body is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}); "
            f"it starts with {snippet!r}"
        ) from None
    if not isinstance(doc, dict):
        raise MalformedResponseError(
            f"body is a JSON {type(doc).__name__}, not an object with errorCode"
        )
    if "errorCode" not in doc:
        raise MalformedResponseError("body has no errorCode")
    code = doc["errorCode"]
    if isinstance(code, bool) or not isinstance(code, (str, int)):
        raise MalformedResponseError(f"errorCode is a {type(code).__name__}, not a string")
    code = str(code).strip()
    result = doc.get("result")
    result = None if result is None else str(result)
    offset = doc.get("offset")
    offset = None if offset is None else str(offset)
    records: list[Any] = []
    if code == "0":
        cdr = doc.get("cdr")
        if cdr is None:
            if not more_follows(doc.get("offset")):
                # never read as "no calls": a re-run would replace a good day with an empty one
                raise MalformedResponseError(
                    "a success answer without a cdr list and without a cursor for more"
                )
            cdr = []
        if not isinstance(cdr, list):
            raise MalformedResponseError(f"cdr is a JSON {type(cdr).__name__}, not a list")
        records = cdr
    return Document(code, result, records, offset, doc)


def _parse_deep(json_bytes: bytes) -> Any:
    """A body with an element too deep for the parser: its envelope, and each element of its
    ``cdr`` array read alone (the deep one as :class:`Unreadable`)."""
    spans = cdr_spans(json_bytes)
    if spans is None:
        raise MalformedResponseError("body is JSON nested too deeply to parse")
    try:
        doc = json.loads(json_bytes[: spans.opens + 1] + json_bytes[spans.closes :])
    except (ValueError, RecursionError):
        raise MalformedResponseError("body is JSON nested too deeply to parse") from None
    if not isinstance(doc, dict) or doc.get("cdr") != []:
        raise MalformedResponseError("body is JSON nested too deeply to parse")
    doc["cdr"] = [spans.element(json_bytes, i) for i in range(len(spans))]
    return doc
