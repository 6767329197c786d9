"""64-bit fingerprints of strings, computed over Arrow's buffers without Python objects.

Used to *group* (spill buckets, distinct counts), never to decide that two records are the
same: de-duplication always compares the real values.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_PRIME = 1099511628211  # FNV's 64-bit prime, as the base of a polynomial hash


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit reaches every output bit (buckets use the
    low bits)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def fingerprint(strings: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each string (null hashes like the empty string)."""
    arr = strings.combine_chunks() if isinstance(strings, pa.ChunkedArray) else strings
    if len(arr) == 0:
        return np.zeros(0, dtype=np.uint64)
    arr = pc.cast(pc.fill_null(arr, ""), pa.large_string())
    raw = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    first, last = int(raw[0]), int(raw[-1])
    data_buf = arr.buffers()[2]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8)[first:last] if data_buf else np.zeros(0, np.uint8)
    )
    offsets = raw - first
    lengths = np.diff(offsets)
    out = np.zeros(len(arr), dtype=np.uint64)
    filled = lengths > 0
    if data.size:
        pos = np.arange(data.size, dtype=np.int64) - np.repeat(offsets[:-1], lengths)
        with np.errstate(over="ignore"):
            powers = np.cumprod(np.full(64, _PRIME, dtype=np.uint64), dtype=np.uint64)
            weighted = data.astype(np.uint64) * powers[pos % 64]
            sums = np.add.reduceat(weighted, offsets[:-1][filled])
        out[filled] = sums
    with np.errstate(over="ignore"):
        return _mix(out ^ lengths.astype(np.uint64))


def bucket_key(strings: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A cheap 64-bit key from a string's length and its first, middle and last 8 bytes:
    enough to spread ids over spill buckets evenly (it only groups; equal strings get equal
    keys, and unequal ones that collide are still told apart by the real comparison)."""
    arr = strings.combine_chunks() if isinstance(strings, pa.ChunkedArray) else strings
    if len(arr) == 0:
        return np.zeros(0, dtype=np.uint64)
    arr = pc.cast(pc.fill_null(arr, ""), pa.large_string())
    raw = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    buffer = arr.buffers()[2]
    data = np.frombuffer(buffer, dtype=np.uint8) if buffer else np.zeros(1, np.uint8)
    data = np.concatenate([data, np.zeros(8, np.uint8)])  # room to read past the end
    starts, ends = raw[:-1], raw[1:]
    lengths = (ends - starts).astype(np.uint64)
    lanes = np.arange(8, dtype=np.int64)
    head = data[np.minimum(starts[:, None] + lanes, np.maximum(ends, starts + 1)[:, None] - 1)]
    tail = data[np.maximum(ends[:, None] - 8 + lanes, starts[:, None])]
    mid = (starts + ends) // 2 - 4
    middle = data[
        np.clip(mid[:, None] + lanes, starts[:, None], np.maximum(ends, starts + 1)[:, None] - 1)
    ]
    shifts = (lanes * 8).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = (head.astype(np.uint64) << shifts).sum(axis=1, dtype=np.uint64)
        t = (tail.astype(np.uint64) << shifts).sum(axis=1, dtype=np.uint64)
        m = (middle.astype(np.uint64) << shifts).sum(axis=1, dtype=np.uint64)
        return _mix(_mix(_mix(h ^ lengths) ^ t) ^ m)
