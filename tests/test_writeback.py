"""Write-back: signed, ordered, retried status webhooks with dead letters, 410 and replay.

The receiver verifies every signature with the `standardwebhooks` package; workers are real
`revor-bridge worker` processes (see tests/test_pipeline.py for the stack).
"""

from __future__ import annotations

import datetime
import json
import re
import textwrap
import time

import pytest
import requests
import yaml
from standardwebhooks import Webhook

from integration.rules.loader import RulesError, load_rules
from integration.rules.templates import RenderError
from integration.writeback.body import SAMPLE, BodyTemplate, render_body
from tests.conftest import ADMIN_TOKEN, cli_env, revor_bridge
from tests.servers import ThreadServer, writeback_receiver
from tests.test_pipeline import (  # noqa: F401 - fixtures
    RULES,
    WRITEBACK_SECRET,
    ZAP_HEADERS,
    assert_writebacks_complete,
    dispatches,
    settle,
    stack,
    stack_with_rules,
    zap,
)

API = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def post_zaps(stack, count: int) -> None:
    for number in range(count):
        assert stack["bridge"].post("/webhooks/generic/zapier", zap(number), ZAP_HEADERS).status_code == 200


def wait_for(condition, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_order_is_kept_under_retries(stack):
    stack["receiver"]["fail"] = [503, 500, 503, 502, 500, 503]
    stack["start_worker"]()
    post_zaps(stack, 3)
    found = settle(stack, expected=3)
    assert_writebacks_complete(stack["receiver"], found)
    retried = [webhook_id for _, webhook_id in stack["receiver"]["times"]]
    assert len(retried) > len({m["id"] for m in stack["receiver"]["messages"]})  # really retried


def test_retry_after_is_honoured_on_429(stack):
    stack["receiver"]["fail"] = [(429, {"Retry-After": "3"})]
    stack["start_worker"]()
    post_zaps(stack, 1)
    found = settle(stack, expected=1)
    assert_writebacks_complete(stack["receiver"], found)
    (first_at, first_id), (second_at, second_id) = stack["receiver"]["times"][:2]
    assert first_id == second_id  # the same message, the same webhook-id
    assert second_at - first_at >= 3.0


def test_redirects_are_not_followed(stack):
    elsewhere_app, elsewhere = writeback_receiver(WRITEBACK_SECRET)
    with ThreadServer(elsewhere_app) as other:
        stack["receiver"]["fail"] = [(307, {"Location": other.url + "/status"})]
        stack["start_worker"]()
        post_zaps(stack, 1)
        found = settle(stack, expected=1)
    assert elsewhere["attempts"] == 0
    assert_writebacks_complete(stack["receiver"], found)


def test_410_disables_the_destination_until_enabled_then_replay(stack):
    stack["receiver"]["fail"] = [410]
    stack["start_worker"]()
    post_zaps(stack, 1)
    found = settle(stack, expected=1)
    url = stack["bridge"].url + "/api/v1"
    health = requests.get(f"{url}/destinations", headers=API, timeout=5).json()["items"][0]
    assert health["disabled"] is True and health["disabled_reason"].startswith("410 Gone")
    dead = requests.get(f"{url}/deliveries/dead?destination=crm", headers=API, timeout=5).json()["items"]
    dead_ids = [d["id"] for d in dead]
    assert len(dead_ids) == int(next(iter(found.values()))["sequence"]) - 1  # every message, none delivered
    assert dead[0]["dead_reason"] == "410 Gone: destination disabled"
    metrics = requests.get(stack["bridge"].url + "/metrics", timeout=5).text
    assert 'revor_bridge_destination_up{destination="crm"} 0' in metrics
    refused = requests.post(f"{url}/deliveries/{dead_ids[0]}/replay", headers=API, timeout=5)
    assert refused.status_code == 409
    env = stack["env"]
    assert revor_bridge("deliveries", "enable", "crm", env=env, cwd=stack["tmp"]).returncode == 0
    replayed = revor_bridge("deliveries", "replay", "--destination", "crm", env=env, cwd=stack["tmp"])
    assert replayed.returncode == 0, replayed.stderr
    wait_for(lambda: len(stack["receiver"]["messages"]) == len(dead_ids), what="replayed messages")
    assert sorted(m["id"] for m in stack["receiver"]["messages"]) == sorted(dead_ids)  # webhook-ids kept


def test_exhausted_schedule_goes_to_dead_letters_and_replays(stack_with_rules):
    # The whole schedule (5 s ... 10 h, about 1.5 days) shrunk to about 13 s.
    stack = stack_with_rules(RULES, WRITEBACK_RETRY_SCALE="0.0001")
    stack["receiver"]["fail"] = [500] * 8  # the first message's eight attempts
    stack["start_worker"]()
    post_zaps(stack, 1)
    found = settle(stack, expected=1, timeout=120)
    dispatch_id, record = next(iter(found.items()))
    listed = revor_bridge("deliveries", "list", "--json", env=stack["env"], cwd=stack["tmp"])
    dead = json.loads(listed.stdout)
    assert len(dead) == 1 and dead[0]["attempts"] == 8 and dead[0]["dead_reason"].startswith("no 2xx after 8")
    delivered = {m["id"] for m in stack["receiver"]["messages"]}
    assert dead[0]["id"] not in delivered and len(delivered) == int(record["sequence"]) - 2  # the rest went on
    shown = json.loads(revor_bridge("deliveries", "show", dead[0]["id"], env=stack["env"], cwd=stack["tmp"]).stdout)
    assert shown["body"]["data"]["dispatch_id"] == dispatch_id
    answer = requests.post(f"{stack['bridge'].url}/api/v1/deliveries/{dead[0]['id']}/replay", headers=API, timeout=5)
    assert answer.status_code == 202
    wait_for(lambda: dead[0]["id"] in {m["id"] for m in stack["receiver"]["messages"]}, what="the replay")
    assert json.loads(revor_bridge("deliveries", "list", "--json", env=stack["env"], cwd=stack["tmp"]).stdout) == []


def test_a_failing_destination_opens_its_circuit(stack_with_rules):
    stack = stack_with_rules(RULES, WRITEBACK_RETRY_SCALE="0.0002")
    stack["receiver"]["fail"] = [503] * 6
    stack["start_worker"]()
    post_zaps(stack, 1)
    url = stack["bridge"].url + "/api/v1/destinations"
    seen_open = []

    def circuit_opened() -> bool:
        health = requests.get(url, headers=API, timeout=5).json()["items"][0]
        seen_open.append(health["circuit"] == "open" or health["consecutive_failures"] >= 5)
        return seen_open[-1]

    wait_for(circuit_opened, what="the circuit to open")
    found = settle(stack, expected=1)
    assert_writebacks_complete(stack["receiver"], found)
    health = requests.get(url, headers=API, timeout=5).json()["items"][0]
    assert health["circuit"] == "closed" and health["consecutive_failures"] == 0  # closed again by a success


TEMPLATED = RULES.replace("    writeback: [crm]\ndestinations:",
                          "    writeback: [crm, hubspot-workflow]\ndestinations:")


HOSTILE_ID = 'x", "dealstage": "closedwon'


def test_body_template_shapes_the_message(stack_with_rules):
    """A body mapping: each leaf rendered and JSON-encoded by the bridge, so a CRM value that looks like JSON
    (here a deal id) is one string and adds no key; the receiver verifies the signature over those bytes."""
    rules = TEMPLATED + textwrap.indent(textwrap.dedent("""\
        hubspot-workflow:
          url: "${RECEIVER_URL}"
          secret: "WRITEBACK_SECRET"
          on: [succeeded, failed]
          body:
            objectId: "{{ data.crm.object_id }}"
            properties:
              outreach_status: "{{ data.status }}"
              outreach_dispatch: "{{ data.dispatch_id }}"
              outreach_sequence: "{{ data.sequence }}"
              outreach_note: "deal {{ data.crm.object_id }} is {{ data.status }}"
            source: bridge
            version: 2
        """).replace("WRITEBACK_SECRET", WRITEBACK_SECRET), "  ")
    stack = stack_with_rules(rules)
    stack["start_worker"]()
    hostile = json.loads(zap(0))
    hostile["deal__id"] = HOSTILE_ID
    answer = stack["bridge"].post("/webhooks/generic/zapier", json.dumps(hostile).encode(), ZAP_HEADERS)
    assert answer.status_code == 200
    settle(stack, expected=1)
    wait_for(lambda: any("objectId" in m["body"] for m in stack["receiver"]["messages"]), what="templated message")
    shaped = [m["body"] for m in stack["receiver"]["messages"] if "objectId" in m["body"]]
    record = next(iter(dispatches(stack["redis"]).items()))
    dispatch_id, sequence = record[0], int(record[1]["sequence"])
    assert shaped == [{"objectId": HOSTILE_ID,
                       "properties": {"outreach_status": "succeeded", "outreach_dispatch": dispatch_id,
                                      "outreach_sequence": sequence,
                                      "outreach_note": f"deal {HOSTILE_ID} is succeeded"},
                       "source": "bridge", "version": 2}]
    assert stack["receiver"]["refused"] == 0  # signed over exactly the rendered bytes


@pytest.mark.parametrize(
    ("body", "problem"),
    [({"status": "{{ data.nothing }}"}, "destinations.crm.body.status: data.nothing has no value"),
     ({"deep": {"items": ["ok", "{{ data.crm.nothing | upper }}"]}},
      "destinations.crm.body.deep.items.1: data.crm.nothing has no value"),
     ({"status": "{{ data.status }"}, "destinations.crm.body.status: template error"),
     ({"status": "{{ range(3) }}"}, "gives a range, not a JSON value"),
     ({"status": "{{ ('x' * 10000) * 10000 }}"}, "template builds a string longer than"),
     ({"size": "{{ '%0100000000d' | format(1) }}"}, "template builds a string longer than"),
     ('{"status": {{ data.status | tojson }}}', "body is a mapping whose values are templates, not one template"),
     ("x", 'status: "{{ data.status }}"'),  # the error shows the mapping form
     ({1: "x"}, "key 1 must be text"),
     ({"when": datetime.date(2026, 1, 1)}, "quote dates"),
     ([1, 2], "body is a mapping of JSON keys to values")],
)
def test_bad_body_templates_are_caught_when_the_rules_load(tmp_path, body, problem):
    path = tmp_path / "rules.yaml"
    line = f'    secret: "{WRITEBACK_SECRET}"\n'
    text = yaml.safe_dump({"body": body}, default_flow_style=False, allow_unicode=True)
    assert RULES.count(line) == 1
    path.write_text(RULES.replace(line, line + textwrap.indent(text, "    ")))
    with pytest.raises(RulesError) as caught:
        load_rules(path, environ={"RECEIVER_URL": "http://127.0.0.1:1/status"})
    assert any(p.startswith("destinations.crm.body") and problem in p for p in caught.value.problems), \
        caught.value.problems
    body_line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if text.startswith("    body:"))
    lines = [int(n) for p in caught.value.problems for n in re.findall(r"\(line (\d+)\)", p)]
    assert lines and all(body_line <= n <= body_line + 4 for n in lines), (body_line, lines)  # the body or its leaf


