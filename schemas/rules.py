"""The rules file (README, "Rules"), strictly: unknown keys RAISE so typos are caught.

Template strings are only checked for type here; `integration/rules/loader.py` compiles each
one and reports syntax errors with the rule and field, and the YAML line where possible.
"""

from __future__ import annotations

import base64
import math
import re
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from schemas.events import SOURCE_PATTERN, VERBS
from schemas.revor import CHANNEL_RECIPIENT, CHANNELS, MAX_INTERVAL_SECONDS, MIN_INTERVAL_SECONDS

RULE_NAME = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z",
                            error="Use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.")
SOURCE = re.compile(SOURCE_PATTERN)
EVENT_TYPE = re.compile(rf"^([a-z][a-z0-9_]*|\*)\.({'|'.join(VERBS)}|\*)\Z")
OPERATORS = {"exists", "eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "changed_from", "changed_to"}
STATES = ("accepted", "scheduled", "running", "succeeded", "failed", "cancelled", "rejected", "invalid", "skipped")


class Interval(fields.Field):
    """`interval_seconds`: a fixed int, or `[low, high]` for a random draw per dispatch."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[int]:
        def check(number: Any) -> int:
            if isinstance(number, bool) or not isinstance(number, int):
                raise ValidationError("Expected whole seconds.")
            if not MIN_INTERVAL_SECONDS <= number <= MAX_INTERVAL_SECONDS:
                raise ValidationError(f"Expected {MIN_INTERVAL_SECONDS} to {MAX_INTERVAL_SECONDS} seconds "
                                      f"(Revor's pacing limits).")
            return number

        if isinstance(value, list):
            if len(value) != 2:
                raise ValidationError("Expected [low, high].")
            low, high = check(value[0]), check(value[1])
            if low > high:
                raise ValidationError("Expected low <= high.")
            return [low, high]
        fixed = check(value)
        return [fixed, fixed]


class Names(fields.Field):
    """A list of names; a single name is accepted as a list of one."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
            raise ValidationError("Expected a name or a list of names.")
        return items


class Condition(fields.Field):
    """One `match` entry: a value (equality), a list (any of) or an operator mapping."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, dict):
            unknown = set(value) - OPERATORS
            if unknown or not value:
                raise ValidationError(f"Unknown operator(s) {sorted(unknown)}; use {sorted(OPERATORS)}."
                                      if unknown else "Expected at least one operator.")
            if "exists" in value and not isinstance(value["exists"], bool):
                raise ValidationError("exists takes true or false.")
            for op in ("gt", "gte", "lt", "lte"):
                if op in value and (isinstance(value[op], bool) or not isinstance(value[op], int | float)):
                    raise ValidationError(f"{op} takes a number.")
            for op in ("in", "not_in"):
                if op in value and not isinstance(value[op], list):
                    raise ValidationError(f"{op} takes a list.")
            return value
        if isinstance(value, list):
            if not value or any(isinstance(v, dict | list) for v in value):
                raise ValidationError("A list means any of these values: give plain values.")
            return value
        if isinstance(value, dict | list) or value is None:
            raise ValidationError("Expected a value, a list of values or an operator mapping.")
        return value


class WhenSchema(Schema):
    class Meta:
        unknown = RAISE

    source = Names(required=True)
    type = Names(load_default=["*.*"])
    match = fields.Dict(keys=fields.String(validate=validate.Regexp(r"^[A-Za-z_][A-Za-z0-9_]*(\.[^.\s]+)+\Z|^account\Z",
                                                                    error="Use a dotted path like deal.dealstage.")),
                        values=Condition(), load_default=dict)
    if_ = fields.String(data_key="if", load_default=None)

    @validates_schema
    def _names(self, data: dict[str, Any], **_: Any) -> None:
        for source in data.get("source", []):
            if not SOURCE.match(source):
                raise ValidationError(f"Unknown source {source!r}: use hubspot, salesforce, pipedrive, "
                                      f"generic:<name> or csv:<name>.", "source")
        for kind in data.get("type", []):
            if not EVENT_TYPE.match(kind):
                raise ValidationError(f"Unknown type {kind!r}: use <object>.{'|'.join(VERBS)} "
                                      f"(* allowed).", "type")


class AttachmentSchema(Schema):
    class Meta:
        unknown = RAISE

    file = fields.String(required=True)
    filename = fields.String(load_default=None)


class DispatchSpecSchema(Schema):
    class Meta:
        unknown = RAISE

    account = fields.String(required=True, validate=validate.Length(min=1))
    channel = fields.String(required=True, validate=validate.OneOf(CHANNELS))
    recipient = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    content = fields.Dict(keys=fields.String(validate=validate.OneOf(["subject", "text", "html"])),
                          values=fields.String(), required=True)
    attachments = fields.List(fields.Nested(AttachmentSchema), load_default=list)
    metadata = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=40)), values=fields.String(),
                           load_default=dict)
    interval_seconds = Interval(load_default=None)

    @validates_schema(skip_on_field_errors=True)
    def _per_channel(self, data: dict[str, Any], **_: Any) -> None:
        channel = data["channel"]
        allowed = {CHANNEL_RECIPIENT[channel]} | ({"name"} if channel == "email" else set())
        errors: dict[str, Any] = {}
        extra = set(data["recipient"]) - allowed
        if extra:
            errors["recipient"] = [f"{channel} takes {sorted(allowed)}, not {sorted(extra)}."]
        elif CHANNEL_RECIPIENT[channel] not in data["recipient"]:
            errors["recipient"] = [f"{channel} needs recipient.{CHANNEL_RECIPIENT[channel]}."]
        content = data["content"]
        if channel == "email":
            if "subject" not in content or not ({"text", "html"} & set(content)):
                errors["content"] = ["email needs subject and text or html."]
        else:
            if {"subject", "html"} & set(content):
                errors["content"] = [f"{channel} takes only text (and attachments)."]
            elif "text" not in content and not data["attachments"]:
                errors["content"] = [f"{channel} needs text or an attachment."]
        if errors:
            raise ValidationError(errors)


class RuleSchema(Schema):
    class Meta:
        unknown = RAISE

    name = fields.String(required=True, validate=RULE_NAME)
    when = fields.Nested(WhenSchema, required=True)
    dispatch = fields.Nested(DispatchSpecSchema, required=True)
    once_per = fields.String(load_default=None)
    suppress_if = fields.String(load_default=None)
    writeback = Names(load_default=list)
    enabled = fields.Boolean(load_default=True)


BODY_EXAMPLE = ('body:\n  objectId: "{{ data.crm.object_id }}"\n  status: "{{ data.status }}"\n'
                '  sequence: "{{ data.sequence }}"')
MAX_BODY_DEPTH = 8
MAX_BODY_LEAVES = 200


class Body(fields.Field):
    """A destination `body`: a mapping whose string leaves are templates (see integration/writeback/body.py).

    The bridge renders each leaf and JSON-encodes the whole, so no CRM value can add a key. A
    string body (the old "template that renders JSON") is refused with an example of the mapping.
    """

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict[str, Any]:
        if isinstance(value, str):
            raise ValidationError("body is a mapping whose values are templates, not one template that renders "
                                  "JSON (a CRM value could change that JSON); write it as YAML, for example:\n"
                                  + BODY_EXAMPLE)
        if not isinstance(value, dict):
            raise ValidationError("body is a mapping of JSON keys to values, for example:\n" + BODY_EXAMPLE)
        leaves = [0]
        errors = self._check(value, (), leaves)
        if leaves[0] > MAX_BODY_LEAVES:
            errors.append(f"body: at most {MAX_BODY_LEAVES} values.")
        if errors:
            raise ValidationError(errors)
        return value

    def _check(self, value: Any, path: tuple[Any, ...], leaves: list[int]) -> list[str]:
        where = ".".join(["body", *(str(p) for p in path)])
        if len(path) > MAX_BODY_DEPTH:
            return [f"{where}: nested deeper than {MAX_BODY_DEPTH} levels."]
        if isinstance(value, dict):
            problems = [f"{where}: key {k!r} must be text (quote it)." for k in value if not isinstance(k, str)]
            return problems + [p for k, v in value.items() for p in self._check(v, (*path, k), leaves)]
        if isinstance(value, list):
            return [p for i, v in enumerate(value) for p in self._check(v, (*path, i), leaves)]
        leaves[0] += 1
        if isinstance(value, float) and not math.isfinite(value):
            return [f"{where}: {value} is not a JSON number."]
        if value is None or isinstance(value, str | bool | int | float):
            return []
        return [f"{where}: expected text, a number, true, false, null, a list or a mapping, not "
                f"{type(value).__name__} (quote dates and times)."]


MIN_SECRET_BYTES = 24  # the Standard Webhooks minimum for a whsec_ secret
MAKE_SECRET = ('python -c "import base64,os;print(\'whsec_\'+base64.b64encode(os.urandom(32)).decode())"')


def whsec_secret(value: str) -> None:
    """A destination's signing secret: `whsec_` + base64 of at least 24 random bytes; says what is wrong."""
    how = f"; make one with: {MAKE_SECRET}"
    if not value.startswith("whsec_"):
        raise ValidationError(f"Expected a whsec_ secret (whsec_ + base64 of {MIN_SECRET_BYTES}+ random bytes){how}")
    encoded = value.removeprefix("whsec_")
    bare = encoded.rstrip("=")
    if not re.fullmatch(r"[A-Za-z0-9+/]+", bare) or len(bare) % 4 == 1 or len(encoded) - len(bare) > 2:
        raise ValidationError(f"The part after whsec_ is not base64 (A-Z a-z 0-9 + / and = padding){how}")
    size = len(base64.b64decode(bare + "=" * (-len(bare) % 4)))
    if size < MIN_SECRET_BYTES:
        raise ValidationError(f"The whsec_ secret decodes to {size} bytes; it needs at least {MIN_SECRET_BYTES}{how}")


DESTINATION_KINDS = ("webhook", "hubspot", "salesforce", "pipedrive")
CRM_KINDS = DESTINATION_KINDS[1:]
RECORDS = ("event", "contact", "deal")
MAX_PROPERTIES = 50
# HubSpot internal names, Salesforce API names (Field__c), Pipedrive keys (40 hex characters).
PROPERTY_NAME = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9_]{0,99}\Z",
                                error="Use the property's internal name, the field's API name or the field's "
                                      "key (letters, digits and _).")
