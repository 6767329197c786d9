"""Parsing, validation, de-duplication, accounting and KPIs as pure functions."""

from __future__ import annotations

import gzip
import json
import math
import zlib
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdr_pipeline import publish
from cdr_pipeline.api import errors
from cdr_pipeline.api.spans import _Strings, cdr_spans
from cdr_pipeline.api.wire import decode_body, parse_document
from cdr_pipeline.datasets import DATASETS, queries
from cdr_pipeline.simulator import CdrSimulator, SimConfig
from cdr_pipeline.transform import read as day_module
from cdr_pipeline.transform.columnar import CheckedRecords, check_records
from cdr_pipeline.transform.dedup import DayBuilder
from cdr_pipeline.transform.hashing import fingerprint
from cdr_pipeline.transform.parse import MAX_EPOCH, MIN_EPOCH, BadValue, parse_time
from cdr_pipeline.transform.read import parse_pages
from cdr_pipeline.transform.summarize import KpiSummary, OutcomeSummary, kpi_table
from cdr_pipeline.transform.validate import (
    CDR_SCHEMA,
    RECORD_SCHEMA,
    REJECT_REASONS,
    Reject,
    unaccounted,
    validate_record,
)

SH = ZoneInfo("Asia/Shanghai")
T0 = 1_548_235_059  # 2019-01-23 17:17:39 Asia/Shanghai
DAY = (1_548_172_800, 1_548_259_200)  # 2019-01-23 in Asia/Shanghai


def record(**over):
    rec = {
        "bizId": "",
        "callEndStatus": "1",
        "callId": "12-190123-2773afbbe3",
        "callType": "3",
        "dst": "008613631234568",
        "dstAcceptTime": str(T0 + 20),
        "duration": "40",
        "endCallTime": str(T0 + 60),
        "orderId": "",
        "recordUrl": "https://r.example/x.mp3",
        "src": "008613500000000",
        "srcAcceptTime": str(T0 + 8),
        "startDstCallTime": str(T0 + 9),
        "startDstRingTime": str(T0 + 12),
        "startSrcCallTime": str(T0),
        "startSrcRingTime": str(T0 + 3),
    }
    for k, v in over.items():
        if v is ...:
            rec.pop(k, None)
        else:
            rec[k] = v
    return rec


# --- time values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1548235059", T0),
        ("1548235059123", T0),
        (T0, T0),
        ("2019-01-23 17:17:39", T0),
        (" 1548235059 ", T0),
        ("0", None),
        ("", None),
        (None, None),
    ],
)
def test_time_forms(value, expected):
    assert parse_time(value, SH) == expected


@pytest.mark.parametrize(
    "value",
    [
        "abc",
        "2019-13-45 99:61:00",
        "15482350591",
        "154823505912345",
        "-5",
        True,
        1.5,
        [],
        {},
        "١٥٤٨٢٣٥٠٥٩",
        "2019-01-23T17:17:39",
        "12",
    ],
)
def test_bad_time_values(value):
    with pytest.raises(BadValue):
        parse_time(value, SH)


def test_text_time_uses_the_configured_zone():
    berlin = ZoneInfo("Europe/Berlin")
    assert parse_time("2019-01-23 10:17:39", berlin) == T0


# --- validation ------------------------------------------------------------------------


def test_a_good_record_becomes_a_typed_row():
    row = validate_record(record(), SH)
    assert not isinstance(row, Reject)
    assert row["call_id"] == "12-190123-2773afbbe3"
    assert row["start_src_call_time"] == T0
    assert row["call_end_status"] == 1 and row["call_end_status_label"] == "connected"
    assert row["duration_s"] == 40 and row["call_type"] == 3
    assert row["biz_id"] is None and row["order_id"] is None
    assert row["extra"] is None


def test_defaults_and_unknown_fields():
    row = validate_record(record(callType=..., newField={"a": 1}, dstAcceptTime="0"), SH)
    assert row["call_type"] == 3
    assert row["dst_accept_time"] is None
    assert row["extra"] == '{"newField":{"a":1}}'


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"callId": ...}, "missing_call_id"),
        ({"callId": "  "}, "missing_call_id"),
        ({"callId": 12.5}, "missing_call_id"),
        ({"callId": True}, "missing_call_id"),
        ({"startSrcCallTime": "0"}, "missing_start_time"),
        ({"startSrcCallTime": ...}, "missing_start_time"),
        ({"startSrcCallTime": "yesterday"}, "bad_timestamp"),
        ({"dstAcceptTime": "2019-02-30 10:00:00"}, "bad_timestamp"),
        ({"callEndStatus": "6"}, "bad_status"),
        ({"callEndStatus": ""}, "bad_status"),
        ({"duration": "-1"}, "bad_duration"),
        ({"duration": "1.5"}, "bad_duration"),
        ({"duration": str(2**31)}, "bad_duration"),
        ({"callType": "4"}, "bad_call_type"),
        ({"endCallTime": str(T0 - 1)}, "end_before_start"),
        ({"src": ["x"]}, "bad_field"),
    ],
)
def test_reject_reasons(over, reason):
    result = validate_record(record(**over), SH)
    assert isinstance(result, Reject)
    assert result.reason == reason
    assert result.detail