# Strings a CRM could send that look like JSON or Jinja: each must arrive as exactly that one string.
TRICKY = [HOSTILE_ID, '", "x": 1, "y": "', "\"}, {\"a\": 1", "{{ 7 * 7 }}", "{% if true %}yes{% endif %}",
          "${SECRET}", "}\n{", "\\u0022", "\u2028\u2029", "null", "4", "[1, 2]", "true", "\x00", "'; DROP TABLE x; --",
          "a" * 5000]


@pytest.mark.parametrize("value", TRICKY)
def test_crm_values_cannot_change_the_body(value):
    body = BodyTemplate.from_mapping({"objectId": "{{ data.crm.object_id }}", "status": "{{ data.status }}",
                                      "reason": "{{ data.reason }}", "note": "id={{ data.crm.object_id }}",
                                      "sequence": "{{ data.sequence }}", "nested": {"list": ["{{ data.reason }}"]}})
    message = json.loads(json.dumps(SAMPLE))
    message["data"]["crm"]["object_id"] = value
    message["data"]["reason"] = value
    sent = render_body(body, message)
    assert json.loads(sent) == {"objectId": value, "status": "succeeded", "reason": value, "note": f"id={value}",
                                "sequence": 4, "nested": {"list": [value]}}
    moment = datetime.datetime.now(tz=datetime.UTC)
    signature = Webhook(WRITEBACK_SECRET).sign("msg_1", moment, sent.decode())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(moment.timestamp())), "webhook-signature": signature}
    assert Webhook(WRITEBACK_SECRET).verify(sent, headers) == json.loads(sent)


