"""How a dispatch is stored (issue 10, item 4: at most 3 KB of Redis per finished dispatch).

A finished dispatch is a hash that Redis keeps compact (listpack: no value over 64 bytes) and one
JSON document with its long values and its timeline; what the stages and the status API read
from it has the same shape as before. Real redis-server (tests/conftest.py).
"""

from __future__ import annotations

import json

from integration.dispatches import state
from integration.revor.client import dispatch_body

DISPATCH_ID = "dsp_5f0c6d1e2a3b4c5d6e7f8091a2b3c4d5e6f70812"
RECIPIENT = {"address": "dana.lee+1042@example.com", "name": "Dana"}
CRM = {"source": "generic:zapier", "account": None, "object_type": "deal", "object_id": "18273645501",
       "event_id": "zap-deal-1042-4c1f0e2d9a7b"}
RESULT = {"account_id": "connect_account_benchmark_email", "channel": "email", "action": "outreach",
          "resolved_action": "email.send", "message_id": "message_7821045a-8d6", "status": "accepted"}
WANTED = {"crm": ["accepted", "scheduled", "running", "succeeded", "failed", "rejected"]}


def body() -> str:
    return dispatch_body({
        "account_id": "connect_account_benchmark_email", "channel": "email", "action": "outreach",
        "recipient": RECIPIENT,
        "content": {"subject": "Welcome aboard, Dana",
                    "text": "Hi Dana, thank you for choosing us for Northwind Pilot 1042 - Annual plan."},
        "metadata": {"dispatch_id": DISPATCH_ID, "rule": "zap-won", "crm_source": "generic:zapier",
                     "crm_event_id": CRM["event_id"], "crm_object_type": "deal", "crm_object_id": "18273645501"},
        "min_channel_task_interval_seconds": 300,
    }).decode()


def create(redis_db, dispatch_id: str = DISPATCH_ID) -> None:
    state.transition(redis_db, dispatch_id, "pending", destinations=WANTED, create={
        "rule": "zap-won", "channel": "email", "account_id": "connect_account_benchmark_email",
        "event_key": f"rb:event:generic:zapier:{CRM['event_id']}", "recipient": RECIPIENT, "crm": CRM,
        "writeback": ["crm"], "once_per": "", "attempt": 0, "idempotency_key": dispatch_id, "body": body()})


def finish(redis_db, status: str = "succeeded") -> None:
    """The moves and direct writes the submit and poll stages make (dispatches/submit.py, track.py)."""
    redis_db.hset(state.key_for(DISPATCH_ID), "submit_attempts", 1)
    state.transition(redis_db, DISPATCH_ID, "accepted", destinations=WANTED, request_id="req_cadfcbe50e6b475ba8e4720d",
                     fields={"revor_job_id": "job_7821045a-8d69-4d5b-b8f8-b3eef497842c", "accepted_at": state.iso_now(),
                             "scheduled_at": "2026-12-02T00:12:59.241Z", "request_id": "req_cadfcbe50e6b475ba8e4720d"})
    redis_db.hincrby(state.key_for(DISPATCH_ID), "polls", 2)
    state.transition(redis_db, DISPATCH_ID, "running", destinations=WANTED, request_id="req_52f4e3b50b524a6fb2b4d398",
                     fields={"revor_status": "running", "started_at": "2026-12-02T00:12:59.241Z", "attempt_count": 1})
    fields = {"revor_status": status, "finished_at": state.iso_now()}
    if status == "succeeded":
        fields["result"] = RESULT
    else:
        fields["error"] = {"code": "recipient_unreachable", "message": "The mailbox does not exist (550 5.1.1)."}
    state.transition(redis_db, DISPATCH_ID, status, destinations=WANTED, fields=fields, retention=600,
                     reason=None if status == "succeeded" else "revor job failed: recipient_unreachable",
                     request_id="req_f4dceeff8a014ba1ba3f1763")


