"""Issue 11 item 4: `/metrics` answers "is it healthy" with counters every process adds to.

The counters are proven by real traffic: webhooks into the web app over HTTP, a real
`revor-bridge worker` process against the Revor sandbox, a write-back receiver that fails once.
Every scrape is parsed with prometheus_client's own parser (text format 0.0.4).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from integration import metrics
from integration.dispatches import state
from integration.revor import RevorClient
from integration.settings import Secret, Settings, SettingsError
from integration.storage import free_port
from tests.conftest import ROOT, bridge_settings, sandbox_requests
from tests.test_pipeline import RULES, ZAP_HEADERS, _stack, settle, zap

METRICS_TOKEN = "metrics-token-0123456789"


@pytest.fixture
def pipeline(tmp_path, make_bridge, redis_url, redis_db):
    """test_pipeline.py's stack: sandbox, receiver, the web app over HTTP and worker processes."""
    with _stack(tmp_path, make_bridge, redis_url, redis_db, RULES, {}) as stack:
        yield stack


def scrape(url: str, token: str | None = None) -> dict[tuple[str, frozenset], float]:
    """GET /metrics and parse it strictly: every sample by name and labels."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = requests.get(url + "/metrics", headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(answer.text)


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in found, f"sample twice: {key}"
            found[key] = sample.value
    return found


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def family(samples: dict, name: str) -> dict[frozenset, float]:
    return {labels: v for (found, labels), v in samples.items() if found == name}


def endpoint_of(entry: dict) -> str:
    """The bridge's endpoint label for a request the sandbox logged (its paths carry /api/v1)."""
    return metrics.revor_endpoint(entry["method"], entry["path"].removeprefix("/api/v1"))


def test_counters_after_known_traffic_through_the_real_pipeline(pipeline):
    """One event stored, the same again (duplicate), one with a bad token (rejected); its dispatch
    goes pending -> accepted -> ... -> succeeded; its write-backs are delivered after one 500.
    Every counter equals what really happened: the sandbox's request log, the dispatch's
    timeline, the receiver's attempts."""
    stack = pipeline
    stack["receiver"]["fail"] = [500]
    stack["start_worker"]()
    bridge = stack["bridge"]
    assert bridge.post("/webhooks/generic/zapier", zap(1), ZAP_HEADERS).status_code == 200
    assert bridge.post("/webhooks/generic/zapier", zap(1), ZAP_HEADERS).json()["duplicate"] == 1
    bad = bridge.post("/webhooks/generic/zapier", zap(2), {**ZAP_HEADERS, "X-Hook-Token": "wrong-token-000000"})
    assert bad.status_code == 401
    found = settle(stack, expected=1)
    [(dispatch_id, record)] = found.items()
    assert record["status"] == "succeeded" and record["rule"] == "zap-won"

    calls = [r for r in sandbox_requests(stack["sandbox"]) if endpoint_of(r) != "other"]
    expected_calls = Counter((endpoint_of(r), str(r["status"])) for r in calls)
    assert expected_calls[("create_dispatch", "202")] == 1 and expected_calls[("get_job", "200")] >= 1
    deadline = time.monotonic() + 30
    while True:  # the worker adds its Revor tally at the end of each run
        samples = scrape(bridge.url)
        seen = {(dict(k)["endpoint"], dict(k)["status"]): v
                for k, v in family(samples, "revor_bridge_revor_requests_total").items()}
        if seen == expected_calls or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert seen == expected_calls

    zapier = "generic:zapier"
    assert {dict(k)["outcome"]: v for k, v in family(samples, "revor_bridge_events_total").items()
            if dict(k)["source"] == zapier} == {"stored": 1, "duplicate": 1, "rejected": 1, "processed": 1}

    timeline = Counter(entry["status"] for entry in state.timeline(stack["redis"], dispatch_id))
    assert timeline["pending"] == timeline["accepted"] == timeline["succeeded"] == 1
    transitions = {dict(k)["status"]: v for k, v in family(samples, "revor_bridge_dispatch_transitions_total").items()
                   if dict(k)["rule"] == "zap-won"}
    assert transitions == dict(timeline)

    for endpoint in ("create_dispatch", "get_job"):
        total = sum(n for (where, _), n in expected_calls.items() if where == endpoint)
        assert value(samples, "revor_bridge_revor_request_seconds_count", endpoint=endpoint) == total
        buckets = [value(samples, "revor_bridge_revor_request_seconds_bucket", endpoint=endpoint, le=le)
                   for le in ("0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf")]
        assert buckets == sorted(buckets) and buckets[-1] == total  # cumulative, +Inf = count
        assert 0 < value(samples, "revor_bridge_revor_request_seconds_sum", endpoint=endpoint) < 10 * total

    receiver = stack["receiver"]
    delivered = len(receiver["messages"])
    assert delivered == sum(v for k, v in timeline.items() if k != "pending")  # one per state change but pending
    assert receiver["attempts"] == delivered + 1
    assert {dict(k)["outcome"]: v for k, v in family(samples, "revor_bridge_writeback_attempts_total").items()
            if dict(k)["destination"] == "crm"} == {"delivered": delivered, "retry": 1}

    assert value(samples, "revor_bridge_circuits_open") == 0
    assert value(samples, "revor_bridge_circuit_open", destination="crm") == 0
    assert value(samples, "revor_bridge_destination_up", destination="crm") == 1
    assert value(samples, "revor_bridge_oldest_due_seconds") == 0
    assert value(samples, "revor_bridge_dispatches", status="succeeded") == 1


