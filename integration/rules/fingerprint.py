"""Which rules the workers run, so an import is never planned with other rules than it is sent with.

An import's dry run (`revor-bridge import`, the dashboard's import page) plans every row with the
rules the importing process loaded (its RULES_FILE); the workers then send each row with the rules
they loaded. Two different files (or none on one side) made a plan of "would send 0" pass the
--max-days check and the workers send 79 tasks. So each worker publishes the fingerprint of its
rules (the file's name and the sha256 of its bytes as loaded) when it starts, and the importer
refuses to store anything unless a live worker runs the very rules it planned with.

`rb:rules:workers` (hash): RQ worker name -> `<file name> <sha256>` (`(none)` for a worker without
RULES_FILE). A worker adds its field when it registers with RQ and removes it when it stops. Live
means RQ's own worker key (`rq:worker:<name>`) is there and not marked dead, the liveness RQ's
heartbeat keeps; the field of a worker gone without a word (SIGKILL) is dropped by the next reader
once RQ's key has expired.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

KEY = "rb:rules:workers"
NO_RULES = "(none)"
WORKER_PREFIX = "rq:worker:"  # RQ's key of a registered worker (rq.worker.Worker.redis_worker_namespace_prefix)


def of(ruleset: Any) -> str:
    """`<file name> <sha256>` of a loaded rule set, `(none)` without one."""
    if ruleset is None:
        return NO_RULES
    return f"{Path(ruleset.path).name} {ruleset.sha256}"


def short(fingerprint: str) -> str:
    """What people read: the file name and 12 hex digits (`(none)` as is)."""
    name, _, sha = fingerprint.rpartition(" ")
    return f"{name} {sha[:12]}" if name else fingerprint


def publish(connection: Any, worker: str, ruleset: Any) -> None:
    connection.hset(KEY, worker, of(ruleset))


def withdraw(connection: Any, worker: str) -> None:
    connection.hdel(KEY, worker)


def live(connection: redis.Redis) -> dict[str, str]:
    """Worker name -> fingerprint, for the workers RQ still counts alive (two round trips)."""
    found = {k.decode(): v.decode() for k, v in connection.hgetall(KEY).items()}
    if not found:
        return {}
    names = sorted(found)
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hget(WORKER_PREFIX + name, "death")
            pipe.exists(WORKER_PREFIX + name)
        answers = pipe.execute()
    alive, gone = {}, []
    for index, name in enumerate(names):
        death, exists = answers[2 * index], answers[2 * index + 1]
        if exists and death is None:
            alive[name] = found[name]
        else:
            gone.append(name)
    if gone:
        connection.hdel(KEY, *gone)
    return alive


@dataclass
class Verdict:
    """`refusal`: the one line that stops the import; `warning`: said, and the import goes on."""

    refusal: str | None = None
    warning: str | None = None


def check(connection: redis.Redis, ruleset: Any) -> Verdict:
    """May an import planned with `ruleset` (None: no RULES_FILE) be stored for the workers?"""
    mine = of(ruleset)
    workers = live(connection)
    theirs = sorted(set(workers.values()))
    if ruleset is None:
        running = f" (the workers run rules {', '.join(short(f) for f in theirs)})" if theirs else ""
        return Verdict(refusal="no rules are loaded here (RULES_FILE is unset), so the dry run cannot say what "
                               f"would be sent{running}: set RULES_FILE to the rules file the workers run")
    if not workers:
        return Verdict(warning=f"no worker is running: the rows wait for one, which must run rules {short(mine)} "
                               "(the rules this import planned with)")
    if mine not in theirs:
        return Verdict(refusal=f"the workers run rules {', '.join(short(f) for f in theirs)}, this import planned "
                               f"with {short(mine)}: set RULES_FILE to the same file")
    others = sorted({short(f) for f in theirs if f != mine})
    if others:
        names = sorted(name for name, f in workers.items() if f != mine)
        return Verdict(warning=f"{len(names)} of the {len(workers)} workers ({', '.join(names)}) run other rules "
                               f"({', '.join(others)}): rows they take are sent by those rules")
    return Verdict()
