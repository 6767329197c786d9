"""The commands that ask the getCdr API or serve its simulator: check, fetch, lookup,
simulate-api."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from zoneinfo import ZoneInfo

from cdr_pipeline.api.errors import CdrApiError, RetriesExhaustedError
from cdr_pipeline.api.redact import MIN_SECRET_LENGTH
from cdr_pipeline.cli.operate import _say_shadowed
from cdr_pipeline.settings import (
    ConfigError,
    Settings,
    load_settings,
)


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
