"""An import run's state in Redis: what was read and stored (the importer), what became of it (the
workers), and how far the file is safely stored (the checkpoint).

A run is named by its source and its file's content (`run_id`): running the same command on the
same file again finds the same run and continues it from its checkpoint, so a Ctrl-C, a SIGKILL
or a Redis outage never makes anyone start over, and nothing is sent twice.

Keys:
- `rb:import:<run>` (hash): source, file (its name only), sha256, format, encoding, delimiter,
  type, id_column, status (`running` | `interrupted` | `stored` | `done` | `cancelled`), started_at,
  updated_at, checkpoint (the last line of the file whose row is durably stored or reported),
  and the counters:
  importer side `read` (rows read), `stored` (new events), `repeated` (the same event as an
  earlier line of this file: imported once), `duplicate` (an event already stored
  by an earlier import or webhook, or the same row twice in this file), `bad` (rows reported,
  never stored): read = stored + repeated + duplicate + bad;
  worker side, one per stored event when it is processed: `dispatched` (a dispatch created and
  sent on its way), `invalid` (its rules' dispatches all invalid), `skipped` (suppressed,
  once_per, stale), `no_match` (no rule matched), `failed` (processing failed), `cancelled` (the run
  was cancelled before a worker took the event: skipped, reason "import cancelled"):
  stored = dispatched + invalid + skipped + no_match + failed + cancelled once every event is processed.
  An event that makes several dispatches counts once, by the best of them (dispatched before
  invalid before skipped); every dispatch id is listed in `:dispatches`.
- `rb:import:<run>:bad` (zset): member JSON [line, reason], score the line.
- `rb:import:<run>:dispatches` (zset): member a dispatch id, score its row's line (the worker
  adds it in the event's outcome pipeline), paged by `import status`.
- `rb:import:<run>:lock` (string): the importer holding the run (host, pid, token), so two
  terminals never feed one run at once; a holder that died on this host is taken over at once.
- `rb:imports` (zset): run -> started time, for listings.
- `rb:imports:cancelled` (zset): run -> cancel time, for the runs cancelled in the last
  DISPATCH_RETENTION_DAYS (`revor-bridge import cancel`). The worker reads it in a round trip it
  makes anyway (an imported event's first read, a submit's read of its dispatch), so neither an
  imported event nor an imported dispatch pays a round trip of its own for the check, and a
  webhook's event none at all. A cancelled run stays cancelled: nothing moves it to another status.

Once a run is `done` its keys expire with DISPATCH_RETENTION_DAYS, like its dispatches.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from integration.storage import run_script

PREFIX = "rb:import:"
RUNS_KEY = "rb:imports"
CANCELLED_KEY = "rb:imports:cancelled"
CANCELLED_REASON = "import cancelled"
STATUSES = ("running", "interrupted", "stored", "done", "cancelled")
IMPORTER_COUNTERS = ("read", "stored", "duplicate", "repeated", "bad")
WORKER_COUNTERS = ("dispatched", "invalid", "skipped", "no_match", "failed", "cancelled")
COUNTERS = IMPORTER_COUNTERS + WORKER_COUNTERS
LOCK_SECONDS = 30  # a holder renews it with every batch; a dead one elsewhere is taken over after this
META_FIELDS = ("source", "file", "sha256", "format", "encoding", "delimiter", "type", "id_column")


def run_key(run: str) -> str:
    return f"{PREFIX}{run}"


def bad_key(run: str) -> str:
    return f"{PREFIX}{run}:bad"


def dispatches_key(run: str) -> str:
    return f"{PREFIX}{run}:dispatches"


def lock_key(run: str) -> str:
    return f"{PREFIX}{run}:lock"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """The file's sha256, read in chunks (a 1,000,000-row export never sits in memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def run_id(source: str, sha256: str) -> str:
    """The same file imported as the same source is the same run: the command run again continues it."""
    return "imp_" + hashlib.sha256(f"{source}\0{sha256}".encode()).hexdigest()[:20]


