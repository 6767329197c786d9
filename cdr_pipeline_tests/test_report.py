"""The KPI trend chart in Dagster's metadata, and the HTML report, read back as a person would."""

from __future__ import annotations

import base64
import re
import struct
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from cdr_pipeline.report import (
    UI_INLINE_MARKDOWN,
    days_back,
    html_report,
    kpi_history,
    sparkline_markdown,
    trend_png,
)
from cdr_pipeline.store import open_store
from cdr_pipeline_tests.conftest import Env

CLI = str(Path(sys.executable).parent / "cdr-pipeline")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(PNG_SIGNATURE)
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk comes first
    return width, height


def _inline_pngs(text: str) -> list[bytes]:
    return [
        base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    ]


def test_kpi_materializations_carry_a_trend_chart(monkeypatch, tmp_path, sim_server, instance):
    env = Env(monkeypatch, tmp_path, sim_server(calls_per_day=600))
    assert env.run(instance, "2024-03-01", "2024-03-04").success
    for key in ("2024-03-01", "2024-03-04"):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("call_kpis_daily"), asset_partitions=[key]),
            limit=1,
        ).records
        metadata = records[0].asset_materialization.metadata
        chart = metadata["trend_chart"]
        assert isinstance(chart, dg.MarkdownMetadataValue)
        (png,) = _inline_pngs(chart.value)
        assert _png_size(png) == (640, 400)
        # the sparkline is short enough for the UI to draw in place, and covers the days so far
        trend = metadata["trend"].value
        assert len(trend) < UI_INLINE_MARKDOWN and "data:image/svg+xml," in trend
        assert f"2024-03-01 to {key}" in trend
        points = re.findall(r"points='([\d,]+)'", trend)
        assert len(points) == 2
        assert all(len(p.split(",")) == 2 * (1 + int(key[-1]) - 1) for p in points)
    # the same figures always give the same picture
    rows = kpi_history(env.store, days_back("2024-03-04", 30))
    assert [r["date"] for r in rows] == ["2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04"]
    assert trend_png(rows) == trend_png(rows)


@pytest.mark.slow
def test_html_report_is_self_contained_and_matches_the_data(
    monkeypatch, tmp_path, sim_server, instance
):
    env = Env(monkeypatch, tmp_path, sim_server(calls_per_day=600))
    assert env.run(instance, "2024-03-01", "2024-03-03").success
    out = tmp_path / "report.html"
    proc = subprocess.run(
        [CLI, "report", "--start", "2024-03-01", "--end", "2024-03-05", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    trend, load = _inline_pngs(text)  # the KPI trend, the load by hour
    assert _png_size(trend)[0] == 640 and _png_size(load)[0] == 640
    assert "<h2>Where calls go</h2>" in text and "<h2>Load by hour</h2>" in text
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)  # nothing fetched from outside
    assert "No data for 2 day(s): 2024-03-04, 2024-03-05" in text
    calls = duckdb.sql(
        f"select date, count(*) from read_parquet('{env.glob('cdr')}', hive_partitioning=true) "
        "group by date order by date"
    ).fetchall()
    for day, n in calls:
        assert re.search(rf"<td>{day}</td><td>{n}</td>", text), (day, n)
    # the outcome breakdown adds up to every call of the period
    outcome_calls = re.findall(r"<td>\d [A-Za-z ]+</td><td>\d \w+</td><td>([\d,]+)</td>", text)
    assert outcome_calls
    tables = re.sub(r'src="data:[^"]*"', "", text)
    assert not re.search(r"\de[+-]\d", tables)  # no scientific notation in any figure
    assert re.search(r"<td>\d+\.\d%</td>", text)  # rates as percentages
    assert sum(int(c.replace(",", "")) for c in outcome_calls) == sum(n for _, n in calls)


def test_report_of_an_empty_period_says_so(tmp_path):
    text = html_report(open_store(tmp_path), "2024-03-01", "2024-03-02")
    assert "No KPIs have been materialized" in text and "<img" not in text


def test_the_sparkline_stays_short_enough_to_show_in_place():
    """30 days of large, varied figures still fit under the UI's in-place limit."""
    rows = [
        {"date": f"2024-03-{d:02d}", "connect_rate": (d * 37 % 100) / 100, "total_calls": 10**7 - d}
        for d in range(1, 31)
    ]
    assert len(sparkline_markdown(rows)) < UI_INLINE_MARKDOWN
    assert sparkline_markdown([]) == "no KPI rows to chart yet"
