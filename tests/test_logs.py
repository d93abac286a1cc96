"""Issue 11 item 3: logs a log drain can use (LOG_FORMAT=json) and people can read (text).

The processes are real: `revor-bridge web` (gunicorn) and `revor-bridge worker` (with its clock,
a forked child writing to the worker's streams) against a real redis-server and the sandbox; a
signed webhook posted with a query string, and every line each process wrote must be one JSON
object carrying the ids of what it was about.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import click
import requests
from standardwebhooks import Webhook

from integration import logs
from integration.settings import Settings
from integration.storage import free_port
from integration.web.request_ids import request_id
from tests.conftest import ROOT, cli_env, configure, revor_bridge, wait_for_port

HOOK_SECRET = "whsec_bG9ncy10ZXN0LWhvb2stc2VjcmV0LTAxMjM0NTY3ODk="
ADMIN = "logs-admin-token-0123456789"
QUERY_SECRET = "q-SECRET-in-the-url-0123"
EVENT = (ROOT / "integration" / "demo_data" / "events" / "standard-webhooks-linkedin.json").read_bytes()
RULES = """version: 1
rules:
  - name: crm-linkedin
    when: {source: generic:crm, type: deal.stage_changed, match: {contact.linkedin_url: {exists: true}}}
    dispatch:
      account: connect_account_sandbox_linkedin
      channel: linkedin
      recipient: {profile_url: "{{ contact.linkedin_url }}"}
      content: {text: "Hi {{ contact.first_name }}, glad to connect!"}
    writeback: [crm]
destinations:
  crm: {url: "${CLOSED_URL}", secret: whsec_bG9ncy10ZXN0LXdyaXRlYmFjay0wMTIzNDU2Nzg5}
