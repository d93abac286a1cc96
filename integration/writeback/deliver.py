"""Delivering status messages: per dispatch and destination, in sequence order, signed.

Each (dispatch, destination) has an outbox list in Redis, filled by the state machine in the
same step as the state change. A delivery run sends the head of the outbox and removes it only
after a 2xx, then the next; a failure leaves it at the head, so a later status is never sent
before an earlier one. Retries follow the schedule below, measured from the failure, honouring
`Retry-After`; the outbox's delivery unit (`deliver|<dispatch>|<destination>`) gets that time as
its next attempt in the scheduler, like every other unit of work.

Every attempt is recorded in Redis before its first byte is sent, and the whole exchange
(connect, send, status line and headers) has one wall-clock deadline, within the run's
budget: a receiver that trickles its answer byte by byte would defeat a per-read socket timeout
and hold the worker's thread for ever.
A timeout is a failure like any other (retry schedule, circuit breaker, dead letter), and an
attempt whose worker died mid-send counts as failed when the next run finds it unfinished.

Only URLs from the rules file are called, redirects are never followed, response bodies are
read with a cap, and nothing secret is logged.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from typing import Any
from urllib.parse import unquote, urlsplit

import requests.certs
from requests.utils import requote_uri
from standardwebhooks import Webhook

from integration import logs, metrics
from integration.context import JobContext
from integration.dispatches.state import EXPIRE_WITH, event_log_ids, expire_with, outbox_key
from integration.revor.client import parse_retry_after
from integration.rules.templates import RenderError, Template
from integration.scheduler import units
from integration.scheduler.lock import Lock
from integration.scheduler.runner import HANDLED, Next, Run
from integration.writeback import destinations
from integration.writeback.body import render_body

log = logging.getLogger(__name__)
# After the first attempt fails: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (Standard Webhooks / Svix).
RETRY_SCHEDULE = [5, 300, 1800, 7200, 18000, 36000, 36000]
CONNECT_TIMEOUT = 5.0
# One attempt, connect to the last header byte (WRITEBACK_TIMEOUT_SECONDS).
DEFAULT_TIMEOUT = 15.0
# One delivery run starts no attempt that could end later than this after the run began.
RUN_BUDGET = 20.0
MAX_RESPONSE_BYTES = 64 * 1024
# While one delivery probes a destination whose circuit just closed, the others look again after this.
PROBE_WAIT = 2.0



class _DeadlineSocket:
    """A connected socket whose every send and receive ends by one wall-clock deadline.

    http.client only needs `sendall`, `makefile` and `close`. Each blocking call waits at most
    `tick` seconds at a time, and every `tick` seconds `keepalive` runs (it extends the delivery's
    lock and lease), so a slow receiver never lets them lapse while a killed worker's lapse soon.
    """

    def __init__(self, sock: Any, deadline: float, tick: float, keepalive: Callable[[], None]) -> None:
        self.sock, self.deadline, self.tick, self.keepalive = sock, deadline, tick, keepalive
        self.kept = time.monotonic()

    def _bounded(self, operation: Callable[[], Any]) -> Any:
        while True:
            now = time.monotonic()
            if now - self.kept >= self.tick:
                self.keepalive()
                self.kept = now
            left = self.deadline - now
            if left <= 0:
                raise TimeoutError("delivery deadline passed")
            self.sock.settimeout(min(left, self.tick))
            try:
                return operation()
            except TimeoutError:
                if self.deadline - time.monotonic() <= 0:
                    raise

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = self._bounded(lambda chunk=view: self.sock.send(chunk))
            view = view[sent:]

    def recv_into(self, buffer: Any) -> int:
        return self._bounded(lambda: self.sock.recv_into(buffer))

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self))

    def close(self) -> None:
        self.sock.close()


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._sock.recv_into(buffer)


@cache
def _tls_context() -> ssl.SSLContext:
    """Certificates checked against the same CA bundle `requests` uses (certifi)."""
    return ssl.create_default_context(cafile=requests.certs.where())


def _post(url: str, body: bytes, headers: dict[str, str], deadline: float, tick: float,
          keepalive: Callable[[], None]) -> tuple[int, float | None]:
    """One POST whose connect, send, status line and headers all end by `deadline`.

    http.client rather than requests: requests' timeout applies to each socket read, and its
    status line and headers are read before any code of ours runs again. Not bounded here: the
    DNS lookup (the system resolver's own timeouts apply); proxies from the environment are not
    used (write-backs go straight to the URL in the rules file).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("write-back URL must be http(s)://host/...")
    target = requote_uri((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    headers = dict(headers)
    if parts.username:  # user:password@host, as requests would send it
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    # Connect and TLS handshake run before the deadline socket (and its keepalive) is in place:
    # keep them within one keepalive tick, so a short BRIDGE_LEASE_SECONDS cannot lapse meanwhile
    # and let a second run count this attempt as interrupted while it is still going.
    keepalive()
    connect_timeout = max(0.001, min(CONNECT_TIMEOUT, tick, deadline - time.monotonic()))
    if parts.scheme == "https":
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=connect_timeout, context=_tls_context())
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=connect_timeout)
    try:
        connection.connect()
        connection.sock = _DeadlineSocket(connection.sock, deadline, tick, keepalive)  # type: ignore[assignment]
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        status, retry_after = response.status, parse_retry_after(response.getheader("Retry-After"))
        try:  # the answer is known; the body is read (capped) only so the receiver can finish
            response.read(MAX_RESPONSE_BYTES)
        except (OSError, http.client.HTTPException):
            pass
        return status, retry_after
    finally:
        connection.close()


def send(url: str, secret: str, message: dict[str, Any], now: float | None = None, body: bytes | None = None,
         timeout: float = DEFAULT_TIMEOUT, deadline: float | None = None, tick: float = 1.0,
         keepalive: Callable[[], None] = lambda: None) -> tuple[int | None, float | None, str]:
    """POST one signed message; (HTTP status or None, Retry-After seconds, short outcome text).

    The whole attempt ends by `deadline` (time.monotonic()), or `timeout` seconds from now.
    """
    started = time.monotonic()
    deadline = started + timeout if deadline is None else deadline
    body = body or render_body(None, message["body"])
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    headers = {"Content-Type": "application/json", "User-Agent": "revor-bridge",
               "webhook-id": message["id"], "webhook-timestamp": str(int(moment.timestamp())),
               "webhook-signature": Webhook(secret).sign(message["id"], moment, body.decode("utf-8"))}
    try:
        status, retry_after = _post(url, body, headers, deadline, tick, keepalive)
    except TimeoutError:
        return None, None, f"timed out: no answer within {time.monotonic() - started:.1f} s"
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return None, None, f"no answer ({type(exc).__name__})"
    return status, retry_after, f"HTTP {status}"


@logs.scoped
def deliver_outbox(connection: Any, dispatch_id: str, destination: str, config: dict[str, Any] | None,
                   lease_seconds: float, retry_scale: float = 1.0, body_template: Template | None = None,
                   timeout: float = DEFAULT_TIMEOUT, budget: float = RUN_BUDGET, claim: int | None = None) -> str:
    """Send what the outbox holds, in order; returns what happened (for logs and tests).

    `claim` is the attempt number of the engine's claim on the unit: its schedule is only changed
    while that claim is still the unit's (units.finish).

    `timeout` bounds one attempt; `budget` the whole run: an attempt is only started when it can
    end within the budget, otherwise the run stops and the unit is due again at once, for a fresh run.
    """
    job_deadline = time.monotonic() + budget
    timeout = min(timeout, budget)
    member = f"{dispatch_id}|{destination}"
    unit = units.deliver_unit(dispatch_id, destination)
    outbox = outbox_key(dispatch_id, destination)
    lock, locked, not_before, head = open_outbox(connection, dispatch_id, destination, lease_seconds)
    if not locked:
        units.again(connection, unit, time.time() + 1.0, counted=False, attempt=claim)
        return "busy"

    def keepalive(pipe: Any = None) -> None:
        """While an attempt waits on the receiver: keep this run's lock and claim from lapsing."""
        lock.extend(pipe)
        units.extend(pipe if pipe is not None else connection, [unit], lease_seconds)

    outcome = "empty"
    try:
        if not_before > time.time():
            # A retry is scheduled: a newer state change must not jump the queue or the wait.
            units.again(connection, unit, not_before, counted=False, attempt=claim)
            outcome = "waiting"
            return outcome
        attempted = False
        while True:
            if head is None:
                return outcome  # "empty": the unit ends with the lock, below
            if config is None:
                units.again(connection, unit, time.time() + 3600, counted=False, attempt=claim)
                log.warning("write-back: destination %s is not in the rules file; %s waits", destination, member)
                outcome = "no_destination"
                return outcome
            message_key = head.decode()
            attempts_key = f"{message_key}:attempts"
            with connection.pipeline(transaction=False) as pipe:  # the message, its last attempt, the health
                pipe.get(message_key)
                pipe.hget(attempts_key, "sending")
                pipe.hgetall(destinations.health_key(destination))
                raw, unfinished, health = pipe.execute()
            if raw is None:  # expired or removed: nothing to send for this entry
                head = _drop_and_next(connection, outbox, message_key)
                continue
            message = json.loads(raw)
            # The status message holds the dispatch's event (its `crm` part): on this delivery's lines.
            data = message["body"].get("data") or {}
            logs.add(revor_job_id=data.get("revor_job_id"), **event_log_ids(data))
            verdict, probing = health_gate(connection, destination, health, outbox, message_key, unit, claim,
                                           member, timeout + 5)
            if verdict == "next":
                head = connection.lindex(outbox, 0)
                continue
            if verdict is not None:
                outcome = verdict
                return outcome
            try:
                body = render_body(body_template, message["body"])
            except RenderError as exc:
                _give_up(connection, outbox, destination, message_key, f"body template: {exc}")
                head = connection.lindex(outbox, 0)
                continue
            if unfinished == b"1":
                attempts = int(connection.hget(attempts_key, "count") or 1)
                outcome = interrupted(connection, outbox, destination, unit, message, message_key, attempts,
                                      retry_scale, claim)
                return outcome
            if attempted and time.monotonic() + timeout > job_deadline:
                # Due again at once, for a fresh run.
                units.again(connection, unit, time.time(), counted=False, attempt=claim)
                outcome = "yielded"
                return outcome
            deadline = min(time.monotonic() + timeout, job_deadline)
            # Counted before the first byte leaves: whatever happens next, this attempt is on record
            # (with the lock and the claim pushed ahead, in the same round trip).
            with connection.pipeline(transaction=False) as pipe:
                keepalive(pipe)
                pipe.hincrby(attempts_key, "count", 1)
                pipe.hset(attempts_key, mapping={"last": "sending", "at": f"{time.time():.3f}", "sending": 1})
                pipe.eval(EXPIRE_WITH, 2, attempts_key, message_key)  # it expires with its message, if that is set
                attempts = int(pipe.execute()[2])
            attempted = True
            status, retry_after, result = send(config["url"], config["secret"], message, body=body,
                                               deadline=deadline, tick=max(0.2, lease_seconds / 3),
                                               keepalive=keepalive)
            if status is not None and 200 <= status < 300:
                # Delivered: the message and its attempts go (the dispatch's timeline keeps the
                # state change); only messages still waiting and dead letters stay in Redis.
                with connection.pipeline(transaction=True) as pipe:
                    mark_delivered(pipe, destination, outbox, message_key)
                    pipe.lindex(outbox, 0)
                    head = pipe.execute()[-1]
                continue
            _record_failed_attempt(connection, attempts_key, result, destination, status, attempts)
            if status == 410:
                # The reason leaves the URL out: a catch-hook URL is itself a secret.
                destinations.disable(connection, destination, f"410 Gone at {state_now()}")
                log.error("WRITE-BACK DESTINATION %s DISABLED: it answered 410 Gone. Its messages go to the dead "
                          "letters until `revor-bridge deliveries enable %s`.", destination, destination)
                _give_up(connection, outbox, destination, message_key, "410 Gone: destination disabled")
                connection.delete(destinations.probe_key(destination))
                head = connection.lindex(outbox, 0)
                continue
            outcome = _failed(connection, outbox, destination, unit, message, message_key, attempts, status,
                              retry_after, result, retry_scale, claim)
            if probing:  # the circuit is open again (recorded above): the probe is over
                connection.delete(destinations.probe_key(destination))
            return outcome
    finally:
        with connection.pipeline(transaction=False) as pipe:  # the lock, and the unit when nothing is left
            lock.release(pipe)
            if outcome == "empty":
                units.finish(pipe, unit, claim)
            pipe.execute()


def open_outbox(connection: Any, dispatch_id: str, destination: str,
                lease_seconds: float) -> tuple[Lock, bool, float, bytes | None]:
    """A delivery run's start on one outbox, in one round trip: its lock (and whether it was
    taken), its retry wait (epoch seconds, 0 when there is none) and its head."""
    lock = Lock(connection, f"deliver:{dispatch_id}|{destination}", lease_seconds)
    outbox = outbox_key(dispatch_id, destination)
    with connection.pipeline(transaction=False) as pipe:
        lock.acquire(pipe)
        pipe.get(f"{outbox}:not_before")
        pipe.lindex(outbox, 0)
        locked, not_before, head = pipe.execute()
    return lock, bool(locked), float(not_before or 0), head


def mark_delivered(pipe: Any, destination: str, outbox: str, message_key: str, outcome: str = "delivered") -> None:
    """Queue on `pipe` what a delivered message leaves behind: the destination healthy (the probe
    over), the message and its attempts gone (the dispatch's timeline keeps the state change), its
    retry wait gone, and the count in /metrics."""
    destinations.record_success(pipe, destination)
    pipe.delete(destinations.probe_key(destination))
    pipe.lrem(outbox, 1, message_key)
    pipe.delete(f"{outbox}:not_before", message_key, f"{message_key}:attempts")
    metrics.count(pipe, metrics.writeback_field(destination, outcome))


def interrupted(connection: Any, outbox: str, destination: str, unit: str, message: dict[str, Any],
                message_key: str, attempts: int, retry_scale: float, claim: int | None) -> str:
    """The worker of the last attempt died or was killed mid-send: that attempt failed."""
    result = "no answer: the attempt was interrupted"
    _record_failed_attempt(connection, f"{message_key}:attempts", result, destination, None, attempts)
    return _failed(connection, outbox, destination, unit, message, message_key, attempts, None, None, result,
                   retry_scale, claim)


def health_gate(connection: Any, destination: str, health: dict[bytes, bytes], outbox: str, message_key: str,
                unit: str, claim: int | None, member: str, probe_seconds: float) -> tuple[str | None, bool]:
    """What the destination's health says about sending the outbox's head now (webhook and CRM kinds).

    ("next", False): the destination is disabled, the message went to its dead letters, go on
    with the next one; ("circuit_open" or "circuit_half_open", False): the unit waits, scheduled
    here; (None, probing): send it, `probing` when this delivery is the half-open circuit's probe.
    """
    if health.get(b"disabled") == b"1":
        reason = (health.get(b"disabled_reason") or b"410 Gone").decode()
        _give_up(connection, outbox, destination, message_key, "destination disabled: " + reason)
        return "next", False
    open_until = float(health.get(b"open_until") or 0)
    if open_until > time.time():
        units.again(connection, unit, open_until, counted=False, attempt=claim)
        return "circuit_open", False
    probing = int(health.get(b"failures") or 0) >= destinations.FAILURES_TO_OPEN
    if probing and not connection.set(destinations.probe_key(destination), member, nx=True,
                                      px=int(probe_seconds * 1000)):
        # Half open: one delivery probes the destination, every other outbox waits for its answer.
        units.again(connection, unit, time.time() + PROBE_WAIT, counted=False, attempt=claim)
        return "circuit_half_open", False
    return None, probing


def _record_failed_attempt(connection: Any, attempts_key: str, result: str, destination: str, status: int | None,
                           attempts: int) -> None:
    """The attempt's result, and its count in /metrics (what comes of it: another try later, a
    dead letter, or the destination disabled by a 410), in one round trip."""
    outcome = "gone" if status == 410 else "dead" if attempts > len(RETRY_SCHEDULE) else "retry"
    with connection.pipeline(transaction=False) as pipe:
        pipe.hset(attempts_key, mapping={"last": result, "sending": 0})
        metrics.count(pipe, metrics.writeback_field(destination, outcome))
        pipe.execute()


def _drop_and_next(connection: Any, outbox: str, message_key: str) -> bytes | None:
    with connection.pipeline(transaction=False) as pipe:
        pipe.lrem(outbox, 1, message_key)
        pipe.lindex(outbox, 0)
        return pipe.execute()[-1]


def _failed(connection: Any, outbox: str, destination: str, unit: str, message: dict[str, Any],
            message_key: str, attempts: int, status: int | None, retry_after: float | None, outcome: str,
            retry_scale: float, claim: int | None = None, honour_wait: bool = False) -> str:
    """A failed attempt (an error status, no answer, a timeout): circuit, then retry or dead letter.

    `retry_after` is honoured on a 429 or 503, or always with `honour_wait` (a CRM API's own
    word on when to come back, e.g. Salesforce's used-up daily allocation)."""
    open_until = destinations.record_failure(connection, destination, outcome, retry_scale)
    if attempts > len(RETRY_SCHEDULE):
        _give_up(connection, outbox, destination, message_key, f"no 2xx after {attempts} attempts; last: {outcome}")
        units.again(connection, unit, max(time.time(), open_until), counted=False, attempt=claim)
        return "dead_letter"
    wait = RETRY_SCHEDULE[attempts - 1] * retry_scale
    if retry_after is not None and (status in (429, 503) or honour_wait):
        wait = max(wait, retry_after)
    wait = max(wait, open_until - time.time())
    connection.set(f"{outbox}:not_before", f"{time.time() + wait:.3f}", ex=int(wait) + 86400)
    expire_with(connection, f"{outbox}:not_before", message_key)  # never beyond its message (and dispatch)
    units.again(connection, unit, time.time() + wait, counted=False, attempt=claim)
    log.info("write-back %s to %s: %s; attempt %d, next in %.1f s", message["id"], destination, outcome,
             attempts, wait)
    return f"retry_in_{wait:.1f}"


def state_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _give_up(connection: Any, outbox: str, destination: str, message_key: str, reason: str) -> None:
    destinations.dead_letter(connection, destination, message_key, reason)
    connection.lrem(outbox, 1, message_key)  # by name: never a message this run did not look at
    connection.delete(f"{outbox}:not_before")  # its retry wait is not the next message's
    log.warning("write-back %s to %s moved to the dead letters: %s", message_key.removeprefix("rb:msg:"),
                destination, reason)


def deliver(ctx: JobContext, run: Run) -> Next:
    """The engine's handler for a `deliver|<dispatch>|<destination>` unit (its schedule is kept
    by deliver_outbox itself: the retry wait, the circuit, the yield)."""
    dispatch_id, _, destination = run.unit.ref.partition("|")
    rules = ctx.rules
    crm = rules.crm_destinations.get(destination) if rules else None
    if crm is not None:
        from integration.writeback.crm.deliver import deliver_crm

        deliver_crm(ctx, run, crm)
        return HANDLED
    deliver_outbox(ctx.redis, dispatch_id, destination, rules.destinations.get(destination) if rules else None,
                   ctx.settings.lease_seconds, retry_scale=ctx.settings.writeback_retry_scale,
                   body_template=rules.destination_bodies.get(destination) if rules else None,
                   timeout=ctx.settings.writeback_timeout_seconds, claim=run.attempt)
    return HANDLED
