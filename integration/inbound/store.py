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
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue, Retry

from integration.inbound.normalize import InboundEvent

TTL_SECONDS = 7 * 24 * 3600
PREFIX = "rb:"
# The first delivery job retries on this schedule (exactly `max` long: RQ repeats the first
# interval when the list is shorter, see stack-notes §1.2).
FAN_OUT_RETRY = Retry(max=5, interval=[1, 5, 30, 120, 600])
PROCESS_RETRY = Retry(max=6, interval=[5, 30, 60, 300, 900, 3600])

# ARGV: ttl, delivery key, delivery json, received_at, count, then per event:
#   event key, event json, ordering key, occurred ms or '', tracked field or '', its value or ''
STORE_SCRIPT = """
local ttl = tonumber(ARGV[1])
local delivery = ARGV[2]
redis.call('SET', delivery, ARGV[3], 'EX', ttl)
local results = {}
for i = 0, tonumber(ARGV[5]) - 1 do
  local b = 6 + i * 6
  local key, body, okey, occurred, tfield, tvalue =
    ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5]
  if redis.call('EXISTS', key) == 1 then
    redis.call('HINCRBY', key, 'duplicates', 1)
    results[#results + 1] = 'duplicate'
  else
    local stale = 0
    if occurred ~= '' then
      local last = redis.call('GET', okey)
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
               'stale', stale, 'received_at', ARGV[4], 'duplicates', 0)
    redis.call('EXPIRE', key, ttl)
    redis.call('RPUSH', delivery .. ':new', key)
    redis.call('ZADD', 'rb:lease:event', tonumber(ARGV[4]) + 60, key)
    redis.call('EXPIRE', delivery .. ':new', ttl)
    results[#results + 1] = (stale == 1) and 'stale' or 'new'
  end
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
    try:
        text, encoding = body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(body).decode(), "base64"
    kept = {k: v for k, v in headers.items() if not _is_secret_header(k)}
    return {"source": source, "received_at": time.time(), "method": method, "path": path, "query": query,
            "headers": kept, "body": text, "body_encoding": encoding,
            "events": [e.key for e in events], "skipped": skipped}


def store(connection: redis.Redis, queue: Queue, source: str, events: list[InboundEvent],
          record: dict[str, Any]) -> StoreResult:
    """Store and enqueue in one transaction; raises redis.RedisError when Redis cannot take it."""
    delivery_id = uuid.uuid4().hex
    delivery_key = f"{PREFIX}delivery:{delivery_id}"
    argv: list[Any] = [TTL_SECONDS, delivery_key, json.dumps(record), f"{time.time():.3f}", len(events)]
    for item in events:
        tracked = item.track_field or ""
        argv += [event_key(item.event["source"], item.event["event_id"]),
                 json.dumps({**item.event, "_extra": item.extra}),
                 item.ordering_key,
                 "" if item.occurred_ms is None else str(item.occurred_ms),
                 tracked,
                 str(item.event["properties"].get(tracked) or "") if tracked else ""]
    with connection.pipeline(transaction=True) as pipe:
        pipe.multi()  # explicit, so RQ adds its commands to this transaction instead of opening one
        pipe.eval(STORE_SCRIPT, 0, *argv)
        if len(events) == 1:
            # One event (every source but HubSpot batches): process it directly, one job fewer.
            # A duplicate's job finds the event already handled and ends at once.
            queue.enqueue_call("integration.jobs.inbound.process_event", args=(argv[5],),
                               job_id=f"event-{delivery_id}", retry=PROCESS_RETRY, pipeline=pipe,
                               result_ttl=600, failure_ttl=TTL_SECONDS, timeout=25)
        elif events:
            queue.enqueue_call("integration.jobs.inbound.fan_out", args=(delivery_key,),
                               job_id=f"delivery-{delivery_id}", retry=FAN_OUT_RETRY, pipeline=pipe,
                               result_ttl=3600, failure_ttl=TTL_SECONDS)
        replies = pipe.execute()
    outcomes = [o.decode() if isinstance(o, bytes) else str(o) for o in replies[0]]
    return StoreResult(delivery_id, outcomes)


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
        "reason": text.get("reason"), "event": event, "sender": extra,
        "context": json.loads(text["context"]) if text.get("context") else None,
        "delivery": json.loads(delivery_raw) if delivery_raw else None,
    }
