"""Durable, deduplicated storage of inbound events, and the enqueue of their processing.

One request is one Lua script in one round trip however many events it holds (EVALSHA): the
script stores the raw delivery and each event that is new, counts duplicates, marks events older
than one already seen for the same object and property as stale, enforces the source's
stored-bytes ceiling, makes the new events due (`rb:due`) and, unless a wake job is pending
already, queues the RQ job that wakes a worker. So an event is either stored *and* due with a
job to run it, or neither, and the sender is answered 2xx only after the script ran.

One wake job serves every request until a worker starts it: the script queues one only when it
sets `rb:wake:pending` (SET NX, for WAKE_PENDING_MS), and `run_due` (jobs/engine.py) deletes that
flag before it claims any unit. An event stored before the delete is due when the job claims, one
stored after it sets the flag again and queues the next job: no event waits for a job that
already started. A burst of thousands of requests queues one job instead of thousands that each
find nothing left to run. Should a job be lost (its worker killed before the delete), the flag
lapses after WAKE_PENDING_MS, and the workers' clock wakes one whenever a unit is due.

Dedupe and ordering keys live 7 days: longer than any sender retries (HubSpot workflows, the
longest, 3 days).
"""

from __future__ import annotations

import base64
import enum
import functools
import hashlib
import json
import math
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis
from rq import Queue
from rq.utils import now as rq_now
from rq.utils import utcformat

from integration import metrics
from integration.inbound.normalize import InboundEvent
from integration.scheduler.units import DUE as DUE_KEY
from integration.scheduler.units import WAKE_JOB, WAKE_JOB_FAILURE_TTL, WAKE_JOB_TIMEOUT

TTL_SECONDS = 7 * 24 * 3600
PREFIX = "rb:"
# Set by the store script when it queues a wake job, deleted by run_due when it starts: while it
# is there, a job that has not started yet will run whatever the next requests make due.
WAKE_PENDING_KEY = f"{PREFIX}wake:pending"
WAKE_PENDING_MS = 2000
# Events stored and not yet processed, by received time (inbound/records.py: RECEIVED).
RECEIVED_INDEX_KEY = f"{PREFIX}events:status:received"
# Per connection pool: the SHA-1 of the scripts this process loaded into that Redis.
_LOADED: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
# Per queue: what RQ writes to enqueue a wake job, recorded once (see _wake_template).
_WAKE_TEMPLATES: weakref.WeakKeyDictionary[Queue, WakeTemplate] = weakref.WeakKeyDictionary()
_RECORDED_JOB_ID = "wake-recorded"
_JOB_TIMES = ("created_at", "enqueued_at")

# How far ahead of the server clock an event may be dated and still order its record.
FUTURE_TOLERANCE_MS = 5 * 60 * 1000
# A stored-bytes bucket per hour; a bucket is forgotten once the bodies counted in it expired.
BUCKET_SECONDS = 3600
# What a skipped batch item keeps in the stored delivery, and a skipped entry's own size.
SKIPPED_ITEM_BYTES = 300
SKIPPED_ENTRY_BYTES = 600

