"""The commands over a range of days: materialize (through Dagster, a day a run), kpis and
report, and the local Dagster instance they use."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from tabulate import tabulate

from cdr_pipeline.layout import REPORT_KEY, day_exists, parse_day, state_key
from cdr_pipeline.settings import (
    ConfigError,
    Settings,
    dagster_home,
    load_settings,
)
from cdr_pipeline.text import one_line


def _date(text: str, flag: str) -> date:
    try:
        return parse_day(text)
    except ValueError as exc:
        raise SystemExit(f"{flag} {exc}") from None


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
    if demo is None and not os.environ.get("DAGSTER_HOME"):
        demo = load_settings().uses_simulator
    home = dagster_home(bool(demo))
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
    failed, skipped, interrupted = _run_days(job, days, run_config, args.verbose)
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
    ended = {d: "FAILED" for d in failed} | {d: "not attempted" for d in skipped}
    print_kpis(settings, days, ended)
    if replaced := [d for d in days if d in published and d not in failed]:
        print(f"\nreplaced the published version of {_span(replaced)} (a day is one version)")
    if failed:
        print(f"failed partitions: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _run_days(
    job: Any, days: list[str], run_config: dict, verbose: bool
) -> tuple[list[str], list[str], bool]:
    """One Dagster run per day, in order, under a progress bar: the days that failed, those
    not attempted after a failure no other day can get past, and whether it was
    interrupted."""
    import dagster as dg
    from tqdm import tqdm

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
                    if verbose:
                        _write_log(instance, result.run_id, bar.write)
                    if result.success:
                        continue
                    failed.append(day)
                    ending = _report_failure(result, day, bar.write, verbose)
                    interrupted = ending == "interrupted"
                    if ending:
                        skipped = days[i + 1 :] if ending == "stops" else []
                        break
        except KeyboardInterrupt:  # between the steps of a run, or between runs
            interrupted = True
        finally:
            bar.close()
    return failed, skipped, interrupted


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
    settings: Settings, days: Sequence[str], ended: Mapping[str, str] | None = None
) -> None:
    """One row per day asked for: its KPIs, or why there are none (a day this command ended
    otherwise, ``ended``'s status, is never shown with the figures of an earlier run)."""
    from cdr_pipeline import datasets
    from cdr_pipeline.report import kpi_history, volume_findings

    ended = ended or {}
    read: dict[str, Any] = {}  # each day's KPI row read once, for the table and the volume
    found = {r["date"]: r for r in kpi_history(settings.store, days, read)}
    low = volume_findings(settings.store, days, settings.analytics.volume_warn_share, read)
    headers = [c for c, _ in KPI_COLUMNS] + ["status"]
    cells = []
    for day in days:
        row = found.get(day)
        if day in ended or row is None:
            status = ended.get(day, "not materialized")
            cells.append([day, *[""] * (len(KPI_COLUMNS) - 1), status])
        else:
            values = [("—" if row[c] is None else fmt.format(row[c])) for c, fmt in KPI_COLUMNS]
            cells.append([*values, "LOW VOLUME" if day in low else "ok"])
    print()
    print(tabulate(cells, headers=headers, tablefmt="plain", stralign="right"))
    for day, finding in low.items():
        print(f"\n{day}: {finding}: is it the right account, and within the provider's retention?")
    missing = [d for d in days if d not in found and d not in ended]
    if missing:
        print(
            f"\n{len(missing)} of {len(days)} days are not materialized: "
            f"cdr-pipeline materialize --start {missing[0]} --end {missing[-1]}"
        )
    if not any(d in found and d not in ended for d in days):
        return  # nothing to read
    store = settings.store
    print(f"\ndatasets under {store.url}/ ({', '.join(datasets.NAMES)}, raw/cdr); e.g.")
    where = f"{store.url}/call_kpis_daily"
    print(f"  .venv/bin/python -c \"import pandas; print(pandas.read_parquet('{where}'))\"")


def _data_present(settings: Settings) -> None:
    """Reading commands refuse a local data directory that does not exist (run from another
    folder, the default ``data/live`` points nowhere), rather than show an empty table."""
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
    from cdr_pipeline.privacy import pseudonyms_of
    from cdr_pipeline.report import html_report

    settings = load_settings()
    days = _day_range(args, settings)
    _data_present(settings)
    store = settings.store
    page = html_report(store, days[0], days[-1], pseudonyms_of(settings).shown)
    if args.out or not store.local:
        out = Path(args.out or REPORT_KEY)
        out.write_text(page, encoding="utf-8")
    else:  # into the data directory as its own files are: never through a link
        store.put(REPORT_KEY, page.encode())
        out = Path(store.uri(REPORT_KEY))
    print(f"wrote {out} ({days[0]} to {days[-1]})")
    return 0
