"""Write-back into the CRMs themselves, end to end, and the order a record's status is written in.

The pipeline tests run everything for real: the web app over HTTP, `revor-bridge worker`
processes, the Revor sandbox, and local stand-ins of the HubSpot, Salesforce and Pipedrive APIs
that enforce auth, paths, bodies, errors, rate limits and token expiry (tests/standin_*.py).
The ordering tests drive the CRM delivery run step by step against the HubSpot stand-in, so the
order in which deliveries are retried is chosen, not left to chance.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
from flask import Response, request
from rq import Queue

from integration.context import JobContext
from integration.dispatches import state
from integration.rules.loader import load_rules
from integration.scheduler import units
from integration.scheduler.runner import Run
from integration.settings import Settings
from integration.writeback import destinations
from integration.writeback.crm.deliver import deliver_crm, last_key
from tests.conftest import SALESFORCE_PATH
from tests.servers import ThreadServer, fixture_bytes, hubspot_standin, signatures
from tests.standin_pipedrive import pipedrive_standin
from tests.standin_salesforce import salesforce_standin
from tests.test_crm_hubspot import revor_fields
from tests.test_pipeline import TOKEN, settle, stack_with_rules  # noqa: F401, F811 (a fixture)

SIGS = signatures()
SF_ID, SF_SECRET = "3MVG9-revor-bridge-test-client", "sf-client-secret-for-tests-0001"
PD_TOKEN = "pd-api-token-for-tests-0000000000000001"
HS_DEAL = "18273645501"  # the HubSpot fixture's deal (the stand-in knows it)
SF_OPPORTUNITY = "0065e00000Gd3RmAAJ"  # the Salesforce Outbound Message fixture's opportunity
PD_DEAL = 4821  # the Pipedrive fixture's deal
# State changes of the ordering tests happen at T0 + n: recent, so nothing has expired (retention counts from them).
T0 = time.time() - 3600

RULES = """\
version: 1
accounts:
  mail: connect_account_sandbox_email
  wa: connect_account_sandbox_whatsapp
defaults:
  interval_seconds: 60
rules:
  - name: hubspot-won
    when:
      source: hubspot
      type: deal.stage_changed
      match: {deal.dealstage: closedwon, contact.email: {exists: true}}
    dispatch:
      account: mail
      channel: email
      recipient: {address: "{{ contact.email }}"}
      content: {subject: "Welcome {{ deal.dealname }}", text: "Hi {{ contact.firstname }}"}
    writeback: [hubspot-crm]
  - name: salesforce-won
    when: {source: salesforce, type: deal.stage_changed, match: {deal.StageName: Closed Won}}
    dispatch:
      account: mail
      channel: email
      recipient: {address: "owner+{{ deal.Id | lower }}@example.com"}
      content: {subject: "Won: {{ deal.Name }}", text: "Congratulations on {{ deal.Name }}"}
    writeback: [salesforce-crm]
  - name: pipedrive-stage
    when: {source: pipedrive, type: deal.stage_changed, match: {deal.stage_id: {changed_to: 4}}}
    dispatch:
      account: wa
      channel: whatsapp
      recipient: {phone: "+1415555{{ deal.id }}"}
      content: {text: "Proposal for {{ deal.title }} is ready"}
    writeback: [pipedrive-crm]
destinations:
  hubspot-crm:
    kind: hubspot
    properties:
      revor_status: "{{ data.status }}"
      revor_last_job_id: "{{ data.revor_job_id }}"
    activity: {on: [succeeded, failed]}
  salesforce-crm:
    kind: salesforce
    properties:
      Revor_Status__c: "{{ data.status }}"
      Revor_Last_Job_Id__c: "{{ data.revor_job_id }}"
    activity: {on: [succeeded]}
  pipedrive-crm:
    kind: pipedrive
    properties:
      PD_KEY: "{{ data.status }}"
    activity: {on: [succeeded]}
