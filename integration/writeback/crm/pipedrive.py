"""Write a status onto a Pipedrive deal, person or organization, and log notes on it.

Which API: Pipedrive API v2 for records and their fields, v1 only where v2 has no endpoint.
- Records: `PATCH /api/v2/{deals|persons|organizations}/{id}` with `{"custom_fields": {key: value}}`.
  Pipedrive deprecated `PUT /v1/deals/{id}` (and the persons/organizations equivalents) in favour
  of these from 2026-01-01; v2 also costs fewer rate-limit tokens and validates input strictly.
- Fields: `GET /api/v2/{deal|person|organization}Fields` (`field_code`, `field_name`,
  `is_custom_field`), the v2 Fields API, paged by cursor.
- Notes: `POST /v1/notes` (there is no v2 Notes API); the token check: `GET /v1/users/me`.

Authentication is the `x-api-token` header on every request, never the `api_token` query
parameter, so the token does not appear in any URL, log line or proxy record.

Pipedrive addresses a custom field by its 40-character key, not by its name, and has silently
ignored keys it does not know: a typo would "succeed" and write nothing. So the writer reads each
object's field list (once per process, kept FIELDS_TTL seconds) and refuses a key that is not a
custom field of that object, as a dead letter naming it (and the key, when the name was given).

Rate limits: every answer carries `x-ratelimit-limit/-remaining/-reset` (a 2-second window per
token). A 429 pauses the shared `pipedrive` limiter for `Retry-After` (else `x-ratelimit-reset`),
and a success whose `x-ratelimit-remaining` is 0 pauses it until the window resets, so the other
workers do not walk into the 429.
"""

from __future__ import annotations

import hashlib
import html
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from integration.dispatches.limits import Limiter
from integration.revor.client import parse_retry_after
from integration.settings import Secret, Settings
from integration.writeback.crm import base
from integration.writeback.crm.base import DEAD, OK, RETRY, THROTTLED, Answer, NotConfigured, Result, Write

# The bridge's object name -> (v2 records path, v2 fields path, note link field, label).
OBJECTS: dict[str, tuple[str, str, str, str]] = {
    "deal": ("deals", "dealFields", "deal_id", "deal"),
    "contact": ("persons", "personFields", "person_id", "person"),
    "company": ("organizations", "organizationFields", "org_id", "organization"),
}
PIPEDRIVE_ID = re.compile(r"[0-9]{1,18}")  # always fullmatch: "$" would let "12\n" through
FIELDS_TTL = 300.0  # seconds a field list is trusted before it is read again
# A key missing from a list older than this makes the writer read the list again once: the field
# may have been created a minute ago.
FIELDS_RECHECK_AFTER = 15.0
FIELDS_PAGE = 500  # the v2 Fields API's documented maximum page size
MAX_FIELD_PAGES = 20
DEFAULT_WAIT = 2.0  # Pipedrive's window is 2 seconds
MAX_WAIT = 3600.0  # a daily budget used up would say "until midnight": look again within the hour
TOKEN_VARIABLE = "PIPEDRIVE_API_TOKEN"


@dataclass(frozen=True)
class Field:
    key: str
    name: str
    custom: bool


