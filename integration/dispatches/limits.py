"""One rate limiter in Redis, shared by every worker process, per outside API (and per portal).

Two parts: a token bucket that spaces our own calls (`*_MAX_RPS`), and a pause that any worker
sets when the API says slow down (a 429's `Retry-After`, or a window whose `Remaining` reached 0),
which every other worker then honours before its next call.
"""

from __future__ import annotations

import math
import time

import redis

from integration.storage import run_script

BUCKET = """
local key, rate, burst, now = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local pause = tonumber(redis.call('GET', KEYS[2]) or '0')
if pause > now then return tostring(pause - now) end
local state = redis.call('HMGET', key, 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - at) * rate)
if tokens >= 1 then
  redis.call('HSET', key, 'tokens', tokens - 1, 'at', now)
  redis.call('EXPIRE', key, 3600)
  return '0'
end
redis.call('HSET', key, 'tokens', tokens, 'at', now)
redis.call('EXPIRE', key, 3600)
return tostring((1 - tokens) / rate)
"""


MAX_PAUSE = 86400.0  # seconds: the longest any caller may pause a limiter


# KEYS: the pause key. ARGV: until (epoch seconds), its TTL in ms. The longest pause wins.
PAUSE = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return 1
"""


class Limiter:
    def __init__(self, connection: redis.Redis, name: str, rate: float, burst: float | None = None) -> None:
        self.connection = connection
        self.bucket = f"rb:limit:{name}"
        self.pause_key = f"rb:limit:{name}:pause"
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)

    def wait_time(self) -> float:
        """Take a token if one is free (0.0), else how long to wait before asking again."""
        answer = run_script(self.connection, BUCKET, (self.bucket, self.pause_key),
                            (self.rate, self.burst, time.time()))
        return float(answer)

    def acquire(self, max_wait: float) -> bool:
        """Wait up to `max_wait` seconds for a token; False when the wait would be longer."""
        deadline = time.monotonic() + max_wait
        while True:
            wait = self.wait_time()
            if wait <= 0:
                return True
            if time.monotonic() + wait > deadline:
                return False
            time.sleep(min(wait, 1.0))

    def pause(self, seconds: float) -> None:
        """Everyone stops calling for `seconds` (the longest pause asked for wins).

        At most MAX_PAUSE: a wait read from an API's header (`Retry-After: 1e9`) must not stop every
        worker for years; a wait that is not a positive finite number pauses nothing.
        """
        if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds <= 0:
            return
        seconds = min(float(seconds), MAX_PAUSE)
        until = time.time() + seconds
        run_script(self.connection, PAUSE, (self.pause_key,), (until, int(seconds * 1000) + 1000))

    def paused_for(self) -> float:
        raw = self.connection.get(self.pause_key)
        return max(0.0, float(raw) - time.time()) if raw else 0.0

    def state(self) -> dict[str, float]:
        """What an operator asks: how many calls could go now, and is the API telling us to wait."""
        tokens, at = self.connection.hmget(self.bucket, "tokens", "at")
        now = time.time()
        free = self.burst if tokens is None else min(self.burst, float(tokens) + (now - float(at or now)) * self.rate)
        return {"rate": self.rate, "burst": self.burst, "tokens": round(free, 2),
                "paused_for": round(self.paused_for(), 1)}
