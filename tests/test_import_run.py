"""Issue 12: a CSV import run end to end: rows stored as events through the webhooks' store, rules
`when.source: csv:<name>`, the run's counters in Redis, resume from the checkpoint, exactly once.

Everything is real: redis-server, `revor-bridge worker` processes, `revor-bridge import`
subprocesses killed with SIGKILL and SIGINT, the Revor sandbox over HTTP, a write-back receiver.
"""

from __future__ import annotations

import csv
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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
from tests.conftest import bridge_settings, sandbox_tasks
from tests.test_dashboard_auth import signed_in
from tests.test_pipeline import WRITEBACK_SECRET, _stack, assert_writebacks_complete, dispatches, settle
from tests.test_resilience import RedisServer

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


# ---- the real thing: `revor-bridge import` subprocesses, worker processes, the sandbox -------------

STACK_RULES = """\
version: 1
accounts: {mail: connect_account_sandbox_email}
defaults: {interval_seconds: 60}
rules:
  - name: vip-welcome
    when:
      source: csv:leads
      type: contact.imported
      match: {contact.segment: vip}
    dispatch:
      account: mail
      channel: email
      recipient: {address: "{{ contact.email }}", name: "{{ contact.first_name }}"}
      content: {subject: "Hello {{ contact.first_name }}", text: "Welcome, {{ contact.first_name }}"}
WRITEBACK
"""
WRITEBACK = """    writeback: [crm]
destinations:
  crm:
    url: "${RECEIVER_URL}"
    secret: "SECRET"
""".replace("SECRET", WRITEBACK_SECRET)
HEADER = "contact.id,contact.email,contact.first_name,contact.segment\n"


def leads_file(path: Path, numbers: range, vip_every: int = 1, extra: str = "") -> Path:
    """A plain export: `contact.id` is each row's stable id; every `vip_every`-th row is a VIP."""
    rows = "".join(f"{n},lead{n}@example.com,Lead{n},{'vip' if n % vip_every == 0 else 'other'}\n" for n in numbers)
    path.write_text(HEADER + rows + extra, encoding="utf-8")
    return path


@pytest.fixture
def leads_stack(tmp_path, make_bridge, redis_url, redis_db):
    """The pipeline tests' stack (tests/test_pipeline.py) with the leads rules, write-backs included."""
    with _stack(tmp_path, make_bridge, redis_url, redis_db, STACK_RULES.replace("WRITEBACK\n", WRITEBACK),
                {"REVOR_MAX_RPS": "1000"}) as stack:
        yield stack


@pytest.fixture
def quiet_stack(tmp_path, make_bridge, redis_url, redis_db):
    """The same without write-backs (the big imports count events, dispatches and Revor tasks)."""
    with _stack(tmp_path, make_bridge, redis_url, redis_db, STACK_RULES.replace("WRITEBACK\n", ""),
                {"REVOR_MAX_RPS": "1000"}) as stack:
        yield stack


def run_import(stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "integration", "import", *args], env=stack["env"], cwd=stack["tmp"],
                          capture_output=True, text=True, timeout=timeout)


