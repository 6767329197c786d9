"""Phone numbers where people look: with CDR_PSEUDONYM_KEY set, the UI's metadata, the checks
and the HTML report show a masked number and its token, never the number."""

from __future__ import annotations

import json
import os
import re
import zlib
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import hypothesis.strategies as st
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings

from cdr_pipeline import cli
from cdr_pipeline.erasure import needle_of
from cdr_pipeline.layout import StorageError
from cdr_pipeline.privacy import Pseudonyms, canonical, canonical_column, mask, mask_column
from cdr_pipeline.publish import DayTransaction, recover_day
from cdr_pipeline.retention import clear_old_days
from cdr_pipeline.settings import ConfigError, load_settings
from cdr_pipeline.store import LocalStore, open_store
from cdr_pipeline.transform.phones import NumberBook
from cdr_pipeline_tests.conftest import Env

KEY = "k3y-0f-the-pseudonyms-" + "x" * 16
OTHER = "another-key-of-the-pseudonyms-" + "y" * 8


def test_a_token_is_stable_keyed_and_the_same_for_every_spelling():
    ours, theirs = Pseudonyms(KEY), Pseudonyms(OTHER)
    spellings = ["13631234568", "+86 136-3123-4568", "008613631234568", "+8613631234568"]
    assert len({ours.token(s) for s in spellings}) == 1
    token = ours.token(spellings[0])
    assert re.fullmatch(r"[0-9a-f]{24}", token)  # 96 bits
    assert Pseudonyms(KEY).token("13631234568") == token  # another process, the same token
    assert theirs.token("13631234568") != token
    assert ours.token("13631234569") != token
    assert mask("13631234568") == "+86 136****4568"
    assert mask("+14155550123") == "+1 415***0123"
    assert mask("<!channel>") == "***"
    assert ours.shown("13631234568") == f"+86 136****4568 ({token})"
    assert Pseudonyms(None).shown("13631234568") == "13631234568"  # no key: as it was
    assert KEY not in repr(ours)
    assert canonical("136 3123 4568") == "+8613631234568"


def test_a_short_key_is_refused_without_being_shown(tmp_path):
    with pytest.raises(ConfigError, match=r"CDR_PSEUDONYM_KEY=\*\*\*: must be at least 32") as e:
        load_settings({"CDR_DATA_DIR": str(tmp_path), "CDR_PSEUDONYM_KEY": "short-key-1"})
    assert "short-key-1" not in str(e.value)


def _spellings(number: str) -> set[str]:
    e164 = canonical(number)
    return {number, e164, e164.lstrip("+"), "00" + e164.lstrip("+"), e164.removeprefix("+86")}


@pytest.mark.slow
def test_no_clear_number_in_the_ui_the_checks_or_the_report(
    monkeypatch, tmp_path, sim_server, instance, capsys
):
    env = Env(
        monkeypatch,
        tmp_path,
        sim_server(calls_per_day=600, abuse=True),
        CDR_PSEUDONYM_KEY=KEY,
        CDR_SHARED_DATA_DIR=str(tmp_path / "shared"),
    )
    days = ["2024-03-01", "2024-03-02"]
    result = env.run(instance, *days)
    assert result.success
    flagged = [
        pq.read_table(env.root / "caller_risk_daily" / f"date={d}" / "part-0.parquet") for d in days
    ]
    callers = {n for t in flagged for n in t.column("src").to_pylist()}
    assert callers  # the simulator's abusive callers were flagged
    # what people see: every partition's metadata, every check's result, the HTML report
    seen = []
    for asset in env.defs.resolve_asset_graph().get_all_asset_keys():
        for day in days:
            events = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[day]), limit=5
            ).records
            for record in events:
                meta = record.asset_materialization.metadata
                seen += [str(getattr(v, "value", v)) for v in meta.values()]
    for evaluation in result.get_asset_check_evaluations():
        seen.append(evaluation.description or "")
        seen += [str(getattr(v, "value", v)) for v in evaluation.metadata.values()]
    out = tmp_path / "report.html"
    assert cli.main(["report", "--start", days[0], "--end", days[-1], "--out", str(out)]) == 0
    seen.append(out.read_text())
    text = "\n".join(seen)
    leaked = sorted(s for n in callers for s in _spellings(n) if s in text)
    assert not leaked, leaked
    assert KEY not in text
    # instead: each flagged caller masked, with the token it has on every day
    ours = Pseudonyms(KEY)
    for number in callers:
        assert ours.shown(number) in text
    risk_meta = json.dumps(
        [
            str(r.asset_materialization.metadata["preview"].value)
            for r in instance.fetch_materializations(
                dg.AssetKey("caller_risk_daily"), limit=10
            ).records
        ]
    )
    repeated = {n for n in callers if all(n in t.column("src").to_pylist() for t in flagged)}
    for number in repeated:
        assert risk_meta.count(ours.token(number)) == len(days)