# Only for one kind or the other: named when a destination mixes them up.
WEBHOOK_ONLY = ("url", "secret", "body")
CRM_ONLY = ("record", "properties", "activity")


class Properties(fields.Field):
    """A CRM destination's `properties`: property / field name -> a template (or a fixed value)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict[str, Any]:
        if not isinstance(value, dict) or not value:
            raise ValidationError("Expected a mapping of property names to templates, for example "
                                  "revor_status: \"{{ data.status }}\".")
        errors: list[str] = []
        if len(value) > MAX_PROPERTIES:
            errors.append(f"At most {MAX_PROPERTIES} properties.")
        for name, item in value.items():
            if not isinstance(name, str):
                errors.append(f"Key {name!r} must be text (quote it).")
                continue
            if not name or len(name) > 200 or any(ord(c) < 32 or ord(c) == 127 for c in name):
                errors.append(f"{name!r}: expected a name of 1 to 200 characters without control characters.")
            if isinstance(item, float) and not math.isfinite(item):
                errors.append(f"{name}: {item} is not a number a CRM accepts.")
            elif not (item is None or isinstance(item, str | bool | int | float)):
                errors.append(f"{name}: expected a template (text), a number, true, false or null, not "
                              f"{type(item).__name__}.")
        if errors:
            raise ValidationError(errors)
        return value


class ActivitySchema(Schema):
    """A note (HubSpot, Pipedrive) or a Task (Salesforce) logged on the record for chosen statuses."""

    class Meta:
        unknown = RAISE

    on = fields.List(fields.String(validate=validate.OneOf(STATES)), load_default=lambda: ["succeeded", "failed"],
                     validate=validate.Length(min=1))
    subject = fields.String(load_default="Revor {{ data.channel }} {{ data.status }}",
                            validate=validate.Length(min=1, max=2000))
    body = fields.String(load_default="Revor {{ data.channel }} dispatch {{ data.dispatch_id }}: {{ data.status }}"
                                      "{% if data.revor_job_id %}, Revor job {{ data.revor_job_id }}{% endif %}"
                                      "{% if data.reason %}. {{ data.reason }}{% endif %}",
                         validate=validate.Length(min=1, max=20_000))


class DestinationSchema(Schema):
    """A write-back destination: a signed webhook (the default kind) or a CRM's own API.

    The CRM kinds update a record through the API whose credentials are in the environment
    (HUBSPOT_ACCESS_TOKEN, SALESFORCE_*, PIPEDRIVE_API_TOKEN); they have no URL or secret here.
    """

    class Meta:
        unknown = RAISE

    kind = fields.String(load_default="webhook", validate=validate.OneOf(DESTINATION_KINDS))
    url = fields.Url(schemes={"http", "https"}, require_tld=False)
    secret = fields.String(validate=whsec_secret)
    on = fields.List(fields.String(validate=validate.OneOf(STATES)), load_default=lambda: list(STATES))
    body = Body(load_default=None, allow_none=True)
    record = fields.String(validate=validate.OneOf(RECORDS))
    properties = Properties()
    activity = fields.Nested(ActivitySchema, allow_none=True)

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _by_kind(self, data: dict[str, Any], original: Any, **_: Any) -> None:
        kind = data.get("kind", "webhook")
        errors: dict[str, list[str]] = {}
        if kind == "webhook":
            for name in ("url", "secret"):
                if name not in data:
                    errors[name] = ["Missing data for required field."]
            for name in CRM_ONLY:
                if name in data:
                    errors[name] = ["Only for kind hubspot, salesforce or pipedrive (this destination is a "
                                    "webhook: add kind: hubspot, salesforce or pipedrive)."]
        else:
            if kind != "pipedrive":  # Pipedrive's check and dead letters turn a field's name into its key
                wrong = [f"{name!r}: {PROPERTY_NAME.error}" for name in (data.get("properties") or {})
                         if not re.fullmatch(PROPERTY_NAME.regex, name)]
                if wrong:
                    errors["properties"] = wrong
            for name in WEBHOOK_ONLY:
                if data.get(name) is not None:
                    errors[name] = [f"Not for kind {kind}: it writes through the {kind} API, whose credentials "
                                    f"come from the environment."]
            given = original if isinstance(original, dict) else {}
            if not any(data.get(n) or given.get(n) for n in ("properties", "activity")):
                errors["properties"] = [f"A {kind} destination sets properties (a mapping of names to templates), "
                                        f"logs an activity, or both."]
        if errors:
            raise ValidationError(errors)


class DefaultsSchema(Schema):
    class Meta:
        unknown = RAISE

    interval_seconds = Interval(load_default=lambda: [180, 360])
    linkedin_text_limit = fields.Integer(load_default=200, validate=validate.Range(min=1, max=8000))
    once_per_days = fields.Integer(load_default=365, validate=validate.Range(min=1, max=3650))
    attachment_max_bytes = fields.Integer(load_default=5 * 1024 * 1024, validate=validate.Range(min=1))
    template_max_chars = fields.Integer(load_default=20_000, validate=validate.Range(min=100, max=1_000_000))


class RulesFileSchema(Schema):
    class Meta:
        unknown = RAISE

    version = fields.Integer(required=True, validate=validate.Equal(1, error="Only version 1 exists."))
    accounts = fields.Dict(keys=fields.String(validate=validate.Regexp(r"^[A-Za-z0-9_.-]{1,64}\Z")),
                           values=fields.String(validate=validate.Regexp(r"^connect_account_[A-Za-z0-9_-]+\Z",
                                                                         error="Expected a connect_account_ id.")),
                           load_default=dict)
    defaults = fields.Nested(DefaultsSchema, load_default=lambda: DefaultsSchema().load({}))
    rules = fields.List(fields.Nested(RuleSchema), required=True)
    destinations = fields.Dict(keys=fields.String(validate=validate.Regexp(r"^[A-Za-z0-9_.-]{1,64}\Z")),
                               values=fields.Nested(DestinationSchema), load_default=dict)

    @validates_schema(skip_on_field_errors=True)
    def _references(self, data: dict[str, Any], **_: Any) -> None:
        errors: dict[int, Any] = {}
        seen: set[str] = set()
        for index, rule in enumerate(data["rules"]):
            problems: dict[str, Any] = {}
            if rule["name"] in seen:
                problems["name"] = [f"Another rule is already named {rule['name']!r}."]
            seen.add(rule["name"])
            account = rule["dispatch"]["account"]
            if account not in data["accounts"] and not account.startswith("connect_account_"):
                problems["dispatch"] = {"account": [f"{account!r} is not in accounts and not a connect_account_ id."]}
            missing = [d for d in rule["writeback"] if d not in data["destinations"]]
            if missing:
                problems["writeback"] = [f"Unknown destination(s) {missing}."]
            crossed = _crossed_crm(rule, data["destinations"])
            if crossed:
                problems["writeback"] = crossed
            if problems:
                errors[index] = problems
        if errors:
            raise ValidationError({"rules": errors})


def _crossed_crm(rule: dict[str, Any], destinations: dict[str, Any]) -> list[str]:
    """A rule whose events all come from one CRM cannot update records in another CRM."""
    sources = set(rule["when"]["source"])
    problems = []
    for name in rule["writeback"]:
        kind = (destinations.get(name) or {}).get("kind", "webhook")
        if kind in CRM_KINDS and sources and kind not in sources and sources <= set(CRM_KINDS):
            problems.append(f"Destination {name!r} updates {kind} records, but this rule's events come from "
                            f"{', '.join(sorted(sources))}: their record ids are not {kind} ids.")
    return problems
