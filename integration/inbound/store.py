"""Durable, deduplicated storage of inbound events, and the enqueue of their processing.

One request is one Redis transaction (MULTI ... EXEC, one round trip however many events it
holds): a Lua script stores the raw delivery and each event that is new, counts duplicates,
marks events older than one already seen for the same object and property as stale, and lists
the new events; in the same transaction RQ gets a job for the delivery. So an event is either
stored *and* queued or neither, and the sender is answered 2xx only after EXEC succeeded.

Dedupe and ordering keys live 7 days: longer than any sender retries (HubSpot workflows, the
longest, 3 days).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue

from integration.inbound.normalize import InboundEvent

TTL_SECONDS = 7 * 24 * 3600
PREFIX = "rb:"
# The RQ job that wakes a worker to run what is due (jobs/engine.py); it retries nothing itself:
# the units it runs keep their own schedule in Redis.
WAKE_JOB = "integration.jobs.engine.run_due"
WAKE_JOB_TIMEOUT = 60

# How far ahead of the server clock an event may be dated and still order its record.
FUTURE_TOLERANCE_MS = 5 * 60 * 1000
# A stored-bytes bucket per hour; a bucket is forgotten once the bodies counted in it expired.
BUCKET_SECONDS = 3600
# What a skipped batch item keeps in the stored delivery, and a skipped entry's own size.
SKIPPED_ITEM_BYTES = 300
SKIPPED_ENTRY_BYTES = 600

# What the per-source ceiling (INBOUND_MAX_STORED_BYTES) charges, so that it tracks what Redis
# really holds, not only the bodies (which were about a seventh of it). Measured with INFO memory
# (used_memory) on Redis 7.0 (jemalloc, 64-bit) over 1,000 requests each, see
# tests/test_inbound_store.py::test_the_ceiling_counts_what_redis_really_holds:
#   one small Zapier event per request:  used_memory +4,400 to +4,800 bytes per request, of which
#     bodies and the delivery record are 930;
#   the same with a 250-character event id and a 180-character deal id: +7,350 (bodies 2,470);
#   HubSpot batches of 100 events: +1,780 bytes per event (bodies 700);
#   one HubSpot event per request: +4,670 (bodies 1,100); Pipedrive: +6,900 (bodies 3,390).
# Fitted: each stored delivery costs its record plus DELIVERY_OVERHEAD_BYTES (the key and its
# TTL, its list of new events, and the RQ job hash with its queue entry: ~1,600 of it); each new
# event costs its body plus EVENT_OVERHEAD_BYTES (the hash's fields and headers, its TTL, its
# lease-zset member and list entry, its ordering key) plus EVENT_KEY_COPIES times its key's
# length (the key itself, the list entry, the lease member, and a one-event job's description
# and argument) plus its ordering key's length. That model is within 3% of every figure above.
# The job hash goes once the job has run (result TTL 10 minutes), so the charge errs on the high
# side for processed events; what the worker adds afterwards (context, dispatches) is not counted.
DELIVERY_OVERHEAD_BYTES = 2500
EVENT_OVERHEAD_BYTES = 800
EVENT_KEY_COPIES = 5
# A string key with a TTL, beyond its name and value (Salesforce's tracked field value): measured
# 210 bytes per key for a 69-byte name and a 10-byte value.
KEY_OVERHEAD_BYTES = 130

# ARGV: ttl, delivery key, delivery json, received_at, count, now ms, future tolerance ms,
#   stored-bytes key, ceiling (0: none), this hour, bucket seconds, delivery overhead, event
#   overhead, event key copies, key overhead; then per event (EVENT_ARGS):
#   event key, event json, ordering key, occurred ms or '', tracked field or '', its value or '',
#   future-dated reason or ''
STORE_SCRIPT = """
local ttl, delivery, record, received = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local count, now_ms, ahead_ms = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local bytes_key, ceiling, hour, bucket = ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local delivery_cost, event_cost = tonumber(ARGV[12]), tonumber(ARGV[13])
local key_copies, key_cost = tonumber(ARGV[14]), tonumber(ARGV[15])
local first, width = 16, 7

