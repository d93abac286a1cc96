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

from integration.inbound.records import MAX_ATTEMPTS
from integration.rules.build import dispatch_id_for
from tests.conftest import ADMIN_TOKEN, revor_bridge
from tests.servers import fixture_bytes
from tests.test_pipeline import RULES, SIGS, ZAP_HEADERS, _stack, dispatches, kill_worker_and_horse, settle, zap

BATCH = "hubspot-deal-propertychange-batch.json"
WON = "24681357-2718281-3471102201-18273645501-1767268795123"
AMOUNT = "24681357-2718282-3471101990-18273645501-1767268412007"
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

    # The batch's third event (an amount change) reads the same deal: a second poison event.
    wait_for(lambda: {api(stack, "GET", f"/events/hubspot/{event_id}").json()["status"]
                      for event_id in (WON, AMOUNT)} == {"failed"}, 60, "the poison events ending failed", stack)
    failed = api(stack, "GET", f"/events/hubspot/{WON}").json()
    assert failed["attempts"] == MAX_ATTEMPTS
    assert failed["error"]["type"] == "AttributeError" and "'list' object has no attribute" in \
        failed["error"]["message"]
    assert failed["reason"].startswith(f"processing failed {MAX_ATTEMPTS} times: AttributeError")
    assert failed["dispatches"] == []
    reads = deal_reads(stack)
    assert reads == 2 * MAX_ATTEMPTS  # one HubSpot read per attempt, not one per lease period for ever
    time.sleep(5)  # well over two lease periods: nothing runs it again
    assert deal_reads(stack) == reads
    for where in ("rb:due", "rb:claimed"):  # not waiting for another attempt, not held by anyone
        assert stack["redis"].zscore(where, f"event|rb:event:hubspot:{WON}") is None

    listed = api(stack, "GET", "/events?status=failed").json()
    assert WON in [item["event_id"] for item in listed["items"]]
    one = next(item for item in listed["items"] if item["event_id"] == WON)
    assert one["error"]["type"] == "AttributeError" and one["attempts"] == MAX_ATTEMPTS
    assert api(stack, "GET", "/events?status=nonsense").status_code == 400
    cli = revor_bridge("events", "list", "--status", "failed", "--json", env=stack["env"], cwd=stack["tmp"])
    assert cli.returncode == 0, cli.stderr
    assert WON in [item["event_id"] for item in json.loads(cli.stdout)]

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
    cli = revor_bridge("events", "retry", "hubspot", WON, env=stack["env"], cwd=stack["tmp"])
    assert cli.returncode == 1 and "only a failed event can be retried" in cli.stderr


def test_a_run_killed_with_sigkill_still_counts_as_an_attempt(pipeline_stack):
    """The count lives in the event's record and grows before the run does anything, so a worker
    that dies mid-run (SIGKILL, out of memory) cannot reset it."""
    stack = pipeline_stack(RULES, BRIDGE_LEASE_SECONDS="2")
    stack["hub"]["delay"] = 5.0  # hydration hangs: the worker is killed in the middle of it
    first = stack["start_worker"]()
    assert stack["bridge"].post("/webhooks/hubspot", fixture_bytes(BATCH), SIGS["requests"][BATCH]["headers"]).ok
    wait_for(lambda: deal_reads(stack) >= 1, 30, "a HubSpot read", stack)
    key = f"rb:event:hubspot:{WON}"
    assert stack["redis"].hget(key, "attempts") == b"1"
    kill_worker_and_horse(first)
    stack["hub"]["delay"] = 0.0
    stack["start_worker"]()
    wait_for(lambda: stack["redis"].hget(key, "status") == b"processed", 30, "the event processed", stack)
    settle(stack, expected=1)
    won = api(stack, "GET", f"/events/hubspot/{WON}").json()
    assert won["attempts"] == 2 and won["error"] is None
    assert [d["status"] for d in won["dispatches"]] == ["succeeded"]


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
    stack["redis"].zadd("rb:due", {f"event|{key}": time.time()})
    wait_for(lambda: stack["redis"].hget(key, "status") == b"processed", 30, "the event processed again", stack)
    time.sleep(1)
    assert list(dispatches(stack["redis"])) == [dispatch_id]
    assert [m["body"]["type"] for m in stack["receiver"]["messages"]] == ["dispatch.invalid"]
    assert json.loads(stack["redis"].hget(key, "dispatches")) == [dispatch_id]


def test_an_unrenderable_rule_gets_a_stable_id_and_a_rendered_recipient_keeps_its_own(tmp_path):
    """Unit: the id of an `invalid` plan does not depend on luck or on a recipient that failed."""
    from integration.rules.build import plan_event
    from integration.rules.loader import load_rules

    rules = tmp_path / "rules.yaml"
    rules.write_text("""\
version: 1
rules:
  - name: welcome
    when: {source: hubspot}
    dispatch:
      account: connect_account_x
      channel: email
      recipient: {address: "{{ contact.email }}"}
      content: {subject: "Welcome", text: "Hi {{ contact.firstname }}"}
""")
    ruleset = load_rules(rules, environ={})
    event = {"source": "hubspot", "event_id": "e9", "type": "deal.updated", "object": {"type": "deal", "id": "1"},
             "properties": {}, "contact": {"id": "3", "firstname": "Dana"}}
    first, again = plan_event(ruleset, event)[0], plan_event(ruleset, event)[0]
    assert first.status == again.status == "invalid"
    assert first.dispatch_id == again.dispatch_id == dispatch_id_for("welcome", "hubspot", "e9", None)
    no_name = {**event, "contact": {"id": "3", "email": "Dana@Example.com"}}
    plan = plan_event(ruleset, no_name)[0]
    assert (plan.status, plan.reason) == ("invalid", "dispatch.content.text: contact.firstname has no value")
    assert plan.dispatch_id == dispatch_id_for("welcome", "hubspot", "e9", "email:dana@example.com")
    assert plan.recipient == {"address": "Dana@Example.com"}


def test_a_stored_error_names_its_type_and_never_a_configured_secret():
    """Unit: the message of an unexpected error is not under the bridge's control."""
    from integration.inbound.records import describe
    from integration.settings import Secret, Settings

    settings = Settings(hubspot_access_token=Secret("pat-na1-0123456789abcdef"),
                        generic_webhook_secrets={"zapier": Secret("zap-token-0123")})
    error = describe(RuntimeError("GET with pat-na1-0123456789abcdef and zap-token-0123 failed " + "x" * 500),
                     settings)
    assert error["type"] == "RuntimeError"
    assert "pat-na1" not in error["message"] and "zap-token" not in error["message"]
    assert error["message"].startswith("GET with [redacted] and [redacted] failed") and len(error["message"]) <= 303