@dataclass
class RunState:
    """A run's hash as read: its description, status, checkpoint and counters."""

    run: str
    meta: dict[str, str]
    status: str
    checkpoint: int
    counts: dict[str, int]
    started_at: float
    updated_at: float

    @property
    def processed(self) -> int:
        """Stored events the workers have finished (whatever became of them)."""
        return sum(self.counts[name] for name in WORKER_COUNTERS)

    @property
    def pending(self) -> int:
        """This run's events stored but not yet processed: what the importer's backpressure bounds."""
        return max(0, self.counts["stored"] - self.processed)

    def as_dict(self) -> dict[str, Any]:
        return {"run": self.run, **self.meta, "status": self.status, "checkpoint": self.checkpoint,
                **self.counts, "pending": self.pending, "started_at": self.started_at, "updated_at": self.updated_at}


def state_of(run: str, raw: dict[bytes, bytes]) -> RunState | None:
    if not raw:
        return None
    text = {k.decode(): v.decode() for k, v in raw.items()}
    return RunState(run=run, meta={name: text.get(name, "") for name in META_FIELDS},
                    status=text.get("status", "running"), checkpoint=int(text.get("checkpoint") or 0),
                    counts={name: int(text.get(name) or 0) for name in COUNTERS},
                    started_at=float(text.get("started_at") or 0), updated_at=float(text.get("updated_at") or 0))


def load(connection: redis.Redis, run: str) -> RunState | None:
    """The run, or None when it was never started (or expired)."""
    return state_of(run, connection.hgetall(run_key(run)))


def begin(connection: redis.Redis, run: str, meta: dict[str, str], now: float | None = None) -> RunState:
    """Create the run, or take up an existing one where it stopped (its checkpoint and counters
    kept). A run that is `stored` or `done` keeps its status: there is nothing left to read."""
    now = time.time() if now is None else now
    key = run_key(run)
    with connection.pipeline(transaction=True) as pipe:
        pipe.hsetnx(key, "started_at", f"{now:.3f}")
        pipe.hsetnx(key, "status", "running")
        pipe.hset(key, mapping={**{k: v for k, v in meta.items() if k in META_FIELDS}, "updated_at": f"{now:.3f}"})
        pipe.zadd(RUNS_KEY, {run: now}, nx=True)
        pipe.hgetall(key)
        raw = pipe.execute()[-1]
    found = state_of(run, raw)
    assert found is not None
    if found.status == "interrupted":
        set_status(connection, run, "running", now=now)
        found.status = "running"
    return found


def record_batch(pipe: Any, run: str, *, checkpoint: int, read: int, stored: int, duplicate: int,
                 bad: list[tuple[int, str]], now: float | None = None, repeated: int = 0) -> None:
    """One batch's outcome and the new checkpoint, inside the caller's transaction: the counters
    and the checkpoint move together, so a rerun from the checkpoint counts every row once."""
    now = time.time() if now is None else now
    key = run_key(run)
    for name, amount in (("read", read), ("stored", stored), ("duplicate", duplicate), ("repeated", repeated),
                         ("bad", len(bad))):
        if amount:
            pipe.hincrby(key, name, amount)
    if bad:
        pipe.zadd(bad_key(run), {json.dumps([line, reason]): line for line, reason in bad})
    pipe.hset(key, mapping={"checkpoint": checkpoint, "updated_at": f"{now:.3f}"})


# KEYS: the run hash, its bad rows, its dispatches; ARGV: status, now, expiry seconds or "".
_SET_STATUS = """
if redis.call('HGET', KEYS[1], 'status') == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated_at', ARGV[2])
if ARGV[3] ~= '' then for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[3]) end end
return 1
"""