# What the per-source ceiling (INBOUND_MAX_STORED_BYTES) charges, so that it tracks what Redis
# really holds, not only the bodies. Measured with INFO memory (used_memory less the clients'
# buffers) on Redis 7.0 (jemalloc, 64-bit), what the web stores at ingest while a wake job is
# pending (so requests queue none), per request over 1,000 requests (50 for batches):
#   one small Zapier event per request: +1,900 bytes (its delivery record 500 bytes; the event's
#     body and key copies 460);
#   the same with a 250-character event id and a 180-character deal id: +4,440 (1,170; 2,240);
#   HubSpot batches of 100 events: +1,975 bytes per event (320; 640);
#   one HubSpot event per request: +2,560 (710; 650); Pipedrive: +4,770 (1,760; 1,730).
# Fitted (least squares of the relative error; within 9% of every figure above): each stored
# delivery costs its record plus DELIVERY_OVERHEAD_BYTES (~35: its key and TTL); each new event
# costs its body plus EVENT_OVERHEAD_BYTES (~1,020: the hash's fields and headers, its TTL, its
# members in rb:due and in the received index, its ordering key's value and TTL) plus
# EVENT_KEY_COPIES times its key's length (the key itself, its rb:due member, its index member)
# plus its ordering key's length. The constants are rounded up, so the charge errs on the high
# side. The wake job (~800 bytes) is not charged: one serves every request until a worker starts
# it, and it goes once run, as does the rb:due member; what the worker adds afterwards (context,
# dispatches) is not counted.
DELIVERY_OVERHEAD_BYTES = 50
EVENT_OVERHEAD_BYTES = 1040
EVENT_KEY_COPIES = 3
# A string key with a TTL, beyond its name and value (Salesforce's tracked field value): measured
# 210 bytes per key for a 69-byte name and a 10-byte value.
KEY_OVERHEAD_BYTES = 130

