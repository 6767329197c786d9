"""A hostile or broken provider, round two: what the client does when the server lies about
its encoding, trickles its answer, sits behind a proxy setting, or shows a bad certificate."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from cdr_pipeline.api import errors
from cdr_pipeline.api.client import CdrApiClient
from cdr_pipeline.api.transport import proxy_for
from cdr_pipeline_tests.conftest import API_ID, APP_ID, FAST, publish_tables

DAY = (1_709_222_400, 1_709_308_800)
HOUR = (DAY[0] + 9 * 3600, DAY[0] + 10 * 3600)


# --- a wrong Content-Encoding header ------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_a_wrong_content_encoding_header_changes_nothing(sim_server, make_client, compress):
    """Plain JSON (or zlib) labelled gzip: the body is stored exactly as sent and decoded by
    what it holds."""
    honest = sim_server(calls_per_day=800, page_size=100)
    liar = sim_server(calls_per_day=800, page_size=100, content_encoding="gzip")
    settings = FAST.model_copy(update={"compress": compress})
    want = [p.body for p in make_client(honest, settings).query_window(*HOUR)]
    got = make_client(liar, settings).query_window(*HOUR)
    assert [p.body for p in got] == want
    assert sum(p.record_count for p in got) > 0


# --- a server that trickles ---------------------------------------------------------------


class Trickler:
    """A raw HTTP server that answers every request one byte at a time."""

    def __init__(self, answer: bytes, gap_s: float) -> None:
        self.answer, self.gap_s = answer, gap_s
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/201511v3/getCdr"
        self.stop = threading.Event()
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        self.requests += 1
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            for i in range(len(self.answer)):
                if self.stop.wait(self.gap_s):
                    return
                try:
                    conn.sendall(self.answer[i : i + 1])
                except OSError:
                    return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def _answer(body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


@pytest.fixture
def trickler() -> Iterator[Callable[[bytes], Trickler]]:
    made: list[Trickler] = []

    def make(answer: bytes) -> Trickler:
        made.append(Trickler(answer, gap_s=0.05))
        return made[-1]

    yield make
    for t in made:
        t.close()


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_trickling_answer_meets_the_total_deadline(trickler, where):
    """Each byte comes well within the read timeout, so only a total deadline can end it."""
    body = json.dumps({"errorCode": "0", "offset": "0", "cdr": []}).encode()
    answer = _answer(body + b" " * 10_000) if where == "body" else b"HTTP/1.1 200 OK" * 1000
    server = trickler(answer)
    settings = FAST.model_copy(
        update={"read_timeout_s": 1.0, "request_deadline_s": 0.6, "max_attempts": 2}
    )
    with (
        CdrApiClient(server.url, API_ID, APP_ID, settings) as client,
        pytest.raises(errors.RetriesExhaustedError) as info,
    ):
        client.query_window(*HOUR)
    text = str(info.value)
    assert "total deadline of 0.6 s" in text and "window" in text
    assert server.requests == 2


def test_the_default_deadline_is_a_multiple_of_the_read_timeout():
    assert FAST.model_copy(update={"read_timeout_s": 7}).deadline_s == 28
    assert FAST.model_copy(update={"request_deadline_s": 3}).deadline_s == 3


# --- proxies ------------------------------------------------------------------------------


def test_a_loopback_endpoint_is_never_proxied(sim_server, make_client, monkeypatch):
    """A proxy in the environment would see the request line, ``?id=`` and all."""
    proxy = socket.create_server(("127.0.0.1", 0))
    proxy.settimeout(0.2)
    address = f"http://127.0.0.1:{proxy.getsockname()[1]}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, address)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    server = sim_server(calls_per_day=200)
    pages = make_client(server).query_window(*HOUR)
    assert pages and server.sim.stats["requests"] >= 1
    with pytest.raises(TimeoutError):
        proxy.accept()  # nobody came
    proxy.close()
    # a real endpoint does go through the configured proxy, unless NO_PROXY names it
    assert proxy_for("https://api.example.com/201511v3/getCdr") == address
    monkeypatch.setenv("NO_PROXY", "api.example.com")
    assert proxy_for("https://api.example.com/201511v3/getCdr") is None
    assert proxy_for(server.url) is None


# --- TLS ----------------------------------------------------------------------------------


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_a_certificate_that_does_not_verify_is_fatal_with_a_hint(tmp_path):
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    handshakes = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            handshakes.append(1)
            try:
                context.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    url = f"https://localhost:{port}/201511v3/getCdr"
    try:
        with (
            CdrApiClient(url, API_ID, APP_ID, FAST) as client,
            pytest.raises(errors.FatalApiError) as info,
        ):
            client.query_window(*HOUR)
    finally:
        listener.close()
    assert info.value.kind == "tls"
    assert "SSL_CERT_FILE" in str(info.value) and "window" in str(info.value)
    assert len(handshakes) == 1  # not retried as if the provider were flaky


def test_the_raw_layer_keeps_a_mislabelled_body_byte_for_byte(sim_server, make_client):
    server = sim_server(calls_per_day=300, content_encoding="deflate")
    (page,) = make_client(server, FAST.model_copy(update={"compress": False})).query_window(*HOUR)
    doc = json.loads(page.body)
    assert doc["errorCode"] == "0" and hashlib.sha256(page.body).hexdigest()


# --- an empty answer, and a day that would shrink -------------------------------------------


@pytest.mark.parametrize("cdr_list", ["absent", "null"])
def test_a_success_answer_without_its_cdr_list_is_malformed_not_empty(
    sim_server, make_client, cdr_list
):
    server = sim_server(calls_per_day=300, cdr_list=cdr_list)
    with pytest.raises(errors.RetriesExhaustedError) as info:
        make_client(server).query_window(*HOUR)
    assert isinstance(info.value.last, errors.MalformedResponseError)
    assert "without a cdr list" in str(info.value)


@pytest.mark.parametrize("offset", ["0", "0.0", "00", "", None, 0, 0.0, False])
def test_every_spelling_of_zero_ends_the_listing(offset):
    from cdr_pipeline.api.wire import parse_document

    doc = parse_document(json.dumps({"errorCode": "0", "offset": offset, "cdr": []}).encode())
    assert not doc.truncated


@pytest.mark.parametrize("offset", ["1000", "c1", "abc0", 5, "1e3"])
def test_anything_else_is_a_cursor(offset):
    from cdr_pipeline.api.wire import parse_document

    doc = parse_document(json.dumps({"errorCode": "0", "offset": offset, "cdr": []}).encode())
    assert doc.truncated


def _published(env) -> dict[str, str]:
    from cdr_pipeline_tests.conftest import digests

    return digests(env.root, "*.parquet") | digests(env.root / "_state", "*.json")


def test_an_answer_without_calls_never_empties_a_published_day(
    monkeypatch, tmp_path, sim_server, instance
):
    from cdr_pipeline_tests.conftest import Env

    key = "2024-03-05"
    quick = {"CDR_MAX_ATTEMPTS": "2", "CDR_FETCH_RETRIES": "1", "CDR_FETCH_RETRY_DELAY_S": "0"}
    good = Env(monkeypatch, tmp_path, sim_server(calls_per_day=150), **quick)
    assert good.run(instance, key).success
    before = _published(good)
    for broken in (sim_server(cdr_list="absent"), sim_server(cdr_list="null")):
        env = Env(monkeypatch, tmp_path, broken, **quick)
        result = env.run(instance, key, raise_on_error=False)
        assert not result.success
        assert _published(env) == before


def test_a_re_run_that_would_shrink_the_day_is_refused_unless_allowed(
    monkeypatch, tmp_path, sim_server, instance
):
    from cdr_pipeline import publish
    from cdr_pipeline_tests.conftest import Env

    key = "2024-03-05"
    env = Env(monkeypatch, tmp_path, sim_server(calls_per_day=150))
    assert env.run(instance, key).success
    published = publish.read_state(env.store, "validation", key)["accounting"]["valid"]
    before = _published(env)
    # The provider now answers, correctly formed, that the day had no calls.
    env = Env(monkeypatch, tmp_path, sim_server(calls_per_day=150, empty_from_request=1))
    result = env.run(instance, key, raise_on_error=False)
    assert not result.success
    failures = [e.step_failure_data.error.message for e in result.all_events if e.is_step_failure]
    assert any(
        f"{key}: this run would publish 0 valid calls where the published version has {published}"
        in m
        and "allow_shrink" in m
        for m in failures
    ), failures
    assert _published(env) == before  # nothing replaced, not even the accounting
    # The operator allows it for one run.
    allow = {"ops": {"cdr_day": {"config": {"allow_shrink": True}}}}
    assert env.run(instance, key, run_config=allow).success
    assert publish.read_state(env.store, "validation", key)["accounting"]["valid"] == 0
    assert publish.day_rows(env.store, "cdr", key) == 0


def test_the_shrink_guard_allows_a_small_drop_and_refuses_a_large_one(tmp_path):
    import pyarrow as pa

    from cdr_pipeline.publish import ShrinkRefused, shrink_guard
    from cdr_pipeline.store import open_store

    store = open_store(tmp_path)
    day = "2024-03-05"
    shrink_guard(store, day, 0, 0.05)  # nothing published yet: anything goes
    publish_tables(
        store,
        day,
        {"cdr": pa.table({"x": [1]})},
        state={"validation": {"accounting": {"valid": 100}}},
    )
    shrink_guard(store, day, 95, 0.05)
    shrink_guard(store, day, 250, 0.05)  # more calls: always fine
    with pytest.raises(ShrinkRefused, match="94 valid calls where the published version has 100"):
        shrink_guard(store, day, 94, 0.05)
    with pytest.raises(ShrinkRefused):
        shrink_guard(store, day, 0, 1.0)  # a drop to zero is refused whatever the share
    shrink_guard(store, day, 0, None)  # allowed for this run


# --- Ctrl-C and SIGTERM -------------------------------------------------------------------

MATERIALIZE = ["dagster", "asset", "materialize", "-m", "cdr_pipeline.definitions"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "sig", "code"),
    [
        (
            ["cdr-pipeline", "materialize", "--start", "2024-03-01", "--end", "2024-03-03"],
            "INT",
            130,
        ),
        (
            ["cdr-pipeline", "materialize", "--start", "2024-03-01", "--end", "2024-03-03"],
            "TERM",
            130,
        ),
        (
            [*MATERIALIZE, "--select", "*", "--partition", "2024-03-02"],
            "INT",
            None,
        ),
        (["dg", "launch", "--assets", "*", "--partition", "2024-03-02"], "INT", None),
    ],
    ids=["cli-ctrl-c", "cli-sigterm", "dagster", "dg"],
)
def test_an_interrupt_stops_the_run_and_publishes_nothing(tmp_path, sim_server, command, sig, code):
    """A slow provider (a whole day takes minutes); the signal comes once requests are under
    way. The run must end long before the day could have been fetched, say so, and leave
    nothing new behind (no retry of the interrupted step either)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    server = sim_server(calls_per_day=4000, page_size=50, latency_s=0.4)
    (tmp_path / "home").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDR_", "DAGSTER_"))}
    env |= {
        "DAGSTER_HOME": str(tmp_path / "home"),
        "CDR_DATA_DIR": str(tmp_path / "data"),
        "CDR_API_URL": server.url,
        "CDR_API_ID": API_ID,
        "CDR_APP_ID": APP_ID,
    }
    exe = str(Path(sys.executable).parent / command[0])
    proc = subprocess.Popen(
        [exe, *command[1:]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    deadline = time.monotonic() + 120
    while server.sim.stats["requests"] < 3:  # the fetch is under way
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never started fetching"
        time.sleep(0.05)
    proc.send_signal(getattr(signal, f"SIG{sig}"))
    out, err = proc.communicate(timeout=60)  # the day alone would take minutes
    assert proc.returncode != 0, out + err
    if code is not None:
        assert proc.returncode == code
        assert "interrupted" in err
    assert "requested a retry" not in out + err
    assert not list((tmp_path / "data").glob("cdr/*/*.parquet"))
    assert not list((tmp_path / "data").glob("raw/cdr/*/manifest.json"))


# --- this machine's own failures ----------------------------------------------------------


def test_a_local_write_failure_is_fatal_names_the_path_and_is_not_retried(
    monkeypatch, tmp_path, sim_server, instance
):
    from cdr_pipeline_tests.conftest import Env

    env = Env(monkeypatch, tmp_path, sim_server(calls_per_day=200))
    blocked = env.root / "raw" / "cdr" / "date=2024-03-05"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the day's folder belongs")
    result = env.run(instance, "2024-03-05", raise_on_error=False)
    assert not result.success
    kinds = [e.event_type_value for e in result.all_events]
    assert "STEP_UP_FOR_RETRY" not in kinds  # the provider is not to blame
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "2024-03-05: could not write the raw layer" in message
    assert str(blocked) in message and "not retried" in message


def test_a_disk_that_fills_up_mid_day_leaves_no_orphan_bodies(tmp_path, sim_server, make_client):
    import errno

    from cdr_pipeline import layout
    from cdr_pipeline.layout import Day
    from cdr_pipeline.raw import fetch_raw_day
    from cdr_pipeline.store import LocalStore, open_store

    store = open_store(tmp_path)
    day = Day.from_key("2024-03-05", ZoneInfo("Asia/Shanghai"))
    client = make_client(sim_server(calls_per_day=2000, page_size=100))
    real_put, puts = LocalStore.put, []

    def filling_up(self, key, data):
        puts.append(key)
        if len(puts) == 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path(key)))
        real_put(self, key, data)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LocalStore, "put", filling_up)
        with pytest.raises(OSError, match="No space left"):
            fetch_raw_day(client, store, day, endpoint="test", timezone="Asia/Shanghai")
    folder = tmp_path / layout.raw_day_key(day.key)
    assert len(puts) == 5 and list(folder.iterdir()) == []


