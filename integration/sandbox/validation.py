"""Dispatch validation as Revor answers it: the first problem found, as a snake_case code.

The codes are the ones the README lists for the sandbox (a third-party imitation's names);
the bridge's client never branches on them, it treats every 400 as final.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
CHANNELS = ("email", "linkedin", "whatsapp")


class Rejection(Exception):
    """A request Revor would refuse: HTTP status and error code."""

    def __init__(self, status: int, code: str, detail: str = "") -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.detail = detail


def _text(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def validate_dispatch(body: Any, *, max_attachment_bytes: int, max_metadata_bytes: int) -> None:
    """Raise `Rejection(400, code)` for the first thing wrong with a dispatch body."""
    if not isinstance(body, dict):
        raise Rejection(400, "invalid_body", "the body must be a JSON object")
    if not _text(body.get("account_id")):
        raise Rejection(400, "account_id_required")
    channel = body.get("channel")
    if channel not in CHANNELS:
        raise Rejection(400, "invalid_channel", "channel must be email, linkedin or whatsapp")
    if body.get("action") != "outreach":
        raise Rejection(400, "invalid_action", "action must be 'outreach'")
    recipient, content = body.get("recipient"), body.get("content")
    if not isinstance(recipient, dict):
        raise Rejection(400, "recipient_required")
    if not isinstance(content, dict):
        raise Rejection(400, "content_required")
    attachments = content.get("attachments")
    has_attachment = _check_attachments(attachments, max_attachment_bytes)
    if channel == "email":
        if not _text(recipient.get("address")):
            raise Rejection(400, "recipient_address_required")
        if not _text(content.get("subject")):
            raise Rejection(400, "content_subject_required")
        if not (_text(content.get("text")) or _text(content.get("html"))):
            raise Rejection(400, "content_text_or_html_required")
    elif channel == "linkedin":
        if not _text(recipient.get("profile_url")):
            raise Rejection(400, "recipient_profile_url_required")
        if not (_text(content.get("text")) or has_attachment):
            raise Rejection(400, "content_text_or_attachment_required")
    else:
        phone = recipient.get("phone")
        if not _text(phone):
            raise Rejection(400, "recipient_phone_required")
        if not E164.match(phone):
            raise Rejection(400, "invalid_recipient_phone", "phone must be E.164, e.g. +14155552671")
        if not (_text(content.get("text")) or has_attachment):
            raise Rejection(400, "content_text_or_attachment_required")
    if "metadata" in body:
        metadata = body["metadata"]
        if not isinstance(metadata, dict):
            raise Rejection(400, "invalid_metadata", "metadata must be an object")
        if len(json.dumps(metadata).encode()) > max_metadata_bytes:
            raise Rejection(400, "metadata_too_large", f"metadata over {max_metadata_bytes} bytes (sandbox cap)")
    if "min_channel_task_interval_seconds" in body:
        interval = body["min_channel_task_interval_seconds"]
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval > 86400:
            raise Rejection(400, "invalid_min_channel_task_interval_seconds", "a number up to 86400")


def _check_attachments(attachments: Any, max_bytes: int) -> bool:
    if attachments is None:
        return False
    if not isinstance(attachments, list):
        raise Rejection(400, "invalid_attachment", "attachments must be a list")
    total = 0
    for item in attachments:
        if not isinstance(item, dict) or not _text(item.get("filename")):
            raise Rejection(400, "invalid_attachment", "each attachment needs a filename")
        try:
            total += len(base64.b64decode(item.get("contentBase64") or "", validate=True))
        except (binascii.Error, ValueError, TypeError):
            raise Rejection(400, "invalid_attachment", "contentBase64 is not valid base64") from None
        if not item.get("contentBase64"):
            raise Rejection(400, "invalid_attachment", "contentBase64 is empty")
    if total > max_bytes:
        raise Rejection(400, "attachments_too_large", f"attachments over {max_bytes} bytes (sandbox cap)")
    return bool(attachments)


def interval_seconds(body: dict[str, Any]) -> float:
    """Revor's pacing value: default 60, anything below 60 counts as 60."""
    value = body.get("min_channel_task_interval_seconds", 60)
    return max(60.0, float(value))
