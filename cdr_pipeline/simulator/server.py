"""The simulator on a real loopback HTTP port, for the tests and ``simulate-api``."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cdr_pipeline.simulator.config import PATH, SimConfig
from cdr_pipeline.simulator.provider import CdrSimulator


class SimulatorServer:
    """The simulator listening on a loopback port, in a background thread."""

    def __init__(self, sim: CdrSimulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sim = sim
        handler = _make_handler(sim)
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{PATH}"

    def start(self) -> SimulatorServer:
        if not self._thread.is_alive():
            self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _make_handler(sim: CdrSimulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without TCP_NODELAY, Nagle holds the body
        # until the client's delayed ACK (40 ms) arrives, and every answer looks slow.
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            resp = sim.handle(self.command, parts.path, query, body)
            if resp.action == "drop":
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if resp.action == "slow":
                time.sleep(sim.config.slow_seconds)
                self.close_connection = True
                return
            self.send_response(resp.status)
            for name, value in resp.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(resp.body)))
            self.end_headers()
            self.wfile.write(resp.body)

        do_POST = _serve
        do_GET = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the request line carries the id= credential: never log it

    return Handler


def serve(
    config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> SimulatorServer:
    return SimulatorServer(CdrSimulator(config), host, port).start()
