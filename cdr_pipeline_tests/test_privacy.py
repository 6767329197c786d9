"""Phone numbers where people look: with CDR_PSEUDONYM_KEY set, the UI's metadata, the checks
and the HTML report show a masked number and its token, never the number."""

from __future__ import annotations

import json
import re

import dagster as dg
import pyarrow.parquet as pq
import pytest

from cdr_pipeline import cli
from cdr_pipeline.privacy import Pseudonyms, canonical, mask
from cdr_pipeline.settings import ConfigError, load_settings
from cdr_pipeline_tests.conftest import Env

KEY = "k3y-0f-the-pseudonyms-" + "x" * 16
OTHER = "another-key-of-the-pseudonyms-" + "y" * 8


def test_a_token_is_stable_keyed_and_the_same_for_every_spelling():
    ours, theirs = Pseudonyms(KEY), Pseudonyms(OTHER)
    spellings = ["13631234568", "+86 136-3123-4568", "008613631234568", "+8613631234568"]
    assert len({ours.token(s) for s in spellings}) == 1
    token = ours.token(spellings[0])
    assert re.fullmatch(r"[a-z2-7]{20}", token)  # 96 bits in base32
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
        monkeypatch, tmp_path, sim_server(calls_per_day=600, abuse=True), CDR_PSEUDONYM_KEY=KEY
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