@pytest.mark.parametrize("value", ["text", 5, None, [1, 2], True])
def test_not_an_object(value):
    assert validate_record(value, SH).reason == "not_an_object"


def test_several_defects_give_the_first_reason_in_contract_order():
    rec = record(callEndStatus="9", duration="-3", callType="8", startSrcRingTime="x")
    assert validate_record(rec, SH).reason == "bad_timestamp"
    rec = record(callId=..., startSrcCallTime="0", callEndStatus="9")
    assert validate_record(rec, SH).reason == "missing_call_id"


# --- a day -----------------------------------------------------------------------------


def document(records) -> bytes:
    """A page body as the provider sends it (any text JSON can carry, lone surrogates
    written as escapes)."""
    doc = {"errorCode": "0", "cdr": records}
    body = json.dumps(doc, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")
    if b"\xed\xa0" in body or b"\xed\xb0" in body:  # a surrogate written raw: not UTF-8
        body = json.dumps(doc, allow_nan=True).encode()
    return body


@dataclass
class Built:
    cdr: pa.Table
    rejects: pa.Table
    accounting: dict


def _all_unsure(records, tz):
    """The column-wise checks passing nothing as clean: every record meets the exact rules."""
    checked = check_records(records, tz)
    return CheckedRecords(checked.columns, pa.array([False] * len(records), pa.bool_()))


def build(pages, day=DAY, tz=SH, *, exact=False, batch=None, cut=False, **kw) -> Built:
    """A day through the path ``validate_day`` takes: pages ``(records, window)`` as JSON
    bodies, read and checked by :func:`parse_pages` in batches, added, then the rows
    streamed out. ``exact``: every record decided by the exact rules (the path a page takes
    when the fast checks are unsure of all of it); ``cut``: pages cut at their elements
    before Arrow reads them."""
    decoded = [
        (recs if isinstance(recs, bytes) else document(recs), f"p{i}", list(window))
        for i, (recs, window) in enumerate(pages)
    ]
    builder = DayBuilder(*day, tz, **kw)
    with pytest.MonkeyPatch.context() as patch:
        if exact:
            patch.setattr(day_module, "check_records", _all_unsure)
        step = batch or len(decoded) or 1
        for k in range(0, len(decoded), step):
            part = decoded[k : k + step]
            builder.add_parsed(part, parse_pages(part, tz.key, cut=cut))
    parts = list(builder.iter_cdr())
    cdr = pa.concat_tables(parts) if parts else RECORD_SCHEMA.empty_table()
    return Built(cdr, builder.rejects_table(), builder.accounting())


def one_page(records, window=DAY, **kw) -> Built:
    return build([(records, window)], **kw)


def test_day_accounting_dedup_and_outside_day():
    good = record()
    less_complete = record(recordUrl="")
    other = record(callId="other", startSrcCallTime=str(T0 - 86400), endCallTime=str(T0 - 86000))
    early_end = record(callId="c2", endCallTime=str(T0 + 50))
    late_end = record(callId="c2", endCallTime=str(T0 + 55))
    bad = record(callId="bad", callEndStatus="x")
    result = one_page([less_complete, good, good, other, early_end, late_end, bad, bad, "junk"])
    acc = result.accounting
    assert acc["fetched"] == 9
    assert acc["valid"] == 2
    assert acc["rejected"] == 2
    assert acc["outside_day"] == 1
    assert acc["duplicates_exact"] == 2
    assert acc["duplicates_conflicting"] == 2
    assert acc["duplicates_dropped"] == 4
    assert acc["fetched"] == acc["valid"] + acc["rejected"] + acc["duplicates_dropped"] + 1
    rows = {r["call_id"]: r for r in result.cdr.to_pylist()}
    assert rows["12-190123-2773afbbe3"]["record_url"] == "https://r.example/x.mp3"
    assert rows["c2"]["end_call_time"].timestamp() == T0 + 55
    assert acc["rejects_by_reason"] == {"not_an_object": 1, "bad_status": 1}
    assert result.cdr.schema == RECORD_SCHEMA


def test_copies_from_overlapping_windows_are_not_the_providers_duplicates():
    # Two windows share the second T0; the provider lists "dup" twice and one reject twice.
    a, b = (DAY[0], T0), (T0, DAY[1])
    at_edge = record(callId="edge")
    dup = record(callId="dup")
    bad = record(callId="bad", callEndStatus="x")
    # p2 is the second page of p1's query
    acc = build([([at_edge, dup, bad], a), ([dup, bad], a), ([at_edge, dup, dup, bad, bad], b)])
    acc = acc.accounting
    assert acc["fetched"] == 10
    assert (acc["valid"], acc["rejected"]) == (2, 1)
    assert acc["duplicates_dropped"] == 2  # one extra "dup", one extra reject, per query
    assert acc["overlap_copies"] == 5  # everything the second query repeated
    assert acc["duplicates_exact"] == 2 and acc["duplicates_conflicting"] == 0
    # The same records fetched by one query only: the same duplicates, no overlap.
    single = one_page([at_edge, dup, bad, dup, bad]).accounting
    assert single["duplicates_dropped"] == 2
    assert single["overlap_copies"] == 0


def test_conflicting_versions_count_once_per_version():
    short = record(callId="c", endCallTime=str(T0 + 50))
    full = record(callId="c", endCallTime=str(T0 + 55))
    result = build([([short, full], (DAY[0], T0)), ([full, short], (T0, DAY[1]))])
    acc = result.accounting
    assert (acc["duplicates_conflicting"], acc["duplicates_exact"]) == (1, 0)
    assert acc["overlap_copies"] == 2
    assert result.cdr.column("end_call_time")[0].as_py().timestamp() == T0 + 55


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_equally_complete_conflicting_copies_resolve_the_same_whatever_the_order(order):
    """Same fields filled, same end: the copy whose content is greatest in byte order wins
    (docs/reliability.md), so the served order and the windows never change the day."""
    copies = [record(callId="c", src="008613800000001"), record(callId="c", src="008613900000009")]
    first, second = (copies[i] for i in order)
    one_query = one_page([first, second])
    two_windows = build([([first], (DAY[0], T0)), ([second], (T0, DAY[1]))])
    for result in (one_query, two_windows):
        assert result.cdr.column("src").to_pylist() == ["008613900000009"]
    assert one_query.accounting["duplicates_conflicting"] == 1
    assert two_windows.accounting["overlap_copies"] == 1  # not the provider's duplicate


def test_reject_day_assignment():
    # Start unreadable: the end time decides; nothing readable: the window's middle.
    next_day_end = record(callId="x", startSrcCallTime="0", endCallTime=str(DAY[1] + 5))
    pages = [
        ([next_day_end], DAY),
        (["junk"], (DAY[1] - 3600, DAY[1] + 7200)),
        (["junk2"], (DAY[0] - 3600, DAY[0] + 7200)),
    ]
    acc = build(pages).accounting
    assert acc["outside_day"] == 2 and acc["rejected"] == 1


def test_same_input_same_table():
    recs = [record(callId=f"c{i}", startSrcCallTime=str(T0 + i)) for i in range(50)]
    assert one_page(recs).cdr.equals(one_page(list(reversed(recs))).cdr)


# --- property: nothing escapes, every record lands in exactly one bucket ----------------

# Text as JSON can carry it: any code point, lone surrogates included (a "\\ud800" escape).
any_text = st.text(alphabet=st.characters(codec=None, categories=None), max_size=30)
huge_text = st.builds(lambda c, n: c * n, st.characters(codec=None), st.integers(10**4, 3 * 10**5))
numbers = (
    st.integers()
    | st.integers(min_value=10**12, max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | any_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=12,
)
field_values = st.one_of(
    json_values,
    st.sampled_from(
        ["0", "", "1548235059", "1548235059000", "2019-01-23 17:17:39", "1", "3", "-1", "9" * 40]
    ),
    st.text(max_size=2000),
    huge_text,
)
records = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={k: field_values for k in record()} | {"surprise": json_values},
    ),
    st.builds(  # mostly well-formed, so the valid path is exercised too
        lambda over: record(**over),
        st.fixed_dictionaries(
            {}, optional={k: field_values for k in ("callId", "duration", "endCallTime", "src")}
        ),
    ),
)
PROPERTY = settings(
    max_examples=3 * settings.default.max_examples,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _assert_accounted(recs, result):
    acc = result.accounting
    assert acc["fetched"] == len(recs)
    assert unaccounted(acc) == 0
    assert result.cdr.num_rows == acc["valid"] and result.rejects.num_rows == acc["rejected"]
    assert set(result.rejects["reason"].to_pylist()) <= set(REJECT_REASONS)
    # what was built can be written: every string is valid UTF-8 for Parquet
    for table in (result.cdr, result.rejects):
        pq.write_table(table, pa.BufferOutputStream())


@PROPERTY
@given(st.lists(records, max_size=25))
def test_any_records_are_accounted_for(recs):
    _assert_accounted(recs, one_page(recs))


@PROPERTY
@given(
    st.lists(records, max_size=15),
    st.sampled_from(["plain", "zlib", "gzip"]),
    st.dictionaries(any_text, json_values, max_size=3),
)
def test_any_body_of_records_is_read_and_accounted_for(recs, encoding, unknown):
    """Whole bodies, as the raw layer stores them: unknown top-level keys, any encoding."""
    doc = {**unknown, "errorCode": "0", "result": "Call Details", "offset": "0", "cdr": recs}
    body = json.dumps(doc, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")
    if b"\xed\xa0" in body or b"\xed\xb0" in body:  # a surrogate written raw: not UTF-8
        body = json.dumps(doc).encode()
    if encoding == "zlib":
        body = zlib.compress(body)
    elif encoding == "gzip":
        body = gzip.compress(body, mtime=0)
    decoded, _ = decode_body(body, max_bytes=64 * 1024 * 1024)
    builder = DayBuilder(*DAY, SH)
    pages = [(decoded, "p", list(DAY))]
    builder.add_parsed(pages, parse_pages(pages, SH.key))
    parts = list(builder.iter_cdr())
    cdr = pa.concat_tables(parts) if parts else RECORD_SCHEMA.empty_table()
    _assert_accounted(recs, Built(cdr, builder.rejects_table(), builder.accounting()))


@pytest.mark.parametrize(
    "extra", [{}, {"requestId": "r-1"}], ids=["read-by-arrow", "read-by-python"]
)
def test_an_error_answer_stored_as_a_page_is_an_error_naming_the_page(extra):
    good = json.dumps({"errorCode": "0", "cdr": [record()]}).encode()
    error = json.dumps({"errorCode": "-501", "result": "server exception", **extra}).encode()
    pages = [(good, "p-1", list(DAY)), (error, "p-2", list(DAY))]
    with pytest.raises(errors.CdrApiError, match="stored page p-2 is an error answer"):
        parse_pages(pages, SH.key)


def _both_paths(recs, window=DAY):
    """The exact rules (``validate.validate_record``) and the column-wise checks
    (``columnar.check_records``) over the same records."""
    return one_page(recs, window, exact=True), one_page(recs, window)


# Mostly clean records, with the spellings the fast path must get exactly right or hand back.
wire_times = st.one_of(
    st.integers(MIN_EPOCH - 10, MAX_EPOCH + 10).map(str),
    st.integers(DAY[0] - 100, DAY[1] + 100).map(lambda t: str(t * 1000 + 999)),
    st.datetimes(
        min_value=__import__("datetime").datetime(2019, 1, 22),
        max_value=__import__("datetime").datetime(2019, 1, 25),
    ).map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S")),
    st.sampled_from(
        [
            "0",
            "",
            " 1548235059 ",
            "2019-02-30 10:00:00",
            "2019-01-23 24:00:00",
            "1548235059\x1c",
            "\u30001548235059",
            "154823505900",
            "-1548235059",
        ]
    ),
)
small = st.sampled_from(["0", "1", "2", "3", "4", "5", "6", "-1", "-0", "01", " 1", "", "x", "1.0"])
clean_ish = st.builds(
    lambda over: record(**over),
    st.fixed_dictionaries(
        {},
        optional={
            "callId": st.sampled_from(["a", "b", " a ", "", "\u3000c", "c\u00a0"]),
            "startSrcCallTime": wire_times,
            "endCallTime": wire_times,
            "dstAcceptTime": wire_times,
            "callEndStatus": small,
            "duration": st.sampled_from(["0", "7", "2147483647", "2147483648", "99999999999"]),
            "callType": small,
            "src": st.sampled_from(["", "  ", "0086", " 0086 ", "\u00a0x", "x\x1f"]),
            "recordUrl": st.sampled_from(["", "u", "\u00e9"]),
        },
    ),
)


def _assert_paths_agree(recs) -> None:
    exact, fast = _both_paths(recs)
    for other in (fast, one_page(recs, cut=True)):
        assert other.accounting == exact.accounting
        assert other.cdr.equals(exact.cdr)
        assert other.rejects.equals(exact.rejects)


@PROPERTY
@given(st.lists(clean_ish, max_size=30))
def test_the_fast_path_gives_exactly_what_the_exact_path_gives(recs):
    _assert_paths_agree(recs)


@PROPERTY
@given(st.lists(records, max_size=20))
def test_the_fast_path_hands_anything_odd_to_the_exact_path(recs):
    _assert_paths_agree(recs)


# A page Arrow cannot type as a whole (one record is not an object, or holds a number or a
# lone surrogate) is read by Python; its records that are all strings are still checked
# column-wise, and everything else (unknown fields included) goes to the exact rules.
odd_one = st.one_of(
    json_values.filter(lambda v: not isinstance(v, dict)),
    st.builds(lambda v: record(duration=v), numbers | st.booleans()),
    st.just(record(src="\ud800")),
)
with_extra = st.builds(
    lambda over, extra: {**record(**over), **extra},
    st.fixed_dictionaries({}, optional={"callId": st.sampled_from(["x", "y", " x"])}),
    st.dictionaries(st.sampled_from(["surprise", "callIdX", "src "]), json_values, min_size=1),
)


@PROPERTY
@given(st.lists(st.one_of(clean_ish, with_extra), max_size=20), st.lists(odd_one, max_size=3))
def test_a_page_arrow_cannot_type_still_takes_the_fast_path_where_it_can(recs, odd):
    _assert_paths_agree(recs + odd)


# Text full of what the cut must not be fooled by: brackets, commas, quotes and backslashes
# inside strings, escapes, non-ASCII.
tricky_text = st.text(alphabet='ab{}[],:"\\ \u00e9\n', max_size=8)
tricky_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | tricky_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(tricky_text, children, max_size=3)
    ),
    max_leaves=8,
)


