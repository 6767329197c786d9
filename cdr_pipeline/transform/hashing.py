"""64-bit fingerprints of strings, computed over Arrow's buffers without Python objects.

Used to *group* (spill buckets, distinct counts), never to decide that two records are the
same: de-duplication always compares the real values.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_OFFSET_TYPES = {pa.string(): np.int32, pa.binary(): np.int32, pa.large_string(): np.int64}
_PRIME = 1099511628211  # FNV's 64-bit prime, as the base of a polynomial hash


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit reaches every output bit (buckets use the
    low bits)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_INVERSE = pow(_PRIME, -1, 1 << 64)  # the prime is odd, so it has an inverse mod 2^64
_powers: tuple[np.ndarray, np.ndarray] = (np.ones(1, np.uint64), np.ones(1, np.uint64))


def _powers_upto(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^k and P^-k (mod 2^64) for k < n, computed once and grown when a longer buffer comes."""
    global _powers
    have = _powers
    if len(have[0]) < n:
        size = max(n, 1 << 20)
        with np.errstate(over="ignore"):
            up = np.full(size, _PRIME, dtype=np.uint64)
            down = np.full(size, _INVERSE, dtype=np.uint64)
            up[0] = down[0] = 1
            have = (np.cumprod(up, dtype=np.uint64), np.cumprod(down, dtype=np.uint64))
        _powers = have
    return have[0][:n], have[1][:n]


def string_layout(arr: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(the array, its value offsets as int64, its UTF-8 bytes) read off Arrow's buffers
    without copying the bytes; types without offsets (string views ...) are cast first."""
    if arr.type not in _OFFSET_TYPES:
        arr = pc.cast(arr, pa.large_string())
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=_OFFSET_TYPES[arr.type])
    offsets = offsets[arr.offset : arr.offset + len(arr) + 1].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf else np.zeros(0, np.uint8)
    return arr, offsets, data


def fingerprint(strings: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each string (null hashes like the empty string).

    The polynomial ``sum(byte[i] * P^i)`` of every string at once, from one running sum over
    the whole buffer: the slice of a string, multiplied by ``P^-start``, is its own
    polynomial wherever it sits (all arithmetic wraps mod 2^64)."""
    arr = strings.combine_chunks() if isinstance(strings, pa.ChunkedArray) else strings
    if len(arr) == 0:
        return np.zeros(0, dtype=np.uint64)
    arr, raw, buffer = string_layout(arr)
    first, last = int(raw[0]), int(raw[-1])
    data = buffer[first:last]
    offsets = raw - first
    up, down = _powers_upto(data.size + 1)
    starts = offsets[:-1]
    with np.errstate(over="ignore"):
        running = np.zeros(data.size + 1, dtype=np.uint64)
        np.cumsum(data * up[: data.size], out=running[1:])
        own = (running[offsets[1:]] - running[starts]) * down[starts]
        keys = _mix(own ^ np.diff(offsets).astype(np.uint64))
    if arr.null_count:  # a null hashes like the empty string (0), whatever its slot holds
        keys[~arr.is_valid().to_numpy(zero_copy_only=False)] = 0
    return keys