def test_a_finished_dispatch_is_a_compact_hash_and_one_document(redis_db):
    """On the former layout (every value in the hash, a list of JSON timeline entries) the hash
    alone took 3,200 bytes: Redis's hashtable encoding, forced by the 555-byte body."""
    create(redis_db)
    finish(redis_db)
    keys = sorted(k.decode() for k in redis_db.keys("rb:dispatch:*"))
    assert keys == [state.key_for(DISPATCH_ID), state.doc_key(DISPATCH_ID)]
    assert redis_db.object("encoding", state.key_for(DISPATCH_ID)) == b"listpack"
    assert all(len(v) <= state.LISTPACK_VALUE for v in redis_db.hgetall(state.key_for(DISPATCH_ID)).values())
    stored = sum(redis_db.memory_usage(k) for k in keys)
    assert stored <= 2300, stored
    assert 599_000 < min(redis_db.pttl(k) for k in keys) <= 600_000

    record = state.load(redis_db, DISPATCH_ID)
    assert record["body"] == body()  # resent byte for byte
    assert (record["id"], record["idempotency_key"]) == (DISPATCH_ID, DISPATCH_ID)
    assert (record["recipient"], record["crm"], record["result"]) == (RECIPIENT, CRM, RESULT)
    assert (record["status"], record["previous_status"], record["sequence"], record["attempt"]) == \
        ("succeeded", "running", 4, 0)
    assert (record["polls"], record["submit_attempts"], record["writeback"]) == ("2", "1", ["crm"])
    assert record["revor_job_id"] == "job_7821045a-8d69-4d5b-b8f8-b3eef497842c"
    timeline = state.timeline(redis_db, DISPATCH_ID)
    assert [(e["sequence"], e["status"], e["previous_status"], e["request_id"], e["reason"]) for e in timeline] == [
        (1, "pending", None, None, None), (2, "accepted", "pending", "req_cadfcbe50e6b475ba8e4720d", None),
        (3, "running", "accepted", "req_52f4e3b50b524a6fb2b4d398", None),
        (4, "succeeded", "running", "req_f4dceeff8a014ba1ba3f1763", None)]
    assert all(set(e) == {"at", "sequence", "status", "previous_status", "reason", "request_id"} for e in timeline)
    assert state.load_many(redis_db, [DISPATCH_ID, "dsp_gone"]) == [(record, timeline), (None, [])]


def test_an_operator_retry_keeps_the_body_and_moves_every_field_to_its_place(redis_db):
    """Out of `failed` (force): the long error leaves the document, the new Idempotency-Key is
    stored (it no longer equals the id), the expiry goes, and the timeline goes on."""
    create(redis_db)
    finish(redis_db, "failed")
    assert state.load(redis_db, DISPATCH_ID)["error"]["code"] == "recipient_unreachable"
    assert "error" in json.loads(redis_db.get(state.doc_key(DISPATCH_ID)))
    fields = {"attempt": 1, "idempotency_key": f"{DISPATCH_ID}-r1", "revor_job_id": "", "error": "", "result": "",
              "finished_at": "", "polls": 0}
    assert state.transition(redis_db, DISPATCH_ID, "pending", fields, reason="retried by an operator (attempt 1)",
                            destinations=WANTED, force=True) == 5
    record = state.load(redis_db, DISPATCH_ID)
    assert (record["status"], record["idempotency_key"], record["error"], record["attempt"]) == \
        ("pending", f"{DISPATCH_ID}-r1", "", 1)
    assert record["body"] == body() and record["recipient"] == RECIPIENT
    assert "error" not in json.loads(redis_db.get(state.doc_key(DISPATCH_ID)))
    assert redis_db.pttl(state.key_for(DISPATCH_ID)) == redis_db.pttl(state.doc_key(DISPATCH_ID)) == -1
    last = state.timeline(redis_db, DISPATCH_ID)[-1]
    assert (last["sequence"], last["status"], last["previous_status"], last["reason"]) == \
        (5, "pending", "failed", "retried by an operator (attempt 1)")


def test_a_record_of_the_former_layout_is_read_and_takes_the_new_one_at_its_next_change(redis_db):
    """Dispatches stored before the layout changed (still in Redis for their retention) keep working."""
    key = state.key_for(DISPATCH_ID)
    redis_db.hset(key, mapping={"id": DISPATCH_ID, "rule": "zap-won", "status": "accepted",
                                "previous_status": "pending", "sequence": 2, "attempt": 0,
                                "idempotency_key": DISPATCH_ID, "body": body(),
                                "recipient": json.dumps(RECIPIENT), "crm": json.dumps(CRM), "writeback": '["crm"]',
                                "revor_job_id": "job_1", "updated_at": "1796170259.242870"})
    old = [{"at": "2026-12-02T00:10:59.240Z", "sequence": 1, "status": "pending", "previous_status": None,
            "reason": None, "request_id": None},
           {"at": "2026-12-02T00:10:59.241Z", "sequence": 2, "status": "accepted", "previous_status": "pending",
            "reason": None, "request_id": "req_1"}]
    redis_db.rpush(state.old_timeline_key(DISPATCH_ID), *[json.dumps(e) for e in old])
    record = state.load(redis_db, DISPATCH_ID)
    assert (record["crm"], record["recipient"], record["body"]) == (CRM, RECIPIENT, body())
    assert state.timeline(redis_db, DISPATCH_ID) == old

    state.transition(redis_db, DISPATCH_ID, "running", destinations=WANTED, request_id="req_2")

    assert not redis_db.exists(state.old_timeline_key(DISPATCH_ID))
    moved = state.load(redis_db, DISPATCH_ID)
    assert moved == {**record, "status": "running", "previous_status": "accepted", "sequence": 3,
                     "updated_at": moved["updated_at"]}
    timeline = state.timeline(redis_db, DISPATCH_ID)
    assert timeline[:2] == old
    assert (timeline[2]["sequence"], timeline[2]["previous_status"], timeline[2]["request_id"]) == \
        (3, "accepted", "req_2")