@PROPERTY
@given(
    st.lists(tricky_values, max_size=8),
    st.dictionaries(st.sampled_from(["errorCode", "offset", "result", "x"]), tricky_text),
    st.booleans(),
    st.sampled_from([None, 0, 2]),
    st.booleans(),
)
def test_a_page_is_cut_into_exactly_its_elements(elements, top, cdr_first, indent, ascii_only):
    doc = {"cdr": elements, **top} if cdr_first else {**top, "cdr": elements}
    page = json.dumps(doc, indent=indent, ensure_ascii=ascii_only).encode()
    cut = cdr_spans(page)
    assert cut is not None
    assert [cut.element(page, i) for i in range(len(cut))] == elements


# Quotes and backslashes on both sides of the 64-byte words the bitmap is counted by
# (Hypothesis's texts alone stay short).
quotes_and_escapes = st.builds(
    lambda pad, part, times: b"a" * pad + part * times,
    st.integers(0, 130),
    st.binary(max_size=40) | st.text(alphabet='"\\ab{', max_size=40).map(str.encode),
    st.integers(1, 8),
)


@PROPERTY
@given(quotes_and_escapes)
def test_where_strings_lie_is_the_parity_of_the_unescaped_quotes_before(text):
    """Read off a bitmap and a count per 64 bytes, against a walk over the bytes."""
    b = np.frombuffer(text, dtype=np.uint8)
    inside, escaped, expected = False, False, []
    for byte in text:
        expected.append(not inside)
        if escaped:
            escaped = False
        elif byte == ord("\\"):
            escaped = True
        elif byte == ord('"'):
            inside = not inside
    strings = _Strings(text, b)
    assert strings.outside(np.arange(len(text))).tolist() == expected


