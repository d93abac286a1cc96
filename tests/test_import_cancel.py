"""Issue 12 trial, item 2: cancelling an import (`revor-bridge import cancel RUN`, the dashboard's
Cancel button) stops everything of it that Revor does not have yet.

Real `revor-bridge worker` processes, real `revor-bridge import` subprocesses, the Revor sandbox
over HTTP: Revor's pace (REVOR_MAX_RPS) keeps dispatches `pending` while the import goes on, the
cancel lands mid-run, and once it settles no new Revor task is ever created.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from integration.imports import runs
from tests.conftest import sandbox_tasks
from tests.test_dashboard_auth import csrf_of, signed_in
from tests.test_import_run import (
    STACK_RULES,
    leads_file,
    quiet_stack,  # noqa: F401 - a fixture
    result_rows,
    run_import,
    run_of,
    start_import,
    wait_for,
)
from tests.test_pipeline import _stack, dispatches

__all__ = ["quiet_stack"]


@pytest.fixture
def slow_revor_stack(tmp_path, make_bridge, redis_url, redis_db):
    """Revor taken at 4 requests a second: an import's dispatches wait `pending` for their turn."""
    with _stack(tmp_path, make_bridge, redis_url, redis_db, STACK_RULES.replace("WRITEBACK\n", ""),
                {"REVOR_MAX_RPS": "4"}) as stack:
        yield stack


def cancel(stack, run: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "integration", "import", "cancel", run], env=stack["env"],
                          cwd=stack["tmp"], capture_output=True, text=True, timeout=60)


def run_dispatches(redis_db, run: str) -> dict[str, dict]:
    return {k: v for k, v in dispatches(redis_db).items() if v.get("import_run") == run}


def test_cancel_mid_run_stops_the_importer_the_workers_and_the_pending_dispatches(slow_revor_stack):
    stack = slow_revor_stack
    redis_db = stack["redis"]
    stack["start_worker"]()
    path = leads_file(stack["tmp"] / "leads.csv", range(1, 301))  # every row would send
    run = run_of(stack, path)
    importing = start_import(stack, str(path), "--source", "csv:leads", "--max-pending", "40")
    wait_for(lambda: len(sandbox_tasks(stack["sandbox"])) >= 8, 60, "the first Revor tasks")

    cancelled = cancel(stack, run)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"cancelled {run} (leads.csv as csv:leads; it was running)" in cancelled.stdout, cancelled.stdout
    assert "dispatches Revor accepted already are left alone: Revor's API v1 has no way to cancel a task" \
        in cancelled.stdout
    out, err = importing.communicate(timeout=60)
    assert importing.returncode == 1, err
    assert f"cancelled: run {run} was cancelled (revor-bridge import cancel), so nothing more is stored" in err, err
    assert "cancelled import of leads.csv" in out, out

    # Settled: every stored row processed, no dispatch of the run pending any more.
    def settled() -> bool:
        found = runs.load(redis_db, run)
        mine = run_dispatches(redis_db, run)
        return found.pending == 0 and all(d["status"] != "pending" for d in mine.values())

    wait_for(settled, 60, "the cancel to settle")
    tasks = len(sandbox_tasks(stack["sandbox"]))
    mine = run_dispatches(redis_db, run)
    sent = {k for k, v in mine.items() if v.get("revor_job_id")}
    ended = {k: v for k, v in mine.items() if v["status"] == "cancelled"}
    assert ended and all(v["reason"] == "import cancelled" and not v.get("revor_job_id") for v in ended.values())
    assert tasks == len(sent) < 300, (tasks, len(sent))
    time.sleep(3)  # retries, polls, a late submit: nothing of the run reaches Revor any more
    assert len(sandbox_tasks(stack["sandbox"])) == tasks

    found = runs.load(redis_db, run)
    counts = found.counts
    assert found.status == "cancelled" and found.checkpoint < 301, found
    assert counts["read"] == counts["stored"] + counts["duplicate"] + counts["bad"]
    assert counts["stored"] == sum(counts[name] for name in runs.WORKER_COUNTERS), counts
    assert counts["dispatched"] == len(mine)  # each row's one dispatch: sent, or ended cancelled

    # The same command again stores nothing and writes the result with the cancelled rows.
    again = run_import(stack, str(path), "--source", "csv:leads")
    assert again.returncode == 1 and "which was cancelled: nothing more is stored or sent" in again.stderr
    assert runs.load(redis_db, run).counts["read"] == counts["read"]
    rows = result_rows(stack["tmp"] / "leads.result.csv")
    assert [int(r["line"]) for r in rows] == list(range(2, 302))
    by_status: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_status.setdefault(row["status"], []).append(row)
    assert {r["dispatch_id"] for r in by_status["cancelled"] if r["dispatch_id"]} == set(ended)
    assert all(r["reason"].startswith("import cancelled") for r in by_status["cancelled"])
    unread = [r for r in by_status["cancelled"] if not r["dispatch_id"]]
    assert len(unread) == 300 - counts["read"] + counts["cancelled"]  # never stored, or skipped by a worker
    assert len(sent) == sum(len(v) for k, v in by_status.items() if k != "cancelled")
    print(f"\ncancelled after {tasks} Revor tasks: {counts}, {len(ended)} dispatches ended cancelled, "
          f"{len(unread)} rows never sent")


