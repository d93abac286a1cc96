"""Issue 12: a CSV import run end to end: rows stored as events through the webhooks' store, rules
`when.source: csv:<name>`, the run's counters in Redis, resume from the checkpoint, exactly once.

Everything is real: redis-server, `revor-bridge worker` processes, `revor-bridge import`
subprocesses killed with SIGKILL and SIGINT, the Revor sandbox over HTTP, a write-back receiver.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from marshmallow import ValidationError

from integration.context import JobContext
from integration.dispatches import state
from integration.dispatches.create import process_event
from integration.imports import runs
from integration.inbound.normalize import InboundEvent
from integration.inbound.store import event_key, store
from integration.metrics import event_field
from integration.rules.guards import suppress
from integration.rules.loader import load_rules
from integration.scheduler import units
from integration.scheduler.runner import Run
from schemas.events import NormalizedEventSchema, split_event_ref
from tests.conftest import bridge_settings

LEADS_RULES = """\
version: 1
accounts: {mail: connect_account_sandbox_email}
rules:
  - name: welcome-lead
    when:
      source: csv:leads
      type: contact.imported
      match: {contact.email: {exists: true}}
    dispatch:
      account: mail
      channel: email
      recipient: {address: "{{ contact.email }}", name: "{{ contact.first_name }}"}
      content: {subject: "Hello {{ contact.first_name }}", text: "Nice to meet you at {{ company.name }}"}
"""


def lead_event(number: int, run: str | None = None, line: int = 0, **contact: str) -> InboundEvent:
    """A row's event as rows.py makes it (built here so this test does not depend on the reader)."""
    contact = contact if contact else {"email": f"lead{number}@example.com", "first_name": f"Lead{number}"}
    event = {"source": "csv:leads", "event_id": f"lead-{number}", "type": "contact.imported",
             "object": {"type": "contact", "id": str(number)}, "occurred_at": None,
             "properties": {"Email": contact.get("email", "")}, "contact": {"id": str(number), **contact},
             "company": {"name": "Northwind"}}
    NormalizedEventSchema().load(event)
    return InboundEvent(event, extra={"import": {"run": run, "line": line}} if run else {})


def test_csv_sources_and_the_imported_type_are_valid_everywhere_sources_are_checked(tmp_path):
    loaded = NormalizedEventSchema().load(lead_event(1).event)
    assert (loaded["source"], loaded["type"]) == ("csv:leads", "contact.imported")
    for wrong in ("csv:", "csv:Leads", "csv:" + "x" * 65, "cvs:leads"):
        with pytest.raises(ValidationError):
            NormalizedEventSchema().load({**lead_event(1).event, "source": wrong})
    rules = tmp_path / "rules.yaml"
    rules.write_text(LEADS_RULES.replace("type: contact.imported", "type: [contact.imported, '*.imported']"))
    assert load_rules(rules).rules[0].when["source"] == ["csv:leads"]
    rules.write_text(LEADS_RULES.replace("csv:leads", "csv:Bad Name"))
    with pytest.raises(Exception, match="csv:<name>"):
        load_rules(rules)
    assert split_event_ref("csv:leads:row-ab:cd") == ("csv:leads", "row-ab:cd")
    assert split_event_ref("generic:zapier:z-1") == ("generic:zapier", "z-1")
    assert split_event_ref("hubspot:123:456") == ("hubspot", "123:456")


def _process(context: JobContext, key: str) -> None:
    """Claim the event's unit and process it, as the engine does."""
    [(claimed, attempt)] = units.claim(context.redis, 1, 30, units=[f"event|{key}"])
    process_event(context, Run(units.Unit.parse(claimed), attempt))


def test_a_csv_event_flows_through_its_rule_and_counts_in_its_run(redis_url, redis_db, sandbox, tmp_path):
    """The worker side: the event outcome pipeline adds one to the run's counter by outcome and
    lists the dispatch ids by line; an event of no import counts nowhere."""
    from rq import Queue

    rules = tmp_path / "rules.yaml"
    rules.write_text(LEADS_RULES)
    context = JobContext.build(bridge_settings(redis_url, revor_base_url=sandbox.api_url, rules_file=rules))
    suppress(redis_db, ["lead3@example.com"])
    run = "imp_test0000000000000000"
    events = [lead_event(1, run, 2), lead_event(2, run, 3, first_name="NoMail"), lead_event(3, run, 4),
              lead_event(4, run, 5, email="not an address", first_name="Bad"), lead_event(5)]
    queue = Queue("default", connection=redis_db, serializer="json")
    assert store(redis_db, queue, "csv:leads", events, {"source": "csv:leads"}).outcomes == ["new"] * 5
    for item in events:
        _process(context, event_key("csv:leads", item.event["event_id"]))
    found = runs.load(redis_db, run)
    assert found is not None
    assert {k: v for k, v in found.counts.items() if v} == {"dispatched": 1, "no_match": 1, "skipped": 1,
                                                            "invalid": 1}
    listed = runs.dispatch_page(redis_db, run)
    assert [line for _, line in listed] == [2, 4, 5]
    statuses = [state.load(redis_db, dispatch_id)["status"] for dispatch_id, _ in listed]
    assert statuses[1:] == ["skipped", "invalid"] and statuses[0] in ("pending", "accepted", "scheduled")
    assert redis_db.hget("rb:metrics", event_field("csv:leads", "processed")) == b"5"
    assert not redis_db.exists(runs.run_key("None"))  # the plain event counted in no run


def test_outcome_of_an_event_with_several_dispatches_counts_it_once_by_the_best():
    assert runs.outcome_of("processed", ["invalid", "pending"]) == "dispatched"
    assert runs.outcome_of("processed", ["skipped", "invalid"]) == "invalid"
    assert runs.outcome_of("processed", ["skipped"]) == "skipped"
    assert runs.outcome_of("processed", []) == "no_match"
    assert runs.outcome_of("skipped", []) == "skipped"
    assert runs.outcome_of("failed", []) == "failed"
    assert runs.import_of({"_extra": {"import": {"run": "imp_1", "line": 7}}}) == ("imp_1", 7)
    assert runs.import_of({"_extra": {}}) is None and runs.import_of(None) is None


def test_run_ids_name_the_file_and_source_and_a_dead_holder_is_taken_over(redis_db, tmp_path):
    sample = tmp_path / "a.csv"
    sample.write_text("Email\na@example.com\n")
    sha = runs.file_sha256(sample)
    assert runs.run_id("csv:leads", sha) == runs.run_id("csv:leads", sha) != runs.run_id("csv:other", sha)
    first = runs.RunLock(redis_db, "imp_x")
    first.acquire()
    with pytest.raises(runs.Busy):
        runs.RunLock(redis_db, "imp_x").acquire()
    first.release()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    redis_db.set(runs.lock_key("imp_x"), f"{socket.gethostname()}:{dead.stdout.strip()}:abcd", ex=30)
    runs.RunLock(redis_db, "imp_x").acquire()  # the holder's process is gone: taken over at once