def test_body_leaves_keep_their_types():
    body = BodyTemplate.from_mapping({"n": "{{ data.sequence }}", "text": "{{ data.sequence | string }}",
                                      "padded": " {{ data.sequence }}", "none": "{{ data.error }}",
                                      "object": "{{ data.crm }}", "list": "{{ [data.sequence, data.status] }}",
                                      "flag": "{{ data.sequence > 3 }}", "ratio": "{{ data.sequence / 8 }}",
                                      "fixed": [1, 2.5, True, None, "plain"]})
    assert json.loads(render_body(body, SAMPLE)) == {
        "n": 4, "text": "4", "padded": " 4", "none": None, "object": SAMPLE["data"]["crm"], "list": [4, "succeeded"],
        "flag": True, "ratio": 0.5, "fixed": [1, 2.5, True, None, "plain"]}
    with pytest.raises(RenderError, match="body.x: inf is not a JSON number"):
        render_body(BodyTemplate.from_mapping({"x": "{{ 1e308 * 10 }}"}), SAMPLE)
    with pytest.raises(RenderError, match="body.big: the value is longer than 20000 characters"):
        render_body(BodyTemplate.from_mapping({"big": "{{ ['x' * 1000] * 30 }}"}), SAMPLE)


def test_deliveries_cli_needs_a_destination_or_rules(tmp_path, redis_url):
    result = revor_bridge("deliveries", "list", env=cli_env(REDIS_URL=f"{redis_url}/1"), cwd=tmp_path)
    assert result.returncode == 2 and "name a --destination" in result.stderr


