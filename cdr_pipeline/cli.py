"""cdr-pipeline: materialize days of CDRs, print their KPIs, write a report, check the
settings, ask the getCdr API about one call or one window, or serve the built-in simulator."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from tabulate import tabulate

from cdr_pipeline.api.errors import CdrApiError, RetriesExhaustedError
from cdr_pipeline.api.redact import MIN_SECRET_LENGTH
from cdr_pipeline.layout import StorageError, day_exists, parse_day, state_key
from cdr_pipeline.settings import (
    ConfigError,
    Settings,
    apply_dotenv,
    dagster_home,
    expanded_in_dotenv,
    knobs,
    load_settings,
)
from cdr_pipeline.store import StoreError
from cdr_pipeline.text import one_line


def _client(settings: Settings):
    """The same resource the assets use, given the credentials' values."""
    from cdr_pipeline.resources import api_resource

    if why := settings.project.no_api():
        raise ConfigError(why)
    return api_resource(settings).open_client(settings.timezone)


def _instant(text: str, tz: ZoneInfo) -> int:
    """Epoch seconds from epoch digits, YYYY-MM-DD (local midnight) or an ISO date-time."""
    if text.isdigit():
        return int(text)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"cannot read {text!r} as epoch seconds, a date or a date-time") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return int(value.timestamp())


def cmd_simulate(args: argparse.Namespace) -> int:
    from cdr_pipeline.simulator import SimConfig, serve

    config = SimConfig(
        seed=args.seed,
        calls_per_day=args.calls_per_day,
        page_size=args.page_size,
        honour_cursor=not args.ignore_cursor,
        filter_on=args.filter_on,
        timezone=args.timezone,
        fault_rate=args.fault_rate,
        bad_record_rate=args.bad_record_rate,
        duplicate_rate=args.duplicate_rate,
        app_id=args.app_id,
        api_id=args.api_id,
        latency_s=args.latency_ms / 1000.0,
    )
    server = serve(config, args.host, args.port)
    print(f"getCdr simulator listening on {server.url}", flush=True)
    print(
        "set CDR_API_URL to that address, and CDR_API_ID and CDR_APP_ID to the values of "
        f"--api-id and --app-id (else any of at least {MIN_SECRET_LENGTH} characters, e.g. "
        "sim-api-id and sim-app-id); Ctrl-C stops it",
        flush=True,
    )
    try:
        server._thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def cmd_lookup(args: argparse.Namespace) -> int:
    if not args.call_id.strip():
        raise SystemExit("give the callId to look up (the callback request returned it)")
    settings = load_settings()
    with _client(settings) as client:
        record = client.lookup(args.call_id)
    if record is None:
        print(f"callId {args.call_id!r} not found (API code -201)", file=sys.stderr)
        return 1
    print(json.dumps(record, indent=2, ensure_ascii=False))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    settings = load_settings()
    start, end = _instant(args.start, settings.tz), _instant(args.end, settings.tz)
    if start > end:
        raise SystemExit(f"--start {args.start} is after --end {args.end}")
    total_records = total_pages = 0
    with _client(settings) as client:
        for page in client.query_window(start, end, args.src):
            total_pages += 1
            total_records += page.record_count
            print(
                f"page {total_pages:4d}  window {page.window[0]}..{page.window[1]}  "
                f"records {page.record_count:6d}  {page.encoding:5s} {len(page.body):9d} bytes  "
                f"attempts {page.attempts}  cursor {page.cursor_sent or '-'} -> "
                f"{page.cursor_received or '-'}"
            )
        stats = client.stats
    print(
        f"total: {total_records} records in {total_pages} pages; "
        f"{stats.get('requests', 0)} requests, {stats.get('retries', 0)} retries, "
        f"{stats.get('window_splits', 0)} window splits"
    )
    return 0


def _date(text: str, flag: str) -> date:
    try:
        return parse_day(text)
    except ValueError as exc:
        raise SystemExit(f"{flag} {exc}") from None


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