# Run in two processes at once: each counts 3 Revor calls and one write-back in the same counters.
COUNTING_PROCESS = """
import sys
import redis
from integration import metrics
connection = redis.Redis.from_url(sys.argv[1])
tally = metrics.Tally()
for seconds in (0.01, 0.07, 12.0):
    tally.revor_request("get_job", "200", seconds)
tally.flush(connection)
with connection.pipeline(transaction=False) as pipe:
    metrics.count(pipe, metrics.writeback_field("crm", "delivered"))
    pipe.execute()
"""


def test_counters_add_up_across_processes(redis_url, redis_db):
    """Two processes increment the same counters; any web process's /metrics shows the sum, and
    the histogram's buckets are cumulative with +Inf equal to its count."""
    procs = [subprocess.Popen([sys.executable, "-c", COUNTING_PROCESS, f"{redis_url}/1"], cwd=ROOT)
             for _ in range(2)]
    assert [proc.wait(timeout=30) for proc in procs] == [0, 0]
    from integration.web import create_app

    for _ in range(2):  # two web apps, as two gunicorn workers: the same answer
        answer = create_app(bridge_settings(redis_url)).test_client().get("/metrics")
        samples = parse(answer.get_data(as_text=True))
        assert value(samples, "revor_bridge_revor_requests_total", endpoint="get_job", status="200") == 6
        assert value(samples, "revor_bridge_writeback_attempts_total", destination="crm", outcome="delivered") == 2
        histogram = {le: value(samples, "revor_bridge_revor_request_seconds_bucket", endpoint="get_job", le=le)
                     for le in ("0.05", "0.1", "5.0", "10.0", "+Inf")}
        assert histogram == {"0.05": 2, "0.1": 4, "5.0": 4, "10.0": 4, "+Inf": 6}
        assert value(samples, "revor_bridge_revor_request_seconds_count", endpoint="get_job") == 6
        assert value(samples, "revor_bridge_revor_request_seconds_sum", endpoint="get_job") == pytest.approx(24.16)


def test_label_values_are_escaped(redis_url, redis_db):
    """A label value with a quote, a backslash and a line feed comes back exactly through
    prometheus_client's parser (rule names cannot hold them today; a counter may outlive that)."""
    from integration.web import create_app

    odd = 'we"ird\\rule\nname'
    with redis_db.pipeline() as pipe:
        metrics.count(pipe, metrics.transition_field("accepted", odd), 3)
        pipe.hset(metrics.KEY, "not json", 1)  # a stray field is skipped, never a broken scrape
        pipe.execute()
    text = create_app(bridge_settings(redis_url)).test_client().get("/metrics").get_data(as_text=True)
    assert 'rule="we\\"ird\\\\rule\\nname"' in text
    samples = parse(text)
    assert value(samples, "revor_bridge_dispatch_transitions_total", status="accepted", rule=odd) == 3


def test_metrics_token_on_and_off(redis_url, redis_db):
    from integration.web import create_app

    open_app = create_app(bridge_settings(redis_url)).test_client()
    assert open_app.get("/metrics").status_code == 200
    guarded = create_app(bridge_settings(redis_url, metrics_token=Secret(METRICS_TOKEN))).test_client()
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": METRICS_TOKEN}):
        refused = guarded.get("/metrics", headers=headers)
        assert refused.status_code == 401 and refused.is_json
        assert refused.get_json() == {"error": {"code": "unauthorized",
                                                "message": "send Authorization: Bearer <METRICS_TOKEN>"}}
        assert METRICS_TOKEN not in refused.get_data(as_text=True)
    allowed = guarded.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert allowed.status_code == 200 and "revor_bridge_events_total" in allowed.get_data(as_text=True)
    assert Settings.from_env({"METRICS_TOKEN": METRICS_TOKEN}).metrics_token.get() == METRICS_TOKEN
    with pytest.raises(SettingsError, match="^METRICS_TOKEN: too short, expected at least 16 characters$"):
        Settings.from_env({"METRICS_TOKEN": "short"})


