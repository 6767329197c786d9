"""What ``dg`` and ``dagster`` load: every definition in ``cdr_pipeline/defs/``.

Importing this module builds nothing; the definitions are built when a tool calls ``defs``."""

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