def set_status(connection: redis.Redis, run: str, status: str, *, retention_seconds: int | None = None,
               now: float | None = None) -> bool:
    """Move the run to `status` (False: it is cancelled, and stays so); a `done` run's keys expire
    after `retention_seconds`."""
    if status not in STATUSES or status == "cancelled":
        raise ValueError(f"unknown run status {status!r} (cancel() cancels)")
    now = time.time() if now is None else now
    expiry = str(retention_seconds) if status == "done" and retention_seconds else ""
    return bool(run_script(connection, _SET_STATUS, [run_key(run), bad_key(run), dispatches_key(run)],
                           [status, f"{now:.3f}", expiry]))


def cancel(connection: redis.Redis, run: str, *, retention_seconds: int, now: float | None = None,
           ) -> RunState | None:
    """Mark the run cancelled (None: no such run). The importer stops at its next batch, the workers
    skip its events not processed yet and end its pending dispatches `cancelled` at their submit."""
    now = time.time() if now is None else now
    if not connection.exists(run_key(run)):
        return None
    with connection.pipeline(transaction=True) as pipe:
        pipe.hset(run_key(run), mapping={"status": "cancelled", "cancelled_at": f"{now:.3f}",
                                         "updated_at": f"{now:.3f}"})
        pipe.zadd(CANCELLED_KEY, {run: now})
        pipe.zremrangebyscore(CANCELLED_KEY, "-inf", now - retention_seconds)  # their events and dispatches are gone
        for key in (run_key(run), bad_key(run), dispatches_key(run)):
            pipe.expire(key, retention_seconds)
        pipe.hgetall(run_key(run))
        raw = pipe.execute()[-1]
    return state_of(run, raw)


def read_cancelled(pipe: Any) -> None:
    """Queue the read of the cancelled runs in a caller's pipeline (`cancelled_runs` parses it)."""
    pipe.zrange(CANCELLED_KEY, 0, -1)


def cancelled_runs(reply: Any) -> set[str]:
    return {member.decode() if isinstance(member, bytes) else str(member) for member in reply or ()}


# ---- the worker side -------------------------------------------------------------------------------


def import_of(event: dict[str, Any] | None) -> tuple[str, int] | None:
    """(run, line) of an event stored by an import (its `_extra.import`), else None."""
    extra = (event or {}).get("_extra")
    found = extra.get("import") if isinstance(extra, dict) else None
    if not isinstance(found, dict) or not isinstance(found.get("run"), str) or not found["run"]:
        return None
    line = found.get("line")
    return found["run"], line if isinstance(line, int) and not isinstance(line, bool) else 0


def outcome_of(event_status: str, dispatch_statuses: list[str]) -> str:
    """The worker counter an event's processing adds to (see the module docstring)."""
    if event_status == "failed":
        return "failed"
    if event_status == "skipped":
        return "skipped"
    if not dispatch_statuses:
        return "no_match"
    if any(status not in ("invalid", "skipped") for status in dispatch_statuses):
        return "dispatched"
    return "invalid" if "invalid" in dispatch_statuses else "skipped"


def count_outcome(pipe: Any, event: dict[str, Any] | None, event_status: str,
                  dispatches: dict[str, str] | None, *, cancelled: bool = False) -> None:
    """Inside the event's outcome transaction (dispatches/create.py `_finish`): an imported event
    adds one to its run's counter (`cancelled`: skipped because its run was cancelled) and lists
    its dispatch ids by line. No round trip of its own."""
    found = import_of(event)
    if found is None:
        return
    run, line = found
    dispatches = dispatches or {}
    outcome = "cancelled" if cancelled else outcome_of(event_status, list(dispatches.values()))
    pipe.hincrby(run_key(run), outcome, 1)
    if dispatches:
        pipe.zadd(dispatches_key(run), dict.fromkeys(dispatches, line))


def uncount_failed(pipe: Any, body: bytes | None) -> None:
    """An operator's retry of a failed event (inbound/records.py `retry`), inside its transaction:
    an imported one is pending in its run again, so its next outcome is not counted twice."""
    try:
        found = import_of(json.loads(body)) if body else None
    except ValueError:
        return
    if found is not None:
        pipe.hincrby(run_key(found[0]), "failed", -1)


