"""Never twice, never the unwilling: `once_per` claims and the global suppression list, in Redis.

A `once_per` key is claimed with SET NX holding the dispatch id, so the same dispatch (an event
processed again) still passes while any other dispatch with that key is skipped.
"""

from __future__ import annotations

import re
from typing import Any

import redis

from schemas.revor import CHANNEL_RECIPIENT

SUPPRESSION_KEY = "rb:suppressed"
ONCE_PREFIX = "rb:once:"
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


def normalize_phone(value: str) -> str:
    """Formatting only: spaces, dashes, dots and brackets go, a leading 00 becomes +."""
    compact = re.sub(r"[\s().\-/]", "", value.strip())
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    return compact


def normalize_linkedin(value: str) -> str:
    url = value.strip().split("?", 1)[0].split("#", 1)[0]
    return url.rstrip("/").lower()


def recipient_key(channel: str, value: str) -> str:
    """One spelling per person and channel, for suppression and dispatch ids."""
    if channel == "email":
        return "email:" + value.strip().lower()
    if channel == "whatsapp":
        return "phone:" + normalize_phone(value)
    return "linkedin:" + normalize_linkedin(value)


def classify(value: str) -> str:
    """A value given to `revor-bridge suppress`: which kind it is, as a recipient key."""
    text = value.strip()
    if "linkedin.com/" in text.lower():
        return recipient_key("linkedin", text)
    if "@" in text:
        return recipient_key("email", text)
    phone = normalize_phone(text)
    if E164.match(phone):
        return "phone:" + phone
    raise ValueError(f"{value!r} is not an email address, an E.164 phone number or a LinkedIn profile URL")


def stored_recipient_key(record: dict) -> str | None:
    """The suppression key of a stored dispatch's recipient (its channel's address field)."""
    field = CHANNEL_RECIPIENT.get(record.get("channel") or "")
    who = (record.get("recipient") or {}).get(field) if field else None
    return recipient_key(record["channel"], who) if isinstance(who, str) and who.strip() else None


def is_suppressed(connection: redis.Redis, key: str) -> bool:
    return bool(connection.sismember(SUPPRESSION_KEY, key))


def suppress(connection: redis.Redis, values: list[str]) -> list[str]:
    keys = [classify(v) for v in values]
    if keys:
        connection.sadd(SUPPRESSION_KEY, *keys)
    return keys


def unsuppress(connection: redis.Redis, values: list[str]) -> list[str]:
    keys = [classify(v) for v in values]
    if keys:
        connection.srem(SUPPRESSION_KEY, *keys)
    return keys


def unsuppress_keys(connection: redis.Redis, keys: list[str]) -> int:
    """Remove entries as `suppressed` lists them (recipient keys, e.g. a dashboard's Remove button);
    how many were on the list."""
    return int(connection.srem(SUPPRESSION_KEY, *keys)) if keys else 0


def suppressed(connection: redis.Redis) -> list[str]:
    return sorted(m.decode() if isinstance(m, bytes) else m for m in connection.smembers(SUPPRESSION_KEY))


def claim_once(connection: redis.Redis, rule: str, key: str, dispatch_id: str, days: int) -> str | None:
    """None when this dispatch may go ahead; else the id of the dispatch that already holds the key."""
    name = f"{ONCE_PREFIX}{rule}:{key}"
    if connection.set(name, dispatch_id, nx=True, ex=days * 86400):
        return None
    holder: Any = connection.get(name)
    holder = holder.decode() if isinstance(holder, bytes) else holder
    return None if holder == dispatch_id else str(holder)
