"""`revor-bridge hubspot setup`: the Revor property group and properties, created once.

Idempotent by reading first: the group and each property are created only when HubSpot does not
list them, and a 409 (created meanwhile by someone else) counts as already there. A property that
exists is never changed: it may have been edited on purpose in HubSpot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from integration.dispatches.state import RANK
from integration.writeback.crm.base import Answer, Result
from integration.writeback.crm.hubspot import HubSpotWriter, _code, _message, _scopes_hint, rate_limit_wait

GROUP = {"name": "revor", "label": "Revor", "displayOrder": -1}
OBJECTS = ("deals", "contacts")
STATUSES = tuple(RANK)  # every dispatch status, in the order a dispatch moves through them


def revor_properties() -> list[dict[str, Any]]:
    """The definitions `setup` creates on each object (the names the example rules file maps)."""
    group = GROUP["name"]
    return [
        {"name": "revor_status", "label": "Revor status", "groupName": group, "type": "enumeration",
         "fieldType": "select", "description": "The Revor dispatch's latest status (set by Revor Bridge).",
         "options": [{"label": s.capitalize(), "value": s, "displayOrder": i, "hidden": False}
                     for i, s in enumerate(STATUSES)]},
        {"name": "revor_last_job_id", "label": "Revor last job id", "groupName": group, "type": "string",
         "fieldType": "text", "description": "The Revor job of the latest dispatch (set by Revor Bridge)."},
        {"name": "revor_last_sent_at", "label": "Revor last sent at", "groupName": group, "type": "datetime",
         "fieldType": "date", "description": "When Revor last finished a dispatch (set by Revor Bridge)."},
        {"name": "revor_last_error", "label": "Revor last error", "groupName": group, "type": "string",
         "fieldType": "textarea", "description": "Why the latest dispatch failed, if it did (set by Revor Bridge)."},
    ]


class SetupError(Exception):
    """Setup stopped: `usage` when the token is missing or refused (exit 2), `unreachable` when
    HubSpot could not be reached or said wait (exit 3), else HubSpot refused a definition (exit 1)."""

    def __init__(self, message: str, kind: str = "refused") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Created:
    object_type: str
    group: bool = False
    properties: list[str] = field(default_factory=list)

    def line(self) -> str:
        if not self.group and not self.properties:
            return f"{self.object_type}: already there (group revor and {len(revor_properties())} properties)"
        made = (["group revor"] if self.group else []) + self.properties
        return f"{self.object_type}: created {', '.join(made)}"


def setup(writer: HubSpotWriter, object_type: str) -> Created:
    """Create what is missing of the Revor group and properties on `object_type`."""
    created = Created(object_type)
    groups = _ok(writer.request("GET", f"/crm/v3/properties/{object_type}/groups"), object_type, "read")
    if GROUP["name"] not in {g.get("name") for g in _results(groups)}:
        created.group = _create(writer, f"/crm/v3/properties/{object_type}/groups", GROUP, object_type)
    existing = _ok(writer.request("GET", f"/crm/v3/properties/{object_type}"), object_type, "read")
    names = {p.get("name") for p in _results(existing)}
    for definition in revor_properties():
        if definition["name"] not in names and _create(writer, f"/crm/v3/properties/{object_type}", definition,
                                                       object_type):
            created.properties.append(definition["name"])
    return created


def _create(writer: HubSpotWriter, path: str, definition: dict[str, Any], object_type: str) -> bool:
    answer = writer.request("POST", path, json=definition)
    if isinstance(answer, Answer) and answer.status == 409:
        return False  # created since we listed them
    _ok(answer, object_type, "write")
    return True


def _ok(answer: Answer | Result, object_type: str, access: str) -> Answer:
    if isinstance(answer, Result):
        raise SetupError(f"HubSpot API unreachable ({answer.reason})", "unreachable")
    if 200 <= answer.status < 300:
        return answer
    if answer.status == 401:
        raise SetupError(f"HubSpot refused HUBSPOT_ACCESS_TOKEN ({_code(answer)}): check the private app's "
                         "access token", "usage")
    if answer.status == 403:
        raise SetupError(f"HubSpot refused HUBSPOT_ACCESS_TOKEN for {object_type} properties ({_code(answer)}"
                         f"{_scopes_hint(answer, f'crm.schemas.{object_type}.{access}')}): add the scope to the "
                         "private app and use its new token", "usage")
    if answer.status == 429:
        raise SetupError(f"HubSpot rate limit ({_code(answer)}): try again in {rate_limit_wait(answer):.0f} s",
                         "unreachable")
    if answer.status >= 500:
        raise SetupError(f"HubSpot HTTP {answer.status}: {_message(answer)}", "unreachable")
    raise SetupError(f"HubSpot refused it on {object_type} ({_code(answer)}): {_message(answer)}")


def _results(answer: Answer) -> list[dict[str, Any]]:
    body = answer.body if isinstance(answer.body, dict) else {}
    return [r for r in body.get("results") or [] if isinstance(r, dict)]
