"""Pictures for people: a KPI trend chart and a self-contained HTML report.

The chart goes into the KPI asset's materialization metadata (so it shows in the Dagster UI)
and into ``cdr-pipeline report``; both read only the published datasets.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import jinja2
import pyarrow as pa
import pyarrow.compute as pc
from tabulate import tabulate

from cdr_pipeline import layout, operations, publish, text
from cdr_pipeline.store import Store

TREND_DAYS = 30
CALL_TYPE_NAMES = {1: "VoIP", 2: "IP to PSTN", 3: "PSTN to PSTN"}
RATES = (
    ("connect_rate", "connect rate"),
    ("caller_answer_rate", "caller answer rate"),
    ("callee_answer_rate", "callee answer rate"),
)


def days_back(end: str, count: int) -> list[str]:
    last = date.fromisoformat(end)
    return [(last - timedelta(days=i)).isoformat() for i in range(count - 1, -1, -1)]


def volume_findings(
    store: Store,
    days: Sequence[str],
    share: float,
    cache: dict[str, dict[str, Any] | None] | None = None,
) -> dict[str, str]:
    """The days of ``days`` whose volume looks wrong against the days before each, with why
    (:func:`operations.volume_finding`); days without data are not judged. ``cache``: as
    :func:`kpi_history`'s, KPI rows a caller has read already."""
    if not days:
        return {}
    rows = kpi_history(store, days_back(days[-1], len(days) + operations.VOLUME_DAYS), cache)
    calls = {r["date"]: r["total_calls"] for r in rows}
    said = {}
    for day in days:
        if day not in calls:
            continue
        before = [calls[d] for d in days_back(day, operations.VOLUME_DAYS + 1)[:-1] if d in calls]
        finding = operations.volume_finding(calls[day], before, share)
        if finding:
            said[day] = finding
    return said


def kpi_history(
    store: Store, days: Sequence[str], cache: dict[str, dict[str, Any] | None] | None = None
) -> list[dict[str, Any]]:
    """The KPI row of each day that has one, oldest first (days without data are skipped).

    ``cache`` keeps rows already read, so a run charting many consecutive days reads each
    day's file once (only days already written may be in it)."""
    cache = {} if cache is None else cache
    rows = []
    for day in days:
        if day not in cache:
            table = day_table(store, "call_kpis_daily", day)
            cache[day] = (
                {"date": day, **table.to_pylist()[0]} if table is not None and len(table) else None
            )
        if cache[day] is not None:
            rows.append(cache[day])
    return rows