def _shared_digits(root) -> set[str]:
    """Every run of 7 or more digits in the values of every file of a shared zone."""
    runs: set[str] = set()
    for path in root.rglob("*.parquet"):
        text = json.dumps(pq.read_table(path).to_pylist(), default=str)
        runs |= set(re.findall(r"\d{7,}", text))
    return runs


def _numbers(root, days) -> set[str]:
    cdr = [pq.read_table(root / "cdr" / f"date={d}" / "part-0.parquet") for d in days]
    return {n for t in cdr for c in ("src", "dst") for n in t.column(c).to_pylist() if n}


def _private_env(monkeypatch, tmp_path, server) -> tuple[Env, Path]:
    """A project with the key and its shared zone, and Dagster's home of its own (the erase
    command opens the instance)."""
    shared = tmp_path / "shared"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    env = Env(monkeypatch, tmp_path, server, CDR_PSEUDONYM_KEY=KEY, CDR_SHARED_DATA_DIR=str(shared))
    return env, shared


@pytest.mark.slow
def test_the_shared_zone_holds_no_clear_number_and_erasure_survives_a_refetch(
    monkeypatch, tmp_path, sim_server, instance, capfd
):
    server = sim_server(calls_per_day=400, bad_record_rate=0.05, duplicate_rate=0.05)
    env, shared = _private_env(monkeypatch, tmp_path, server)
    days = ["2024-03-01", "2024-03-02"]
    assert env.run(instance, *days).success
    # the shared zone: every dataset, the same layout, no clear number in any value
    for d in days:
        for name in ("cdr", "cdr_rejects", "call_kpis_daily", "caller_risk_daily"):
            assert (shared / name / f"date={d}" / "part-0.parquet").exists()
    runs = _shared_digits(shared)
    # (call ids hold runs of digits too: a whole national number is the needle)
    numbers = {re.sub(r"\D", "", n)[-11:] for n in _numbers(env.root, days)}
    numbers = {n for n in numbers if len(n) == 11}
    assert numbers and not [r for r in runs for n in numbers if n in r]
    restricted = pq.read_table(env.root / "cdr" / f"date={days[0]}" / "part-0.parquet")
    open_cdr = pq.read_table(shared / "cdr" / f"date={days[0]}" / "part-0.parquet")
    assert open_cdr.num_rows == restricted.num_rows
    assert not {"src", "dst", "src_e164", "dst_e164", "record_url", "extra"} & set(
        open_cdr.column_names
    )
    ours = Pseudonyms(KEY)
    assert open_cdr.column("src_token")[0].as_py() == ours.token(
        restricted.column("src")[0].as_py()
    )
    assert "raw" not in pq.read_table(shared / "cdr_rejects" / f"date={days[0]}").column_names
    kpis = "call_kpis_daily/date=2024-03-01/part-0.parquet"
    assert pq.read_table(shared / kpis).equals(pq.read_table(env.root / kpis))

    # erase the busiest caller of the first day, spelled as nobody stored it
    srcs = restricted.column("src_e164").to_pylist()
    e164 = max(set(srcs) - {None}, key=srcs.count)
    number = "00 " + e164[1:3] + " " + e164[3:]

    def holding(root) -> dict[str, int]:
        out = {}
        for d in days:
            t = pq.read_table(root / "cdr" / f"date={d}" / "part-0.parquet")
            out[d] = sum(
                1 for c in ("src_e164", "dst_e164") for v in t.column(c).to_pylist() if v == e164
            )
        return out

    before = {d: pq.read_table(env.root / "cdr" / f"date={d}" / "part-0.parquet") for d in days}
    had = holding(env.root)
    assert had[days[0]] > 0
    assert cli.main(["erase", number, "--dry-run"]) == 0
    said = capfd.readouterr().out
    assert "would erase" in said and days[0] in said and e164 not in said
    assert holding(env.root) == had  # a dry run changes nothing
    assert cli.main(["erase", number, "--workers", "2"]) == 0  # a day a worker process
    said = capfd.readouterr()  # the workers' own lines too: they write to the same stderr
    assert said.out.count("erased") >= 1
    progress = re.findall(r"^erase: (\S+) done, (\d+) records erased$", said.err, re.M)
    assert {d for d, _ in progress} == {d for d in days if had[d]}  # each day said once done
    assert all(int(n) >= had[d] for d, n in progress)
    assert e164[3:] not in said.err
    assert set(holding(env.root).values()) == {0}
    token = ours.token(number)
    for d in days:
        after = pq.read_table(env.root / "cdr" / f"date={d}" / "part-0.parquet")
        keep = [
            v1 != e164 and v2 != e164
            for v1, v2 in zip(
                before[d].column("src_e164").to_pylist(),
                before[d].column("dst_e164").to_pylist(),
                strict=True,
            )
        ]
        assert before[d].filter(keep).equals(after)  # every other record as it was
        acc = json.loads((env.root / "_state" / "validation" / f"date={d}.json").read_text())
        acc = acc["accounting"]
        buckets = ("valid", "rejected", "duplicates_dropped", "overlap_copies", "outside_day")
        assert acc["fetched"] == sum(acc[b] for b in buckets) + acc["erased"]
        assert acc["erased"] >= had[d]
        open_cdr = pq.read_table(shared / "cdr" / f"date={d}" / "part-0.parquet")
        assert token not in set(open_cdr.column("src_token").to_pylist())
        assert token not in set(open_cdr.column("dst_token").to_pylist())
        raw = (env.root / "raw" / "cdr" / f"date={d}").glob("*.zlib")
        for body in raw:
            assert e164[3:].encode() not in zlib.decompress(body.read_bytes())
    audit = pq.read_table(env.root / "erasures" / "part-0.parquet").to_pylist()
    assert [(a["token"], a["records"] > 0) for a in audit] == [(token, True)]
    assert e164[3:].encode() not in (env.root / "erasures" / "part-0.parquet").read_bytes()

    # the provider still has the calls: a fetch again drops them again, and says so
    assert env.run(instance, days[0]).success
    assert holding(env.root)[days[0]] == 0
    acc = json.loads((env.root / "_state" / "validation" / f"date={days[0]}.json").read_text())
    assert acc["accounting"]["erased"] >= had[days[0]]
    assert not [r for r in _shared_digits(shared) if e164[3:] in r]


