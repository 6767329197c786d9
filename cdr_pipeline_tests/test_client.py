"""The API client against the simulator listening on 127.0.0.1 (real HTTP)."""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import zlib
from datetime import UTC, datetime

import pydantic
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from cdr_pipeline.api import errors, wire
from cdr_pipeline.api.client import TokenBucket
from cdr_pipeline.api.retry import retry_after_seconds
from cdr_pipeline.api.wire import decode_body, parse_document, sniff_encoding
from cdr_pipeline.settings import ClientSettings, InvalidEndpointError, check_endpoint
from cdr_pipeline.simulator import CdrSimulator, SimConfig
from cdr_pipeline_tests.conftest import API_ID, APP_ID, FAST

DAY = (1_709_222_400, 1_709_308_800)  # 2024-03-01 00:00 .. 2024-03-02 00:00 UTC


def _call_ids(pages) -> list[str]:
    return [r["callId"] for p in pages for r in p.records]


# --- error codes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("-1", "configuration"),
        ("-2", "request"),
        ("-202", "request"),
        ("-401", "credentials"),
        ("-402", "configuration"),
        ("-403", "deployment"),
        ("-423", "blocked"),
        ("-777", "unknown-code"),
    ],
)
def test_fatal_codes_stop_after_one_request(sim_server, make_client, code, kind):
    server = sim_server(force_error=code)
    client = make_client(server)
    with pytest.raises(errors.FatalApiError) as info:
        client.query_window(*DAY)
    assert info.value.kind == kind
    assert server.sim.stats["requests"] == 1
    assert info.value.code == code
    assert not info.value.retryable
    text = str(info.value)
    assert code in text and "window" in text and "What to check" in text
    if code == "-403":
        assert "allow-list" in text


def test_every_documented_code_is_classified():
    for code, info in errors.ERROR_CODES.items():
        err = errors.error_for_code(code, "x", window=DAY)
        assert err.retryable == info.retryable
        assert err.meaning == info.meaning
    assert errors.error_for_code("-203", "").retryable
    assert errors.error_for_code("-501", "").retryable
    assert not errors.error_for_code("-423", "").retryable


def test_wrong_credentials_are_fatal(sim_server, make_client):
    server = sim_server(app_id=APP_ID, api_id=API_ID)
    with pytest.raises(errors.FatalApiError) as info:
        make_client(server, app_id="APP-wrong-000").query_window(*DAY)
    assert info.value.kind == "credentials"
    with pytest.raises(errors.FatalApiError) as info:
        make_client(server, api_id="ID-wrong-000").query_window(*DAY)
    assert info.value.code == "-402" and info.value.kind == "configuration"
    assert server.sim.stats["requests"] == 2


def test_bad_window_is_minus_202(sim_server, make_client):
    server = sim_server(max_window_s=3600)
    with pytest.raises(errors.FatalApiError) as info:
        make_client(server).query_window(*DAY)
    assert info.value.code == "-202" and info.value.kind == "request"


def test_http_4xx_is_fatal(sim_server, make_client):
    server = sim_server()
    client = make_client(server)
    client.url = server.url.replace("getCdr", "nothing")
    with pytest.raises(errors.FatalApiError) as info:
        client.query_window(*DAY)
    assert info.value.http_status == 404
    assert server.sim.stats["requests"] == 1


# --- transient faults ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["code-203", "code-501", "http503", "http429", "drop", "slow", "malformed"]
)
def test_transient_faults_are_retried_until_success(sim_server, make_client, kind):
    server = sim_server(
        fault_rate=1.0, fault_kinds=(kind,), max_faults_per_request=2, page_size=100_000
    )
    client = make_client(server)
    pages = client.query_window(*DAY)
    assert pages[0].attempts == 3
    assert server.sim.stats[f"fault:{kind}"] == 2
    assert server.sim.stats["requests"] == 3
    assert client.stats["retries"] == 2
    assert len(_call_ids(pages)) == len(server.sim.listing(*DAY))


def test_retry_after_is_honoured(sim_server, make_client):
    server = sim_server(
        fault_rate=1.0, fault_kinds=("http429",), retry_after_s=7, page_size=100_000
    )
    slept: list[float] = []
    settings = FAST.model_copy(update={"backoff_max_s": 60})
    make_client(server, settings, sleep=slept.append).query_window(*DAY)
    assert slept == [7.0, 7.0]


