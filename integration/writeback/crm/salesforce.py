"""Salesforce writer: status fields on the record (REST API), a Task on chosen statuses.

Authentication is the OAuth 2.0 client-credentials flow of a Connected App / External Client App
against the org's My Domain: `POST {SALESFORCE_DOMAIN}/services/oauth2/token` with the consumer
key and secret. Salesforce gives no `expires_in` and no refresh token for this flow: the token
lives as long as the org's session timeout allows, so it is cached per process and fetched again
only when an API call answers 401 `INVALID_SESSION_ID` (then the call is made once more).

One write is `PATCH /services/data/vXX.X/sobjects/{SObject}/{Id}` (204); several go in one
sObject Collections request (`PATCH /composite/sobjects`, up to 200, `allOrNone: false`) whose
per-record results map back to each write. What each vendor answer means for a message:

- `ENTITY_IS_DELETED`, `NOT_FOUND`, an unknown or read-only field, a refused value: dead letter
  with Salesforce's own code and message (naming the field).
- `REQUEST_LIMIT_EXCEEDED` (403): the org's rolling 24-hour API allocation is used up; not this
  message's fault. Tried again later (`wait` 900 s) and the shared `salesforce` limiter is paused
  as long, as it also is when `Sforce-Limit-Info: api-usage=n/m` shows n >= m.
- 5xx, no answer, a refused token: tried again (RETRY), never lost silently.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

import redis
import requests

from integration.dispatches.limits import Limiter
from integration.revor.client import parse_retry_after
from integration.writeback.crm import base
from integration.writeback.crm.base import DEAD, OK, RETRY, THROTTLED, Answer, Result, Write

# The bridge's object names -> Salesforce sObjects (a write's own `sobject` wins when set).
SOBJECTS = {"deal": "Opportunity", "contact": "Contact", "company": "Account"}
# A Task's WhoId is a person (Contact or Lead); anything else is its WhatId.
WHO_SOBJECTS = frozenset({"Contact", "Lead"})
SOBJECT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")
SALESFORCE_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
BATCH_SIZE = 200  # sObject Collections: up to 200 records per request
# REQUEST_LIMIT_EXCEEDED / api-usage at its limit: the 24-hour window frees calls only as old
# ones age out, so ask again in a quarter of an hour rather than every few seconds.
LIMIT_WAIT = 900.0
# A 429's Retry-After, bounded: at least a second, at most an hour (the limiter is shared by every worker).
THROTTLE_WAIT, MIN_WAIT, MAX_WAIT = 60.0, 1.0, 3600.0
SUBJECT_MAX = 255
DESCRIPTION_MAX = 32000
API_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")
NO_SUCH_COLUMN = re.compile(r"No such column '([^']+)'")
# Per-record codes in a collection answer that may succeed on a later try.
TRANSIENT_CODES = frozenset({"UNABLE_TO_LOCK_ROW", "REQUEST_LIMIT_EXCEEDED", "SERVER_UNAVAILABLE",
                             "REQUEST_RUNNING_TOO_LONG", "QUERY_TIMEOUT"})


@dataclass(frozen=True)
class _Token:
    access: str
    api: str  # where API calls go: SALESFORCE_DOMAIN, or a trusted instance_url


# One token per org and app in each process, shared by every writer (one per worker thread).
_TOKENS: dict[tuple[str, str, str], _Token] = {}
_TOKENS_LOCK = threading.Lock()


def forget_tokens() -> None:
    """Drop every cached token (tests; a process that rotated the app's secret)."""
    with _TOKENS_LOCK:
        _TOKENS.clear()


def trusted_instance_url(base_url: str, instance_url: Any) -> str | None:
    """The token answer's `instance_url`, when it may receive our token; else None.

    The token is only ever sent to SALESFORCE_DOMAIN's own host or to an https
    `*.my.salesforce.com` host, so a token answer can never steer API calls (and the token)
    anywhere else. Anything else falls back to SALESFORCE_DOMAIN, which serves the API too.
    """
    if not isinstance(instance_url, str) or not instance_url:
        return None
    # A fragment, query, userinfo or backslash has no place in an API root, and parsers disagree on
    # where the host of `https://x.my.salesforce.com#@evil` or `https://evil\@x...` ends.
    if any(c in instance_url for c in "#?@\\") or any(c.isspace() or not c.isprintable() for c in instance_url):
        return None
    try:
        parts, ours = urlsplit(instance_url), urlsplit(base_url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        return None
    if parts.scheme == ours.scheme and parts.netloc.lower() == ours.netloc.lower():
        return instance_url.rstrip("/")
    if parts.scheme == "https" and host.endswith(".my.salesforce.com") and port in (None, 443):
        return instance_url.rstrip("/")
    return None


def sobject_of(write: Write) -> str | None:
    """The write's sObject name, or None when it is not a valid one."""
    name = write.sobject or SOBJECTS.get(write.object)
    return name if name and SOBJECT_NAME.fullmatch(name) else None


def errors_of(body: Any) -> list[dict[str, Any]]:
    """Salesforce's error objects: a JSON array of {message, errorCode|statusCode, fields}."""
    if isinstance(body, dict):
        body = [body]
    if not isinstance(body, list):
        return []
    return [e for e in body if isinstance(e, dict)]


def error_code(body: Any) -> str:
    for e in errors_of(body):
        code = e.get("errorCode") or e.get("statusCode")
        if isinstance(code, str):
            return code
    return ""


def describe_error(errors: list[dict[str, Any]], sobject: str) -> str:
    """`CODE: message` for each error, naming the field(s) when Salesforce names them."""
    parts = []
    for e in errors[:3]:
        code = str(e.get("errorCode") or e.get("statusCode") or "ERROR")
        message = str(e.get("message") or "")
        named = e.get("fields")
        fields = [named] if isinstance(named, str) and named else \
            [f for f in named if isinstance(f, str)] if isinstance(named, list) else []
        if not fields:
            fields = NO_SUCH_COLUMN.findall(message)
        named = f" (field {', '.join(fields)} on {sobject})" if fields else ""
        parts.append(f"{code}{named}: {message}".rstrip(": "))
    return base.short("; ".join(parts) or "no error detail")


class SalesforceWriter:
    kind: ClassVar[str] = "salesforce"
    batch_size: ClassVar[int] = BATCH_SIZE

    def __init__(self, base_url: str, client_id: str, client_secret: str, api_version: str,
                 limiter: Limiter | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self._secret = client_secret
        self.api_version = api_version
        self.limiter = limiter
        self.http: requests.Session = base.session()
        self._accesses: set[str] = set()  # every access token this writer was given: blanked from reasons
        # The secret's digest (never the secret) is part of the key: another secret for the
        # same app must not be answered with a token the old one got.
        self._key = (self.base_url, client_id, hashlib.sha256(client_secret.encode()).hexdigest())

    @classmethod
    def from_settings(cls, settings: Any, connection: redis.Redis | None) -> SalesforceWriter:
        missing = [name for name, value in (("SALESFORCE_DOMAIN", settings.salesforce_base_url),
                                            ("SALESFORCE_CLIENT_ID", settings.salesforce_client_id),
                                            ("SALESFORCE_CLIENT_SECRET", settings.salesforce_client_secret))
                   if not value]
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            raise base.NotConfigured(f"{' and '.join(missing)} {verb} not set: Salesforce destinations need the "
                                     "org's My Domain and the client-credentials app's consumer key and secret")
        limiter = Limiter(connection, "salesforce", settings.salesforce_max_rps) if connection is not None else None
        return cls(settings.salesforce_base_url, settings.salesforce_client_id.get(),
                   settings.salesforce_client_secret.get(), settings.salesforce_api_version, limiter)

    def __repr__(self) -> str:
        return f"SalesforceWriter({self.base_url!r})"

    def close(self) -> None:
        self.http.close()

    # ---- token ----------------------------------------------------------------------------

    def _token(self, stale: str | None = None) -> _Token | Result:
        """The cached token, or a new one when there is none or the cached one is `stale`.

        Under one lock, so that threads meeting an expired token together fetch one new token.
        """
        with _TOKENS_LOCK:
            cached = _TOKENS.get(self._key)
            if cached is not None and cached.access != stale:
                self._accesses.add(cached.access)
                return cached
            fetched = self._fetch_token()
            if isinstance(fetched, _Token):
                _TOKENS[self._key] = fetched
                self._accesses.add(fetched.access)
            else:
                _TOKENS.pop(self._key, None)
            return fetched

    def _fetch_token(self) -> _Token | Result:
        paced = base.pace(self.limiter)
        if paced is not None:
            return paced
        answer = base.call(self.http, "POST", f"{self.base_url}/services/oauth2/token",
                           data={"grant_type": "client_credentials", "client_id": self.client_id,
                                 "client_secret": self._secret}, secrets=[self._secret])
        if isinstance(answer, Result):
            return Result(RETRY, f"Salesforce token request: {answer.reason}")
        body = answer.body if isinstance(answer.body, dict) else {}
        access = body.get("access_token")
        if 200 <= answer.status < 300 and isinstance(access, str) and access:
            return _Token(access, trusted_instance_url(self.base_url, body.get("instance_url")) or self.base_url)
        return Result(RETRY, self._scrub(self._token_refusal(answer, body)), status=answer.status)

    @staticmethod
    def _token_refusal(answer: Answer, body: dict[str, Any]) -> str:
        error = str(body.get("error") or "")
        detail = str(body.get("error_description") or "")
        said = f"{answer.status} {error}: {detail}".rstrip(": ") if error else f"HTTP {answer.status}"
        if answer.status >= 500 or answer.status == 429:
            return f"Salesforce token endpoint unavailable ({said})"
        if error == "invalid_client_id":
            return f"Salesforce does not know SALESFORCE_CLIENT_ID ({said})"
        if error == "invalid_client":
            return f"Salesforce refused SALESFORCE_CLIENT_ID / SALESFORCE_CLIENT_SECRET ({said})"
        if error == "invalid_grant":
            return (f"Salesforce refused the client-credentials grant for SALESFORCE_CLIENT_ID on SALESFORCE_DOMAIN "
                    f"({said}): use the org's My Domain and enable the client credentials flow with a Run As user")
        return f"Salesforce refused the token request for SALESFORCE_CLIENT_ID / SALESFORCE_CLIENT_SECRET ({said})"

    def _secrets(self) -> list[str]:
        """The client secret and every access token this writer used or the process holds for the app."""
        cached = _TOKENS.get(self._key)  # no lock: this is called while _token holds it
        return [self._secret, *self._accesses, cached.access if cached else ""]

    def _scrub(self, text: str) -> str:
        """Never a secret in a reason, whatever a vendor message echoes back."""
        return base.short(base.scrub(text, self._secrets()))

    # ---- API calls ------------------------------------------------------------------------

    def _api(self, method: str, path: str, body: Any = None) -> Answer | Result:
        """One API call with the token; on 401 a new token and the call once more."""
        stale: str | None = None
        for attempt in range(2):
            token = self._token(stale)
            if isinstance(token, Result):
                return token
            paced = base.pace(self.limiter)
            if paced is not None:
                return paced
            kwargs: dict[str, Any] = {"headers": {"Authorization": f"Bearer {token.access}"}}
            if body is not None:
                kwargs["json"] = body
            answer = base.call(self.http, method, f"{token.api}/services/data/v{self.api_version}{path}",
                               secrets=self._secrets(), **kwargs)
            if isinstance(answer, Result):
                return answer
            self._note_usage(answer)
            if answer.status == 401 and attempt == 0:
                stale = token.access
                continue
            return answer
        raise AssertionError("unreachable")

    def _note_usage(self, answer: Answer) -> None:
        """`Sforce-Limit-Info: api-usage=n/m`: at the org's allocation, everyone holds off."""
        match = API_USAGE.search(answer.headers.get("Sforce-Limit-Info") or "")
        if match and self.limiter is not None and int(match.group(2)) > 0 \
                and int(match.group(1)) >= int(match.group(2)):
            self.limiter.pause(LIMIT_WAIT)

    def _failure(self, answer: Answer, sobject: str) -> Result:
        """What a non-2xx answer about one record (or a whole batch) means."""
        errors = errors_of(answer.body)
        code = error_code(answer.body)
        said = describe_error(errors, sobject) if errors else base.short(answer.text or f"HTTP {answer.status}")
        if answer.status == 401:
            return Result(RETRY, f"Salesforce refused the access token after a new one ({said})", answer.status)
        if code == "REQUEST_LIMIT_EXCEEDED":
            if self.limiter is not None:
                self.limiter.pause(LIMIT_WAIT)
            return Result(RETRY, f"Salesforce API allocation used up ({said})", answer.status, wait=LIMIT_WAIT)
        if answer.status == 429:
            wait = _retry_after(answer) or THROTTLE_WAIT
            if self.limiter is not None:
                self.limiter.pause(wait)
            return Result(THROTTLED, f"Salesforce: {said}", answer.status, wait=wait)
        if answer.status >= 500 or answer.status == 403:
            return Result(RETRY, f"Salesforce: {said}", answer.status)
        return Result(DEAD, said, answer.status)

    # ---- the CrmWriter protocol -----------------------------------------------------------

    def update(self, writes: list[Write]) -> list[Result]:
        return base.scrub_results(self._update(writes), self._secrets())

    def _update(self, writes: list[Write]) -> list[Result]:
        results, due = base.triage(writes, _refuse)
        if len(due) == 1:
            results[due[0]] = self._update_one(writes[due[0]])
        elif due:
            # Same-type records next to each other (Salesforce processes a collection in type
            # chunks, at most 10); a stable sort keeps each record's own writes in order.
            due.sort(key=lambda i: sobject_of(writes[i]) or "")
            for start in range(0, len(due), BATCH_SIZE):
                chunk = due[start:start + BATCH_SIZE]
                for i, result in zip(chunk, self._update_many([writes[i] for i in chunk]), strict=True):
                    results[i] = result
        return [r if r is not None else Result(RETRY, "not attempted") for r in results]

    def _update_one(self, write: Write) -> Result:
        sobject = sobject_of(write) or ""
        answer = self._api("PATCH", f"/sobjects/{sobject}/{write.object_id}", dict(write.properties))
        if isinstance(answer, Result):
            return answer
        if 200 <= answer.status < 300:
            return Result(OK, status=answer.status)
        return self._failure(answer, sobject)

    def _update_many(self, writes: list[Write]) -> list[Result]:
        records = [{"attributes": {"type": sobject_of(w)}, "id": w.object_id, **w.properties} for w in writes]
        answer = self._api("PATCH", "/composite/sobjects", {"allOrNone": False, "records": records})
        if isinstance(answer, Result):
            return [answer] * len(writes)
        if answer.status == 400:
            # The whole request refused (a field unknown on one record's type, say): one call per
            # write, so that only the faulty one goes to the dead letters.
            return [self._update_one(w) for w in writes]
        if not 200 <= answer.status < 300:
            return [self._failure(answer, "the batch")] * len(writes)
        body = answer.body
        if not isinstance(body, list) or len(body) != len(writes) or not all(isinstance(r, dict) for r in body):
            return [Result(RETRY, "Salesforce answered the batch with an unexpected body", answer.status)] * len(writes)
        return [self._record_result(r, sobject_of(w) or "", answer.status) for r, w in zip(body, writes, strict=True)]

    def _record_result(self, saved: dict[str, Any], sobject: str, status: int) -> Result:
        if saved.get("success") is True:
            return Result(OK, status=status)
        errors = errors_of(saved.get("errors"))
        code = error_code(errors)
        reason = describe_error(errors, sobject)
        if code == "REQUEST_LIMIT_EXCEEDED":
            if self.limiter is not None:
                self.limiter.pause(LIMIT_WAIT)
            return Result(RETRY, f"Salesforce API allocation used up ({reason})", status, wait=LIMIT_WAIT)
        if code in TRANSIENT_CODES:
            return Result(RETRY, reason, status)
        return Result(DEAD, reason, status)

    def log_activity(self, write: Write) -> Result:
        return base.scrub_results([self._log_activity(write)], self._secrets())[0]

    def _log_activity(self, write: Write) -> Result:
        refused = _refuse(write)
        if refused is not None:
            return refused
        if write.activity is None:
            return Result(OK, "no activity")
        sobject = sobject_of(write) or ""
        task: dict[str, Any] = {"Subject": write.activity.subject[:SUBJECT_MAX],
                                "Description": write.activity.body[:DESCRIPTION_MAX],
                                "Status": "Completed", "ActivityDate": _date(write.activity.at)}
        task["WhoId" if sobject in WHO_SOBJECTS else "WhatId"] = write.object_id
        answer = self._api("POST", "/sobjects/Task", task)
        if isinstance(answer, Result):
            return answer
        if 200 <= answer.status < 300:
            return Result(OK, status=answer.status)
        return self._failure(answer, "Task")

    def check(self, needs: dict[str, list[str]]) -> list[str]:
        """A new token (the credentials as they are now), then each sObject's describe."""
        return [base.scrub(line, self._secrets()) for line in self._check(needs)]

    def _check(self, needs: dict[str, list[str]]) -> list[str]:
        token = self._token(stale=self._cached_access())
        if isinstance(token, Result):
            return [token.reason]
        problems: list[str] = []
        for obj, fields in needs.items():
            sobject = SOBJECTS.get(obj) or (obj if SOBJECT_NAME.fullmatch(obj) else None)
            if sobject is None:
                problems.append(f"{base.short(obj, 80)!r} is not a Salesforce object name")
                continue
            answer = self._api("GET", f"/sobjects/{sobject}/describe")
            if isinstance(answer, Result):
                return [*problems, answer.reason]  # reachability: the same for every object
            if answer.status == 404:
                problems.append(f"sObject {sobject} does not exist in the Salesforce org "
                                f"({describe_error(errors_of(answer.body), sobject)})")
                continue
            if not 200 <= answer.status < 300 or not isinstance(answer.body, dict):
                problems.append(f"Salesforce describe {sobject}: {self._failure(answer, sobject).reason}")
                continue
            listed = answer.body.get("fields")
            known = {str(f.get("name", "")).lower(): f for f in (listed if isinstance(listed, list) else [])
                     if isinstance(f, dict)}
            for name in fields:
                found = known.get(name.lower())
                if found is None:
                    problems.append(f"field {name} does not exist on Salesforce {sobject}")
                elif found.get("updateable") is False:
                    problems.append(f"field {name} on Salesforce {sobject} is not updateable")
        return problems

    def _cached_access(self) -> str | None:
        with _TOKENS_LOCK:
            cached = _TOKENS.get(self._key)
        return cached.access if cached else None


def _refuse(write: Write) -> Result | None:
    """A DEAD Result when the write cannot name a Salesforce record, else None."""
    if sobject_of(write) is None:
        return Result(DEAD, f"not a Salesforce sObject name: {base.short(write.sobject or write.object, 80)!r}")
    if not SALESFORCE_ID.fullmatch(write.object_id or ""):
        return Result(DEAD, f"not a Salesforce record id (15 or 18 letters and digits): "
                            f"{base.short(write.object_id, 40)!r}")
    bad = [k for k in write.properties if k.lower() in ("id", "attributes")]
    if bad:
        return Result(DEAD, f"field {bad[0]} cannot be set by a destination")
    return None


def _date(at: str) -> str:
    """The calendar date (UTC) of an ISO 8601 time: a Task's ActivityDate."""
    try:
        moment = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        moment = datetime.now(UTC)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.date().isoformat()


def _retry_after(answer: Answer) -> float | None:
    """A 429's Retry-After (seconds or an HTTP date) within MIN_WAIT..MAX_WAIT; None when unreadable."""
    value = (answer.headers.get("Retry-After") or "").strip()
    if not value or "nan" in value.lower():
        return None
    wait = parse_retry_after(value)
    if wait is None or math.isnan(wait):
        return None
    return min(MAX_WAIT, max(MIN_WAIT, wait))