def test_erase_refuses_what_is_not_digits_before_keeping_anything(
    monkeypatch, tmp_path, sim_server, capsys
):
    env, _ = _private_env(monkeypatch, tmp_path, sim_server())
    env.root.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    # libphonenumber reads "1380O138000" as +86 1380138000, another subscriber's number
    assert canonical("1380O138000") == "+861380138000"
    for typo in ("1380O138000", "notanumber", "+", "138²"):
        with pytest.raises(SystemExit, match="a letter O for a zero"):
            cli.main(["erase", typo])
    with pytest.raises(SystemExit, match="it is empty"):
        cli.main(["erase", " - "])
    assert list(env.root.iterdir()) == []  # no request kept
    # digits libphonenumber cannot place are taken as written, and said to be
    assert cli.main(["erase", "+86 ", "--dry-run"]) == 0
    assert "not a possible phone number in CN" in capsys.readouterr().err
    assert cli.main(["erase", "０１０ 1234 5678", "--dry-run"]) == 0  # full-width digits
    assert "not a possible" not in capsys.readouterr().err


@pytest.mark.slow
def test_an_erase_whose_worker_cannot_take_a_day_says_which_and_is_finished_later(
    monkeypatch, tmp_path, sim_server, instance, capsys
):
    """Each worker process erases its own days: one refused (another run holds the day) says
    so and leaves the request open; the other's day is erased, and kept in the audit; erase
    again finishes it."""
    from cdr_pipeline import lease

    env, _ = _private_env(monkeypatch, tmp_path, sim_server(calls_per_day=200))
    monkeypatch.setenv("CDR_LOCK_WAIT_S", "0")
    days = ["2024-03-01", "2024-03-02"]
    assert env.run(instance, *days).success
    tables = {d: pq.read_table(env.root / "cdr" / f"date={d}" / "part-0.parquet") for d in days}
    number = next(
        n
        for n in tables[days[0]].column("src_e164").to_pylist()
        if n and n in set(tables[days[1]].column("src_e164").to_pylist())
    )

    def held() -> dict[str, int]:
        return {
            d: pq.read_table(
                env.root / "cdr" / f"date={d}" / "part-0.parquet", columns=["src_e164"]
            )
            .column("src_e164")
            .to_pylist()
            .count(number)
            for d in days
        }

    store = open_store(env.root)
    lease.take_lease(store, days[1], "run-elsewhere", ttl_s=600, wait_s=0)
    assert cli.main(["erase", number, "--workers", "2"]) == 4
    said = capsys.readouterr().err
    assert f"{days[1]} is being materialized by another run" in said and number not in said
    assert held()[days[0]] == 0 and held()[days[1]] > 0
    [request] = pq.read_table(env.root / "erasures" / "part-0.parquet").to_pylist()
    assert request["done_at"] is None  # open: every later build of the day still applies it
    assert request["days"] == [days[0]] and request["records"] > 0  # what the other did

    lease.release_lease(store, days[1], "run-elsewhere")
    assert cli.main(["erase", number, "--workers", "2"]) == 0
    assert set(held().values()) == {0}
    audit = pq.read_table(env.root / "erasures" / "part-0.parquet").to_pylist()
    assert [a["done_at"] is None for a in audit] == [True, False] and audit[1]["days"] == [days[1]]