def _day_range(args: argparse.Namespace, settings: Settings) -> list[str]:
    today = datetime.now(settings.tz).date()
    if args.last and (args.start or args.end):
        raise SystemExit("give --start and --end, or --last, not both")
    if args.last:
        end = today - timedelta(days=1)
        start = end - timedelta(days=args.last - 1)
    else:
        if not (args.start and args.end):
            raise SystemExit("give --start and --end (YYYY-MM-DD), or --last N")
        start, end = _date(args.start, "--start"), _date(args.end, "--end")
    if start > end:
        raise SystemExit(f"--start {start} is after --end {end}")
    if end >= today:
        raise SystemExit(f"{end} is not complete yet in {settings.timezone} (today is {today})")
    first = parse_day(settings.start_date)
    if start < first:
        demo = " (the demo's partitions: its last 30 days)" if settings.uses_simulator else ""
        raise SystemExit(f"{start} is before CDR_START_DATE ({first}){demo}")
    days = [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
    for day in [d for d in days if not day_exists(d, settings.tz)]:
        print(f"{day} never existed in {settings.timezone} (the zone skipped it): left out")
        days.remove(day)
    if not days:
        raise SystemExit("no day of that range exists in " + settings.timezone)
    return days


def _missing_days(settings: Settings) -> list[str]:
    """What the catch-up sensor would run now, from the same instance."""
    import dagster as dg

    from cdr_pipeline.defs.partitions import partitions_for
    from cdr_pipeline.defs.sensors import partition_status
    from cdr_pipeline.operations import catch_up_plan, complete_days

    window = complete_days(
        datetime.now(UTC), settings.tz, settings.operations.catchup_days, settings.start_date
    )
    with dg.DagsterInstance.get() as instance:
        status = partition_status(instance, window, partitions_for(settings))
        days = catch_up_plan(window, status)
    print(f"{len(days)} of the last {len(window)} days are missing or failed")
    return days


def cmd_prune(args: argparse.Namespace) -> int:
    from cdr_pipeline.operations import prune_raw

    settings = load_settings()
    _data_present(settings)
    keep = settings.operations.raw_retention_days if args.keep_days is None else args.keep_days
    if keep <= 0:
        print("nothing to prune: raw bodies are kept forever (CDR_RAW_RETENTION_DAYS=0)")
        return 0
    done = prune_raw(settings.store, settings.tz, keep, now=datetime.now(UTC), dry_run=args.dry_run)
    print(("would have " if args.dry_run else "") + done.said())
    return 0


LOCAL_INSTANCE = """\
# A local Dagster instance of `make run`, `make ui` and `cdr-pipeline materialize` (the demo's
# in .dagster_home/demo, the real API's in .dagster_home/live): runs, event logs and schedule
# state in SQLite under this folder. Runs log to the console at INFO (Dagster's default, DEBUG,
# prints ~30 lines a day); the UI's event log keeps every level. `nux` is the UI's first-visit
# pop-up, which would cover the page `make ui` opens on.
python_logs:
  python_log_level: INFO
nux:
  enabled: false
"""


def local_home(demo: bool | None = None) -> Path:
    """``DAGSTER_HOME`` (unless set, the demo's or the live folder, per ``CDR_SIMULATOR``),
    with the local instance config when it has none; Dagster's one-time telemetry notice is
    printed here, before any progress bar."""
    if demo is None:
        demo = load_settings().uses_simulator
    home = dagster_home(demo)
    os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() or not config.read_text().strip():
        config.write_text(LOCAL_INSTANCE)
    telemetry = (yaml.safe_load(config.read_text()) or {}).get("telemetry") or {}
    if telemetry.get("enabled", True):
        from dagster_shared.telemetry import get_or_set_instance_id

        # Dagster's notice (18 lines and a Slack invitation) said in one, before any output
        # of ours, the first time this instance is used
        with contextlib.redirect_stderr(io.StringIO()) as notice:
            get_or_set_instance_id()
        if notice.getvalue().strip():
            print(
                "note: Dagster, which runs the pipeline, sends anonymous usage statistics "
                "(https://docs.dagster.io/about/telemetry); to opt out, add `telemetry: "
                f"enabled: false` to {config}",
                file=sys.stderr,
            )
    return home


def cmd_materialize(args: argparse.Namespace) -> int:
    import dagster as dg
    from tqdm import tqdm

    from cdr_pipeline.definitions import defs
    from cdr_pipeline.defs.schedules import DAILY_JOB

    settings = load_settings()
    if why := settings.project.no_api():
        raise ConfigError(why)
    days = [] if args.missing else _day_range(args, settings)  # a bad date: said before all
    local_home(settings.uses_simulator)
    if args.missing:
        days = _missing_days(settings)
    if not days:
        back = settings.operations.catchup_days
        print(f"nothing to do: the last {back} days are fine or running")
        return 0
    job = defs().resolve_job_def(DAILY_JOB)
    # Dagster's console log repeats a failure's stack trace (the step's and the run's event):
    # the summary below says it once, in plain words; --verbose adds each run's log, one line
    # an entry, and the stack trace once.
    run_config: dict = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    if settings.uses_simulator:
        print("CDR_SIMULATOR=true: fetching synthetic calls from the built-in simulator")
    if args.allow_shrink:
        run_config["ops"] = {"cdr_day": {"config": {"allow_shrink": True}}}
    store = settings.store
    published = {d for d in days if store.exists(state_key("validation", d))}
    failed: list[str] = []
    skipped: list[str] = []
    interrupted = False
    with dg.DagsterInstance.get() as instance:
        bar = tqdm(days, unit="day", file=sys.stderr, ascii=True, ncols=100)
        try:
            with _retries_shown(bar):
                for i, day in enumerate(bar):
                    bar.set_description(day)
                    result = job.execute_in_process(
                        instance=instance,
                        partition_key=day,
                        run_config=run_config,
                        raise_on_error=False,
                    )
                    bar.set_postfix_str("")
                    if args.verbose:
                        _write_log(instance, result.run_id, bar.write)
                    if result.success:
                        continue
                    failed.append(day)
                    ending = _report_failure(result, day, bar.write, args.verbose)
                    interrupted = ending == "interrupted"
                    if ending:
                        skipped = days[i + 1 :] if ending == "stops" else []
                        break
        except KeyboardInterrupt:  # between the steps of a run, or between runs
            interrupted = True
        finally:
            bar.close()
    if interrupted:
        left = days[days.index(failed[-1]) if failed else 0 :]
        print(
            f"interrupted: stopped before finishing {', '.join(left)}; what was published "
            "before stays as it was",
            file=sys.stderr,
        )
        return 130
    if skipped:
        print(
            f"stopped: no other day can succeed until that is fixed; not attempted: "
            f"{_span(skipped)}",
            file=sys.stderr,
        )
    print_kpis(settings, days, failed=set(failed), skipped=set(skipped))
    if replaced := [d for d in days if d in published and d not in failed]:
        print(f"\nreplaced the published version of {_span(replaced)} (a day is one version)")
    if failed:
        print(f"failed partitions: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _span(days: Sequence[str]) -> str:
    """Days for a sentence: one, two, or the first and last of many."""
    if len(days) <= 2:
        return " and ".join(days)
    return f"{len(days)} days, {days[0]} to {days[-1]}"


@contextlib.contextmanager
def _retries_shown(bar: Any) -> Iterator[None]:
    """The client's retries on the progress line (attempt, reason, wait) while it waits."""

    class Shown(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            retry = getattr(record, "retry", None)
            if isinstance(retry, dict):
                bar.set_postfix_str(
                    f"retry {retry['attempt']}/{retry['of']} after {retry['reason']}, "
                    f"next in {retry['wait_s']:.1f} s"
                )

    logger = logging.getLogger("cdr_pipeline.api.client")
    handler, level = Shown(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _write_log(instance: Any, run_id: str, write: Callable[..., None]) -> None:
    """A run's log at INFO and above, as the UI's event log shows it, one line an entry
    (stack traces are left to the failure's summary)."""
    for entry in instance.all_logs(run_id):
        if entry.level < logging.INFO:
            continue
        when = datetime.fromtimestamp(entry.timestamp, UTC).strftime("%H:%M:%S")
        step = f" {entry.step_key}" if entry.step_key else ""
        first = (entry.user_message or "").strip().splitlines()[:1]
        text = one_line(first[0] if first else "", 400)
        write(f"  {when} {logging.getLevelName(entry.level)}{step}: {text}", file=sys.stderr)


def _report_failure(result, day: str, write, verbose: bool) -> str | None:
    """Say once, in plain words, why a day's run failed (with the stack trace when
    ``verbose``); "interrupted", "stops" (no other day can succeed), or None."""
    ending = None
    for event in result.all_events:
        if not event.is_step_failure:
            continue
        data = event.step_failure_data
        user = data.user_failure_data
        if user is not None:
            if user.metadata.get("interrupted") is not None:
                ending = "interrupted"
            elif getattr(user.metadata.get("stops_run"), "value", False):
                ending = ending or "stops"
        error = data.error
        while error is not None and error.cause is not None and not error.message.strip():
            error = error.cause
        text = (user.description if user is not None and user.description else None) or (
            error.message.strip() if error is not None else "failed"
        )
        text = text.removeprefix("dagster._core.definitions.events.Failure: ")
        write(f"{day} failed: {text}", file=sys.stderr)
        if verbose and error is not None:
            write(error.to_string(), file=sys.stderr)
    return ending


KPI_COLUMNS = (
    ("date", "{}"),
    ("total_calls", "{:>7}"),
    ("connect_rate", "{:.1%}"),
    ("caller_answer_rate", "{:.1%}"),
    ("callee_answer_rate", "{:.1%}"),
    ("acd_s", "{:.0f}"),
    ("billed_minutes", "{:.0f}"),
    ("peak_hour", "{}"),
    ("rejected_records", "{}"),
    ("duplicates_dropped", "{}"),
)


def print_kpis(
    settings: Settings,
    days: Sequence[str],
    failed: set[str] | None = None,
    skipped: set[str] | None = None,
) -> None:
    """One row per day asked for: its KPIs, or why there are none (a day that failed or was
    not attempted in this command is never shown with the figures of an earlier run)."""
    from cdr_pipeline import datasets
    from cdr_pipeline.report import kpi_history, volume_findings

    failed, skipped = failed or set(), skipped or set()
    read: dict[str, Any] = {}  # each day's KPI row read once, for the table and the volume
    found = {r["date"]: r for r in kpi_history(settings.store, days, read)}
    low = volume_findings(settings.store, days, settings.analytics.volume_warn_share, read)
    headers = [c for c, _ in KPI_COLUMNS] + ["status"]
    cells = []
    for day in days:
        row = found.get(day)
        if day in failed or day in skipped or row is None:
            status = "FAILED" if day in failed else "not materialized"
            status = "not attempted" if day in skipped else status
            cells.append([day, *[""] * (len(KPI_COLUMNS) - 1), status])
        else:
            values = [("—" if row[c] is None else fmt.format(row[c])) for c, fmt in KPI_COLUMNS]
            cells.append([*values, "LOW VOLUME" if day in low else "ok"])
    print()
    print(tabulate(cells, headers=headers, tablefmt="plain", stralign="right"))
    for day, finding in low.items():
        print(f"\n{day}: {finding}: is it the right account, and within the provider's retention?")
    missing = [d for d in days if d not in found and d not in failed and d not in skipped]
    if missing:
        print(
            f"\n{len(missing)} of {len(days)} days are not materialized: "
            f"cdr-pipeline materialize --start {missing[0]} --end {missing[-1]}"
        )
    if not any(d in found and d not in failed | skipped for d in days):
        return  # nothing to read
    store = settings.store
    print(f"\ndatasets under {store.url}/ ({', '.join(datasets.NAMES)}, raw/cdr); e.g.")
    where = f"{store.url}/call_kpis_daily"
    print(f"  .venv/bin/python -c \"import pandas; print(pandas.read_parquet('{where}'))\"")


def _data_present(settings: Settings) -> None:
    """Reading commands refuse a local data directory that does not exist (run from another
    folder, the default ``data`` points nowhere), rather than show an empty table."""
    store = settings.store
    if store.local and not Path(store.url).is_dir():
        raise SystemExit(
            f"no data directory at {store.url}: run cdr-pipeline from the folder that holds "
            "data/, or set CDR_DATA_DIR"
        )


def cmd_kpis(args: argparse.Namespace) -> int:
    settings = load_settings()
    days = _day_range(args, settings)
    _data_present(settings)
    if args.format == "table":
        print_kpis(settings, days)
        return 0
    from cdr_pipeline.report import kpi_history

    rows = kpi_history(settings.store, days)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["date"])
        writer.writeheader()
        writer.writerows(rows)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cdr_pipeline.privacy import Pseudonyms
    from cdr_pipeline.report import html_report

    settings = load_settings()
    days = _day_range(args, settings)
    _data_present(settings)
    store = settings.store
    default = Path(store.url) / "report.html" if store.local else Path("report.html")
    out = Path(args.out) if args.out else default
    shown = Pseudonyms(settings.storage.pseudonym_key, settings.analytics.default_region).shown
    out.write_text(html_report(store, days[0], days[-1], shown), encoding="utf-8")
    print(f"wrote {out} ({days[0]} to {days[-1]})")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """One request to the configured API, and what it says in plain words."""
    import dataclasses
    import time

    from cdr_pipeline.resources import api_resource

    settings = load_settings()
    if why := settings.project.no_api():
        raise ConfigError(why)
    _say_shadowed(args)
    quick = settings.client.model_copy(
        update={"max_attempts": min(2, settings.client.max_attempts)}
    )
    resource = api_resource(dataclasses.replace(settings, client=quick))
    end = int(time.time()) - 86400  # a minute of yesterday: complete on any provider
    print(f"asking {resource.endpoint_label()} for the calls of one minute ...")
    try:
        with resource.open_client(settings.timezone) as client:
            pages = client.query_window(end - 60, end)
    except CdrApiError as exc:
        for line in _check_failed(exc):
            print(line, file=sys.stderr)
        return 3
    calls = sum(p.record_count for p in pages)
    print(
        f"works: the API answered ({calls} calls in that minute); the URL, the credentials and "
        "this machine's address are accepted"
    )
    return 0


def _check_failed(exc: CdrApiError) -> list[str]:
    """What ``check`` says of a failure: what happened, its HTTP status and API code, and the
    advice for that kind (a refused connection, an unknown host, TLS, a status, a code)."""
    hint = exc.hint
    if isinstance(exc, RetriesExhaustedError) and exc.last is not None:
        last = exc.last
        hint = (
            f"nothing came back in time ({last.message}): the endpoint may be down or slow; "
            "try again in a few minutes, or raise CDR_READ_TIMEOUT_S"
            if last.kind == "transport"
            else "the provider is failing for now: try again in a few minutes; if it lasts, "
            "ask the provider"
        )
        exc = last
    lines = [f"not working ({exc.kind}): {exc.message}"]
    if exc.http_status is not None:
        lines.append(f"HTTP status {exc.http_status}")
    if exc.code is not None:
        lines.append(f"API code {exc.code}: {exc.meaning}")
    if hint:
        lines.append(f"what to do: {hint}")
    return lines


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

    s = command("prune", "remove raw bodies older than CDR_RAW_RETENTION_DAYS (datasets stay)")
    s.add_argument(
        "--keep-days",
        type=_between(*_limits("CDR_RAW_RETENTION_DAYS")),
        default=None,
        help="days of raw bodies to keep (default: the setting)",
    )
    s.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    s.set_defaults(func=cmd_prune)

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
        help="where to write the HTML (default: report.html in the data directory)",
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
    p = argparse.ArgumentParser(prog="cdr-pipeline", description=__doc__, formatter_class=_Help)
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