# ---- a slow receiver: the deadline, the attempt on record, the job's own budget -------------

class TricklingReceiver:
    """A raw HTTP receiver on 127.0.0.1 that reads a request, then answers one byte per `interval`.

    A per-read socket timeout never fires on it (each byte arrives well within one), so only a
    deadline on the whole exchange ends an attempt. Records (start, end, webhook-id) per connection.
    """

    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

    def __init__(self, interval: float = 1.0) -> None:
        import socket
        import threading

        self.interval, self.attempts, self.stopping = interval, [], threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/status"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import threading

        self.sock.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn) -> None:
        import select

        record = {"start": time.time(), "end": None, "id": None}
        self.attempts.append(record)
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
            record["id"] = headers.get("webhook-id")
            while len(body) < int(headers.get("content-length", 0)):
                chunk = conn.recv(65536)
                if not chunk:
                    return
                body += chunk
            for byte in self.ANSWER:
                readable, _, _ = select.select([conn], [], [], self.interval)
                if self.stopping.is_set():
                    return
                try:
                    if readable and not conn.recv(1):  # the bridge gave up and closed the connection
                        break
                    conn.sendall(bytes([byte]))
                except OSError:
                    break
            record["end"] = time.time()

    def close(self) -> None:
        self.stopping.set()
        self.sock.close()


