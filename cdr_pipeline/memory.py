"""How this process allocates and collects garbage: set once, when the first day is built
in it.

Arrow allocates with the C library's malloc (the package sets ``ARROW_DEFAULT_MEMORY_POOL``
before pyarrow loads) and glibc's malloc arenas are capped: a day's peak memory is about a
third lower than on mimalloc, pyarrow's default, at the same speed (benchmarks/RESULTS.md).
An operator's own ``ARROW_DEFAULT_MEMORY_POOL`` or ``MALLOC_ARENA_MAX`` wins.
"""

from __future__ import annotations

import ctypes
import gc
import os
from functools import cache

import pyarrow as pa

# glibc gives each thread that contends for malloc an arena of its own (up to eight per core),
# and what is freed in one stays mapped: two arenas held less at the peak at the same speed
# (docs/performance.md).
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)


def prefer_allocator() -> str:
    """Have Arrow allocate with the C library's malloc unless ``ARROW_DEFAULT_MEMORY_POOL``
    names another allocator (this also switches pyarrow's own default in a process that loaded
    pyarrow before the package); return the one in use."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL", "system") == "system":
        pa.set_memory_pool(pa.system_memory_pool())
    return pa.default_memory_pool().backend_name


def cap_malloc_arenas() -> bool:
    """Cap glibc's malloc arenas for this process; False where that is not glibc's to do or
    ``MALLOC_ARENA_MAX`` already decides."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS))
    except (OSError, AttributeError):  # not glibc: musl, macOS ...
        return False


def release() -> bool:
    """Hand the memory malloc holds freed back to the system (glibc's ``malloc_trim``),
    between passes of a day whose buffers another pass would not reuse (docs/performance.md);
    False where that is not glibc's to do."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False


def freeze_loaded() -> None:
    """Leave what the process holds now (its libraries, Dagster's definitions, which live as
    long as it does) out of the garbage collector's later passes, which otherwise walk it
    time and again while a day's footers and metadata are made (docs/performance.md,
    "Erasure")."""
    gc.collect()
    gc.freeze()


@cache
def setup() -> str:
    """The above, once per process; the allocator in use."""
    cap_malloc_arenas()
    freeze_loaded()
    return prefer_allocator()
