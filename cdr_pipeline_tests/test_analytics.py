"""The telecom analytics (data contract, "Analytics datasets"), recomputed independently.

Days are materialized through Dagster against the simulator on loopback, with its abuse
patterns and destinations abroad; then every analytics dataset is recomputed here with pandas
and plain Python from the published ``cdr`` alone, clause by clause of the contract, and must
agree. Number intelligence is held to libphonenumber called number by number.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from datetime import datetime
from zoneinfo import ZoneInfo

import dagster as dg
import pandas as pd
import phonenumbers as pn
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdr_pipeline import publish
from cdr_pipeline.datasets import DATASETS, queries
from cdr_pipeline.settings import AnalyticsSettings
from cdr_pipeline.simulator import ABUSERS
from cdr_pipeline.transform.analytics import DayAnalytics
from cdr_pipeline.transform.enrich import Enricher
from cdr_pipeline.transform.phones import NumberBook
from cdr_pipeline.transform.validate import CDR_SCHEMA
from cdr_pipeline_tests.conftest import Env

QUERIES = queries(DATASETS, AnalyticsSettings())

DAYS = ["2024-03-01", "2024-03-02"]
TYPES = {getattr(pn.PhoneNumberType, n): n.lower() for n in dir(pn.PhoneNumberType) if n.isupper()}


def reference(number: str | None, region: str = "CN") -> tuple[str | None, str | None, str]:
    """The contract's number intelligence, one number at a time, straight from libphonenumber."""
    if number is None:
        return None, None, "unknown"
    for ch in " -()":
        number = number.replace(ch, "")
    if number.startswith("00"):
        number = "+" + number[2:]
    try:
        p = pn.parse(number, None if number.startswith("+") else region)
    except pn.NumberParseException:
        return None, None, "unknown"
    e164 = pn.format_number(p, pn.PhoneNumberFormat.E164) if pn.is_possible_number(p) else None
    valid = pn.is_valid_number(p)
    country = (
        pn.region_code_for_number(p) if valid else pn.region_code_for_country_code(p.country_code)
    )
    kind = TYPES.get(pn.number_type(p), "unknown") if valid else "unknown"
    return e164, None if country in (None, "ZZ") else country, kind


def _samples(seed: int) -> list[str]:
    """Every region's example numbers with random tails, in +, 00 and national form."""
    rng = random.Random(seed)
    out = []
    for region in sorted(pn.SUPPORTED_REGIONS):
        md = pn.PhoneMetadata.metadata_for_region(region)
        for desc in (
            md.fixed_line,
            md.mobile,
            md.toll_free,
            md.premium_rate,
            md.shared_cost,
            md.voip,
            md.personal_number,
            md.pager,
            md.uan,
            md.voicemail,
        ):
            if desc is None or not desc.example_number:
                continue
            example = desc.example_number
            for _ in range(6):
                cut = min(4, len(example))
                tail = "".join(rng.choice("0123456789") for _ in range(cut))
                national = example[:-cut] + tail
                out += [f"+{md.country_code}{national}", f"00{md.country_code}{national}"]
                if region == "CN":
                    out += [national, "0" + national]
    return out


@given(st.lists(st.none() | st.text(alphabet="0123456789+ -é\u0660", max_size=24), max_size=40))
@settings(max_examples=2 * settings.default.max_examples)
def test_plain_numbers_are_read_off_the_buffers_as_python_reads_them(values):
    from cdr_pipeline.transform.phones import MAX_DIGITS, MIN_GROUPED, read_digits

    def expected(v):
        if v is None or len(v) < MIN_GROUPED or not v.isascii():
            return None
        digits = v[1:] if v[:1] == "+" else v
        if not digits.isdigit() or len(digits) > MAX_DIGITS:
            return None
        return v[:1] == "+", len(digits), int(digits)

    def read(column):
        got = read_digits(column)
        return [
            (bool(plus), int(count), int(value)) if plain else None
            for plain, plus, count, value in zip(
                got.plain, got.plus, got.count, got.value, strict=True
            )
        ]

    column = pa.array(values, pa.string())
    assert read(column) == [expected(v) for v in values]
    if len(values) > 2:  # an array that starts inside its buffers
        assert read(column.slice(1)) == [expected(v) for v in values[1:]]


def test_grouped_numbers_agree_with_libphonenumber_number_by_number():
    numbers = _samples(7)
    e164, country, kind = NumberBook("CN").resolve(pa.array(numbers))
    got = list(zip(e164.to_pylist(), country.to_pylist(), kind.to_pylist(), strict=True))
    wrong = [(n, g, reference(n)) for n, g in zip(numbers, got, strict=True) if g != reference(n)]
    assert not wrong, wrong[:10]


