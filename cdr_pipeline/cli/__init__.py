"""cdr-pipeline: materialize days of CDRs, print their KPIs, write a report, check the
settings, ask the getCdr API about one call or one window, or serve the built-in simulator.

The parser and ``main`` live here; the commands in ``days`` (materialize, kpis, report),
``api`` (check, fetch, lookup, simulate-api) and ``operate`` (config, prune)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from cdr_pipeline.api.errors import CdrApiError
from cdr_pipeline.cli.api import cmd_check, cmd_fetch, cmd_lookup, cmd_simulate
from cdr_pipeline.cli.days import cmd_kpis, cmd_materialize, cmd_report
from cdr_pipeline.cli.erase import cmd_erase, default_workers
from cdr_pipeline.cli.operate import _between, _limits, cmd_config, cmd_prune
from cdr_pipeline.layout import StorageError
from cdr_pipeline.settings import ConfigError, apply_dotenv, expanded_in_dotenv
from cdr_pipeline.store import StoreError


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every flag's default shown (unless it has none, or its help says it); descriptions kept
    as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cdr-pipeline")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


Command = Callable[[str, str], argparse.ArgumentParser]


def _simulator_command(command: Command) -> None:
    s = command("simulate-api", "serve the built-in getCdr simulator over HTTP")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    share = _between(0.0, 1.0, float)
    s.add_argument("--port", type=_between(0, 65535), default=8787, help="port to listen on")
    s.add_argument(
        "--seed",
        type=_between(0, 2**32 - 1),
        default=20190123,
        help="the same seed, the same calls",
    )
    s.add_argument(
        "--calls-per-day", type=_between(0, 50_000_000), default=2000, help="calls a day holds"
    )
    s.add_argument(
        "--page-size", type=_between(1, 1_000_000), default=1000, help="records per page at most"
    )
    s.add_argument("--fault-rate", type=share, default=0.0, help="share of requests that fail")
    s.add_argument(
        "--bad-record-rate", type=share, default=0.0, help="share of records that are rejects"
    )
    s.add_argument(
        "--duplicate-rate", type=share, default=0.0, help="share of records served twice"
    )
    s.add_argument("--ignore-cursor", action="store_true", help="answer every page as the first")
    s.add_argument(
        "--filter-on",
        choices=("start", "end"),
        default="start",
        help="the call time a query's window selects on",
    )
    s.add_argument(
        "--latency-ms",
        type=_between(0.0, 60_000.0, float),
        default=0.0,
        help="delay before every answer",
    )
    s.add_argument(
        "--timezone",
        default=os.environ.get("CDR_TIMEZONE", "Asia/Shanghai"),
        help="zone of the text times it serves",
    )
    s.add_argument("--app-id", default=None, help="require this appId (none: accept any)")
    s.add_argument("--api-id", default=None, help="require this id (none: accept any)")
    s.set_defaults(func=cmd_simulate)


def _operator_commands(command: Command) -> None:
    s = command("config", "print the effective settings and where each came from")
    s.add_argument("--env-example", action="store_true", help="print .env.example instead")
    s.add_argument("--markdown", action="store_true", help="print the operators' guide's table")
    s.set_defaults(func=cmd_config)

    s = command(
        "prune",
        "remove raw bodies older than CDR_RAW_RETENTION_DAYS (datasets stay), and clear days "
        "older than CDR_CLEAR_RETENTION_DAYS of clear numbers",
    )
    s.add_argument(
        "--keep-days",
        type=_between(*_limits("CDR_RAW_RETENTION_DAYS")),
        default=None,
        help="days of raw bodies to keep (default: the setting)",
    )
    s.add_argument(
        "--clear-days",
        type=_between(*_limits("CDR_CLEAR_RETENTION_DAYS")),
        default=None,
        help="days a day keeps its clear numbers (default: the setting; docs/privacy.md)",
    )
    s.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    s.set_defaults(func=cmd_prune)

    s = command(
        "erase",
        "remove a subscriber's records from every day (raw bodies, both zones, every "
        "aggregate), and from every later fetch of those days; --dry-run first",
    )
    s.add_argument(
        "number", help="the phone number, in any spelling (+86 136-..., 0086..., 136...)"
    )
    s.add_argument("--start", default=None, help="first day, YYYY-MM-DD (default: the first)")
    s.add_argument("--end", default=None, help="last day, YYYY-MM-DD (default: every later day)")
    s.add_argument(
        "--dry-run", action="store_true", help="list the days and counts, change nothing"
    )
    s.add_argument(
        "--workers",
        type=_between(1, 64),
        default=default_workers(),
        help="days erased at once, each worker a process of its own with about a day's "
        "build's memory (docs/privacy.md)",
    )
    s.set_defaults(func=cmd_erase)

    s = command("check", "send one request to the configured API and say what works or not")
    s.set_defaults(func=cmd_check)

    s = command("lookup", "ask the getCdr API (not the local data) for one call's CDR, as JSON")
    s.add_argument("call_id", help="the callId the callback request returned")
    s.set_defaults(func=cmd_lookup)

    s = command(
        "fetch", "ask the getCdr API for one window and print its pages' counts (no data is kept)"
    )
    s.add_argument("--start", required=True, help="epoch seconds, YYYY-MM-DD or ISO date-time")
    s.add_argument("--end", required=True, help="the same forms; local times in CDR_TIMEZONE")
    s.add_argument("--src", default=None, help="only this caller's CDRs")
    s.set_defaults(func=cmd_fetch)


def _day_commands(command: Command) -> None:
    """The commands over a range of days: materialize, kpis, report."""
    made = {}
    for name, func, text in (
        ("materialize", cmd_materialize, "materialize a range of days through Dagster"),
        ("kpis", cmd_kpis, "print the KPI table of a range of days"),
        ("report", cmd_report, "write a self-contained HTML report of a range of days"),
    ):
        s = made[name] = command(name, text)
        s.add_argument("--start", help="first day, YYYY-MM-DD")
        s.add_argument("--end", help="last day, YYYY-MM-DD (inclusive)")
        s.add_argument("--last", type=_between(1, 3660), help="the last N complete days instead")
        s.set_defaults(func=func)
    report, kpis, materialize = made["report"], made["kpis"], made["materialize"]
    report.add_argument(
        "--out",
        default=None,
        help="where to write the HTML (default: report.html in a local data directory, else "
        "in this folder)",
    )
    kpis.add_argument(
        "--format", choices=("table", "csv", "json"), default="table", help="output format"
    )
    materialize.add_argument(
        "--verbose",
        action="store_true",
        help="show each run's log (INFO and above) and a failure's stack trace",
    )
    materialize.add_argument(
        "--allow-shrink",
        action="store_true",
        help="publish a day even if it loses more valid calls than CDR_MAX_SHRINK allows",
    )
    materialize.add_argument(
        "--missing",
        action="store_true",
        help="the days of the last CDR_CATCHUP_DAYS that are missing or failed in the "
        "Dagster instance, as the catch-up sensor would (nothing else is re-run)",
    )


def build_parser() -> argparse.ArgumentParser:
    about = (__doc__ or "").split("\n\n")[0]  # the rest is for this code's readers
    p = argparse.ArgumentParser(prog="cdr-pipeline", description=about, formatter_class=_Help)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=_Help)

    _simulator_command(command)
    _operator_commands(command)
    _day_commands(command)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    exported = {k: v for k, v in os.environ.items() if k.startswith("CDR_")}
    args.dotenv = apply_dotenv()  # the same .env Dagster's commands read, over the environment
    args.shadowed = sorted(k for k in args.dotenv if k in exported and exported[k] != os.environ[k])
    args.expanded = expanded_in_dotenv()
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except CdrApiError as exc:
        print(f"API error: {exc}", file=sys.stderr)
        return 3
    except (OSError, StoreError, StorageError) as exc:  # a full disk, a link, a bad file
        print(f"storage error: {exc}", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
