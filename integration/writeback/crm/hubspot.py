"""HubSpot writer: status properties set on the deal / contact / company, notes on its timeline.

Only `HUBSPOT_API_BASE_URL` is ever called, with object types from a fixed map and ids that are
plain digits, so nothing in an event can steer a request elsewhere. The private-app token goes in
`Authorization: Bearer` and nowhere else (never in a reason or a log line).

Every request first takes a token from the portal's shared limiter (`hubspot:<portal>`, the
bucket hydration uses too), so write-back and hydration together stay under the portal's
allocation; a 429 pauses that limiter for everyone.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable
from typing import Any, ClassVar

import redis

from integration.dispatches.limits import Limiter
from integration.hydrate.hubspot import HUBSPOT_ID
from integration.revor.client import parse_retry_after
from integration.writeback.crm.base import (
    DEAD,
    DEFAULT_TIMEOUT,
    OK,
    RETRY,
    THROTTLED,
    Answer,
    NotConfigured,
    Result,
    Write,
    call,
    pace,
    scrub,
    scrub_results,
    session,
    short,
    triage,
)

# The bridge's object name -> HubSpot's object type in paths.
OBJECT_TYPES = {"deal": "deals", "contact": "contacts", "company": "companies"}
# Note -> record association types (HUBSPOT_DEFINED).
NOTE_ASSOCIATION = {"deal": 214, "contact": 202, "company": 190}
BATCH_LIMIT = 100  # inputs per batch request
NOTE_BODY_LIMIT = 65536  # characters of hs_note_body
DEFAULT_WAIT = 10.0  # a 429 that says nothing of how long: HubSpot's rolling window is 10 s
DAILY_WAIT = 3600.0  # a 429 for the daily allocation: try again in an hour, not tomorrow
# "Property values were not valid: [{...}]": the list after the colon is JSON.
_PROPERTY_ERRORS = re.compile(r"\[.*\]", re.S)


class HubSpotWriter:
    """One per worker thread: a requests.Session and the portal limiters."""

    kind: ClassVar[str] = "hubspot"
    batch_size: ClassVar[int] = BATCH_LIMIT

    def __init__(self, base_url: str, token: str, connection: redis.Redis | None, max_rps: float = 8.0,
                 timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._token = token
        self._connection = connection
        self._max_rps = max_rps
        self._limiters: dict[str, Limiter] = {}
        self._session = session()
        self._session.headers["Authorization"] = f"Bearer {token}"

    @classmethod
    def from_settings(cls, settings: Any, connection: redis.Redis | None) -> HubSpotWriter:
        token = settings.hubspot_access_token
        if token is None or not token.get():
            raise NotConfigured("HUBSPOT_ACCESS_TOKEN is not set: a private app's access token is needed to write "
                                "into HubSpot")
        return cls(settings.hubspot_api_base_url, token.get(), connection, settings.hubspot_max_rps)

    def __repr__(self) -> str:
        return f"HubSpotWriter({self.base_url!r})"

    def close(self) -> None:
        self._session.close()

    # ---- the protocol -------------------------------------------------------------------

    def update(self, writes: list[Write]) -> list[Result]:
        results, due = triage(writes, _refuse)
        groups: dict[tuple[str, str], list[int]] = {}
        for index in due:
            write = writes[index]
            groups.setdefault((OBJECT_TYPES[write.object], write.account or "default"), []).append(index)
        stopped: dict[str, Result] = {}  # portal -> the answer that concerns every further call (429, 401)
        for (object_type, portal), indexes in groups.items():
            for chunk in _chunks(indexes, writes):
                if portal in stopped:
                    for index in chunk:
                        results[index] = stopped[portal]
                    continue
                found = (self._update_one(writes[chunk[0]]) if len(chunk) == 1
                         else self._update_batch(object_type, [writes[i] for i in chunk]))
                for index, result in zip(chunk, found, strict=True):
                    results[index] = result
                whole = next((r for r in found if _stops_all(r)), None)
                if whole is not None:
                    stopped[portal] = whole
        return scrub_results([r if r is not None else Result(RETRY, "not tried") for r in results], [self._token])

    def log_activity(self, write: Write) -> Result:
        refused = _refuse(write)
        if refused is not None:
            return refused
        activity = write.activity
        if activity is None:
            return Result(OK, "no activity")
        body = f"<strong>{html.escape(activity.subject)}</strong>"
        if activity.body:
            body += "<br>" + html.escape(activity.body).replace("\r\n", "\n").replace("\n", "<br>")
        payload = {
            "properties": {"hs_timestamp": activity.at, "hs_note_body": body[:NOTE_BODY_LIMIT]},
            "associations": [{"to": {"id": write.object_id},
                              "types": [{"associationCategory": "HUBSPOT_DEFINED",
                                         "associationTypeId": NOTE_ASSOCIATION[write.object]}]}],
        }
        answer = self._request("POST", "/crm/v3/objects/notes", write.account, json=payload)
        return scrub_results([self._result(answer, write.account, OBJECT_TYPES[write.object])], [self._token])[0]

    def check(self, needs: dict[str, list[str]]) -> list[str]:
        return [scrub(line, [self._token]) for line in self._check(needs)]

    def _check(self, needs: dict[str, list[str]]) -> list[str]:
        problems: list[str] = []
        wanted = dict(needs) or {"deal": []}  # nothing mapped: still prove the token works
        for name, properties in wanted.items():
            object_type = OBJECT_TYPES.get(name)
            if object_type is None:
                problems.append(f"HubSpot has no object {name!r} the bridge writes (deal, contact or company)")
                continue
            answer = self._request("GET", f"/crm/v3/properties/{object_type}", None, max_wait=2.0)
            if isinstance(answer, Result):
                problems.append(f"HubSpot API unreachable at {self.base_url} ({answer.reason})")
                return problems
            if answer.status == 401:
                problems.append(f"HubSpot refused HUBSPOT_ACCESS_TOKEN ({_code(answer)})")
                return problems
            if answer.status == 403:
                problems.append(f"HubSpot refused HUBSPOT_ACCESS_TOKEN for {object_type} properties ({_code(answer)}"
                                f"{_scopes_hint(answer, f'crm.schemas.{object_type}.read')})")
                continue
            if answer.status == 429:
                problems.append(f"HubSpot rate limited the check ({_code(answer)}): try again shortly")
                return problems
            if not 200 <= answer.status < 300 or not isinstance(answer.body, dict):
                problems.append(f"HubSpot answered HTTP {answer.status} listing {object_type} properties")
                continue
            existing = {p.get("name") for p in _list(answer.body.get("results")) if isinstance(p, dict)}
            problems.extend(f"property {p} does not exist on HubSpot {object_type}"
                            for p in properties if p not in existing)
        granted = self._granted_scopes()
        if granted is not None:
            for name in wanted:
                scope = f"crm.objects.{OBJECT_TYPES.get(name, name)}.write"
                if name in OBJECT_TYPES and scope not in granted:
                    problems.append(f"HUBSPOT_ACCESS_TOKEN lacks the scope {scope}: HubSpot would refuse every "
                                    f"write (grant it in the private app's Scopes tab)")
        return problems

    def _granted_scopes(self) -> set[str] | None:
        """The token's scopes, from HubSpot's private-app token info; None when it cannot say (an
        OAuth token, an older portal): `check` then cannot see the write scopes, the first write will."""
        answer = self._request("POST", "/oauth/v2/private-apps/get/access-token-info", None, max_wait=2.0,
                               json={"tokenKey": self._token})
        if isinstance(answer, Result) or answer.status != 200 or not isinstance(answer.body, dict):
            return None
        scopes = answer.body.get("scopes")
        return {s for s in scopes if isinstance(s, str)} if isinstance(scopes, list) else None

    # ---- requests -----------------------------------------------------------------------

    def limiter(self, account: str | None) -> Limiter | None:
        """The portal's shared limiter (the bucket hydration takes from); None without Redis."""
        if self._connection is None:
            return None
        name = f"hubspot:{account or 'default'}"
        if name not in self._limiters:
            self._limiters[name] = Limiter(self._connection, name, self._max_rps)
        return self._limiters[name]

    def request(self, method: str, path: str, account: str | None = None, **kwargs: Any) -> Answer | Result:
        """One paced call to the API (for `hubspot setup`): an Answer, or a THROTTLED/RETRY Result."""
        return self._request(method, path, account, **kwargs)

    def _request(self, method: str, path: str, account: str | None, max_wait: float | None = None,
                 **kwargs: Any) -> Answer | Result:
        limiter = self.limiter(account)
        waited = pace(limiter) if max_wait is None else pace(limiter, max_wait)
        if waited is not None:
            return waited
        answer = call(self._session, method, self.base_url + path, timeout=self.timeout, secrets=[self._token],
                      **kwargs)
        if isinstance(answer, Answer) and answer.status == 429:
            wait = rate_limit_wait(answer)
            if limiter is not None:
                limiter.pause(wait)
        return answer

    def _update_one(self, write: Write) -> list[Result]:
        object_type = OBJECT_TYPES[write.object]
        answer = self._request("PATCH", f"/crm/v3/objects/{object_type}/{write.object_id}", write.account,
                               json={"properties": _values(write.properties)})
        if isinstance(answer, Answer) and 200 <= answer.status < 300 and not (
                isinstance(answer.body, dict) and _id(answer.body.get("id")) is not None):
            # HubSpot answers an update with the updated record; anything else (a proxy's page, an
            # empty body) does not say the write happened. The id may differ: a merged record answers
            # with the record it was merged into.
            return [Result(RETRY, f"HubSpot answered HTTP {answer.status} without the updated record "
                                  f"({_message(answer)})", answer.status)]
        return [self._result(answer, write.account, object_type)]

    def _one_by_one(self, writes: list[Write]) -> list[Result]:
        """One PATCH per write; an answer that concerns every write (429, 401/403, no answer) is
        given to the rest without calling again."""
        results: list[Result] = []
        for write in writes:
            if results and _stops_all(results[-1]):
                results.append(results[-1])
            else:
                results.append(self._update_one(write)[0])
        return results

    def _update_batch(self, object_type: str, writes: list[Write]) -> list[Result]:
        account = writes[0].account
        payload = {"inputs": [{"id": w.object_id, "properties": _values(w.properties)} for w in writes]}
        answer = self._request("POST", f"/crm/v3/objects/{object_type}/batch/update", account, json=payload)
        if isinstance(answer, Result):
            return [answer] * len(writes)
        if answer.status in (200, 207):
            if not isinstance(answer.body, dict):
                return [Result(RETRY, f"HubSpot answered the batch update with HTTP {answer.status} but no JSON "
                                      f"results ({_message(answer)})", answer.status)] * len(writes)
            # A write is written when the answer's `results` name its record and its `errors` do not;
            # errors whose ids cannot be read could concern any write. Every write not confirmed so
            # goes again as its own PATCH, whose answer says what became of it.
            failed = _failed_ids(answer.body)
            confirmed = set() if failed is None else _result_ids(answer.body) - failed
            unconfirmed = [w for w in writes if w.object_id not in confirmed]
            again = iter(self._one_by_one(unconfirmed))
            return [Result(OK, status=answer.status) if w.object_id in confirmed else next(again) for w in writes]
        if 400 <= answer.status < 500 and answer.status not in (401, 403, 408, 429):
            # The whole batch refused for one input's fault (a deleted record, a missing property):
            # one request per write, so that only the faulty one goes to the dead letters.
            return self._one_by_one(writes)
        return [self._result(answer, account, object_type)] * len(writes)

    def _result(self, answer: Answer | Result, account: str | None, object_type: str) -> Result:
        """What HubSpot's answer IS for the message (base.py's outcomes)."""
        if isinstance(answer, Result):
            return answer
        status = answer.status
        if 200 <= status < 300:
            return Result(OK, status=status)
        if status == 429:
            return Result(THROTTLED, self._clean(f"HubSpot rate limit ({_code(answer)})"), status,
                          rate_limit_wait(answer))
        if status in (401, 403):
            hint = _scopes_hint(answer, f"crm.objects.{object_type}.write") if status == 403 else ""
            return Result(RETRY, self._clean(f"HubSpot refused HUBSPOT_ACCESS_TOKEN ({_code(answer)}{hint})"), status)
        if status >= 500 or status == 408:
            return Result(RETRY, self._clean(f"HubSpot HTTP {status}: {_message(answer)}"), status)
        missing = _missing_properties(answer)
        if missing:
            names = ", ".join(missing)
            noun = "property" if len(missing) == 1 else "properties"
            verb = "does" if len(missing) == 1 else "do"
            return Result(DEAD, self._clean(f"{noun} {names} {verb} not exist on HubSpot {object_type} "
                                            f"({_code(answer)} PROPERTY_DOESNT_EXIST)"), status)
        return Result(DEAD, self._clean(f"HubSpot {_code(answer)}: {_message(answer)}"), status)

    def _clean(self, text: str) -> str:
        """A reason never holds the token, whatever the API echoed back."""
        return short(text.replace(self._token, "***") if self._token else text)