def test_large_groups_analysed_by_their_prefix_agree_with_libphonenumber():
    """Many numbers sharing all but their last six digits, in every region: the prefix analysis
    (key_safe) groups them by whichever tail it proves. Each must get exactly what
    libphonenumber says of it alone."""
    from cdr_pipeline.transform.patterns import key_safe

    key_safe.cache_clear()
    rng = random.Random(11)
    numbers = []
    for region in sorted(pn.SUPPORTED_REGIONS):
        md = pn.PhoneMetadata.metadata_for_region(region)
        for desc in (md.fixed_line, md.mobile, md.premium_rate):
            if desc is None or not desc.example_number or len(desc.example_number) < 8:
                continue
            head = desc.example_number[:-6]
            for _ in range(40):
                tail = "".join(rng.choice("0123456789") for _ in range(6))
                numbers.append(f"+{md.country_code}{head}{tail}")
    e164, country, kind = NumberBook("CN").resolve(pa.array(numbers))
    got = list(zip(e164.to_pylist(), country.to_pylist(), kind.to_pylist(), strict=True))
    wrong = [(n, g, reference(n)) for n, g in zip(numbers, got, strict=True) if g != reference(n)]
    assert not wrong, wrong[:10]
    assert key_safe.cache_info().currsize > 0  # the analysis was asked


def test_every_e164_form_libphonenumber_can_give_fits_the_integers_numbers_are_held_in():
    """E.164 forms are held as integers until they are made text: a metadata update that
    allowed longer numbers must be caught here, not overflow in a run."""
    from cdr_pipeline.transform.phones import MAX_DIGITS

    regions = [pn.PhoneMetadata.metadata_for_region(r) for r in pn.SUPPORTED_REGIONS]
    others = [
        pn.PhoneMetadata.metadata_for_nongeo_region(c) for c in pn.COUNTRY_CODES_FOR_NON_GEO_REGIONS
    ]
    longest = max(
        max(md.general_desc.possible_length) + len(str(md.country_code)) for md in regions + others
    )
    assert longest <= MAX_DIGITS


@pytest.mark.parametrize("region", ["US", "GB", "DE", "IN", "JP", "FR", "BR", "AU", "RU", "IT"])
def test_every_spelling_resolves_exactly_in_other_default_regions(region):
    """CDR_DEFAULT_REGION other than CN: national numbers (with and without the trunk prefix,
    with the region's own separators), + and 00 forms, in groups large enough to be analysed."""
    rng = random.Random(region)
    md = pn.PhoneMetadata.metadata_for_region(region)
    numbers = []
    for desc in (md.fixed_line, md.mobile, md.toll_free, md.premium_rate):
        if desc is None or not desc.example_number:
            continue
        for _ in range(60):
            cut = min(5, len(desc.example_number) - 1)
            tail = "".join(rng.choice("0123456789") for _ in range(cut))
            national = desc.example_number[:-cut] + tail
            parsed = pn.parse(national, region)
            numbers += [
                national,
                pn.format_number(parsed, pn.PhoneNumberFormat.NATIONAL),
                f"+{md.country_code}{national}",
                f"00{md.country_code}{national}",
                pn.format_number(parsed, pn.PhoneNumberFormat.INTERNATIONAL),
            ]
    e164, country, kind = NumberBook(region).resolve(pa.array(numbers))
    got = list(zip(e164.to_pylist(), country.to_pylist(), kind.to_pylist(), strict=True))
    want = [reference(n, region) for n in numbers]
    assert [(n, g, w) for n, g, w in zip(numbers, got, want, strict=True) if g != w] == []


def test_numbers_written_with_separators_are_grouped_not_parsed_one_by_one():
    """A provider that writes "+86 136-3123-4568" must not cost a parse per number."""
    from cdr_pipeline.transform.phones import parse_number

    rng = random.Random(5)
    numbers = [
        pattern.format(*(rng.randrange(10**4) for _ in range(2)))
        for pattern in ("+86 136-{:04d}-{:04d}", "0086 (136) {:04d} {:04d}", "136-{:04d}-{:04d}")
        for _ in range(200)
    ]
    parse_number.cache_clear()
    e164, country, kind = NumberBook("CN").resolve(pa.array(numbers))
    got = list(zip(e164.to_pylist(), country.to_pylist(), kind.to_pylist(), strict=True))
    assert got == [reference(n) for n in numbers]
    assert parse_number.cache_info().misses < 10


