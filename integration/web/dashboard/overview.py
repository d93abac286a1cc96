"""Overview: is it healthy right now? Counts per status, the queue, destinations, Revor's limit."""

from __future__ import annotations

import time
from typing import Any

from flask import current_app
from flask.typing import ResponseReturnValue

from integration.dispatches import state
from integration.dispatches.limits import Limiter
from integration.inbound import records
from integration.scheduler import units
from integration.web.dashboard.blueprint import dashboard, page, redis_connection
from integration.writeback import destinations

WINDOWS = (("last hour", 3600), ("last day", 86400))


def status_counts(connection: Any, prefix: str, statuses: list[str], now: float) -> list[dict[str, Any]]:
    """Per status: how many reached it within each window (the index score is when they did)."""
    with connection.pipeline(transaction=False) as pipe:
        for status in statuses:
            for _label, seconds in WINDOWS:
                pipe.zcount(prefix + status, now - seconds, "+inf")
        replies = pipe.execute()
    rows = []
    for i, status in enumerate(statuses):
        counts = replies[i * len(WINDOWS):(i + 1) * len(WINDOWS)]
        rows.append({"status": status, "counts": counts})
    return rows


@dashboard.get("/")
def overview() -> ResponseReturnValue:
    connection = redis_connection()
    now = time.time()
    rules = current_app.extensions.get("revor_bridge.rules")
    names = list(rules.destinations) if rules else []
    return page("dashboard/overview.html", windows=[label for label, _ in WINDOWS],
                events=status_counts(connection, records.STATUS_INDEX, list(records.LISTABLE), now),
                dispatches=status_counts(connection, state.STATUS_INDEX, list(state.RANK), now),
                queue=units.counts(connection, now), kinds=units.KINDS,
                destinations=[{"name": name, **destinations.health(connection, name)} for name in names],
                revor=Limiter(connection, "revor", current_app.extensions["revor_bridge.settings"].revor_max_rps)
                .state())
