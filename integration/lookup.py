"""Lookup indexes: find dispatches and events by email, recipient, object id, event id or Revor
job id without scanning every record.

Each kept term (a normalized email, an event id, ...) is hashed (SHA-1); the hash picks one of
BUCKETS sorted sets (`rb:find:d:<n>` for dispatches, `rb:find:e:<n>` for events) and its first
four bytes start the member, followed by the record's reference: for a dispatch id of the usual
shape (`dsp_` + 40 hex digits) its 20 raw bytes after a 0 byte, for anything else its text. The
score is when the term was written (whole epoch seconds). A lookup reads one bucket and keeps the
members whose hash prefix matches; the caller then checks the records it loads (two terms may
share a prefix), so a lookup costs one read of a few hundred small members at most.

Why this shape: a finished dispatch stays for DISPATCH_RETENTION_DAYS, so every byte per
dispatch counts (dispatches/state.py). A key per email would cost some 150 bytes per dispatch
in key overhead alone; 25-byte members in a thousand shared buckets cost about 30 each (a
bucket of up to 128 members is one compact listpack).

Who writes: the dispatch state script (dispatches/state.py), in the same script as the
creation (recipient, event id) and the Revor acceptance (job id); the worker's event outcome
(dispatches/create.py) for events (object id, emails), in the pipeline that records it. Who
cleans: the retention sweep (dispatches/retention.py, `sweep`): members older than the records'
lifetime whose record is gone.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

import redis

from integration.storage import trim_gone

BUCKETS = 1024
DISPATCHES = "rb:find:d:"
EVENTS = "rb:find:e:"
EVENT_PREFIX = "rb:event:"
DISPATCH_PREFIX = "rb:dispatch:"
RECIPIENT, EVENT_ID, JOB_ID = "r", "v", "j"  # dispatch terms
OBJECT_ID, EMAIL = "o", "e"  # event terms
_CANONICAL = re.compile(r"dsp_[0-9a-f]{40}")
MAX_EMAILS = 5  # per event: an event naming more addresses is found by its first five


def normalize(term: str) -> str:
    """What a term is stored and searched as: stripped, and lowercase when it is an email."""
    text = str(term).strip()
    return text.lower() if "@" in text else text


def _digest(kind: str, term: str) -> bytes:
    return hashlib.sha1(f"{kind}:{normalize(term)}".encode(), usedforsecurity=False).digest()


def bucket(prefix: str, kind: str, term: str) -> str:
    digest = _digest(kind, term)
    return f"{prefix}{int.from_bytes(digest[4:6], 'big') % BUCKETS}"


def _ref_bytes(ref: str) -> bytes:
    if _CANONICAL.fullmatch(ref):
        return b"\0" + bytes.fromhex(ref[4:])
    return ref.encode()


def _ref_text(raw: bytes) -> str:
    if raw[:1] == b"\0":
        return "dsp_" + raw[1:].hex()
    return raw.decode("utf-8", "replace")


def member(kind: str, term: str, ref: str) -> bytes:
    return _digest(kind, term)[:4] + _ref_bytes(ref)


def entries(prefix: str, ref: str, terms: Iterable[tuple[str, Any]]) -> list[tuple[str, bytes]]:
    """(bucket key, member) for each non-empty term, each once."""
    found: dict[tuple[str, bytes], None] = {}
    for kind, term in terms:
        if term is None or not str(term).strip():
            continue
        found[(bucket(prefix, kind, term), member(kind, term, ref))] = None
    return list(found)


def recipient_term(recipient: Any) -> str | None:
    """The one recipient term of a dispatch: its address, else its phone, else its profile URL."""
    if not isinstance(recipient, dict):
        return None
    for name in ("address", "phone", "profile_url"):
        if recipient.get(name):
            return normalize(recipient[name])
    return None


def dispatch_entries(dispatch_id: str, create: dict[str, Any] | None,
                     fields: dict[str, Any] | None) -> list[tuple[str, bytes]]:
    """What a state change adds: recipient and event id at creation, the job id once Revor gave one."""
    terms: list[tuple[str, Any]] = []
    if create:
        terms.append((RECIPIENT, recipient_term(create.get("recipient"))))
        terms.append((EVENT_ID, (create.get("crm") or {}).get("event_id")))
    if fields and fields.get("revor_job_id"):
        terms.append((JOB_ID, fields["revor_job_id"]))
    return entries(DISPATCHES, dispatch_id, terms)


def emails_in(*values: Any, limit: int = MAX_EMAILS) -> list[str]:
    """Addresses under keys named like `email` anywhere in these (an event, its context)."""
    found: list[str] = []

    def walk(value: Any, name: str, depth: int) -> None:
        if len(found) >= limit or depth > 6:
            return
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, str(key), depth + 1)
        elif isinstance(value, list):
            for item in value[:20]:
                walk(item, name, depth + 1)
        elif isinstance(value, str) and "email" in name.lower() and "@" in value:
            address = normalize(value)
            if address not in found and len(address) <= 320:
                found.append(address)

    for value in values:
        walk(value, "", 0)
    return found


def event_entries(event_key: str, event: dict[str, Any], context: dict[str, Any] | None) -> list[tuple[str, bytes]]:
    """An event's terms: its object's id and the emails in it and its hydrated context."""
    ref = event_key.removeprefix(EVENT_PREFIX)
    terms: list[tuple[str, Any]] = [(OBJECT_ID, (event.get("object") or {}).get("id"))]
    terms += [(EMAIL, address) for address in emails_in(event, context)]
    return entries(EVENTS, ref, terms)


def add(pipe: Any, found: list[tuple[str, bytes]], now: float) -> None:
    """Write entries inside the caller's pipeline (no round trip of its own)."""
    for key, value in found:
        pipe.zadd(key, {value: int(now)})