"""


def _json_lines(text: str, where: str) -> list[dict]:
    """Every line of `text` as a JSON object with a level and a message (the assertion names the line)."""
    parsed = []
    for line in text.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            raise AssertionError(f"{where}: not a JSON line: {line!r}") from None
        assert isinstance(item, dict) and item.get("level") and "message" in item and item.get("time"), (where, line)
        parsed.append(item)
    return parsed


def test_web_worker_and_clock_write_one_json_object_per_line_with_the_ids_in_play(
        redis_url, redis_db, sandbox, tmp_path):
    """One event followed by its ids: the access line of its webhook names it (with the request
    id), and every worker line about its dispatch does too: a submit retried after a 503, the
    state changes, a failed write-back. RQ's own INFO lines (four per job) are not there."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    port = free_port()
    env = cli_env(LOG_FORMAT="json", REDIS_URL=f"{redis_url}/1", REVOR_BASE_URL=sandbox.api_url, PORT=str(port),
                  RULES_FILE=str(rules), GENERIC_WEBHOOK_SECRET_CRM=HOOK_SECRET, ADMIN_TOKEN=ADMIN,
                  WEB_CONCURRENCY="1", WORKER_THREADS="2", HOME=str(tmp_path),
                  CLOSED_URL=f"http://127.0.0.1:{free_port()}/status", WRITEBACK_RETRY_SCALE="0.01")
    configure(sandbox, error_rate=1.0)  # the first submit is answered 503, then Revor is back
    env.pop("DYNO", None)
    procs: dict[str, subprocess.Popen] = {}
    for kind in ("web", "worker"):
        with (tmp_path / f"{kind}.out").open("w") as out, (tmp_path / f"{kind}.err").open("w") as err:
            procs[kind] = subprocess.Popen([sys.executable, "-m", "integration", kind], env=env, cwd=tmp_path,
                                           stdout=out, stderr=err, start_new_session=True)
    try:
        wait_for_port(port, timeout=20)
        msg_id = f"msg_{uuid.uuid4().hex[:16]}"
        now = datetime.now(UTC)
        posted = requests.post(f"http://127.0.0.1:{port}/webhooks/generic/crm?token={QUERY_SECRET}&x=1", data=EVENT,
                               timeout=10, headers={"Content-Type": "application/json", "webhook-id": msg_id,
                                                    "webhook-timestamp": str(int(now.timestamp())),
                                                    "webhook-signature": Webhook(HOOK_SECRET).sign(
                                                        msg_id, now, EVENT.decode())})
        assert posted.status_code == 200, posted.text
        answered_id = posted.headers["X-Request-Id"]
        # A refused one, with the router's id: the app's own line about it carries that id too.
        refused = requests.post(f"http://127.0.0.1:{port}/webhooks/generic/crm", data=EVENT, timeout=10,
                                headers={"Content-Type": "application/json", "X-Request-Id": "router-id-0001",
                                         "webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
                                         "webhook-signature": "v1,AAAA"})
        assert refused.status_code == 401 and refused.headers["X-Request-Id"] == "router-id-0001", refused.text
        api = {"Authorization": f"Bearer {ADMIN}"}
        deadline, listed = time.monotonic() + 15, []
        while time.monotonic() < deadline and not (listed and listed[0].get("last_error")):
            time.sleep(0.1)
            listed = requests.get(f"http://127.0.0.1:{port}/api/v1/dispatches", timeout=5, headers=api).json()["items"]
        assert listed and "HTTP 503" in listed[0]["last_error"], listed
        configure(sandbox, error_rate=0.0)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (listed and listed[0].get("revor_job_id")):
            time.sleep(0.2)
            listed = requests.get(f"http://127.0.0.1:{port}/api/v1/dispatches", timeout=5, headers=api).json()["items"]
        assert listed and listed[0]["revor_job_id"], listed
        dispatch_id, job_id = listed[0]["id"], listed[0]["revor_job_id"]
        deadline, failures = time.monotonic() + 15, 0
        while time.monotonic() < deadline and failures < 2:  # the write-backs (pending, accepted) were tried
            time.sleep(0.2)
            [health] = requests.get(f"http://127.0.0.1:{port}/api/v1/destinations", timeout=5,
                                    headers=api).json()["items"]
            failures = health["consecutive_failures"]
        assert failures >= 2, health
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    lines = {name: _json_lines((tmp_path / name).read_text(), name)
             for name in ("web.out", "web.err", "worker.out", "worker.err")}
    everything = [item for items in lines.values() for item in items]
    assert QUERY_SECRET not in json.dumps(everything) and HOOK_SECRET not in json.dumps(everything)
    assert {item["process"] for item in lines["web.err"]} == {"web"}

    access = [item for item in everything if item["logger"] == "gunicorn.access" and item["method"] == "POST"]
    assert [item["status"] for item in access] == [200, 401], access
    assert access[1]["request_id"] == "router-id-0001"
    app_lines = [item for item in everything if item["logger"].startswith("integration.inbound")]
    assert app_lines and all(item["request_id"] == "router-id-0001" for item in app_lines), app_lines
    assert access[0]["path"] == "/webhooks/generic/crm" and access[0]["status"] == 200
    assert access[0]["request_id"] == answered_id and access[0]["duration_ms"] >= 0 and access[0]["bytes"] > 0
    assert access[0]["remote_addr"] == "127.0.0.1" and access[0]["user_agent"].startswith("python-requests")
    # What the request stored is on its access line: no line per event, and no guessing by time.
    assert (access[0]["source"], access[0]["event_id"], access[0]["events"]) == ("generic:crm", msg_id, 1), access
    assert access[0]["delivery_id"] and "source" not in access[1] and "event_id" not in access[1], access

    worker = lines["worker.out"] + lines["worker.err"]
    assert {item["process"] for item in worker} <= {"worker", "clock"}, worker
    created = [item for item in worker if item.get("event_id") == msg_id and item.get("dispatch_id") == dispatch_id]
    assert created and created[0]["source"] == "generic:crm", worker
    accepted = [item for item in worker if item.get("revor_job_id") == job_id]
    assert accepted and accepted[0]["dispatch_id"] == dispatch_id and accepted[0]["event_id"] == msg_id, worker
    assert any(item["message"].startswith(f"dispatch {dispatch_id}: pending -> accepted") for item in accepted)
    about = [item for item in worker if item.get("dispatch_id") == dispatch_id]
    retried = [item for item in about if "task_queue_unavailable HTTP 503" in item["message"]]
    assert retried and "retried on schedule in 2 s" in retried[0]["message"], about
    written = [item for item in about if item["message"].startswith("write-back ")]
    assert written and all(item.get("destination") == "crm" for item in written), about
    for item in retried + written:  # the dispatch's lines lead back to its event
        assert (item.get("event_id"), item.get("source")) == (msg_id, "generic:crm"), item
    assert all(item.get("event_id") == msg_id for item in about), [i for i in about if i.get("event_id") != msg_id]
    # RQ's own lines: its ~4 INFO lines per job are quieted; the worker says once that it started.
    assert not [item for item in worker if item["logger"].startswith("rq.") and item["level"] in ("DEBUG", "INFO")]
    assert any(item["logger"] == "integration.jobs.worker" and "started, listening on high, default, low"
               in item["message"] for item in worker), worker


