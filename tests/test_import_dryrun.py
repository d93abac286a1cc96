"""The import's dry run (integration/imports/dryrun.py): every row planned, nothing written.

Real Redis for the read-only checks (suppression, once_per holders, earlier imports and
dispatches); a dry run must leave every key byte for byte as it was (DUMP before and after).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from integration.dispatches import state
from integration.imports import dryrun
from integration.imports.dryrun import Bucket, Planner, Reasons, SeenKeys
from integration.inbound.store import event_key
from integration.rules.build import dispatch_id_for
from integration.rules.guards import suppress
from integration.rules.loader import load_rules
from tests.conftest import ROOT, cli_env, sandbox_requests
from tests.test_import_run import HEADER, STACK_RULES, leads_file, run_import
from tests.test_pipeline import _stack, settle

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


def test_seen_keys_for_200000_rows_stay_small() -> None:
    """The one structure that grows with the file: 200,000 event ids cost a few MB (tracemalloc),
    not the ~25 MB a set of their strings would."""
    tracemalloc.start()
    try:
        seen = SeenKeys()
        for n in range(200_000):
            seen.add(f"rb:event:csv:big:row-{n:064d}", n + 2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen.count == 200_000
    assert peak < 10 * 2**20, peak


MEMORY_SCRIPT = """
import resource, sys
from pathlib import Path
from integration.imports import dryrun
from integration.rules.loader import load_rules

rules, warm, big = (Path(p) for p in sys.argv[1:4])
ruleset = load_rules(rules)
dryrun.plan_file(warm, source="csv:big", ruleset=ruleset)  # every module loaded, every cache warm
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = dryrun.plan_file(big, source="csv:big", ruleset=ruleset)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(result.rows, result.would_send, (after - before) * 1024)
"""


def test_a_200000_row_dry_run_has_bounded_memory(tmp_path: Path) -> None:
    """Counters and a few examples, never the rows: the peak grows by a few MB over a 200,000-row
    file (the rows held as events would take hundreds of MB). Measured as the process's peak RSS:
    tracemalloc slows the engine fivefold, and the SeenKeys test above measures what grows."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.replace("match: {contact.email: {exists: true}}", "match: {properties.Segment: vip}")
                     .replace("csv:spring", "csv:big"))
    files = {}
    for name, count in (("warm", 2_000), ("big", 200_000)):
        files[name] = tmp_path / f"{name}.csv"
        with files[name].open("w") as out:
            out.write("contact.email,Segment\n")
            out.writelines(f"p{n}@example.com,{'vip' if n % 100 == 0 else 'std'}\n" for n in range(count))
    found = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(rules), str(files["warm"]), str(files["big"])],
                           cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=240)
    assert found.returncode == 0, found.stderr
    rows, would_send, grown = (int(value) for value in found.stdout.split())
    assert (rows, would_send) == (200_000, 2_000)
    assert grown < 32 * 2**20, f"peak RSS grew by {grown / 2**20:.1f} MB"


# ---- through the command line: `revor-bridge import --dry-run`, then the real import ---------------

KNOWN_ROWS = (  # HEADER of tests/test_import_run.py: contact.id,contact.email,contact.first_name,contact.segment
    "1,lead1@example.com,Lead1,vip\n"  # line 2: would send
    "2,lead2@example.com,Lead2,other\n"  # line 3: no rule matched
    "3,not an address,Bad,vip\n"  # line 4: invalid
    "4,blocked@example.com,Blocked,vip\n"  # line 5: suppressed
    "5,lead5@example.com,Lead5,vip\n"  # line 6: would send
    "5,lead5@example.com,Lead5,vip\n"  # line 7: the same id as line 6
    "6,lead6@example.com,Lead6,vip,surplus\n"  # line 8: a bad row
    "7,lead7@example.com,Lead7,vip\n"  # line 9: would send
    "8,lead8@example.com,Lead8,other\n"  # line 10: no rule matched
)


@pytest.fixture
def leads_stack(tmp_path, make_bridge, redis_url, redis_db):
    """The import run tests' stack (tests/test_import_run.py): worker processes, the sandbox; no write-backs."""
    with _stack(tmp_path, make_bridge, redis_url, redis_db, STACK_RULES.replace("WRITEBACK\n", ""),
                {"REVOR_MAX_RPS": "1000"}) as stack:
        yield stack


