"""Run the sandbox on loopback: in a background thread (tests, demo) or in the foreground (CLI)."""

from __future__ import annotations

import logging
import threading

from werkzeug.serving import BaseWSGIServer, make_server

from integration.sandbox.app import create_sandbox_app
from integration.sandbox.core import Faults, Sandbox


class SandboxServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, faults: Faults | None = None,
                 seed: int | None = None, quiet: bool = True) -> None:
        self.sandbox = Sandbox(faults=faults, seed=seed)
        if quiet:
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.server: BaseWSGIServer = make_server(host, port, create_sandbox_app(self.sandbox), threaded=True)
        self.server.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.server_port

    @property
    def url(self) -> str:
        return f"http://{self.server.server_address[0]}:{self.port}"

    @property
    def api_url(self) -> str:
        return self.url + "/api/v1"

    def start(self) -> SandboxServer:
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="revor-sandbox", daemon=True)
        self.thread.start()
        return self

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.thread:
            self.thread.join(timeout=5)

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