def trend_png(rows: Sequence[dict[str, Any]], *, title: str = "") -> bytes:
    """Rates, average call duration and volume per day, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in a run worker
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    days = [datetime.fromisoformat(r["date"]) for r in rows]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(8, 5), dpi=80, sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    try:
        for key, label in RATES:
            values = [r[key] if r[key] is not None else float("nan") for r in rows]
            top.plot(days, values, marker="o", markersize=3, label=label)
        top.set_ylim(0, 1)
        top.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        top.legend(loc="lower left", fontsize=8)
        top.grid(alpha=0.3)
        top.set_title(title or "call KPIs", fontsize=10)
        bottom.bar(days, [r["total_calls"] for r in rows], color="#c7d7ea", label="calls")
        bottom.set_ylabel("calls", fontsize=8)
        acd = bottom.twinx()
        acd.plot(
            days,
            [r["acd_s"] if r["acd_s"] is not None else float("nan") for r in rows],
            color="#d1495b",
            marker="o",
            markersize=3,
            label="ACD (s)",
        )
        acd.set_ylabel("ACD (s)", fontsize=8)
        bars, line = bottom.get_legend_handles_labels(), acd.get_legend_handles_labels()
        acd.legend(bars[0] + line[0], bars[1] + line[1], loc="lower left", fontsize=8)
        bottom.grid(alpha=0.3)
        bottom.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))
        fig.autofmt_xdate()
        return _png(fig)
    finally:
        plt.close(fig)


def _png(fig: Any) -> bytes:
    from matplotlib.layout_engine import TightLayoutEngine

    # laid out once: ``fig.tight_layout()`` leaves the figure an engine that makes savefig
    # draw it once more, for nothing (the same bytes, docs/performance.md)
    TightLayoutEngine().execute(fig)
    buffer = io.BytesIO()
    # no timestamps in the file: the same figures give the same bytes
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown the Dagster UI renders as an image (the PNG travels inline)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


# The Dagster UI renders a markdown metadata value in place only when it is shorter than this;
# longer ones hide behind a "[Show Markdown]" link (dagster-webserver 1.13).
UI_INLINE_MARKDOWN = 1000


def _svg_line(values: Sequence[float], colour: str, width: int, height: int) -> str:
    """An SVG polyline of ``values`` scaled into the box, URL-encoded for a data: URI."""
    low, high = min(values), max(values)
    step = width / max(len(values) - 1, 1)
    points = ",".join(
        f"{i * step:.0f},{height - 2 - (v - low) / ((high - low) or 1) * (height - 4):.0f}"
        for i, v in enumerate(values)
    )
    return f"%3Cpolyline%20fill='none'%20stroke='%23{colour}'%20points='{points}'/%3E"


def _svg(width: int, height: int, *lines: str) -> str:
    return (
        f"data:image/svg+xml,%3Csvg%20xmlns='http://www.w3.org/2000/svg'%20width='{width}'"
        f"%20height='{height}'%3E{''.join(lines)}%3C/svg%3E"
    )


def load_markdown(hours: Sequence[dict[str, Any]]) -> str:
    """A day's load small enough for the UI to show in place: Erlangs hour by hour, and the
    busy hour in words."""
    if not hours:
        return "no hours"
    erlangs = [h["erlangs"] for h in hours]
    busy = next((h for h in hours if h["busy_hour"]), None)
    words = (
        f"Erlangs by hour, {hours[0]['local_hour']:02d}:00 to {hours[-1]['local_hour']:02d}:00; "
        + (
            f"busy hour {busy['local_hour']:02d}:00 ({busy['erlangs']:.2f} E, peak "
            f"{busy['peak_concurrent_calls']} calls at once)"
            if busy
            else "no talk"
        )
    )
    return f"![load]({_svg(240, 40, _svg_line(erlangs, '2563eb', 240, 40))})  \n{words}"


def sparkline_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The KPI trend small enough for the UI to show in place: an SVG line of the connect rate
    (green) and of the day's calls (grey) over ``rows``, and their ranges in words."""
    rates = [r["connect_rate"] for r in rows if r.get("connect_rate") is not None]
    calls = [r["total_calls"] for r in rows if r.get("total_calls") is not None]
    if not rates or not calls:
        return "no KPI rows to chart yet"
    svg = _svg(240, 40, _svg_line(calls, "9ca3af", 240, 40), _svg_line(rates, "16a34a", 240, 40))
    words = (
        f"connect rate {min(rates):.0%}-{max(rates):.0%} (green), calls {min(calls):,}-"
        f"{max(calls):,} (grey), {rows[0]['date']} to {rows[-1]['date']}"
    )
    return f"![KPI trend]({svg})  \n{words}"


_HTML_TABLE = jinja2.Environment(autoescape=True).from_string(
    "<div class=scroll><table><thead><tr>{% for c in columns %}<th>{{ c }}</th>{% endfor %}"
    "</tr></thead><tbody>{% for row in rows %}<tr>{% for v in row %}<td>{{ v }}</td>"
    "{% endfor %}</tr>{% endfor %}</tbody></table></div>"
)
# How the report shows each figure: rates as percentages (as the CLI and the chart do),
# counts and minutes with thousands separators, never in scientific notation.
_FORMATS = {
    **dict.fromkeys(
        (
            "connect_rate",
            "caller_answer_rate",
            "callee_answer_rate",
            "share",
            "billing_match_rate",
            "connect rate",
        ),
        "{:.1%}",
    ),
    **dict.fromkeys(("acd_s", "median_caller_pdd_s", "ACD (s)", "Erlangs"), "{:.1f}"),
    **dict.fromkeys(("billed_minutes", "billed minutes"), "{:,.0f}"),
    "busiest day": "{:.1f}",
    **dict.fromkeys(("total_calls", "calls", "rejected_records", "duplicates_dropped"), "{:,}"),
}


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [
        [
            "—"
            if r.get(c) is None
            else _FORMATS[c].format(r[c])
            if c in _FORMATS and not isinstance(r[c], str)
            else format_cell(r[c])
            for c in columns
        ]
        for r in rows
    ]
    return _HTML_TABLE.render(columns=columns, rows=cells)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A preview table for the Dagster UI: text values are provider data, shown literally
    (escaped) and capped."""
    if not rows:
        return "_no rows_"
    columns = list(rows[0])
    cells = [
        [text.markdown(r[c]) if isinstance(r[c], str) else format_cell(r[c]) for c in columns]
        for r in rows
    ]
    return tabulate(cells, headers=columns, tablefmt="github", disable_numparse=True)


def format_cell(value: Any) -> str:
    """How a figure is shown to people, in tables here and in the UI's previews."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return text.one_line(value)
    return str(value)


