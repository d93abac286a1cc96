"""CRM write-back: HubSpot property writes for a backlog of status messages, batched against one at a time.

Starts its own redis-server and a HubSpot deal-update stand-in (benchmarks/standins.py, its own
gunicorn process, each answer after `--latency-ms`, HubSpot's round trip), makes `--messages`
dispatches on as many deals, each with one status message due for a `kind: hubspot` destination,
and has the engine's delivery handler (the one workers run) write them all, under the shared
per-portal limiter at `--max-rps` (HUBSPOT_MAX_RPS, default 8 as in production). Twice in the same
run: once as the bridge does it (due outboxes of one destination go together in HubSpot's batch
update, up to 100) and once with batching turned off (the writer's batch size set to 1), the
baseline. Prints requests made, messages per request and messages per second for both, and the
ratio.

    python -m benchmarks.crm_writeback [--messages 400] [--max-rps 8] [--latency-ms 50] [--threads 8]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import requests
from rq import Queue

from benchmarks.common import wait_for
from integration.context import JobContext
from integration.dispatches import state
from integration.rules.loader import load_rules
from integration.scheduler import units
from integration.scheduler.runner import Engine
from integration.settings import Settings
from integration.storage import free_port, redis_server_binary
from integration.writeback.crm.hubspot import HubSpotWriter
from integration.writeback.deliver import deliver

TOKEN = "pat-na1-benchmark-token"
RULES = """\
version: 1
rules:
  - name: r
    when: {source: hubspot}
    dispatch:
      account: connect_account_benchmark
      channel: email
      recipient: {address: "{{ contact.email }}"}
      content: {subject: "s", text: "t"}
    writeback: [hs]
destinations:
  hs:
    kind: hubspot
    on: [accepted]
    properties:
      revor_status: "{{ data.status }}"
      revor_last_job_id: "{{ data.revor_job_id }}"
"""


def make_messages(ctx: JobContext, count: int, prefix: str) -> None:
    """`count` dispatches, each on its own deal, moved to `accepted`: one due status message each."""
    wanted = ctx.destinations()
    for number in range(count):
        dispatch_id = f"dsp_{prefix}{number:06d}"
        crm = {"source": "hubspot", "account": "24681357", "object_type": "deal",
               "object_id": str(10_000_000 + number), "event_id": f"evt_{prefix}{number}"}
        state.transition(ctx.redis, dispatch_id, "pending", create={
            "rule": "r", "channel": "email", "crm": crm, "writeback": ["hs"],
            "recipient": {"address": f"lead{number}@example.com"}, "attempt": 0}, destinations=wanted)
        state.transition(ctx.redis, dispatch_id, "accepted", fields={"revor_job_id": f"job_{number}"},
                         destinations=wanted)


def write_all(ctx: JobContext, threads: int, timeout: float) -> float:
    """Seconds the engine takes to deliver every due message."""
    engine = Engine(ctx.redis, {units.DELIVER: lambda run: deliver(ctx, run)}, hold_seconds=30, threads=threads,
                    budget=timeout)
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    try:
        while ctx.redis.keys("rb:outbox:*") and time.monotonic() < deadline:
            engine.drain()
            time.sleep(0.05)
    finally:
        engine.close()
    if ctx.redis.keys("rb:outbox:*"):
        raise SystemExit(f"not every message was written within {timeout:.0f} s")
    return time.perf_counter() - started


def run(ctx: JobContext, stand_in: str, args: argparse.Namespace, batched: bool) -> dict[str, float]:
    ctx.redis.flushdb()
    requests.post(f"{stand_in}/stats", timeout=5)
    HubSpotWriter.batch_size = 100 if batched else 1
    ctx._local.__dict__.clear()  # writers are built afresh for the mode
    make_messages(ctx, args.messages, "b" if batched else "s")
    seconds = write_all(ctx, args.threads, args.timeout)
    stats = requests.get(f"{stand_in}/stats", timeout=5).json()
    if stats["writes"] < args.messages:
        raise SystemExit(f"only {stats['writes']} of {args.messages} messages reached the stand-in")
    return {"seconds": seconds, "requests": stats["requests"], "per_request": args.messages / stats["requests"],
            "per_second": args.messages / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--max-rps", type=float, default=8.0, help="HUBSPOT_MAX_RPS (the shared limiter)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="each stand-in answer waits this long")
    parser.add_argument("--threads", type=int, default=8, help="engine threads (WORKER_THREADS)")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    redis_port, api_port = free_port(), free_port()
    binary = shutil.which("redis-server") or redis_server_binary()
    processes = [subprocess.Popen([binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no"], stdout=subprocess.DEVNULL),
                 subprocess.Popen([sys.executable, "-m", "benchmarks.serve",
                                   f"benchmarks.standins:hubspot_write_app({args.latency_ms})",
                                   "--port", str(api_port), "--workers", "1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    stand_in = f"http://127.0.0.1:{api_port}"
    try:
        wait_for(f"{stand_in}/stats")
        connection = redis.Redis(port=redis_port)
        with tempfile.TemporaryDirectory() as folder:
            rules_file = Path(folder) / "rules.yaml"
            rules_file.write_text(RULES)
            settings = Settings.from_env({"REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                                          "HUBSPOT_ACCESS_TOKEN": TOKEN, "HUBSPOT_API_BASE_URL": stand_in,
                                          "HUBSPOT_MAX_RPS": str(args.max_rps), "WORKER_THREADS": str(args.threads)})
            ctx = JobContext(settings, connection, Queue("default", connection=connection, serializer="json"),
                             load_rules(rules_file))
            single = run(ctx, stand_in, args, batched=False)
            batched = run(ctx, stand_in, args, batched=True)
        print(f"{args.messages} HubSpot status writes, limiter {args.max_rps:g} requests/s, "
              f"{args.latency_ms:g} ms per answer, {args.threads} threads")
        for name, figures in (("one at a time (baseline)", single), ("batched", batched)):
            print(f"  {name:<25} {figures['requests']:>6.0f} requests  {figures['per_request']:6.1f} messages/request"
                  f"  {figures['seconds']:7.2f} s  {figures['per_second']:8.1f} messages/s")
        print(f"  batched / baseline: {batched['per_second'] / single['per_second']:.1f}x messages/s, "
              f"{single['requests'] / batched['requests']:.1f}x fewer requests")
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)


if __name__ == "__main__":
    main()