# KEYS: the delivery, the source's stored-bytes hash, rb:due (an import: rb:due:bulk), rb:events:status:received,
#   rb:wake:pending, RQ's set of queues (rq:queues), this request's wake job hash and its queue
#   (rq:queue:default); then per event: its key, its ordering key, and its tracked-field key when it
#   has a tracked field; last, the metrics hash (integration/metrics.py).
# ARGV: ttl, delivery json, received_at, count, now ms, future tolerance ms, ceiling (0: none),
#   this hour, bucket seconds, delivery overhead, event overhead, event key copies, key overhead,
#   wake pending ms, wake job id; then per event (5): event json, occurred ms or '', tracked field
#   or '', its value or '', future-dated reason or ''; then the wake job's hash fields and values
#   (what RQ writes, see _wake_template) in one argument, each as `<length>:<bytes>`: one packed
#   argument instead of some thirty per request, unpacked only by the request that queues the job;
#   then the metrics fields for stored, duplicate and ignored events, and how many were ignored
#   (the skipped items of a verified batch).
# Every key the script touches is in KEYS (Redis' scripting contract: proxies and clusters route
# by them); tests/test_inbound_store.py checks it.
STORE_SCRIPT = """
local delivery, bytes_key, due, received_index = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local wake_flag, rq_queues, wake_job, rq_queue = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local ttl, record, received = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local count, now_ms, ahead_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local ceiling, hour, bucket = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local delivery_cost, event_cost = tonumber(ARGV[10]), tonumber(ARGV[11])
local key_copies, key_cost = tonumber(ARGV[12]), tonumber(ARGV[13])
local wake_ms, wake_id = tonumber(ARGV[14]), ARGV[15]
local metrics = KEYS[#KEYS]

-- What this request would store: events not seen before, and the delivery with them. A delivery
-- whose events are all duplicates stores nothing (each original counts its duplicates). The
-- charge is what Redis holds for them, keys and overheads included (store.py: the measurement).
local events, needed, fresh, k = {}, 0, 0, 9
for i = 0, count - 1 do
  local b = 16 + i * 5
  local e = {key = KEYS[k], okey = KEYS[k + 1], body = ARGV[b], occurred = ARGV[b + 1],
             tfield = ARGV[b + 2], tvalue = ARGV[b + 3], future = ARGV[b + 4]}
  k = k + 2
  if e.tfield ~= '' then
    e.tkey = KEYS[k]
    k = k + 1
  end
  e.new = redis.call('EXISTS', e.key) == 0
  if e.new then
    needed = needed + #e.body + event_cost + key_copies * #e.key + #e.okey
    if e.tkey then needed = needed + key_cost + #e.tkey + #e.tvalue end
    fresh = fresh + 1
  end
  events[#events + 1] = e
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
local results, stored, stored_count, duplicate_count = {}, {}, 0, 0
for _, e in ipairs(events) do
  -- The same event twice in one batch is stored once, then counted as a duplicate.
  if not e.new or stored[e.key] then
    redis.call('HINCRBY', e.key, 'duplicates', 1)
    results[#results + 1] = 'duplicate'
    duplicate_count = duplicate_count + 1
  else
    local body, stale = e.body, 0
    -- A future-dated event is processed but never orders its record: dated 2099, it would make
    -- every genuine event after it stale for as long as the key lives.
    if e.occurred ~= '' and e.future == '' then
      local last = redis.call('GET', e.okey)
      if last and tonumber(last) > now_ms + ahead_ms then
        last = nil  -- written by a future-dated event before that rule existed: ignore it
      end
      if last and tonumber(last) > tonumber(e.occurred) then
        stale = 1
      else
        redis.call('SET', e.okey, e.occurred, 'EX', ttl)
      end
    end
    if e.tkey and stale == 0 then
      local before = redis.call('GET', e.tkey)
      if before ~= e.tvalue then
        local event = cjson.decode(body)
        event['type'] = event['object']['type'] .. '.stage_changed'
        if before then event['previous'] = {[e.tfield] = before} end
        body = cjson.encode(event)
      end
      redis.call('SET', e.tkey, e.tvalue, 'EX', ttl)
    end
    if e.future ~= '' then
      redis.call('HSET', e.key, 'event', body, 'delivery', delivery, 'status', 'received', 'stale', stale,
                 'received_at', received, 'duplicates', 0, 'future_dated', e.future)
    else
      redis.call('HSET', e.key, 'event', body, 'delivery', delivery, 'status', 'received', 'stale', stale,
                 'received_at', received, 'duplicates', 0)
    end
    redis.call('EXPIRE', e.key, ttl)
    redis.call('ZADD', due, received, 'event|' .. e.key)
    redis.call('ZADD', received_index, received, e.key)
    stored[e.key] = true
    stored_count = stored_count + 1
    results[#results + 1] = (stale == 1) and 'stale' or 'new'
  end
end
local counted = 17 + count * 5  -- the metrics fields, after the packed wake job
if stored_count > 0 then redis.call('HINCRBY', metrics, ARGV[counted], stored_count) end
if duplicate_count > 0 then redis.call('HINCRBY', metrics, ARGV[counted + 1], duplicate_count) end
if tonumber(ARGV[counted + 3]) > 0 then redis.call('HINCRBY', metrics, ARGV[counted + 2], ARGV[counted + 3]) end
if needed > 0 then
  redis.call('HINCRBY', bytes_key, hour, needed)
  redis.call('EXPIRE', bytes_key, ttl + bucket)
end
-- New events are due: wake a worker, unless a job queued by an earlier request has not started
-- yet (it will claim these too). What RQ's enqueue writes, in its order.
if fresh > 0 and redis.call('SET', wake_flag, '1', 'NX', 'PX', wake_ms) then
  local packed, job, at = ARGV[16 + count * 5], {}, 1
  while at <= #packed do
    local colon = string.find(packed, ':', at, true)
    local size = tonumber(string.sub(packed, at, colon - 1))
    job[#job + 1] = string.sub(packed, colon + 1, colon + size)
    at = colon + size + 1
  end
  redis.call('SADD', rq_queues, rq_queue)
  redis.call('HSET', wake_job, unpack(job))
  redis.call('RPUSH', rq_queue, wake_id)
end
return results
"""

# Headers that authenticate a request are never stored: credentials, and signatures with what
# they sign over (a stored signature and timestamp are a ready-made request to replay or attack).
SECRET_HEADERS = {"authorization", "x-hook-token", "x-webhook-token", "cookie", "proxy-authorization",
                  "x-api-key", "x-hubspot-signature", "x-hubspot-signature-version", "x-hubspot-signature-v3",
                  "x-hubspot-request-timestamp", "webhook-signature", "svix-signature"}


