"""Units of work in Redis: when each is due next, who holds it now, how often it was started.

- `rb:due` (sorted set): unit -> the time of its next attempt. Waiting here never expires: a
  unit that waits an hour behind a backlog is simply due, not lost and not "recovered".
- `rb:claimed` (sorted set): unit -> the deadline of the claim on it. A worker claims a unit
  (it moves from `rb:due` to here in one script), pushes the deadline ahead while it works, and
  either finishes it or gives it its next attempt time. A worker killed with SIGKILL leaves the
  claim behind; once its deadline passes, `recover` makes the unit due again, with its attempt
  count intact, so the schedule goes on where it was.
- `rb:attempts` (hash): unit -> attempts started. Counted when the claim is made, before any
  work, so an attempt that never finished still counts.
- `rb:due:bulk` (sorted set): like `rb:due`, for the events of an import (a CSV list stored by
  `revor-bridge import`). A claim takes what is due in `rb:due` first and fills the room left
  from here, so a webhook's event never waits behind a list's rows: a list of a million rows
  goes at the pace the workers have spare. A retry or a recovered claim goes to `rb:due`.

A unit id is `<kind>|<ref>`: `event|rb:event:<source>:<id>`, `submit|<dispatch id>`,
`poll|<dispatch id>`, `deliver|<dispatch id>|<destination>`.

Every script names each key it touches in KEYS (Redis' scripting contract, which managed Redis
proxies and clusters rely on).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from integration.storage import run_script

DUE = "rb:due"
BULK = "rb:due:bulk"
CLAIMED = "rb:claimed"
ATTEMPTS = "rb:attempts"
RECOVERED = "rb:stats:recovered"  # how many claims ran out (a worker died or hung): for operators

# The one RQ job (jobs/engine.py) that runs whatever is due; the web, the clock and a run at its
# budget queue it. It retries nothing itself: the units keep their own schedule here. Its timeout
# is far above a run (a 10 s budget plus the units in flight, each with its own deadline).
WAKE_JOB = "integration.jobs.engine.run_due"
WAKE_JOB_TIMEOUT = 300
WAKE_JOB_FAILURE_TTL = 86400

EVENT, SUBMIT, POLL, DELIVER = "event", "submit", "poll", "deliver"
KINDS = (EVENT, SUBMIT, POLL, DELIVER)
# Housekeeping: the hourly retention sweep (handled by dispatches/retention.py). Its id lives
# here so the clock can make sure it is scheduled without importing the stages above it.
SWEEP = "sweep"
SWEEP_UNIT = f"{SWEEP}|retention"

# KEYS: due, claimed, attempts, bulk. ARGV: now, claim deadline, limit, then any specific units.
# With specific units only those are claimed (when due or not yet there at all is not claimed:
# only units that are in `due` or `bulk`); without, the `limit` earliest due ones of `due`, then
# as many of `bulk` as there is room left. A due unit that is claimed already (a new message for
# an outbox being delivered) stays due, one second later.
CLAIM = """
local now, deadline, limit = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local candidates, lanes = {}, {}  -- lanes[i]: the KEYS index (1 due, 4 bulk) candidate i is in
if #ARGV > 3 then
  for i = 4, #ARGV do
    local lane = 1
    local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
    if not score then
      lane = 4
      score = redis.call('ZSCORE', KEYS[4], ARGV[i])
    end
    if score and tonumber(score) <= now then
      candidates[#candidates + 1] = ARGV[i]
      lanes[#candidates] = lane
    end
  end
else
  for _, lane in ipairs({1, 4}) do
    if #candidates < limit then
      for _, unit in ipairs(redis.call('ZRANGEBYSCORE', KEYS[lane], '-inf', now, 'LIMIT', 0, limit - #candidates)) do
        candidates[#candidates + 1] = unit
        lanes[#candidates] = lane
      end
    end
  end
end
local claimed = {}
for i, unit in ipairs(candidates) do
  local lane = lanes[i]
  if redis.call('ZSCORE', KEYS[2], unit) then
    redis.call('ZADD', KEYS[lane], now + 1, unit)
  else
    redis.call('ZREM', KEYS[lane], unit)
    redis.call('ZADD', KEYS[2], deadline, unit)
    claimed[#claimed + 1] = unit
    claimed[#claimed + 1] = redis.call('HINCRBY', KEYS[3], unit, 1)
  end
end
return claimed
"""

# KEYS: due, claimed. ARGV: unit, due time. Schedules the unit unless it is due or claimed already.
ENSURE = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""

# KEYS: due, claimed, recovered counter. ARGV: now, limit. Expired claims become due now.
RECOVER = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, unit in ipairs(expired) do
  redis.call('ZREM', KEYS[2], unit)
  redis.call('ZADD', KEYS[1], 'NX', ARGV[1], unit)
end
if #expired > 0 then redis.call('INCRBY', KEYS[3], #expired) end
return expired
"""

# KEYS: due, claimed, attempts. ARGV: unit, next attempt time, count (1: this attempt counts,
# 0: it was a wait that is nobody's fault, such as a rate-limit pause), the claim's attempt
# number or "" (unchecked). A run whose claim lapsed and was taken by another run (its attempt
# number moved on) changes nothing: the unit belongs to the newer run.
AGAIN = """
if ARGV[4] ~= '' then
  local held = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if not held or redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[4] then return 0 end
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if ARGV[3] == '0' then
  local left = redis.call('HINCRBY', KEYS[3], ARGV[1], -1)
  if left <= 0 then redis.call('HDEL', KEYS[3], ARGV[1]) end
end
return 1
"""

# KEYS: claimed, attempts. ARGV: unit, the claim's attempt number or "" (unchecked). Done: the
# claim and the count go, unless another run holds the unit now.
FINISH = """
if ARGV[2] ~= '' then
  local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not held or redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Unit:
    kind: str
    ref: str  # the event key, or the dispatch id (with `|destination` for a delivery)

    @property
    def id(self) -> str:
        return f"{self.kind}|{self.ref}"

    @classmethod
    def parse(cls, unit_id: str) -> Unit:
        kind, _, ref = unit_id.partition("|")
        return cls(kind, ref)


def unit_id(kind: str, ref: str) -> str:
    return f"{kind}|{ref}"


def event_unit(event_key: str) -> str:
    return unit_id(EVENT, event_key)


def submit_unit(dispatch_id: str) -> str:
    return unit_id(SUBMIT, dispatch_id)


def poll_unit(dispatch_id: str) -> str:
    return unit_id(POLL, dispatch_id)


def deliver_unit(dispatch_id: str, destination: str) -> str:
    return unit_id(DELIVER, f"{dispatch_id}|{destination}")


def wake(queue: Any, job_id: str) -> None:
    """Queue the job that runs what is due (no result kept)."""
    queue.enqueue_call(WAKE_JOB, job_id=job_id, result_ttl=0, failure_ttl=WAKE_JOB_FAILURE_TTL,
                       timeout=WAKE_JOB_TIMEOUT)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def schedule(connection: Any, unit: str, at: float | None = None, *, keep_earlier: bool = False) -> None:
    """Make `unit` due at `at` (now by default). `keep_earlier`: an earlier time already set wins
    (works in a pipeline too)."""
    moment = time.time() if at is None else at
    if keep_earlier:
        connection.zadd(DUE, {unit: moment}, lt=True)
    else:
        connection.zadd(DUE, {unit: moment})


def ensure(connection: redis.Redis, unit: str, at: float | None = None) -> bool:
    """Make `unit` due at `at` (now by default) unless it is due or claimed already: a unit that
    keeps itself going (the sweep) is started once and never doubled. True if it was scheduled."""
    moment = time.time() if at is None else at
    return bool(run_script(connection, ENSURE, (DUE, CLAIMED), (unit, f"{moment:.6f}")))


def claim(connection: redis.Redis, limit: int, hold_seconds: float, units: list[str] | None = None,
          now: float | None = None) -> list[tuple[str, int]]:
    """Claim up to `limit` due units (or just `units`, those of them that are due); each with the
    number of its attempt that starts now."""
    moment = time.time() if now is None else now
    reply = run_script(connection, CLAIM, (DUE, CLAIMED, ATTEMPTS, BULK),
                       (moment, moment + hold_seconds, limit, *(units or [])))
    return [(_text(reply[i]), int(reply[i + 1])) for i in range(0, len(reply), 2)]


def extend(connection: Any, units: list[str], hold_seconds: float) -> None:
    """Push the claims on `units` ahead (only those still claimed: XX); works in a pipeline too."""
    if units:
        deadline = time.time() + hold_seconds
        connection.zadd(CLAIMED, dict.fromkeys(units, deadline), xx=True)


def finish(connection: Any, unit: str, attempt: int | None = None) -> None:
    """Done: the claim and the attempt count go. A unit made due again meanwhile stays due.

    With `attempt` (the number its claim got), only while that claim is still the unit's: a run
    whose claim lapsed and was taken over must not end the newer run's claim (works in a
    pipeline too)."""
    args = (unit, "" if attempt is None else attempt)
    if isinstance(connection, redis.client.Pipeline):
        connection.eval(FINISH, 2, CLAIMED, ATTEMPTS, *args)
        return
    run_script(connection, FINISH, (CLAIMED, ATTEMPTS), args)


def again(connection: redis.Redis, unit: str, at: float, *, counted: bool = True,
          attempt: int | None = None) -> None:
    """The unit's next attempt is at `at`; `counted=False` hands back the attempt it was charged.
    With `attempt`, only while the claim with that number is still the unit's (see `finish`)."""
    run_script(connection, AGAIN, (DUE, CLAIMED, ATTEMPTS),
               (unit, f"{at:.6f}", 1 if counted else 0, "" if attempt is None else attempt))


def recover(connection: redis.Redis, now: float | None = None, limit: int = 1000) -> list[str]:
    """Claims whose deadline passed become due now (their attempt counts stay)."""
    moment = time.time() if now is None else now
    return [_text(u) for u in run_script(connection, RECOVER, (DUE, CLAIMED, RECOVERED), (moment, limit))]


def next_due(connection: redis.Redis) -> float | None:
    """When the earliest unit is due, an import's included (None: nothing waits)."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.zrange(DUE, 0, 0, withscores=True)
        pipe.zrange(BULK, 0, 0, withscores=True)
        firsts = [float(found[0][1]) for found in pipe.execute() if found]
    return min(firsts, default=None)


def attempts(connection: redis.Redis, unit: str) -> int:
    return int(connection.hget(ATTEMPTS, unit) or 0)


def where(connection: redis.Redis, unit: str) -> dict[str, float | None]:
    """For the status API and tests: the unit's due time and claim deadline (None: not there)."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.zscore(DUE, unit)
        pipe.zscore(CLAIMED, unit)
        pipe.zscore(BULK, unit)
        due, claimed, bulk = pipe.execute()
    return {"due": due if due is not None else bulk, "claimed_until": claimed}


COUNT_SAMPLE = 10_000  # units read per state at most: a scrape must not walk a 100,000-unit backlog


def counts(connection: redis.Redis, now: float | None = None, sample: int = COUNT_SAMPLE) -> dict[str, Any]:
    """Per kind: waiting (not yet due), due now, and claimed; the oldest due unit's wait.

    Bounded work, whatever the backlog: each state's total is exact (ZCOUNT/ZCARD); its split by
    kind is read from at most `sample` units (the earliest) and scaled to the total when the
    state holds more, and then `estimated` is True. An import's events (`rb:due:bulk`) count as
    event units; the oldest due unit is `rb:due`'s, what a webhook's event would wait behind.
    """
    moment = time.time() if now is None else now
    with connection.pipeline(transaction=False) as pipe:
        pipe.zcount(DUE, "-inf", moment)
        pipe.zcount(DUE, f"({moment}", "+inf")
        pipe.zcard(CLAIMED)
        pipe.zrangebyscore(DUE, "-inf", moment, start=0, num=sample)
        pipe.zrangebyscore(DUE, f"({moment}", "+inf", start=0, num=sample)
        pipe.zrange(CLAIMED, 0, sample - 1)
        pipe.zrange(DUE, 0, 0, withscores=True)
        pipe.get(RECOVERED)
        pipe.zcount(BULK, "-inf", moment)
        pipe.zcount(BULK, f"({moment}", "+inf")
        due, waiting, claimed, due_some, waiting_some, claimed_some, first, recovered, *bulk = pipe.execute()
    result: dict[str, Any] = {kind: {"waiting": 0, "due": 0, "claimed": 0} for kind in KINDS}
    estimated = False
    for state, total, members in (("due", due, due_some), ("waiting", waiting, waiting_some),
                                  ("claimed", claimed, claimed_some)):
        split = {kind: 0 for kind in KINDS}
        for member in members:
            kind = _text(member).partition("|")[0]
            if kind in split:
                split[kind] += 1
        scale = total / len(members) if members and total > len(members) else 1.0
        estimated = estimated or scale != 1.0
        for kind, count in split.items():
            result[kind][state] = round(count * scale)
    result[EVENT]["due"] += bulk[0]
    result[EVENT]["waiting"] += bulk[1]
    result["totals"] = {"due": due + bulk[0], "waiting": waiting + bulk[1], "claimed": claimed}
    result["estimated"] = estimated
    oldest = float(first[0][1]) if first else None
    result["oldest_due_seconds"] = round(moment - oldest, 3) if oldest is not None and oldest <= moment else 0.0
    result["recovered_total"] = int(recovered or 0)
    return result
