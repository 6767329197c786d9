"""The helper that starts the suite's server processes: a port taken between the probe and the
server's bind costs a retry, not a failed run, and a server that cannot start says why."""

from __future__ import annotations

import socket
import sys

import pytest

from cdr_pipeline_tests import servers


def _http_server(port: int) -> list[str]:
    return [sys.executable, "-m", "http.server", "-b", "127.0.0.1", str(port)]


@pytest.mark.slow
def test_a_port_taken_before_the_bind_is_retried_on_another(tmp_path, monkeypatch):
    probe = servers.free_port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # as an outgoing connection's local port holds it
        busy = taken.getsockname()[1]
        probes = iter([busy])  # the first port probed is taken before the server binds it
        monkeypatch.setattr(servers, "free_port", lambda: next(probes, None) or probe())
        with servers.server_process(
            "http.server", _http_server, servers.accepts, tmp_path / "log", timeout=30
        ) as port:
            assert port != busy
            assert servers.answers(f"http://127.0.0.1:{port}/")


@pytest.mark.slow
def test_a_server_that_cannot_start_raises_with_its_output(tmp_path):
    def argv(port: int) -> list[str]:
        return [sys.executable, "-c", "import sys; sys.exit('no config file: settings.toml')"]

    failing = servers.server_process("broken", argv, servers.accepts, tmp_path / "log")
    with pytest.raises(RuntimeError, match=r"(?s)exit code 1.*no config file: settings.toml"):
        failing.__enter__()