def test_a_revor_request_without_an_answer_is_observed_as_error():
    """Connection refused on loopback: the observer hears `error` with the time it took."""
    heard = []
    with RevorClient(f"http://127.0.0.1:{free_port()}/api/v1", "sk-revor-test", connect_timeout=1,
                     observe=lambda *args: heard.append(args)) as client:
        with pytest.raises(Exception, match="connection failed"):
            client.list_accounts()
    [(endpoint, status, seconds)] = heard
    assert (endpoint, status) == ("list_accounts", "error") and 0 <= seconds < 5


def test_snapshot_reads_every_family_for_the_dashboard(redis_db):
    """`metrics.snapshot(connection)`: rows of labels and values, importable without the web app."""
    with redis_db.pipeline() as pipe:
        metrics.count(pipe, metrics.event_field("hubspot", "stored"), 2)
        metrics.count(pipe, metrics.writeback_field("crm", "dead"))
        pipe.execute()
    tally = metrics.Tally()
    tally.revor_request("create_dispatch", "503", 0.3)
    tally.flush(redis_db)
    found = metrics.snapshot(redis_db)
    assert found["events"] == [{"source": "hubspot", "outcome": "stored", "value": 2}]
    assert found["writeback_attempts"] == [{"destination": "crm", "outcome": "dead", "value": 1}]
    assert found["revor_requests"] == [{"endpoint": "create_dispatch", "status": "503", "value": 1}]
    [seconds] = found["revor_request_seconds"]
    assert seconds["buckets"]["0.25"] == 0 and seconds["buckets"]["0.5"] == 1 and seconds["count"] == 1
    assert json.dumps(found)  # plain JSON for a template or an API


def test_the_readme_lists_every_metric_and_three_alerts_on_real_ones(redis_url, redis_db):
    """README "Metrics and alerts": every family /metrics writes is in its table, and its rules
    file holds three alerts whose expressions name only metrics that exist."""
    import re

    import yaml

    from integration.web import create_app

    text = create_app(bridge_settings(redis_url)).test_client().get("/metrics").get_data(as_text=True)
    names = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n### Metrics and alerts\n", 1)[1].split("\n## ", 1)[0]
    assert sorted(name for name in names if f"`{name}`" not in section) == []
    rules = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))["groups"][0]["rules"]
    assert len(rules) == 3
    samples = names | {name + suffix for name in names for suffix in ("_bucket", "_sum", "_count")}
    for rule in rules:
        used = set(re.findall(r"revor_bridge_\w+", rule["expr"]))
        assert used and used <= samples, (rule["alert"], used - samples)


def test_the_writeback_alert_stays_on_while_a_destination_is_disabled(redis_url, redis_db, tmp_path):
    """A 410 disables a destination until someone enables it: the README's write-back alert must
    fire for as long as that lasts, not only for the hour its `gone` attempt is counted in. The
    disabled destination's circuit is closed, so only `revor_bridge_destination_up == 0` sees it."""
    import re

    import yaml

    from integration.web import create_app
    from integration.writeback import destinations

    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text("version: 1\nrules: []\ndestinations:\n  crm:\n    url: http://127.0.0.1:9/status\n"
                          "    secret: whsec_ZGVtby1zdGF0dXMtc2VjcmV0LTAxMjM0NTY3ODk=\n")
    destinations.disable(redis_db, "crm", "410 Gone at 2026-01-01T00:00:00Z")
    text = create_app(bridge_settings(redis_url, rules_file=rules_file)).test_client().get("/metrics").get_data(
        as_text=True)
    shown = {sample.name: sample.value for family in text_string_to_metric_families(text)
             for sample in family.samples if sample.labels.get("destination") == "crm"}
    assert shown["revor_bridge_destination_up"] == 0 and shown["revor_bridge_circuit_open"] == 0, shown

    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n### Metrics and alerts\n", 1)[1].split("\n## ", 1)[0]
    rules = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))["groups"][0]["rules"]
    [writeback] = [rule for rule in rules if "writeback" in rule["expr"]]
    clauses = [clause.strip() for clause in writeback["expr"].split(" or ")]
    # The clause on a gauge alone (no increase over a window): it holds while the gauge does.
    [down] = [clause for clause in clauses if "revor_bridge_destination_up" in clause]
    found = re.fullmatch(r"(?:min|max) by \(destination\) \(revor_bridge_destination_up\) == (\d)", down)
    assert found and int(found.group(1)) == shown["revor_bridge_destination_up"], down
