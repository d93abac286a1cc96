"""Dispatch records, their state machine and timeline, and the outbox of status messages.

States only move forward:

    pending -> accepted -> scheduled -> running -> succeeded | failed | cancelled
    (or straight to rejected, invalid, skipped)

Each change is one Lua script run: it checks the expected `sequence` (so two writers cannot
both move a dispatch), writes the fields, appends the timeline entry, moves the status index,
and puts one status message per destination into that destination's outbox, due at once. So a
state change and its write-backs are recorded together or not at all; delivery happens later.

How a dispatch is stored (two keys), and why: a finished dispatch stays in Redis for
DISPATCH_RETENTION_DAYS, so its size is what fills a plan. Redis keeps a hash compact (one
listpack) only while every value is at most 64 bytes (`hash-max-listpack-value`, the default
of every Redis since 7 and of the ziplist before); one longer value turns the whole hash into a
hashtable (3.2 KB for a typical finished dispatch). Measured over 10,000 finished dispatches
(`python -m benchmarks.storage`): 5,195 bytes each with the body, `crm`, `result`, ... in the
hash and a list of full JSON timeline entries; 2,785 bytes (0.91x the 3 KB target) with the
layout below: the hash about 740, the document about 1,380, the index entries about 450.
Rejected, measured with the benchmark's data written straight into Redis: one JSON string per
finished dispatch (3,195 bytes: the body escaped inside it; and every stage writing a hash field
would have to know the dispatch is not finished yet), a third key for the timeline (3,371
bytes: a small list costs as much again as its entries). The price of this layout: each change
rewrites the document (about 1.2 KB), one SET in the same script.

- `rb:dispatch:<id>` (hash): every field whose value is at most 64 bytes: status, sequence,
  times, ids, counters. The stages update these in place (`polls`, `submit_attempts`, ...).
- `rb:dispatch:<id>:doc` (string): one compact JSON document with the longer values (the Revor
  request body, stored once and resent byte for byte on every retry; `crm`, `result`, a long
  `reason` or `error`) and the timeline, each entry `[epoch ms, status, request id, reason]`
  without its trailing nulls (its sequence is its position, its previous status the entry
  before: `timeline()` gives them back in full). Only this script writes it, under the
  sequence check, so rewriting it whole from what `transition` read is safe.

Nothing is stored twice: not the id (it is in the key), not an Idempotency-Key equal to the id,
not a `recipient` equal to the body's (`load()` puts them back). A field is in one of the two
keys; a stage writing a hash field directly wins over the document (`load()` reads the hash
last). Records written before this layout (everything in the hash, the timeline a list at
`<key>:timeline`) are read as they are and take the new layout at their next change.

A dispatch that reaches a final state expires `retention` seconds later (DISPATCH_RETENTION_DAYS),
together with every key that belongs to it: its document, outboxes and status messages with
their attempt and dead-letter records. The same script sets the expiry, so a final state is
never recorded without it; an operator's retry (the one move out of a final state) takes it off
again. Index entries are trimmed by the retention sweep (dispatches/retention.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from integration import lookup, metrics
from integration.scheduler.units import ATTEMPTS, CLAIMED, DUE, deliver_unit
from integration.storage import run_script

log = logging.getLogger(__name__)

PREFIX = "rb:dispatch:"
ALL_INDEX = "rb:dispatches:all"
STATUS_INDEX = "rb:dispatches:status:"
RULE_INDEX = "rb:dispatches:rule:"
RANK = {"pending": 0, "accepted": 1, "scheduled": 2, "running": 3, "succeeded": 4, "failed": 4, "cancelled": 4,
        "rejected": 4, "invalid": 4, "skipped": 4}
TERMINAL = {s for s, r in RANK.items() if r == 4}
DEFAULT_RETENTION_SECONDS = 30 * 86400  # DISPATCH_RETENTION_DAYS' default
RETRYABLE_END = {"failed", "rejected", "cancelled"}

LISTPACK_VALUE = 64  # longest value a hash keeps in its compact encoding (hash-max-listpack-value)
JSON_FIELDS = ("recipient", "crm", "result", "error", "writeback", "links")
TIMELINE = "timeline"  # the document's member holding the timeline

# KEYS: dispatch hash, its document, its timeline list of the former layout (deleted: the
#       document holds it now), the old status index (or the new one again when creating), the
#       new status index, the all index, the rule index, the due set, the claimed set, the
#       attempts hash, the metrics hash (integration/metrics.py), the lookup buckets of this
#       change's search terms (integration/lookup.py: never expired with it), then per message: the
#       destination's outbox and the message key; then the other keys that live and die with the
#       dispatch (its outboxes' retry waits, every status message with its attempt and dead-letter
#       records), which only a move into or out of a final state touches.
# ARGV: expected sequence ("" = create), new sequence, status, old status, now, hash fields json,
#       hash fields to delete json (they moved into the document), the document, unit to
#       schedule or "", its due time, expiry ("" = leave as is, "persist", or the epoch ms at
#       which the dispatch's keys expire), claim deadline ("" = schedule the follow-up units;
#       else claim those due now for the caller, who runs them at once), the transition's counter
#       field in the metrics hash, how many lookup entries, their members (scored by `now`),
#       then per message: message json and the delivery unit (due now
#       unless it already waits for a retry or runs: NX).
# Returns 0 when the sequence check refused, else {1, then per claimed unit: unit, attempt}.
TRANSITION = """
local key = KEYS[1]
local current = redis.call('HGET', key, 'sequence')
if ARGV[1] == '' then
  if current then return 0 end
