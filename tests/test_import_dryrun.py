"""The import's dry run (integration/imports/dryrun.py): every row planned, nothing written.

Real Redis for the read-only checks (suppression, once_per holders, earlier imports and
dispatches); a dry run must leave every key byte for byte as it was (DUMP before and after).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from integration.imports import dryrun
from integration.imports.dryrun import Bucket, Planner, Reasons, SeenKeys
from integration.inbound.store import event_key
from integration.rules.build import dispatch_id_for
from integration.rules.loader import load_rules

SOURCE = "csv:spring"
RULES = """\
version: 1
accounts:
  mail: connect_account_sandbox_email
defaults:
  interval_seconds: [180, 360]
rules:
  - name: welcome
    when:
      source: csv:spring
      type: contact.imported
      match: {contact.email: {exists: true}}
    dispatch:
      account: mail
      channel: email
      recipient: {address: "{{ contact.email }}", name: "{{ contact.first_name | default('') }}"}
      content: {subject: "Hello {{ contact.first_name | default('there') }}", text: "Nice to meet you."}
    once_per: "{{ company.name | default('') }}"
    suppress_if: "{{ properties.Unsubscribed | default('no') == 'yes' }}"
"""


def event(event_id: str, email: str | None, company: str = "", **properties: str) -> dict:
    """A row's event as rows.py makes it (plan_event reads it as it is)."""
    contact = {"id": event_id, "first_name": "Ada"}
    if email is not None:
        contact["email"] = email
    found = {"source": SOURCE, "event_id": event_id, "type": "contact.imported",
             "object": {"type": "contact", "id": event_id}, "contact": contact, "properties": properties}
    if company:
        found["company"] = {"name": company}
    return found


@pytest.fixture
def ruleset(tmp_path: Path):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return load_rules(path)


def dump_all(connection) -> dict[bytes, tuple[bytes, int]]:
    """Every key's DUMP and TTL: what "unchanged" means, byte for byte."""
    return {key: (connection.dump(key), connection.ttl(key)) for key in connection.scan_iter(count=1000)}


def test_counts_per_verdict_grouped_reasons_and_nothing_written(redis_db, ruleset) -> None:
    """Each verdict a real import can reach, from a known set of rows; Redis is unchanged after."""
    redis_db.sadd("rb:suppressed", "email:blocked@example.com")
    redis_db.set("rb:once:welcome:Initech", "dsp_someone_else", ex=3600)  # an earlier import used it
    redis_db.hset(event_key(SOURCE, "r-stored"), mapping={"status": "processed", "event": "{}"})
    sent = dispatch_id_for("welcome", SOURCE, "r-sent", "email:sent@example.com")
    redis_db.hset(f"rb:dispatch:{sent}", mapping={"status": "succeeded"})
    before = dump_all(redis_db)

    planner = Planner(ruleset, redis_db, source=SOURCE, chunk=4)  # several pipelines, and a partial one
    rows = [
        (2, event("r1", "ada@example.com")),
        (3, event("r2", "bob@example.com", company="Acme")),
        (4, event("r3", "not-an-email")),
        (5, event("r4", "carol@example.com", company="Acme")),  # once_per Acme: line 3 has it
        (7, event("r5", "blocked@example.com")),  # suppressed
        (8, event("r6", "dan@example.com", Unsubscribed="yes")),  # suppress_if
        (9, event("r7", "eve@example.com", company="Initech")),  # once_per held in Redis
        (10, event("r1", "ada@example.com")),  # the same event id as line 2
        (11, event("r-stored", "old@example.com")),  # stored by an earlier import
        (12, event("r8", None)),  # no email: no rule matches
        (13, event("r-sent", "sent@example.com")),  # its dispatch exists
        (14, event("r9", "also wrong")),
        (15, event("r10", "frank@example.com")),
    ]
    for line, found in rows:
        planner.row(line, found)
    planner.bad(6, "row has 5 cells, the header has 4")
    planner.bad(16, "row has 7 cells, the header has 4")
    planner.bad(17, "line 17 is not valid UTF-8")
    result = planner.finish({"name": "spring.csv"})

    assert dump_all(redis_db) == before
    assert (result.rows, result.events) == (16, 13)
    counts = result.rules["welcome"].counts
    assert counts == {"would_send": 3, "invalid": 2, "skipped_once_per": 2, "skipped_suppression": 1,
                      "skipped_suppress_if": 1, "already_dispatched": 1}
    assert result.would_send == 3
    invalid = result.rules["welcome"].reasons["invalid"].top()
    assert invalid == [{"reason": "recipient.address: Not a valid email address.", "count": 2, "lines": [4, 14]}]
    once = {g["reason"]: g["lines"] for g in result.rules["welcome"].reasons["skipped_once_per"].top()}
    assert once == {"once_per value already used by line 3 of this file": [5],
                    "once_per value already used by an earlier dispatch": [9]}
    assert result.duplicates.top() == [{"reason": "the same event id as line 2", "count": 1, "lines": [10]}]
    assert (result.already_stored.total, result.no_match.total) == (1, 1)
    assert result.no_match.top()[0]["lines"] == [12]
    # Bad rows grouped by their wording, numbers aside; the shape is shown when the wording varies.
    assert result.bad.top() == [
        {"reason": "row has N cells, the header has N", "count": 2, "lines": [6, 16]},
        {"reason": "line 17 is not valid UTF-8", "count": 1, "lines": [17]},
    ]
    text = result.render(max_days=7)
    assert "would send:" in text and "recipient.address: Not a valid email address.  (lines 4, 14)" in text
    assert "Nothing was sent or stored." in text
    json.dumps(result.as_dict())  # the --json form is plain data


