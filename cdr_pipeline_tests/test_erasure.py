"""A build after an erasure re-uses the published day: the same files a build from the raw
layer makes, or a build from the raw layer where the published day cannot stand in."""

from __future__ import annotations

import io
import json
import re
import shutil
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from cdr_pipeline import day as daily
from cdr_pipeline import erasure, footer, publish, rebuild
from cdr_pipeline.cli.erase import RUN_DAYS, _runs_of
from cdr_pipeline.day import build_day
from cdr_pipeline.erasure import FEW_ERASED, needle_of, without
from cdr_pipeline.layout import ERASURES_KEY, StorageError, state_key
from cdr_pipeline.privacy import Pseudonyms, canonical
from cdr_pipeline.raw import prune_raw_day
from cdr_pipeline.rebuild import built_by, reuse_refusal
from cdr_pipeline.settings import AnalyticsSettings
from cdr_pipeline.store import open_store
from cdr_pipeline.transform import analytics, summarize
from cdr_pipeline_tests.conftest import Env

KEY = "k3y-0f-the-erasure-tests-" + "x" * 16
DAY = "2024-03-01"
OTHER_REGION = re.escape("another CDR_DEFAULT_REGION (region CN; this deployment's is US)")


def _files(root) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.parent.name != "erasures"  # the audit holds the time of asking
    }


def _published(root) -> dict[str, bytes]:
    """A zone's datasets and records, without the raw layer (which the erasure re-writes)."""
    return {k: v for k, v in _files(root).items() if not k.startswith("raw/")}


def _power_cut(*_args: object, **_kwargs: object) -> None:
    raise OSError("power cut")