elseif current ~= ARGV[1] then
  return 0
end
local id = string.sub(key, 13)
local flat = {'sequence', ARGV[2], 'status', ARGV[3], 'previous_status', ARGV[4], 'updated_at', ARGV[5]}
for name, value in pairs(cjson.decode(ARGV[6])) do flat[#flat + 1] = name; flat[#flat + 1] = value end
redis.call('HSET', key, unpack(flat))
local gone = cjson.decode(ARGV[7])
if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
redis.call('SET', KEYS[2], ARGV[8], 'KEEPTTL')
redis.call('DEL', KEYS[3])
if ARGV[4] ~= '' then redis.call('ZREM', KEYS[4], id) end
redis.call('ZADD', KEYS[5], ARGV[5], id)
if ARGV[1] == '' then
  redis.call('ZADD', KEYS[6], ARGV[5], id)
  redis.call('ZADD', KEYS[7], ARGV[5], id)
end
local claimed = {1}
local function claim(unit)
  redis.call('ZADD', KEYS[9], ARGV[12], unit)
  claimed[#claimed + 1] = unit
  claimed[#claimed + 1] = redis.call('HINCRBY', KEYS[10], unit, 1)
end
if ARGV[9] ~= '' then
  if ARGV[12] ~= '' and tonumber(ARGV[10]) <= tonumber(ARGV[5]) and not redis.call('ZSCORE', KEYS[9], ARGV[9]) then
    redis.call('ZREM', KEYS[8], ARGV[9])
    claim(ARGV[9])
  else
    redis.call('ZADD', KEYS[8], ARGV[10], ARGV[9])
  end
end
redis.call('HINCRBY', KEYS[11], ARGV[13], 1)
local found = tonumber(ARGV[14])
for j = 1, found do redis.call('ZADD', KEYS[11 + j], math.floor(tonumber(ARGV[5])), ARGV[14 + j]) end
local k = 12 + found
for i = 15 + found, #ARGV, 2 do
  redis.call('SET', KEYS[k + 1], ARGV[i])
  redis.call('RPUSH', KEYS[k], KEYS[k + 1])
  local unit = ARGV[i + 1]
  if ARGV[12] ~= '' and not redis.call('ZSCORE', KEYS[8], unit) and not redis.call('ZSCORE', KEYS[9], unit) then
    claim(unit)
  else
    redis.call('ZADD', KEYS[8], 'NX', ARGV[5], unit)
  end
  k = k + 2
end
if ARGV[11] ~= '' then
  for j = 1, #KEYS do
    if j <= 2 or j >= 12 + found then
      if ARGV[11] == 'persist' then redis.call('PERSIST', KEYS[j]) else redis.call('PEXPIREAT', KEYS[j], ARGV[11]) end
    end
  end
end
return claimed
"""

# KEYS: a key, the key whose expiry it takes (a message's attempt or dead-letter record written
# after its dispatch got its expiry goes with it). Returns that expiry in ms (< 0: none).
EXPIRE_WITH = """
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return ttl
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def iso_now(now: float | None = None) -> str:
    moment = time.time() if now is None else now
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(moment * 1000) % 1000:03d}Z"


def key_for(dispatch_id: str) -> str:
    return PREFIX + dispatch_id


def doc_key(dispatch_id: str) -> str:
    """The dispatch's document: its long values and its timeline."""
    return PREFIX + dispatch_id + ":doc"


def old_timeline_key(dispatch_id: str) -> str:
    """Where the timeline was a list before the document held it (read until the next change)."""
    return PREFIX + dispatch_id + ":timeline"


def outbox_key(dispatch_id: str, destination: str) -> str:
    return f"rb:outbox:{dispatch_id}:{destination}"


def message_key(dispatch_id: str, sequence: int, destination: str) -> str:
    return f"rb:msg:msg_{dispatch_id}_{sequence}_{destination}"


def owned_keys(dispatch_id: str, sequence: int, destinations: list[str]) -> list[str]:
    """The keys besides its hash and document that belong to a dispatch at `sequence` with these
    write-back destinations: outboxes with their retry waits, and every status message it may
    have (one per state change and destination) with its attempt and dead-letter records."""
    keys = []
    for name in destinations:
        keys += [outbox_key(dispatch_id, name), outbox_key(dispatch_id, name) + ":not_before"]
        for number in range(1, sequence + 1):
            message = message_key(dispatch_id, number, name)
            keys += [message, message + ":attempts", message + ":dead"]
    return keys


def expire_with(connection: Any, key: str, owner: str) -> None:
    """Give `key` the expiry `owner` has, if any (works in a pipeline too)."""
    connection.eval(EXPIRE_WITH, 2, key, owner)


def _read(connection: redis.Redis, dispatch_ids: list[str]) -> list[tuple[Any, Any, list[bytes]]]:
    """Per dispatch, in one round trip: its hash, its document and, for a record of the former
    layout (a hash without a document), its timeline list. The hash is read before the document:
    a change recorded in between gives a newer document next to an older sequence, which the
    script's sequence check refuses, never the reverse."""
    with connection.pipeline(transaction=False) as pipe:
        for dispatch_id in dispatch_ids:
            pipe.hgetall(key_for(dispatch_id))
            pipe.get(doc_key(dispatch_id))
        answers = pipe.execute()
    found = [(answers[i], answers[i + 1], []) for i in range(0, len(answers), 2)]
    former = [i for i, (raw, document, _) in enumerate(found) if raw and document is None]
    if former:
        with connection.pipeline(transaction=False) as pipe:
            for i in former:
                pipe.lrange(old_timeline_key(dispatch_ids[i]), 0, -1)
            for i, entries in zip(former, pipe.execute(), strict=True):
                found[i] = (found[i][0], None, entries)
    return found


def _record(dispatch_id: str, raw: dict[bytes, bytes], document: dict[str, Any]) -> dict[str, Any] | None:
    """The record as the stages and the API see it, from the hash and the document."""
    if not raw:
        return None
    record = {name: value for name, value in document.items() if name != TIMELINE}
    record.update({k.decode(): v.decode() for k, v in raw.items()})  # the hash last: a direct write is newer
    for name in JSON_FIELDS:
        if isinstance(record.get(name), str) and record[name]:
            record[name] = json.loads(record[name])
    record.setdefault("id", dispatch_id)
    record.setdefault("idempotency_key", dispatch_id)
    if "recipient" not in record and record.get("body"):
        record["recipient"] = json.loads(record["body"]).get("recipient") or {}
    record["sequence"] = int(record.get("sequence", 0))
    record["attempt"] = int(record.get("attempt", 0))
    return record


def _entries(document: dict[str, Any], old_timeline: list[bytes]) -> list[Any]:
    """The stored timeline entries: compact lists, or full dicts of the former layout."""
    if TIMELINE in document:
        return list(document[TIMELINE])
    return [json.loads(entry) for entry in old_timeline]


def _expand(entries: list[Any]) -> list[dict[str, Any]]:
    """Compact entries `[epoch ms, status, request id, reason]` as the API shows them."""
    expanded: list[dict[str, Any]] = []
    previous = None
    for number, entry in enumerate(entries, 1):
        if isinstance(entry, dict):  # former layout: already in full
            expanded.append(entry)
        else:
            at, status, request_id, reason = [*entry, None, None][:4]
            expanded.append({"at": _iso_ms(at), "sequence": number, "status": status, "previous_status": previous,
                             "reason": reason, "request_id": request_id})
        previous = expanded[-1]["status"]
    return expanded


def _iso_ms(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def _document(raw: Any) -> dict[str, Any]:
    return json.loads(raw) if raw else {}


@dataclass(frozen=True)
class Snapshot:
    """A dispatch as read in one round trip, to hand to `transition` (see `read`)."""

    raw: dict[bytes, bytes]
    document: Any
    old_timeline: list[bytes]
    replies: list[Any]  # what the caller's own commands in that round trip answered

    def record(self, dispatch_id: str) -> dict[str, Any] | None:
        return _record(dispatch_id, self.raw, _document(self.document))


def read(connection: redis.Redis, dispatch_id: str, also: Callable[[Any], None] | None = None) -> Snapshot:
    """The dispatch, and `also(pipe)`'s commands (a lock, say) in the same round trip."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.hgetall(key_for(dispatch_id))
        pipe.get(doc_key(dispatch_id))
        if also is not None:
            also(pipe)
        answers = pipe.execute()
    raw, document, replies = answers[0], answers[1], answers[2:]
    old: list[bytes] = []
    if raw and document is None:  # a record of the former layout
        old = connection.lrange(old_timeline_key(dispatch_id), 0, -1)
    return Snapshot(raw, document, old, replies)


def load(connection: redis.Redis, dispatch_id: str) -> dict[str, Any] | None:
    [(raw, document, _)] = _read(connection, [dispatch_id])
    return _record(dispatch_id, raw, _document(document))


def timeline(connection: redis.Redis, dispatch_id: str) -> list[dict[str, Any]]:
    [(_, document, old)] = _read(connection, [dispatch_id])
    return _expand(_entries(_document(document), old))


def load_many(connection: redis.Redis, dispatch_ids: list[str]) -> list[tuple[dict[str, Any] | None,
                                                                               list[dict[str, Any]]]]:
    """Each dispatch's record (None: gone) and timeline, in one round trip (for reports)."""
    found = []
    for dispatch_id, (raw, document, old) in zip(dispatch_ids, _read(connection, dispatch_ids), strict=True):
        parsed = _document(document)
        found.append((_record(dispatch_id, raw, parsed), _expand(_entries(parsed, old))))
    return found


def status_body(record: dict[str, Any], now: float) -> dict[str, Any]:
    """The default write-back body (README, "Write-back") for the record's current state."""
    recipient = record.get("recipient") or {}
    return {
        "type": f"dispatch.{record['status']}",
        "timestamp": iso_now(now),
        "data": {
            "dispatch_id": record["id"], "sequence": record["sequence"], "status": record["status"],
            "previous_status": record.get("previous_status") or None, "rule": record.get("rule"),
            "channel": record.get("channel"), "revor_job_id": record.get("revor_job_id") or None,
            "crm": record.get("crm") or {},
            "recipient": {k: v for k, v in recipient.items() if k in ("address", "profile_url", "phone")},
            "scheduled_at": record.get("scheduled_at") or None, "finished_at": record.get("finished_at") or None,
            "result": record.get("result") or {}, "error": record.get("error") or None,
            "reason": record.get("reason") or None,
        },
    }


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v, separators=(",", ":"), ensure_ascii=False) if isinstance(v, dict | list)
            else ("" if v is None else str(v)) for k, v in fields.items()}


def _layout(dispatch_id: str, written: dict[str, str], body: str | None, document: dict[str, Any],
            entries: list[Any]) -> tuple[dict[str, str], list[str], str]:
    """Where the fields a change writes go (module docstring): the hash fields to set, those to
    delete (now in the document, or not stored: what `load()` derives), and the new document."""
    document = {name: value for name, value in document.items() if name != TIMELINE}
    derived = {"id"}
    if written.get("idempotency_key") == dispatch_id:
        derived.add("idempotency_key")
    if "recipient" in written and body and json.loads(written["recipient"] or "null") == \
            json.loads(body).get("recipient"):
        derived.add("recipient")
    short, moved = {}, set(derived)
    for name, value in written.items():
        if name in derived:
            document.pop(name, None)
        elif len(value.encode()) <= LISTPACK_VALUE:
            short[name] = value
            document.pop(name, None)
        else:
            document[name] = json.loads(value) if name in JSON_FIELDS and value[:1] in "{[" else value
            moved.add(name)
    document[TIMELINE] = entries
    return short, sorted(moved), json.dumps(document, separators=(",", ":"), ensure_ascii=False)


def transition(connection: redis.Redis, dispatch_id: str, status: str, fields: dict[str, Any] | None = None,
               *, reason: str | None = None, request_id: str | None = None,
               destinations: dict[str, list[str]] | None = None, create: dict[str, Any] | None = None,
               force: bool = False, now: float | None = None, then: tuple[str, float] | None = None,
               follow: list[str] | None = None, retention: float | None = None,
               snapshot: Snapshot | None = None, claim_for: float | None = None,
               claimed: list[tuple[str, int]] | None = None) -> int | None:
    """Move a dispatch to `status` (or create it there); the new sequence, or None if it was a no-op.

    `claim_for` (seconds) with `claimed`: the follow-up units (`then`, the status messages'
    deliveries) are claimed for the caller in the same script, as the engine would claim them,
    and listed in `claimed` with their attempt numbers; the caller runs them at once.

    `snapshot` is the record as the caller just read it (`read`), saving the read on the first
    try; the script's sequence check refuses it if it is no longer current, and the next try
    reads afresh.

    `destinations` maps destination name -> the statuses it wants. A move that is not forward is
    a no-op (a late poll answer cannot move a dispatch back); `force` allows the one backward
    move there is, an operator's retry of a failed dispatch.

    `then` is (unit, due time): the next unit of work for this dispatch (a submit, a poll),
    scheduled in the same script, so the state and the work that follows it never part. The
    delivery units of the status messages are due at once; `follow` collects them for a caller
    that delivers them right away.

    A move into a final state makes the dispatch and all its keys expire `retention` seconds
    later (DEFAULT_RETENTION_SECONDS when None); a move out of one (an operator's retry) keeps
    them for good again.
    """
    fields = dict(fields or {})
    if reason is not None:
        fields["reason"] = reason
    for tries in range(20):
        moment = time.time() if now is None else now
        if create is not None and tries == 0:
            raw, stored, old_timeline = {}, None, []  # new, most likely: the script checks that it is
        elif snapshot is not None and tries == 0:
            raw, stored, old_timeline = snapshot.raw, snapshot.document, snapshot.old_timeline
        else:
            [(raw, stored, old_timeline)] = _read(connection, [dispatch_id])
        document = _document(stored)
        current = _record(dispatch_id, raw, document)
        if current is None and create is None:
            return None
        if current is not None:
            if create is not None:
                return None
            if not force and RANK[status] <= RANK.get(current["status"], 0):
                return None
        sequence = (current["sequence"] if current else 0) + 1
        record = {**(current or {}), **(create or {}), **fields, "id": dispatch_id, "status": status,
                  "previous_status": current["status"] if current else "", "sequence": sequence}
        if create is not None:
            record["created_at"] = iso_now(moment)
        entry: list[Any] = [int(moment * 1000), status, request_id, reason]
        while entry[-1] is None:
            entry.pop()
        written = _encode({**fields, **(create or {}), **({"created_at": record["created_at"]} if create else {})})
        short, moved, new_document = _layout(dispatch_id, written, record.get("body"), document,
                                             _entries(document, old_timeline) + [entry])
        old_index = STATUS_INDEX + (record["previous_status"] or status)
        keys = [key_for(dispatch_id), doc_key(dispatch_id), old_timeline_key(dispatch_id), old_index,
                STATUS_INDEX + status, ALL_INDEX, RULE_INDEX + (record.get("rule") or ""), DUE, CLAIMED, ATTEMPTS,
                metrics.KEY]
        found = lookup.dispatch_entries(dispatch_id, create, fields)
        keys += [bucket for bucket, _ in found]
        argv: list[Any] = ["" if current is None else str(current["sequence"]), sequence, status,
                           record["previous_status"], f"{moment:.6f}", json.dumps(short), json.dumps(moved),
                           new_document, then[0] if then else "", f"{then[1]:.6f}" if then else "",
                           _expiry(status, current, moment, retention),
                           f"{moment + claim_for:.6f}" if claim_for else "",
                           metrics.transition_field(status, record.get("rule") or ""),
                           len(found), *[value for _, value in found]]
        delivery_units = []
        chosen = record.get("writeback") or []
        for name, wanted in (destinations or {}).items():
            if status not in wanted or name not in chosen:  # only the rule's own destinations
                continue
            message_id = f"msg_{dispatch_id}_{sequence}_{name}"
            message = {"id": message_id, "destination": name, "dispatch_id": dispatch_id, "sequence": sequence,
                       "body": status_body(record, moment), "created_at": moment}
            if record.get("links"):  # the records a CRM destination may update (dispatches/create.py)
                message["links"] = record["links"]
            keys += [outbox_key(dispatch_id, name), message_key(dispatch_id, sequence, name)]
            argv += [json.dumps(message), deliver_unit(dispatch_id, name)]
            delivery_units.append(deliver_unit(dispatch_id, name))
        if argv[10]:  # into or out of a final state: every key of the dispatch expires or stays with it
            keys += owned_keys(dispatch_id, sequence, list(chosen))
        reply = run_script(connection, TRANSITION, keys, argv)
        if reply:
            _log_change(dispatch_id, record, reason)
            if claimed is not None:
                claimed += [(_text(reply[i]), int(reply[i + 1])) for i in range(1, len(reply), 2)]
            elif follow is not None:
                follow.extend(delivery_units)
            return sequence
    raise RuntimeError(f"dispatch {dispatch_id}: could not record {status} (too many concurrent changes)")


def event_log_ids(record: dict[str, Any]) -> dict[str, Any]:
    """The ids of the event a dispatch came from, for its stages' log lines (logs.add): a line about
    a submit retry, a poll or a write-back then leads back to the event and its access line."""
    crm = record.get("crm") if isinstance(record.get("crm"), dict) else {}
    return {"event_id": crm.get("event_id"), "source": crm.get("source")}


def _log_change(dispatch_id: str, record: dict[str, Any], reason: str | None) -> None:
    """One line per state change, with the dispatch's ids (its event's too: a poll's line names it)."""
    crm = record.get("crm") if isinstance(record.get("crm"), dict) else {}
    level = logging.WARNING if record["status"] in ("failed", "rejected", "invalid") else logging.INFO
    log.log(level, "dispatch %s: %s -> %s%s", dispatch_id, record["previous_status"] or "new", record["status"],
            f" ({reason})" if reason else "",
            extra={"dispatch_id": dispatch_id, "revor_job_id": record.get("revor_job_id"),
                   "event_id": crm.get("event_id"), "source": crm.get("source")})


def _expiry(status: str, current: dict[str, Any] | None, moment: float, retention: float | None) -> str:
    """The script's expiry argument: when the dispatch's keys go, "persist" or "" (no change)."""
    if status in TERMINAL:
        return str(int((moment + (DEFAULT_RETENTION_SECONDS if retention is None else retention)) * 1000))
    if current is not None and current["status"] in TERMINAL:
        return "persist"
    return ""


def list_ids(connection: redis.Redis, status: str | None = None, rule: str | None = None,
             since: float | None = None, until: float | None = None, limit: int = 100) -> list[str]:
    index = STATUS_INDEX + status if status else (RULE_INDEX + rule if rule else ALL_INDEX)
    ids = connection.zrevrangebyscore(index, until if until is not None else "+inf",
                                      since if since is not None else "-inf", start=0, num=limit * 4 if rule and status
                                      else limit)
    decoded = [i.decode() for i in ids]
    if rule and status:
        decoded = [i for i in decoded if connection.zscore(RULE_INDEX + rule, i) is not None][:limit]
    return decoded
