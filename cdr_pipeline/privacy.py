"""Phone numbers as people may see them: a keyed token and a masked form, never the number.

A number's *canonical form* is its E.164 form where libphonenumber reads it as possible (the
``*_e164`` column of ``cdr``), else its text without the contract's separators: every spelling
of one number has one canonical form. Its **token** is a keyed pseudorandom function of that
form under ``CDR_PSEUDONYM_KEY``, 96 bits as 24 hex digits: the same number gets
the same token on every day and every run, a collision among a billion numbers has odds below
one in 10^11, and without the key a token can be neither reversed nor recomputed from a list of
candidate numbers.

The function is AES-256 CBC-MAC over the form padded to 32 bytes (zeros, then its length in
the last byte), under a key derived from the secret with HMAC-SHA256; a form longer than 31
bytes (never a phone number) is HMAC-SHA256 of its text. CBC-MAC over messages of one fixed
length is a PRF as strong as AES-256; unlike one HMAC call per number, it runs over a whole
column in two calls of the cipher (docs/privacy.md).

The **masked form** keeps the country code, the first three and the last four digits
(``+86 136****4568``), for a person to recognise a number they already know.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cdr_pipeline.api.redact import register_secret
from cdr_pipeline.dictionary import NUMBER, PERSONAL, described, shared_meanings
from cdr_pipeline.settings import Settings
from cdr_pipeline.transform.phones import normalise, parse_number

MIN_KEY_LENGTH = 32
TOKEN_BYTES = 12  # 96 bits: 24 hex digits (safe in markdown, Slack, HTML and file names)
_BLOCK = 32  # the padded form: two AES blocks
_E164 = 16  # + and at most 15 digits
_CALLING_CODES = {
    n: pa.array(
        sorted(str(c) for c in phonenumbers.COUNTRY_CODE_TO_REGION_CODE if len(str(c)) == n)
    )
    for n in (1, 2, 3)
}


def canonical(number: str, region: str = "CN") -> str:
    """The form a token is made of: the E.164 form ``cdr`` gives the number, else its text
    without separators (a leading 00 read as +)."""
    text = normalise(number)
    return parse_number(text, region).e164 or text


def canonical_column(raw: pa.Array, e164: pa.Array | None, region: str = "CN") -> pa.Array:
    """:func:`canonical` of a column of numbers, from its E.164 column where it has one (the
    enrichment's, computed once); empty or null numbers give null."""
    if isinstance(raw, pa.ChunkedArray):
        raw = raw.combine_chunks()
    if e164 is None:  # a few rows (a day's flagged callers): read one by one
        forms = [None if n is None else canonical(n, region) for n in raw.to_pylist()]
        out = pa.array(forms, pa.string())
    else:
        if isinstance(e164, pa.ChunkedArray):
            e164 = e164.combine_chunks()
        out = e164
        if e164.null_count:
            missing = pc.is_null(e164)
            text = pc.replace_substring_regex(pc.filter(raw, missing), r"[ \t\-()]", "")
            plus = pc.binary_join_element_wise("+", pc.utf8_slice_codeunits(text, 2), "")
            text = pc.if_else(pc.starts_with(text, "00"), plus, text)
            out = pc.replace_with_mask(e164, missing, text)
    return pc.if_else(pc.equal(out, ""), pa.scalar(None, pa.string()), out)


def _hex(mac: np.ndarray) -> bytes:
    return np.ascontiguousarray(mac[:, :TOKEN_BYTES]).tobytes().hex().encode()


def _fixed(texts: pa.Array, width: int, pad: str) -> np.ndarray:
    """ASCII texts of at most ``width`` bytes as a (rows, width) array of bytes, padded."""
    padded = pc.utf8_rpad(texts, width, pad)
    start = np.frombuffer(padded.buffers()[1], np.int32, 1, padded.offset)[0]
    data = np.frombuffer(padded.buffers()[2], np.uint8, len(texts) * width, start)
    return data.reshape(len(texts), width)


def _strings(chars: bytes, width: int, valid: np.ndarray) -> pa.Array:
    """Strings of one ``width`` from their bytes end to end; null where not ``valid``."""
    n = len(valid)
    offsets = np.arange(0, width * n + 1, width, dtype=np.int32)
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    buffers = [bitmap, pa.py_buffer(offsets), pa.py_buffer(chars)]
    return pa.Array.from_buffers(pa.string(), n, buffers, null_count=int(n - valid.sum()))


class Pseudonyms:
    """Tokens and masks under one key; without a key, numbers are shown as they are."""

    def __init__(self, key: str | None, region: str = "CN") -> None:
        if key is not None and len(key.encode()) < MIN_KEY_LENGTH:
            raise ValueError(f"the pseudonym key must be at least {MIN_KEY_LENGTH} bytes")
        self._key = key.encode() if key else None
        self.region = region
        if key:
            register_secret(key)  # never in a log, an error or metadata
        self._token = lru_cache(maxsize=1 << 16)(self._one)

    def __repr__(self) -> str:
        return f"Pseudonyms(key={'<set>' if self._key else None})"

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def _derived(self, purpose: bytes) -> bytes:
        if self._key is None:
            raise ValueError("no pseudonym key is set (CDR_PSEUDONYM_KEY)")
        return hmac.digest(self._key, b"cdr-pipeline/" + purpose, "sha256")

    @property
    def key_id(self) -> str:
        """Names the key without revealing it: an erasure kept under one key is refused
        under another (its tokens would no longer match)."""
        return self._derived(b"key-id")[:6].hex()

    def tokens(self, forms: pa.Array) -> pa.Array:
        """The token of each canonical form (:func:`canonical_column`); null stays null."""
        if isinstance(forms, pa.ChunkedArray):
            forms = forms.combine_chunks()
        n = len(forms)
        if n == 0:
            return pa.array([], pa.string())
        forms = forms.fill_null("")
        lengths = pc.binary_length(forms).to_numpy(zero_copy_only=False)
        # ascii forms of at most 31 bytes (every phone number): padded in bulk
        odd = (lengths >= _BLOCK) | ~pc.string_is_ascii(forms).to_numpy(zero_copy_only=False)
        plain = pc.if_else(pa.array(odd), "", forms) if odd.any() else forms
        block = np.empty((n, _BLOCK), np.uint8)
        block[:, :-1] = _fixed(plain, _BLOCK - 1, "\0")
        block[:, -1] = np.where(odd, 0, lengths)  # the length makes the padding reversible
        for i in np.flatnonzero(odd & (lengths < _BLOCK)):  # short non-ascii text, rare
            data = forms[int(i)].as_py().encode()
            block[i] = np.frombuffer(data.ljust(_BLOCK - 1, b"\0") + bytes([len(data)]), np.uint8)
        long = lengths >= _BLOCK
        aes = Cipher(algorithms.AES(self._derived(b"token/aes-256")), modes.ECB()).encryptor()
        first = np.frombuffer(aes.update(block[:, :16].tobytes()), np.uint8).reshape(n, 16)
        mac = np.frombuffer(aes.update((first ^ block[:, 16:]).tobytes()), np.uint8)
        mac = mac.reshape(n, 16).copy()
        for i in np.flatnonzero(long):  # never a phone number: HMAC, one by one
            text = forms[int(i)].as_py().encode()
            mac[i, :TOKEN_BYTES] = np.frombuffer(
                hmac.digest(self._key or b"", text, "sha256")[:TOKEN_BYTES], np.uint8
            )
        return _strings(_hex(mac), 2 * TOKEN_BYTES, lengths > 0)

    def _one(self, number: str) -> str | None:
        """:meth:`tokens` of one number, without building a column (the same function)."""
        data = canonical(number, self.region).encode()
        if not data:
            return None
        if len(data) >= _BLOCK:
            return hmac.digest(self._key or b"", data, "sha256")[:TOKEN_BYTES].hex()
        block = data.ljust(_BLOCK - 1, b"\0") + bytes([len(data)])
        aes = Cipher(algorithms.AES(self._derived(b"token/aes-256")), modes.ECB()).encryptor()
        first = aes.update(block[:16])
        mac = aes.update(bytes(a ^ b for a, b in zip(first, block[16:], strict=True)))
        return mac[:TOKEN_BYTES].hex()

    def token(self, number: str) -> str:
        token = self._token(number)
        if token is None:
            raise ValueError("an empty number has no token")
        return token

    def masks(self, raw: pa.Array, e164: pa.Array) -> pa.Array:
        """:func:`mask` of each number, from its E.164 column where it has one."""
        return mask_column(raw, e164, self.region)

    def shown(self, number: str | None) -> str | None:
        """How a number is shown to people: masked with its token when a key is set."""
        if number is None or self._key is None:
            return number
        return f"{mask(number, self.region)} ({self.token(number)})"


def mask(number: str, region: str = "CN") -> str:
    """``+86 136****4568``: the country code, the first three and the last four digits; a
    number too short to keep seven of its digits shows only its last two, and text that is not
    a number shows nothing of itself."""
    form = canonical(number, region)
    digits = form.lstrip("+")
    if not digits.isdigit() or not digits.isascii():
        return "***"
    code = ""
    if form.startswith("+"):
        try:
            cc = phonenumbers.parse(form).country_code
            code, digits = f"+{cc} ", digits[len(str(cc)) :]
        except phonenumbers.NumberParseException:
            pass
    return code + _masked_digits(digits)


def _masked_digits(digits: str) -> str:
    if len(digits) >= 9:
        return f"{digits[:3]}{'*' * (len(digits) - 7)}{digits[-4:]}"
    return f"{'*' * max(len(digits) - 2, 1)}{digits[-2:]}"


def _code_table(size: int) -> np.ndarray:
    table = np.zeros(10**size, bool)
    table[[c for c in phonenumbers.COUNTRY_CODE_TO_REGION_CODE if len(str(c)) == size]] = True
    return table


_CODES = {size: _code_table(size) for size in (1, 2, 3)}


def _bulk_masks(e164: pa.Array) -> pa.Array:
    """:func:`mask` of E.164 numbers with a national part of three digits or more, written
    in bulk on a (rows, 17) array of bytes (a mask is as long as its number, plus the space
    after the country code); null for the rest."""
    n = len(e164)
    if n == 0:
        return pa.array([], pa.string())
    length = pc.utf8_length(e164).to_numpy(zero_copy_only=False)
    ok = ~np.isnan(length) if length.dtype.kind == "f" else np.ones(n, bool)
    length = np.nan_to_num(length).astype(np.int64)
    ok &= length <= _E164
    number = _fixed(pc.if_else(pa.array(ok), e164, ""), _E164, "0")
    head = number[:, 1:4].astype(np.int64) - 48
    c3 = np.clip(head[:, 0] * 100 + head[:, 1] * 10 + head[:, 2], 0, 999)
    code = np.select(
        [_CODES[1][c3 // 100], _CODES[2][c3 // 10], _CODES[3][c3]], [1, 2, 3], default=0
    )
    national = length - 1 - code
    ok &= (code > 0) & (national >= 3)
    out = np.full((n, _E164 + 1), ord("#"), np.uint8)  # "#": the padding, trimmed below
    # numbers of one length and one calling code are masked as one block, column by column
    shape = np.where(ok, length * 4 + code, 0)
    order = np.argsort(shape, kind="stable")
    kinds, starts = np.unique(shape[order], return_index=True)
    for kind, rows in zip(kinds, np.split(order, starts[1:]), strict=True):
        if not kind:
            continue
        size, k = divmod(int(kind), 4)
        nat = size - 1 - k
        low, high = (3, nat - 4) if nat >= 9 else (0, nat - 2)
        src = number[rows]
        part = out[rows]
        part[:, : 1 + k] = src[:, : 1 + k]
        part[:, 1 + k] = ord(" ")
        part[:, 2 + k : size + 1] = src[:, 1 + k : size]
        part[:, 2 + k + low : 2 + k + high] = ord("*")
        out[rows] = part
    offsets = np.arange(0, (_E164 + 1) * n + 1, _E164 + 1, dtype=np.int32)
    masks = pa.Array.from_buffers(
        pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(out.tobytes())]
    )
    return pc.if_else(
        pa.array(ok), pc.utf8_rtrim(masks, characters="#"), pa.scalar(None, pa.string())
    )


def mask_column(raw: pa.Array, e164: pa.Array | None, region: str = "CN") -> pa.Array:
    """:func:`mask` of a column: E.164 numbers in bulk, the rest (odd text, short numbers)
    one distinct value at a time; empty or null numbers give null."""
    if isinstance(raw, pa.ChunkedArray):
        raw = raw.combine_chunks()
    if isinstance(e164, pa.ChunkedArray):
        e164 = e164.combine_chunks()
    masks = pa.nulls(len(raw), pa.string()) if e164 is None else _bulk_masks(e164)
    odd = pc.and_(pc.is_null(masks), pc.is_valid(raw))
    if pc.any(odd).as_py():
        values = pc.unique(pc.filter(raw, odd))
        masked = pa.array([mask(v, region) if v else None for v in values.to_pylist()], pa.string())
        masks = pc.if_else(odd, pc.take(masked, pc.index_in(raw, value_set=values)), masks)
    return masks


def shared_schema(schema: pa.Schema, dataset: str) -> pa.Schema:
    """``dataset``'s schema in the shared zone: each NUMBER column gives way to its token and
    masked form, each DROPPED column is left out (:data:`dictionary.PERSONAL`)."""
    personal = PERSONAL.get(dataset, {})
    fields: list[pa.Field] = []
    for f in schema:
        kind = personal.get(f.name)
        if kind == NUMBER:
            fields += [pa.field(name, pa.string()) for name in shared_meanings(f.name)]
        elif kind is None:
            fields.append(f)
    return described(pa.schema(fields, metadata=schema.metadata), dataset)


def share_reads(schema: pa.Schema, dataset: str) -> list[str]:
    """The columns of ``dataset`` that :func:`share` reads (the DROPPED ones it does not)."""
    personal = PERSONAL.get(dataset, {})
    e164 = {f"{name}_e164" for name, kind in personal.items() if kind == NUMBER}
    return [f.name for f in schema if personal.get(f.name) in (None, NUMBER) or f.name in e164]


# Rows given their tokens and masks at once: their scratch arrays, freed but kept by the
# allocator, set the shared zone's peak memory (docs/performance.md).
SHARE_ROWS = 16_384


def share(table: pa.Table, dataset: str, pseudonyms: Pseudonyms) -> pa.Table:
    """``table`` as the shared zone holds it (:func:`shared_schema`): no clear number."""
    personal = PERSONAL.get(dataset)
    if not personal:
        return table
    columns: list[pa.Array | pa.ChunkedArray] = []
    for f in table.schema:
        kind = personal.get(f.name)
        if kind == NUMBER:
            read = f"{f.name}_e164"
            e164 = table.column(read) if read in table.schema.names else None
            tokens, masks = [], []
            for start in range(0, max(len(table), 1), SHARE_ROWS):
                raw = table.column(f.name).slice(start, SHARE_ROWS)
                e = None if e164 is None else e164.slice(start, SHARE_ROWS)
                tokens.append(pseudonyms.tokens(canonical_column(raw, e, pseudonyms.region)))
                masks.append(mask_column(raw, e, pseudonyms.region))
            columns += [pa.chunked_array(tokens), pa.chunked_array(masks)]
        elif kind is None:
            columns.append(table.column(f.name))
    return pa.Table.from_arrays(columns, schema=shared_schema(table.schema, dataset))


CLEAR = Pseudonyms(None)


def pseudonyms_of(settings: Settings) -> Pseudonyms:
    """The deployment's: its key, and the region its national numbers are read in."""
    return Pseudonyms(settings.storage.pseudonym_key, settings.storage.default_region)


Shown = Callable[[str | None], str | None]