class PipedriveWriter:
    kind: ClassVar[str] = "pipedrive"
    batch_size: ClassVar[int] = 1  # Pipedrive has no batch update for deals or persons

    # (base URL, token fingerprint, object) -> (read at, {key: Field}); shared by the process's writers.
    _fields_cache: ClassVar[dict[tuple[str, str, str], tuple[float, dict[str, Field]]]] = {}
    _fields_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, base_url: str, token: Secret, limiter: Limiter | None = None,
                 fields_ttl: float = FIELDS_TTL) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._fingerprint = hashlib.sha256(token.get().encode()).hexdigest()[:16]
        self.limiter = limiter
        self.fields_ttl = fields_ttl
        self.session = base.session()

    @classmethod
    def from_settings(cls, settings: Settings, connection: Any) -> PipedriveWriter:
        if settings.pipedrive_api_token is None:
            raise NotConfigured(f"{TOKEN_VARIABLE} is not set: a pipedrive destination needs a Pipedrive "
                                "API token (Personal preferences > API in Pipedrive)")
        limiter = Limiter(connection, "pipedrive", settings.pipedrive_max_rps) if connection is not None else None
        return cls(settings.pipedrive_api_base_url, settings.pipedrive_api_token, limiter)

    @classmethod
    def forget_fields(cls) -> None:
        """Drop every cached field list (tests; or after creating fields)."""
        with cls._fields_lock:
            cls._fields_cache.clear()

    def __repr__(self) -> str:
        return f"PipedriveWriter({self.base_url!r})"

    def close(self) -> None:
        self.session.close()

    # ---- the CrmWriter protocol -------------------------------------------------------------

    def update(self, writes: list[Write]) -> list[Result]:
        return base.scrub_results([self._update_one(write) for write in writes], [self._token.get()])

    def log_activity(self, write: Write) -> Result:
        return base.scrub_results([self._log_activity(write)], [self._token.get()])[0]

    def check(self, needs: dict[str, list[str]]) -> list[str]:
        return [self._clean(line) for line in self._check(needs)]

    def _log_activity(self, write: Write) -> Result:
        if write.activity is None:
            return Result(OK)
        target = self._target(write)
        if isinstance(target, Result):
            return target
        (_, _, link, label), record_id = target
        subject = html.escape(write.activity.subject)
        body = html.escape(write.activity.body).replace("\r\n", "\n").replace("\n", "<br>")
        content = f"<strong>{subject}</strong><br>{body}" if body else f"<strong>{subject}</strong>"
        answer = self._request("POST", "/v1/notes", json={"content": content, link: record_id})
        if isinstance(answer, Result):
            return answer
        if 200 <= answer.status < 300:
            return Result(OK, status=answer.status)
        return self._error(answer, f"note on {label} {record_id}")

    def _check(self, needs: dict[str, list[str]]) -> list[str]:
        answer = self._request("GET", "/v1/users/me", max_wait=base.MAX_PACE_WAIT)
        if isinstance(answer, Result):
            return [f"Pipedrive API at {self.base_url} did not answer: {answer.reason}"]
        if answer.status in (401, 403):
            return [f"Pipedrive refused {TOKEN_VARIABLE} ({answer.status} {_vendor_text(answer)})"]
        if not 200 <= answer.status < 300:
            return [f"Pipedrive API at {self.base_url} answered {answer.status} {_vendor_text(answer)}"]
        problems: list[str] = []
        for obj, names in needs.items():
            if obj not in OBJECTS:
                problems.append(f"Pipedrive has no {obj} records (use deal, contact or company)")
                continue
            label = OBJECTS[obj][3]
            fields = self._fields(obj, fresh=True)
            if isinstance(fields, Result):
                problems.append(f"could not read Pipedrive {label} fields: {fields.reason}")
                continue
            for name in names:
                problem = _field_problem(fields, name, label)
                if problem:
                    problems.append(problem)
        return problems

    # ---- one record -------------------------------------------------------------------------

    def _update_one(self, write: Write) -> Result:
        if not write.properties:
            return Result(OK)
        target = self._target(write)
        if isinstance(target, Result):
            return target
        (records, _, _, label), record_id = target
        fields = self._fields(write.object)
        if isinstance(fields, Result):
            return fields
        if any(key not in fields for key in write.properties):
            fields = self._fields(write.object, fresh_after=FIELDS_RECHECK_AFTER)
            if isinstance(fields, Result):
                return fields
        for key in write.properties:
            problem = _field_problem(fields, key, label)
            if problem:
                return Result(DEAD, base.short(problem))
        answer = self._request("PATCH", f"/api/v2/{records}/{record_id}",
                               json={"custom_fields": dict(write.properties)})
        if isinstance(answer, Result):
            return answer
        if 200 <= answer.status < 300:
            data = answer.body.get("data") if isinstance(answer.body, dict) else None
            if isinstance(data, dict) and (data.get("is_deleted") is True or data.get("status") == "deleted"):
                return Result(DEAD, f"Pipedrive {label} {record_id} is deleted", status=answer.status)
            return Result(OK, status=answer.status)
        return self._error(answer, f"{label} {record_id}")

    def _target(self, write: Write) -> tuple[tuple[str, str, str, str], int] | Result:
        spec = OBJECTS.get(write.object)
        if spec is None:
            return Result(DEAD, f"Pipedrive has no {write.object} records (use deal, contact or company)")
        if not PIPEDRIVE_ID.fullmatch(str(write.object_id)):
            return Result(DEAD, base.short(f"{write.object_id!r} is not a Pipedrive {spec[3]} id (digits only)"))
        return spec, int(write.object_id)

    # ---- fields -----------------------------------------------------------------------------

    def _fields(self, obj: str, fresh: bool = False, fresh_after: float | None = None) -> dict[str, Field] | Result:
        """The object's fields by key, from the process cache unless stale (or `fresh`)."""
        cache_key = (self.base_url, self._fingerprint, obj)
        now = time.monotonic()
        with self._fields_lock:
            cached = self._fields_cache.get(cache_key)
        if cached and not fresh:
            age = now - cached[0]
            limit = self.fields_ttl if fresh_after is None else min(self.fields_ttl, fresh_after)
            if age < limit:
                return cached[1]
        fields = self._read_fields(obj)
        if isinstance(fields, dict):
            with self._fields_lock:
                self._fields_cache[cache_key] = (time.monotonic(), fields)
        return fields

    def _read_fields(self, obj: str) -> dict[str, Field] | Result:
        path = f"/api/v2/{OBJECTS[obj][1]}"
        label = OBJECTS[obj][3]
        fields: dict[str, Field] = {}
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_FIELD_PAGES):
            params: dict[str, Any] = {"limit": FIELDS_PAGE}
            if cursor:
                params["cursor"] = cursor
            answer = self._request("GET", path, params=params)
            if isinstance(answer, Result):
                return answer
            if not 200 <= answer.status < 300:
                failed = self._error(answer, f"{label} fields")
                # A field list that cannot be read is never this message's fault.
                return failed if failed.outcome != DEAD else Result(RETRY, failed.reason, status=answer.status)
            # A list that cannot be read is no proof that a key does not exist: tried again later.
            unreadable = Result(RETRY, f"Pipedrive {label} fields: unexpected answer (HTTP {answer.status})",
                                status=answer.status)
            body = answer.body
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(body, dict) or not isinstance(data, list | None):
                return unreadable
            for item in data or []:
                if isinstance(item, dict) and isinstance(item.get("field_code"), str):
                    fields[item["field_code"]] = Field(item["field_code"], str(item.get("field_name") or ""),
                                                       bool(item.get("is_custom_field")))
            more = body.get("additional_data")
            cursor = more.get("next_cursor") if isinstance(more, dict) else None
            if not cursor:
                return fields
            if not isinstance(cursor, str) or cursor in seen:  # a cursor that is no text, or goes round
                return unreadable
            seen.add(cursor)
        return Result(RETRY, f"Pipedrive {label} fields: more than {MAX_FIELD_PAGES} pages")

    # ---- HTTP -------------------------------------------------------------------------------

    def _request(self, method: str, path: str, max_wait: float = base.MAX_PACE_WAIT, **kwargs: Any) -> Answer | Result:
        paced = base.pace(self.limiter, max_wait)
        if paced is not None:
            return paced
        answer = base.call(self.session, method, self.base_url + path,
                           headers={"x-api-token": self._token.get()}, secrets=[self._token.get()], **kwargs)
        if isinstance(answer, Answer) and answer.status < 400:
            remaining = _number(answer.headers.get("x-ratelimit-remaining"))
            if remaining is not None and remaining <= 0 and self.limiter is not None:
                self.limiter.pause(_window_wait(answer))
        return answer

    def _error(self, answer: Answer, what: str) -> Result:
        """What a Pipedrive error answer IS, in Pipedrive's own words."""
        status = answer.status
        text = self._clean(_vendor_text(answer))
        if status == 429:
            wait = parse_retry_after(answer.headers.get("Retry-After"))
            if wait is None:
                wait = _window_wait(answer)
            wait = min(MAX_WAIT, max(1.0, wait))
            if self.limiter is not None:
                self.limiter.pause(wait)
            return Result(THROTTLED, base.short(f"Pipedrive rate limit (429 {text})"), status=status, wait=wait)
        if status in (401, 403):
            return Result(RETRY, base.short(f"Pipedrive refused {TOKEN_VARIABLE} ({status} {text})"), status=status)
        if status in (404, 410):
            return Result(DEAD, base.short(f"Pipedrive {what} not found ({status} {text})"), status=status)
        if 400 <= status < 500:
            return Result(DEAD, base.short(f"Pipedrive refused the {what} ({status} {text})"), status=status)
        return Result(RETRY, base.short(f"Pipedrive answered {status} {text}".rstrip()), status=status)

    def _clean(self, text: str) -> str:
        token = self._token.get()
        return text.replace(token, "***") if token else text