@pytest.mark.slow
def test_an_erase_interrupted_while_its_workers_wait_says_so_and_changes_nothing(
    monkeypatch, tmp_path, sim_server, instance
):
    """Ctrl-C (SIGINT to the command's process group) while both workers wait for days
    another run holds: a plain message, exit 130, the request kept, every day as it was."""
    import signal
    import subprocess
    import threading

    from cdr_pipeline import lease
    from cdr_pipeline_tests.servers import BIN

    env, _ = _private_env(monkeypatch, tmp_path, sim_server(calls_per_day=200))
    monkeypatch.setenv("CDR_LOCK_WAIT_S", "600")
    days = ["2024-03-01", "2024-03-02"]
    assert env.run(instance, *days).success
    number = (
        pq.read_table(env.root / "cdr" / f"date={days[0]}" / "part-0.parquet", columns=["src_e164"])
        .column("src_e164")[0]
        .as_py()
    )
    before = _published_bytes(env.root)
    store = open_store(env.root)
    for d in days:
        lease.take_lease(store, d, "run-elsewhere", ttl_s=600, wait_s=0)
    printed = tmp_path / "erase.out"
    with printed.open("w") as sink:  # the command's stdout: its own copy of the file
        erase = subprocess.Popen(
            [str(BIN / "cdr-pipeline"), "erase", number, "--workers", "2"],
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    said: list[str] = []
    waiting = threading.Event()

    def read() -> None:
        for line in erase.stderr:
            said.append(line)
            if sum("waiting up to" in s for s in said) == len(days):
                waiting.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert waiting.wait(180), "".join(said)
        os.killpg(erase.pid, signal.SIGINT)
        assert erase.wait(120) == 130, "".join(said)
    finally:
        if erase.poll() is None:
            os.killpg(erase.pid, signal.SIGKILL)
    reader.join(10)
    text = printed.read_text() + "".join(said)
    assert "interrupted: the erasure is kept" in text and "Traceback" not in text
    assert number not in text
    [request] = pq.read_table(env.root / "erasures" / "part-0.parquet").to_pylist()
    assert request["done_at"] is None
    assert _published_bytes(env.root) == before


def _published_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*.parquet"))
        if p.parent.name != "erasures"
    }