def test_the_format_follows_dyno_unless_log_format_says_and_a_wrong_one_stops_in_one_line(sandbox, tmp_path):
    """The release check on a dyno without Redis: its report lines are JSON (LOG_FORMAT unset);
    locally they are text; LOG_FORMAT=xml stops before anything with one line."""
    on_dyno = revor_bridge("check", env=cli_env(DYNO="release.1"), cwd=tmp_path)
    assert on_dyno.returncode == 1, on_dyno.stdout + on_dyno.stderr
    report = _json_lines(on_dyno.stdout, "check")
    assert report and all(item["process"] == "check" for item in report)
    assert report[0]["message"].startswith("settings: REDIS_URL (or REDIS_TLS_URL) is unset")
    assert {item["level"] for item in report} == {"ERROR"}, report  # a failed check is an error to a drain
    _json_lines(on_dyno.stderr, "check stderr")

    local = cli_env(REVOR_BASE_URL=sandbox.api_url, BRIDGE_DATA_DIR=str(tmp_path / "data"))
    local.pop("DYNO", None)
    local.pop("LOG_FORMAT", None)
    as_text = revor_bridge("check", env=local, cwd=tmp_path)
    assert as_text.returncode == 0, as_text.stdout + as_text.stderr
    assert as_text.stdout.splitlines()[0] == "settings: ok" and not as_text.stdout.lstrip().startswith("{")
    on_dyno_as_text = revor_bridge("check", env=cli_env(DYNO="release.1", LOG_FORMAT="text"), cwd=tmp_path)
    assert on_dyno_as_text.stdout.splitlines()[0].startswith("settings: REDIS_URL (or REDIS_TLS_URL) is unset")
    assert _settings({}).log_format == "text" and _settings({"DYNO": "web.1"}).log_format == "json"
    assert _settings({"DYNO": "web.1", "LOG_FORMAT": "Text"}).log_format == "text"

    wrong = revor_bridge("check", env=cli_env(LOG_FORMAT="xml"), cwd=tmp_path)
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert wrong.stderr.splitlines() == ["revor-bridge: configuration error: LOG_FORMAT: malformed, "
                                         "expected one of TEXT, JSON"]