def test_a_trickling_receiver_is_timed_out_counted_retried_and_dead_lettered(stack_with_rules):
    """Issue 9 item 12: one byte a second kept the old per-read timeout happy until RQ killed the job."""
    from integration.writeback.deliver import RETRY_SCHEDULE

    trickle = TricklingReceiver(interval=1.0)
    scale, timeout = 0.00002, 1.2
    rules = RULES.replace(f'    secret: "{WRITEBACK_SECRET}"\n',
                          f'    secret: "{WRITEBACK_SECRET}"\n    on: [succeeded]\n')
    try:
        stack = stack_with_rules(rules, RECEIVER_URL=trickle.url, WRITEBACK_TIMEOUT_SECONDS=str(timeout),
                                 WRITEBACK_RETRY_SCALE=str(scale))
        stack["start_worker"]()
        post_zaps(stack, 1)
        redis_db = stack["redis"]
        wait_for(lambda: redis_db.zcard("rb:dead:crm") == 1, timeout=60, what="the dead letter")
        found = settle(stack, expected=1)  # and nothing left in any outbox: not re-queued forever
    finally:
        trickle.close()
    (dispatch_id,) = found
    message_id = f"msg_{dispatch_id}_{found[dispatch_id]['sequence']}_crm"
    shown = json.loads(revor_bridge("deliveries", "show", message_id, env=stack["env"], cwd=stack["tmp"]).stdout)
    assert shown["attempts"] == 8 and shown["dead_reason"].startswith("no 2xx after 8 attempts; last: timed out")
    tries = [a for a in trickle.attempts if a["id"] == message_id]
    assert abs(shown["last_attempt_at"] - tries[-1]["start"]) < 0.5  # recorded as the last attempt began
    assert len(tries) == 8
    for one in tries:  # each attempt ended at the deadline, not at the 15 s per-read timeout
        assert one["end"] is not None and timeout - 0.1 <= one["end"] - one["start"] <= timeout + 1.0
    for number, (one, two) in enumerate(zip(tries, tries[1:], strict=False)):  # the retry schedule
        assert two["start"] - one["start"] >= timeout + RETRY_SCHEDULE[number] * scale - 0.05
    health = {k.decode(): v.decode() for k, v in redis_db.hgetall("rb:destination:crm").items()}
    assert int(health["failures"]) == 8 and int(health["opens"]) >= 1  # the circuit opened on the way
    assert health["last_error"].startswith("timed out")
    assert redis_db.zscore("rb:due", f"deliver|{dispatch_id}|crm") is None  # the outbox is empty: nothing due


def _outbox_with(redis_db, dispatch_id: str, count: int) -> list[str]:
    """`count` status messages queued for destination `crm`, as the state machine writes them."""
    from integration.dispatches.state import outbox_key

    ids = []
    for sequence in range(2, 2 + count):
        message_id = f"msg_{dispatch_id}_{sequence}_crm"
        body = {"type": "dispatch.accepted", "timestamp": "2026-01-01T12:00:00.000Z",
                "data": {"dispatch_id": dispatch_id, "sequence": sequence, "status": "accepted"}}
        redis_db.set(f"rb:msg:{message_id}", json.dumps({"id": message_id, "destination": "crm",
                                                         "dispatch_id": dispatch_id, "sequence": sequence,
                                                         "body": body, "created_at": time.time()}))
        redis_db.rpush(outbox_key(dispatch_id, "crm"), f"rb:msg:{message_id}")
        ids.append(message_id)
    redis_db.zadd("rb:due", {f"deliver|{dispatch_id}|crm": time.time()})
    return ids