def _not_called(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("not expected to be called")


def _victim(root) -> str:
    """A caller of the day with calls, copies and a rejected record: the hardest to erase."""
    rejects = pq.read_table(root / "cdr_rejects" / f"date={DAY}" / "part-0.parquet")
    in_rejects = set()
    for raw in rejects.column("raw").to_pylist():
        rec = json.loads(raw) if raw and raw.startswith("{") else None
        if isinstance(rec, dict) and isinstance(rec.get("src"), str) and canonical(rec["src"]):
            in_rejects.add(canonical(rec["src"]))
    cdr = pq.read_table(root / "cdr" / f"date={DAY}" / "part-0.parquet", columns=["src_e164"])
    calls = Counter(cdr.column("src_e164").to_pylist())
    return max(in_rejects & set(calls), key=lambda n: (calls[n], n))


def _groups(data: bytes) -> list[bytes]:
    """A Parquet file's row groups, as their bytes."""
    found = footer.groups(footer.read_footer(io.BytesIO(data), len(data)))
    return [data[g.start : g.end] for g in found]


def test_a_build_after_an_erasure_reuses_the_published_day_and_makes_the_same_files(
    monkeypatch, tmp_path, sim_server, instance
):
    """The same rows and files as a build from the raw layer; ``cdr``'s row groups without
    an erased row copied as they were (groups of 64 rows, so a day has several; the others
    written again a slice of 16 rows at a time)."""
    monkeypatch.setattr(publish, "ROW_GROUP_ROWS", 64)
    monkeypatch.setattr(rebuild, "SLICE_ROWS", 16)
    env = Env(
        monkeypatch,
        tmp_path,
        sim_server(calls_per_day=500, bad_record_rate=0.08, duplicate_rate=0.4, abuse=True),
        CDR_PSEUDONYM_KEY=KEY,
        CDR_SHARED_DATA_DIR=str(tmp_path / "shared"),
    )
    assert env.run(instance, DAY).success
    number = _victim(env.root)
    p = Pseudonyms(KEY)
    tokens = frozenset({p.token(number)})
    published = {z: _published(r) for z, r in (("data", env.root), ("shared", tmp_path / "shared"))}
    built = {}
    for name, reuse in (("reused", True), ("from_raw", False)):
        shutil.copytree(env.root, tmp_path / name / "data")
        shutil.copytree(tmp_path / "shared", tmp_path / name / "shared")
        store = open_store(tmp_path / name / "data")
        store.shared = open_store(tmp_path / name / "shared")
        erasure.record(store, p.token(number), p, None, None)
        removed = erasure.erase_raw(store, env.day(DAY), env.tz, tokens, p, needle_of(number))
        assert removed > 0
        if reuse:  # interrupted first: each zone keeps its whole published version
            with monkeypatch.context() as m:
                m.setattr(daily, "aggregate", _power_cut)
                with pytest.raises(OSError, match="power cut"):
                    build_day(store, env.day(DAY), env.tz, pseudonyms=p, reuse=True)
            for zone, was in published.items():
                assert _published(tmp_path / name / zone) == was
        with monkeypatch.context() as m:
            if reuse:  # the shared cdr is its published rows less the erased: no key's work
                m.setattr(daily, "shared_from_staged", _not_called)
            built[name] = build_day(store, env.day(DAY), env.tz, pseudonyms=p, reuse=reuse)
    assert built["reused"].from_published, built["reused"].reuse_refused
    assert not built["from_raw"].from_published
    accounting = built["reused"].accounting
    assert accounting == built["from_raw"].accounting
    manifest = json.loads(
        (tmp_path / "reused/data/raw/cdr" / f"date={DAY}/manifest.json").read_text()
    )
    gone = manifest["erasure"]["removed"]
    assert (
        gone["valid"] and gone["rejected"] and gone["duplicates_dropped"] + gone["overlap_copies"]
    )
    assert accounting["erased"] == removed
    buckets = ("valid", "rejected", "duplicates_dropped", "overlap_copies", "outside_day")
    assert accounting["fetched"] == sum(accounting[b] for b in buckets) + accounting["erased"]
    cdr = f"cdr/date={DAY}/part-0.parquet"
    shared = pq.ParquetFile(io.BytesIO(published["shared"][cdr]))
    untouched = 0  # groups no erased row is in
    for i in range(shared.num_row_groups):
        group = shared.read_row_group(i, columns=["src_token", "dst_token"])
        untouched += tokens.isdisjoint(
            group["src_token"].to_pylist() + group["dst_token"].to_pylist()
        )
    assert 0 < untouched < shared.num_row_groups
    for zone in ("data", "shared"):  # every file of both zones byte for byte, but cdr's
        reused, from_raw = _files(tmp_path / "reused" / zone), _files(tmp_path / "from_raw" / zone)
        assert reused.keys() == from_raw.keys()
        assert [k for k in reused if reused[k] != from_raw[k] and k != cdr] == []
        rows = [pq.read_table(io.BytesIO(f[cdr])) for f in (reused, from_raw)]
        assert rows[0].equals(rows[1])
        was, now = set(_groups(published[zone][cdr])), _groups(reused[cdr])
        assert sum(g in was for g in now) == untouched
        assert len(now) > shared.num_row_groups  # the others in slices of 16 rows at most

    # numbers read in another region than the erasures' get other tokens: refused
    store = open_store(tmp_path / "reused" / "data")
    store.shared = open_store(tmp_path / "reused" / "shared")
    before = _published(tmp_path / "reused" / "data")
    with pytest.raises(StorageError, match=OTHER_REGION):
        build_day(store, env.day(DAY), env.tz, pseudonyms=Pseudonyms(KEY, "US"), reuse=True)
    assert _published(tmp_path / "reused" / "data") == before

    # with its raw layer pruned, the published day is all there is: still erasable
    assert prune_raw_day(store, DAY)
    with pytest.raises(StorageError, match="no raw CDRs"):
        build_day(store, env.day(DAY), env.tz, pseudonyms=p)
    cdr = pq.read_table(tmp_path / "reused/data/cdr" / f"date={DAY}" / "part-0.parquet")
    second = Counter(cdr.column("dst_e164").to_pylist()).most_common(1)[0][0]
    erasure.record(store, p.token(second), p, None, None)
    last = build_day(store, env.day(DAY), env.tz, pseudonyms=p, reuse=True)
    assert last.from_published
    after = pq.read_table(tmp_path / "reused/data/cdr" / f"date={DAY}" / "part-0.parquet")
    assert second not in set(after.column("dst_e164").to_pylist())
    acc = last.accounting
    assert acc["valid"] == after.num_rows < cdr.num_rows
    assert acc["fetched"] == sum(acc[b] for b in buckets) + acc["erased"]


def _erased_both(
    monkeypatch, env: Env, number: str, settings: AnalyticsSettings, patch
) -> dict[str, Any]:
    """Erase ``number`` from copies of the day, then build each again: from the published
    day (under ``patch``, a monkeypatch context taking it) and from the raw layer; the
    former's accounting."""
    p = Pseudonyms(KEY)
    tokens = frozenset({p.token(number)})
    accountings = {}
    for name, reuse in (("reused", True), ("from_raw", False)):
        root = env.root.parent / name
        shutil.copytree(env.root, root / "data")
        shutil.copytree(env.root.parent / "shared", root / "shared")
        store = open_store(root / "data")
        store.shared = open_store(root / "shared")
        erasure.record(store, p.token(number), p, None, None)
        assert erasure.erase_raw(store, env.day(DAY), env.tz, tokens, p, needle_of(number))
        with monkeypatch.context() as m:
            if reuse:
                patch(m)
            built = build_day(
                store, env.day(DAY), env.tz, pseudonyms=p, reuse=reuse, analytics=settings
            )
        assert built.from_published is reuse, built.reuse_refused
        accountings[reuse] = built.accounting
    for zone in ("data", "shared"):
        reused = _files(env.root.parent / "reused" / zone)
        from_raw = _files(env.root.parent / "from_raw" / zone)
        cdr = f"cdr/date={DAY}/part-0.parquet"
        assert [k for k in reused if reused[k] != from_raw.get(k) and k != cdr] == []
        assert pq.read_table(io.BytesIO(reused[cdr])).equals(
            pq.read_table(io.BytesIO(from_raw[cdr]))
        )
    return accountings[True]


@pytest.mark.parametrize(
    "who",
    ["flagged caller", "callee of flagged callers", "new thresholds", "no sums", "odd sums"],
)
def test_a_rebuild_asks_the_risk_again_only_of_the_callers_that_lost_calls(
    monkeypatch, tmp_path, sim_server, instance, who
):
    """After an erasure, ``caller_risk_daily`` keeps the published rows of the callers that
    lost no call and asks the rest again, the unique callers and callees are the published
    counts less the numbers gone, and the other aggregates' sums are the published ones less
    the erased rows': the same files as a build from the raw layer, whoever is erased. Asked
    with other thresholds than the published rows, every caller is asked again and every
    number counted; a day published without sums (by older code) has them gathered again
    from every row, and so does a day whose sums cannot be read back (of a day of another
    length: a hand-made copy)."""
    env = Env(
        monkeypatch,
        tmp_path,
        sim_server(calls_per_day=500, duplicate_rate=0.2, abuse=True),
        CDR_PSEUDONYM_KEY=KEY,
        CDR_SHARED_DATA_DIR=str(tmp_path / "shared"),
    )
    assert env.run(instance, DAY).success
    risk_file = f"caller_risk_daily/date={DAY}/part-0.parquet"
    risk = pq.read_table(env.root / risk_file)
    flagged = risk.column("src").to_pylist()
    calls = pq.read_table(env.root / f"cdr/date={DAY}/part-0.parquet", columns=["src", "dst"])
    callees: dict[str, set[str]] = {}  # of each flagged caller
    for s, d in zip(*calls.to_pydict().values(), strict=True):
        if s in flagged and d:
            callees.setdefault(s, set()).add(d)
    fan = max(callees, key=lambda s: (len(callees[s]), s))  # it keeps calls to others
    settings = AnalyticsSettings()
    number = flagged[0] if who == "flagged caller" else min(callees[fan] - set(flagged))
    if who == "new thresholds":
        settings = AnalyticsSettings(fan_out_destinations=settings.fan_out_destinations + 1)
    if who == "no sums":
        (env.root / state_key("sums", DAY)).unlink()
        record = json.loads((env.root / state_key("validation", DAY)).read_text())
        del record["sums"]
        (env.root / state_key("validation", DAY)).write_text(json.dumps(record))
    if who == "odd sums":  # read back, they fail half way: what was restored must not stay
        sums = json.loads((env.root / state_key("sums", DAY)).read_text())
        sums["load"]["attempts"] = sums["load"]["attempts"][:-1]
        (env.root / state_key("sums", DAY)).write_text(json.dumps(sums))
    asked: list[str] = []
    amended = analytics.DayAnalytics._amended

    def counted(self, con, query, published, callers):
        asked.append(len(callers))
        return amended(self, con, query, published, callers)

    gathered: list[int] = []  # the rows the KPIs' sums were gathered from
    add = summarize.KpiSummary.add

    def gathering(self, part):
        gathered.append(len(part))
        return add(self, part)

    def patch(m) -> None:
        m.setattr(analytics.DayAnalytics, "_amended", counted)
        m.setattr(summarize.KpiSummary, "add", gathering)
        if who != "new thresholds":  # the published counts are amended, not counted again
            m.setattr(summarize._Distinct, "add", _not_called)

    erased = _erased_both(monkeypatch, env, number, settings, patch)
    # the published sums less the erased rows': only those rows were read for them
    everything = who in ("no sums", "odd sums")
    assert sum(gathered) == (erased["valid"] if everything else len(calls) - erased["valid"])
    assert 0 < len(calls) - erased["valid"] < len(calls)
    assert asked == ([] if who == "new thresholds" else [asked[0]])
    assert not asked or 0 < asked[0] < len(set(calls.column("src").to_pylist()))
    now = pq.read_table(tmp_path / "reused" / "data" / risk_file)
    if who == "flagged caller":
        assert number not in now.column("src").to_pylist()
    elif who == "callee of flagged callers":  # its caller called one number fewer
        row = {r["src"]: r for r in now.to_pylist()}[fan]
        was = {r["src"]: r for r in risk.to_pylist()}[fan]
        assert row["distinct_destinations"] == was["distinct_destinations"] - 1


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({}, None),
        ({"raw": "0" * 64}, "the raw layer changed since the published day was built"),
        ({"built": {"transform": "0"}}, "the published day was built by other code or settings"),
        ({"cleared": {"mode": "remove"}}, "the day was cleared of its numbers"),
        ({"accounting": {"duplicates_conflicting": 1}}, "some calls' versions disagree"),
    ],
)
def test_the_published_day_stands_in_only_for_what_it_was_built_from(change, why):
    built = built_by(__import__("zoneinfo").ZoneInfo("Asia/Shanghai"), "CN")
    record = {"raw": "a" * 64, "built": built, "accounting": {"duplicates_conflicting": 0}}
    erased = {"erasure": {"from": "a" * 64}}  # the raw layer the last erasure changed
    assert reuse_refusal(record | change, erased, "b" * 64, built) == why
    assert reuse_refusal(record | change, {}, "a" * 64, built) == why  # no erasure since
    assert reuse_refusal(None, {}, "a" * 64, built) == "nothing is published for the day"