def rate_limit_wait(answer: Answer) -> float:
    """How long a 429 asks everyone to wait: Retry-After, else the rolling window's length, else
    10 s; an hour when the daily allocation is used up (it resets at the portal's midnight)."""
    body = answer.body if isinstance(answer.body, dict) else {}
    if str(body.get("policyName") or "").upper() == "DAILY":
        return DAILY_WAIT
    wait = parse_retry_after(answer.headers.get("Retry-After"))
    if wait is None:
        interval = answer.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds") or ""
        wait = int(interval) / 1000 if interval.strip().isdigit() else None
    return max(1.0, min(wait if wait is not None else DEFAULT_WAIT, DAILY_WAIT))


def _refuse(write: Write) -> Result | None:
    if write.object not in OBJECT_TYPES:
        return Result(DEAD, f"HubSpot has no object {short(write.object, 40)!r} (deal, contact or company)")
    if not HUBSPOT_ID.fullmatch(str(write.object_id)):
        return Result(DEAD, f"not a HubSpot id: {short(repr(str(write.object_id)), 42)}")  # repr: a newline shows
    return None


def _values(properties: dict[str, Any]) -> dict[str, str]:
    """HubSpot takes every value as a string; "" clears the property."""
    out: dict[str, str] = {}
    for name, value in properties.items():
        if value is None:
            out[name] = ""
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        else:
            out[name] = str(value)
    return out