def test_retry_after_as_an_http_date_is_honoured(sim_server, make_client):
    def throttling():
        return sim_server(
            fault_rate=1.0,
            fault_kinds=("http429",),
            retry_after_s=30,
            retry_after_date=True,
            page_size=100_000,
        )

    slept: list[float] = []
    settings = FAST.model_copy(update={"backoff_max_s": 60})
    make_client(throttling(), settings, sleep=slept.append).query_window(*DAY)
    # the date has whole seconds: what is left of 30 s when the answer is read
    assert len(slept) == 2 and all(25 <= s <= 30 for s in slept), slept
    capped: list[float] = []
    make_client(throttling(), FAST, sleep=capped.append).query_window(*DAY)
    assert capped == [FAST.backoff_max_s] * 2  # never longer than the cap


def test_retry_after_reads_seconds_and_dates():
    now = datetime(2026, 12, 6, 8, 0, 0, tzinfo=UTC).timestamp
    assert retry_after_seconds("12", now) == 12.0
    assert retry_after_seconds("Sun, 06 Dec 2026 08:00:45 GMT", now) == 45.0
    assert retry_after_seconds("Sunday, 06-Dec-26 08:00:45 GMT", now) == 45.0  # RFC 850
    assert retry_after_seconds("Sun, 06 Dec 2026 07:59:00 GMT", now) == 0.0  # past: at once
    assert retry_after_seconds("-3", now) == 0.0
    for unreadable in (None, "", "soon", "Sun, 99 Foo 2026"):
        assert retry_after_seconds(unreadable, now) is None


def test_backoff_grows_exponentially_with_jitter(sim_server, make_client):
    server = sim_server(
        fault_rate=1.0, fault_kinds=("code-501",), max_faults_per_request=3, page_size=100_000
    )
    slept: list[float] = []
    settings = FAST.model_copy(update={"backoff_base_s": 1.0, "backoff_max_s": 100})
    make_client(server, settings, sleep=slept.append).query_window(*DAY)
    assert len(slept) == 3
    for i, delay in enumerate(slept):
        assert 0.5 * 2**i <= delay <= 2**i


def test_retries_are_bounded(sim_server, make_client):
    server = sim_server(fault_rate=1.0, fault_kinds=("malformed",), max_faults_per_request=99)
    with pytest.raises(errors.RetriesExhaustedError) as info:
        make_client(server).query_window(*DAY)
    assert server.sim.stats["requests"] == FAST.max_attempts
    assert isinstance(info.value.last, errors.MalformedResponseError)
    text = str(info.value)
    assert f"gave up after {FAST.max_attempts} attempts" in text
    assert info.value.last.message in text  # the last attempt's own reason is named


# --- paging and truncation -------------------------------------------------------------