@pytest.mark.parametrize(
    "page",
    [
        b'{"cdr":[1],"other":[2]}',  # two arrays at the top
        b'{"cdr":[1,"unclosed]}',
        b'[{"cdr":[1]}]',
        b'{"cdr":{"x":[1]}}',
    ],
)
def test_a_page_the_cut_cannot_vouch_for_is_left_whole(page):
    assert cdr_spans(page) is None


def test_a_page_with_an_odd_element_is_read_element_by_element(monkeypatch):
    """Arrow reads the page whole again with its odd elements standing in as ``{}``; Python
    reads only those elements, and the exact rules get the records they must decide without
    the page being parsed whole."""
    recs = [record(callId=f"c{i}", recordUrl='https://r.example/{a,b}[1]\\"x"') for i in range(5)]
    page = [recs[0], "corrupt record", recs[1], None, recs[2], [1, {"x": []}], recs[3]]
    page += [record(callId="bad", callEndStatus="9"), recs[4]]
    body = json.dumps({"errorCode": "0", "cdr": page}, indent=1).encode()
    whole = []
    real = day_module.parse_document
    monkeypatch.setattr(day_module, "parse_document", lambda b: whole.append(b) or real(b))
    fast = build([(body, DAY)])
    assert whole == []  # nor its envelope: Arrow reads the errorCode with the page
    monkeypatch.undo()
    exact = build([(body, DAY)], exact=True)
    assert fast.cdr.equals(exact.cdr) and fast.rejects.equals(exact.rejects)
    assert fast.accounting == exact.accounting
    # ... and mended before Arrow tries the batch whole, beside clean pages
    clean = document([record(callId=f"d{i}") for i in range(3)])
    both = build([(body, DAY), (clean, DAY)], cut=True)
    assert both.accounting["valid"] == 8 and both.accounting["rejected"] == 4
    assert fast.accounting["valid"] == 5 and fast.accounting["rejected"] == 4


