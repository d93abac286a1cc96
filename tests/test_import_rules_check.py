"""Issue 12 trial, item 1: an import is never planned with other rules than the workers send it with.

Real `revor-bridge worker` processes publish the fingerprint of the rules they loaded
(rules/fingerprint.py); a real `revor-bridge import` with no rules, or with another rules file,
refuses before anything is stored; with the same file it goes on; with no worker running it says so
and goes on (the rows wait for a worker).
"""

from __future__ import annotations

import hashlib
import os
import signal

from integration.imports import runs
from integration.rules import fingerprint
from tests.conftest import sandbox_tasks
from tests.test_import_run import leads_file, quiet_stack, run_import, run_of, wait_for  # noqa: F401 - a fixture

__all__ = ["quiet_stack"]


def published(redis_db) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in redis_db.hgetall(fingerprint.KEY).items()}


def test_the_import_refuses_other_rules_or_none_than_the_live_workers_run(quiet_stack):
    stack = quiet_stack
    redis_db = stack["redis"]
    rules = stack["tmp"] / "rules.yaml"
    sha = hashlib.sha256(rules.read_bytes()).hexdigest()
    worker = stack["start_worker"]()
    workers = wait_for(lambda: published(redis_db), 30, "the worker's fingerprint")
    assert list(workers.values()) == [f"rules.yaml {sha}"], workers
    path = leads_file(stack["tmp"] / "leads.csv", range(1, 11), vip_every=2)
    run = run_of(stack, path)

    # No RULES_FILE here: the dry run would say "would send 0"; the workers would send 5.
    env = {k: v for k, v in stack["env"].items() if k != "RULES_FILE"}
    bare = run_import({**stack, "env": env}, str(path), "--source", "csv:leads")
    assert bare.returncode == 1, bare.stderr + bare.stdout
    assert bare.stderr.strip().count("\n") == 0, bare.stderr  # one line
    assert "no rules are loaded here (RULES_FILE is unset)" in bare.stderr
    assert f"the workers run rules rules.yaml {sha[:12]}" in bare.stderr
    assert not redis_db.exists(runs.run_key(run)) and not sandbox_tasks(stack["sandbox"])

    # Another rules file: its plan says something else than the workers would do.
    other = stack["tmp"] / "other.yaml"
    other.write_text(rules.read_text().replace("match: {contact.segment: vip}", "match: {contact.segment: other}"))
    other_sha = hashlib.sha256(other.read_bytes()).hexdigest()
    mismatch = run_import({**stack, "env": {**stack["env"], "RULES_FILE": str(other)}}, str(path), "--source",
                          "csv:leads")
    assert mismatch.returncode == 1, mismatch.stderr + mismatch.stdout
    assert mismatch.stderr.strip() == (
        f"revor-bridge import: the workers run rules rules.yaml {sha[:12]}, this import planned with other.yaml "
        f"{other_sha[:12]}: set RULES_FILE to the same file"), mismatch.stderr
    assert not redis_db.exists(runs.run_key(run)) and not sandbox_tasks(stack["sandbox"])
    # Its dry run still shows what those rules would do, with the warning first.
    looked = run_import({**stack, "env": {**stack["env"], "RULES_FILE": str(other)}}, str(path), "--source",
                        "csv:leads", "--dry-run")
    assert looked.returncode == 0 and "(warning: the workers run rules rules.yaml" in looked.stderr, looked.stderr

    # The same file: imported, and the workers do what the plan said.
    done = run_import(stack, str(path), "--source", "csv:leads")
    assert done.returncode == 0, done.stderr
    assert "Would send 5 Revor tasks." in done.stdout
    assert runs.load(redis_db, run).counts["dispatched"] == 5

    # A worker that stops takes its fingerprint away; with none running the import warns and goes on.
    os.killpg(worker.pid, signal.SIGTERM)
    worker.wait(timeout=30)
    assert published(redis_db) == {}
    later = leads_file(stack["tmp"] / "later.csv", range(11, 15), vip_every=2)
    waiting = run_import(stack, str(later), "--source", "csv:leads", "--no-wait")
    assert waiting.returncode == 0, waiting.stderr
    assert "(warning: no worker is running: the rows wait for one, which must run rules rules.yaml" in waiting.stderr
    assert runs.load(redis_db, run_of(stack, later)).counts["stored"] == 4


def test_a_worker_gone_without_a_word_drops_out_once_rq_forgets_it(redis_db):
    """SIGKILL leaves the hash field: a reader drops it once RQ's own worker key is gone."""
    redis_db.hset(fingerprint.KEY, mapping={"alive": "a.yaml 1", "dead": "b.yaml 2", "stopped": "c.yaml 3"})
    redis_db.hset("rq:worker:alive", "name", "alive")
    redis_db.hset("rq:worker:stopped", mapping={"name": "stopped", "death": "2026-01-01"})
    assert fingerprint.live(redis_db) == {"alive": "a.yaml 1"}
    assert published(redis_db) == {"alive": "a.yaml 1"}