def test_a_request_is_recognised_only_under_its_key_and_region(tmp_path):
    store, p = open_store(tmp_path), Pseudonyms(KEY)
    old = {"token": p.token("13612345678"), "key_id": p.key_id, "days": [], "records": 0}
    old |= {"start": None, "end": None, "requested_at": datetime(2024, 3, 1, tzinfo=UTC)}
    store.put(ERASURES_KEY, _parquet([old]))  # kept before the region was
    assert erasure.tokens_for(store, DAY, Pseudonyms(KEY, "US")) == {old["token"]}  # not known
    erasure.record(store, p.token("13712345678"), p, "2024-03-02", None)
    assert erasure.requests(store)[0]["region"] is None
    assert erasure.tokens_for(store, DAY, Pseudonyms(KEY, "US")) == {old["token"]}  # not 02
    with pytest.raises(StorageError, match=OTHER_REGION):
        erasure.tokens_for(store, "2024-03-02", Pseudonyms(KEY, "US"))
    with pytest.raises(StorageError, match="another CDR_PSEUDONYM_KEY"):
        erasure.tokens_for(store, "2024-03-02", Pseudonyms(KEY + "!"))
    assert len(erasure.tokens_for(store, "2024-03-02", p)) == 2


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue().to_pybytes()


def test_consecutive_days_are_rebuilt_in_runs_of_a_week_at_most():
    found = [erasure.Found(d, 1, 0) for d in ("2024-02-28", "2024-02-29", "2024-03-01")]
    found += [erasure.Found("2024-03-03", 2, 0), erasure.Found("2024-03-04", 0, 1)]
    runs = _runs_of(found)
    assert [[f.day for f in run] for run in runs] == [
        ["2024-02-28", "2024-02-29", "2024-03-01"],
        ["2024-03-03", "2024-03-04"],
    ]
    assert _runs_of([]) == []
    # a run ends after RUN_DAYS days, so that a long erase says how far it is
    month = [erasure.Found(f"2024-03-{d:02d}", 1, 0) for d in range(1, 18)]
    sizes = [len(run) for run in _runs_of(month)]
    assert sizes == [RUN_DAYS, RUN_DAYS, 17 - 2 * RUN_DAYS]
    assert [f for run in _runs_of(month) for f in run] == month


