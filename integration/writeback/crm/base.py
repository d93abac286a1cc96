"""What every CRM writer (HubSpot, Salesforce, Pipedrive) takes and gives back.

The delivery run (crm/deliver.py) renders each status message into a `Write` (which record,
which properties, which activity), hands writes to the kind's writer and acts on each
`Result`: delivered, tried again later, or a dead letter with the vendor's own reason. The
writers know their API and nothing about outboxes, ordering or Redis keys beyond their rate
limiter; the delivery run knows nothing about any API.

Outcomes:
- `ok`: written.
- `retry`: could not be written now and might be later (no answer, 5xx, credentials refused,
  the API's allocation used up). Counts as a failed attempt: retry schedule, circuit, and a dead
  letter when the schedule is used up, so a broken token never loses a message silently.
- `throttled`: the API (or our own limiter) says wait. Not a failure: the message waits `wait`
  seconds and its attempt is handed back, however long the throttling lasts.
- `dead`: this write can never succeed as it is (the record was deleted, a property does not
  exist, a value is refused). Straight to the dead letters, with `reason`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol

import requests
from requests.adapters import HTTPAdapter

from integration import __version__
from integration.dispatches.limits import Limiter

OK, RETRY, THROTTLED, DEAD = "ok", "retry", "throttled", "dead"
# One API call, connect and read (seconds): below the delivery run's budget and the lease.
DEFAULT_TIMEOUT = (5.0, 15.0)
MAX_RESPONSE_BYTES = 2 << 20
# How long a call may wait for a token from the shared limiter before it gives the message back.
MAX_PACE_WAIT = 5.0


class NotConfigured(Exception):
    """The kind's settings are missing (the message names the variable)."""


@dataclass(frozen=True)
class Activity:
    """A note (HubSpot, Pipedrive) or a Task (Salesforce) logged on the record."""

    subject: str
    body: str
    at: str  # ISO 8601 UTC time of the state change, e.g. 2026-01-01T12:00:08.000Z


@dataclass(frozen=True)
class Write:
    """One status message, rendered for one CRM record."""

    key: str  # the message's Redis key (rb:msg:...): results are matched to messages by it
    object: str  # the bridge's own name: "deal", "contact" or "company"
    object_id: str
    properties: dict[str, Any] = field(default_factory=dict)  # property/field name -> str, number, bool or None
    activity: Activity | None = None
    account: str | None = None  # the portal / org / company the event came from, when known
    sobject: str | None = None  # Salesforce: the record's own sObject (Opportunity, Contact, Lead) when known


@dataclass(frozen=True)
class Result:
    outcome: str  # OK, RETRY, THROTTLED or DEAD
    reason: str = ""  # short and in the vendor's own words (error code, message, field); never a secret
    status: int | None = None  # HTTP status, when there was an answer
    wait: float | None = None  # seconds the vendor asked us to wait (Retry-After, reset headers)


class CrmWriter(Protocol):
    """A CRM's writer; one per worker thread (it holds a requests.Session)."""

    kind: ClassVar[str]
    batch_size: ClassVar[int]  # how many writes `update` may send in one request (1: one at a time)

    def update(self, writes: list[Write]) -> list[Result]:
        """Set each write's properties on its record; one Result per write, in order.

        Several writes go in one batch request where the API has one; an answer that concerns
        the whole batch (429, 5xx, 401) is that answer for every write.
        """
        ...

    def log_activity(self, write: Write) -> Result:
        """Create the write's activity (its `activity` is set), associated with its record."""
        ...

    def check(self, needs: dict[str, list[str]]) -> list[str]:
        """What is wrong with the credentials or the properties: [] when nothing.

        `needs` maps the bridge's object name ("deal", "contact", "company") to the property or
        field names the rules file writes on it. Each problem is one line naming what is missing
        or refused, e.g. `property revor_status does not exist on HubSpot deals`.
        """
        ...

    def close(self) -> None: ...


def session() -> requests.Session:
    """No retries of its own (the delivery run has a schedule), our User-Agent."""
    s = requests.Session()
    s.mount("http://", HTTPAdapter(max_retries=0))
    s.mount("https://", HTTPAdapter(max_retries=0))
    s.headers.update({"Accept": "application/json", "User-Agent": f"revor-bridge/{__version__}"})
    s.trust_env = False  # only the configured API host, never a proxy from the environment
    return s


@dataclass
class Answer:
    status: int
    headers: Any
    body: Any  # parsed JSON, or None when the body was empty or not JSON
    text: str  # the body as text (capped), for error reasons


def call(s: requests.Session, method: str, url: str, timeout: tuple[float, float] = DEFAULT_TIMEOUT,
         secrets: Iterable[str | None] = (), **kwargs: Any) -> Answer | Result:
    """One HTTP call: an Answer, or a RETRY Result when there was no (whole) answer.

    Redirects are never followed; the body is read up to MAX_RESPONSE_BYTES. Each of `secrets`
    (the credentials this call carries) is blanked out of the body before it is parsed, so no
    reason built from the answer, however it is cut short, can hold one that the API echoed.
    """
    try:
        response = s.request(method, url, timeout=timeout, allow_redirects=False, stream=True, **kwargs)
        raw = response.raw.read(MAX_RESPONSE_BYTES + 1, decode_content=True)
        response.close()
    except requests.RequestException as exc:
        return Result(RETRY, f"no answer ({type(exc).__name__})")
    text = scrub(raw[:MAX_RESPONSE_BYTES].decode("utf-8", "replace"), secrets)
    try:
        body = json.loads(text) if text.strip() else None
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        body = None
    return Answer(response.status_code, response.headers, body, text)


def triage(writes: list[Write], refuse: Callable[[Write], Result | None]) -> tuple[list[Result | None], list[int]]:
    """Before a batch: each write's result where it is known without a call (refused by the
    writer's own checks, or nothing to set), and the indexes of the writes to send, in order."""
    results: list[Result | None] = [None] * len(writes)
    due: list[int] = []
    for index, write in enumerate(writes):
        refused = refuse(write)
        if refused is not None:
            results[index] = refused
        elif not write.properties:
            results[index] = Result(OK, "nothing to set")
        else:
            due.append(index)
    return results, due


def pace(limiter: Limiter | None, max_wait: float = MAX_PACE_WAIT) -> Result | None:
    """Take a token from the shared limiter; a THROTTLED Result when none comes within `max_wait`."""
    if limiter is None or limiter.acquire(max_wait):
        return None
    return Result(THROTTLED, "rate limit: waiting for the shared limiter", wait=max(1.0, limiter.paused_for()))


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every (non-empty) secret replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def scrub_results(results: list[Result], secrets: Iterable[str | None]) -> list[Result]:
    """What a writer hands back, with no secret in any reason (the last line of defence)."""
    secrets = [s for s in secrets if s]
    return [r if not any(s in r.reason for s in secrets) else replace(r, reason=scrub(r.reason, secrets))
            for r in results]


def short(text: Any, limit: int = 300) -> str:
    """A vendor's error text, one line and bounded, for a dead letter or an attempt outcome."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