def test_the_dry_run_writes_nothing_and_its_examples_are_what_the_import_sends(leads_stack) -> None:
    """`import --dry-run --json` on a file with known rows: the counts per verdict, the grouped
    reasons with their lines, Redis unchanged; then the real import through a worker and the
    sandbox sends exactly the three example bodies (the rules' interval is fixed: byte for byte)."""
    stack = leads_stack
    redis_db = stack["redis"]
    suppress(redis_db, ["blocked@example.com"])
    path = stack["tmp"] / "known.csv"
    path.write_text(HEADER + KNOWN_ROWS, encoding="utf-8")
    before = dump_all(redis_db)
    shown = run_import(stack, str(path), "--source", "csv:leads", "--dry-run", "--json")
    assert shown.returncode == 0, shown.stderr
    assert dump_all(redis_db) == before
    plan = json.loads(shown.stdout)
    assert (plan["rows"], plan["events"], plan["would_send"]) == (9, 8, 3)
    [rule] = plan["rules"]
    assert {k: v for k, v in rule["counts"].items() if v} == {"would_send": 3, "invalid": 1,
                                                               "skipped_suppression": 1}
    assert rule["reasons"]["invalid"] == [{"reason": "recipient.address: Not a valid email address.", "count": 1,
                                           "lines": [4]}]
    assert plan["no_rule_matched"] == {"count": 2, "lines": [3, 10], "why": {"vip-welcome": [
        {"count": 2, "lines": [3, 10], "reason": "contact.segment is 'other', not 'vip'"}]}}
    assert plan["duplicates_in_file"]["reasons"] == [{"reason": "the same event id as line 6", "count": 1,
                                                      "lines": [7]}]
    assert plan["bad"]["reasons"] == [{"reason": "5 cells where the header has 4 columns", "count": 1,
                                       "lines": [8]}]
    assert [example["line"] for example in plan["examples"]] == [2, 6, 9]
    assert plan["schedule"] == [{"account_id": "connect_account_sandbox_email", "channel": "email", "tasks": 3,
                                 "interval_seconds": [60, 60], "seconds": 180, "days": 0.0,
                                 "text": "3 emails from account connect_account_sandbox_email at 60 s apart: "
                                         "about 3 minutes"}]
    assert plan["needs_yes"] is False

    stack["start_worker"]()
    done = run_import(stack, str(path), "--source", "csv:leads")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "Would send 3 Revor tasks." in done.stdout  # the same summary first
    found = settle(stack, expected=5)
    sent = {request["body"]["metadata"]["dispatch_id"]: request["body"]
            for request in sandbox_requests(stack["sandbox"]) if request.get("body")}
    assert set(sent) == {example["dispatch_id"] for example in plan["examples"]}
    for example in plan["examples"]:
        assert state.load(redis_db, example["dispatch_id"])["body"] == example["body"]  # the stored, sent bytes
        assert sent[example["dispatch_id"]] == json.loads(example["body"])
    assert sorted(d["status"] for d in found.values()) == ["invalid", "skipped", "succeeded", "succeeded",
                                                           "succeeded"]


SCHEDULE_RULES = RULES.replace("csv:spring", "csv:leads").replace(
    "match: {contact.email: {exists: true}}", "match: {contact.segment: vip}").replace(
    "interval_seconds: [180, 360]", "interval_seconds: [900, 1800]")


def test_a_month_long_schedule_needs_yes(redis_url, redis_db, tmp_path: Path) -> None:
    """A schedule of about 31 days, more than the default --max-days 7: the import stops (exit 1)
    before storing anything; a dry run says so. The issue's own figure (10,000 emails at 180–360 s)
    is checked above on the planner; through the command the same month is 2,000 emails at
    900–1,800 s (planning 10,000 rows twice took 84 s of a loaded CI run)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(SCHEDULE_RULES)
    path = leads_file(tmp_path / "two-thousand.csv", range(1, 2_001))
    env = cli_env(REDIS_URL=f"{redis_url}/1", RULES_FILE=str(rules), LOG_LEVEL="WARNING")
    command = [sys.executable, "-m", "integration", "import", str(path), "--source", "csv:leads"]
    before = dump_all(redis_db)
    refused = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1, refused.stderr
    figure = "2,000 emails from account connect_account_sandbox_email at 900–1800 s apart: about 31 days"
    assert figure in refused.stdout and "the import needs --yes" in refused.stdout
    assert refused.stderr.strip().splitlines()[-1] == (
        f"revor-bridge import: the longest schedule is {figure}, more than --max-days 7: pass --yes to import "
        "anyway, or split the list")
    assert dump_all(redis_db) == before  # nothing stored, no run begun
    looked = subprocess.run([*command, "--dry-run", "--max-days", "40"], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert looked.returncode == 0 and figure in looked.stdout and "needs --yes" not in looked.stdout