# --- decompression bombs to every worker at once ------------------------------------------

BOMB_CLIENT = r"""
import json, sys
from cdr_pipeline.api.client import CdrApiClient
from cdr_pipeline.api.errors import CdrApiError
from cdr_pipeline.settings import ClientSettings

def rss_peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

url, cap_mb = sys.argv[1], float(sys.argv[2])
windows = [(1709222400 + h * 3600, 1709222400 + (h + 1) * 3600) for h in range(8)]
settings = ClientSettings(concurrency=4, max_body_mb=cap_mb, max_attempts=1)
with CdrApiClient(url, "ID-bomb-test", "APP-bomb-test", settings) as client:
    client.query_window(*windows[0])  # the first request proves the account: it is fine
    before = rss_peak_mb()
    try:
        list(client.fetch_windows(windows[1:]))
    except CdrApiError as exc:
        kind = exc.kind
print(json.dumps({"before": before, "after": rss_peak_mb(), "kind": kind}))
"""


@pytest.mark.slow
def test_bombs_to_every_worker_cost_one_cap_not_one_per_worker(sim_server):
    """Four workers each receive a body that inflates to 256 MiB; the cap is 48 MiB. Were
    they inflated side by side, the peak would grow by about four caps."""
    import subprocess
    import sys

    cap_mb = 48
    server = sim_server(calls_per_day=300, bomb_from_request=2, bomb_bytes=256 << 20)
    out = subprocess.run(
        [sys.executable, "-c", BOMB_CLIENT, server.url, str(cap_mb)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["kind"] == "response-too-large"
    assert server.sim.stats["requests"] >= 5  # the workers did all ask at once
    assert result["after"] - result["before"] < 2 * cap_mb, result
