"""Signature and credential checks shared by the sources: constant time, bytes only.

Header values arrive as text; comparing them as text with `hmac.compare_digest` raises on
non-ASCII input, which a hostile sender controls. Everything here compares bytes.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from datetime import UTC, datetime

from standardwebhooks import Webhook

TOLERANCE_SECONDS = 300
_ASCII_DIGITS = re.compile(r"[0-9]{1,16}")


def whole_number(text: str | None) -> int | None:
    """A timestamp header as a whole number: ASCII digits only, at most 16 of them, else None.

    `str.isdigit()` is true for '²' (which `int()` then refuses) and for Arabic-Indic digits
    (which `int()` accepts): neither belongs in a timestamp, and a sender controls both.
    """
    if text is None or not _ASCII_DIGITS.fullmatch(text):
        return None
    return int(text)


def safe_equal(expected: str | bytes, given: str | bytes | None) -> bool:
    if given is None:
        return False
    if isinstance(expected, str):
        expected = expected.encode("utf-8", "surrogateescape")
    if isinstance(given, str):
        given = given.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(expected, given)


def within_window(timestamp_s: float, now_s: float, tolerance_s: float = TOLERANCE_SECONDS) -> bool:
    """Neither older nor newer than the tolerance: a future timestamp is as suspect as an old one."""
    return abs(now_s - timestamp_s) <= tolerance_s


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic ...` header, or None when it is not one."""
    if not header or not header[:6].lower() == "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class StandardWebhookVerifier:
    """Standard Webhooks v1 with an injectable clock, signing through the `standardwebhooks` package.

    The package's own `verify()` reads the wall clock and raises bare ValueErrors on malformed
    signature headers; here the timestamp check takes `now`, and every malformed header is just
    "no match".
    """

    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret)

    def verify(self, body: bytes, msg_id: str | None, timestamp: str | None, signatures: str | None,
               now_s: float) -> str | None:
        """None when it verifies, else the reason (safe to show the sender)."""
        if not (msg_id and timestamp and signatures):
            return "missing webhook-id, webhook-timestamp or webhook-signature"
        seconds = whole_number(timestamp)
        if seconds is None:
            return "webhook-timestamp is not whole seconds"
        if not within_window(seconds, now_s):
            return "webhook-timestamp outside the 5-minute window"
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return "body is not UTF-8"
        expected = self.webhook.sign(msg_id, datetime.fromtimestamp(seconds, UTC), text).split(",", 1)[1]
        for entry in signatures.split(" "):
            version, _, signature = entry.partition(",")
            if version == "v1" and safe_equal(expected, signature):
                return None
        return "no matching v1 signature"
