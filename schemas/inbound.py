"""What each sender sends, one schema per payload. Senders add fields over time: EXCLUDE them."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, pre_load, validate


class Id(fields.Field):
    """An id that senders give as a number or a string; kept as a string."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValidationError("Expected a number or a string id.")
        text = str(value).strip()
        if not text or len(text) > 200:
            raise ValidationError("Expected a non-empty id of at most 200 characters.")
        return text


class HubSpotId(fields.Field):
    """HubSpot's ids are 64-bit numbers: an integer or ASCII digits (not '²' or other Unicode digits)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(text, str) or not re.fullmatch(r"[0-9]{1,20}", text):
            raise ValidationError("Expected a whole number of at most 20 digits (0-9).")
        return text


# The last millisecond of year 9999: later dates cannot be written as ISO-8601.
MAX_EPOCH_MS = 253402300799999


class Text(fields.Field):
    """A value HubSpot documents as a string; numbers and booleans are turned into text."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, dict | list):
            raise ValidationError("Expected a string.")
        return str(value)


class HubSpotAppEventSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    eventId = HubSpotId(required=True)  # noqa: N815 - HubSpot's names
    subscriptionId = HubSpotId(required=True)  # noqa: N815
    portalId = HubSpotId(required=True)  # noqa: N815
    appId = Id()  # noqa: N815
    occurredAt = fields.Integer(  # noqa: N815
        required=True, strict=True, validate=validate.Range(
            min=0, max=MAX_EPOCH_MS, error="Expected epoch milliseconds from 0 to {max} (year 9999)."))
    subscriptionType = fields.String(required=True, validate=validate.Length(min=3, max=100))  # noqa: N815
    attemptNumber = fields.Integer(strict=True)  # noqa: N815
    objectId = HubSpotId(required=True)  # noqa: N815
    objectTypeId = fields.String(validate=validate.Length(max=50))  # noqa: N815
    propertyName = fields.String(validate=validate.Length(min=1, max=200))  # noqa: N815
    propertyValue = Text(allow_none=True)  # noqa: N815
    changeSource = fields.String(allow_none=True)  # noqa: N815
    sourceId = fields.String(allow_none=True)  # noqa: N815
    changeFlag = fields.String(allow_none=True)  # noqa: N815

    @pre_load
    def _event_type_alias(self, data: Any, **_: Any) -> Any:
        # The docs' field table says eventType; every example sends subscriptionType.
        if isinstance(data, dict) and "subscriptionType" not in data and "eventType" in data:
            data = {**data, "subscriptionType": data["eventType"]}
        return data


class PipedriveMetaSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    id = Id(required=True)
    action = fields.String(required=True, validate=validate.OneOf(["create", "change", "delete", "added",
                                                                    "updated", "deleted", "merged"]))
    entity = fields.String(required=True, validate=validate.Regexp(r"^[a-z][a-z_]{0,40}\Z"))
    entity_id = Id()
    company_id = Id()
    timestamp = fields.Raw()
    change_source = fields.String(allow_none=True)
    attempt = fields.Integer(allow_none=True)
    version = fields.String(allow_none=True)


class PipedriveWebhookSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    meta = fields.Nested(PipedriveMetaSchema, required=True)
    data = fields.Dict(allow_none=True, load_default=None)
    previous = fields.Dict(allow_none=True, load_default=None)


class SalesforceNotificationSchema(Schema):
    """One parsed `Notification` of an Outbound Message (the XML is read in inbound/salesforce.py)."""

    class Meta:
        unknown = EXCLUDE

    id = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9]{15,18}\Z"))
    sobject_type = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z][A-Za-z0-9_]{0,80}\Z"))
    fields_ = fields.Dict(keys=fields.String(), values=fields.String(allow_none=True), required=True,
                          data_key="fields")


class SalesforceMessageSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    organization_id = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9]{15}([A-Za-z0-9]{3})?\Z"))
    action_id = fields.String(allow_none=True)
    notifications = fields.List(fields.Nested(SalesforceNotificationSchema), required=True,
                                validate=validate.Length(min=1, max=100))