@settings(max_examples=2 * settings.default.max_examples)
@given(
    st.lists(
        st.one_of(
            st.none(),
            st.from_regex(r"(\+|00)?(86|1|44|7|852)?[ -]?1[3-9]\d{1,9}", fullmatch=True),
            st.text(max_size=40),
        ),
        max_size=30,
    )
)
def test_tokens_and_masks_in_bulk_are_those_of_each_number(numbers):
    """The column-wise tokens and masks (the shared zone's) equal the one-number functions
    (the UI's, the erase command's) for any text, numbers or not."""
    ours = Pseudonyms(KEY)
    raw = pa.array(numbers, pa.string())
    e164, _, _ = NumberBook("CN").resolve(raw)
    tokens = ours.tokens(canonical_column(raw, e164)).to_pylist()
    masks = mask_column(raw, e164).to_pylist()
    for number, token, masked in zip(numbers, tokens, masks, strict=True):
        blank = number is None or not canonical(number)
        assert token == (None if blank else ours.token(number))
        assert masked == (None if not number else mask(number))


def test_a_day_and_its_shared_zone_are_one_version(tmp_path, monkeypatch):
    """A crash after the journal is written: the next reader rolls both zones forward."""
    store, shared = open_store(tmp_path / "data"), open_store(tmp_path / "shared")
    store.shared = shared
    day = "2024-03-01"
    table = pa.table({"x": [1, 2]})
    txn = DayTransaction(store, day)
    txn.stage("cdr", table)
    txn.stage("cdr", table, shared=True)
    move = LocalStore.move

    def crash(where, src, dst):
        if where is shared and dst.endswith("part-0.parquet"):  # after the restricted zone's
            raise OSError("power cut")
        move(where, src, dst)

    monkeypatch.setattr(LocalStore, "move", crash)
    with pytest.raises(OSError):
        txn.commit()
    monkeypatch.undo()
    assert (tmp_path / "data" / "cdr" / f"date={day}" / "part-0.parquet").exists()
    assert not (tmp_path / "shared" / "cdr" / f"date={day}" / "part-0.parquet").exists()
    assert recover_day(store, day)
    assert pq.read_table(tmp_path / "shared" / "cdr" / f"date={day}" / "part-0.parquet") == table
    # a journal naming the shared zone, read where none is configured, is refused
    txn = DayTransaction(store, day)
    txn.stage("cdr", table)
    txn.stage("cdr", table, shared=True)
    monkeypatch.setattr(LocalStore, "move", crash)
    with pytest.raises(OSError):
        txn.commit()
    monkeypatch.undo()
    alone = open_store(tmp_path / "data")
    with pytest.raises(StorageError, match="CDR_SHARED_DATA_DIR"):
        recover_day(alone, day)