def _field_problem(fields: dict[str, Field], key: str, label: str) -> str | None:
    """Why `key` cannot be written on this object's records, or None."""
    found = fields.get(key)
    if found is not None:
        if found.custom:
            return None
        return (f"field {key} is a standard Pipedrive {label} field; the bridge writes custom fields only")
    by_name = [f for f in fields.values() if f.custom and f.name.strip().casefold() == key.strip().casefold()]
    if by_name:
        return (f"field {key} does not exist on Pipedrive {label}s: that is the name of the field whose "
                f"key is {by_name[0].key}; map the key instead")
    return (f"field {key} does not exist on Pipedrive {label}s (custom fields are written by their "
            "40-character key: Company settings > Data fields)")


def _vendor_text(answer: Answer) -> str:
    """Pipedrive's error body: {"success": false, "error": ..., "error_info": ..., "errorCode": ...}."""
    body = answer.body
    if isinstance(body, dict):
        error = body.get("error") or body.get("message")
        info = body.get("error_info")
        parts = [str(error)] if error else []
        if info and "developers.pipedrive.com" not in str(info):
            parts.append(str(info))
        if parts:
            return base.short(": ".join(parts), 200)
    return base.short(answer.text, 200) if answer.text.strip() else "no body"


def _number(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _window_wait(answer: Answer) -> float:
    """Seconds until the rate-limit window resets (`x-ratelimit-reset`), else Pipedrive's 2 s window."""
    reset = _number(answer.headers.get("x-ratelimit-reset"))
    if reset is None or not math.isfinite(reset) or reset <= 0:
        return DEFAULT_WAIT
    return min(MAX_WAIT, reset)