"""


@pytest.fixture
def crms(stack_with_rules):  # noqa: F811
    """The pipeline stack with Salesforce and Pipedrive stand-ins beside its HubSpot one."""
    sf_app, sf = salesforce_standin(SF_ID, SF_SECRET)
    sf["records"]["Opportunity"][SF_OPPORTUNITY] = {"Name": "Acme renewal", "StageName": "Closed Won"}
    pd_app, pd = pipedrive_standin(PD_TOKEN)
    pd["deals"][PD_DEAL] = {"id": PD_DEAL, "title": "Acme", "status": "open", "is_deleted": False,
                            "custom_fields": {}}
    key = pd["add_field"]("deal", "Revor status")
    with ThreadServer(sf_app) as sf_server, ThreadServer(pd_app) as pd_server:
        def start(**env):
            stack = stack_with_rules(RULES.replace("PD_KEY", key), SALESFORCE_DOMAIN=sf_server.url,
                                     SALESFORCE_CLIENT_ID=SF_ID, SALESFORCE_CLIENT_SECRET=SF_SECRET,
                                     PIPEDRIVE_API_TOKEN=PD_TOKEN, PIPEDRIVE_API_BASE_URL=pd_server.url, **env)
            revor_fields(stack["hub"], "deals", "contacts")
            return stack | {"sf": sf, "pd": pd, "pd_key": key, "sf_app": sf_app, "pd_app": pd_app}

        yield start


def post(stack, name: str, path: str) -> None:
    answer = stack["bridge"].post(path, fixture_bytes(name), SIGS["requests"][name]["headers"])
    assert answer.status_code == 200, answer.text


def dead_letters(redis_db, destination: str) -> list[dict]:
    return destinations.dead_letters(redis_db, destination)


def test_a_hubspot_deal_event_ends_with_the_deal_properties_set_and_a_note(crms):
    stack = crms()
    stack["start_worker"]()
    post(stack, "hubspot-deal-propertychange-batch.json", "/webhooks/hubspot")
    [dispatch] = settle(stack, 1).values()
    assert dispatch["status"] == "succeeded"
    deal = stack["hub"]["records"]["deals"][HS_DEAL]
    assert deal["revor_status"] == "succeeded"
    assert deal["revor_last_job_id"] == dispatch["revor_job_id"]
    [note] = stack["hub"]["notes"]
    assert "succeeded" in note["properties"]["hs_note_body"]
    assert note["associations"][0]["to"]["id"] == HS_DEAL
    assert note["associations"][0]["types"][0]["associationTypeId"] == 214
    writes = [c for c in stack["hub"]["calls"] if c["method"] in ("PATCH", "POST") and "/deals" in c["path"]]
    assert writes and all(c["auth"] == f"Bearer {TOKEN}" for c in writes)
    assert not dead_letters(stack["redis"], "hubspot-crm")


def test_a_salesforce_opportunity_is_written_through_a_token_expiry_in_the_middle(crms):
    stack = crms()
    sf = stack["sf"]
    expired: list[str] = []

    @stack["sf_app"].after_request
    def expire_after_the_first_write(response: Response) -> Response:
        if request.method == "PATCH" and response.status_code == 204 and not expired:
            expired.append(request.path)
            sf["expire_tokens"]()  # the token's session ends between two writes
        return response

    stack["start_worker"]()
    post(stack, "salesforce-outbound-message-opportunity.xml", SALESFORCE_PATH)
    [dispatch] = settle(stack, 1).values()
    opportunity = sf["records"]["Opportunity"][SF_OPPORTUNITY]
    assert expired, "no write reached the Salesforce stand-in"
    assert opportunity["Revor_Status__c"] == dispatch["status"] == "succeeded"
    assert opportunity["Revor_Last_Job_Id__c"] == dispatch["revor_job_id"]
    assert sf["tokens_issued"] == 2  # the expired token was replaced, once
    after = sf["calls"][[c["path"] for c in sf["calls"]].index(expired[0]) + 1:]
    assert not after[0]["auth_ok"] and "/oauth2/token" in after[1]["path"]  # a 401, then a new token
    [task] = sf["tasks"]
    assert task["WhatId"] == SF_OPPORTUNITY and task["Status"] == "Completed"
    assert not dead_letters(stack["redis"], "salesforce-crm")


def test_pipedrive_with_a_429_in_the_middle_still_ends_with_the_deal_field_set(crms):
    stack = crms()
    pd = stack["pd"]
    refused: list[float] = []

    @stack["pd_app"].before_request
    def second_write_meets_a_429() -> Response | None:
        writes = [c for c in pd["calls"] if c["method"] == "PATCH"]
        if request.method == "PATCH" and len(writes) == 2 and not refused:
            refused.append(time.time())
            return Response(json.dumps({"success": False, "error": "Request over limit", "errorCode": 429}), 429,
                            headers={"Retry-After": "1", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "1"},
                            mimetype="application/json")
        return None

    stack["start_worker"]()
    post(stack, "pipedrive-deal-updated-v2.json", "/webhooks/pipedrive")
    [dispatch] = settle(stack, 1).values()
    assert refused, "no second write reached the Pipedrive stand-in"
    assert pd["deals"][PD_DEAL]["custom_fields"][stack["pd_key"]] == dispatch["status"] == "succeeded"
    metrics = {k.decode(): float(v) for k, v in stack["redis"].hgetall("rb:metrics").items()}
    assert sum(v for k, v in metrics.items() if "pipedrive-crm" in k and "throttled" in k) == 1, metrics
    later = [c for c in pd["calls"] if c["method"] == "PATCH"][2:]
    assert later, "nothing was written after the 429"
    [note] = pd["notes"]
    assert note["deal_id"] == PD_DEAL and "succeeded" in note["content"]
    assert not dead_letters(stack["redis"], "pipedrive-crm")


def test_a_deleted_record_goes_to_the_dead_letters_with_salesforces_reason(crms):
    stack = crms()
    stack["sf"]["deleted"].add(SF_OPPORTUNITY)
    stack["start_worker"]()
    post(stack, "salesforce-outbound-message-opportunity.xml", SALESFORCE_PATH)
    [dispatch] = settle(stack, 1).values()
    assert dispatch["status"] == "succeeded"  # the outreach itself is not held up by the CRM
    dead = dead_letters(stack["redis"], "salesforce-crm")
    assert dead, "no dead letter"
    assert all("ENTITY_IS_DELETED" in d["dead_reason"] for d in dead), [d["dead_reason"] for d in dead]
    assert "Revor_Status__c" not in stack["sf"]["records"]["Opportunity"][SF_OPPORTUNITY]


def test_hubspot_setup_is_idempotent_with_the_pipelines_settings(stack_with_rules, tmp_path):  # noqa: F811
    """`revor-bridge hubspot setup` creates what the destination writes; the pipeline needs nothing else."""
    stack = stack_with_rules(RULES.replace("PD_KEY", "a" * 40))
    env = stack["env"]
    ran = subprocess.run([sys.executable, "-m", "integration", "hubspot", "setup"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert {"revor_status", "revor_last_job_id"} <= set(stack["hub"]["properties"]["deals"])
    again = subprocess.run([sys.executable, "-m", "integration", "hubspot", "setup"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "already" in again.stdout, again.stdout


# --- Order and truth: the newest state change wins on a record, whatever order deliveries run in ---

ORDER_RULES = """\
version: 1
rules:
  - name: r
    when: {source: hubspot}
    dispatch:
      account: connect_account_x
      channel: email
      recipient: {address: "{{ contact.email }}"}
      content: {subject: "s", text: "t"}
    writeback: [hs]
