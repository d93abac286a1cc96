"""Events that cannot be processed, and rules that match but cannot render, end visibly.

Everything is real, as in test_pipeline.py: a `revor-bridge worker` process with its clock, the
web app over HTTP, the Revor sandbox, a HubSpot API stand-in and a write-back receiver.
"""

from __future__ import annotations

import copy
import json
import time
from contextlib import ExitStack

import pytest
import requests

from integration.jobs.events import MAX_ATTEMPTS
from integration.rules.build import dispatch_id_for
from tests.conftest import ADMIN_TOKEN
from tests.servers import fixture_bytes
from tests.test_pipeline import RULES, SIGS, ZAP_HEADERS, _stack, dispatches, settle, zap

BATCH = "hubspot-deal-propertychange-batch.json"
WON = "24681357-2718281-3471102201-18273645501-1767268795123"
DEAL_ID = "18273645501"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def pipeline_stack(tmp_path, make_bridge, redis_url, redis_db):
    """test_pipeline.py's stack (worker processes, sandbox, HubSpot stand-in, receiver) with given rules."""
    with ExitStack() as stacks:
        yield lambda rules_text, **env: stacks.enter_context(_stack(tmp_path, make_bridge, redis_url, redis_db,
                                                                    rules_text, env))


def api(stack, method: str, path: str) -> requests.Response:
    return requests.request(method, f"{stack['bridge'].url}/api/v1{path}", headers=AUTH, timeout=10)


def wait_for(check, timeout: float, what: str, stack) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    log = (stack["tmp"] / "worker0.log").read_text()[-4000:]
    raise AssertionError(f"{what} did not happen within {timeout} s\n{log}")


def deal_reads(stack) -> int:
    return sum(1 for call in stack["hub"]["calls"] if call["path"] == f"/crm/v3/objects/deals/{DEAL_ID}")


def test_a_poison_event_fails_after_bounded_attempts_and_an_operator_retry_processes_it_once(pipeline_stack):
    """HubSpot answers the deal with `associations` of the wrong shape: hydration raises an
    AttributeError that nothing expects. Today the event stays `received` and runs every lease."""
    stack = pipeline_stack(RULES, BRIDGE_LEASE_SECONDS="2")
    good = stack["hub"]["deals"][DEAL_ID]
    broken = copy.deepcopy(good)
    broken["associations"] = ["contacts"]
    stack["hub"]["deals"][DEAL_ID] = broken
    stack["start_worker"]()
    answer = stack["bridge"].post("/webhooks/hubspot", fixture_bytes(BATCH), SIGS["requests"][BATCH]["headers"])
    assert answer.status_code == 200, answer.text

    wait_for(lambda: api(stack, "GET", f"/events/hubspot/{WON}").json()["status"] == "failed", 60,
             "the poison event ending failed", stack)
    failed = api(stack, "GET", f"/events/hubspot/{WON}").json()
    assert failed["attempts"] == MAX_ATTEMPTS
    assert failed["error"]["type"] == "AttributeError" and "'list' object has no attribute" in \
        failed["error"]["message"]
    assert failed["reason"].startswith(f"processing failed {MAX_ATTEMPTS} times: AttributeError")
    assert failed["dispatches"] == []
    reads = deal_reads(stack)
    # The batch's third event (an amount change) reads the same deal: two poison events, one
    # HubSpot read per attempt each, not one per lease period for ever.
    assert reads == 2 * MAX_ATTEMPTS
    time.sleep(5)  # well over two lease periods: nothing runs it again
    assert deal_reads(stack) == reads
    assert stack["redis"].zscore("rb:lease:event", f"rb:event:hubspot:{WON}") is None

    listed = api(stack, "GET", "/events?status=failed").json()
    assert WON in [item["event_id"] for item in listed["items"]]
    one = next(item for item in listed["items"] if item["event_id"] == WON)
    assert one["error"]["type"] == "AttributeError" and one["attempts"] == MAX_ATTEMPTS
    assert api(stack, "GET", "/events?status=nonsense").status_code == 400

    stack["hub"]["deals"][DEAL_ID] = good  # the cause is fixed
    retried = api(stack, "POST", f"/events/hubspot/{WON}/retry")
    assert retried.status_code == 202, retried.text
    assert retried.json()["status"] == "received" and retried.json()["attempts"] == 0
    wait_for(lambda: api(stack, "GET", f"/events/hubspot/{WON}").json()["status"] == "processed", 30,
             "the retried event being processed", stack)
    found = settle(stack, expected=1)
    processed = api(stack, "GET", f"/events/hubspot/{WON}").json()
    assert processed["attempts"] == 1 and processed["error"] is None and processed["reason"] is None
    assert [(d["rule"], d["status"]) for d in processed["dispatches"]] == [("hubspot-won", "succeeded")]
    assert list(found) == [d["id"] for d in processed["dispatches"]]
    assert deal_reads(stack) == reads + 1
    assert WON not in [item["event_id"] for item in api(stack, "GET", "/events?status=failed").json()["items"]]
    again = api(stack, "POST", f"/events/hubspot/{WON}/retry")
    assert again.status_code == 409 and "processed" in again.json()["error"]["message"]
    assert api(stack, "POST", "/events/hubspot/no-such-event/retry").status_code == 404