def test_a_delivery_run_starts_no_attempt_it_cannot_finish_within_its_budget(redis_db):
    from integration.writeback.deliver import deliver_outbox

    app, state = writeback_receiver(WRITEBACK_SECRET)
    state["delay"] = 0.6
    ids = _outbox_with(redis_db, "dsp_budget", 3)
    with ThreadServer(app) as receiver:
        config = {"url": receiver.url + "/status", "secret": WRITEBACK_SECRET}
        outcome = deliver_outbox(redis_db, "dsp_budget", "crm", config, 3, timeout=1.0, budget=1.5)
        assert outcome == "yielded" and [m["id"] for m in state["messages"]] == ids[:1]
        due = redis_db.zscore("rb:due", "deliver|dsp_budget|crm")
        assert due is not None and due <= time.time()  # the rest is due again at once, for a fresh run
        assert deliver_outbox(redis_db, "dsp_budget", "crm", config, 3, timeout=1.0, budget=20) == "empty"
    assert [m["id"] for m in state["messages"]] == ids


def test_the_attempt_is_on_record_before_the_receiver_sees_it_and_an_interrupted_one_counts(redis_db):
    from flask import Flask, Response

    from integration.writeback.deliver import deliver_outbox

    (message_id,) = _outbox_with(redis_db, "dsp_record", 1)
    seen = []
    app = Flask("recorder")

    @app.post("/status")
    def receive() -> Response:
        seen.append({k.decode(): v.decode() for k, v in redis_db.hgetall(f"rb:msg:{message_id}:attempts").items()})
        return Response("{}", 500, mimetype="application/json")

    with ThreadServer(app) as receiver:
        config = {"url": receiver.url + "/status", "secret": WRITEBACK_SECRET}
        assert deliver_outbox(redis_db, "dsp_record", "crm", config, 3, retry_scale=0.0001).startswith("retry_in_")
        assert seen[0]["count"] == "1" and seen[0]["sending"] == "1"
        # A worker killed mid-send leaves the attempt unfinished: the next run counts it as failed.
        redis_db.hset(f"rb:msg:{message_id}:attempts", mapping={"count": 2, "sending": 1})
        redis_db.delete("rb:outbox:dsp_record:crm:not_before")
        assert deliver_outbox(redis_db, "dsp_record", "crm", config, 3, retry_scale=0.0001).startswith("retry_in_")
    assert len(seen) == 1  # not sent again: the interrupted attempt was a failure with its own wait
    attempts = {k.decode(): v.decode() for k, v in redis_db.hgetall(f"rb:msg:{message_id}:attempts").items()}
    assert attempts["count"] == "2" and attempts["last"] == "no answer: the attempt was interrupted"
    assert redis_db.hget("rb:destination:crm", "failures") == b"2"


def test_a_lone_surrogate_in_a_crm_value_is_delivered_escaped_and_signed(redis_db):
    """Security review F3: "\\ud800" is valid JSON text, so a CRM value can hold it, but it has no UTF-8 form.
    The body is ASCII JSON (an escape), signed over exactly those bytes; the outbox moves on."""
    from integration.writeback.deliver import deliver_outbox

    hostile = "deal \ud800 x"
    first, second = _outbox_with(redis_db, "dsp_surrogate", 2)
    for message_id, object_id in ((first, hostile), (second, "42")):
        message = json.loads(redis_db.get(f"rb:msg:{message_id}"))
        message["body"]["data"]["crm"] = {"object_id": object_id}
        redis_db.set(f"rb:msg:{message_id}", json.dumps(message))
    template = BodyTemplate.from_mapping({"objectId": "{{ data.crm.object_id }}",
                                          "note": "id {{ data.crm.object_id }} \u00e9", "status": "{{ data.status }}"})
    app, state = writeback_receiver(WRITEBACK_SECRET)
    with ThreadServer(app) as receiver:
        config = {"url": receiver.url + "/status", "secret": WRITEBACK_SECRET}
        assert deliver_outbox(redis_db, "dsp_surrogate", "crm", config, 3, body_template=template) == "empty"
    assert state["refused"] == 0 and [m["id"] for m in state["messages"]] == [first, second]
    assert state["messages"][0]["body"] == {"objectId": hostile, "note": f"id {hostile} \u00e9", "status": "accepted"}
    assert state["messages"][1]["body"]["objectId"] == "42"
    message["body"]["data"]["crm"]["object_id"] = hostile
    assert render_body(None, message["body"]).isascii()  # the default body too
    assert json.loads(render_body(None, message["body"]))["data"]["crm"]["object_id"] == hostile


