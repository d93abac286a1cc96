"""Events per second through web, worker and Revor sandbox, and webhook -> Revor 202 latency.

Starts a redis-server, the Revor sandbox (`revor-bridge sandbox`), the web app under gunicorn and
`--workers` `revor-bridge worker` processes; posts `--events` signed-by-token generic hook events
from client threads; reads the sandbox's request log to find when each event's dispatch got its
202. Prints events per second end to end (first POST to last 202), p50/p99 of webhook -> 202,
and, measured in the same run on the same Redis, RQ's own no-op job rate with the same number of
workers, since every event costs several RQ jobs (fan-out, process, submit).

    python -m benchmarks.pipeline [--events 300] [--workers 2] [--clients 8] [--noop-jobs 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis
import requests
from rq import Queue

from benchmarks.common import wait_for
from integration.storage import free_port, redis_server_binary

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0123456789"
RULES = """\
version: 1
accounts: {wa: connect_account_sandbox_whatsapp}
rules:
  - name: bench
    when: {source: generic:bench, type: deal.stage_changed}
    dispatch:
      account: wa
      channel: whatsapp
      recipient: {phone: "{{ contact.phone }}"}
      content: {text: "Hi {{ contact.first_name }}"}
      interval_seconds: 60
"""




def noop_rate(redis_url: str, jobs: int, workers: int, env: dict[str, str], folder: Path) -> float:
    connection = redis.Redis.from_url(redis_url)
    queue = Queue("noop", connection=connection, serializer="json")
    for start in range(0, jobs, 500):
        with connection.pipeline() as pipe:
            queue.enqueue_many([Queue.prepare_data("benchmarks.noop.noop", job_id=f"noop-{n}", result_ttl=0)
                                for n in range(start, min(jobs, start + 500))], pipeline=pipe)
            pipe.execute()
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "rq.cli", "worker", "--burst", "-u", redis_url, "-S", "json",
                               "-w", "rq.worker.HerokuWorker", "-q", "noop"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
    for proc in procs:
        proc.wait()
    return jobs / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--noop-jobs", type=int, default=2000, help="size of the RQ no-op baseline run")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="rb-pipeline-"))
    (folder / "rules.yaml").write_text(RULES)
    redis_port, sandbox_port, web_port = free_port(), free_port(), free_port()
    binary = shutil.which("redis-server") or redis_server_binary()
    procs: list[subprocess.Popen] = []
    procs.append(subprocess.Popen([binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(folder),
                                   "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL))
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVOR_", "GENERIC_WEBHOOK_", "HUBSPOT_"))}
    env.update(REDIS_URL=redis_url, RULES_FILE=str(folder / "rules.yaml"), GENERIC_WEBHOOK_SECRET_BENCH=TOKEN,
               REVOR_BASE_URL=f"http://127.0.0.1:{sandbox_port}/api/v1", REVOR_MAX_RPS="1000", LOG_LEVEL="WARNING",
               PYTHONPATH=str(ROOT))
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "integration", "sandbox", "--port", str(sandbox_port),
                                       "--time-scale", "1000", "--rate-limit", "0"], cwd=folder, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen([sys.executable, "-m", "gunicorn", "integration.web:create_app()", "--bind",
                                       f"127.0.0.1:{web_port}", "--workers", "2", "--log-level", "warning"],
                                      cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(f"http://127.0.0.1:{sandbox_port}/_sandbox/config")
        wait_for(f"http://127.0.0.1:{web_port}/healthz")
        for _ in range(args.workers):
            procs.append(subprocess.Popen([sys.executable, "-m", "integration", "worker"], cwd=folder, env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
        sent_at: dict[str, float] = {}
        lock = threading.Lock()

        def client(numbers: list[int]) -> None:
            with requests.Session() as session:
                for number in numbers:
                    body = json.dumps({"event": "deal.stage_changed", "event_id": f"bench-{number}",
                                       "deal__id": str(number), "contact__first_name": "Lead",
                                       "contact__phone": f"+1415{number:07d}"})
                    moment = time.time()
                    answer = session.post(f"http://127.0.0.1:{web_port}/webhooks/generic/bench", data=body,
                                          headers={"Content-Type": "application/json", "X-Hook-Token": TOKEN},
                                          timeout=30)
                    if answer.status_code != 200:
                        raise SystemExit(f"webhook answered {answer.status_code}: {answer.text[:200]}")
                    with lock:
                        sent_at[f"bench-{number}"] = moment

        time.sleep(2)  # workers up
        numbers = list(range(args.events))
        threads = [threading.Thread(target=client, args=(numbers[i::args.clients],)) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        accepted: dict[str, float] = {}
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(accepted) < args.events:
            log = requests.get(f"http://127.0.0.1:{sandbox_port}/_sandbox/requests", timeout=30).json()["items"]
            accepted = {}
            for entry in log:
                if entry["method"] == "POST" and entry["status"] == 202:
                    event_id = entry["body"]["metadata"]["crm_event_id"]
                    accepted.setdefault(event_id, entry["time"])
            time.sleep(0.5)
        tasks = len(requests.get(f"http://127.0.0.1:{sandbox_port}/_sandbox/tasks", timeout=30).json()["items"])
        for proc in procs[3:]:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs[3:]:
            proc.wait(timeout=60)
        baseline = noop_rate(redis_url, args.noop_jobs, args.workers, env, folder)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
    latencies = sorted(accepted[e] - sent_at[e] for e in accepted if e in sent_at)
    span = max(accepted.values()) - min(sent_at.values())
    rate = len(accepted) / span
    print(f"events: {args.events} sent, {len(accepted)} reached Revor's 202, {tasks} Revor tasks created; "
          f"{args.workers} worker processes, 2 gunicorn workers, {args.clients} client threads")
    print(f"end to end          : {rate:8.1f} events/s (first webhook to last 202)")
    print(f"webhook -> 202 p50  : {statistics.median(latencies) * 1000:8.0f} ms")
    print(f"webhook -> 202 p99  : {latencies[int(len(latencies) * 0.99) - 1] * 1000:8.0f} ms")
    print(f"RQ no-op jobs       : {baseline:8.1f} jobs/s with {args.workers} workers (same Redis, same run)")
    print(f"ratio events/no-ops : {rate / baseline:8.3f}  (an event costs a process and a submit job, "
          f"plus its share of batched polls)")


if __name__ == "__main__":
    main()
