"""Run the sandbox on loopback: in a background thread (tests, demo) or in the foreground (CLI)."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from integration.localserver import LocalServer
from integration.sandbox.app import create_sandbox_app
from integration.sandbox.core import Faults, Sandbox


class SandboxServer(LocalServer):
    def __init__(self, host: str = "127.0.0.1", port: int = 0, faults: Faults | None = None,
                 seed: int | None = None, quiet: bool = True) -> None:
        self.sandbox = Sandbox(faults=faults, seed=seed)
        super().__init__(create_sandbox_app(self.sandbox), host, port, quiet)

    @property
    def api_url(self) -> str:
        return self.url + "/api/v1"

    def __enter__(self) -> SandboxServer:
        self.start()
        return self


class GunicornSandbox(BaseApplication):  # type: ignore[misc]
    """The sandbox as `revor-bridge sandbox` serves it: gunicorn, one process (the sandbox keeps
    its tasks in memory), threads, and HTTP keep-alive. Werkzeug's server, which the in-process
    SandboxServer uses, closes every connection after one request and starts a thread for each:
    a client then pays a TCP handshake per call, and the sandbox rather than the bridge sets
    the pace of a benchmark."""

    def __init__(self, host: str, port: int, faults: Faults | None = None, seed: int | None = None,
                 quiet: bool = True, threads: int = 16) -> None:
        self.sandbox = Sandbox(faults=faults, seed=seed)
        self.options = {"bind": [f"{host}:{port}"], "workers": 1, "worker_class": "gthread", "threads": threads,
                        "keepalive": 30, "timeout": 60, "control_socket_disable": True,
                        "accesslog": None if quiet else "-", "loglevel": "warning" if quiet else "info"}
        super().__init__()

    def load_config(self) -> None:
        for name, value in self.options.items():
            self.cfg.set(name, value)

    def load(self) -> Any:
        return create_sandbox_app(self.sandbox)