def start_import(stack, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "integration", "import", *args], env=stack["env"],
                            cwd=stack["tmp"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_of(stack, path: Path, source: str = "csv:leads") -> str:
    return runs.run_id(source, runs.file_sha256(path))


def result_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def revor_dispatch_ids(stack) -> list[str]:
    return [t["body"]["metadata"]["dispatch_id"] for t in sandbox_tasks(stack["sandbox"])]


def test_a_small_import_end_to_end(leads_stack):
    stack = leads_stack
    stack["start_worker"]()
    extra = ("9,lead9@example.com,Lead9,vip,surplus\n"  # one cell too many: a bad row, the rest goes on
             ",nobody@example.com,Nobody,vip\n"  # no id: a bad row
             "10,not an address,Bad,vip\n")  # the template renders, the address is invalid
    source = leads_file(stack["tmp"] / "leads.csv", range(1, 9), vip_every=1, extra=extra)
    source.write_text(source.read_text().replace("Lead7,vip", "Lead7,other").replace("Lead8,vip", "Lead8,other"))
    done = run_import(stack, str(source), "--source", "csv:leads")
    assert done.returncode == 0, done.stderr + done.stdout
    run = run_of(stack, source)
    counts = runs.load(stack["redis"], run).counts
    assert counts == {"read": 11, "stored": 9, "duplicate": 0, "bad": 2, "dispatched": 6, "invalid": 1,
                      "skipped": 0, "no_match": 2, "failed": 0, "cancelled": 0, "repeated": 0}
    assert "6 dispatched, 1 invalid, 0 skipped, 2 no rule matched" in done.stdout
    assert "line 10: 5 cells where the header has 4 columns" in done.stdout
    assert "line 11: id column contact.id is empty" in done.stdout
    found = settle(stack, expected=7)
    assert sorted(revor_dispatch_ids(stack)) == sorted(k for k, v in found.items() if v["status"] != "invalid")
    assert_writebacks_complete(stack["receiver"], {k: v for k, v in found.items() if v["status"] != "invalid"})
    [invalid] = [k for k, v in found.items() if v["status"] == "invalid"]
    assert [m["body"]["type"] for m in stack["receiver"]["messages"]
            if m["body"]["data"]["dispatch_id"] == invalid] == ["dispatch.invalid"]  # written back like any other
    rows = result_rows(stack["tmp"] / "leads.result.csv")
    assert [int(r["line"]) for r in rows] == list(range(2, 13))  # every row, in file order
    by_line = {int(r["line"]): r for r in rows}
    assert by_line[8]["status"] == "no_match" and by_line[10]["status"] == "bad"
    assert by_line[12]["status"] == "invalid" and by_line[12]["dispatch_id"] in found
    assert by_line[2]["event_id"] == "1" and by_line[2]["dispatch_id"] in found
    status = subprocess.run([sys.executable, "-m", "integration", "import", "status", run, "--csv",
                             str(stack["tmp"] / "status.csv")], env=stack["env"], cwd=stack["tmp"],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert "dispatches now: 6 succeeded, 1 invalid" in status.stdout, status.stdout
    assert len(result_rows(stack["tmp"] / "status.csv")) == 7
    # The dashboard offers the import's source (named by the rules) and filters by it.
    browser = signed_in(stack["bridge"].url)
    page = browser.get(f"{stack['bridge'].url}/dashboard/dispatches", params={"source": "csv:leads"}, timeout=10)
    assert page.status_code == 200 and all(dispatch_id in page.text for dispatch_id in found), page.text[:500]
    events = browser.get(f"{stack['bridge'].url}/dashboard/events", params={"source": "csv:leads"}, timeout=10)
    assert events.status_code == 200 and "csv:leads" in events.text


def test_the_same_file_twice_and_an_overlapping_file_send_nothing_twice(quiet_stack):
    stack = quiet_stack
    stack["start_worker"]()
    first = leads_file(stack["tmp"] / "week1.csv", range(1, 21), vip_every=2)
    assert run_import(stack, str(first), "--source", "csv:leads").returncode == 0
    again = run_import(stack, str(first), "--source", "csv:leads")
    assert again.returncode == 0 and "was imported already" in again.stderr, again.stderr
    overlap = leads_file(stack["tmp"] / "week2.csv", range(11, 31), vip_every=2)
    done = run_import(stack, str(overlap), "--source", "csv:leads")
    assert done.returncode == 0, done.stderr
    counts = runs.load(stack["redis"], run_of(stack, overlap)).counts
    assert (counts["read"], counts["stored"], counts["duplicate"], counts["dispatched"]) == (20, 10, 10, 5)
    assert "0 repeated in this file (imported once), 10 already imported by an earlier run (not sent again)" \
        in done.stdout
    found = settle(stack, expected=15)
    ids = revor_dispatch_ids(stack)
    assert len(ids) == len(set(ids)) == 15 and set(ids) == set(found)  # one task per VIP of rows 1-30
    rows = {int(r["line"]): r for r in result_rows(stack["tmp"] / "week2.result.csv")}
    assert rows[2]["status"] == "duplicate"
    assert rows[2]["reason"].startswith("already imported by an earlier run (run imp_")
    assert rows[3]["status"] == "duplicate" and rows[3]["dispatch_id"] in found  # row 12: its earlier dispatch
    assert rows[12]["status"] != "duplicate" and rows[13]["dispatch_id"] in found


KILL_ROWS = 5000


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def assert_every_row_once(stack, path: Path, rows: int, would_send: int, attempts: set[bytes] = frozenset({b"1"}),
                          ) -> None:
    """Every row processed exactly once, one Revor task per would-send row, counters adding up.
    `attempts`: what an event's attempt count may be (a run that Redis left midway counts too)."""
    redis_db = stack["redis"]
    found = runs.load(redis_db, run_of(stack, path))
    counts = found.counts
    assert found.status == "done" and counts["read"] == rows, found
    assert counts["stored"] + counts["duplicate"] + counts["bad"] == rows and counts["duplicate"] == 0, counts
    assert counts["dispatched"] + counts["no_match"] == counts["stored"] == rows, counts
    assert counts["dispatched"] == would_send
    keys = redis_db.keys("rb:event:csv:leads:*")
    assert len(keys) == rows
    with redis_db.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hmget(key, "status", "attempts")
        found = pipe.execute()
    assert {status for status, _ in found} == {b"processed"} and {count for _, count in found} <= attempts
    assert redis_db.hget("rb:metrics", event_field("csv:leads", "processed")) == str(rows).encode()
    # Revor paces one account's tasks (60 s apart: 0.3 s in the sandbox's time): wait until each is
    # accepted, not until each ran.
    accepted = wait_for(lambda: (found := dispatches(redis_db)) and len(found) == would_send and
                        all(d["status"] != "pending" for d in found.values()) and found, 120, "every dispatch accepted")
    ids = revor_dispatch_ids(stack)
    assert len(ids) == len(set(ids)) == would_send and set(ids) == set(accepted)
    result = result_rows(path.with_name(path.stem + ".result.csv"))
    assert [int(r["line"]) for r in result] == list(range(2, rows + 2))


def test_sigkill_halfway_through_5000_rows_then_the_same_command_continues(quiet_stack):
    """THE KILL TEST: the import process SIGKILLed for real once its checkpoint passed line 2,500."""
    stack = quiet_stack
    stack["start_worker"]()
    path = leads_file(stack["tmp"] / "big.csv", range(1, KILL_ROWS + 1), vip_every=10)
    run = run_of(stack, path)
    args = (str(path), "--source", "csv:leads", "--max-pending", "1000")
    started = time.monotonic()
    first = start_import(stack, *args)
    checkpoint = wait_for(lambda: int(stack["redis"].hget(runs.run_key(run), "checkpoint") or 0) > 2500 and
                          int(stack["redis"].hget(runs.run_key(run), "checkpoint")), 60, "checkpoint past 2,500")
    first.kill()
    first.wait()
    killed = runs.load(stack["redis"], run)
    assert killed.status == "running" and killed.checkpoint < KILL_ROWS, killed  # it really died midway
    second = run_import(stack, *args)
    assert second.returncode == 0, second.stderr
    assert f"continuing {run} of big.csv after line" in second.stderr
    assert_every_row_once(stack, path, KILL_ROWS, KILL_ROWS // 10)
    print(f"\nkilled at checkpoint {checkpoint} (line {killed.checkpoint} when it died); all {KILL_ROWS} rows "
          f"done once {time.monotonic() - started:.1f} s after the first start")


def test_ctrl_c_finishes_the_batch_saves_the_checkpoint_exits_130_and_says_how_to_continue(quiet_stack):
    stack = quiet_stack
    path = leads_file(stack["tmp"] / "big.csv", range(1, KILL_ROWS + 1), vip_every=10)
    run = run_of(stack, path)
    importing = start_import(stack, str(path), "--source", "csv:leads", "--max-pending", "0")  # no worker yet
    wait_for(lambda: int(stack["redis"].hget(runs.run_key(run), "checkpoint") or 0) > 1000, 60, "a checkpoint")
    importing.send_signal(signal.SIGINT)
    out, err = importing.communicate(timeout=60)
    assert importing.returncode == 130, err
    stopped = runs.load(stack["redis"], run)
    assert stopped.status == "interrupted" and stopped.checkpoint < KILL_ROWS + 1, stopped
    # Every row up to the checkpoint is stored (one row per line after the header), none after it.
    assert stopped.counts["read"] == stopped.counts["stored"] == stopped.checkpoint - 1
    assert len(stack["redis"].keys("rb:event:csv:leads:*")) == stopped.checkpoint - 1
    assert "Traceback" not in err
    command = err.strip().splitlines()[-1]
    assert command == f"continue with: revor-bridge import {path} --source csv:leads --max-pending 0", err
    stack["start_worker"]()
    again = subprocess.run([sys.executable, "-m", "integration", *shlex.split(command)[3:]], env=stack["env"],
                           cwd=stack["tmp"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert_every_row_once(stack, path, KILL_ROWS, KILL_ROWS // 10)


def test_a_file_that_is_not_csv_exits_2_with_one_line(quiet_stack):
    stack = quiet_stack
    workbook = stack["tmp"] / "contacts.xlsx"
    workbook.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    done = run_import(stack, str(workbook), "--source", "csv:leads")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("revor-bridge import: ") and "contacts.xlsx" in done.stderr
    missing = run_import(stack, str(stack["tmp"] / "nowhere.csv"), "--source", "csv:leads")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    source = leads_file(stack["tmp"] / "leads.csv", range(1, 3))
    wrong = run_import(stack, str(source), "--source", "leads")
    assert wrong.returncode == 1 and "expected csv:<name>" in wrong.stderr
    no_column = run_import(stack, str(source), "--source", "csv:leads", "--id-column", "Record ID")
    assert no_column.returncode == 1 and "Record ID" in no_column.stderr and "Traceback" not in no_column.stderr
    assert not stack["redis"].keys("rb:import*")  # nothing started


def test_a_redis_restart_during_an_import_is_waited_out_and_every_row_goes_once(tmp_path, make_bridge):
    """Redis stopped (SIGTERM, as a managed restart) under a running import and a worker, then
    started again: the import says so in one line each way, waits and goes on by itself."""
    import redis as redis_client

    server = RedisServer(tmp_path / "redis")
    server.start()
    base = server.url.rsplit("/", 1)[0]
    client = redis_client.Redis.from_url(f"{base}/1")
    try:
        with _stack(tmp_path, make_bridge, base, client, STACK_RULES.replace("WRITEBACK\n", ""),
                    {"REVOR_MAX_RPS": "1000"}) as stack:
            stack["start_worker"]()
            rows = 2000
            path = leads_file(tmp_path / "leads.csv", range(1, rows + 1), vip_every=10)
            run = run_of(stack, path)
            importing = start_import(stack, str(path), "--source", "csv:leads", "--max-pending", "400")
            wait_for(lambda: int(client.hget(runs.run_key(run), "checkpoint") or 0) > 600, 60, "a checkpoint")
            server.stop()
            time.sleep(3)
            assert importing.poll() is None  # waiting, not gone
            server.start()
            out, err = importing.communicate(timeout=120)
            assert importing.returncode == 0, err
            assert err.count("import: Redis unreachable") == 1 and err.count("import: Redis is back") == 1, err
            assert "Traceback" not in err
            # A worker's run that Redis left midway keeps its attempt (it could not take it back).
            assert_every_row_once(stack, path, rows, rows // 10, attempts={b"1", b"2"})
    finally:
        client.close()
        server.stop()


def test_a_batch_stored_whose_checkpoint_was_lost_is_counted_once_when_stored_again(redis_db, tmp_path, monkeypatch):
    """What a SIGKILL or a lost reply between a batch's store and its checkpoint leaves: the batch
    is stored again, the store finds every event (nothing processed twice), and the runner counts
    them as its own (`stored`), not as duplicates; a row repeated in the file is counted `repeated`."""
    import threading

    import redis as redis_client
    from rq import Queue

    from integration.imports import runner

    path = leads_file(tmp_path / "leads.csv", range(1, 1001), extra="5,again@example.com,Again,vip\n")
    prepared = runner.prepare(runner.ImportOptions(path, "csv:leads", max_pending=0))
    checkpoints: list[int] = []
    record_batch = runs.record_batch

    def lost_once(pipe, run, **counts):
        checkpoints.append(counts["checkpoint"])
        if len(checkpoints) == 3:  # after the third batch's store, before its checkpoint
            raise redis_client.ConnectionError("Connection closed by server.")
        record_batch(pipe, run, **counts)

    monkeypatch.setattr(runs, "record_batch", lost_once)
    stop, notes = threading.Event(), []
    work = runner.Runner(redis_db, Queue("default", connection=redis_db, serializer="json"), prepared, stop=stop,
                         notify=notes.append)
    watcher = threading.Thread(target=lambda: (wait_for(lambda: redis_db.hget(runs.run_key(prepared.run), "status")
                                                        == b"stored", 30, "stored"), stop.set()))
    watcher.start()
    outcome = work.run()  # no worker: it waits for one once every row is stored, until stopped
    watcher.join()
    assert outcome.status == "interrupted"
    assert checkpoints[2] == checkpoints[3] == 601  # the same batch, again
    counts = runs.load(redis_db, prepared.run).counts
    assert (counts["read"], counts["stored"], counts["repeated"], counts["duplicate"]) == (1001, 1000, 1, 0)
    assert [note.split(" (")[0].split(" after")[0] for note in notes] == [
        "import: Redis unreachable", "import: Redis is back"], notes
    assert len(redis_db.keys("rb:event:csv:leads:*")) == 1000


def test_an_operator_retry_of_a_failed_imported_event_is_not_counted_twice(redis_url, redis_db, sandbox, tmp_path):
    from rq import Queue

    from integration.inbound import records

    rules = tmp_path / "rules.yaml"
    rules.write_text(LEADS_RULES)
    context = JobContext.build(bridge_settings(redis_url, revor_base_url=sandbox.api_url, rules_file=rules))
    run = "imp_retry000000000000000"
    event = lead_event(1, run, 2)
    store(redis_db, Queue("default", connection=redis_db, serializer="json"), "csv:leads", [event], {})
    key = event_key("csv:leads", "lead-1")
    redis_db.hset(key, "attempts", records.MAX_ATTEMPTS)  # every earlier run died: this one gives up
    _process(context, key)
    assert redis_db.hget(key, "status") == b"failed" and runs.load(redis_db, run).counts["failed"] == 1
    records.retry(redis_db, key)
    assert runs.load(redis_db, run).counts["failed"] == 0 and runs.load(redis_db, run).pending == 0
    _process(context, key)
    counts = runs.load(redis_db, run).counts
    assert (counts["failed"], counts["dispatched"]) == (0, 1)


def test_an_import_waiting_for_room_keeps_its_lock(tmp_path, redis_db, monkeypatch):
    """Found by the dashboard helper: waiting for the workers (no batch to renew the lock with)
    let the lock lapse after LOCK_SECONDS, so a live import looked abandoned: the dashboard
    offered Continue and a second importer could feed the same run."""
    import threading

    from rq import Queue

    from integration.imports import runner

    monkeypatch.setattr(runs, "LOCK_SECONDS", 1)
    path = leads_file(tmp_path / "leads.csv", range(1, 501))
    prepared = runner.prepare(runner.ImportOptions(path, "csv:leads", max_pending=200, batch_size=200))
    stop = threading.Event()
    work = runner.Runner(redis_db, Queue("default", connection=redis_db, serializer="json"), prepared, stop=stop)
    thread = threading.Thread(target=work.run)
    thread.start()
    try:
        wait_for(lambda: int(redis_db.hget(runs.run_key(prepared.run), "checkpoint") or 0) > 1, 30, "a batch")
        time.sleep(3)  # three lock lifetimes, no worker: the importer waits for room all along
        assert redis_db.get(runs.lock_key(prepared.run)) is not None
        with pytest.raises(runs.Busy):
            runs.RunLock(redis_db, prepared.run).acquire()
    finally:
        stop.set()
        thread.join(timeout=30)
