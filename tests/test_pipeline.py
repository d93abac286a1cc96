"""End to end: webhooks in, real `revor-bridge worker` processes, the Revor sandbox, write-backs out.

Everything is real: a redis-server, the web app over HTTP, worker processes (with their clock and
RQ scheduler), the sandbox, a HubSpot API stand-in and a write-back receiver that verifies
signatures with the `standardwebhooks` package.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from integration.dispatches import state
from integration.sandbox.core import Faults
from integration.sandbox.server import SandboxServer
from tests.conftest import SALESFORCE_PATH, cli_env, configure, sandbox_requests, sandbox_tasks
from tests.servers import ThreadServer, fixture_bytes, hubspot_standin, signatures, writeback_receiver

SIGS = signatures()
TOKEN = "pat-na1-pipeline-token"
WRITEBACK_SECRET = "whsec_cGlwZWxpbmUtd3JpdGViYWNrLXNlY3JldC0wMDAx"
TERMINAL = {"succeeded", "failed", "cancelled", "rejected", "invalid", "skipped"}

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
      recipient: {address: "{{ contact.email }}", name: "{{ contact.firstname }}"}
      content: {subject: "Welcome {{ deal.dealname }}", text: "Hi {{ contact.firstname }}"}
    writeback: [crm]
  - name: salesforce-won
    when: {source: salesforce, type: deal.stage_changed, match: {deal.StageName: Closed Won}}
    dispatch:
      account: mail
      channel: email
      recipient: {address: "owner+{{ deal.Id | lower }}@example.com"}
      content: {subject: "Won: {{ deal.Name }}", text: "Congratulations on {{ deal.Name }}"}
    writeback: [crm]
  - name: pipedrive-stage
    when: {source: pipedrive, type: deal.stage_changed, match: {deal.stage_id: {changed_to: 4}}}
    dispatch:
      account: wa
      channel: whatsapp
      recipient: {phone: "+1415555{{ deal.id }}"}
      content: {text: "Proposal for {{ deal.title }} is ready"}
    writeback: [crm]
  - name: zap-won
    when: {source: generic:zapier, type: deal.stage_changed, match: {deal.stage: closedwon}}
    dispatch:
      account: wa
      channel: whatsapp
      recipient: {phone: "{{ contact.phone }}"}
      content: {text: "Hi {{ contact.first_name }}, welcome!"}
    writeback: [crm]
destinations:
  crm:
    url: "${RECEIVER_URL}"
    secret: "WRITEBACK_SECRET"
""".replace("WRITEBACK_SECRET", WRITEBACK_SECRET)


@pytest.fixture
def stack(stack_with_rules):
    return stack_with_rules(RULES)


@pytest.fixture
def stack_with_rules(tmp_path, make_bridge, redis_url, redis_db):
    """Start the stack with a given rules file; one per test."""
    from contextlib import ExitStack

    with ExitStack() as stacks:
        yield lambda rules_text, **env: stacks.enter_context(_stack(tmp_path, make_bridge, redis_url, redis_db,
                                                                    rules_text, env))


@contextmanager
def _stack(tmp_path, make_bridge, redis_url, redis_db, rules_text, env_overrides):
    """Sandbox, HubSpot stand-in, receiver, web app and a way to start/kill worker processes."""
    hub_app, hub_state = hubspot_standin(TOKEN)
    receiver_app, receiver_state = writeback_receiver(WRITEBACK_SECRET)
    with SandboxServer(faults=Faults(time_scale=200.0, rate_limit=0), seed=7) as sandbox, \
            ThreadServer(hub_app) as hub, ThreadServer(receiver_app) as receiver:
        rules = tmp_path / "rules.yaml"
        rules.write_text(rules_text)
        os.environ["RECEIVER_URL"] = receiver.url + "/status"  # for create_app's rules load
        try:
            bridge = make_bridge(rules_file=rules)
        finally:
            del os.environ["RECEIVER_URL"]
        env = cli_env(REDIS_URL=f"{redis_url}/1", REVOR_BASE_URL=sandbox.api_url, RULES_FILE=str(rules),
                      RECEIVER_URL=receiver.url + "/status", HUBSPOT_ACCESS_TOKEN=TOKEN,
                      HUBSPOT_API_BASE_URL=hub.url, BRIDGE_LEASE_SECONDS="3", REVOR_MAX_RPS="200",
                      WRITEBACK_RETRY_SCALE="0.002", LOG_LEVEL="WARNING")
        env.update(env_overrides)
        workers: list[subprocess.Popen] = []

        def start_worker() -> subprocess.Popen:
            proc = subprocess.Popen([sys.executable, "-m", "integration", "worker"], env=env, cwd=tmp_path,
                                    stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"worker{len(workers)}.log", "w"),
                                    start_new_session=True)
            workers.append(proc)
            return proc

        try:
            yield {"sandbox": sandbox, "bridge": bridge, "receiver": receiver_state, "hub": hub_state,
                   "redis": redis_db, "start_worker": start_worker, "tmp": tmp_path, "env": env,
                   "receiver_url": receiver.url}
        finally:
            _stop(workers)


