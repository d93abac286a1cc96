"""HubSpot hydration in a real `revor-bridge worker`, against a local HubSpot API stand-in."""

from __future__ import annotations

import pytest

from integration.hydrate.hubspot import HubSpotClient, HubSpotError
from tests.conftest import cli_env, revor_bridge
from tests.servers import ThreadServer, fixture_bytes, hubspot_standin, signatures

TOKEN = "pat-na1-test-token"
SIGS = signatures()
BATCH = "hubspot-deal-propertychange-batch.json"
WON = "24681357-2718281-3471102201-18273645501-1767268795123"
UNKNOWN_DEAL = "24681357-2718281-3471102202-18273645502-1767268796480"


@pytest.fixture
def standin():
    app, state = hubspot_standin(TOKEN)
    with ThreadServer(app) as server:
        yield server, state


def run_worker(redis_url: str, tmp_path, base_url: str) -> None:
    env = cli_env(REDIS_URL=f"{redis_url}/1", HUBSPOT_ACCESS_TOKEN=TOKEN, HUBSPOT_API_BASE_URL=base_url)
    result = revor_bridge("worker", "--burst", env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def test_worker_hydrates_deal_contacts_company_and_owner(bridge, standin, redis_url, tmp_path):
    server, state = standin
    state["fail_next"] = [(429, {"Retry-After": "1"})]  # the first CRM read is rate limited
    assert bridge.post("/webhooks/hubspot", fixture_bytes(BATCH), SIGS["requests"][BATCH]["headers"]).ok
    run_worker(redis_url, tmp_path, server.url)
    won = bridge.event("hubspot", WON).json()
    assert won["status"] == "processed", won
    context = won["context"]
    assert context["deal"]["name"] == "Northwind Pilot - Annual plan" and context["deal"]["stage"] == "closedwon"
    assert context["contact"]["email"] == "dana.lee@example.com" and context["contact"]["first_name"] == "Dana"
    assert [c["email"] for c in context["contacts"]] == ["dana.lee@example.com", "sam.ortiz@example.com"]
    assert context["owner"]["email"] == "rep.one@example.com"
    assert all(call["auth"] == f"Bearer {TOKEN}" for call in state["calls"])
    assert any(call["path"] == "/crm/v3/objects/contacts/batch/read" for call in state["calls"])
    missing = bridge.event("hubspot", UNKNOWN_DEAL).json()
    assert missing["status"] == "failed" and "HTTP 404" in missing["reason"]


def test_re_running_the_worker_changes_nothing(bridge, standin, redis_url, tmp_path):
    server, state = standin
    bridge.post("/webhooks/hubspot", fixture_bytes(BATCH), SIGS["requests"][BATCH]["headers"])
    run_worker(redis_url, tmp_path, server.url)
    calls = len(state["calls"])
    bridge.post("/webhooks/hubspot", fixture_bytes(BATCH), SIGS["requests"][BATCH]["headers"])  # a retry
    run_worker(redis_url, tmp_path, server.url)
    assert len(state["calls"]) == calls  # duplicates are not processed again


def test_without_a_token_events_are_processed_unhydrated(bridge, redis_url, tmp_path):
    bridge.post("/webhooks/hubspot", fixture_bytes(BATCH), SIGS["requests"][BATCH]["headers"])
    result = revor_bridge("worker", "--burst", env=cli_env(REDIS_URL=f"{redis_url}/1"), cwd=tmp_path, timeout=120)
    assert result.returncode == 0
    stored = bridge.event("hubspot", WON).json()
    assert stored["status"] == "processed" and "HUBSPOT_ACCESS_TOKEN is unset" in stored["reason"]


def test_client_refuses_ids_that_are_not_hubspot_ids(standin):
    server, state = standin
    client = HubSpotClient(server.url, TOKEN)
    for bad in ("../../owners", "1?x=1", "https://elsewhere.example.com"):
        with pytest.raises(HubSpotError, match="not a HubSpot id"):
            client.get_deal(bad)
    assert state["calls"] == []


def test_client_reports_rate_limit_waits(standin):
    server, state = standin
    state["fail_next"] = [(429, {"X-HubSpot-RateLimit-Interval-Milliseconds": "10000"}), (502, {})]
    client = HubSpotClient(server.url, TOKEN)
    with pytest.raises(HubSpotError) as limited:
        client.get_deal("18273645501")
    assert limited.value.retryable and limited.value.wait == 10.0
    with pytest.raises(HubSpotError) as bad_gateway:
        client.get_deal("18273645501")
    assert bad_gateway.value.retryable and bad_gateway.value.status == 502
    assert client.get_deal("18273645501")["id"] == "18273645501"