destinations:
  hs:
    kind: hubspot
    properties:
      revor_status: "{{ data.status }}"
      revor_last_job_id: "{{ data.dispatch_id }}"
"""


@pytest.fixture
def order(tmp_path, redis_db):
    """The CRM delivery run in this process against the HubSpot stand-in, one unit at a time."""
    app, hub = hubspot_standin(TOKEN)
    revor_fields(hub, "deals")
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(ORDER_RULES)
    with ThreadServer(app) as server:
        settings = Settings.from_env({"HUBSPOT_ACCESS_TOKEN": TOKEN, "HUBSPOT_API_BASE_URL": server.url,
                                      "WRITEBACK_RETRY_SCALE": "0.002", "BRIDGE_LEASE_SECONDS": "2",
                                      "HUBSPOT_MAX_RPS": "100"})
        ctx = JobContext(settings, redis_db, Queue("default", connection=redis_db, serializer="json"),
                         load_rules(rules_file))
        yield ctx, hub, app


def change(ctx, dispatch_id: str, status: str, at: float) -> str:
    """A state change of a dispatch on the fixture's deal, at `at`; its delivery unit."""
    crm = {"source": "hubspot", "account": "24681357", "object_type": "deal", "object_id": HS_DEAL,
           "event_id": f"evt-{dispatch_id}"}
    if state.load(ctx.redis, dispatch_id) is None:
        state.transition(ctx.redis, dispatch_id, "pending", create={
            "rule": "r", "channel": "email", "crm": crm, "writeback": ["hs"], "recipient": {"address": "a@x.com"},
            "attempt": 0}, destinations=ctx.destinations(), now=at - 1)
    state.transition(ctx.redis, dispatch_id, status, destinations=ctx.destinations(), now=at)
    return units.deliver_unit(dispatch_id, "hs")


