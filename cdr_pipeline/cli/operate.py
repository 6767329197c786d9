"""The operator's commands: config (every setting and where it came from) and prune; and
the bounds of options, from the settings' declarations."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tabulate import tabulate

from cdr_pipeline.cli.days import _data_present
from cdr_pipeline.settings import ConfigError, knobs, load_settings


def _limits(env: str) -> tuple[Any, Any]:
    return next(k.limits for k in knobs() if k.env == env)


def _between(lo: float, hi: float, kind: type = int) -> Callable[[str], float]:
    """An argparse type: a number within finite bounds, or one plain line saying them."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            noun = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun} from {lo} to {hi}")
        return value

    return parse


def cmd_prune(args: argparse.Namespace) -> int:
    from cdr_pipeline.operations import prune_raw
    from cdr_pipeline.privacy import pseudonyms_of
    from cdr_pipeline.retention import clear_old_days

    settings = load_settings()
    _data_present(settings)
    ops, now = settings.operations, datetime.now(UTC)
    would = "would have " if args.dry_run else ""
    keep = ops.raw_retention_days if args.keep_days is None else args.keep_days
    if keep <= 0:
        print("nothing to prune: raw bodies are kept forever (CDR_RAW_RETENTION_DAYS=0)")
    else:
        done = prune_raw(settings.store, settings.tz, keep, now=now, dry_run=args.dry_run)
        print(would + done.said())
    clear = ops.clear_retention_days if args.clear_days is None else args.clear_days
    if clear > 0:
        p = pseudonyms_of(settings)
        if not p.enabled:
            raise ConfigError("--clear-days needs CDR_PSEUDONYM_KEY (docs/privacy.md)")
        cleared = clear_old_days(
            settings.store,
            settings.tz,
            clear,
            p,
            ops.clear_retention,
            now=now,
            dry_run=args.dry_run,
        )
        print(would + cleared.said())
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from cdr_pipeline import settings as declared

    if args.env_example:
        print(declared.env_example(), end="")
        return 0
    if args.markdown:
        print(declared.markdown_table(), end="")
        return 0
    loaded = load_settings()
    rows = []
    for k in knobs():
        value = getattr(loaded.of(k.model), k.field)
        source = "default"
        if (os.environ.get(k.env) or "").strip():
            source = ".env" if k.env in args.dotenv else "environment"
        if k.env in args.shadowed:
            source = ".env, over the exported value"
        if k.env in args.expanded:
            source += ", ${...} expanded"
        shown = "***" if k.secret and value else value
        rows.append([k.env, "—" if shown is None else shown, source])
    print(tabulate(rows, headers=["variable", "value", "from"], tablefmt="plain"))
    _say_shadowed(args)
    return 0


def _say_shadowed(args: argparse.Namespace) -> None:
    """Dagster's rules, kept by every command: ``.env`` wins over the shell's ``export``, and
    expands ``${...}`` in its values."""
    if args.shadowed:
        print(
            f"note: .env sets {', '.join(args.shadowed)} over the value exported in this shell "
            "(as Dagster's commands do, .env wins): edit .env, or remove the line there",
            file=sys.stderr,
        )
    if args.expanded:
        print(
            f"note: .env's {', '.join(args.expanded)} had ${{...}} expanded (as Dagster's "
            "commands do, quoted or not): to keep a value with ${ as written, remove it from "
            ".env and export it instead (the environment's values are never expanded)",
            file=sys.stderr,
        )