def _stop(workers: list[subprocess.Popen]) -> None:
    for proc in workers:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def kill_worker_and_horse(proc: subprocess.Popen) -> None:
    """SIGKILL a worker with its clock and scheduler (its process group) and the RQ work-horse
    running the current job, which RQ moves into a process group of its own (os.setpgrp)."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    os.killpg(proc.pid, signal.SIGKILL)
    for child in children:
        try:
            os.kill(int(child), signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def dispatches(redis_db) -> dict[str, dict]:
    """Every dispatch record, its values as text (JSON for objects), as `state.load` reads it
    from its two keys (integration/dispatches/state.py)."""
    found = {}
    for key in redis_db.keys("rb:dispatch:*"):
        name = key.decode()
        record = state.load(redis_db, name.split(":", 2)[2]) if name.count(":") == 2 else None
        if record is not None:
            found[record["id"]] = {k: json.dumps(v) if isinstance(v, dict | list) else str(v)
                                   for k, v in record.items()}
    return found


def settle(stack, expected: int, timeout: float = 90) -> dict[str, dict]:
    """Wait until `expected` dispatches exist, all are terminal and every outbox is delivered."""
    redis_db = stack["redis"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = dispatches(redis_db)
        done = len(found) >= expected and all(d["status"] in TERMINAL for d in found.values())
        if done and not redis_db.keys("rb:outbox:*"):
            return found
        time.sleep(0.2)
    logs = "\n".join((stack["tmp"] / f).read_text()[-3000:] for f in os.listdir(stack["tmp"]) if f.endswith(".log"))
    raise AssertionError(f"not settled: {[(k, v['status']) for k, v in dispatches(redis_db).items()]}\n{logs}")


def assert_writebacks_complete(receiver_state: dict, found: dict[str, dict]) -> None:
    """Every state change of every dispatch arrived signed, once each, in sequence order."""
    by_dispatch: dict[str, list[dict]] = {}
    for message in receiver_state["messages"]:
        by_dispatch.setdefault(message["body"]["data"]["dispatch_id"], []).append(message)
    assert receiver_state["refused"] == 0
    for dispatch_id, record in found.items():
        received = by_dispatch.get(dispatch_id, [])
        unique = {m["id"]: m for m in received}
        sequences = [m["body"]["data"]["sequence"] for m in received]
        assert sequences == sorted(sequences), f"{dispatch_id}: out of order {sequences}"
        ordered = sorted(unique.values(), key=lambda m: m["body"]["data"]["sequence"])
        statuses = [m["body"]["data"]["status"] for m in ordered]
        assert statuses[-1] == record["status"], (dispatch_id, statuses)
        # sequence 1 is `pending`, which destinations do not subscribe to by default
        assert [m["body"]["data"]["sequence"] for m in ordered] == list(range(2, int(record["sequence"]) + 1))


def post_all_fixtures(bridge) -> None:
    for name, path in (("hubspot-deal-propertychange-batch.json", "/webhooks/hubspot"),
                       ("salesforce-outbound-message-opportunity.xml", SALESFORCE_PATH),
                       ("pipedrive-deal-updated-v2.json", "/webhooks/pipedrive"),
                       ("zapier-generic.json", "/webhooks/generic/zapier")):
        answer = bridge.post(path, fixture_bytes(name), SIGS["requests"][name]["headers"])
        assert answer.status_code == 200, answer.text


def test_every_source_end_to_end_with_writebacks(stack):
    stack["start_worker"]()
    post_all_fixtures(stack["bridge"])
    found = settle(stack, expected=4)
    by_rule = {d["rule"]: d for d in found.values()}
    assert set(by_rule) == {"hubspot-won", "salesforce-won", "pipedrive-stage", "zap-won"}
    assert all(d["status"] == "succeeded" for d in found.values()), {k: v["status"] for k, v in by_rule.items()}
    assert json.loads(by_rule["hubspot-won"]["recipient"]) == {"address": "dana.lee@example.com", "name": "Dana"}
    assert json.loads(by_rule["pipedrive-stage"]["recipient"]) == {"phone": "+14155554821"}
    tasks = sandbox_tasks(stack["sandbox"])
    assert sorted(t["body"]["metadata"]["dispatch_id"] for t in tasks) == sorted(found)
    assert_writebacks_complete(stack["receiver"], found)
    message = stack["receiver"]["messages"][-1]["body"]
    assert message["type"].startswith("dispatch.") and set(message["data"]["crm"]) == {
        "source", "account", "object_type", "object_id", "event_id"}


def test_a_duplicate_webhook_makes_one_revor_task(stack):
    stack["start_worker"]()
    post_all_fixtures(stack["bridge"])
    post_all_fixtures(stack["bridge"])
    found = settle(stack, expected=4)
    post_all_fixtures(stack["bridge"])  # and a replay after everything finished
    time.sleep(2)
    assert len(dispatches(stack["redis"])) == len(found) == 4
    assert len(sandbox_tasks(stack["sandbox"])) == 4


def zap(number: int) -> bytes:
    return json.dumps({"event": "deal.stage_changed", "event_id": f"zap-{number}", "deal__id": str(9000 + number),
                       "deal__stage": "closedwon", "contact__first_name": "Lead",
                       "contact__phone": f"+1415555{number:04d}"}).encode()


ZAP_HEADERS = {"Content-Type": "application/json", "X-Hook-Token": "zap-fixture-token-7f3a"}


def test_faults_and_429s_still_give_exactly_one_task_per_dispatch(stack):
    configure(stack["sandbox"], error_rate=0.15, drop_rate=0.15, rate_limit=4, rate_window_ms=1000)
    stack["start_worker"]()
    for number in range(20):
        assert stack["bridge"].post("/webhooks/generic/zapier", zap(number), ZAP_HEADERS).status_code == 200
    found = settle(stack, expected=20, timeout=150)
    assert all(d["status"] == "succeeded" for d in found.values())
    tasks = sandbox_tasks(stack["sandbox"])
    ids = [t["body"]["metadata"]["dispatch_id"] for t in tasks]
    assert len(ids) == len(set(ids)) == 20 and set(ids) == set(found)
    every = sandbox_requests(stack["sandbox"])
    outcomes = [(r["status"], r["dropped"]) for r in every if r["method"] == "POST"]
    assert (503, False) in outcomes and (202, True) in outcomes, sorted(set(outcomes))  # the faults happened
    assert any(r["status"] == 429 for r in every)
    assert_writebacks_complete(stack["receiver"], found)
    log = (stack["tmp"] / "worker0.log").read_text()
    assert "retried on schedule" in log and "Traceback" not in log  # expected retries are one line each


@pytest.mark.parametrize("slow", ["revor", "receiver"])
def test_kill_9_mid_run_then_restart_loses_and_duplicates_nothing(stack, slow):
    """SIGKILL the whole worker (horse, clock, scheduler) while Revor calls or deliveries are in flight."""
    if slow == "revor":
        configure(stack["sandbox"], latency_ms=400)
    else:
        stack["receiver"]["delay"] = 0.3
    first = stack["start_worker"]()
    for number in range(12):
        assert stack["bridge"].post("/webhooks/generic/zapier", zap(number), ZAP_HEADERS).status_code == 200
    deadline = time.monotonic() + 30
    if slow == "revor":
        while time.monotonic() < deadline and len(sandbox_requests(stack["sandbox"])) < 3:
            time.sleep(0.05)
    else:
        while time.monotonic() < deadline and stack["receiver"]["attempts"] < 2:
            time.sleep(0.05)
    time.sleep(0.2)
    kill_worker_and_horse(first)
    killed_at = time.monotonic()
    before = dispatches(stack["redis"])
    unfinished = [k for k, v in before.items() if v["status"] not in TERMINAL] + stack["redis"].keys("rb:outbox:*")
    assert len(before) < 12 or unfinished, "the kill came too late to test anything"
    stack["start_worker"]()
    found = settle(stack, expected=12, timeout=120)
    recovery = time.monotonic() - killed_at
    assert all(d["status"] == "succeeded" for d in found.values()), {k: v["status"] for k, v in found.items()}
    ids = [t["body"]["metadata"]["dispatch_id"] for t in sandbox_tasks(stack["sandbox"])]
    assert len(ids) == len(set(ids)) == 12
    assert_writebacks_complete(stack["receiver"], found)
    print(f"\n[{slow}] all 12 dispatches and their write-backs done {recovery:.1f} s after SIGKILL (lease 3 s)")


def test_writeback_receiver_down_then_up(stack):
    stack["receiver"]["fail"] = [503, 503, 500]
    stack["start_worker"]()
    assert stack["bridge"].post("/webhooks/generic/zapier", zap(1), ZAP_HEADERS).status_code == 200
    found = settle(stack, expected=1, timeout=60)
    assert_writebacks_complete(stack["receiver"], found)
    assert stack["receiver"]["attempts"] >= len(stack["receiver"]["messages"]) + 3


def test_status_api(stack):
    stack["start_worker"]()
    assert stack["bridge"].post("/webhooks/generic/zapier", zap(5), ZAP_HEADERS).status_code == 200
    found = settle(stack, expected=1)
    dispatch_id = next(iter(found))
    headers = {"Authorization": "Bearer admin-token-0123456789"}
    url = stack["bridge"].url + "/api/v1"
    listed = requests.get(f"{url}/dispatches?status=succeeded&rule=zap-won", headers=headers, timeout=5).json()
    assert [d["id"] for d in listed["items"]] == [dispatch_id]
    one = requests.get(f"{url}/dispatches/{dispatch_id}", headers=headers, timeout=5).json()
    assert [t["status"] for t in one["timeline"]][0] == "pending" and one["status"] == "succeeded"
    assert "body" not in one
    queues = requests.get(f"{url}/queues", headers=headers, timeout=5).json()
    assert "default" in queues["queues"] and "failed" in queues["queues"]["default"]
    refused = requests.post(f"{url}/dispatches/{dispatch_id}/retry", headers=headers, timeout=5)
    assert refused.status_code == 409  # a succeeded dispatch is not sent again
    assert requests.get(f"{url}/dispatches?status=nonsense", headers=headers, timeout=5).status_code == 400


def test_operator_retry_of_a_failed_dispatch(stack):
    configure(stack["sandbox"], job_failure_rate=1.0)
    stack["start_worker"]()
    assert stack["bridge"].post("/webhooks/generic/zapier", zap(6), ZAP_HEADERS).status_code == 200
    found = settle(stack, expected=1)
    dispatch_id, record = next(iter(found.items()))
    assert record["status"] == "failed" and "recipient_unreachable" in record["reason"]
    configure(stack["sandbox"], job_failure_rate=0.0)
    headers = {"Authorization": "Bearer admin-token-0123456789"}
    answer = requests.post(f"{stack['bridge'].url}/api/v1/dispatches/{dispatch_id}/retry", headers=headers, timeout=5)
    assert answer.status_code == 202 and answer.json()["idempotency_key"] == f"{dispatch_id}-r1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and dispatches(stack["redis"])[dispatch_id]["status"] != "succeeded":
        time.sleep(0.2)
    assert dispatches(stack["redis"])[dispatch_id]["status"] == "succeeded"
    keys = [r["idempotency_key"] for r in sandbox_requests(stack["sandbox"]) if r["method"] == "POST"]
    assert set(keys) == {dispatch_id, f"{dispatch_id}-r1"} and len(sandbox_tasks(stack["sandbox"])) == 2


def test_a_retry_is_refused_when_the_recipient_was_suppressed_after_the_failure(stack):
    """Found by a new-user trial: Retry sent to a phone number put on the suppression list after
    the dispatch failed."""
    from integration.rules.guards import suppress

    configure(stack["sandbox"], job_failure_rate=1.0)
    stack["start_worker"]()
    assert stack["bridge"].post("/webhooks/generic/zapier", zap(7), ZAP_HEADERS).status_code == 200
    dispatch_id, record = next(iter(settle(stack, expected=1).items()))
    assert record["status"] == "failed"
    suppress(stack["redis"], ["+1 415 555 0007"])
    configure(stack["sandbox"], job_failure_rate=0.0)
    posts_before = [r for r in sandbox_requests(stack["sandbox"]) if r["method"] == "POST"]
    answer = requests.post(f"{stack['bridge'].url}/api/v1/dispatches/{dispatch_id}/retry", timeout=5,
                           headers={"Authorization": "Bearer admin-token-0123456789"})
    assert answer.status_code == 409
    assert "suppression list" in answer.json()["error"]["message"]
    time.sleep(1.5)  # long enough for a worker to have sent it, had it been put back
    assert dispatches(stack["redis"])[dispatch_id]["status"] == "failed"
    assert [r for r in sandbox_requests(stack["sandbox"]) if r["method"] == "POST"] == posts_before


def test_a_submit_waiting_out_a_back_off_skips_a_recipient_suppressed_meanwhile(stack):
    from integration.rules.guards import suppress

    configure(stack["sandbox"], error_rate=1.0)  # every POST answered 503: the submit backs off
    stack["start_worker"]()
    assert stack["bridge"].post("/webhooks/generic/zapier", zap(8), ZAP_HEADERS).status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = dispatches(stack["redis"])
        if found and next(iter(found.values())).get("last_error"):
            break
        time.sleep(0.1)
    dispatch_id, record = next(iter(found.items()))
    assert record["status"] == "pending" and record.get("last_error"), record
    suppress(stack["redis"], ["+14155550008"])
    configure(stack["sandbox"], error_rate=0.0)
    record = settle(stack, expected=1)[dispatch_id]
    assert record["status"] == "skipped" and record["reason"] == "recipient is on the suppression list"
    assert sandbox_tasks(stack["sandbox"]) == []


def test_two_workers_share_one_revor_rate_limit(stack_with_rules):
    stack = stack_with_rules(RULES, REVOR_MAX_RPS="4")
    stack["start_worker"]()
    stack["start_worker"]()
    for number in range(16):
        assert stack["bridge"].post("/webhooks/generic/zapier", zap(number), ZAP_HEADERS).status_code == 200
    found = settle(stack, expected=16, timeout=120)
    assert all(d["status"] == "succeeded" for d in found.values())
    times = sorted(r["time"] for r in sandbox_requests(stack["sandbox"]))
    # A bucket of 4 per second (burst 4): in any 2-second window, at most 4 + 2 * 4 calls.
    busiest = max(sum(1 for t in times if start <= t < start + 2.0) for start in times)
    assert busiest <= 13, busiest  # one more for the time between taking a token and arriving
    assert len(times) >= 32  # 16 POSTs and at least 16 GETs went through the shared limiter


def test_sigterm_stops_a_worker_gracefully(stack):
    worker = stack["start_worker"]()
    post_all_fixtures(stack["bridge"])
    settle(stack, expected=4)
    os.killpg(worker.pid, signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the clock and RQ's scheduler leave with it
        try:
            os.killpg(worker.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    with pytest.raises(ProcessLookupError):
        os.killpg(worker.pid, 0)


def test_a_final_revor_error_rejects_the_dispatch_with_its_code(stack_with_rules):
    rules = RULES.replace("  wa: connect_account_sandbox_whatsapp\n",
                          "  wa: connect_account_sandbox_whatsapp\n  old: connect_account_sandbox_email_reconnect\n")
    rules = rules.replace("""      account: wa
      channel: whatsapp
      recipient: {phone: "{{ contact.phone }}"}
      content: {text: "Hi {{ contact.first_name }}, welcome!"}""", """      account: old
      channel: email
      recipient: {address: "lead@example.com"}
      content: {subject: "Hello", text: "Hi {{ contact.first_name }}"}""")
    stack = stack_with_rules(rules)
    stack["start_worker"]()
    assert stack["bridge"].post("/webhooks/generic/zapier", zap(1), ZAP_HEADERS).status_code == 200
    found = settle(stack, expected=1)
    record = next(iter(found.values()))
    assert record["status"] == "rejected"
    assert record["reason"].startswith("connect_account_reconnect_required HTTP 409 request_id req_")
    assert len([r for r in sandbox_requests(stack["sandbox"]) if r["method"] == "POST"]) == 1  # final: not retried
    assert_writebacks_complete(stack["receiver"], found)
    assert stack["receiver"]["messages"][-1]["body"]["data"]["reason"] == record["reason"]


def test_a_job_that_never_ends_fails_with_tracking_timeout(stack_with_rules):
    stack = stack_with_rules(RULES, TRACKING_HORIZON_SECONDS="3")
    configure(stack["sandbox"], time_scale=1.0, run_seconds=100000.0)  # runs (almost) forever
    stack["start_worker"]()
    assert stack["bridge"].post("/webhooks/generic/zapier", zap(2), ZAP_HEADERS).status_code == 200
    found = settle(stack, expected=1, timeout=60)
    record = next(iter(found.values()))
    assert (record["status"], record["reason"]) == ("failed", "tracking_timeout")
    assert_writebacks_complete(stack["receiver"], found)