def run_unit(ctx, unit: str) -> str:
    """Claim `unit` (waiting for its retry time if it has one) and run the CRM delivery on it."""
    deadline = time.monotonic() + 10
    while True:
        claimed = units.claim(ctx.redis, 1, 5, units=[unit])
        if claimed:
            break
        assert time.monotonic() < deadline, f"{unit} never came due"
        time.sleep(0.02)
    [(unit_id, attempt)] = claimed
    return deliver_crm(ctx, Run(units.Unit.parse(unit_id), attempt), ctx.rules.crm_destinations["hs"])


def patched(hub) -> list[dict]:
    return [c["json"]["properties"] for c in hub["calls"]
            if c["method"] == "PATCH" and c["path"].endswith(f"/deals/{HS_DEAL}")]


def test_an_older_state_change_retried_after_a_newer_one_never_shows_on_the_record(order):
    ctx, hub, _ = order
    older = change(ctx, "dsp_a", "succeeded", at=T0 + 0)  # dispatch A finished first...
    newer = change(ctx, "dsp_b", "accepted", at=T0 + 1000)  # ...then B, on the same deal, was accepted
    hub["fail_next"].append((503, {}))
    got = run_unit(ctx, older)
    assert got.startswith("retry_in_"), (got, hub["calls"][-2:], destinations.dead_letters(ctx.redis, "hs"))
    assert run_unit(ctx, newer) == "empty"  # B's is written
    assert hub["records"]["deals"][HS_DEAL]["revor_status"] == "accepted"
    assert run_unit(ctx, older) == "empty"  # A's retry: delivered, its properties left out
    assert hub["records"]["deals"][HS_DEAL]["revor_status"] == "accepted"
    assert hub["records"]["deals"][HS_DEAL]["revor_last_job_id"] == "dsp_b"
    assert [p["revor_status"] for p in patched(hub)] == ["succeeded", "accepted"]  # the 503'd one, then B's
    metrics = {k.decode(): v for k, v in ctx.redis.hgetall("rb:metrics").items()}
    assert any("superseded" in k for k in metrics), metrics
    assert not ctx.redis.keys("rb:outbox:*")


def test_a_newer_state_change_retried_after_an_older_one_is_written_over_it(order):
    ctx, hub, _ = order
    older = change(ctx, "dsp_a", "succeeded", at=T0 + 0)
    newer = change(ctx, "dsp_b", "accepted", at=T0 + 1000)
    hub["fail_next"].append((503, {}))
    assert run_unit(ctx, newer).startswith("retry_in_")
    assert run_unit(ctx, older) == "empty"
    assert hub["records"]["deals"][HS_DEAL]["revor_status"] == "succeeded"
    assert run_unit(ctx, newer) == "empty"
    assert hub["records"]["deals"][HS_DEAL]["revor_status"] == "accepted"
    shown = ctx.redis.get(last_key("hs", "deal", HS_DEAL)).decode()
    assert shown.endswith("msg_dsp_b_2_hs")