def _chunks(indexes: list[int], writes: list[Write]) -> Iterable[list[int]]:
    """Batches of at most BATCH_LIMIT, each id at most once (HubSpot refuses duplicate ids in one
    batch); two writes for one record stay in their order, in consecutive requests."""
    chunk: list[int] = []
    ids: set[str] = set()
    for index in indexes:
        object_id = writes[index].object_id
        if len(chunk) >= BATCH_LIMIT or object_id in ids:
            yield chunk
            chunk, ids = [], set()
        chunk.append(index)
        ids.add(object_id)
    if chunk:
        yield chunk


def _stops_all(result: Result) -> bool:
    """An answer about the portal, not the record: every further call would get it too."""
    return result.outcome == THROTTLED or result.status in (401, 403) or (
        result.outcome == RETRY and result.status is None)


def _list(value: Any) -> list[Any]:
    """A JSON list as it is; anything else (a number, a string, an object, null): no items."""
    return value if isinstance(value, list) else []


def _id(value: Any) -> str | None:
    """A record id as HubSpot sends it (a string, sometimes a number), as text; else None."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)


def _code(answer: Answer) -> str:
    body = answer.body if isinstance(answer.body, dict) else {}
    category = body.get("category") or body.get("errorType") or body.get("policyName")
    return f"{answer.status} {category}" if category else str(answer.status)


def _message(answer: Answer) -> str:
    body = answer.body if isinstance(answer.body, dict) else {}
    return short(body.get("message") or answer.text or "no message", 240)


def _missing_properties(answer: Answer) -> list[str]:
    """The properties a 400 VALIDATION_ERROR says do not exist (PROPERTY_DOESNT_EXIST)."""
    body = answer.body if isinstance(answer.body, dict) else {}
    message = str(body.get("message") or "")
    errors = _list(body.get("errors"))
    if "PROPERTY_DOESNT_EXIST" not in message and "PROPERTY_DOESNT_EXIST" not in json.dumps(errors):
        return []
    names: list[str] = []
    found = _PROPERTY_ERRORS.search(message)
    if found:
        try:
            entries = _list(json.loads(found.group(0)))
        except (ValueError, RecursionError):
            entries = []
        names += [str(e.get("name")) for e in entries if isinstance(e, dict)
                  and e.get("error") == "PROPERTY_DOESNT_EXIST" and e.get("name")]
    for error in errors:
        if isinstance(error, dict) and error.get("code") == "PROPERTY_DOESNT_EXIST":
            context = error.get("context")
            named = context.get("propertyName") if isinstance(context, dict) else None
            names += _names(named)
    if not names:  # the code without a readable name: still name what we can
        names = re.findall(r'Property \\?"([A-Za-z0-9_]+)\\?" does not exist', message)
    return list(dict.fromkeys(short(n, 100) for n in names)) or ["(unnamed)"]


def _names(value: Any) -> list[str]:
    """A name, or a list of names, as HubSpot's error context gives them (one string or a list)."""
    items = [value] if isinstance(value, str) else _list(value)
    return [str(i) for i in items if isinstance(i, str | int) and not isinstance(i, bool) and str(i)]


