"""Exact questions about millions of 64-bit keys (which repeat, how many differ) in flat
memory."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

KEYS_PER_PART = 1 << 20  # keys of one partition on disk: 8 MB in memory at once


class KeyLog:
    """64-bit keys of a day's values, to find the ones seen more than once or count the
    distinct ones.

    Given a folder, the keys go to disk in partitions by their top bits, so either question
    holds one partition in memory at a time: memory stays flat however many calls the day has
    (in memory, five million keys and their sort take 80 MB). Keys must be well mixed."""

    def __init__(
        self,
        expected: int = 0,
        folder: Path | None = None,
        keys_per_part: int | None = None,
        name: str = "keys",
    ) -> None:
        keys_per_part = keys_per_part or KEYS_PER_PART
        self.count = 0
        self._memory: list[np.ndarray] = []
        self._paths: list[Path] = []
        self._files: list[Any] = []
        self._bits = 0
        if folder is not None:
            self._bits = max(0, math.ceil(math.log2(max(1.0, expected / keys_per_part))))
            self._paths = [folder / f"{name}-{i:05d}.u64" for i in range(1 << self._bits)]
            self._files = [open(path, "wb") for path in self._paths]  # noqa: SIM115

    def add(self, keys: np.ndarray) -> None:
        self.count += len(keys)
        if not self._files:
            self._memory.append(keys)
        elif self._bits == 0:
            self._files[0].write(keys.tobytes())
        else:
            part = (keys >> np.uint64(64 - self._bits)).astype(np.intp)
            order = np.argsort(part, kind="stable")
            ordered = keys[order]
            start = 0
            for i, n in enumerate(np.bincount(part, minlength=len(self._files))):
                if n:
                    self._files[i].write(ordered[start : start + n].tobytes())
                    start += n

    def repeated(self) -> np.ndarray:
        """Every key seen more than once, sorted (partitions are in key order)."""
        found = [np.zeros(0, dtype=np.uint64)]
        for keys in self._partitions():
            keys.sort()  # in place: no second copy
            found.append(np.unique(keys[1:][keys[1:] == keys[:-1]]))
        return np.concatenate(found)

    def distinct(self) -> int:
        """How many different keys were added."""
        total = 0
        for keys in self._partitions():
            if keys.size:
                keys.sort()
                total += 1 + int(np.count_nonzero(keys[1:] != keys[:-1]))
        return total

    def _partitions(self) -> Iterator[np.ndarray]:
        if not self._files:
            keys = np.concatenate(self._memory) if self._memory else np.zeros(0, np.uint64)
            self._memory = []
            yield keys
            return
        self.close()
        for path in self._paths:
            keys = np.fromfile(path, dtype=np.uint64)
            path.unlink()
            yield keys

    def close(self) -> None:
        for fh in self._files:
            fh.close()