@pytest.mark.parametrize("honour", [True, False])
def test_truncation_returns_exactly_the_window(sim_server, make_client, honour):
    server = sim_server(calls_per_day=3000, page_size=97, honour_cursor=honour)
    client = make_client(server)
    pages = client.query_window(*DAY)
    got = _call_ids(pages)
    truth = [c.call_id for c in server.sim.calls_between(*DAY)]
    assert set(got) == set(truth)
    if honour:
        assert sorted(got) == sorted(truth)  # no duplicates at all
        assert client.stats.get("window_splits", 0) == 0
        assert len(pages) == -(-len(truth) // 97)
    else:
        assert client.stats["window_splits"] > 0
        # Halves share one boundary second, so a call exactly there may come twice.
        assert len(got) - len(set(got)) <= client.stats["window_splits"] * 3
    assert all(p.cursor_received in ("0", None, "") for p in pages if p is pages[-1])


def test_a_repeating_cursor_is_an_error(sim_server, make_client):
    server = sim_server(paging_fault="cycle", page_size=10)
    with pytest.raises(errors.FatalApiError, match=r"^\[paging\]") as info:
        make_client(server).query_window(*DAY)
    assert "repeated" in str(info.value)
    assert server.sim.stats["requests"] == 3


def test_endless_paging_hits_the_page_cap(sim_server, make_client):
    server = sim_server(paging_fault="endless", page_size=10)
    settings = FAST.model_copy(update={"max_pages_per_query": 25})
    with pytest.raises(errors.FatalApiError, match=r"^\[paging\]") as info:
        make_client(server, settings).query_window(*DAY)
    assert "more than 25 pages" in str(info.value)
    assert server.sim.stats["requests"] == 25


def test_unsplittable_window_is_fatal_not_partial(sim_server, make_client):
    server = sim_server(calls_per_day=200_000, page_size=1, honour_cursor=False)
    start = 1_709_280_000  # 08:00 local, a busy hour
    with pytest.raises(errors.FatalApiError, match=r"^\[paging\]") as info:
        make_client(server).query_window(start, start + 4)
    assert "one-second window" in str(info.value)


def test_src_filter(sim_server, make_client):
    server = sim_server(calls_per_day=3000)
    src = server.sim.calls_between(*DAY)[0].src
    pages = make_client(server).query_window(*DAY, src=src)
    records = [r for p in pages for r in p.records]
    assert records and all(r["src"] == src for r in records)


def test_fetch_windows_keeps_order_with_concurrency(sim_server, make_client):
    server = sim_server(calls_per_day=3000, page_size=100)
    windows = [(DAY[0] + i * 3600, DAY[0] + (i + 1) * 3600) for i in range(8)]
    results = list(make_client(server).fetch_windows(windows))
    assert [w for w, _ in results] == windows
    for (a, b), pages in results:
        assert set(_call_ids(pages)) == {c.call_id for c in server.sim.calls_between(a, b)}


def test_lookup(sim_server, make_client):
    server = sim_server()
    call = server.sim.calls_between(*DAY)[5]
    client = make_client(server)
    assert client.lookup(call.call_id) == call.wire
    assert client.lookup("00-nothing-here") is None


# --- bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "compress", "encoding"),
    [
        ({}, True, "zlib"),
        ({}, False, "plain"),
        ({"gzip": True}, True, "gzip"),
        ({"uncompressed_rate": 1.0}, True, "plain"),
    ],
)
def test_body_encodings(sim_server, make_client, overrides, compress, encoding):
    server = sim_server(**overrides)
    settings = FAST.model_copy(update={"compress": compress})
    pages = make_client(server, settings).query_window(*DAY)
    assert {p.encoding for p in pages} == {encoding}
    assert len(_call_ids(pages)) == len(server.sim.listing(*DAY))


def test_decode_body_detects_by_content():
    doc = json.dumps({"errorCode": "0", "cdr": [], "offset": "0"}).encode()
    for body, enc in (
        (doc, "plain"),
        (zlib.compress(doc), "zlib"),
        (gzip.compress(doc), "gzip"),
        (zlib.compress(doc, 9), "zlib"),
    ):
        assert sniff_encoding(body) == enc
        assert decode_body(body) == (doc, enc)