@functools.lru_cache(maxsize=1024)
def _is_secret_header(name: str) -> bool:
    """Listed above, or named like a signature or token (whatever a sender adds next). Cached: the
    same few header names arrive with every request."""
    lower = name.lower()
    return lower in SECRET_HEADERS or "signature" in lower or "token" in lower


def event_key(source: str, event_id: str) -> str:
    return f"{PREFIX}event:{source}:{event_id}"


def tracked_key(ordering_key: str, field: str) -> str:
    """Where the last value of a tracked field (Salesforce's stage) is kept, per record."""
    return f"{ordering_key}|{field}"


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
    """The bytes a stored delivery adds (its record, key and TTL)."""
    return len(record.encode()) + DELIVERY_OVERHEAD_BYTES


def _loaded_shas(connection: redis.Redis) -> set[str]:
    """The scripts this process loaded into `connection`'s Redis (EVALSHA then needs no reload)."""
    return _LOADED.setdefault(connection.connection_pool, set())


@functools.lru_cache(maxsize=8)
def _script_sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1


class WakeTemplate(NamedTuple):
    """What RQ writes to enqueue a wake job, but for the job's id and times."""

    queues_key: str  # RQ's set of queue keys (rq:queues)
    queue_key: str  # the queue's list (rq:queue:default)
    job_key_prefix: str  # + the job id: the job's hash
    parts: list[bytes]  # the job hash's fields and values packed (see STORE_SCRIPT), cut where a time goes


def _wake_template(queue: Queue) -> WakeTemplate:
    """The commands `queue.enqueue_call` issues for a wake job, recorded once per queue into a
    pipeline that is never executed, as the store script replays them.

    Building a job through RQ (its object, serialised and compressed data, field by field) cost
    as much CPU as all the rest of a request's storage; every wake job is the same but for its id
    and times. RQ adds the queue to its set of queues, writes the job's hash (its status, then
    the whole job: one HSET here) and pushes its id; anything else means RQ changed, and this
    refuses to guess. tests/test_inbound_store.py checks that the script's job is RQ's own."""
    template = _WAKE_TEMPLATES.get(queue)
    if template is None:
        with queue.connection.pipeline(transaction=True) as pipe:
            pipe.multi()
            queue.enqueue_call(WAKE_JOB, job_id=_RECORDED_JOB_ID, pipeline=pipe, result_ttl=0,
                               failure_ttl=WAKE_JOB_FAILURE_TTL, timeout=WAKE_JOB_TIMEOUT)
            commands = [[_plain(arg) for arg in args] for args, _ in pipe.command_stack]
            pipe.reset()
        job_key = queue.job_class.key_for(_RECORDED_JOB_ID)
        fields: dict[Any, Any] = {}
        for command in commands:
            if command[:2] == ["HSET", job_key]:
                fields.update(zip(command[2::2], command[3::2], strict=True))
        expected = [["SADD", queue.redis_queues_keys, queue.key], ["RPUSH", queue.key, _RECORDED_JOB_ID]]
        hsets_elsewhere = any(c[0] == "HSET" and c[1] != job_key for c in commands)
        if [c for c in commands if c[0] != "HSET"] != expected or hsets_elsewhere or \
                commands[0] != expected[0] or commands[-1] != expected[-1]:
            raise RuntimeError(f"RQ's enqueue issued commands this bridge does not replay: {commands}")
        parts, current = [], b""
        for name, value in fields.items():
            current += _packed(name)
            if name in _JOB_TIMES:  # every RQ time has the same length: 2026-12-02T00:36:54.875792Z
                parts.append(current + f"{len(utcformat(rq_now()))}:".encode())
                current = b""
            else:
                current += _packed(value)
        template = WakeTemplate(queue.redis_queues_keys, queue.key, job_key[:-len(_RECORDED_JOB_ID)],
                                [*parts, current])
        _WAKE_TEMPLATES[queue] = template
    return template