def find(connection: redis.Redis, prefix: str, terms: list[tuple[str, str]]) -> list[tuple[str, float]]:
    """References whose terms may be these (one round trip), newest first; callers check each
    record they load, since two terms can share a bucket and a hash prefix."""
    wanted = [(bucket(prefix, kind, term), _digest(kind, term)[:4]) for kind, term in terms if term.strip()]
    if not wanted:
        return []
    with connection.pipeline(transaction=False) as pipe:
        for key, _ in wanted:
            pipe.zrange(key, 0, -1, withscores=True)
        replies = pipe.execute()
    refs: dict[str, float] = {}
    for (_, prefix_bytes), reply in zip(wanted, replies, strict=True):
        for raw, score in reply:
            if raw[:4] == prefix_bytes:
                ref = _ref_text(raw[4:])
                refs[ref] = max(score, refs.get(ref, 0.0))
    return sorted(refs.items(), key=lambda item: -item[1])


def record_key(prefix: str, ref: str) -> str:
    return (DISPATCH_PREFIX if prefix == DISPATCHES else EVENT_PREFIX) + ref


def sweep(connection: redis.Redis, prefix: str, older_than: float, batch: int = 500,
          expired_before: float | None = None) -> int:
    """Remove the members scored up to `older_than` whose record is gone, and every member scored
    before `expired_before` (records that old are gone by their own expiry); how many went. Every
    bucket is read in one round trip; only buckets with old members cost more."""
    with connection.pipeline(transaction=False) as pipe:
        for number in range(BUCKETS):
            if expired_before is not None:
                pipe.zremrangebyscore(f"{prefix}{number}", "-inf", f"({expired_before}")
            pipe.zrangebyscore(f"{prefix}{number}", "-inf", older_than, start=0, num=batch)
        replies = pipe.execute()
    step = 1 if expired_before is None else 2
    removed = sum(int(n) for n in replies[0::2]) if step == 2 else 0
    first = replies[step - 1::step]
    for number, members in enumerate(first):
        key, offset = f"{prefix}{number}", 0
        while members:
            keys = [record_key(prefix, _ref_text(m[4:])) for m in members]
            gone = trim_gone(connection, key, members, keys)
            removed += gone
            if len(members) < batch:
                break
            offset += len(members) - gone
            members = connection.zrangebyscore(key, "-inf", older_than, start=offset, num=batch)
    return removed