def test_the_key_and_the_shared_zone_go_together(tmp_path):
    base = {"CDR_DATA_DIR": str(tmp_path / "data")}
    with pytest.raises(ConfigError, match="CDR_SHARED_DATA_DIR is not"):
        load_settings(base | {"CDR_PSEUDONYM_KEY": KEY})
    with pytest.raises(ConfigError, match="CDR_PSEUDONYM_KEY is not"):
        load_settings(base | {"CDR_SHARED_DATA_DIR": str(tmp_path / "shared")})
    with pytest.raises(ConfigError, match="overlap"):
        load_settings(
            base | {"CDR_PSEUDONYM_KEY": KEY, "CDR_SHARED_DATA_DIR": str(tmp_path / "data/open")}
        )
    with pytest.raises(ConfigError, match="overlap"):
        load_settings(
            {"CDR_DATA_DIR": str(tmp_path / "s/data")}
            | {"CDR_PSEUDONYM_KEY": KEY, "CDR_SHARED_DATA_DIR": str(tmp_path / "s")}
        )
    with pytest.raises(ConfigError, match="CDR_CLEAR_RETENTION_DAYS=30 needs CDR_PSEUDONYM_KEY"):
        load_settings(base | {"CDR_CLEAR_RETENTION_DAYS": "30"})
    demo = load_settings({"CDR_SIMULATOR": "true", "CDR_PSEUDONYM_KEY": KEY})
    assert demo.storage.shared_data_dir.endswith("data/demo-shared")