def test_broken_and_truncated_zlib_are_malformed():
    packed = zlib.compress(json.dumps({"errorCode": "0", "cdr": list(range(999))}).encode())
    with pytest.raises(errors.MalformedResponseError, match="truncated"):
        decode_body(packed[: len(packed) // 2])
    broken = packed[:2] + bytes(b ^ 0x55 for b in packed[2:40]) + packed[40:]
    with pytest.raises(errors.MalformedResponseError):
        decode_body(broken)


def test_decompression_bomb_is_refused_without_inflating_it():
    bomb = zlib.compress(b"0" * (64 * 1024 * 1024), 9)
    assert len(bomb) < 100_000
    with pytest.raises(errors.FatalApiError, match=r"^\[response-too-large\]"):
        decode_body(bomb, max_bytes=1024 * 1024)


def _outcome(body: bytes, max_bytes: int) -> object:
    try:
        return decode_body(body, max_bytes=max_bytes)
    except errors.CdrApiError as exc:
        return exc.kind, str(exc).split(":")[0]


@hypothesis_settings(
    max_examples=3 * hypothesis_settings.default.max_examples,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    doc=st.binary(max_size=3000),
    wrap=st.sampled_from(["zlib", "gzip", "plain"]),
    cut=st.integers(0, 64),
    flip=st.integers(0, 4000),
    max_bytes=st.sampled_from([10, 1000, 1 << 20]),
)
def test_isal_and_zlib_inflate_alike(doc, wrap, cut, flip, max_bytes):
    """ISA-L does the inflating when it is installed; whatever the bytes (whole, cut short,
    a bit flipped, too large), the answer or the error is the one zlib would give."""
    body = {"zlib": zlib.compress, "gzip": lambda d: gzip.compress(d, mtime=0)}.get(
        wrap, lambda d: d
    )(doc)
    body = body[: max(0, len(body) - cut)]
    if body and flip < len(body) * 8:
        body = (
            body[: flip // 8] + bytes([body[flip // 8] ^ (1 << flip % 8)]) + body[flip // 8 + 1 :]
        )
    fast = _outcome(body, max_bytes)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(wire, "_inflate_lib", zlib)
        slow = _outcome(body, max_bytes)
    if slow != fast:
        # zlib stops at the cap before it reaches a broken bit past it; ISA-L reads ahead
        # and meets it. Broken and too large: either refusal is true.
        assert slow[0] == "response-too-large"
        assert fast[0] == "malformed-response"
    assert wire._inflate_lib is not zlib  # isal is a dependency: the fast path is the real one


def test_oversized_page_is_fatal_after_one_request(sim_server, make_client):
    server = sim_server(calls_per_day=5000)
    settings = FAST.model_copy(update={"max_body_mb": 0.02})  # 20 KiB
    with pytest.raises(errors.FatalApiError, match=r"^\[response-too-large\]"):
        make_client(server, settings).query_window(*DAY)
    assert server.sim.stats["requests"] == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>oops</html>", "not valid JSON"),
        (b"[1, 2]", "JSON list"),
        (b'{"result": "x"}', "no errorCode"),
        (b'{"errorCode": "0", "cdr": {"a": 1}}', "not a list"),
        (b'{"errorCode": null}', "errorCode is a NoneType"),
    ],
)
def test_structurally_bad_documents(body, message):
    with pytest.raises(errors.MalformedResponseError, match=message):
        parse_document(body)


def test_error_document_with_http_200_is_an_error():
    doc = parse_document(b'{"errorCode": "-501", "result": "server exception"}')
    assert doc.error_code == "-501" and doc.records == []


# --- endpoint and secrets --------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/201511v3/getCdr",
        "http://127.0.0.1:8787/201511v3/getCdr",
        "http://localhost/201511v3/getCdr",
        "http://[::1]:9/201511v3/getCdr",
    ],
)
def test_accepted_endpoints(url):
    assert check_endpoint(url) == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://api.example.com/201511v3/getCdr", "plain http"),
        ("http://10.0.0.5/201511v3/getCdr", "plain http"),
        ("ftp://api.example.com/x", "must look like"),
        ("not a url", "must look like"),
        ("https://api.example.com/201511v3/getCdr?id=1", "query string"),
    ],
)
def test_refused_endpoints(url, message):
    with pytest.raises(InvalidEndpointError, match=message):
        check_endpoint(url)


def test_no_secret_in_logs_output_or_errors(sim_server, make_client, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "cdr_pipeline"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    server = sim_server(fault_rate=0.5, page_size=200, calls_per_day=3000)
    client = make_client(server)
    client.query_window(*DAY)
    texts = [repr(client)]
    for code in ("-401", "-423"):
        bad = sim_server(force_error=code)
        with pytest.raises(errors.CdrApiError) as info:
            make_client(bad).query_window(*DAY)
        texts += [str(info.value), repr(info.value)]
    dead = sim_server()
    dead.close()
    with pytest.raises(errors.CdrApiError) as info:
        make_client(dead, FAST.model_copy(update={"max_attempts": 2})).query_window(*DAY)
    assert info.value.kind == "unreachable"  # refused before any answer: said at once
    texts += [str(info.value), repr(info.value)]
    out = capsys.readouterr()
    assert "HTTP Request" in caplog.text  # httpx did log the request line, redacted
    haystack = "\n".join([caplog.text, out.out, out.err, *texts])
    assert API_ID not in haystack and APP_ID not in haystack


# --- rate limit ------------------------------------------------------------------------


def test_token_bucket_paces_requests():
    now = [0.0]
    bucket = TokenBucket(
        rate=4.0, burst=1, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s)
    )
    for _ in range(9):
        bucket.acquire()
    assert now[0] == pytest.approx(2.0)  # 1 free, then 8 more at 4/s