def test_examples_are_the_exact_bodies_one_per_rule_first(redis_db, ruleset) -> None:
    planner = Planner(ruleset, redis_db, source=SOURCE)
    for n in range(10):
        planner.row(n + 2, event(f"e{n}", f"p{n}@example.com"))
    result = planner.finish()
    assert [e["line"] for e in result.examples] == [2, 3, 4]
    body = json.loads(result.examples[0]["body"])
    assert body["recipient"] == {"address": "p0@example.com", "name": "Ada"}
    assert body["metadata"]["dispatch_id"] == result.examples[0]["dispatch_id"] == \
        dispatch_id_for("welcome", SOURCE, "e0", "email:p0@example.com")
    assert 180 <= body["min_channel_task_interval_seconds"] <= 360


def test_ten_thousand_emails_at_180_to_360_seconds_take_about_31_days() -> None:
    bucket = Bucket("connect_account_x", "email")
    for _ in range(10_000):
        bucket.add((180, 360))
    assert bucket.describe() == "10,000 emails from account connect_account_x at 180–360 s apart: about 31 days"
    result = dryrun.DryRun(source=SOURCE, schedule=[bucket])
    assert result.refusal(7) is not None and "about 31 days" in result.refusal(7)
    assert result.refusal(40) is None
    one = Bucket("acc", "whatsapp")
    one.add((30, 30))  # below Revor's minimum: counts as 60
    assert one.describe() == "1 WhatsApp message from account acc at 60 s apart: about 60 seconds"


def test_no_redis_and_no_rules_say_so(ruleset) -> None:
    planner = Planner(None, None, source=SOURCE)
    planner.row(2, event("a", "a@example.com"))
    text = planner.finish().render()
    assert "No rules are loaded" in text and "Redis was not read" in text


def test_seen_keys_grow_and_remember_first_lines() -> None:
    seen = SeenKeys(slots=8)
    for n in range(20_000):
        assert seen.add(f"key-{n}", n + 2) is None
    assert seen.count == 20_000
    assert [seen.add(f"key-{n}", 99) for n in (0, 7_777, 19_999)] == [2, 7_779, 20_001]
    assert seen.bytes_used <= 20_000 * 4 * 12  # 12 bytes a slot, at least a quarter of them used


def test_reasons_are_bounded() -> None:
    reasons = Reasons()
    for n in range(5_000):
        reasons.add(f"template error {'x' * (n % 7)} #{n}", n)
        reasons.add(f"unknown {chr(0x4e00 + n)}", n)  # 5,000 wordings that share no shape
    assert len(reasons.groups) <= dryrun.MAX_GROUPS
    shown = reasons.top(10)
    assert len(shown) == 11 and shown[-1]["reason"] == "other reasons"
    assert sum(group["count"] for group in shown) == reasons.total == 10_000
    assert all(len(group["lines"]) <= dryrun.EXAMPLE_LINES for group in shown)
