"""What the events and dispatches lists share: reading filters, and walking time-scored indexes
newest first with every page request bounded.

Two ways through a list:

- by page number, when one index answers the filters by itself (a status, a rule, or none, with
  a time range): the page is one ZREVRANGEBYSCORE with an offset, the total one ZCOUNT;
- by cursor, when records must be checked one by one (a channel, a source, two filters at
  once): the narrowest index is walked in pipelined batches of BATCH from the cursor, and one
  page request examines at most SCAN_LIMIT entries. A page that met the limit before it filled
  says how many it scanned and links to where it stopped ("continue").

A cursor is the last entry examined, (score, member): the walk goes on below it in the order
Redis lists them (score, then member, both descending), so no entry is shown twice or skipped,
even among entries of equal score (a batch of events stored in one request).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

PAGE_SIZE = 25
MAX_PAGE = 100_000
BATCH = 200
SCAN_LIMIT = 2_000
MAX_TIES = 10_000  # entries of one equal score read to place a cursor among them


class FilterError(Exception):
    """A filter the page cannot use: which one, and what it expects."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def parse_time(label: str, text: str | None) -> float | None:
    """A date or date and time in UTC (what <input type="datetime-local"> sends), with an
    optional Z or UTC offset; None when empty."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace(" ", "T", 1))
    except ValueError:
        raise FilterError(label, "expected a date, or a date and time in UTC, like 2026-01-31T14:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if not 0 <= moment.timestamp() < 2**32:
        raise FilterError(label, "expected a date between 1970 and 2106")
    return moment.timestamp()


def parse_page(text: str | None) -> int:
    text = (text or "").strip()
    if not text:
        return 1
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise FilterError("Page", f"expected a whole number from 1 to {MAX_PAGE:,}")
    return int(text)


def choice(label: str, text: str | None, allowed: list[str] | tuple[str, ...]) -> str | None:
    """One of `allowed`, or None when empty."""
    text = (text or "").strip()
    if not text:
        return None
    if text not in allowed:
        shown = ", ".join(allowed) if allowed else "(none configured)"
        raise FilterError(label, f"choose one of {shown}")
    return text


def encode_cursor(score: float, member: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([score, member]).encode()).decode().rstrip("=")


def decode_cursor(text: str | None) -> tuple[float, str] | None:
    if not text:
        return None
    try:
        score, member = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if isinstance(score, int | float) and isinstance(member, str) and math.isfinite(score):
            return float(score), member
    except (ValueError, TypeError):
        pass
    raise FilterError("Continue", "the link is damaged or out of date: start again from the first page")


def search_text(args: Any) -> str:
    """The search box (`q`), stripped; FilterError past 500 characters."""
    query = (args.get("q") or "").strip()
    if len(query) > 500:
        raise FilterError("Search", "at most 500 characters")
    return query


def window(args: Any) -> dict[str, Any]:
    """The filters every list shares: the time range (From before To), the page and the cursor."""
    found = {"since": parse_time("From", args.get("since")), "until": parse_time("To", args.get("until")),
             "page": parse_page(args.get("page")), "after": decode_cursor(args.get("after"))}
    if found["since"] is not None and found["until"] is not None and found["since"] > found["until"]:
        raise FilterError("From", "must be before To")
    return found


def iso(epoch: float | str | None) -> str:
    """Epoch seconds as `2026-01-31 14:00:05Z` (UTC, what operators compare with logs)."""
    if epoch in (None, ""):
        return ""
    try:
        return datetime.fromtimestamp(float(epoch), UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(epoch)


def counted(number: int, singular: str, plural: str | None = None) -> str:
    """`1 dispatch`, `12,500 dispatches`: every count a page writes (the `counted` template filter)."""
    return f"{number:,} {singular if number == 1 else plural or singular + 's'}"


def _bound(value: float | None, default: str) -> float | str:
    return default if value is None else value


def page_of(connection: redis.Redis, index: str, since: float | None, until: float | None,
            page: int, size: int = PAGE_SIZE) -> tuple[list[tuple[str, float]], int]:
    """One page of one index (newest first) and how many entries the time range holds."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.zrevrangebyscore(index, _bound(until, "+inf"), _bound(since, "-inf"), start=(page - 1) * size,
                              num=size, withscores=True)
        pipe.zcount(index, _bound(since, "-inf"), _bound(until, "+inf"))
        entries, total = pipe.execute()
    return [(m.decode(), s) for m, s in entries], int(total)


def _walk(connection: redis.Redis, indexes: list[str], since: float | None, until: float | None,
          cursor: tuple[float, str] | None, count: int) -> tuple[list[tuple[str, float]], bool]:
    """Up to `count` entries after `cursor` across `indexes` merged, newest first; and whether
    more may follow. Two round trips at most (ties at the cursor's score, then the ranges)."""
    top: float | str = _bound(until, "+inf")
    skips = [0] * len(indexes)
    if cursor is not None:
        score, member = cursor
        if until is None or score <= until:
            top = score
            with connection.pipeline(transaction=False) as pipe:
                for index in indexes:
                    pipe.zrangebyscore(index, score, score, start=0, num=MAX_TIES)
                ties = pipe.execute()
            mark = member.encode()
            skips = [sum(1 for m in tied if m >= mark) for tied in ties]
    with connection.pipeline(transaction=False) as pipe:
        for index, skip in zip(indexes, skips, strict=True):
            pipe.zrevrangebyscore(index, top, _bound(since, "-inf"), start=skip, num=count, withscores=True)
        replies = pipe.execute()
    merged = sorted(((m, s) for reply in replies for m, s in reply), key=lambda e: (e[1], e[0]), reverse=True)
    more = any(len(reply) == count for reply in replies) or len(merged) > count
    return [(m.decode(), s) for m, s in merged[:count]], more


@dataclass
class Scan:
    """A page found by walking: its items, where it stopped, and how much it looked at."""

    items: list[Any] = field(default_factory=list)
    scanned: int = 0
    cursor: str | None = None  # where the next page starts; None: nothing more
    limited: bool = False  # stopped at SCAN_LIMIT before the page was full


def scan(connection: redis.Redis, indexes: list[str], since: float | None, until: float | None,
         cursor: tuple[float, str] | None, keep: Callable[[list[str]], list[Any]],
         size: int = PAGE_SIZE, limit: int | None = None) -> Scan:
    """Walk from `cursor` in batches; `keep(members)` loads a batch (one round trip) and returns
    per member the item to show or None. Stops with a full page, at `limit` entries (SCAN_LIMIT),
    or at the end."""
    limit = SCAN_LIMIT if limit is None else limit
    found = Scan()
    seen: set[str] = set()
    at = cursor
    while True:
        batch, more = _walk(connection, indexes, since, until, at, min(BATCH, limit - found.scanned))
        fresh = [(m, s) for m, s in batch if m not in seen]
        kept = keep([m for m, _ in fresh]) if fresh else []
        verdicts: Iterator[Any] = iter(kept)
        for member, score in batch:
            found.scanned += 1
            at = (score, member)
            if member in seen:
                continue
            seen.add(member)
            item = next(verdicts)
            if item is not None:
                found.items.append(item)
                if len(found.items) >= size:
                    found.cursor = encode_cursor(*at)  # the page is full: the next starts after this one
                    return found
        if not more or not batch:
            return found
        if found.scanned >= limit:
            found.cursor, found.limited = encode_cursor(*at), True
            return found
