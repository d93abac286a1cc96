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
from integration.rules.templates import RenderError, Template
from integration.writeback import destinations
from integration.writeback.body import render_body

log = logging.getLogger(__name__)
# After the first attempt fails: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (Standard Webhooks / Svix).
RETRY_SCHEDULE = [5, 300, 1800, 7200, 18000, 36000, 36000]
TIMEOUT = (5.0, 15.0)
MAX_RESPONSE_BYTES = 64 * 1024


def send(url: str, secret: str, message: dict[str, Any], session: requests.Session | None = None,
         now: float | None = None, body: bytes | None = None) -> tuple[int | None, float | None, str]:
    """POST one signed message; (HTTP status or None, Retry-After seconds, short outcome text)."""
    body = (body or render_body(None, message["body"])).decode("utf-8")
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    headers = {"Content-Type": "application/json", "User-Agent": "revor-bridge",
               "webhook-id": message["id"], "webhook-timestamp": str(int(moment.timestamp())),
               "webhook-signature": Webhook(secret).sign(message["id"], moment, body)}
    http = session or requests
    try:
        response = http.post(url, data=body.encode("utf-8"), headers=headers, timeout=TIMEOUT, allow_redirects=False,
                             stream=True)
        response.raw.read(MAX_RESPONSE_BYTES, decode_content=True)
        response.close()
    except requests.RequestException as exc:
        return None, None, f"no answer ({type(exc).__name__})"
    return response.status_code, parse_retry_after(response.headers.get("Retry-After")), f"HTTP {response.status_code}"


def deliver_outbox(connection: Any, dispatch_id: str, destination: str, config: dict[str, Any] | None,
                   lease_seconds: float, session: requests.Session | None = None, retry_scale: float = 1.0,
                   body_template: Template | None = None) -> str:
    """Send what the outbox holds, in order; returns what happened (for logs and tests)."""
    member = delivery_member(dispatch_id, destination)
    lock = leases.Lock(connection, f"deliver:{member}", lease_seconds)
    if not lock.acquire():
        return "busy"
    try:
        outbox = outbox_key(dispatch_id, destination)
        not_before = float(connection.get(f"{outbox}:not_before") or 0)
        if not_before > time.time():
            # A retry is scheduled: a newer state change must not jump the queue or the wait.
            leases.hold(connection, leases.DELIVER, member, not_before - time.time())
            return "waiting"
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
            state = destinations.health(connection, destination)
            if state["disabled"]:
                _give_up(connection, outbox, destination, message_key, "destination disabled: " +
                         (state["disabled_reason"] or "410 Gone"))
                continue
            if state["circuit"] == "open":
                leases.hold(connection, leases.DELIVER, member, state["open_until"] - time.time())
                return "circuit_open"
            try:
                body = render_body(body_template, message["body"])
            except RenderError as exc:
                _give_up(connection, outbox, destination, message_key, f"body template: {exc}")
                continue
            leases.hold(connection, leases.DELIVER, member, lease_seconds)
            status, retry_after, outcome = send(config["url"], config["secret"], message, session, body=body)
            attempts = connection.hincrby(f"{message_key}:attempts", "count", 1)
            connection.hset(f"{message_key}:attempts", mapping={"last": outcome, "at": f"{time.time():.3f}"})
            if status is not None and 200 <= status < 300:
                destinations.record_success(connection, destination)
                connection.lpop(outbox)
                connection.delete(f"{outbox}:not_before")
                continue
            if status == 410:
                # The reason leaves the URL out: a catch-hook URL is itself a secret.
                destinations.disable(connection, destination, f"410 Gone at {state_now()}")
                log.error("WRITE-BACK DESTINATION %s DISABLED: it answered 410 Gone. Its messages go to the dead "
                          "letters until `revor-bridge deliveries enable %s`.", destination, destination)
                _give_up(connection, outbox, destination, message_key, "410 Gone: destination disabled")
                continue
            open_until = destinations.record_failure(connection, destination, outcome, retry_scale)
            if attempts > len(RETRY_SCHEDULE):
                _give_up(connection, outbox, destination, message_key,
                         f"no 2xx after {attempts} attempts; last: {outcome}")
                leases.hold(connection, leases.DELIVER, member, max(0.0, open_until - time.time()))
                return "dead_letter"
            wait = RETRY_SCHEDULE[attempts - 1] * retry_scale
            if retry_after is not None and status in (429, 503):
                wait = max(wait, retry_after)
            wait = max(wait, open_until - time.time())
            connection.set(f"{outbox}:not_before", f"{time.time() + wait:.3f}", ex=int(wait) + 86400)
            leases.hold(connection, leases.DELIVER, member, wait)
            log.info("write-back %s to %s: %s; attempt %d, next in %.1f s", message["id"], destination, outcome,
                     attempts, wait)
            return f"retry_in_{wait:.1f}"
    finally:
        lock.release()


def state_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _give_up(connection: Any, outbox: str, destination: str, message_key: str, reason: str) -> None:
    destinations.dead_letter(connection, destination, message_key, reason)
    connection.lpop(outbox)
    log.warning("write-back %s to %s moved to the dead letters: %s", message_key.removeprefix("rb:msg:"),
                destination, reason)