def test_in_process_transport_matches_real_server(sim_server, make_client):
    server = sim_server(page_size=300, calls_per_day=3000)
    sim = CdrSimulator(SimConfig(page_size=300, calls_per_day=3000))
    from cdr_pipeline.api.client import CdrApiClient

    local = CdrApiClient(server.url, API_ID, APP_ID, FAST, transport=sim.transport())
    a = [p.body for p in local.query_window(*DAY)]
    b = [p.body for p in make_client(server).query_window(*DAY)]
    assert a == b
    local.close()


def test_settings_are_immutable():
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        ClientSettings().max_attempts = 1  # type: ignore[misc]


@pytest.mark.parametrize("honour", [True, False])
def test_a_busy_window_is_split_into_parts_fetched_side_by_side(sim_server, make_client, honour):
    """Two windows, eight workers: without splitting, six workers would idle while two long
    chains of pages run. The chains are cut into parts; every call is still there, the
    parts come back in time order and tile their window (sharing boundary seconds)."""
    server = sim_server(calls_per_day=6000, page_size=40, honour_cursor=honour)
    windows = [(DAY[0] + 8 * 3600, DAY[0] + 12 * 3600), (DAY[0] + 12 * 3600, DAY[0] + 16 * 3600)]
    settings = FAST.model_copy(update={"concurrency": 8})
    client = make_client(server, settings)
    results = list(client.fetch_windows(windows))
    assert client.stats["chain_splits"] >= 2
    assert [w for w, _ in results] == windows
    for (a, b), pages in results:
        truth = {c.call_id for c in server.sim.calls_between(a, b)}
        assert set(_call_ids(pages)) == truth
        starts = [p.window[0] for p in pages]
        assert starts == sorted(starts) and starts[0] == a and pages[-1].window[1] == b
        parts = sorted({p.window for p in pages})
        assert all(x[1] == y[0] for x, y in itertools.pairwise(parts))  # no gap anywhere
    # Decided from the first pages alone: the same answers give the same requests.
    again = list(make_client(server, settings).fetch_windows(windows))
    assert [[(p.window, p.cursor_sent, p.body) for p in pages] for _, pages in again] == [
        [(p.window, p.cursor_sent, p.body) for p in pages] for _, pages in results
    ]
    unsplit = make_client(server, settings.model_copy(update={"split_stragglers": False}))
    plain = list(unsplit.fetch_windows(windows))
    assert unsplit.stats.get("chain_splits", 0) == 0
    assert [set(_call_ids(p)) for _, p in plain] == [set(_call_ids(p)) for _, p in results]


def test_many_windows_on_few_workers_are_not_split(sim_server, make_client):
    """When every worker has plenty of whole windows to do, splitting would only add
    requests: chains are left as they are."""
    server = sim_server(calls_per_day=3000, page_size=100)
    windows = [(DAY[0] + i * 3600, DAY[0] + (i + 1) * 3600) for i in range(24)]
    client = make_client(server, FAST.model_copy(update={"concurrency": 2}))
    list(client.fetch_windows(windows))
    assert client.stats.get("chain_splits", 0) == 0


def test_every_first_page_goes_before_any_chain(sim_server, make_client, monkeypatch):
    """Longest-first packs the workers well only once every chain's length is known, so no
    cursor is followed while a window's first page is still waiting (a worker may pick up a
    chain while the others send the last first pages: that is the slack allowed here)."""
    server = sim_server(calls_per_day=6000, page_size=40)
    windows = [(DAY[0] + i * 3600, DAY[0] + (i + 1) * 3600) for i in range(24)]
    workers = 4
    client = make_client(server, FAST.model_copy(update={"concurrency": workers}))
    sent: list[bool] = []  # whether each page request carried a cursor, in order
    request = client.request

    def recording(params, **kw):
        sent.append("offset" in params)
        return request(params, **kw)

    monkeypatch.setattr(client, "request", recording)
    list(client.fetch_windows(windows))
    assert sent.count(False) == len(windows) and sent.count(True) > len(windows)
    assert sent.index(True) >= len(windows) - (workers - 1)