# Every value plain digits: the columns take the shortcuts read off Arrow's buffers.
digit_times = st.one_of(
    st.integers(DAY[0] - 100, DAY[1] + 100).map(str),
    st.integers(DAY[0] - 100, DAY[1] + 100).map(lambda t: str(t * 1000 + 999)),
    st.sampled_from([MIN_EPOCH - 1, MIN_EPOCH, MAX_EPOCH - 1, MAX_EPOCH]).map(str),
    st.sampled_from([MAX_EPOCH * 1000 - 1, MAX_EPOCH * 1000, MIN_EPOCH * 1000 - 1]).map(str),
    st.sampled_from(["0", "00", "0" * 13, "9" * 11, "9" * 12, "1" * 14]),
    st.integers(DAY[0], DAY[1]).map(lambda t: f"0{t}"),
)
plain_text = st.text(alphabet="abc09-_/.:", min_size=1, max_size=8)
digits_only = st.builds(
    lambda over: record(**over),
    st.fixed_dictionaries(
        {
            "startSrcCallTime": digit_times,
            "endCallTime": digit_times,
            "srcAcceptTime": digit_times,
            "callId": plain_text,
            "src": plain_text,
            "recordUrl": plain_text,
        }
    ),
)


@PROPERTY
@given(st.lists(digits_only, min_size=1, max_size=30))
def test_the_plain_digit_shortcuts_decide_as_the_exact_path_does(recs):
    _assert_paths_agree(recs)