@pytest.mark.parametrize(
    ("made_under", "present", "takes_tokens"),
    [
        ("this", True, True),
        ("other", True, False),  # another key: its tokens would not match the requests'
        (None, True, False),  # made before the record said under which key
        ("this", False, False),  # the shared zone was configured after the day was built
    ],
)
def test_the_shared_zones_tokens_are_taken_as_made_only_under_this_key(
    tmp_path, made_under, present, takes_tokens
):
    from cdr_pipeline.layout import Day, part_key
    from cdr_pipeline.rebuild import FromPublished

    p = Pseudonyms(KEY)
    store = open_store(tmp_path / "data")
    store.shared = open_store(tmp_path / "shared")
    if present:
        store.shared.put(part_key("cdr", DAY), b"PAR1")
    key_id = {"this": p.key_id, "other": Pseudonyms(KEY + "!").key_id, None: None}[made_under]
    record = {"source": "simulator", "fetch": {"records": 1}, "shared_key_id": key_id}
    source = FromPublished(store, Day(DAY, 0, 86400), None, record, None, p.key_id)
    assert (source.shared is not None) is takes_tokens


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        ("reversed", "the shared zone's cdr does not hold the restricted one's calls"),
        ("one more", "the shared zone's cdr holds calls the restricted one does not"),
        ("regrouped", None),  # the same rows in row groups of another size: still taken
        ("indexed", None),  # with page indexes, which a splice would leave behind: re-written
    ],
)
def test_a_shared_cdr_decides_what_is_erased_only_where_it_holds_the_same_calls(
    monkeypatch, tmp_path, sim_server, instance, change, refused
):
    """Its tokens say which rows go only where it holds the restricted file's calls, row for
    row, however its row groups fall; another version copied in sends the build to the raw
    layer."""
    shared = tmp_path / "shared"
    env = Env(
        monkeypatch,
        tmp_path,
        sim_server(calls_per_day=300),
        CDR_PSEUDONYM_KEY=KEY,
        CDR_SHARED_DATA_DIR=str(shared),
    )
    assert env.run(instance, DAY).success
    copied = shared / "cdr" / f"date={DAY}" / "part-0.parquet"
    table = pq.read_table(copied)
    if change == "reversed":
        pq.write_table(table.take(list(range(table.num_rows - 1, -1, -1))), copied)
    elif change == "one more":
        pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), copied)
    elif change == "indexed":
        pq.write_table(table, copied, row_group_size=37, write_page_index=True)
    else:
        pq.write_table(table, copied, row_group_size=37)
    cdr = pq.read_table(env.root / "cdr" / f"date={DAY}" / "part-0.parquet")
    number = Counter(cdr.column("src_e164").to_pylist()).most_common(1)[0][0]
    p = Pseudonyms(KEY)
    tokens = frozenset({p.token(number)})
    store = open_store(env.root)
    store.shared = open_store(shared)
    erasure.record(store, p.token(number), p, None, None)
    erasure.erase_raw(store, env.day(DAY), env.tz, tokens, p, needle_of(number))
    with monkeypatch.context() as m:
        if refused is None:  # the shared cdr is its rows less the erased: no key's work
            m.setattr(daily, "shared_from_staged", _not_called)
        built = build_day(store, env.day(DAY), env.tz, pseudonyms=p, reuse=True)
    assert built.from_published is (refused is None)
    assert built.reuse_refused == refused
    after = pq.read_table(copied)
    assert len(after) == built.accounting["valid"] < len(cdr)
    assert tokens.isdisjoint(after["src_token"].to_pylist() + after["dst_token"].to_pylist())
    if refused is None:  # every other row as it was, in its order
        src, dst = table["src_token"].to_pylist(), table["dst_token"].to_pylist()
        kept = [s not in tokens and d not in tokens for s, d in zip(src, dst, strict=True)]
        assert after.equals(table.filter(kept))