def test_one_dispatchs_statuses_are_written_in_sequence_even_when_one_fails(order):
    ctx, hub, _ = order
    unit = change(ctx, "dsp_c", "accepted", at=T0 + 0)
    change(ctx, "dsp_c", "scheduled", at=T0 + 1)
    change(ctx, "dsp_c", "succeeded", at=T0 + 2)
    hub["fail_next"].append((500, {}))
    assert run_unit(ctx, unit).startswith("retry_in_")
    assert run_unit(ctx, unit) == "empty"
    assert [p["revor_status"] for p in patched(hub)] == ["accepted", "accepted", "scheduled", "succeeded"]


def test_due_outboxes_of_one_destination_are_written_in_one_batch(order):
    ctx, hub, _ = order
    for n in range(5):
        hub["records"]["deals"][str(9000 + n)] = {"dealname": f"d{n}"}
    made = []
    for n in range(5):
        dispatch_id = f"dsp_batch{n}"
        crm = {"source": "hubspot", "account": "24681357", "object_type": "deal", "object_id": str(9000 + n),
               "event_id": f"e{n}"}
        state.transition(ctx.redis, dispatch_id, "pending", create={
            "rule": "r", "channel": "email", "crm": crm, "writeback": ["hs"], "recipient": {"address": "a@x.com"},
            "attempt": 0}, destinations=ctx.destinations(), now=T0 - 1)
        state.transition(ctx.redis, dispatch_id, "accepted", destinations=ctx.destinations(), now=T0 + n)
        made.append(units.deliver_unit(dispatch_id, "hs"))
    assert run_unit(ctx, made[0]) == "empty"
    batches = [c for c in hub["calls"] if c["path"] == "/crm/v3/objects/deals/batch/update"]
    assert len(batches) == 1 and len(batches[0]["json"]["inputs"]) == 5
    assert all(hub["records"]["deals"][str(9000 + n)]["revor_status"] == "accepted" for n in range(5))
    assert not ctx.redis.keys("rb:outbox:*")
    assert not ctx.redis.zrange(units.CLAIMED, 0, -1)  # every peer's claim was finished


def test_a_property_that_does_not_exist_is_a_dead_letter_naming_it_and_replay_works(order):
    ctx, hub, _ = order
    hub["properties"]["deals"].pop("revor_last_job_id")
    unit = change(ctx, "dsp_d", "accepted", at=T0 + 0)
    assert run_unit(ctx, unit) == "empty"
    [dead] = destinations.dead_letters(ctx.redis, "hs")
    assert "revor_last_job_id" in dead["dead_reason"]
    revor_fields(hub, "deals")
    destinations.replay(ctx.redis, dead["id"])
    assert run_unit(ctx, unit) == "empty"
    assert hub["records"]["deals"][HS_DEAL]["revor_last_job_id"] == "dsp_d"


def test_a_note_is_logged_once_when_it_fails_after_the_properties_were_written(order, tmp_path):
    ctx, hub, app = order
    rules_file = tmp_path / "with-note.yaml"
    rules_file.write_text(ORDER_RULES + "    activity: {on: [succeeded]}\n")
    ctx.rules = load_rules(rules_file)
    refused: list[str] = []

    @app.before_request
    def first_note_meets_a_502() -> Response | None:
        if request.path == "/crm/v3/objects/notes" and not refused:
            refused.append(request.path)
            return Response("{}", 502, mimetype="application/json")
        return None

    unit = change(ctx, "dsp_e", "succeeded", at=T0 + 0)
    assert run_unit(ctx, unit).startswith("retry_in_")  # properties written, the note refused
    assert run_unit(ctx, unit) == "empty"  # the retry logs the note and does not write the properties again
    assert refused and len(hub["notes"]) == 1
    assert [p["revor_status"] for p in patched(hub)] == ["succeeded"]