@settings(max_examples=3 * settings.default.max_examples)
@given(
    st.lists(
        st.one_of(
            st.from_regex(r"\A(\+|00)?[0-9]{4,16}\Z"),
            st.from_regex(r"\A[0-9 ()\-+]{0,18}\Z"),
            st.text(max_size=12),
            st.none(),
        ),
        max_size=40,
    )
)
def test_any_column_of_numbers_resolves_as_libphonenumber_does(numbers):
    e164, country, kind = NumberBook("CN").resolve(pa.array(numbers, pa.string()))
    got = list(zip(e164.to_pylist(), country.to_pylist(), kind.to_pylist(), strict=True))
    assert got == [reference(n) for n in numbers]


@pytest.fixture(scope="module")
def abusive_days(tmp_path_factory, sim_server_module):
    folder = tmp_path_factory.mktemp("analytics")
    with pytest.MonkeyPatch.context() as monkeypatch:
        env = Env(monkeypatch, folder, sim_server_module(calls_per_day=1500, abuse=True))
        with dg.instance_for_test() as instance:
            assert env.run(instance, DAYS[0], DAYS[-1]).success
    return env


def _cdr(env: Env, day: str) -> pd.DataFrame:
    return publish.read_day_table(env.store, "cdr", day).to_pandas()


def _published(env: Env, dataset: str, day: str) -> pd.DataFrame:
    return publish.read_day_table(env.store, dataset, day).to_pandas()


@pytest.mark.parametrize("day", DAYS)
def test_cdr_carries_number_intelligence_and_the_local_start(abusive_days, day):
    cdr = _cdr(abusive_days, day)
    for side in ("src", "dst"):
        expected = cdr[side].map(reference)
        assert cdr[f"{side}_e164"].tolist() == [e for e, _, _ in expected]
        assert cdr[f"{side}_country"].tolist() == [c for _, c, _ in expected]
    assert cdr["dst_type"].tolist() == [k for _, _, k in cdr["dst"].map(reference)]
    # the simulator's traffic goes abroad, to premium-rate numbers and comes in national form
    assert {"CN", "GB", "US", "JP", "SG", "DE"} <= set(cdr["dst_country"].dropna())
    assert "premium_rate" in set(cdr["dst_type"])
    assert (~cdr["dst"].str.startswith("00")).any()
    zone = ZoneInfo("Asia/Shanghai")
    local = cdr["start_src_call_time"].map(
        lambda t: t.to_pydatetime().astimezone(zone).replace(tzinfo=None)
    )
    assert (cdr["start_local"].dt.to_pydatetime() == local.to_numpy()).all()
    assert (cdr["start_local"].dt.strftime("%Y-%m-%d") == day).all()


@pytest.mark.parametrize("day", DAYS)
def test_destinations_are_the_contracts(abusive_days, day):
    cdr = _cdr(abusive_days, day)
    rows = []
    for (country, kind), g in cdr.groupby(["dst_country", "dst_type"], dropna=False):
        connected = g[g["call_end_status"] == 1]
        rows.append(
            {
                "dst_country": None if pd.isna(country) else country,
                "dst_type": kind,
                "calls": len(g),
                "connected_calls": len(connected),
                "billed_seconds": int(g["duration_s"].sum()),
                "connect_rate": len(connected) / len(g),
                "acd_s": connected["duration_s"].sum() / len(connected) if len(connected) else None,
                "share_of_calls": len(g) / len(cdr),
                "low_sample": len(g) < 30,
            }
        )
    rows.sort(
        key=lambda r: (-r["calls"], r["dst_country"] is None, r["dst_country"] or "", r["dst_type"])
    )
    got = _published(abusive_days, "call_destinations_daily", day)
    got = got.astype(object).where(got.notna(), None).to_dict("records")
    assert len(got) == len(rows)
    for g, r in zip(got, rows, strict=True):
        assert g.keys() == r.keys()
        for k in r:
            assert g[k] == pytest.approx(r[k]) if isinstance(r[k], float) else g[k] == r[k], k