def test_the_dashboard_cancels_a_run_whose_rows_wait_and_the_worker_skips_them(slow_revor_stack):
    stack = slow_revor_stack
    redis_db = stack["redis"]
    path = leads_file(stack["tmp"] / "waiting.csv", range(1, 21))
    stored = run_import(stack, str(path), "--source", "csv:leads", "--no-wait")  # no worker yet: the rows wait
    assert stored.returncode == 0, stored.stderr
    run = run_of(stack, path)
    url = stack["bridge"].url
    browser = signed_in(url)
    page = browser.get(f"{url}/dashboard/imports/{run}", timeout=10)
    assert 'id="import-cancel"' in page.text
    assert browser.post(f"{url}/dashboard/imports/{run}/cancel", data={}, timeout=10).status_code == 403
    done = browser.post(f"{url}/dashboard/imports/{run}/cancel", data={"csrf_token": csrf_of(page.text)}, timeout=10)
    assert done.status_code == 200 and "Import cancelled" in done.text and 'id="import-cancel"' not in done.text
    assert runs.load(redis_db, run).status == "cancelled"
    stack["start_worker"]()
    wait_for(lambda: runs.load(redis_db, run).counts["cancelled"] == 20, 60, "the worker to skip the rows")
    assert not sandbox_tasks(stack["sandbox"]) and not dispatches(redis_db)
    event = redis_db.hgetall(f"rb:event:csv:leads:{1}")
    assert event[b"status"] == b"skipped" and event[b"reason"] == b"import cancelled"


def test_ctrl_c_says_how_many_stored_rows_the_workers_still_process_and_how_to_stop_them(quiet_stack):
    stack = quiet_stack
    path = leads_file(stack["tmp"] / "big.csv", range(1, 5001), vip_every=10)
    run = run_of(stack, path)
    importing = start_import(stack, str(path), "--source", "csv:leads", "--max-pending", "0")  # no worker
    wait_for(lambda: int(stack["redis"].hget(runs.run_key(run), "checkpoint") or 0) > 1000, 60, "a checkpoint")
    importing.send_signal(signal.SIGINT)
    _, err = importing.communicate(timeout=60)
    assert importing.returncode == 130, err
    waiting = runs.load(stack["redis"], run).pending
    assert waiting >= 1000  # a checkpoint past line 1,001: at least 1,000 rows stored
    assert (f"the workers still process the {waiting:,} stored rows not processed yet (and send what the rules say); "
            f"to stop them too: revor-bridge import cancel {run}") in err, err