def _packed(value: Any) -> bytes:
    """`<length>:<bytes>` of one field or value, as Redis would receive it."""
    data = value if isinstance(value, bytes) else str(value).encode()
    return f"{len(data)}:".encode() + data


def _plain(value: Any) -> Any:
    """A recorded argument as Redis receives it (RQ passes its status as an enum)."""
    return value.value if isinstance(value, enum.Enum) else value


def store(connection: redis.Redis, queue: Queue, source: str, events: list[InboundEvent],
          record: dict[str, Any], *, now: float | None = None, max_stored_bytes: int = 0,
          due_key: str = DUE_KEY) -> StoreResult:
    """Store and, unless one is pending, queue a wake job in one script; raises redis.RedisError
    when Redis cannot take it and StorageFull when the source has `max_stored_bytes` (0: no
    ceiling) stored in the last 7 days.

    One round trip: EVALSHA (the script's text is sent once per process and Redis). The script
    decides, atomically, what is new, whether the ceiling allows it and whether a wake job is
    needed; a request that stored nothing (refused, or every event a duplicate) queues nothing.

    `now` is the server clock that decides whether an event is future-dated (the web app's clock).
    `due_key`: where the new events are due; an import's go to the bulk lane (scheduler/units.py
    BULK), claimed only with room to spare after everything else that is due.
    """
    now = time.time() if now is None else now
    delivery_id = uuid.uuid4().hex
    delivery_key = f"{PREFIX}delivery:{delivery_id}"
    record_json = json.dumps(record)
    real_now = time.time()
    wake = _wake_template(queue)
    job_id = f"wake-{delivery_id}"
    keys = [delivery_key, stored_bytes_key(source), due_key, RECEIVED_INDEX_KEY,
            WAKE_PENDING_KEY, wake.queues_key, wake.job_key_prefix + job_id, wake.queue_key]
    argv: list[Any] = [TTL_SECONDS, record_json, f"{real_now:.3f}", len(events), int(now * 1000),
                       FUTURE_TOLERANCE_MS, max_stored_bytes, _hour(real_now), BUCKET_SECONDS,
                       DELIVERY_OVERHEAD_BYTES, EVENT_OVERHEAD_BYTES, EVENT_KEY_COPIES, KEY_OVERHEAD_BYTES,
                       WAKE_PENDING_MS, job_id]
    for item in events:
        tracked = item.track_field or ""
        keys += [event_key(item.event["source"], item.event["event_id"]), item.ordering_key]
        if tracked:
            keys.append(tracked_key(item.ordering_key, tracked))
        argv += [json.dumps({**item.event, "_extra": item.extra}),
                 "" if item.occurred_ms is None else str(item.occurred_ms), tracked,
                 str(item.event["properties"].get(tracked) or "") if tracked else "",
                 future_dated_reason(item.occurred_ms, now)]
    argv.append(utcformat(rq_now()).encode().join(wake.parts))
    keys.append(metrics.KEY)
    argv += [metrics.event_field(source, "stored"), metrics.event_field(source, "duplicate"),
             metrics.event_field(source, "ignored"), len(record.get("skipped") or ())]
    script = STORE_SCRIPT  # read at call time: tests run an instrumented copy
    sha, loaded = _script_sha(script), _loaded_shas(connection)
    for attempt in (1, 2):
        if sha not in loaded:
            connection.script_load(script)
            loaded.add(sha)
        try:
            replies = connection.evalsha(sha, len(keys), *keys, *argv)
            break
        except redis.exceptions.NoScriptError:
            # Redis restarted or its scripts were flushed: nothing ran; load it again.
            loaded.discard(sha)
            if attempt == 2:
                raise
    outcomes = [o.decode() if isinstance(o, bytes) else str(o) for o in replies]
    if outcomes[:1] == ["full"]:
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