# ---- reading a run back ----------------------------------------------------------------------------


def bad_rows(connection: redis.Redis, run: str, start: int = 0, count: int = 1000) -> list[tuple[int, str]]:
    """Bad rows (line, reason) in line order, a page at a time."""
    found = connection.zrange(bad_key(run), start, start + count - 1)
    return [tuple(json.loads(member)) for member in found]  # type: ignore[misc]


def dispatch_page(connection: redis.Redis, run: str, after_line: int = 0, count: int = 500,
                  ) -> list[tuple[str, int]]:
    """(dispatch id, line) of the run's dispatches with line > after_line, in line order.
    Several dispatches of one line come in one page (a page may run over `count` for them)."""
    found = connection.zrangebyscore(dispatches_key(run), f"({after_line}", "+inf", start=0, num=count,
                                     withscores=True)
    page = [(member.decode(), int(score)) for member, score in found]
    if len(page) == count:  # the rest of the last line's dispatches
        last = page[-1][1]
        more = connection.zrangebyscore(dispatches_key(run), last, last, withscores=True)
        seen = {dispatch_id for dispatch_id, _ in page}
        page += [(m.decode(), int(s)) for m, s in more if m.decode() not in seen]
    return page


def recent(connection: redis.Redis, count: int = 20) -> list[RunState]:
    """The latest runs, newest first (those whose keys have not expired)."""
    runs = [r.decode() for r in connection.zrevrange(RUNS_KEY, 0, count - 1)]
    with connection.pipeline(transaction=False) as pipe:
        for run in runs:
            pipe.hgetall(run_key(run))
        found = pipe.execute()
    return [state for run, raw in zip(runs, found, strict=True) if (state := state_of(run, raw)) is not None]


# ---- one importer per run --------------------------------------------------------------------------

# Take the lock when it is free, or held by `dead` (a process of this host that no longer exists).
_TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[2] and holder ~= ARGV[3] then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4])
return false
"""


# KEYS: the lock. ARGV: this holder, seconds. Pushes the lock ahead only while it is still ours.
_KEEP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class Busy(Exception):
    """Another importer holds this run."""

    def __init__(self, holder: str) -> None:
        super().__init__(f"another import of this file is running ({holder}); wait for it or stop it first")
        self.holder = holder


class RunLock:
    """The run's importer: held while reading and storing, renewed with each batch."""

    def __init__(self, connection: redis.Redis, run: str) -> None:
        self.connection, self.key = connection, lock_key(run)
        self.value = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def acquire(self) -> None:
        holder = self.connection.get(self.key)
        dead = holder.decode() if holder is not None and _dead_here(holder.decode()) else ""
        taken = run_script(self.connection, _TAKE, [self.key], [self.value, dead, self.value, LOCK_SECONDS])
        if taken:
            raise Busy(taken.decode() if isinstance(taken, bytes) else str(taken))

    def renew(self, pipe: Any) -> None:
        pipe.set(self.key, self.value, ex=LOCK_SECONDS)

    def keep(self) -> None:
        """While the importer waits for the workers (no batch to renew it with): a wait longer
        than LOCK_SECONDS must not make a live import look abandoned (the dashboard would offer
        Continue, and a second importer would feed the same run)."""
        run_script(self.connection, _KEEP, [self.key], [self.value, LOCK_SECONDS])

    def release(self) -> None:
        try:
            if self.connection.get(self.key) == self.value.encode():
                self.connection.delete(self.key)
        except redis.RedisError:
            pass  # it lapses by itself


def _dead_here(holder: str) -> bool:
    """A holder on this host whose process is gone (killed, crashed): its lock is free."""
    parts = holder.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _zombie(int(parts[1]))


def _zombie(pid: int) -> bool:
    """A killed process not reaped yet (its parent died too, and PID 1 in a container may never
    reap it) still answers kill(pid, 0); on Linux its state says it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]
