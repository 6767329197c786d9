"""cdr-pipeline: the Tencent callback-call CDR API (getCdr) as validated, daily Parquet."""

__version__ = "0.1.0"
