"""Server processes for the tests and the docs scripts: each on a free loopback port, up and
answering before it is used, its output kept so that a server that does not come up says why.

A port probed free can be taken before the server binds it: ``dagster-webserver`` binds only
after loading the code location (5-15 s on two busy cores), and meanwhile every outgoing
loopback connection of a test running beside it takes an ephemeral port from the same range.
A server that exits with "address already in use" is therefore started again on another port.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ATTEMPTS = 3  # ports tried when the one probed free is taken before the server binds it
LOG_TAIL = 4000  # characters of a failed server's output put in the error


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Ask a server and its children (``make ui`` runs ``dg dev``, which runs the webserver and
    the daemon) to stop; kill them if they have not within ``timeout`` seconds, and kill what
    its group still holds once it is gone (a daemon's code server, waiting on a database the
    test has stopped, outlived it by hours)."""
    leads = _leads(proc)
    _signal(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal(proc, signal.SIGKILL)
        proc.wait()
    if leads:
        with contextlib.suppress(ProcessLookupError):  # nothing left
            os.killpg(proc.pid, signal.SIGKILL)


def _leads(proc: subprocess.Popen) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:  # already gone
        return False


def _signal(proc: subprocess.Popen, sig: int) -> None:
    """To its process group when it leads one, else to the process alone."""
    try:
        if _leads(proc):
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except ProcessLookupError:  # already gone
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-LOG_TAIL:] if log.exists() else ""


@contextmanager
def server_process(
    name: str,
    argv: Callable[[int], list[str]],
    up: Callable[[int], bool],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> Iterator[int]:
    """Run ``argv(port)`` until ``up(port)``; yields the port and stops the server afterwards.

    Its stdout and stderr go to ``log``. A server that exits or is not up within ``timeout``
    seconds raises an error ending with the log's tail."""
    for attempt in range(1, ATTEMPTS + 1):
        port = free_port()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv(port),
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() reaches its children
            )
        deadline = time.monotonic() + timeout
        while not (ready := up(port)) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.25)
        if ready:
            break
        stop(proc)
        output = tail(log)
        if "address already in use" in output.lower() and attempt < ATTEMPTS:
            continue
        raise RuntimeError(
            f"{name} did not come up on 127.0.0.1:{port} within {timeout:.0f} s "
            f"(attempt {attempt} of {ATTEMPTS}, exit code {proc.returncode}); "
            f"its output ({log}) ends:\n{output}"
        )
    try:
        yield port
    finally:
        stop(proc)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@contextmanager
def webserver(env: Mapping[str, str], log: Path) -> Iterator[str]:
    """``dagster-webserver`` for the project's workspace, answering; yields its URL."""
    argv = [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p"]
    with server_process(
        "dagster-webserver",
        lambda port: [*argv, str(port)],
        lambda port: answers(f"http://127.0.0.1:{port}/server_info"),
        log,
        env=env,
        cwd=ROOT,
    ) as port:
        yield f"http://127.0.0.1:{port}"


# dagster-daemon's own entry point, its backfill loop's fixed 30 s pause (Dagster 1.13,
# dagster/_daemon/backfill.py, which reads the constant on each start) cut to 2 s: a backfill
# takes two of its iterations, a minute of waiting per test otherwise. The constant must exist:
# a Dagster that renamed it fails here rather than silently waiting again.
_DAEMON = """
import sys
import dagster._daemon.controller as controller
assert controller.DEFAULT_DAEMON_INTERVAL_SECONDS == 30
controller.DEFAULT_DAEMON_INTERVAL_SECONDS = 2
from dagster._daemon.cli import main
sys.argv[0] = "dagster-daemon"
sys.exit(main())
"""


def daemon_process(env: Mapping[str, str], log: Path) -> subprocess.Popen:
    """``dagster-daemon`` for the project's workspace (with a short backfill loop), its output
    in ``log``; the caller stops it with :func:`stop`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", _DAEMON, "run", "-w", str(ROOT / "workspace.yaml")],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


class Receiver:
    """An HTTP server on loopback that records every request it is sent (path and body) and
    answers ``status`` (200), or holds each request ``hang_s`` seconds first (a webhook that
    hangs)."""

    def __init__(self, hang_s: float = 0.0, status: int = 200) -> None:
        self.requests: list[tuple[str, bytes]] = []
        self._closing = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                owner.requests.append((self.path, self.rfile.read(length)))
                if hang_s:
                    owner._closing.wait(hang_s)
                self.send_response(status)
                self.end_headers()

            do_GET = do_POST

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook/T0K3N-s3cr3t"

    @property
    def bodies(self) -> list[dict]:
        return [json.loads(body) for _, body in self.requests if body]

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()