def _result_ids(body: dict[str, Any]) -> set[str]:
    """The record ids a batch answer's `results` name: the writes it confirms."""
    return {i for r in _list(body.get("results")) if isinstance(r, dict) and (i := _id(r.get("id"))) is not None}


def _failed_ids(body: dict[str, Any]) -> set[str] | None:
    """The ids a multi-status batch answer lists under `errors` (their context's ids); None when
    it has errors whose ids cannot be read, so that any write may be among them."""
    errors = body.get("errors")
    if errors is None:
        return set()
    if not isinstance(errors, list):
        return None
    ids: set[str] = set()
    for error in errors:
        context = error.get("context") if isinstance(error, dict) else None
        named = context.get("ids") if isinstance(context, dict) else None
        if not isinstance(named, list) or not named or any(_id(i) is None for i in named):
            return None
        ids.update(str(i) for i in named)
    return ids


def _scopes_hint(answer: Answer, default: str) -> str:
    """`: needs scope X` from a 403 MISSING_SCOPES body, else the scope this call documents."""
    scopes: list[str] = []
    body = answer.body if isinstance(answer.body, dict) else {}
    for error in _list(body.get("errors")):
        context = error.get("context") if isinstance(error, dict) else None
        if isinstance(context, dict):
            for key in ("requiredGranularScopes", "requiredScopes", "missingScopes"):
                scopes += _names(context.get(key))
    return f": needs scope {', '.join(dict.fromkeys(scopes)) if scopes else default}"


__all__ = ["HubSpotWriter", "rate_limit_wait", "OBJECT_TYPES", "NOTE_ASSOCIATION"]