@pytest.mark.parametrize("day", DAYS)
def test_hourly_load_is_an_exact_sweep(abusive_days, day):
    env = abusive_days
    cdr = _cdr(env, day)
    span = env.day(day)
    starts = list(range(span.start, span.end, 3600))
    s = cdr["start_src_call_time"].map(lambda t: t.value // 10**9)
    talk = [
        (a.value // 10**9, min(e.value // 10**9, span.end))
        for a, e in zip(cdr["dst_accept_time"], cdr["end_call_time"], strict=True)
        if not pd.isna(a) and not pd.isna(e) and min(e.value // 10**9, span.end) > a.value // 10**9
    ]
    got = _published(env, "call_load_hourly", day)
    assert len(got) == len(starts) == 24
    expected_talk = []
    for i, hs in enumerate(starts):
        he = hs + 3600
        row = got.iloc[i]
        assert row["hour_start"].value // 10**9 == hs
        assert row["local_hour"] == datetime.fromtimestamp(hs, env.tz).hour
        in_hour = (s >= hs) & (s < he)
        assert row["attempts"] == in_hour.sum()
        assert row["connected_calls"] == (in_hour & (cdr["call_end_status"] == 1)).sum()
        seconds = sum(max(0, min(e, he) - max(a, hs)) for a, e in talk)
        expected_talk.append(seconds)
        assert row["talk_seconds"] == seconds
        assert row["erlangs"] == pytest.approx(seconds / 3600)
        # the most intervals open at any instant of [hs, he): at hs, or at an interval's start
        instants = [hs] + [a for a, _ in talk if hs <= a < he]
        peak = max(sum(1 for a, e in talk if a <= t < e) for t in instants)
        assert row["peak_concurrent_calls"] == peak
    busiest = expected_talk.index(max(expected_talk))
    assert got["busy_hour"].tolist() == [i == busiest for i in range(len(starts))]


@pytest.mark.parametrize("day", DAYS)
def test_billing_reconciliation_is_the_contracts(abusive_days, day):
    cdr = _cdr(abusive_days, day)
    kpis = _published(abusive_days, "call_kpis_daily", day).iloc[0]
    both = cdr[
        (cdr["call_end_status"] == 1)
        & cdr["dst_accept_time"].notna()
        & cdr["end_call_time"].notna()
    ]
    billed = both[both["duration_s"] > 0]["duration_s"]
    increment = next((i for i in (60, 30, 6) if (billed % i == 0).mean() >= 0.99), 1)
    assert kpis["billing_increment_s"] == increment == 6  # the simulator bills 6-second steps
    talk = (both["end_call_time"] - both["dst_accept_time"]).dt.total_seconds()
    expected = talk.map(lambda t: math.ceil(t / increment) * increment)
    assert kpis["billing_match_rate"] == pytest.approx((both["duration_s"] == expected).mean())
    assert (
        kpis["billed_without_answer"]
        == ((cdr["duration_s"] > 0) & cdr["dst_accept_time"].isna()).sum()
    )
    assert (
        kpis["answered_without_billing"]
        == (
            cdr["dst_accept_time"].notna()
            & cdr["end_call_time"].notna()
            & (cdr["end_call_time"] > cdr["dst_accept_time"])
            & (cdr["duration_s"] == 0)
        ).sum()
    )


@pytest.mark.parametrize("day", DAYS)
def test_exactly_the_injected_callers_are_flagged(abusive_days, day):
    env = abusive_days
    cdr = _cdr(env, day)
    got = _published(env, "caller_risk_daily", day)
    assert dict(zip(got["src"], got["flags"].map(list), strict=True)) == ABUSERS
    # the signals, recomputed
    for _, row in got.iterrows():
        mine = cdr[cdr["src"] == row["src"]]
        starts = sorted(mine["start_src_call_time"].map(lambda t: t.value // 10**6))
        night = mine["start_local"].dt.hour.between(0, 5)
        assert row["calls"] == len(mine)
        assert row["distinct_destinations"] == mine["dst"].nunique()
        assert row["unanswered_share"] == pytest.approx(mine["dst_accept_time"].isna().mean())
        assert row["premium_rate_calls"] == (mine["dst_type"] == "premium_rate").sum()
        assert row["night_calls"] == night.sum()
        assert row["max_calls_10min"] == max(
            sum(1 for u in starts if t <= u < t + 600_000) for t in starts
        )
        assert row["max_calls_one_number"] == Counter(mine["dst"]).most_common(1)[0][1]
    order = sorted(got.to_dict("records"), key=lambda r: (-len(r["flags"]), -r["calls"], r["src"]))
    assert [r["src"] for r in order] == got["src"].tolist()


def test_a_clean_day_flags_nobody(tmp_path, sim_server, monkeypatch):
    env = Env(monkeypatch, tmp_path, sim_server(calls_per_day=1500))
    with dg.instance_for_test() as instance:
        assert env.run(instance, DAYS[0]).success
    assert publish.read_day_table(env.store, "caller_risk_daily", DAYS[0]).num_rows == 0


def test_thresholds_are_settings(tmp_path, sim_server, monkeypatch):
    """A lower fan-out threshold flags more; a higher burst threshold flags fewer."""
    env = Env(
        monkeypatch,
        tmp_path,
        sim_server(calls_per_day=1500, abuse=True),
        CDR_RISK_FAN_OUT="25",
        CDR_RISK_BURST_CALLS="26",
    )
    with dg.instance_for_test() as instance:
        assert env.run(instance, DAYS[0]).success
    got = publish.read_day_table(env.store, "caller_risk_daily", DAYS[0]).to_pylist()
    flags = {r["src"]: r["flags"] for r in got}
    assert flags["008613900000001"] == ["fan_out"]  # 25 destinations; 25 calls are no burst now
    assert "burst" not in {f for fs in flags.values() for f in fs}


@pytest.mark.parametrize(("day", "hours"), [("2024-03-31", 23), ("2024-10-27", 25)])
def test_daylight_saving_days_have_23_or_25_hours(tmp_path, sim_server, monkeypatch, day, hours):
    env = Env(
        monkeypatch,
        tmp_path,
        sim_server(calls_per_day=600, timezone="Europe/Berlin"),
        tz="Europe/Berlin",
    )
    with dg.instance_for_test() as instance:
        assert env.run(instance, day).success
    got = publish.read_day_table(env.store, "call_load_hourly", day).to_pandas()
    assert len(got) == hours
    local = got["local_hour"].tolist()
    if hours == 25:
        assert local.count(2) == 2  # 02:00 twice, as the clocks went back
    else:
        assert 2 not in local
    cdr = publish.read_day_table(env.store, "cdr", day).to_pandas()
    assert got["attempts"].sum() == len(cdr)
    assert got["busy_hour"].sum() == 1


def _odd_day(tz: ZoneInfo) -> tuple[pa.Table, int, int]:
    """Hand-made rows the simulator never sends: numbers that do not parse, are empty, of no
    known country; calls without an answer or an end."""
    start = int(datetime(2024, 3, 1, tzinfo=tz).timestamp())
    base = {name: None for name in CDR_SCHEMA.names}
    rows = []
    numbers = ["", "abc", "+999123456789", "00", "+", "1", "+86 (138) 1234-5678", None]
    for i, dst in enumerate(numbers):
        rows.append(
            base
            | {
                "call_id": f"odd-{i}",
                "src": numbers[-1 - i],
                "dst": dst,
                "start_src_call_time": (start + 3600 * i) * 1000,
                "call_end_status": i % 6,
                "duration_s": 6 * (i % 3),
                "dst_accept_time": (start + 3600 * i + 30) * 1000 if i % 2 else None,
                "end_call_time": (start + 3600 * i + 90) * 1000 if i % 4 else None,
            }
        )
    from cdr_pipeline.transform.validate import RECORD_SCHEMA

    table = pa.Table.from_pylist(
        [{k: r[k] for k in RECORD_SCHEMA.names} for r in rows], schema=RECORD_SCHEMA
    )
    return table, start, start + 86400


@pytest.mark.parametrize("empty", [False, True])
def test_bad_numbers_odd_calls_and_empty_days_raise_nothing_and_give_no_nan(tmp_path, empty):
    tz = ZoneInfo("Asia/Shanghai")
    table, start, end = _odd_day(tz)
    if empty:
        table = table.slice(0, 0)
    enriched = Enricher(tz, "CN")(table)
    assert enriched.schema.names == CDR_SCHEMA.names
    analytics = DayAnalytics(tmp_path, start, end, tz, AnalyticsSettings())
    if len(enriched):
        analytics.add(enriched)
    found = analytics.finish(CDR_SCHEMA, QUERIES)
    assert found.hourly.num_rows == 24
    assert found.queried["caller_risk_daily"].num_rows == 0
    for name, table_ in (
        ("destinations", found.queried["call_destinations_daily"]),
        ("hourly", found.hourly),
    ):
        for column in table_.columns:
            if pa.types.is_floating(column.type):
                values = [v for v in column.to_pylist() if v is not None]
                assert not any(math.isnan(v) for v in values), name
    assert all(
        v is None or not (isinstance(v, float) and math.isnan(v)) for v in found.billing.values()
    )
    if empty:
        assert found.queried["call_destinations_daily"].num_rows == 0
        assert found.billing["billing_increment_s"] == 1
        assert found.billing["billing_match_rate"] is None
    else:
        assert set(enriched.column("dst_type").to_pylist()) <= {"unknown", "mobile"}
        assert found.queried["call_destinations_daily"].column("calls").to_pylist()
        assert not list((tmp_path).glob("*.parquet"))  # the scratch rows are gone


def test_analytics_are_byte_reproducible(tmp_path, sim_server, monkeypatch):
    server = sim_server(calls_per_day=800, abuse=True)
    files = []
    for run in ("a", "b"):
        env = Env(monkeypatch, tmp_path / run, server)
        with dg.instance_for_test() as instance:
            assert env.run(instance, DAYS[0]).success
        files.append(
            {
                d: (env.root / d / f"date={DAYS[0]}" / "part-0.parquet").read_bytes()
                for d in (
                    "cdr",
                    "call_destinations_daily",
                    "call_load_hourly",
                    "caller_risk_daily",
                    "call_kpis_daily",
                )
            }
        )
    assert files[0] == files[1]
    meta = pq.read_schema(
        tmp_path / "a" / "data" / "caller_risk_daily" / f"date={DAYS[0]}" / "part-0.parquet"
    )
    assert b"description" in meta.field("flags").metadata


def test_hourly_talk_is_split_across_hours():
    """A call talking from 00:59:30 to 02:00:30 gives 30, 3600 and 30 seconds to three hours."""
    import tempfile
    from pathlib import Path

    tz = ZoneInfo("UTC")
    start = int(datetime(2024, 3, 1, tzinfo=tz).timestamp())
    base = {name: None for name in CDR_SCHEMA.names}
    from cdr_pipeline.transform.validate import RECORD_SCHEMA

    row = base | {
        "call_id": "long",
        "src": "008613800000000",
        "dst": "008615800000000",
        "start_src_call_time": (start + 3540) * 1000,
        "dst_accept_time": (start + 3570) * 1000,
        "end_call_time": (start + 7230) * 1000,
        "call_end_status": 1,
        "duration_s": 3660,
    }
    table = pa.Table.from_pylist([{k: row[k] for k in RECORD_SCHEMA.names}], schema=RECORD_SCHEMA)
    with tempfile.TemporaryDirectory() as scratch:
        analytics = DayAnalytics(Path(scratch), start, start + 86400, tz, AnalyticsSettings())
        analytics.add(Enricher(tz, "CN")(table))
        hourly = analytics.finish(CDR_SCHEMA, QUERIES).hourly.to_pylist()
    assert [h["talk_seconds"] for h in hourly[:4]] == [30, 3600, 30, 0]
    assert [h["peak_concurrent_calls"] for h in hourly[:4]] == [1, 1, 1, 0]
    assert [h["busy_hour"] for h in hourly[:3]] == [False, True, False]


def test_a_query_that_cannot_fit_duckdbs_limit_is_asked_again_under_the_larger(
    abusive_days, tmp_path, monkeypatch
):
    from cdr_pipeline.transform import analytics as analytics_module

    env, day = abusive_days, DAYS[0]
    rows, span = publish.read_day_table(env.store, "cdr", day), env.day(day)
    results = []
    for limits in (analytics_module.DUCKDB_MEMORY, ("1MB", "512MB")):
        monkeypatch.setattr(analytics_module, "DUCKDB_MEMORY", limits)
        analytics = DayAnalytics(tmp_path, span.start, span.end, env.tz, AnalyticsSettings())
        analytics.add(rows)
        results.append((analytics.finish(CDR_SCHEMA, QUERIES), analytics.memory_retries))
    (normal, none), (squeezed, retried) = results
    assert none == 0 and retried > 0
    assert squeezed.queried == normal.queried and squeezed.billing == normal.billing
    assert len(normal.queried["caller_risk_daily"]) > 0


def test_the_grouping_switch_gives_the_same_answers_by_parsing_each_number():
    """CDR_NUMBER_GROUPING=false: every distinct number parsed by libphonenumber, no group
    formed; the answers are the grouped ones."""
    from cdr_pipeline.transform.phones import normalise, parse_number

    numbers = pa.array([*_samples(7), "+86 136-3123-4568", "0086 (136) 3123 4568", None, "x"])
    grouped = NumberBook("CN").resolve(numbers)
    parse_number.cache_clear()
    book = NumberBook("CN", grouping=False)
    assert book.resolve(numbers) == grouped
    assert not book._groups and not book._sizes  # no group was formed or counted
    distinct = {normalise(n) for n in numbers.to_pylist() if n is not None}
    assert parse_number.cache_info().misses == len(distinct)  # each parsed once, by itself


def test_the_internals_the_grouping_relies_on_are_as_it_reads_them():
    """The grouping reads regular expressions with CPython's private parser (``re._parser``,
    ``re._constants``) and number types with phonenumbers' private ``_number_type_helper``.
    An upgrade that changes them fails here, not in a run: set CDR_NUMBER_GROUPING=false (the
    same answers, each number parsed) until transform/phones.py is adapted."""
    import re._constants as sre
    import re._parser as sre_parse

    from phonenumbers.phonenumberutil import _number_type_helper

    tree = list(sre_parse.parse(r"1(?:3\d|5[0-35-9])\d{8}|4(\d)?"))
    assert tree[0][0] is sre.BRANCH
    first, second = tree[0][1][1]
    assert [op for op, _ in first] == [sre.LITERAL, sre.BRANCH, sre.MAX_REPEAT]
    assert first[0][1] == ord("1") and first[2][1][:2] == (8, 8)
    assert list(first[2][1][2]) == [(sre.IN, [(sre.CATEGORY, sre.CATEGORY_DIGIT)])]
    assert [op for op, _ in second] == [sre.LITERAL, sre.MAX_REPEAT]
    assert next(iter(second[1][1][2]))[0] is sre.SUBPATTERN  # a group: (group, flags, flags, it)
    digits = list(sre_parse.parse("[0-9]"))
    assert digits == [(sre.IN, [(sre.RANGE, (48, 57))])]
    for op in ("AT", "GROUPREF", "MIN_REPEAT", "NOT_LITERAL", "ANY", "BRANCH", "SUBPATTERN"):
        assert isinstance(getattr(sre, op), sre._NamedIntConstant), op
    metadata = pn.PhoneMetadata.metadata_for_region("CN")
    assert _number_type_helper("13631234568", metadata) == pn.PhoneNumberType.MOBILE
    assert _number_type_helper("1063123456", metadata) == pn.PhoneNumberType.FIXED_LINE


_CALL = st.tuples(
    st.sampled_from([1, 1, 2, None]),  # call_end_status
    st.sampled_from([None, 0, 0, 6, 30, 60, 90, 120]) | st.integers(0, 400),  # duration_s
    st.none() | st.integers(0, 86_400_000),  # dst_accept_time, epoch milliseconds
    # the talk, milliseconds (end - accept): none or less, at and beside whole increments
    st.none()
    | st.sampled_from([-1_000, 0, 1, 5_999, 6_000, 60_000, 60_001])
    | st.integers(-5_000, 400_000),
)


@settings(max_examples=2 * settings.default.max_examples)
@given(st.lists(_CALL, max_size=60), st.integers(0, 60))
def test_the_billing_counts_gathered_in_slices_are_what_duckdb_counts(calls, cut):
    """The billing figures gathered slice by slice are the contract's clauses asked of DuckDB
    over the whole day, for every increment: bills on whole and odd milliseconds of talk,
    talk of no or negative length, and every value missing."""
    import duckdb

    from cdr_pipeline.transform.analytics import _RECONCILE
    from cdr_pipeline.transform.sums import INCREMENTS, Billing, Decoded

    ts = pa.timestamp("ms", tz="UTC")
    day = pa.table(
        {
            "call_id": [str(i) for i in range(len(calls))],
            "call_end_status": pa.array([c[0] for c in calls], pa.int8()),
            "duration_s": pa.array([c[1] for c in calls], pa.int32()),
            "dst_accept_time": pa.array([c[2] for c in calls], pa.int64()).cast(ts),
            "end_call_time": pa.array(
                [None if c[2] is None or c[3] is None else c[2] + c[3] for c in calls], pa.int64()
            ).cast(ts),
        }
    )
    billing = Billing()
    for part in (day.slice(0, cut), day.slice(cut)):
        billing.add(Decoded(part))
    con = duckdb.connect()
    con.register("calls", day)
    reconciled = "call_end_status = 1 and dst_accept_time is not null and end_call_time is not null"
    billed = f"{reconciled} and duration_s > 0"
    multiples = ", ".join(
        f"count(*) filter (where {billed} and duration_s % {i} = 0)" for i in INCREMENTS
    )
    counts = con.sql(
        f"""select count(*) filter (where {reconciled}), count(*) filter (where {billed}),
               {multiples},
               count(*) filter (where duration_s > 0 and dst_accept_time is null),
               count(*) filter (where dst_accept_time is not null and end_call_time is not null
                                and end_call_time > dst_accept_time and duration_s = 0)
            from calls"""
    ).fetchall()[0]
    assert counts == (
        billing.reconciled,
        billing.billed,
        *(billing.multiples[i] for i in INCREMENTS),
        billing.billed_without_answer,
        billing.answered_without_billing,
    )
    matched = f"select count(*) from ({_RECONCILE.format(source='calls')}) where billed = expected"
    for inc in (*INCREMENTS, 1):
        assert billing.matched[inc] == con.sql(matched, params={"inc": inc}).fetchall()[0][0]


_DAY_MS = 1_709_222_400_000  # 2024-03-01 00:00 in Shanghai, UTC milliseconds
_ROW = st.fixed_dictionaries(
    {
        # the start, ms from the day's: some before or after it, some off a whole second
        "start": st.integers(-7_200_000, 93_600_000) | st.sampled_from([0, 999, 86_399_999]),
        # each later time's gap after the start, ms (None: absent)
        "gaps": st.lists(st.none() | st.integers(0, 4_000_000), min_size=6, max_size=6),
        "status": st.sampled_from([1, 1, 2, 3, 4, 5]),
        "duration": st.sampled_from([0, 6, 30, 60, 61]) | st.integers(0, 4_000),
        "url": st.sampled_from([None, "u"]),
        "call_type": st.sampled_from([0, 1, 3]),
    }
)


def _rows(rows: list[dict]) -> pa.Table:
    from cdr_pipeline.transform.summarize import TIME_COLUMNS
    from cdr_pipeline.transform.validate import STATUS_LABELS

    start = [_DAY_MS + r["start"] for r in rows]
    columns = {TIME_COLUMNS[0]: start}
    for i, name in enumerate(TIME_COLUMNS[1:]):
        columns[name] = [
            None if r["gaps"][i] is None else s + r["gaps"][i]
            for s, r in zip(start, rows, strict=True)
        ]
    return pa.table(
        {
            **{n: pa.array(v, pa.timestamp("ms", tz="UTC")) for n, v in columns.items()},
            "call_end_status": pa.array([r["status"] for r in rows], pa.int8()),
            "call_end_status_label": [STATUS_LABELS[r["status"]] for r in rows],
            "duration_s": pa.array([r["duration"] for r in rows], pa.int32()),
            "record_url": pa.array([r["url"] for r in rows], pa.string()),
            "call_type": pa.array([r["call_type"] for r in rows], pa.int8()),
        }
    )


@settings(deadline=None)
@given(st.lists(_ROW, max_size=40), st.lists(st.booleans(), max_size=40), st.integers(0, 40))
def test_the_sums_less_some_rows_are_the_sums_of_the_rest(tmp_path_factory, rows, gone, cut):
    """A re-build after an erasure takes the erased rows' sums out of the published day's
    (kept as JSON) instead of reading the rest again: it must give what gathering the rest
    gives, every aggregate and the sums themselves, however the rows were sliced. The rows
    start around the day's edges and off whole seconds, with times absent."""
    from cdr_pipeline.gathered import Gathered
    from cdr_pipeline.layout import Day
    from cdr_pipeline.store import json_bytes

    tz = ZoneInfo("Asia/Shanghai")
    day = Day.from_key("2024-03-01", tz)
    scratch = tmp_path_factory.mktemp("sums")
    table = _rows(rows)
    hit = pa.array([i < len(gone) and gone[i] for i in range(len(rows))], pa.bool_())

    def gathered(*parts: pa.Table) -> Gathered:
        g = Gathered(
            day,
            tz,
            AnalyticsSettings(),
            scratch,
            expected_rows=0,
            spills=False,
            keep_rows=False,
            distinct=False,
        )
        for part in parts:
            g.add(part)
        return g

    published = gathered(table.slice(0, cut), table.slice(cut))
    kept = json.loads(json_bytes(published.state()))
    amended = gathered()
    amended.restore(kept)
    amended.less(gathered(table.filter(hit)))
    rest = gathered(table.filter(pc.invert(hit)))
    assert json_bytes(amended.state()) == json_bytes(rest.state())
    accounting = {"rejected": 0, "duplicates_dropped": 0}
    assert amended.outcome.table().equals(rest.outcome.table())
    assert amended.kpis.values(accounting, (0, 0)) == rest.kpis.values(accounting, (0, 0))
    assert amended.analytics.load.table(tz).equals(rest.analytics.load.table(tz))
    assert amended.analytics.billing.figures() == rest.analytics.billing.figures()
