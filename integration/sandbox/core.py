"""What the Revor sandbox knows and does, without HTTP.

Time: every sandbox duration (pacing intervals, queue and run times) is divided by
`time_scale`, while timestamps stay wall-clock UTC. So with `time_scale=60` a 180 s interval
passes in 3 real seconds and a client that polls at `scheduled_at` behaves exactly as it would
against Revor.

A job's status is derived from its timestamps when it is read (queued, then scheduled until
`scheduled_at`, running for `run_seconds`, then its outcome), so no background thread is needed
and the lifecycle is the same however often it is polled.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from integration.sandbox.validation import Rejection, interval_seconds, validate_dispatch

CONNECTED_LINKEDIN_PROFILE = "https://www.linkedin.com/in/sandbox-connected/"
FAIL_MARKER = "sandbox-fail"  # a recipient containing this makes the job fail, for tests and demos
INVITATION_NOTE_LIMIT = 200


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


@dataclass
class ApiKey:
    user: str
    scopes: frozenset[str] = frozenset({"connect.accounts:read", "outreach:write", "outreach:read"})


def default_keys() -> dict[str, ApiKey]:
    return {
        "sk-revor-sandbox": ApiKey("sandbox-user"),
        "sk-revor-sandbox-other": ApiKey("other-user"),
        "sk-revor-sandbox-noscope": ApiKey("sandbox-user", frozenset({"outreach:write", "outreach:read"})),
    }


def default_accounts() -> list[dict[str, Any]]:
    def account(suffix: str, channel: str, name: str, identifier: str, **extra: Any) -> dict[str, Any]:
        return {"account_id": f"connect_account_sandbox_{suffix}", "channel": channel, "name": name,
                "account_identifier": identifier, "status": "ok", "lifecycle_status": "active",
                "can_send": True, "can_receive": True, "owner": "sandbox-user", **extra}

    return [
        account("email", "email", "Sandbox Email", "sales@sandbox.example.com"),
        account("linkedin", "linkedin", "Sandbox LinkedIn", "https://www.linkedin.com/in/sandbox-sender/"),
        account("whatsapp", "whatsapp", "Sandbox WhatsApp", "+14155550100"),
        account("email_reconnect", "email", "Sandbox Email (needs reconnecting)", "old@sandbox.example.com",
                status="credentials", lifecycle_status="reconnect_required", can_send=False),
    ]


@dataclass
class Faults:
    """Fault injection and limits; every field can be changed while the sandbox runs."""

    error_rate: float = 0.0         # share of POSTs answered 503 before anything is created
    drop_rate: float = 0.0          # share of new dispatches whose connection drops after creation
    latency_ms: int = 0             # added to every API request
    job_failure_rate: float = 0.0   # share of jobs that end `failed` (retryable: false)
    rate_limit: int = 600           # requests per window per key (and per user); 0 = unlimited
    rate_window_ms: int = 60_000
    omit_retry_after: bool = False  # 429 without Retry-After, to test header-less back-off
    time_scale: float = 1.0         # sandbox seconds per real second
    queue_seconds: float = 1.0      # how long a new job stays `queued`
    run_seconds: float = 2.0        # how long a job stays `running`
    idempotency_ttl_seconds: int = 86_400
    max_attachment_bytes: int = 5 * 1024 * 1024
    max_metadata_bytes: int = 4096

    def update(self, changes: dict[str, Any]) -> None:
        for name, value in changes.items():
            if name not in self.__dataclass_fields__:
                raise Rejection(400, "unknown_setting", f"no sandbox setting named {name!r}")
            current = getattr(self, name)
            try:
                value = type(current)(value)
            except (TypeError, ValueError):
                raise Rejection(400, "invalid_setting", f"{name} must be a {type(current).__name__}") from None
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise Rejection(400, "invalid_setting", f"{name} must not be negative")
            if name.endswith("_rate") and name != "rate_limit" and value > 1:
                raise Rejection(400, "invalid_setting", f"{name} is a share from 0 to 1")
            if name == "time_scale" and value <= 0:
                raise Rejection(400, "invalid_setting", "time_scale must be above 0")
            setattr(self, name, value)


@dataclass
class Task:
    id: str
    owner: str
    account_id: str
    channel: str
    body: dict[str, Any]
    created: float
    scheduled_at: float
    run_seconds: float
    queue_until: float
    outcome: str = "succeeded"
    error: dict[str, Any] | None = None
    resolved_action: str = "message"
    cancelled_at: float | None = None

    def status_at(self, now: float) -> str:
        if self.cancelled_at is not None and self.cancelled_at <= now:
            return "cancelled"
        if now < self.queue_until:
            return "queued"
        if now < self.scheduled_at:
            return "scheduled"
        if now < self.scheduled_at + self.run_seconds:
            return "running"
        return self.outcome

    def view(self, now: float) -> dict[str, Any]:
        status = self.status_at(now)
        started = self.scheduled_at if status in ("running", "succeeded", "failed") else None
        finished = None
        if status in ("succeeded", "failed"):
            finished = self.scheduled_at + self.run_seconds
        elif status == "cancelled":
            finished = self.cancelled_at
        result = None
        if status == "succeeded":
            result = {"account_id": self.account_id, "channel": self.channel, "action": "outreach",
                      "resolved_action": self.resolved_action, "message_id": f"message_{self.id[4:16]}",
                      "status": "accepted"}
        return {
            "id": self.id, "status": status, "action": "outreach.dispatch", "channel": self.channel,
            "scheduled_at": iso(self.scheduled_at), "started_at": iso(started), "finished_at": iso(finished),
            "attempt_count": 1 if started else 0, "next_attempt_at": None, "result": result,
            "error": self.error if status == "failed" else None,
        }


@dataclass
class Answer:
    """What the HTTP layer should send: status, JSON body, extra headers, and whether to drop."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    drop_connection: bool = False


