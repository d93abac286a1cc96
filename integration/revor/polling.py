"""When to ask Revor about a job again (docs/revor.md, "Job statuses"): shared by the worker and `job --wait`.

No earlier than `next_attempt_at` / `scheduled_at` when they are ahead (pacing can put a job
hours out), then back off while it is queued or scheduled, and poll every second while running.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any


def epoch(value: str | None) -> float | None:
    """Revor's ISO-8601 UTC timestamps as epoch seconds; None when absent or unreadable."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC).timestamp()
    except ValueError:
        return None


def next_poll(job: dict[str, Any], polls: int, now: float | None = None) -> float:
    """Seconds until the next poll of `job`, after `polls` polls so far."""
    now = time.time() if now is None else now
    for field in ("next_attempt_at", "scheduled_at"):
        when = epoch(job.get(field))
        if when is not None and when > now:
            return min(when - now + 0.5, 3600.0)
    if job.get("status") == "running":
        return 1.0
    return float(min(60, 2 ** min(polls, 6)))