-- What this request would store: events not seen before, and the delivery with them. A delivery
-- whose events are all duplicates stores nothing (each original counts its duplicates). The
-- charge is what Redis holds for them, keys and overheads included (store.py: the measurement).
local needed, fresh = 0, 0
for i = 0, count - 1 do
  local b = first + i * width
  if redis.call('EXISTS', ARGV[b]) == 0 then
    needed = needed + #ARGV[b + 1] + event_cost + key_copies * #ARGV[b] + #ARGV[b + 2]
    if ARGV[b + 4] ~= '' then
      needed = needed + key_cost + #ARGV[b + 2] + 1 + #ARGV[b + 4] + #ARGV[b + 5]
    end
    fresh = fresh + 1
  end
end
local keep_delivery = fresh > 0 or count == 0
if keep_delivery then needed = needed + #record + delivery_cost end

-- The per-source ceiling: bytes stored in the last ttl, in hourly buckets that expire with them.
local horizon = hour - math.ceil(ttl / bucket)
local used, buckets = 0, {}
local flat = redis.call('HGETALL', bytes_key)
for j = 1, #flat, 2 do
  local h = tonumber(flat[j])
  if h <= horizon then
    redis.call('HDEL', bytes_key, flat[j])
  else
    used = used + tonumber(flat[j + 1])
    buckets[#buckets + 1] = {h, tonumber(flat[j + 1])}
  end
end
if ceiling > 0 and needed > 0 and used + needed > ceiling then
  table.sort(buckets, function(x, y) return x[1] < y[1] end)
  -- The oldest hour whose expiry makes room (-1: none would, the request alone is too large).
  local freed, room_at = 0, -1
  for _, entry in ipairs(buckets) do
    freed = freed + entry[2]
    if used - freed + needed <= ceiling then
      room_at = entry[1]
      break
    end
  end
  return {'full', tostring(used), tostring(room_at)}
end

if keep_delivery then redis.call('SET', delivery, record, 'EX', ttl) end
local results = {}
for i = 0, count - 1 do
  local b = first + i * width
  local key, body, okey, occurred, tfield, tvalue, future =
    ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5], ARGV[b + 6]
  if redis.call('EXISTS', key) == 1 then
    redis.call('HINCRBY', key, 'duplicates', 1)
    results[#results + 1] = 'duplicate'
  else
    local stale = 0
    -- A future-dated event is processed but never orders its record: dated 2099, it would make
    -- every genuine event after it stale for as long as the key lives.
    if occurred ~= '' and future == '' then
      local last = redis.call('GET', okey)
      if last and tonumber(last) > now_ms + ahead_ms then
        last = nil  -- written by a future-dated event before that rule existed: ignore it
      end
      if last and tonumber(last) > tonumber(occurred) then
        stale = 1
      else
        redis.call('SET', okey, occurred, 'EX', ttl)
      end
    end
    if tfield ~= '' and stale == 0 then
      local tkey = okey .. '|' .. tfield
      local before = redis.call('GET', tkey)
      if before ~= tvalue then
        local event = cjson.decode(body)
        event['type'] = event['object']['type'] .. '.stage_changed'
        if before then event['previous'] = {[tfield] = before} end
        body = cjson.encode(event)
      end
      redis.call('SET', tkey, tvalue, 'EX', ttl)
    end
    redis.call('HSET', key, 'event', body, 'delivery', delivery, 'status', 'received',
               'stale', stale, 'received_at', received, 'duplicates', 0)
    if future ~= '' then redis.call('HSET', key, 'future_dated', future) end
    redis.call('EXPIRE', key, ttl)
    redis.call('RPUSH', delivery .. ':new', key)
    redis.call('ZADD', 'rb:due', received, 'event|' .. key)
    redis.call('ZADD', 'rb:events:status:received', received, key)
    redis.call('EXPIRE', delivery .. ':new', ttl)
    results[#results + 1] = (stale == 1) and 'stale' or 'new'
  end
end
if needed > 0 then
  redis.call('HINCRBY', bytes_key, hour, needed)
  redis.call('EXPIRE', bytes_key, ttl + bucket)
end
return results
"""

# Headers that authenticate a request are never stored: credentials, and signatures with what
# they sign over (a stored signature and timestamp are a ready-made request to replay or attack).
SECRET_HEADERS = {"authorization", "x-hook-token", "x-webhook-token", "cookie", "proxy-authorization",
                  "x-api-key", "x-hubspot-signature", "x-hubspot-signature-version", "x-hubspot-signature-v3",
                  "x-hubspot-request-timestamp", "webhook-signature", "svix-signature"}


def _is_secret_header(name: str) -> bool:
    """Listed above, or named like a signature or token (whatever a sender adds next)."""
    lower = name.lower()
    return lower in SECRET_HEADERS or "signature" in lower or "token" in lower


def event_key(source: str, event_id: str) -> str:
    return f"{PREFIX}event:{source}:{event_id}"


def job_id_for(key: str) -> str:
    """RQ job ids allow only letters, digits, _ and -: hash everything else."""
    return hashlib.sha256(key.encode()).hexdigest()[:40]


@dataclass
class StoreResult:
    delivery_id: str
    outcomes: list[str]  # per event: new | stale | duplicate

    @property
    def counts(self) -> dict[str, int]:
        return {name: self.outcomes.count(name) for name in ("new", "stale", "duplicate")}


def delivery_record(source: str, method: str, path: str, query: str, headers: Any, body: bytes,
                    events: list[InboundEvent], skipped: list[dict[str, Any]]) -> dict[str, Any]:
    kept = {k: v for k, v in headers.items() if not _is_secret_header(k)}
    return {"source": source, "received_at": time.time(), "method": method, "path": path, "query": query,
            "headers": kept, **_stored_body(body, skipped),
            "events": [e.key for e in events], "skipped": [_capped(entry) for entry in skipped]}


def _stored_body(body: bytes, skipped: list[dict[str, Any]]) -> dict[str, Any]:
    """The raw body as stored: verbatim, except that a batch item the bridge skipped keeps only its
    first SKIPPED_ITEM_BYTES (a 100-item batch of junk must not cost 100 items' bytes for 7 days).
    A cut body says so, with the size and sha256 of what was received."""
    try:
        text, encoding = body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return {"body": base64.b64encode(body).decode(), "body_encoding": "base64"}
    indexes = {entry["index"] for entry in skipped if isinstance(entry.get("index"), int)}
    if not indexes or not text.lstrip().startswith("["):
        return {"body": text, "body_encoding": encoding}
    try:
        items = json.loads(text)
    except (ValueError, RecursionError):
        return {"body": text, "body_encoding": encoding}
    cut = 0
    for index in sorted(indexes):
        if 0 <= index < len(items):
            item = json.dumps(items[index], separators=(",", ":"))
            if len(item) > SKIPPED_ITEM_BYTES:
                items[index] = {"skipped_item_excerpt": item[:SKIPPED_ITEM_BYTES], "skipped_item_bytes": len(item)}
                cut += 1
    if not cut:
        return {"body": text, "body_encoding": encoding}
    return {"body": json.dumps(items, separators=(",", ":")), "body_encoding": encoding,
            "body_note": f"{cut} skipped item(s) cut to {SKIPPED_ITEM_BYTES} bytes; the received body had "
                         f"{len(body)} bytes, sha256 {hashlib.sha256(body).hexdigest()}"}


def _capped(entry: dict[str, Any]) -> dict[str, Any]:
    """A skipped entry (index, reason, field errors) of at most about SKIPPED_ENTRY_BYTES."""
    text = json.dumps(entry)
    if len(text) <= SKIPPED_ENTRY_BYTES:
        return entry
    return {**{k: v for k, v in entry.items() if isinstance(v, int | None)},
            "reason": str(entry.get("reason", ""))[:200], "detail_excerpt": text[:SKIPPED_ENTRY_BYTES // 2]}


class StorageFull(Exception):
    """A source reached its ceiling of stored bytes: nothing was stored; the sender retries later."""

    def __init__(self, source: str, used: int, ceiling: int, retry_after: int | None) -> None:
        super().__init__(f"{source} has {used} bytes stored in the last 7 days (ceiling {ceiling})")
        self.retry_after = retry_after  # seconds until enough expires; None: this request alone is too large


def stored_bytes_key(source: str) -> str:
    return f"{PREFIX}stored-bytes:{source}"


def _hour(now: float) -> int:
    return int(now // BUCKET_SECONDS)


def _retry_after(room_at_hour: int, now: float) -> int | None:
    if room_at_hour < 0:
        return None
    expires = (room_at_hour + math.ceil(TTL_SECONDS / BUCKET_SECONDS)) * BUCKET_SECONDS
    return max(1, math.ceil(expires - now))


def event_charge(key: str, body: str, ordering_key: str, tracked: str = "", tracked_value: str = "") -> int:
    """The bytes an event not seen before adds to its source's stored bytes (the script charges
    the same: see DELIVERY_OVERHEAD_BYTES for the measurement)."""
    size = [len(text.encode()) for text in (key, body, ordering_key, tracked, tracked_value)]
    charge = size[1] + EVENT_OVERHEAD_BYTES + EVENT_KEY_COPIES * size[0] + size[2]
    if tracked:  # the `<ordering key>|<field>` key holding the field's last value
        charge += KEY_OVERHEAD_BYTES + size[2] + 1 + size[3] + size[4]
    return charge


def delivery_charge(record: str) -> int:
    """The bytes a stored delivery adds, with its list of new events and its RQ job."""
    return len(record.encode()) + DELIVERY_OVERHEAD_BYTES


def _precheck(connection: redis.Redis, source: str, keys: list[str], charges: list[int], record: str,
              ceiling: int) -> bool:
    """The ceiling, checked before the transaction so that a refused request queues no job (the
    script checks again, atomically; see store). `charges`: each event's `event_charge`.

    Returns whether every event is already stored: a pure repeat then queues no job either (the
    original's job was queued with it, and an event that expires meanwhile is still picked up
    by its lease), so a flood of duplicates costs Redis nothing that lasts."""
    now = time.time()
    with connection.pipeline(transaction=False) as pipe:
        pipe.hgetall(stored_bytes_key(source))
        for key in keys:
            pipe.exists(key)
        replies = pipe.execute()
    horizon = _hour(now) - math.ceil(TTL_SECONDS / BUCKET_SECONDS)
    buckets = sorted((int(h), int(n)) for h, n in replies[0].items() if int(h) > horizon)
    fresh = [charge for charge, seen in zip(charges, replies[1:], strict=True) if not seen]
    needed = sum(fresh) + (delivery_charge(record) if fresh or not keys else 0)
    used = sum(n for _, n in buckets)
    if ceiling and needed and used + needed > ceiling:
        freed, room_at = 0, -1
        for hour, count in buckets:
            freed += count
            if used - freed + needed <= ceiling:
                room_at = hour
                break
        raise StorageFull(source, used, ceiling, _retry_after(room_at, now))
    return bool(keys) and not fresh


def store(connection: redis.Redis, queue: Queue, source: str, events: list[InboundEvent],
          record: dict[str, Any], *, now: float | None = None, max_stored_bytes: int = 0) -> StoreResult:
    """Store and enqueue in one transaction; raises redis.RedisError when Redis cannot take it and
    StorageFull when the source has `max_stored_bytes` (0: no ceiling) stored in the last 7 days.

    `now` is the server clock that decides whether an event is future-dated (the web app's clock).
    """
    now = time.time() if now is None else now
    delivery_id = uuid.uuid4().hex
    delivery_key = f"{PREFIX}delivery:{delivery_id}"
    record_json = json.dumps(record)
    real_now = time.time()
    argv: list[Any] = [TTL_SECONDS, delivery_key, record_json, f"{real_now:.3f}", len(events),
                       int(now * 1000), FUTURE_TOLERANCE_MS, stored_bytes_key(source), max_stored_bytes,
                       _hour(real_now), BUCKET_SECONDS, DELIVERY_OVERHEAD_BYTES, EVENT_OVERHEAD_BYTES,
                       EVENT_KEY_COPIES, KEY_OVERHEAD_BYTES]
    keys, charges = [], []
    for item in events:
        tracked = item.track_field or ""
        tracked_value = str(item.event["properties"].get(tracked) or "") if tracked else ""
        key = event_key(item.event["source"], item.event["event_id"])
        body = json.dumps({**item.event, "_extra": item.extra})
        keys.append(key)
        charges.append(event_charge(key, body, item.ordering_key, tracked, tracked_value))
        argv += [key, body, item.ordering_key,
                 "" if item.occurred_ms is None else str(item.occurred_ms),
                 tracked, tracked_value, future_dated_reason(item.occurred_ms, now)]
    repeat = _precheck(connection, source, keys, charges, record_json, max_stored_bytes)
    job_id = f"wake-{delivery_id}"
    with connection.pipeline(transaction=True) as pipe:
        pipe.multi()  # explicit, so RQ adds its commands to this transaction instead of opening one
        pipe.eval(STORE_SCRIPT, 0, *argv)
        if not repeat:
            # The new events are due now (the script put them in rb:due); this job wakes a worker
            # to run whatever is due, these events first among equals (scheduler/runner.py).
            queue.enqueue_call(WAKE_JOB, job_id=job_id, pipeline=pipe, result_ttl=0, failure_ttl=86400,
                               timeout=WAKE_JOB_TIMEOUT)
        replies = pipe.execute()
    outcomes = [o.decode() if isinstance(o, bytes) else str(o) for o in replies[0]]
    if outcomes[:1] == ["full"]:
        # Another request filled the ceiling between the check and the transaction: nothing was
        # stored, so the job queued with it has nothing to do; remove it (best effort).
        job = queue.fetch_job(job_id) if not repeat else None
        if job is not None:
            job.delete()
        raise StorageFull(source, int(outcomes[1]), max_stored_bytes, _retry_after(int(outcomes[2]), real_now))
    return StoreResult(delivery_id, outcomes)


def future_dated_reason(occurred_ms: int | None, now: float) -> str:
    """Why an event does not order its record ('' when it does): dated beyond the server clock."""
    if occurred_ms is None or occurred_ms <= now * 1000 + FUTURE_TOLERANCE_MS:
        return ""
    ahead = occurred_ms / 1000 - now
    return (f"occurred_at is {ahead:.0f} s ahead of the server clock (more than {FUTURE_TOLERANCE_MS // 1000} s): "
            "processed, but it does not make later events for this record stale")


def load_event(connection: redis.Redis, source: str, event_id: str) -> dict[str, Any] | None:
    """An event with its delivery, as the status API shows it; None when unknown or expired."""
    stored = connection.hgetall(event_key(source, event_id))
    if not stored:
        return None
    text = {k.decode(): v.decode() for k, v in stored.items()}
    event = json.loads(text["event"])
    extra = event.pop("_extra", {})
    delivery_raw = connection.get(text["delivery"])
    return {
        "source": source, "event_id": event_id, "status": text["status"], "stale": text["stale"] == "1",
        "duplicates": int(text.get("duplicates", 0)), "received_at": float(text["received_at"]),
        "future_dated": "future_dated" in text, "future_dated_reason": text.get("future_dated"),
        "reason": text.get("reason"), "event": event, "sender": extra,
        "context": json.loads(text["context"]) if text.get("context") else None,
        "delivery": json.loads(delivery_raw) if delivery_raw else None,
    }