@pytest.mark.slow
def test_retention_clears_exactly_the_old_days_and_erasure_still_reaches_them(
    monkeypatch, tmp_path, sim_server, instance, capsys
):
    env, shared = _private_env(monkeypatch, tmp_path, sim_server(calls_per_day=300, abuse=True))
    days = ["2024-03-01", "2024-03-02", "2024-03-03"]
    assert env.run(instance, days[0], days[-1]).success
    store, ours = open_store(env.root), Pseudonyms(KEY)
    store.shared = open_store(shared)

    def part(root, name, day):
        return root / name / f"date={day}" / "part-0.parquet"

    before = {d: pq.read_table(part(env.root, "cdr", d)) for d in days}
    kpis = pq.read_table(part(env.root, "call_kpis_daily", days[0]))
    # 09:00 on 03-05 in Shanghai: keeping 3 days keeps 03-02 and later
    now = datetime(2024, 3, 5, 1, tzinfo=UTC)
    dry = clear_old_days(store, env.tz, 3, ours, "pseudonymise", now=now, dry_run=True)
    assert dry.days == [days[0]] and "src" in pq.read_schema(part(env.root, "cdr", days[0])).names
    done = clear_old_days(store, env.tz, 3, ours, "pseudonymise", now=now)
    assert done.days == [days[0]]
    cleared = pq.read_table(part(env.root, "cdr", days[0]))
    assert cleared.equals(pq.read_table(part(shared, "cdr", days[0])))  # the shared form
    assert not {"src", "dst", "src_e164", "dst_e164", "record_url", "extra"} & set(
        cleared.column_names
    )
    assert "raw" not in pq.read_schema(part(env.root, "cdr_rejects", days[0])).names
    assert "src" not in pq.read_schema(part(env.root, "caller_risk_daily", days[0])).names
    assert not (env.root / "raw" / "cdr" / f"date={days[0]}" / "manifest.json").exists()
    assert pq.read_table(part(env.root, "call_kpis_daily", days[0])).equals(kpis)
    for d in days[1:]:  # untouched
        assert pq.read_table(part(env.root, "cdr", d)).equals(before[d])
        assert (env.root / "raw" / "cdr" / f"date={d}" / "manifest.json").exists()
    assert clear_old_days(store, env.tz, 3, ours, "pseudonymise", now=now).days == []
    # the report reads a cleared day's flagged callers by token
    out = tmp_path / "report.html"
    assert cli.main(["report", "--start", days[0], "--end", days[-1], "--out", str(out)]) == 0

    # a number on the cleared day and the next: erased from both, in place on the cleared one
    srcs = before[days[0]].column("src_e164").to_pylist()
    both = set(srcs) & set(before[days[1]].column("src_e164").to_pylist()) - {None}
    e164 = max(both, key=srcs.count)
    token = ours.token(e164)
    assert cli.main(["erase", e164, "--workers", "1"]) == 0  # in this process
    capsys.readouterr()

    def tokens_in(table: pa.Table) -> set[str]:
        return set(table.column("src_token").to_pylist()) | set(
            table.column("dst_token").to_pylist()
        )

    for root in (env.root, shared):  # the cleared day: by token in both zones
        assert token not in tokens_in(pq.read_table(part(root, "cdr", days[0])))
    assert token not in tokens_in(pq.read_table(part(shared, "cdr", days[1])))
    plain = pq.read_table(part(env.root, "cdr", days[1]))
    assert e164 not in set(
        plain.column("src_e164").to_pylist() + plain.column("dst_e164").to_pylist()
    )
    after = pq.read_table(part(env.root, "cdr", days[0]))
    keep = [
        token not in (s, d)
        for s, d in zip(
            cleared.column("src_token").to_pylist(),
            cleared.column("dst_token").to_pylist(),
            strict=True,
        )
    ]
    assert not all(keep) and after.equals(cleared.filter(keep))
    acc = json.loads((env.root / "_state" / "validation" / f"date={days[0]}.json").read_text())
    assert acc["accounting"]["valid"] == after.num_rows and acc["cleared"]["mode"] == "pseudonymise"

    # remove: the personal datasets go, the aggregates stay
    later = datetime(2024, 3, 6, 1, tzinfo=UTC)
    assert clear_old_days(store, env.tz, 3, ours, "remove", now=later).days == [days[1]]
    for name in ("cdr", "cdr_rejects", "caller_risk_daily"):
        assert not part(env.root, name, days[1]).exists()
    assert part(env.root, "call_kpis_daily", days[1]).exists()
    assert part(shared, "cdr", days[1]).exists()
    # the command, dry run: every 2024 day is old now; the cleared ones are not cleared again
    assert cli.main(["prune", "--clear-days", "1", "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert f"would have cleared 1 day(s) of clear numbers ({days[2]} to {days[2]})" in said


def test_a_page_holding_any_spelling_of_a_number_is_found_by_its_needle():
    """erase parses only the raw pages (and tokenises only the values) its needle finds:
    every spelling must be found, however the page's JSON escapes it."""
    needle = needle_of("+86 136-3123-4568")
    spellings = ("13631234568", "+86 136-3123-4568", "008613631234568", "(136) 3123\t4568")
    for spelled in spellings:
        assert needle.in_value(spelled), spelled
        for ascii_only in (False, True):
            page = json.dumps({"cdr": [{"src": spelled, "dst": "10086"}]}, ensure_ascii=ascii_only)
            assert needle.in_page(page.encode()), spelled
            escaped = page.replace("3", "\\u0033", 1)  # a digit of the number, escaped
            assert json.loads(escaped) == json.loads(page)
            assert needle.in_page(escaped.encode()), spelled
    assert not needle.in_value("13631234569")
    assert not needle.in_page(json.dumps({"cdr": [{"src": "13631234569"}]}).encode())
    assert needle_of("anonymous").in_page(b'{"src":"anon ymous"}')
    assert needle_of("张三").in_page(json.dumps({"src": "张三"}).encode())


_PAGE_TEXT = st.text('0123456789 -()\\tu"+x', max_size=30)


@given(
    number=st.text("0123456789+ -()", min_size=1, max_size=14),
    gaps=st.lists(st.sampled_from(["", " ", "-", "(", ")", "\\t", "t", "\\", "x", "\\u0033"])),
    before=_PAGE_TEXT,
    after=_PAGE_TEXT,
    dropped=st.integers(0, 14),
)
def test_a_page_is_found_by_its_needle_as_deleting_the_separators_finds_it(
    number, gaps, before, after, dropped
):
    """The one-pass test of a page finds exactly what deleting the separators and searching
    the rest finds (the test as it was before; a number with a letter still takes that path),
    on pages holding the number spelled with any gaps, or with a digit missing."""
    needle = needle_of(number)
    digits = [d for i, d in enumerate(needle.text) if i != dropped]
    spelled = "".join(d + (gaps[i % len(gaps)] if gaps else "") for i, d in enumerate(digits))
    data = (before + spelled + after).encode()
    if b"\\u00" in data:
        assert needle.in_page(data)
        return
    drop = b" -()" + (b"\\t" if b"\\" in data else b"")
    wanted = needle.text.encode().translate(None, drop) in data.translate(None, drop)
    assert needle.in_page(data) == wanted