NO_EMAIL_RULES = RULES.replace("""  - name: zap-won
    when: {source: generic:zapier, type: deal.stage_changed, match: {deal.stage: closedwon}}
    dispatch:
      account: wa
      channel: whatsapp
      recipient: {phone: "{{ contact.phone }}"}""", """  - name: zap-won
    when: {source: generic:zapier, type: deal.stage_changed, match: {deal.stage: closedwon}}
    dispatch:
      account: mail
      channel: email
      recipient: {address: "{{ contact.email }}"}""").replace(
    'content: {text: "Hi {{ contact.first_name }}, welcome!"}',
    'content: {subject: "Welcome", text: "Hi {{ contact.first_name }}, welcome!"}')


def test_a_matched_rule_whose_recipient_cannot_render_is_an_invalid_dispatch_written_back(pipeline_stack):
    """A Zapier event for a contact without an email, and a rule that emails `contact.email`."""
    assert NO_EMAIL_RULES != RULES
    stack = pipeline_stack(NO_EMAIL_RULES)
    stack["start_worker"]()
    assert stack["bridge"].post("/webhooks/generic/zapier", zap(3), ZAP_HEADERS).status_code == 200
    found = settle(stack, expected=1, timeout=60)
    (dispatch_id, record), = found.items()
    assert dispatch_id == dispatch_id_for("zap-won", "generic:zapier", "zap-3", None)
    assert record["status"] == "invalid"
    assert record["reason"] == "dispatch.recipient.address: contact.email has no value"

    listed = api(stack, "GET", "/dispatches?status=invalid").json()
    assert [(d["id"], d["reason"]) for d in listed["items"]] == [(dispatch_id, record["reason"])]
    event = api(stack, "GET", "/events/generic:zapier/zap-3").json()
    assert event["status"] == "processed"
    assert event["dispatches"] == [{"id": dispatch_id, "rule": "zap-won", "status": "invalid",
                                    "reason": record["reason"]}]
    messages = [m["body"] for m in stack["receiver"]["messages"]]
    assert [m["type"] for m in messages] == ["dispatch.invalid"]
    assert messages[0]["data"]["dispatch_id"] == dispatch_id and messages[0]["data"]["reason"] == record["reason"]
    assert messages[0]["data"]["crm"]["event_id"] == "zap-3"

    # The same event processed again (as after a worker killed before it marked the event done):
    key = "rb:event:generic:zapier:zap-3"
    stack["redis"].hset(key, "status", "received")
    stack["redis"].zadd("rb:lease:event", {key: time.time()})
    wait_for(lambda: stack["redis"].hget(key, "status") == b"processed", 30, "the event processed again", stack)
    time.sleep(1)
    assert list(dispatches(stack["redis"])) == [dispatch_id]
    assert [m["body"]["type"] for m in stack["receiver"]["messages"]] == ["dispatch.invalid"]
    assert json.loads(stack["redis"].hget(key, "dispatches")) == [dispatch_id]
