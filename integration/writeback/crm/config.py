"""A CRM destination from the rules file, compiled: which record, which properties, which activity.

`plan` turns one status message into a `Write`, or says why it cannot (a dead letter's reason):
the record comes from the message (`data.crm`, and the event's associated records the dispatch
kept in `links`), the property values are the destination's templates rendered over the message
in the rule sandbox, each leaf on its own (body.py), so a CRM value is always one value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from integration.rules.templates import RenderError, Template
from integration.writeback.body import SAMPLE, BodyError, BodyTemplate, _records
from integration.writeback.crm.base import Activity, Write
from schemas.rules import CRM_KINDS

OBJECTS = ("deal", "contact", "company")  # the records a CRM destination updates


class NotWritable(Exception):
    """This message cannot become a write (no such associated record, a template failed)."""


@dataclass(frozen=True)
class CrmDestination:
    name: str
    kind: str  # hubspot | salesforce | pipedrive
    record: str  # event | contact | deal
    on: tuple[str, ...]
    properties: BodyTemplate | None
    activity_on: tuple[str, ...] = ()
    subject: Template | None = None
    body: Template | None = None


def compile_destination(name: str, spec: dict[str, Any], properties: dict[str, Any] | None,
                        subject: Template | None, body: Template | None) -> CrmDestination:
    activity = spec.get("activity") or {}
    return CrmDestination(name, spec["kind"], spec.get("record") or "event", tuple(spec["on"]),
                          BodyTemplate(properties) if properties else None,
                          tuple(activity.get("on") or ()) if activity else (), subject, body)


def sample_problem(destination: CrmDestination) -> tuple[tuple[Any, ...], str] | None:
    """(where, why) when a template fails on a sample message; the loader refuses the file then."""
    context = _context(SAMPLE)
    try:
        if destination.properties:
            nested = _nested(destination.properties.render(context))
            if nested:
                return ("properties", nested[0]), (f"gives a {nested[1]}; a CRM property takes text, a number "
                                                   f"or true/false")
        for part, template in (("subject", destination.subject), ("body", destination.body)):
            if template is not None:
                try:
                    template.render(context)
                except RenderError as exc:
                    return ("activity", part), str(exc)
    except BodyError as exc:
        return ("properties", *exc.path), exc.reason
    except RenderError as exc:
        return ("properties",), str(exc)
    return None


def _nested(properties: dict[str, Any]) -> tuple[str, str] | None:
    """(name, "mapping" or "list") of the first rendered value a CRM property cannot take."""
    for name, value in properties.items():
        if isinstance(value, dict | list):
            return name, "mapping" if isinstance(value, dict) else "list"
    return None


def _context(message_body: dict[str, Any]) -> dict[str, Any]:
    return {"type": message_body.get("type"), "timestamp": message_body.get("timestamp"),
            "data": _records("data", message_body.get("data") or {})}


def target(destination: CrmDestination, message: dict[str, Any]) -> tuple[str, str, str | None]:
    """(object, id, sobject) of the record this message updates; NotWritable when there is none."""
    crm = (message["body"].get("data") or {}).get("crm") or {}
    links = message.get("links") or {}
    source = str(crm.get("source") or "")
    if source in CRM_KINDS and source != destination.kind:
        raise NotWritable(f"the event came from {source}: its records are not {destination.kind} records")
    if destination.record == "event":
        object_type, object_id = crm.get("object_type"), crm.get("object_id")
        sobject = links.get("sobject")
    else:
        object_type, object_id, sobject = destination.record, links.get(destination.record), None
        if object_type == crm.get("object_type"):
            object_id, sobject = crm.get("object_id"), links.get("sobject")
    if not object_id:
        raise NotWritable(f"the event has no associated {destination.record} to update")
    if object_type not in OBJECTS:
        raise NotWritable(f"the event's record is a {object_type}: only deals, contacts and companies are updated")
    return str(object_type), str(object_id), sobject


def plan(destination: CrmDestination, message: dict[str, Any], activity_errors: list[str] | None = None) -> Write:
    """The write for one status message (NotWritable with the reason when there is none).

    With `activity_errors`, an activity that cannot be rendered is left out and its reason added
    there, so that the properties are still written (a note is no reason to leave a stale status).
    """
    data = message["body"].get("data") or {}
    object_type, object_id, sobject = target(destination, message)
    context = _context(message["body"])
    properties: dict[str, Any] = {}
    if destination.properties and data.get("status") in destination.on:  # else only its activity is due
        try:
            properties = destination.properties.render(context)
        except BodyError as exc:
            raise NotWritable(f"properties.{'.'.join(str(p) for p in exc.path)}: {exc.reason}") from None
        except RenderError as exc:
            raise NotWritable(f"properties: {exc}") from None
        nested = _nested(properties)
        if nested:
            raise NotWritable(f"properties.{nested[0]}: a CRM property takes text, a number or true/false, "
                              f"not a {nested[1]}")
    activity = None
    if data.get("status") in destination.activity_on and destination.body is not None:
        try:
            activity = Activity((destination.subject.render(context) if destination.subject else "").strip(),
                                destination.body.render(context), str(message["body"].get("timestamp") or ""))
        except RenderError as exc:
            if activity_errors is None:
                raise NotWritable(f"activity: {exc}") from None
            activity_errors.append(f"activity: {exc}")
    account = (data.get("crm") or {}).get("account")
    return Write(key=f"rb:msg:{message['id']}", object=object_type, object_id=object_id, properties=properties,
                 activity=activity, account=str(account) if account else None, sobject=sobject)


# When the rules do not say which records an `event` destination meets (`*.*`, another object): the usual two.
UNCLEAR_OBJECTS = ("deal", "contact")


def needs(ruleset: Any, name: str) -> dict[str, list[str]]:
    """Which bridge objects CRM destination `name` writes, and which property names on each (for `check`).

    `record: contact` / `deal` writes only that object. `record: event` writes the record each event came
    from: the object of the event types of the rules that write back to it (`deal.*` is a deal); a wildcard
    or another object cannot be told apart, so deals and contacts are both checked then.
    """
    destination: CrmDestination = ruleset.crm_destinations[name]
    properties = list(destination.properties.leaves) if destination.properties else []
    if destination.record != "event":
        return {destination.record: properties}
    objects: list[str] = []
    for rule in ruleset.rules:
        if name not in rule.writeback:
            continue
        for kind in rule.when.get("type") or ["*.*"]:
            found = kind.split(".", 1)[0]
            objects.extend([found] if found in OBJECTS else UNCLEAR_OBJECTS)
    return {obj: list(properties) for obj in dict.fromkeys(objects or UNCLEAR_OBJECTS)}


def shared_properties(compiled: dict[str, CrmDestination]) -> list[tuple[str, str, list[str]]]:
    """Pairs of destinations of one CRM that could set the same property on the same record.

    The newest state change wins per destination (crm/deliver.py); two destinations writing one
    property of one record would each keep their own "newest", and an older status could win.
    """
    found = []
    names = sorted(compiled)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            a, b = compiled[first], compiled[second]
            if a.kind != b.kind or not a.properties or not b.properties or {a.record, b.record} == {"contact", "deal"}:
                continue
            common = sorted(set(a.properties.leaves) & set(b.properties.leaves))
            if common:
                found.append((first, second, common))
    return found
