"""Dashboard: the dispatches list and detail stay fast with 100,000 dispatches stored.

Starts its own redis-server, stores `--dispatches` dispatches through the bridge's own state
script (`state.transition`, pipelined in batches: the same keys, indexes and lookup entries a
worker writes; each is created in its final state with a Revor job id), then starts
`revor-bridge web` (gunicorn, as in production), signs in and times, over HTTP, each page
`--rounds` times: the first page, a filtered page (a channel: checked record by record), a
search by email, page 50, and a detail page. The baseline is GET /healthz on the same server in
the same run; each figure is printed as the median in ms and as a ratio to it.

    python -m benchmarks.dashboard [--dispatches 100000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import requests

from benchmarks.common import wait_for
from integration.dispatches import state
from integration.storage import free_port, redis_server_binary

ADMIN_TOKEN = "dashboard-benchmark-admin-token-01"
BATCH = 1000
STATUSES = ("succeeded",) * 7 + ("failed", "rejected", "skipped")


def dispatch_id(number: int) -> str:
    return f"dsp_{number:040x}"


def store(connection: redis.Redis, count: int) -> None:
    """`count` dispatches, in pipelined batches through `state.transition`."""
    connection.script_load(state.TRANSITION)
    now = time.time() - count * 0.01
    for start in range(0, count, BATCH):
        with connection.pipeline(transaction=False) as pipe:
            for number in range(start, min(start + BATCH, count)):
                address = f"lead{number}@example.com"
                source = ("hubspot", "salesforce", "pipedrive", "generic:zapier")[number % 4]
                create = {
                    "rule": f"rule-{number % 5}", "channel": ("email", "whatsapp", "linkedin")[number % 3],
                    "account_id": "connect_account_benchmark", "event_key": f"rb:event:{source}:ev-{number}",
                    "recipient": {"address": address}, "writeback": [], "attempt": 0,
                    "crm": {"source": source, "account": None, "object_type": "deal", "object_id": str(10**9 + number),
                            "event_id": f"ev-{number}"},
                    "body": json.dumps({"account_id": "connect_account_benchmark", "channel": "email",
                                        "recipient": {"address": address},
                                        "content": {"subject": "Welcome", "text": f"Hi lead {number}"}}),
                }
                # A pipeline as the connection: the script is queued, its reply (truthy) not awaited.
                state.transition(pipe, dispatch_id(number), STATUSES[number % len(STATUSES)], create=create,
                                 fields={"revor_job_id": f"job_{number:012d}"}, now=now + number * 0.01)
            pipe.execute()


def timed(session: requests.Session, url: str, rounds: int, expect: str | None = None) -> float:
    """Median milliseconds of `rounds` GETs (after one warm-up), each answered 200."""
    times = []
    for round_number in range(rounds + 1):
        started = time.perf_counter()
        answer = session.get(url, timeout=60)
        took = (time.perf_counter() - started) * 1000
        if answer.status_code != 200 or (expect is not None and expect not in answer.text):
            raise SystemExit(f"{url}: {answer.status_code} {answer.text[:300]}")
        if round_number:
            times.append(took)
    return statistics.median(times)


def sign_in(base: str) -> requests.Session:
    session = requests.Session()
    form = session.get(f"{base}/dashboard/sign-in", timeout=10).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    answer = session.post(f"{base}/dashboard/sign-in", data={"token": ADMIN_TOKEN, "csrf_token": csrf}, timeout=10)
    if answer.status_code != 200:
        raise SystemExit(f"sign-in failed: {answer.status_code}")
    return session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dispatches", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    logging.getLogger("integration").setLevel(logging.ERROR)  # one line per state change otherwise
    folder = Path(tempfile.mkdtemp(prefix="rb-dashboard-"))
    redis_port, web_port = free_port(), free_port()
    binary = shutil.which("redis-server") or redis_server_binary()
    server = subprocess.Popen([binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)
    web = None
    try:
        connection = redis.Redis(port=redis_port)
        for _ in range(100):
            try:
                connection.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        started = time.monotonic()
        store(connection, args.dispatches)
        stored = connection.zcard(state.ALL_INDEX)
        print(f"dispatches stored: {stored:,} in {time.monotonic() - started:.1f} s "
              f"(Redis used_memory {connection.info('memory')['used_memory'] / 1e6:,.0f} MB)")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REVOR_", "REDIS_", "HUBSPOT_", "RULES_"))}
        env.update(REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", ADMIN_TOKEN=ADMIN_TOKEN, PORT=str(web_port),
                   WEB_CONCURRENCY="1", LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1")
        web = subprocess.Popen([sys.executable, "-m", "integration", "web"], env=env, cwd=folder,
                               stdout=subprocess.DEVNULL, stderr=open(folder / "web.log", "w"))
        base = f"http://127.0.0.1:{web_port}"
        wait_for(f"{base}/healthz")
        session = sign_in(base)
        middle = args.dispatches // 2
        pages = [
            ("GET /healthz (baseline)", "/healthz", None),
            ("dispatches, first page", "/dashboard/dispatches", "dispatches, page 1 of"),
            ("dispatches, channel=whatsapp", "/dashboard/dispatches?channel=whatsapp", "Scanned"),
            ("dispatches, search by email", f"/dashboard/dispatches?q=Lead{middle}@Example.com",
             f">{dispatch_id(middle)}<"),
            ("dispatches, page 50", "/dashboard/dispatches?page=50", "page 50 of"),
            ("dispatch detail", f"/dashboard/dispatches/{dispatch_id(middle)}", "Request to Revor"),
        ]
        baseline = None
        for label, path, expect in pages:
            ms = timed(session, base + path, args.rounds, expect)
            baseline = baseline or ms
            print(f"{label}: {ms:.2f} ms, ratio to /healthz: {ms / baseline:.1f}")
    finally:
        if web is not None:
            web.terminate()
            web.wait(timeout=30)
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
