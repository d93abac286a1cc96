"""Run the sandbox on loopback: in a background thread (tests, demo) or in the foreground (CLI)."""

from __future__ import annotations

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