def outcome_breakdown(store: Store, days: Sequence[str]) -> list[dict[str, Any]]:
    """Calls and billed seconds by call type and end status, over all the days."""
    parts = _read_days(store, "call_outcome_daily", days)
    if not parts:
        return []
    keys = ["call_type", "call_end_status", "call_end_status_label"]
    grouped = (
        pa.concat_tables(parts)
        .group_by(keys)
        .aggregate([("calls", "sum"), ("billed_seconds", "sum")])
        .sort_by([("call_type", "ascending"), ("call_end_status", "ascending")])
    )
    total = sum(grouped.column("calls_sum").to_pylist()) or 1
    return [
        {
            "call type": f"{r['call_type']} {CALL_TYPE_NAMES.get(r['call_type'], '')}".strip(),
            "end status": f"{r['call_end_status']} {r['call_end_status_label']}",
            "calls": r["calls_sum"],
            "share": r["calls_sum"] / total,
            "billed minutes": r["billed_seconds_sum"] / 60,
        }
        for r in grouped.to_pylist()
    ]


def day_table(store: Store, dataset: str, day: str) -> pa.Table | None:
    """A day's table (None: not materialized); a file there that cannot be read is said, with
    its place, rather than shown as a day without data."""
    try:
        return publish.read_day_table(store, dataset, day)
    except publish.DamagedRecord:  # the day's journal: said as it is, not as no data
        raise
    except layout.StorageError:
        return None
    except (pa.ArrowInvalid, OSError) as exc:
        where = store.uri(layout.part_key(dataset, day))
        raise layout.StorageError(
            f"{where} cannot be read ({text.one_line(exc, 200)}); if it is damaged, "
            f"materialize {day} again"
        ) from None


def _read_days(store: Store, dataset: str, days: Sequence[str]) -> list[pa.Table]:
    """The days' tables of a dataset, skipping days not materialized."""
    parts = []
    for day in days:
        if (table := day_table(store, dataset, day)) is not None:
            parts.append(table.append_column("date", pa.array([day] * len(table), pa.string())))
    return parts


def destinations_breakdown(store: Store, days: Sequence[str]) -> list[dict[str, Any]]:
    """Calls, connect rate, ACD and share by destination country and number type, over the
    days."""
    parts = _read_days(store, "call_destinations_daily", days)
    if not parts:
        return []
    table = pa.concat_tables(parts)
    billed_connected = pc.multiply(
        pc.fill_null(table.column("acd_s"), 0.0), table.column("connected_calls")
    )
    grouped = (
        table.append_column("billed_connected", billed_connected)
        .group_by(["dst_country", "dst_type"])
        .aggregate([("calls", "sum"), ("connected_calls", "sum"), ("billed_connected", "sum")])
        .to_pylist()
    )
    grouped.sort(key=lambda r: (-r["calls_sum"], r["dst_country"] or "~", r["dst_type"]))
    total = sum(r["calls_sum"] for r in grouped) or 1
    return [
        {
            "country": r["dst_country"] or "unknown",
            "number type": r["dst_type"].replace("_", " "),
            "calls": r["calls_sum"],
            "share": r["calls_sum"] / total,
            "connect rate": r["connected_calls_sum"] / r["calls_sum"],
            "ACD (s)": r["billed_connected_sum"] / r["connected_calls_sum"]
            if r["connected_calls_sum"]
            else None,
        }
        for r in grouped
    ]


def hourly_profile(store: Store, days: Sequence[str]) -> list[dict[str, Any]]:
    """Per local hour of the day, over the days: the mean Erlangs, the busiest day's Erlangs,
    the most calls at once, and how many days had their busy hour then."""
    parts = _read_days(store, "call_load_hourly", days)
    if not parts:
        return []
    by_hour: dict[int, list[dict[str, Any]]] = {}
    for row in pa.concat_tables(parts).to_pylist():
        by_hour.setdefault(row["local_hour"], []).append(row)
    return [
        {
            "hour": f"{hour:02d}:00",
            "Erlangs": sum(r["erlangs"] for r in rows) / len(rows),
            "busiest day": max(r["erlangs"] for r in rows),
            "most at once": max(r["peak_concurrent_calls"] for r in rows),
            "busy hour on": sum(r["busy_hour"] for r in rows),
        }
        for hour, rows in sorted(by_hour.items())
    ]


