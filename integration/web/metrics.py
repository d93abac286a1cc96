"""`GET /metrics`: Prometheus text format 0.0.4, counts only (no ids, no recipients, no secrets).

Counters come from Redis (integration/metrics.py: every web and worker process adds to the same
ones), gauges are read from the state itself at scrape time. With METRICS_TOKEN set, a scrape
must send `Authorization: Bearer <METRICS_TOKEN>`; without it the endpoint is open, as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis
from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from rq import Queue

from integration import metrics as counters
from integration.dispatches import state
from integration.inbound.signatures import safe_equal
from integration.scheduler import units
from integration.writeback import destinations

metrics = Blueprint("metrics", __name__)
PREFIX = "revor_bridge_"


@dataclass
class Family:
    """One metric family: its HELP and TYPE lines, then its samples, together (as the format asks)."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: list[tuple[str, dict[str, str], float | int]] = field(default_factory=list)

    def add(self, value: float | int, suffix: str = "", **labels: Any) -> None:
        self.samples.append((suffix, {k: str(v) for k, v in labels.items()}, value))


def escape_label(value: str) -> str:
    """A label value as the text format writes it: backslash, double quote and line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _value(value: float | int) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if value != value:  # NaN
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(families: list[Family]) -> str:
    lines: list[str] = []
    for family in families:
        lines += [f"# HELP {family.name} {_escape_help(family.help)}", f"# TYPE {family.name} {family.kind}"]
        for suffix, labels, value in family.samples:
            text = ",".join(f'{name}="{escape_label(label)}"' for name, label in labels.items())
            lines.append(f"{family.name}{suffix}{{{text}}} {_value(value)}" if text
                         else f"{family.name}{suffix} {_value(value)}")
    return "\n".join(lines) + "\n"


def counter_families(snapshot: dict[str, Any]) -> list[Family]:
    """The counters of integration/metrics.py (`snapshot`) as Prometheus families."""
    events = Family(PREFIX + "events_total", "counter",
                    "Events by source and outcome: at the door stored, duplicate, ignored (a batch item not "
                    "handled) or rejected (a refused request, once per request); when a worker is done "
                    "processed, skipped or failed.")
    for row in snapshot["events"]:
        events.add(row["value"], source=row["source"], outcome=row["outcome"])
    transitions = Family(PREFIX + "dispatch_transitions_total", "counter",
                         "Dispatch state changes by new status and rule (pending: created).")
    for row in snapshot["transitions"]:
        transitions.add(row["value"], status=row["status"], rule=row["rule"])
    calls = Family(PREFIX + "revor_requests_total", "counter",
                   "HTTP requests to Revor by endpoint and status (the HTTP status, or error: no answer).")
    for row in snapshot["revor_requests"]:
        calls.add(row["value"], endpoint=row["endpoint"], status=row["status"])
    seconds = Family(PREFIX + "revor_request_seconds", "histogram", "Duration of the HTTP requests to Revor.")
    for entry in snapshot["revor_request_seconds"]:
        for bound, cumulative in entry["buckets"].items():
            seconds.add(cumulative, "_bucket", endpoint=entry["endpoint"], le=bound)
        seconds.add(float(entry["sum"]), "_sum", endpoint=entry["endpoint"])
        seconds.add(entry["count"], "_count", endpoint=entry["endpoint"])
    writebacks = Family(PREFIX + "writeback_attempts_total", "counter",
                        "Write-back attempts by destination and outcome: delivered, retry, dead (no retry "
                        "left) or gone (410: destination disabled).")
    for row in snapshot["writeback_attempts"]:
        writebacks.add(row["value"], destination=row["destination"], outcome=row["outcome"])
    return [events, transitions, calls, seconds, writebacks]


def gauge_families(connection: redis.Redis, destination_names: list[str]) -> list[Family]:
    """What stands now: dispatches by status, the queues, the destinations' health."""
    dispatches = Family(PREFIX + "dispatches", "gauge", "Dispatches by current status.")
    for status in state.RANK:
        dispatches.add(connection.zcard(state.STATUS_INDEX + status), status=status)
    jobs = Family(PREFIX + "queue_jobs", "gauge", "RQ jobs by queue and state.")
    for name in ("high", "default", "low"):
        queue = Queue(name, connection=connection, serializer="json")
        for label, count in (("queued", queue.count), ("failed", queue.failed_job_registry.count),
                             ("scheduled", queue.scheduled_job_registry.count)):
            jobs.add(count, queue=name, state=label)
    found = units.counts(connection)
    depth = Family(PREFIX + "units", "gauge",
                   "Units of work by kind and state (waiting: not yet due; due; claimed: running).")
    for kind in units.KINDS:
        for label, count in found[kind].items():
            depth.add(count, kind=kind, state=label)
    oldest = Family(PREFIX + "oldest_due_seconds", "gauge",
                    "How long the oldest due unit has waited for a worker (0 when none waits).")
    oldest.add(float(found["oldest_due_seconds"]))
    recovered = Family(PREFIX + "recovered_units_total", "counter", "Claims that ran out (a worker died or hung).")
    recovered.add(found["recovered_total"])
    up = Family(PREFIX + "destination_up", "gauge",
                "1 when a write-back destination is healthy (circuit closed, enabled).")
    circuit = Family(PREFIX + "circuit_open", "gauge", "1 while a write-back destination's circuit is open.")
    dead = Family(PREFIX + "dead_letters", "gauge", "Messages in a destination's dead-letter list.")
    open_count = 0
    for name in destination_names:
        health = destinations.health(connection, name)
        is_open = health["circuit"] == "open"
        open_count += is_open
        up.add(int(not health["disabled"] and not is_open), destination=name)
        circuit.add(int(is_open), destination=name)
        dead.add(health["dead_letters"], destination=name)
    circuits = Family(PREFIX + "circuits_open", "gauge", "Write-back destinations whose circuit is open.")
    circuits.add(open_count)
    return [dispatches, jobs, depth, oldest, recovered, up, circuit, circuits, dead]


@metrics.before_request
def require_metrics_token() -> ResponseReturnValue | None:
    token = current_app.extensions["revor_bridge.settings"].metrics_token
    if token is None:
        return None
    header = request.headers.get("Authorization") or ""
    if header[:7].lower() != "bearer " or not safe_equal(token.get(), header[7:].strip()):
        response = jsonify(error={"code": "unauthorized", "message": "send Authorization: Bearer <METRICS_TOKEN>"})
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response, 401
    return None


@metrics.get("/metrics")
def prometheus() -> Response:
    connection = current_app.extensions["revor_bridge.redis"]
    rules = current_app.extensions.get("revor_bridge.rules")
    families = counter_families(counters.snapshot(connection))
    families += gauge_families(connection, list(rules.destinations) if rules else [])
    return Response(render(families), mimetype="text/plain; version=0.0.4")
