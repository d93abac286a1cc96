"""`GET /metrics`: Prometheus text format, counts only (no ids, no recipients, no secrets)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from rq import Queue

from integration.dispatches import state
from integration.scheduler import units
from integration.writeback import destinations

metrics = Blueprint("metrics", __name__)


@metrics.get("/metrics")
def prometheus() -> Response:
    connection = current_app.extensions["revor_bridge.redis"]
    rules = current_app.extensions.get("revor_bridge.rules")
    lines = ["# HELP revor_bridge_dispatches Dispatches by current status.",
             "# TYPE revor_bridge_dispatches gauge"]
    for status in state.RANK:
        lines.append(f'revor_bridge_dispatches{{status="{status}"}} {connection.zcard(state.STATUS_INDEX + status)}')
    lines += ["# HELP revor_bridge_queue_jobs RQ jobs by queue and state.", "# TYPE revor_bridge_queue_jobs gauge"]
    for name in ("high", "default", "low"):
        queue = Queue(name, connection=connection, serializer="json")
        for label, count in (("queued", queue.count), ("failed", queue.failed_job_registry.count),
                             ("scheduled", queue.scheduled_job_registry.count)):
            lines.append(f'revor_bridge_queue_jobs{{queue="{name}",state="{label}"}} {count}')
    counts = units.counts(connection)
    lines += ["# HELP revor_bridge_units Units of work by kind and state (waiting: not yet due; due; claimed).",
              "# TYPE revor_bridge_units gauge"]
    for kind in units.KINDS:
        for label, count in counts[kind].items():
            lines.append(f'revor_bridge_units{{kind="{kind}",state="{label}"}} {count}')
    lines += ["# HELP revor_bridge_oldest_due_seconds How long the oldest due unit has waited.",
              "# TYPE revor_bridge_oldest_due_seconds gauge",
              f"revor_bridge_oldest_due_seconds {counts['oldest_due_seconds']}",
              "# HELP revor_bridge_recovered_units_total Claims that ran out (a worker died or hung).",
              "# TYPE revor_bridge_recovered_units_total counter",
              f"revor_bridge_recovered_units_total {counts['recovered_total']}"]
    lines += ["# HELP revor_bridge_destination_up 1 when a write-back destination is healthy (circuit closed, "
              "enabled).", "# TYPE revor_bridge_destination_up gauge",
              "# HELP revor_bridge_dead_letters Messages in a destination's dead-letter list.",
              "# TYPE revor_bridge_dead_letters gauge"]
    for name in (rules.destinations if rules else {}):
        health = destinations.health(connection, name)
        up = int(not health["disabled"] and health["circuit"] == "closed")
        lines.append(f'revor_bridge_destination_up{{destination="{name}"}} {up}')
        lines.append(f'revor_bridge_dead_letters{{destination="{name}"}} {health["dead_letters"]}')
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")