def test_the_release_check_in_json_reports_failures_as_errors_and_warnings_as_warnings(
        redis_url, redis_db, sandbox, tmp_path):
    """A rule whose account does not exist fails the check (ERROR, exit 1); a rule source whose
    setting is unset is a warning (WARNING); what passed stays INFO."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.replace("connect_account_sandbox_linkedin", "connect_account_nobody"))
    env = cli_env(LOG_FORMAT="json", REDIS_URL=f"{redis_url}/1", REVOR_BASE_URL=sandbox.api_url,
                  RULES_FILE=str(rules), CLOSED_URL="http://127.0.0.1:9/status")
    env.pop("DYNO", None)
    checked = revor_bridge("check", env=env, cwd=tmp_path)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    levels = {item["message"].split(":")[0]: item["level"] for item in _json_lines(checked.stdout, "check")}
    assert levels == {"settings": "INFO", "rules": "INFO", "warning": "WARNING", "redis": "INFO", "revor": "INFO",
                      "rule 'crm-linkedin'": "ERROR"}, checked.stdout

    rules.write_text(RULES.replace("channel: linkedin", "channel: pigeon"))
    invalid = revor_bridge("check", env=env, cwd=tmp_path)
    assert invalid.returncode == 2, invalid.stdout + invalid.stderr  # a configuration error, as a bad setting
    assert [item["message"] for item in _json_lines(invalid.stdout, "check")] == ["settings: ok"]
    lines = _json_lines(invalid.stderr, "check stderr")
    assert lines[0]["message"].startswith("revor-bridge: invalid rules file") and "dispatch.channel" in invalid.stderr
    assert {item["level"] for item in lines} == {"ERROR"}, lines


def test_a_configuration_error_is_one_json_line_at_error_where_logs_are_json(tmp_path):
    """On a dyno (or with LOG_FORMAT=json) the settings error is a JSON object too, even when
    LOG_FORMAT itself is what is wrong; locally, without LOG_FORMAT, it stays a line of text."""
    local_json = cli_env(LOG_FORMAT="json", LOG_LEVEL="LOUD")
    local_json.pop("DYNO", None)
    for env, wrong_one in ((cli_env(DYNO="release.1", LOG_FORMAT="xml"), "LOG_FORMAT"), (local_json, "LOG_LEVEL")):
        wrong = revor_bridge("check", env=env, cwd=tmp_path)
        assert wrong.returncode == 2 and wrong.stdout == "", wrong.stdout + wrong.stderr
        [line] = _json_lines(wrong.stderr, "check stderr")
        assert line["level"] == "ERROR" and line["process"] == "check", line
        assert line["message"].startswith(f"revor-bridge: configuration error: {wrong_one}: malformed"), line
    as_text = revor_bridge("check", env=cli_env(DYNO="web.1", LOG_FORMAT="text", LOG_LEVEL="LOUD"), cwd=tmp_path)
    assert as_text.returncode == 2 and as_text.stderr.startswith("revor-bridge: configuration error: LOG_LEVEL")


def _settings(environ: dict[str, str]) -> Settings:
    return Settings.from_env(environ)


def _record(message: str, *args: object, exc_info: object = None, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("integration.test", logging.ERROR, __file__, 1, message, args or None, exc_info)
    record.__dict__.update(extra)
    return record


def test_the_json_formatter_puts_a_traceback_in_one_line_with_the_ids_and_no_secret():
    try:
        raise ValueError("bad thing with sk-revor-live-secret-1 inside\nand a second line")
    except ValueError:
        exc_info = sys.exc_info()
    formatter = logs.JsonFormatter(secrets=("sk-revor-live-secret-1",))
    with logs.bind(event_id="evt-1", dispatch_id="dsp_1", request_id=None):
        logs.add(revor_job_id="job_9")
        line = formatter.format(_record("event %s failed", "evt-1", exc_info=exc_info, destination="crm"))
    assert "\n" not in line
    item = json.loads(line)
    assert item["level"] == "ERROR" and item["logger"] == "integration.test" and item["message"] == "event evt-1 failed"
    assert item["time"].endswith("Z") and datetime.fromisoformat(item["time"]).tzinfo is not None
    assert (item["event_id"], item["dispatch_id"], item["revor_job_id"], item["destination"]) == \
        ("evt-1", "dsp_1", "job_9", "crm")
    assert "request_id" not in item and logs.current() == {}  # the block's ids ended with it
    assert item["exc"].startswith("Traceback") and "ValueError: bad thing with [redacted] inside" in item["exc"]
    assert "sk-revor-live-secret-1" not in line

    text = logs.TextFormatter(secrets=())
    with logs.bind(event_id="evt-1", dispatch_id="dsp_1"):
        shown = text.format(_record("event %s: next attempt in 5 s", "evt-1"))
    assert shown.endswith("ERROR integration.test: event evt-1: next attempt in 5 s dispatch_id=dsp_1"), shown


def test_stdout_in_json_mode_wraps_every_other_line_and_passes_json_on():
    raw = io.StringIO()
    guarded = logs.JsonLines(raw, "stdout", logging.INFO)
    guarded.write("settings: ")
    assert raw.getvalue() == ""  # a line is written whole
    guarded.write('ok\n{"time": "2026-01-01T00:00:00Z", "level": "INFO", "message": "already a line"}\n\n')
    click.echo("from click", file=guarded)
    print("from print", file=guarded)
    lines = _json_lines(raw.getvalue(), "guarded")
    assert [item["message"] for item in lines] == ["settings: ok", "already a line", "from click", "from print"]
    assert lines[0]["logger"] == "stdout" and lines[0]["level"] == "INFO"


def test_a_sane_incoming_request_id_is_kept_and_any_other_replaced():
    assert request_id("0f8fad5b-d9cb-469f-a165-70867728950e") == "0f8fad5b-d9cb-469f-a165-70867728950e"
    for bad in (None, "", "two words", "x" * 201, "line\nbreak", '{"json": 1}'):
        fresh = request_id(bad)
        assert fresh != bad and len(fresh) == 32


def test_text_lines_escape_what_a_sender_could_forge_lines_with():
    """An event id or a decoded path holding a line feed or an ANSI escape stays on its own line, visible."""
    text = logs.TextFormatter(secrets=())
    with logs.bind(event_id="evt\n2026-01-01 00:00:00,000 ERROR forged: line\x1b[31m", request_id="r1"):
        shown = text.format(_record("inbound %s refused", "/webhooks/generic/x\nFORGED\u202e"))
    assert shown.splitlines() == [shown] and "\x1b" not in shown and "\u202e" not in shown, shown
    assert "x\\nFORGED\\u202e refused" in shown and "event_id=evt\\n2026-01-01" in shown and "\\x1b[31m" in shown


def test_gunicorn_text_access_and_error_lines_keep_a_line_feed_of_the_path_on_one_line(redis_url, redis_db, tmp_path):
    port = free_port()
    env = cli_env(LOG_FORMAT="text", REDIS_URL=f"{redis_url}/1", PORT=str(port), WEB_CONCURRENCY="1",
                  HOME=str(tmp_path), BRIDGE_DATA_DIR=str(tmp_path / "data"))
    env.pop("DYNO", None)
    with (tmp_path / "web.err").open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "integration", "web"], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        wait_for_port(port, timeout=20)
        answer = requests.post(f"http://127.0.0.1:{port}/webhooks/generic/x%0aFORGED%20line%1b[2J", data=b"{}",
                               timeout=10, headers={"Content-Type": "application/json"})
        assert answer.status_code == 404
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    lines = (tmp_path / "web.err").read_text().splitlines()
    assert not [line for line in lines if line.startswith("FORGED") or "\x1b" in line], lines
    assert any("/webhooks/generic/x\\nFORGED line\\x1b[2J" in line and "404" in line for line in lines), lines
    assert any("integration.inbound" in line and "x\\nFORGED line" in line for line in lines), lines


def test_a_text_access_line_names_what_the_webhook_stored():
    """LOG_FORMAT=text: the access line ends with the source and event id (a batch: delivery and count)."""
    from integration.web.request_ids import note_stored
    from integration.web.serving import ACCESS_LOG_FORMAT, stored_text

    environ: dict = {}
    note_stored(environ, "generic:crm", "dlv_1", ["evt-1"])
    assert stored_text(environ["revor_bridge.stored"]) == " source=generic:crm event_id=evt-1"
    note_stored(environ, "hubspot", "dlv_2", ["1", "2", "3"])
    assert environ["revor_bridge.stored"]["event_ids"] == ["1", "2", "3"]
    assert stored_text(environ["revor_bridge.stored"]) == " source=hubspot delivery_id=dlv_2 events=3"
    assert stored_text(None) == "" and ACCESS_LOG_FORMAT.endswith("%(stored)s")