# Local text times read off Arrow's buffers: real ones near the ends of the accepted years
# and around daylight-saving changes, and text that only looks like a date and time.
real_times = st.datetimes(
    min_value=__import__("datetime").datetime(1999, 12, 30),
    max_value=__import__("datetime").datetime(2100, 1, 2),
).map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S"))
text_times = st.one_of(
    real_times,
    st.sampled_from(
        [
            "2024-03-10 02:30:00",  # New York's gap
            "2024-11-03 01:30:00",  # ... and its repeated hour
            "2024-03-31 02:30:00",  # Berlin's gap
            "2024-10-27 02:30:00",  # ... and its repeated hour
            "2024-02-29 12:00:00",
        ]
    ),
    st.tuples(*(st.integers(0, 99),) * 6).map(
        lambda v: f"{v[0] * 100 + v[1]:04d}-{v[2]:02d}-{v[3]:02d} {v[4]:02d}:{v[5]:02d}:00"
    ),
    st.sampled_from(["0", "", "1548235059", "1548235059123", "2024-05-07T10:00:00"]),
    # a real one with one byte changed: a letter, a separator out of place, a digit's neighbours
    st.tuples(
        real_times,
        st.integers(0, 18),
        st.sampled_from(["a", "/", ":", "-", " ", "0", "9", "\x00", "\x7f", "(", "["]),
    ).map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + 1 :]),
)


@PROPERTY
@given(
    st.lists(
        st.builds(
            lambda a, b, c: record(startSrcCallTime=a, endCallTime=b, dstAcceptTime=c),
            text_times,
            text_times,
            text_times,
        ),
        min_size=1,
        max_size=30,
    ),
    st.sampled_from(["Asia/Shanghai", "America/New_York", "Europe/Berlin", "UTC"]),
)
def test_text_times_read_off_the_buffers_decide_as_python_does(recs, zone):
    tz = ZoneInfo(zone)
    window = (MIN_EPOCH, MAX_EPOCH)
    exact = one_page(recs, window, day=window, tz=tz, exact=True)
    fast = one_page(recs, window, day=window, tz=tz)
    assert fast.accounting == exact.accounting
    assert fast.cdr.equals(exact.cdr)
    assert fast.rejects.equals(exact.rejects)


def test_a_spilled_day_equals_the_same_day_in_memory(tmp_path):
    """Force the disk path (buckets by id, then by time) on a small day with duplicates,
    conflicting copies and overlapping windows: the result must not change."""
    sim = CdrSimulator(
        SimConfig(calls_per_day=6000, duplicate_rate=0.05, conflict_rate=0.05, page_size=300)
    )
    start, end = 1715011200, 1715097600  # 2024-05-07 in Asia/Shanghai
    pages = []
    for a, b in [(start - 3600, start + 43200), (start + 43200, end + 3600)]:
        records = sim.listing(a, b)
        for j in range(0, len(records), 300):
            pages.append((records[j : j + 300], (a, b)))

    def build_sim(**kw):
        return build(pages, (start, end), batch=7, **kw)

    memory = build_sim()
    spilled = build_sim(
        expected_records=7000, spill_dir=tmp_path, spill_above=0, rows_per_bucket=700
    )
    assert spilled.cdr.equals(memory.cdr)
    assert spilled.accounting == memory.accounting
    # ... and with the call-id keys in 16 partitions on disk (7000 / 500, rounded up to 2^k)
    parted = build_sim(
        expected_records=7000,
        spill_dir=tmp_path,
        spill_above=0,
        rows_per_bucket=700,
        keys_per_part=500,
    )
    assert parted.cdr.equals(memory.cdr)
    assert parted.accounting == memory.accounting
    assert memory.accounting["duplicates_dropped"] > 0
    assert memory.accounting["duplicates_conflicting"] > 0
    assert memory.accounting["overlap_copies"] > 0  # the two windows share a second
    assert set(memory.cdr.column("call_id").to_pylist()) == set(sim.truth(start, end).valid)
    assert list(tmp_path.iterdir()) == []  # the spill folder is gone


