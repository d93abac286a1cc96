"""Ingest rate of POST /webhooks/generic/<name>: the bridge against a bare Flask endpoint.

Both apps run under the server `revor-bridge web` uses (gunicorn with
`integration.web.serving`'s options and worker class, `WEB_THREADS` threads per process, the
read-deadline middleware; see `benchmarks.serve`), with the same workers, in the same run, against
one loopback load generator: the bridge (verify, parse, normalise, dedupe, store in Redis,
enqueue) and a bare endpoint that only answers. Every request is a new event that is really
stored (no duplicate short-cut); the script checks that the bridge stored every one. Prints
requests per second for each, the median over alternating rounds, and the ratio bridge/bare;
the target is at least 0.5. It also prints the peak RSS of each web process of the bridge (master
and workers, from /proc: the target is at most 100 MB each).

The load generator is a Python client (threads, Standard Webhooks signatures), or with `--wrk`
wrk (`apt-get install wrk` on Debian/Ubuntu, `brew install wrk` on macOS) with
`wrk_generic_hook.lua` (a token-authenticated hook, X-Hook-Token, event_id varied per request).
Either way it prints how much CPU the generator used, and with wrk two checks that wrk is not
the bottleneck: its CPU per thread (a thread near one full core is saturated), and the bare app
loaded again with twice the connections (an app that is the bottleneck answers no faster). It
also prints the bare app's rate under the Python client (one core, it holds the GIL), which is
why wrk is the one to quote. `--stock-gthread` also serves the bare app under gunicorn's stock
gthread worker, to compare the custom worker with it.

    python -m benchmarks.ingest_generic [--requests 2000] [--rounds 3] [--workers 2] [--clients 8]
    python -m benchmarks.ingest_generic --wrk [--wrk-threads 2] [--wrk-connections 16] [--duration 10]
    ... [--stock-gthread]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis
import requests
from standardwebhooks import Webhook

from benchmarks.common import wait_for
from integration.storage import free_port, redis_server_binary

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_" + "YmVuY2htYXJrLXNlY3JldC1iZW5jaG1hcmstc2VjcmV0"  # base64 of 32 bytes
TOKEN = "benchmark-hook-token-0123456789"
WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_generic_hook.lua"
SIGNED_PATH, TOKEN_PATH = "/webhooks/generic/bench", "/webhooks/generic/benchtoken"
WARM_UP = 100


def serve(app: str, port: int, workers: int, env: dict[str, str], stock_gthread: bool = False) -> subprocess.Popen:
    """`app` under revor-bridge's gunicorn setup (or gunicorn's stock gthread worker), in a child process."""
    command = [sys.executable, "-m", "benchmarks.serve", app, "--port", str(port), "--workers", str(workers)]
    return subprocess.Popen(command + (["--stock-gthread"] if stock_gthread else []), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def signed_requests(count: int, offset: int) -> list[tuple[bytes, dict[str, str]]]:
    webhook = Webhook(SECRET)
    now = datetime.now(UTC)
    prepared = []
    for number in range(offset, offset + count):
        body = json.dumps({"type": "deal.stage_changed", "timestamp": now.isoformat(),
                           "data": {"deal": {"id": str(100000 + number), "name": f"Deal {number}",
                                             "stage": "closedwon", "amount": "12500"},
                                    "contact": {"id": str(number), "email": f"lead{number}@example.com",
                                                "first_name": "Lead"}}})
        msg_id = f"msg_bench_{number}"
        headers = {"Content-Type": "application/json", "webhook-id": msg_id,
                   "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": webhook.sign(msg_id, now, body)}
        prepared.append((body.encode(), headers))
    return prepared


@dataclass
class Run:
    """One load run against one server: its rate and what the load generator itself used."""

    rate: float  # requests per second
    cpu: float  # CPU seconds of the load generator per second of the run (1.0: one core busy)
    answered: int = 0  # 2xx answers (wrk)
    generated: int = 0  # requests started (wrk): answered plus those in flight when it stopped
    errors: int = 0  # socket errors (wrk, with strict=False)


def load(url: str, prepared: list[tuple[bytes, dict[str, str]]], clients: int) -> Run:
    """Send every prepared request from `clients` threads of this process."""
    chunks = [prepared[i::clients] for i in range(clients)]
    failures: list[str] = []

    def run(chunk: list[tuple[bytes, dict[str, str]]]) -> None:
        with requests.Session() as session:
            for body, headers in chunk:
                answer = session.post(url, data=body, headers=headers, timeout=30)
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code} {answer.text[:200]}")

    threads = [threading.Thread(target=run, args=(chunk,)) for chunk in chunks]
    cpu_before, started = time.process_time(), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return Run(len(prepared) / elapsed, cpu / elapsed, len(prepared), len(prepared))


_SUMMARY = re.compile(r"wrk-summary requests=(\d+) non2xx=(\d+) connect=(\d+) read=(\d+) write=(\d+) "
                      r"timeout=(\d+) generated=(\d+)")


def wrk(url: str, run_id: str, threads: int, connections: int, seconds: float, strict: bool = True) -> Run:
    """One wrk run of `seconds` posting new token-authenticated events (wrk_generic_hook.lua).

    Any answer not 2xx stops the benchmark; so does any socket error when `strict` (the measured
    runs), else they are counted (the check with more connections than threads)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
               "-s", str(WRK_SCRIPT), url, "--", TOKEN, run_id, datetime.now(UTC).isoformat()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    summary = _SUMMARY.search(result.stdout)
    if result.returncode != 0 or not rate or not summary:
        raise SystemExit(f"wrk failed ({result.returncode}): {result.stdout[-1000:]} {result.stderr[-1000:]}")
    completed, non2xx, *socket_errors, generated = (int(n) for n in summary.groups())
    if non2xx or (strict and any(socket_errors)):
        raise SystemExit(f"wrk: {non2xx} answers not 2xx, socket errors (connect, read, write, timeout) "
                         f"{socket_errors}, against {url}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    duration = re.search(r"requests in ([\d.]+)(ms|s|m)", result.stdout)
    elapsed = seconds
    if duration:
        elapsed = float(duration.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[duration.group(2)]
    return Run(float(rate.group(1)), cpu / elapsed, completed, generated, sum(socket_errors))


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc): gunicorn's master and its workers."""
    pids, index = [pid], 0
    while index < len(pids):
        try:
            children = Path(f"/proc/{pids[index]}/task/{pids[index]}/children").read_text().split()
        except OSError:
            children = []
        pids += [int(child) for child in children]
        index += 1
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU the processes used so far (Linux /proc; 0 elsewhere)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set size so far (VmHWM), in MB; None where /proc has none."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) / 1024 if found else None


def count_keys(connection: redis.Redis, pattern: str) -> int:
    return sum(1 for _ in connection.scan_iter(match=pattern, count=1000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per round (Python client)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers for every server")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads (Python client)")
    parser.add_argument("--wrk", action="store_true", help="load with wrk when it is on PATH")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--wrk-connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--stock-gthread", action="store_true",
                        help="also serve the bare app under gunicorn's stock gthread worker, and compare")
    args = parser.parse_args()
    use_wrk = args.wrk and shutil.which("wrk") is not None
    if args.wrk and not use_wrk:
        print("wrk is not on PATH: loading with the Python client")

    folder = Path(tempfile.mkdtemp(prefix="rb-bench-"))
    redis_port, bridge_port, bare_port, stock_port = free_port(), free_port(), free_port(), free_port()
    binary = shutil.which("redis-server") or redis_server_binary()
    redis_proc = subprocess.Popen([binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(folder),
                                   "--save", "", "--appendonly", "yes", "--appendfsync", "everysec"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REVOR_", "GENERIC_WEBHOOK_", "INBOUND_", "WEB_CONCURRENCY"))}
    # The stored-bytes ceiling is still computed on every request; set high so that a long wrk run
    # never reaches it (its default, 256 MiB, holds ~50,000 such events).
    env.update(REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", GENERIC_WEBHOOK_SECRET_BENCH=SECRET,
               GENERIC_WEBHOOK_SECRET_BENCHTOKEN=TOKEN, INBOUND_MAX_STORED_BYTES=str(2**40))
    urls = {"bridge": f"http://127.0.0.1:{bridge_port}", "bare": f"http://127.0.0.1:{bare_port}"}
    servers = [serve("integration.web:create_app()", bridge_port, args.workers, env),
               serve("benchmarks.bare_app:create_app()", bare_port, args.workers, env)]
    if args.stock_gthread:
        urls["stock"] = f"http://127.0.0.1:{stock_port}"
        servers.append(serve("benchmarks.bare_app:create_app()", stock_port, args.workers, env, stock_gthread=True))
    runs: dict[str, list[Run]] = {name: [] for name in urls}
    wrk_counts: list[tuple[int, int, int]] = []  # per bridge wrk run: stored, answered, generated
    python_bare: Run | None = None
    wider_bare: Run | None = None  # the bare app with twice the wrk connections
    bridge_rss: dict[int, float] = {}
    # Per app: CPU milliseconds of its web processes per answered request, and of Redis (bridge).
    web_cpu: dict[str, list[float]] = {name: [] for name in urls}
    redis_cpu: list[float] = []
    connection = redis.Redis(port=redis_port)
    try:
        wait_for(f"{urls['bridge']}/healthz")
        for name in urls:
            wait_for(f"{urls[name]}{SIGNED_PATH}")
            load(f"{urls[name]}{SIGNED_PATH}", signed_requests(WARM_UP, 10**7), args.clients)
        for round_number in range(args.rounds):
            prepared = signed_requests(args.requests, round_number * args.requests)
            for name in ("bare", "stock", "bridge"):
                if name not in urls:
                    continue
                tree = process_tree(servers[list(urls).index(name)].pid)
                web_before, redis_before = cpu_seconds(tree), cpu_seconds([redis_proc.pid])
                if use_wrk:
                    run_id = f"wrk{round_number}{name}"
                    run = wrk(f"{urls[name]}{TOKEN_PATH}", run_id, args.wrk_threads, args.wrk_connections,
                              args.duration)
                    if name == "bridge":
                        stored = count_keys(connection, f"rb:event:generic:benchtoken:{run_id}-*")
                        wrk_counts.append((stored, run.answered, run.generated))
                else:
                    run = load(f"{urls[name]}{SIGNED_PATH}", prepared, args.clients)
                runs[name].append(run)
                if run.answered:
                    web_cpu[name].append((cpu_seconds(tree) - web_before) * 1000 / run.answered)
                    if name == "bridge":
                        redis_cpu.append((cpu_seconds([redis_proc.pid]) - redis_before) * 1000 / run.answered)
        # Peak RSS so far, read before anything is stopped: the bridge's processes after its load.
        for pid in process_tree(servers[0].pid):
            if (rss := peak_rss_mb(pid)) is not None:
                bridge_rss[pid] = rss
        if use_wrk:  # is the generator the bottleneck? More connections, and the Python client
            wider_bare = wrk(f"{urls['bare']}{TOKEN_PATH}", "wrkwide", args.wrk_threads, 2 * args.wrk_connections,
                             args.duration, strict=False)
            python_bare = load(f"{urls['bare']}{SIGNED_PATH}", signed_requests(args.requests, 10**8), args.clients)
        stored_signed = count_keys(connection, "rb:event:generic:bench:*")
    finally:
        connection.close()
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=30)
        redis_proc.terminate()
        redis_proc.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)

    rate = {name: statistics.median(run.rate for run in runs[name]) for name in runs}
    cpu = {name: statistics.median(run.cpu for run in runs[name]) for name in runs}
    serving = f"gunicorn workers: {args.workers} of revor-bridge web's worker class"
    if use_wrk:
        print(f"load generator: wrk -t{args.wrk_threads} -c{args.wrk_connections} -d{args.duration:g}s, "
              f"rounds: {args.rounds}, {serving}")
        stored, answered, generated = (sum(column) for column in zip(*wrk_counts, strict=True))
        print(f"events stored by the bridge: {stored} of {generated} sent ({answered} answered 200 before "
              f"wrk stopped; the rest were in flight)")
        if not answered <= stored <= generated:
            raise SystemExit("the bridge did not store every event it answered 200 for")
    else:
        print(f"requests per round: {args.requests}, rounds: {args.rounds}, {serving}, "
              f"client threads: {args.clients}")
        expected = args.requests * args.rounds + WARM_UP
        print(f"events stored by the bridge: {stored_signed} of {expected} sent")
    print(f"bare Flask endpoint : {rate['bare']:8.1f} requests/s (median)")
    print(f"bridge ingest       : {rate['bridge']:8.1f} requests/s (median)")
    generator = "wrk" if use_wrk else "Python client"
    print(f"load generator CPU  : {cpu['bare']:8.2f} cores on the bare app, {cpu['bridge']:.2f} on the bridge "
          f"({generator}; a generator near {args.wrk_threads if use_wrk else 1} core(s) is the bottleneck)")
    if wider_bare:
        per_thread = max(cpu["bare"], cpu["bridge"], wider_bare.cpu) / args.wrk_threads
        change = wider_bare.rate / rate["bare"] - 1
        print(f"bare app, wrk -c{2 * args.wrk_connections}: {wider_bare.rate:8.1f} requests/s ({change:+.0%} with "
              f"twice the connections; wrk at {wider_bare.cpu:.2f} cores; {wider_bare.errors} socket errors)")
        print(f"wrk the bottleneck? {'POSSIBLY' if per_thread >= 0.5 else 'no'}: at most {per_thread:.2f} core per wrk "
              f"thread (a saturated thread is near 1.0)"
              + ("; but the bare app answered more with more connections: compare with a higher --wrk-connections"
                 if change > 0.15 else "; the bare app answers no faster with more connections (it is saturated)"))
    if python_bare:
        print(f"bare app, Python client: {python_bare.rate:8.1f} requests/s ({python_bare.cpu:.2f} cores) "
              f"vs {rate['bare']:.1f} with wrk: wrk/Python {rate['bare'] / python_bare.rate:.2f}")
    if bridge_rss:
        master = bridge_rss.get(servers[0].pid)
        workers = sorted(rss for pid, rss in bridge_rss.items() if pid != servers[0].pid)
        print(f"bridge web peak RSS : master {master or 0:.0f} MB, workers "
              f"{', '.join(f'{rss:.0f}' for rss in workers)} MB (target <= 100 MB per process)")
    if "stock" in rate:
        print(f"bare app, stock gthread worker: {rate['stock']:8.1f} requests/s (median) vs {rate['bare']:.1f} "
              f"under revor-bridge's worker: custom/stock {rate['bare'] / rate['stock']:.2f}")
    print("rounds (requests/s) : " + "; ".join(f"{name} " + ", ".join(f"{run.rate:.0f}" for run in runs[name])
                                            for name in runs))
    if web_cpu["bare"] and web_cpu["bridge"]:
        # CPU per request barely moves when other processes share the machine; requests/s do.
        bare_ms, bridge_ms = statistics.median(web_cpu["bare"]), statistics.median(web_cpu["bridge"])
        redis_ms = statistics.median(redis_cpu) if redis_cpu else 0.0
        print(f"CPU per request     : bare {bare_ms:.2f} ms, bridge {bridge_ms:.2f} ms in its web processes + "
              f"{redis_ms:.2f} ms in Redis: bare/bridge {bare_ms / (bridge_ms + redis_ms):.2f} (what the ratio "
              f"would be on a machine of its own, CPU-bound)")
    print(f"ratio bridge/bare   : {rate['bridge'] / rate['bare']:8.2f}  (target >= 0.5)")


if __name__ == "__main__":
    main()
