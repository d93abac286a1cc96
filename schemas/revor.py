"""Schemas for the Revor API v1: what the bridge sends and what Revor answers.

Outgoing dispatches are checked strictly (unknown keys RAISE) because the bridge builds them: a
typo must fail here, as an `invalid` dispatch, not as a 400 from Revor. Responses are parsed
leniently (unknown keys EXCLUDE, open status strings) because Revor may add fields and statuses
(v2 already adds `settling`) and that must not break the client.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    pre_load,
    validate,
    validates_schema,
)

CHANNELS = ("email", "linkedin", "whatsapp")
MIN_INTERVAL_SECONDS = 60
MAX_INTERVAL_SECONDS = 86400
TERMINAL_JOB_STATUSES = frozenset({"succeeded", "failed", "cancelled"})

E164 = re.compile(r"^\+[1-9][0-9]{6,14}\Z")
# A person's own profile: linkedin.com/in/<slug>, optionally with a country subdomain.
LINKEDIN_PROFILE = re.compile(r"^https://([a-z]{2,3}\.|www\.)?linkedin\.com/in/[^/?#\s]+/?\Z", re.IGNORECASE)
EMAIL = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+\Z")


def clamp_interval(seconds: float) -> int:
    """Revor treats < 60 as 60 and may reject > 86400, so the bridge always sends 60..86400."""
    return int(min(max(int(seconds), MIN_INTERVAL_SECONDS), MAX_INTERVAL_SECONDS))


class AttachmentSchema(Schema):
    class Meta:
        unknown = RAISE

    filename = fields.String(required=True, validate=validate.Length(min=1, max=255))
    contentBase64 = fields.String(required=True, validate=validate.Length(min=1))  # Revor's own camelCase

    @validates_schema
    def _base64(self, data: dict[str, Any], **_: Any) -> None:
        try:
            base64.b64decode(data.get("contentBase64", ""), validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError("Not valid base64.", "contentBase64") from None


class RecipientSchema(Schema):
    class Meta:
        unknown = RAISE

    address = fields.String(validate=validate.Regexp(EMAIL, error="Not a valid email address."))
    name = fields.String(validate=validate.Length(max=200))
    profile_url = fields.String(
        validate=validate.Regexp(LINKEDIN_PROFILE, error="Not a personal LinkedIn profile URL (https://www.linkedin.com/in/...).")
    )
    phone = fields.String(validate=validate.Regexp(E164, error="Not an E.164 phone number (+14155552671)."))


class ContentSchema(Schema):
    class Meta:
        unknown = RAISE

    subject = fields.String(validate=validate.Length(min=1, max=998))
    text = fields.String(validate=validate.Length(min=1))
    html = fields.String(validate=validate.Length(min=1))
    attachments = fields.List(fields.Nested(AttachmentSchema), validate=validate.Length(max=20))


# Which recipient field each channel needs, and which content each channel accepts.
CHANNEL_RECIPIENT = {"email": "address", "linkedin": "profile_url", "whatsapp": "phone"}


class DispatchSchema(Schema):
    """POST /outreach/dispatches, checked per channel before it is ever sent."""

    class Meta:
        unknown = RAISE

    account_id = fields.String(required=True, validate=validate.Length(min=1, max=200))
    channel = fields.String(required=True, validate=validate.OneOf(CHANNELS))
    action = fields.String(load_default="outreach", validate=validate.Equal("outreach"))
    recipient = fields.Nested(RecipientSchema, required=True)
    content = fields.Nested(ContentSchema, required=True)
    metadata = fields.Dict(keys=fields.String(), values=fields.Raw())
    min_channel_task_interval_seconds = fields.Integer(
        strict=True,
        validate=validate.Range(min=MIN_INTERVAL_SECONDS, max=MAX_INTERVAL_SECONDS),
    )

    @validates_schema(skip_on_field_errors=True)
    def _per_channel(self, data: dict[str, Any], **_: Any) -> None:
        channel = data["channel"]
        recipient, content = data["recipient"], data["content"]
        errors: dict[str, dict[str, list[str]]] = {}
        needed = CHANNEL_RECIPIENT[channel]
        for other in CHANNEL_RECIPIENT.values():
            if other != needed and other in recipient:
                errors.setdefault("recipient", {})[other] = [f"Not used on the {channel} channel."]
        if needed not in recipient:
            errors.setdefault("recipient", {})[needed] = [f"Missing data for required field ({channel})."]
        if channel == "email":
            if "subject" not in content:
                errors.setdefault("content", {})["subject"] = ["Missing data for required field (email)."]
            if "text" not in content and "html" not in content:
                errors.setdefault("content", {})["text"] = ["Email needs text or html."]
        else:
            if "name" in recipient:
                errors.setdefault("recipient", {})["name"] = [f"Not used on the {channel} channel."]
            for unused in ("subject", "html"):
                if unused in content:
                    errors.setdefault("content", {})[unused] = [f"Not used on the {channel} channel."]
            if "text" not in content and not content.get("attachments"):
                errors.setdefault("content", {})["text"] = [f"{channel.capitalize()} needs text or an attachment."]
        if errors:
            raise ValidationError(errors)


# ---- responses ---------------------------------------------------------------------------


class _Lenient(Schema):
    class Meta:
        unknown = EXCLUDE


class ErrorBodySchema(_Lenient):
    code = fields.String(load_default="unknown_error")
    message = fields.String(load_default="")
    request_id = fields.String(load_default=None, allow_none=True)
    retryable = fields.Boolean(load_default=None, allow_none=True)


class ErrorEnvelopeSchema(_Lenient):
    ok = fields.Boolean(required=True, validate=validate.Equal(False))
    error = fields.Nested(ErrorBodySchema, required=True)


class AccountSchema(_Lenient):
    account_id = fields.String(required=True)
    channel = fields.String(required=True)
    name = fields.String(load_default="", allow_none=True)
    account_identifier = fields.String(load_default=None, allow_none=True)
    status = fields.String(load_default=None, allow_none=True)
    lifecycle_status = fields.String(load_default=None, allow_none=True)
    can_send = fields.Boolean(load_default=False)
    can_receive = fields.Boolean(load_default=False)


class JobSchema(_Lenient):
    """A Revor job; `status` is kept as an open string (unknown = still in progress)."""

    id = fields.String(required=True, validate=validate.Length(min=1))
    status = fields.String(required=True, validate=validate.Length(min=1))
    action = fields.String(load_default=None, allow_none=True)
    channel = fields.String(load_default=None, allow_none=True)
    scheduled_at = fields.String(load_default=None, allow_none=True)
    started_at = fields.String(load_default=None, allow_none=True)
    finished_at = fields.String(load_default=None, allow_none=True)
    attempt_count = fields.Integer(load_default=None, allow_none=True)
    next_attempt_at = fields.String(load_default=None, allow_none=True)
    result = fields.Dict(load_default=None, allow_none=True)
    error = fields.Nested(ErrorBodySchema, load_default=None, allow_none=True)

    @pre_load
    def _error_may_be_text(self, data: Any, **_: Any) -> Any:
        # Tolerate an error given as a bare string rather than an object.
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            data = {**data, "error": {"code": data["error"], "message": data["error"]}}
        return data


class _ItemEnvelope(_Lenient):
    ok = fields.Boolean(required=True, validate=validate.Equal(True))
    request_id = fields.String(load_default=None, allow_none=True)


class JobEnvelopeSchema(_ItemEnvelope):
    item = fields.Nested(JobSchema, required=True)


class AccountsEnvelopeSchema(_ItemEnvelope):
    items = fields.List(fields.Nested(AccountSchema), required=True)
