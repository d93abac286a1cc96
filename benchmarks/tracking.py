"""Tracking cost: how many RQ jobs following N Revor jobs takes, against one per dispatch.

Creates N dispatches whose Revor jobs exist in a local sandbox (created through the real client),
marks them all accepted and makes their poll units due (scheduler/units.py), runs `--workers`
`revor-bridge worker` processes until every dispatch is finished, and prints how many RQ jobs
(`run_due`, each running a batch of due units) and how many Revor GETs that took: batching means
a few jobs, not N (or N per poll round).

    python -m benchmarks.tracking [--dispatches 1000] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import requests
from rq import Worker

from benchmarks.common import wait_for
from integration.dispatches import state
from integration.revor import RevorClient
from integration.scheduler import units
from integration.settings import SANDBOX_API_KEY
from integration.storage import free_port, redis_server_binary

ROOT = Path(__file__).resolve().parent.parent



def polls_left(connection: redis.Redis) -> int:
    """Poll units still due or claimed (other units, such as the hourly sweep, stay scheduled)."""
    return sum(1 for key in (units.DUE, units.CLAIMED) for member in connection.zrange(key, 0, -1)
               if member.startswith(units.POLL.encode() + b"|"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dispatches", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="rb-tracking-"))
    redis_port, sandbox_port = free_port(), free_port()
    binary = shutil.which("redis-server") or redis_server_binary()
    procs = [subprocess.Popen([binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVOR_", "RULES_"))}
    env.update(REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", REVOR_BASE_URL=f"http://127.0.0.1:{sandbox_port}/api/v1",
               REVOR_MAX_RPS="1000", LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))
    workers: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "integration", "sandbox", "--port", str(sandbox_port),
                                       "--time-scale", "100000", "--rate-limit", "0"], env=env, cwd=folder,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(f"http://127.0.0.1:{sandbox_port}/_sandbox/config")  # up, however loaded the machine
        connection = redis.Redis.from_url(env["REDIS_URL"])
        with RevorClient(env["REVOR_BASE_URL"], SANDBOX_API_KEY) as client:
            for number in range(args.dispatches):
                payload = {"account_id": f"connect_account_sandbox_{('email', 'whatsapp')[number % 2]}",
                           "channel": ("email", "whatsapp")[number % 2], "action": "outreach",
                           "recipient": ({"address": f"l{number}@example.com"} if number % 2 == 0
                                         else {"phone": f"+1415{number:07d}"}),
                           "content": {"subject": "s", "text": "t"} if number % 2 == 0 else {"text": "t"}}
                job = client.create_dispatch(payload, f"track-{number}").data
                dispatch_id = f"dsp_track_{number}"
                state.transition(connection, dispatch_id, "pending", create={"rule": "bench", "writeback": []})
                state.transition(connection, dispatch_id, "accepted", {"revor_job_id": job["id"]})
        log_url = f"http://127.0.0.1:{sandbox_port}/_sandbox/requests"
        gets_before = sum(1 for e in requests.get(log_url, timeout=30).json()["items"] if e["method"] == "GET")
        connection.zadd(units.DUE, {units.poll_unit(f"dsp_track_{n}"): time.time() for n in range(args.dispatches)})
        started = time.monotonic()
        workers += [subprocess.Popen([sys.executable, "-m", "integration", "worker"], env=env, cwd=folder,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
                    for _ in range(args.workers)]
        while polls_left(connection) and time.monotonic() - started < 200:
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        # Jobs run, as each worker counts them (read before they stop and unregister). A job is
        # counted when it ends: the one that ran the last polls may still be finishing.
        settle = time.monotonic() + 15
        while True:
            found = Worker.all(connection=connection)
            poll_jobs = sum(worker.successful_job_count + worker.failed_job_count for worker in found)
            if (poll_jobs and not any(worker.get_state() == "busy" for worker in found)) or time.monotonic() > settle:
                break
            time.sleep(0.1)
        for worker in workers:
            os.killpg(worker.pid, signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=60)
        finished = connection.zcard(state.STATUS_INDEX + "succeeded")
        log = requests.get(log_url, timeout=30).json()["items"]
        gets = sum(1 for entry in log if entry["method"] == "GET") - gets_before
    finally:
        for worker in workers:  # a worker outlives its Redis (it waits for it): never leave one behind
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
    print(f"dispatches tracked to their end: {finished} of {args.dispatches} in {elapsed:.1f} s "
          f"with {args.workers} worker(s)")
    print(f"RQ jobs (run_due)              : {poll_jobs}  ({poll_jobs / args.dispatches:.3f} per dispatch)")
    print(f"Revor GETs                     : {gets}  ({gets / max(finished, 1):.2f} per dispatch)")
    print(f"RQ jobs per dispatch per poll  : {poll_jobs / max(gets, 1):.3f}  (one job per poll would be 1.000)")


if __name__ == "__main__":
    main()
