"""Shared fixtures: the simulator on a real loopback port, fast client settings."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pyarrow.fs as pafs
import pytest
from hypothesis import settings

from cdr_pipeline.api.client import CdrApiClient
from cdr_pipeline.layout import Day
from cdr_pipeline.publish import Content, DayTransaction
from cdr_pipeline.settings import ClientSettings
from cdr_pipeline.simulator import SimConfig, SimulatorServer, serve
from cdr_pipeline.store import Store, open_store
from cdr_pipeline_tests.servers import accepts, server_process

# Property tests run the same examples every time (derandomized); `make test-fast` asks for a
# quarter of them (--hypothesis-profile=fast). A test that needs more asks for a multiple of
# the profile's count (``settings.default.max_examples``), so the fast profile scales it too.
settings.register_profile("full", max_examples=100, derandomize=True, deadline=None)
settings.register_profile("fast", settings.get_profile("full"), max_examples=25)
settings.load_profile("full")

API_ID = "ID-s3cr3t-4f9a77"
APP_ID = "APP-s3cr3t-b81c02"

# Fast but real: backoff is tiny. The read timeout is what a "slow" fault costs; it is kept
# well above a busy CI core's time to build a large page (0.4 s was not: a whole-day page of
# 1,900 records timed out under load and took a fourth attempt).
FAST = ClientSettings(
    connect_timeout_s=2.0,
    read_timeout_s=1.5,
    max_attempts=4,
    backoff_base_s=0.001,
    backoff_max_s=0.01,
    concurrency=4,
)


# A test that starts a process (the CLI, make, a webserver, a daemon, a server) is marked
# ``slow``, as is one that waits out real deadlines or runs a whole chaos day: ``make
# test-fast`` leaves those out. One left unmarked fails, whether it starts the
# process itself or through a fixture of any scope, which is set up inside the first test
# that asks for it (outside tests, as while collecting, processes are allowed).
_RUNNING: dict[str, pytest.Item | None] = {"item": None}
_popen = subprocess.Popen.__init__


def _guarded_popen(self, args, *a, **kw) -> None:
    item = _RUNNING["item"]
    if item is not None and item.get_closest_marker("slow") is None:
        raise AssertionError(
            f"{item.nodeid} starts a process ({str(args)[:80]}), perhaps through a fixture: "
            "mark it @pytest.mark.slow"
        )
    _popen(self, args, *a, **kw)


subprocess.Popen.__init__ = _guarded_popen  # type: ignore[method-assign]


# Fixtures whose whole purpose is a server process: a test that uses one is slow by that.
PROCESS_FIXTURES = frozenset({"s3_server", "postgres"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    _RUNNING["item"] = item
    try:
        yield
    finally:
        _RUNNING["item"] = None


def _simulators() -> Iterator[Callable[..., SimulatorServer]]:
    servers: list[SimulatorServer] = []

    def start(**overrides) -> SimulatorServer:
        config = SimConfig(**{"slow_seconds": 4.0, "retry_after_s": 0, **overrides})
        server = serve(config)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def sim_server() -> Iterator[Callable[..., SimulatorServer]]:
    """Start simulators on 127.0.0.1 (random port); all are stopped after the test."""
    yield from _simulators()


@pytest.fixture(scope="module")
def sim_server_module() -> Iterator[Callable[..., SimulatorServer]]:
    """The same, kept for a whole test module."""
    yield from _simulators()


@pytest.fixture
def make_client() -> Iterator[Callable[..., CdrApiClient]]:
    clients: list[CdrApiClient] = []

    def make(server: SimulatorServer, settings: ClientSettings = FAST, **kw) -> CdrApiClient:
        client = CdrApiClient(
            server.url, kw.pop("api_id", API_ID), kw.pop("app_id", APP_ID), settings, **kw
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def load_defs() -> dg.Definitions:
    """The definitions as a code server loads them from the environment of now (no setting
    is read at import: building them again reads the settings again)."""
    from cdr_pipeline.definitions import defs

    return defs()


class Env:
    """One project set-up: env vars, a data dir, a Dagster instance, the loaded definitions."""

    def __init__(self, monkeypatch, tmp_path: Path, server, tz: str = "Asia/Shanghai", **env):
        self.root = tmp_path / "data"
        self.server = server
        self.tz = ZoneInfo(tz)
        values = {
            "CDR_DATA_DIR": str(self.root),
            "CDR_TIMEZONE": tz,
            "CDR_START_DATE": "2024-01-01",
            "CDR_API_URL": server.url,
            "CDR_API_ID": API_ID,
            "CDR_APP_ID": APP_ID,
            "CDR_READ_TIMEOUT_S": "2",
            **env,
        }
        for k, v in values.items():
            monkeypatch.setenv(k, v)
        self.defs = load_defs()
        self.job = self.defs.resolve_job_def("cdr_daily_job")

    def run(self, instance, start: str, end: str | None = None, **kw):
        if end is None:
            return self.job.execute_in_process(instance=instance, partition_key=start, **kw)
        tags = {
            "dagster/asset_partition_range_start": start,
            "dagster/asset_partition_range_end": end,
        }
        return self.job.execute_in_process(instance=instance, tags=tags, **kw)

    @property
    def store(self) -> Store:
        return open_store(self.root)

    def day(self, key: str) -> Day:
        return Day.from_key(key, self.tz)

    def glob(self, dataset: str) -> str:
        return str(self.root / dataset / "*" / "*.parquet")


S3_KEY_ID = "AKIDs3cr3tKEY0001"
S3_SECRET = "S3-s3cr3t-9c1d5e7f"


class S3Server:
    """moto's S3-compatible server in its own process on 127.0.0.1, for a test session."""

    def __init__(self, port: int) -> None:
        self.endpoint = f"http://127.0.0.1:{port}"

    def env(self) -> dict[str, str]:
        """The variables a user sets for S3-compatible storage (COS, MinIO): nothing else."""
        return {
            "AWS_ACCESS_KEY_ID": S3_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # never look for an instance role
        }

    def fs(self) -> pafs.S3FileSystem:
        """A client for the test's own checks, configured explicitly (not from the env)."""
        return pafs.S3FileSystem(
            access_key=S3_KEY_ID,
            secret_key=S3_SECRET,
            endpoint_override=self.endpoint,
            region="us-east-1",
            allow_bucket_creation=True,
        )

    def bucket(self, name: str) -> str:
        self.fs().create_dir(name)
        return name

    def objects(self, prefix: str) -> dict[str, bytes]:
        """Every object under ``bucket/prefix``, by key relative to it."""
        fs = self.fs()
        infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
        return {
            info.path[len(prefix) + 1 :]: fs.open_input_stream(info.path).read()
            for info in infos
            if info.type == pafs.FileType.File
        }


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with server_process(
        "moto's S3 server",
        lambda port: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        accepts,
        tmp_path_factory.mktemp("s3") / "moto.log",
        timeout=60,
    ) as port:
        yield S3Server(port)


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


CLI = str(Path(sys.executable).parent / "cdr-pipeline")


def cli_materialize(env: dict[str, str], start: str, end: str) -> subprocess.CompletedProcess:
    """``cdr-pipeline materialize`` in its own process, as a user runs it; it must succeed."""
    proc = subprocess.run(
        [CLI, "materialize", "--start", start, "--end", end],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def kill_when_ready(script: str, args: list[str], env: dict[str, str], ready: Path) -> None:
    """Run ``python -c script *args``; as soon as it has written ``ready`` (it then waits),
    SIGKILL it: a crash at exactly the point the script marks."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the run never reached the point to stop at"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def digests(root: Path, pattern: str = "*.parquet") -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob(pattern))
        if p.is_file()
    }


def publish_tables(
    store: Store, day: str, tables: dict[str, Content], state: dict | None = None
) -> dict[str, str]:
    """Publish ``tables`` (and JSON ``state`` records) as one version of ``day``, as a day's
    build does: staged, then moved at once."""
    with DayTransaction(store, day) as txn:
        for name, content in tables.items():
            txn.stage(name, content)
        for kind, record in (state or {}).items():
            txn.stage_record(kind, record)
        return txn.commit()