def test_a_half_open_circuit_lets_one_delivery_probe_and_a_failure_reopens_it_once(redis_db):
    """New-user trial: when a circuit closed again, every outbox waiting for it sent at once (8
    "probes"), and each of their failures doubled the cooldown again: 60 s became 30 min in two
    minutes. Now one delivery probes; the others wait for its answer; one failure reopens once."""
    import threading

    from integration.writeback import destinations
    from integration.writeback.deliver import deliver_outbox

    app, state = writeback_receiver(WRITEBACK_SECRET)
    state["delay"], state["fail"] = 0.5, [500] * 10
    _outbox_with(redis_db, "dsp_probe_a", 1)
    _outbox_with(redis_db, "dsp_probe_b", 1)
    redis_db.hset(destinations.health_key("crm"), mapping={"failures": 5, "opens": 1, "open_until": time.time() - 1})
    with ThreadServer(app) as receiver:
        config = {"url": receiver.url + "/status", "secret": WRITEBACK_SECRET}
        outcomes = {}
        probe = threading.Thread(target=lambda: outcomes.update(a=deliver_outbox(redis_db, "dsp_probe_a", "crm",
                                                                                 config, 3)))
        probe.start()
        time.sleep(0.2)  # the probe is waiting for the receiver's answer
        outcomes["b"] = deliver_outbox(redis_db, "dsp_probe_b", "crm", config, 3)
        probe.join()
    assert outcomes["b"] == "circuit_half_open" and state["attempts"] == 1  # one probe, not two
    assert outcomes["a"].startswith("retry_in_")
    health = destinations.health(redis_db, "crm")
    assert health["circuit"] == "open" and int(redis_db.hget(destinations.health_key("crm"), "opens")) == 2
    first_until = health["open_until"]
    for _ in range(3):  # attempts that were in flight when it opened: counted, not reopening it again
        destinations.record_failure(redis_db, "crm", "HTTP 500")
    assert destinations.health(redis_db, "crm")["open_until"] == first_until
    assert int(redis_db.hget(destinations.health_key("crm"), "opens")) == 2
    assert redis_db.exists(destinations.probe_key("crm")) == 0  # the probe is over


def test_writeback_retry_scale_scales_the_circuit_cooldown_too_as_documented(redis_db):
    """WRITEBACK_RETRY_SCALE shortens (or stretches) the circuit breaker's cool-down as well as
    the retry schedule: what README, .env.example and app.json say where the setting is described."""
    from integration.writeback import destinations
    from tests.conftest import ROOT

    for _ in range(destinations.FAILURES_TO_OPEN):
        until = destinations.record_failure(redis_db, "crm", "HTTP 500", scale=0.01)
    assert 0 < until - time.time() <= destinations.BASE_COOLDOWN * 0.01 + 0.1
    row = next(line for line in (ROOT / "README.md").read_text().splitlines()
               if line.startswith("| `WRITEBACK_RETRY_SCALE` |"))
    described = json.loads((ROOT / "app.json").read_text())["env"]["WRITEBACK_RETRY_SCALE"]["description"]
    before = (ROOT / ".env.example").read_text().split("# WRITEBACK_RETRY_SCALE=")[0].splitlines()
    comment = " ".join(before[-2:])  # its comment: the lines right above it
    for text in (row, described, comment):
        assert "retry schedule" in text and "cool-down" in text, text