def canonical(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Sandbox:
    def __init__(self, faults: Faults | None = None, seed: int | None = None,
                 keys: dict[str, ApiKey] | None = None, accounts: list[dict[str, Any]] | None = None,
                 connected_profiles: tuple[str, ...] = (CONNECTED_LINKEDIN_PROFILE,)) -> None:
        self.faults = faults or Faults()
        self.keys = keys or default_keys()
        self.accounts = accounts or default_accounts()
        self.connected_profiles = {p.rstrip("/").lower() for p in connected_profiles}
        self.random = random.Random(seed)
        self.lock = threading.RLock()
        self.clock = time.time
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.tasks: dict[str, Task] = {}
            self.idempotency: dict[tuple[str, str, str], tuple[str, float, Answer]] = {}
            self.pacing: dict[tuple[str, str, str], float] = {}
            self.windows: dict[str, tuple[float, int]] = {}
            self.requests: deque[dict[str, Any]] = deque(maxlen=5000)

    # ---- cross-cutting: auth, rate limits, request log ---------------------------------------

    def authenticate(self, authorization: str | None, x_api_key: str | None) -> tuple[str, ApiKey]:
        token = None
        if authorization and authorization.lower().startswith("bearer "):
            token = authorization[7:].strip()
        token = token or (x_api_key or "").strip() or None
        if not token:
            raise Rejection(401, "api_key_missing")
        key = self.keys.get(token)
        if key is None:
            raise Rejection(401, "api_key_invalid")
        return token, key

    def rate_limit(self, token: str, key: ApiKey) -> dict[str, str]:
        """Count this request; return the six headers, or raise 429 past the limit."""
        limit, window_ms = self.faults.rate_limit, self.faults.rate_window_ms
        now = self.clock()
        with self.lock:
            counts = []
            for bucket in (f"key:{token}", f"user:{key.user}"):
                start, count = self.windows.get(bucket, (now, 0))
                if now - start >= window_ms / 1000:
                    start, count = now, 0
                counts.append((bucket, start, count))
            over = limit > 0 and any(count >= limit for _, _, count in counts)
            if not over:
                for bucket, start, count in counts:
                    self.windows[bucket] = (start, count + 1)
            used_key = self.windows.get(counts[0][0], (now, 0))[1]
            used_user = self.windows.get(counts[1][0], (now, 0))[1]
            reset_in = max(0.0, counts[0][1] + window_ms / 1000 - now)
        shown_limit = limit if limit > 0 else 1_000_000
        headers = {
            "X-RateLimit-Limit": str(shown_limit),
            "X-RateLimit-Remaining": str(max(0, shown_limit - used_key)),
            "X-RateLimit-Window-Ms": str(window_ms),
            "X-User-RateLimit-Limit": str(shown_limit),
            "X-User-RateLimit-Remaining": str(max(0, shown_limit - used_user)),
            "X-User-RateLimit-Window-Ms": str(window_ms),
        }
        if over:
            if not self.faults.omit_retry_after:
                headers["Retry-After"] = str(max(1, int(reset_in + 0.999)))
            raise RateLimited(headers)
        return headers

    def record(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.requests.append(entry)

    def chance(self, rate: float) -> bool:
        with self.lock:
            return rate > 0 and self.random.random() < rate

    # ---- the API --------------------------------------------------------------------------

    def list_accounts(self, key: ApiKey, channel: str | None, can_send: str | None) -> Answer:
        if "connect.accounts:read" not in key.scopes:
            raise Rejection(403, "permission_denied")
        if channel is not None and channel not in ("email", "linkedin", "whatsapp"):
            raise Rejection(400, "invalid_channel")
        wanted: bool | None = None
        if can_send is not None:
            if can_send not in ("true", "false", "1", "0"):
                raise Rejection(400, "invalid_can_send")
            wanted = can_send in ("true", "1")
        items = [
            {k: v for k, v in a.items() if k != "owner"} for a in self.accounts
            if a["owner"] == key.user and (channel is None or a["channel"] == channel)
            and (wanted is None or a["can_send"] == wanted)
        ]
        return Answer(200, {"items": items})

    def create_dispatch(self, token: str, key: ApiKey, idem_key: str | None, body: Any) -> Answer:
        if "outreach:write" not in key.scopes:
            raise Rejection(403, "permission_denied")
        if self.chance(self.faults.error_rate):
            raise Rejection(503, "task_queue_unavailable", "injected fault: retry later with the same key")
        now = self.clock()
        with self.lock:  # one lock: requests with the same key are serialised, as §13.5 asks
            fingerprint = canonical(body)
            slot = (key.user, "/outreach/dispatches", idem_key) if idem_key else None
            if slot and slot in self.idempotency:
                stored_print, stored_at, stored = self.idempotency[slot]
                if now - stored_at < self.faults.idempotency_ttl_seconds:
                    if stored_print != fingerprint:
                        raise Rejection(409, "idempotency_conflict", "this key was used with another body")
                    return Answer(stored.status, stored.body)
            validate_dispatch(body, max_attachment_bytes=self.faults.max_attachment_bytes,
                              max_metadata_bytes=self.faults.max_metadata_bytes)
            account = next((a for a in self.accounts
                            if a["account_id"] == body["account_id"] and a["owner"] == key.user), None)
            if account is None:
                raise Rejection(404, "account_not_found")
            if account["channel"] != body["channel"]:
                raise Rejection(409, "account_channel_mismatch")
            if not account["can_send"]:
                raise Rejection(409, "connect_account_reconnect_required")
            task = self._new_task(key.user, body, now)
            answer = Answer(202, {"item": {"id": task.id, "status": "queued", "action": "outreach.dispatch",
                                           "channel": task.channel, "scheduled_at": iso(task.scheduled_at)}})
            if slot:
                self.idempotency[slot] = (fingerprint, now, answer)
        drop = self.chance(self.faults.drop_rate)
        return Answer(answer.status, answer.body, drop_connection=drop)

    def _new_task(self, user: str, body: dict[str, Any], now: float) -> Task:
        scale = self.faults.time_scale
        queue_until = now + self.faults.queue_seconds / scale
        bucket = (user, body["account_id"], body["channel"])
        previous = self.pacing.get(bucket)
        scheduled = queue_until if previous is None else max(queue_until, previous + interval_seconds(body) / scale)
        self.pacing[bucket] = scheduled
        task = Task(id=f"job_{uuid.uuid4()}", owner=user, account_id=body["account_id"], channel=body["channel"],
                    body=body, created=now, scheduled_at=scheduled, run_seconds=self.faults.run_seconds / scale,
                    queue_until=queue_until)
        recipient = json.dumps(body["recipient"]).lower()
        text = body["content"].get("text") or ""
        if body["channel"] == "linkedin":
            profile = str(body["recipient"].get("profile_url", "")).rstrip("/").lower()
            task.resolved_action = "direct_message" if profile in self.connected_profiles else "invitation"
        if FAIL_MARKER in recipient or self.chance(self.faults.job_failure_rate):
            task.outcome = "failed"
            task.error = {"code": "recipient_unreachable", "message": "recipient_unreachable", "retryable": False}
        elif task.resolved_action == "invitation" and len(text) > INVITATION_NOTE_LIMIT:
            task.outcome = "failed"
            task.error = {"code": "invitation_note_too_long", "message": "invitation_note_too_long",
                          "retryable": False}
        self.tasks[task.id] = task
        return task

    def get_job(self, key: ApiKey, job_id: str) -> Answer:
        with self.lock:
            task = self.tasks.get(job_id)
            if task is None or task.owner != key.user:
                raise Rejection(404, "external_api_job_not_found")
            return Answer(200, {"item": task.view(self.clock())})

    # ---- sandbox-only controls ---------------------------------------------------------------

    def cancel(self, job_id: str) -> dict[str, Any]:
        with self.lock:
            task = self.tasks.get(job_id)
            if task is None:
                raise Rejection(404, "external_api_job_not_found")
            now = self.clock()
            if task.status_at(now) not in ("queued", "scheduled"):
                raise Rejection(409, "job_not_cancellable", "only queued or scheduled jobs can be cancelled")
            task.cancelled_at = now
            return task.view(now)

    def snapshot_tasks(self) -> list[dict[str, Any]]:
        with self.lock:
            now = self.clock()
            return [{**task.view(now), "owner": task.owner, "account_id": task.account_id, "body": task.body}
                    for task in self.tasks.values()]

    def snapshot_requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.requests)

    def config(self) -> dict[str, Any]:
        return asdict(self.faults)


class RateLimited(Exception):
    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__("api_rate_limit_exceeded")
        self.headers = headers