def test_a_slow_write_keeps_its_record_so_a_newer_status_waits_and_wins(order):
    """The CRM answers A's write after 1.5 leases: A's locks are kept alive meanwhile, so B (a newer
    state change of the same deal) cannot write until A is done, and then writes over it."""
    ctx, hub, app = order
    slowed: list[int] = []

    @app.before_request
    def first_write_is_slow() -> None:
        if request.method == "PATCH" and not slowed:
            slowed.append(1)
            time.sleep(ctx.settings.lease_seconds * 1.5)

    older = change(ctx, "dsp_a", "accepted", at=T0)
    newer = change(ctx, "dsp_b", "succeeded", at=T0 + 1000)
    outcome: dict[str, str] = {}
    writer_a = threading.Thread(target=lambda: outcome.setdefault("a", run_unit(ctx, older)))
    writer_a.start()
    time.sleep(ctx.settings.lease_seconds * 1.1)  # past A's lease: without the heartbeat, its locks are gone
    assert run_unit(ctx, newer) == "record_busy"  # B waits for the record
    writer_a.join()
    assert outcome["a"] == "empty"
    assert run_unit(ctx, newer) == "empty"
    assert hub["records"]["deals"][HS_DEAL]["revor_status"] == "succeeded"
    assert [p["revor_status"] for p in patched(hub)] == ["accepted", "succeeded"]


def test_the_newest_stamp_only_moves_forward(order):
    ctx, _, _ = order
    from integration.storage import run_script
    from integration.writeback.crm.deliver import SHOWN

    key = last_key("hs", "deal", "1")
    assert run_script(ctx.redis, SHOWN, (key,), (f"{T0 + 5:.6f}|msg_b", 60)) == 1
    assert run_script(ctx.redis, SHOWN, (key,), (f"{T0 + 1:.6f}|msg_a", 60)) == 0
    assert run_script(ctx.redis, SHOWN, (key,), (f"{T0 + 5:.6f}|msg_a", 60)) == 0  # same time: the id decides
    assert ctx.redis.get(key).decode() == f"{T0 + 5:.6f}|msg_b"


def test_a_writer_that_raises_on_an_odd_answer_is_a_retry_not_a_crash(order):
    ctx, hub, _ = order
    unit = change(ctx, "dsp_f", "accepted", at=T0)
    writer = ctx.crm_writer("hubspot")
    original = writer.update
    writer.update = lambda writes: (_ for _ in ()).throw(TypeError("odd answer"))  # one thread's writer
    try:
        assert run_unit(ctx, unit).startswith("retry_in_")
    finally:
        writer.update = original
    attempts = {k.decode(): v.decode() for k, v in ctx.redis.hgetall("rb:msg:msg_dsp_f_2_hs:attempts").items()}
    assert attempts["last"] == "unexpected answer from hubspot (TypeError)"
    assert run_unit(ctx, unit) == "empty"
    assert hub["records"]["deals"][HS_DEAL]["revor_status"] == "accepted"


def test_an_activity_that_cannot_be_rendered_still_lets_the_properties_be_written(order, tmp_path):
    """A WhatsApp dispatch has no recipient address: a note about the address cannot be written,
    but the deal still gets its status, and the dead letter says both."""
    ctx, hub, _ = order
    rules_file = tmp_path / "note.yaml"
    rules_file.write_text(ORDER_RULES + '    activity: {on: [succeeded], body: "To {{ data.recipient.address }}"}\n')
    ctx.rules = load_rules(rules_file)
    crm = {"source": "hubspot", "account": "24681357", "object_type": "deal", "object_id": HS_DEAL, "event_id": "e"}
    state.transition(ctx.redis, "dsp_w", "pending", create={
        "rule": "r", "channel": "whatsapp", "crm": crm, "writeback": ["hs"], "recipient": {"phone": "+14155550100"},
        "attempt": 0}, destinations=ctx.destinations(), now=T0)
    state.transition(ctx.redis, "dsp_w", "succeeded", destinations=ctx.destinations(), now=T0 + 1)
    assert run_unit(ctx, units.deliver_unit("dsp_w", "hs")) == "empty"
    assert hub["records"]["deals"][HS_DEAL]["revor_status"] == "succeeded"
    assert not hub["notes"]
    [dead] = destinations.dead_letters(ctx.redis, "hs")
    assert dead["dead_reason"] == (f"deal {HS_DEAL}: activity: data.recipient.address has no value "
                                   "(the properties were written)")