@pytest.mark.parametrize("erased", [0, 1, 3, FEW_ERASED, FEW_ERASED + 1, "all"])
def test_erased_rows_leave_the_same_rows_and_bytes_as_a_filter(tmp_path, erased):
    rng = np.random.default_rng(7)
    n = 3 * 16_384 + 5
    ids = [f"call-{i:07d}" for i in range(n)]
    table = pa.table(
        {
            "call_id": ids,  # stored plain
            "status": pa.array(rng.integers(0, 6, n), pa.int8()),
            "label": pa.array(rng.choice(["a", "b", None], n)),  # with a dictionary, nulls
        }
    )
    parts = [table.slice(s, 16_384) for s in range(0, n, 16_384)]
    kept, filtered = [], []
    for part in parts:
        mask = np.zeros(len(part), dtype=bool)
        count = len(part) if erased == "all" else min(erased, len(part))
        mask[rng.choice(len(part), count, replace=False)] = True
        hit = pa.chunked_array([pa.array(mask)])
        out, want = without(part, hit), part.filter(pc.invert(hit))
        assert out.equals(want)
        if 0 < count <= FEW_ERASED and not mask[0]:  # joined slices of the part: no copy
            first = out.column("call_id").chunk(0).buffers()[2]
            assert first.address == part.column("call_id").chunk(0).buffers()[2].address
        kept.append(out)
        filtered.append(want)
    a, b = tmp_path / "kept.parquet", tmp_path / "filtered.parquet"
    publish.write_parquet(a, (table.schema, iter(kept)))
    publish.write_parquet(b, (table.schema, iter(filtered)))
    assert a.read_bytes() == b.read_bytes()