def test_the_same_rows_in_any_slices_give_the_same_bytes(tmp_path):
    table = pa.table({"x": pa.array(range(300_000), pa.int64())})
    whole, sliced = tmp_path / "a.parquet", tmp_path / "b.parquet"
    publish.write_parquet(whole, table)
    parts = [table.slice(0, 5), table.slice(5, 150_000), table.slice(150_005)]
    publish.write_parquet(sliced, (table.schema, iter(parts)))
    assert whole.read_bytes() == sliced.read_bytes()
    groups = -(-300_000 // publish.ROW_GROUP_ROWS)  # fixed row groups
    assert groups > 1 and pq.ParquetFile(whole).num_row_groups == groups


def test_text_times_in_a_daylight_saving_gap_or_overlap_match_python():
    berlin = ZoneInfo("Europe/Berlin")
    day = (1711839600, 1711922400)  # 2024-03-31 in Berlin: 02:00-03:00 does not exist
    recs = [
        record(
            callId=f"c{i}",
            startSrcCallTime=t,
            endCallTime="0",
            srcAcceptTime="0",
            startDstCallTime="0",
            startDstRingTime="0",
            dstAcceptTime="0",
            startSrcRingTime="0",
        )
        for i, t in enumerate(["2024-03-31 02:30:00", "2024-03-31 01:59:59", "2024-03-31 03:00:00"])
    ]
    a = one_page(recs, day, day=day, tz=berlin, exact=True)
    b = one_page(recs, day, day=day, tz=berlin)
    assert a.cdr.equals(b.cdr) and a.accounting == b.accounting
    assert a.accounting["valid"] == 3


def read_body(body: bytes, *, max_bytes: int) -> list:
    """What the transform does to a stored body before its records are read."""
    decoded, _ = decode_body(body, max_bytes=max_bytes)
    doc = parse_document(decoded)
    day_module._check_code(doc.error_code, "p")
    return doc.records


@PROPERTY
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(lambda v: json.dumps(v).encode(), json_values),
        st.builds(lambda b, n: zlib.compress(b)[:n], st.binary(max_size=300), st.integers(0, 50)),
        st.builds(
            lambda v, cut: json.dumps({"errorCode": "0", "cdr": [v]}).encode()[:cut],
            json_values,
            st.integers(0, 200),
        ),
    )
)
def test_any_bytes_give_records_or_a_classified_error(body):
    try:
        got = read_body(body, max_bytes=1024 * 1024)
    except errors.CdrApiError as exc:
        assert str(exc)
    else:
        assert isinstance(got, list)


@pytest.mark.parametrize(
    ("fragment", "reason"),
    [
        ('"callId":"\\udc00x"', "missing_call_id"),
        ('"src":"\\ud83d"', "bad_field"),
        ('"duration":' + "9" * 5000, "bad_duration"),
        ('"startSrcCallTime":' + "1" * 4500, "bad_timestamp"),
    ],
)
def test_values_python_or_utf8_cannot_hold_are_rejects(fragment, reason):
    key = fragment.split('"')[1]
    rec = json.dumps(record(**{key: ...}))[:-1] + "," + fragment + "}"
    body = '{"errorCode": "0", "cdr": [' + rec + "]}"
    recs = read_body(body.encode(), max_bytes=1 << 20)
    result = build([(body.encode(), DAY), ([{"extra": "\ud800"} | record(callId="ok")], DAY)])
    _assert_accounted([*recs, None], result)
    assert result.accounting["rejects_by_reason"] == {reason: 1}
    assert result.cdr.column("extra").to_pylist() == ['{"extra":"\\ud800"}']


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        (zlib.compress(b'{"errorCode":"0","cdr":[]}')[:-6], "malformed-response", "truncated zlib"),
        (b"\x78\x9c" + b"\x00" * 20, "malformed-response", "broken zlib"),
        (gzip.compress(b'{"errorCode":"0"}', mtime=0)[:15], "malformed-response", "truncated gzip"),
        (b'{"errorCode":"0","cdr":[{"callId":"a"}', "malformed-response", "not valid JSON"),
        (b"<html>502 Bad Gateway</html>", "malformed-response", "not valid JSON"),
        (b"\xff\xfe{}", "malformed-response", "not valid JSON"),
        (b'[{"errorCode":"0"}]', "malformed-response", "a JSON list, not an object"),
        (b'{"errorCode":"0","cdr":"[]"}', "malformed-response", "cdr is a JSON str, not a list"),
        (
            b'{"errorCode":"0","cdr":{"0":{}}}',
            "malformed-response",
            "cdr is a JSON dict, not a list",
        ),
        (b'{"cdr":[],"result":"ok"}', "malformed-response", "no errorCode"),
        (b'{"errorCode":["0"]}', "malformed-response", "errorCode is a list"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed-response", "nested too deeply"),
        (zlib.compress(b" " * 3_000_000), "response-too-large", "inflates past the cap"),
        (b'{"errorCode":"-423","result":"blocked"}', "blocked", "-423"),
    ],
)
def test_structural_errors_are_classified(body, error, message):
    with pytest.raises(errors.CdrApiError) as info:
        read_body(body, max_bytes=2_000_000)
    assert info.value.kind == error
    assert message in str(info.value)


# --- summaries -------------------------------------------------------------------------


def kpi_values(table: pa.Table, accounting: dict, tz=SH) -> dict:
    summary = KpiSummary(tz)
    summary.add(table)
    return summary.values(accounting)


def call_outcome_daily(table: pa.Table) -> pa.Table:
    summary = OutcomeSummary()
    summary.add(table)
    return summary.table()