def flagged_callers(
    store: Store, days: Sequence[str], shown: Callable[[str], str | None] = str
) -> list[dict[str, Any]]:
    """Every caller flagged on one of the days, with its flags (its number as ``shown``)."""
    return [
        {
            "date": r["date"],
            # a day cleared of clear numbers (retention.py) holds the caller's token and mask
            "caller": shown(r["src"]) if "src" in r else f"{r['src_masked']} ({r['src_token']})",
            "flags": ", ".join(r["flags"]),
            "calls": r["calls"],
            "numbers called": r["distinct_destinations"],
            "most in 10 min": r["max_calls_10min"],
        }
        for part in _read_days(store, "caller_risk_daily", days)
        for r in part.to_pylist()
    ]


def load_png(hours: Sequence[dict[str, Any]], *, title: str = "") -> bytes:
    """Erlangs by local hour (mean and busiest day), as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(8, 3), dpi=80)
    try:
        labels = [h["hour"][:2] for h in hours]
        axis.bar(labels, [h["Erlangs"] for h in hours], color="#c7d7ea", label="mean Erlangs")
        axis.plot(
            labels,
            [h["busiest day"] for h in hours],
            color="#2563eb",
            marker="o",
            markersize=3,
            label="busiest day",
        )
        axis.set_xlabel("local hour", fontsize=8)
        axis.set_ylabel("Erlangs", fontsize=8)
        axis.legend(loc="upper left", fontsize=8)
        axis.grid(alpha=0.3)
        axis.set_title(title or "load by hour", fontsize=10)
        return _png(fig)
    finally:
        plt.close(fig)


KPI_REPORT_COLUMNS = (
    "date",
    "total_calls",
    "connect_rate",
    "caller_answer_rate",
    "callee_answer_rate",
    "acd_s",
    "billed_minutes",
    "median_caller_pdd_s",
    "peak_hour",
    "billing_match_rate",
    "billed_without_answer",
    "rejected_records",
    "duplicates_dropped",
)


def html_report(
    store: Store, start: str, end: str, shown: Callable[[str], str | None] = str
) -> str:
    """One HTML page, no outside resources: charts inline, tables, the outcome breakdown."""
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    if first > last:
        raise ValueError(f"--start {start} is after --end {end}")
    days = days_back(end, (last - first).days + 1)
    rows = kpi_history(store, days)
    title = f"Call KPIs {start} to {end}"
    if rows:
        png = base64.b64encode(trend_png(rows, title=title)).decode()
        chart = f'<img alt="KPI trend" src="data:image/png;base64,{png}">'
    else:
        chart = "<p>No KPIs have been materialized for these days.</p>"
    missing = sorted(set(days) - {r["date"] for r in rows})
    note = (
        f"<p class=note>No data for {len(missing)} day(s): {', '.join(missing)}.</p>"
        if missing
        else ""
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    source = html.escape(store.url)
    outcome_columns = ("call type", "end status", "calls", "share", "billed minutes")
    destinations = destinations_breakdown(store, days)
    hours = hourly_profile(store, days)
    load = ""
    if hours:
        load_chart = load_png(hours, title=f"Erlangs by local hour, {start} to {end}")
        load = f'<img alt="Load by hour" src="data:image/png;base64,{base64.b64encode(load_chart).decode()}">'  # noqa: E501
    flagged = flagged_callers(store, days, shown)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; white-space: nowrap; }}
.scroll {{ overflow-x: auto; max-width: 100%; }}
th {{ background: #f3f5f8; }}
.note {{ color: #a33; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(rows)} day(s) with data, from <code>{source}</code>; generated {generated}.</p>
{note}
{chart}
<h2>Daily KPIs</h2>
{_table(rows, KPI_REPORT_COLUMNS)}
<h2>Outcomes over the period</h2>
{_table(outcome_breakdown(store, days), outcome_columns)}
<h2>Where calls go</h2>
{_table(destinations, ("country", "number type", "calls", "share", "connect rate", "ACD (s)"))}
<h2>Load by hour</h2>
<p>Erlangs: the average number of calls talking at once (ITU-T E.500); plan capacity on the
busy hour.</p>
{load}
{_table(hours, ("hour", "Erlangs", "busiest day", "most at once", "busy hour on"))}
<h2>Flagged callers</h2>
{
        _table(flagged, ("date", "caller", "flags", "calls", "numbers called", "most in 10 min"))
        if flagged
        else "<p>No caller was flagged.</p>"
    }
</body></html>
"""
