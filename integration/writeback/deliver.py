"""Delivering status messages: per dispatch and destination, in sequence order, signed.

Each (dispatch, destination) has an outbox list in Redis, filled by the state machine in the
same step as the state change. A delivery run sends the head of the outbox and removes it only
after a 2xx, then the next; a failure leaves it at the head, so a later status is never sent
before an earlier one. Retries follow the schedule below, measured from the failure, honouring
`Retry-After`; the outbox's lease deadline is the next attempt time.

Only URLs from the rules file are called, redirects are never followed, response bodies are
read with a cap, and nothing secret is logged.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import requests
from standardwebhooks import Webhook

from integration.dispatches.state import delivery_member, outbox_key
from integration.jobs import leases
from integration.revor.client import parse_retry_after

log = logging.getLogger(__name__)
# After the first attempt fails: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (Standard Webhooks / Svix).
RETRY_SCHEDULE = [5, 300, 1800, 7200, 18000, 36000, 36000]
TIMEOUT = (5.0, 15.0)
MAX_RESPONSE_BYTES = 64 * 1024


def send(url: str, secret: str, message: dict[str, Any], session: requests.Session | None = None,
         now: float | None = None) -> tuple[int | None, float | None, str]:
    """POST one signed message; (HTTP status or None, Retry-After seconds, short outcome text)."""
    body = json.dumps(message["body"], separators=(",", ":"))
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    headers = {"Content-Type": "application/json", "User-Agent": "revor-bridge",
               "webhook-id": message["id"], "webhook-timestamp": str(int(moment.timestamp())),
               "webhook-signature": Webhook(secret).sign(message["id"], moment, body)}
    http = session or requests
    try:
        response = http.post(url, data=body.encode(), headers=headers, timeout=TIMEOUT, allow_redirects=False,
                             stream=True)
        response.raw.read(MAX_RESPONSE_BYTES, decode_content=True)
        response.close()
    except requests.RequestException as exc:
        return None, None, f"no answer ({type(exc).__name__})"
    return response.status_code, parse_retry_after(response.headers.get("Retry-After")), f"HTTP {response.status_code}"


def deliver_outbox(connection: Any, dispatch_id: str, destination: str, config: dict[str, Any] | None,
                   lease_seconds: float, session: requests.Session | None = None, retry_scale: float = 1.0) -> str:
    """Send what the outbox holds, in order; returns what happened (for logs and tests)."""
    member = delivery_member(dispatch_id, destination)
    lock = leases.Lock(connection, f"deliver:{member}", lease_seconds)
    if not lock.acquire():
        return "busy"
    try:
        outbox = outbox_key(dispatch_id, destination)
        while True:
            head = connection.lindex(outbox, 0)
            if head is None:
                leases.release(connection, leases.DELIVER, member)
                return "empty"
            if config is None:
                leases.hold(connection, leases.DELIVER, member, 3600)
                log.warning("write-back: destination %s is not in the rules file; %s waits", destination, member)
                return "no_destination"
            message_key = head.decode()
            raw = connection.get(message_key)
            if raw is None:  # expired or removed: nothing to send for this entry
                connection.lpop(outbox)
                continue
            message = json.loads(raw)
            leases.hold(connection, leases.DELIVER, member, lease_seconds)
            status, retry_after, outcome = send(config["url"], config["secret"], message, session)
            attempts = connection.hincrby(f"{message_key}:attempts", "count", 1)
            connection.hset(f"{message_key}:attempts", mapping={"last": outcome, "at": f"{time.time():.3f}"})
            if status is not None and 200 <= status < 300:
                connection.lpop(outbox)
                continue
            wait = RETRY_SCHEDULE[min(attempts - 1, len(RETRY_SCHEDULE) - 1)] * retry_scale
            if retry_after is not None and status in (429, 503):
                wait = max(wait, retry_after)
            leases.hold(connection, leases.DELIVER, member, wait)
            log.info("write-back %s to %s: %s; attempt %d, next in %s s", message["id"], destination, outcome,
                     attempts, wait)
            return f"retry_in_{wait}"
    finally:
        lock.release()