def _calls() -> pa.Table:
    """Four calls: two connected (one short, one recorded), one the caller did not answer,
    one the callee did not answer."""
    recs = []
    for i, (status, dur, dst_acc, url) in enumerate(
        [(1, 40, T0 + 20, "u"), (1, 5, T0 + 20, ""), (2, 0, 0, ""), (3, 0, 0, "")]
    ):
        rec = record(
            callId=f"c{i}",
            callEndStatus=str(status),
            duration=str(dur),
            dstAcceptTime=str(dst_acc),
            recordUrl=url,
            src=f"s{i % 2}",
        )
        if status == 2:
            rec |= {"srcAcceptTime": "0", "startDstCallTime": "0", "startDstRingTime": "0"}
        recs.append(rec)
    return one_page(recs).cdr


def test_kpis_on_a_hand_made_day():
    table = _calls()
    k = kpi_values(table, {"rejected": 3, "duplicates_dropped": 2}, SH)
    assert k["total_calls"] == 4 and k["connected_calls"] == 2
    assert k["connect_rate"] == 0.5
    assert k["caller_answer_rate"] == 0.75
    assert k["callee_answer_rate"] == pytest.approx(2 / 3)
    assert k["ner_proxy"] == 1.0
    assert k["acd_s"] == 22.5
    assert k["aloc_s"] == 40.0
    assert k["billed_minutes"] == pytest.approx(45 / 60)
    assert k["median_caller_pdd_s"] == 3.0
    assert k["median_callee_pdd_s"] == 3.0
    assert k["median_bridge_s"] == 1.0
    assert k["short_call_ratio"] == 0.5
    assert k["recording_coverage"] == 0.5
    assert k["unique_callers"] == 2 and k["unique_callees"] == 1
    assert k["peak_hour"] == 17
    assert (k["rejected_records"], k["duplicates_dropped"]) == (3, 2)


def test_empty_day_has_null_ratios_not_nan(tmp_path):
    from cdr_pipeline.settings import AnalyticsSettings
    from cdr_pipeline.transform.analytics import DayAnalytics

    table = one_page([]).cdr
    values = kpi_values(table, {"rejected": 0, "duplicates_dropped": 0}, SH)
    billing = (
        DayAnalytics(tmp_path, 0, 86400, SH, AnalyticsSettings())
        .finish(CDR_SCHEMA, queries(DATASETS, AnalyticsSettings()))
        .billing
    )
    kpis = kpi_table(values | billing).to_pylist()[0]
    assert kpis["total_calls"] == 0 and kpis["connect_rate"] is None
    assert kpis["acd_s"] is None and kpis["peak_hour"] is None
    assert not any(isinstance(v, float) and math.isnan(v) for v in kpis.values())
    assert call_outcome_daily(table).num_rows == 0


def test_outcome_summary():
    out = call_outcome_daily(_calls()).to_pylist()
    assert [(r["call_end_status"], r["calls"], r["billed_seconds"]) for r in out] == [
        (1, 2, 45),
        (2, 1, 0),
        (3, 1, 0),
    ]
    assert out[0]["avg_billed_seconds"] == 22.5 and out[0]["share_of_calls"] == 0.5
    assert call_outcome_daily(_calls()).schema.field("calls").type == pa.int64()


@PROPERTY
@given(st.lists(st.one_of(st.none(), st.text(max_size=40)), min_size=1, max_size=30), st.data())
def test_a_fingerprint_depends_on_the_string_alone(strings, data):
    """The same string hashes alike wherever it sits (in any buffer, slice or neighbours),
    and a null like the empty string: distinct counts across row groups rely on it."""
    whole = fingerprint(pa.array(strings, pa.string()))
    alone = [int(fingerprint(pa.array([s or ""], pa.string()))[0]) for s in strings]
    assert whole.tolist() == alone
    start = data.draw(st.integers(0, len(strings) - 1))
    sliced = fingerprint(pa.array(strings, pa.string()).slice(start))
    assert sliced.tolist() == alone[start:]
    for a, b in zip(strings, whole.tolist(), strict=True):
        for c, d in zip(strings, whole.tolist(), strict=True):
            if (a or "") != (c or ""):
                assert b != d  # no collisions among a few dozen strings


def test_a_call_id_sent_as_a_json_number_is_its_digits():
    """Statuses and durations sent as numbers are read as their digits; so is a callId."""
    result = one_page([record(callId=1234567890123), record(callId=12.5)])
    assert result.cdr.column("call_id").to_pylist() == ["1234567890123"]
    assert result.accounting["rejects_by_reason"] == {"missing_call_id": 1}  # 12.5 is no id


def test_space_around_a_call_id_is_not_part_of_it():
    """``" spaced "`` and ``"spaced"`` are one call served twice (the provider's padding is
    not part of an id): one row, the copy counted as a duplicate, the most complete kept."""
    padded = record(callId=" spaced ", recordUrl="")
    plain = record(callId="spaced")
    result = one_page([padded, plain])
    assert result.cdr.column("call_id").to_pylist() == ["spaced"]
    assert result.cdr.column("record_url").to_pylist() == ["https://r.example/x.mp3"]
    acc = result.accounting
    assert (acc["valid"], acc["duplicates_dropped"], acc["duplicates_conflicting"]) == (1, 1, 1)
