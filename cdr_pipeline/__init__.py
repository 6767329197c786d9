"""cdr-pipeline: the Tencent callback-call CDR API (getCdr) as validated, daily Parquet."""

import os

# Arrow allocates with the C library's malloc, whose arenas a day's transform caps
# (memory.setup): a day's peak memory a third lower than on mimalloc, pyarrow's
# default, at the same speed (benchmarks/RESULTS.md). Arrow's C++ reads this once, when
# pyarrow loads, so it is set here, before the package imports pyarrow; an operator's own
# ARROW_DEFAULT_MEMORY_POOL wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

__version__ = "0.1.0"
