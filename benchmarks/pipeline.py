"""Webhook -> Revor 202 through the real processes: throughput, steady-state latency, a burst, memory.

Starts a redis-server, the Revor sandbox (`revor-bridge sandbox`, rate limit off), the web process
(`revor-bridge web`: gunicorn, WEB_CONCURRENCY processes) and `--workers` `revor-bridge worker`
processes, and samples the resident memory (VmRSS) of the web's and the workers' process trees
every 0.2 s. What happened is read back from Redis afterwards: each dispatch's timeline (its
`accepted` entry is the moment the bridge had Revor's 202), each event record's `attempts` (runs
of its processing), each dispatch's `submit_attempts`, `rb:stats:recovered` (claims that ran
out), and the sandbox's task list. Three modes:

- default (throughput): `--events` generic-hook events (one JSON event per request, X-Hook-Token)
  from `--senders` load-generator processes, as fast as they go, while the workers run. Prints
  events/s from the first webhook to the last 202, next to the baseline measured first in the
  same run: one process POSTing valid dispatches to the same sandbox with a bare
  `requests.Session` (the ceiling of this machine), and the ratio (target >= 0.5, >= 400/s).
- `--steady`: `--rate` events/s (50) for `--duration` seconds (60) from one generator, with a
  write-back destination (a local receiver noting arrival times) for every state: webhook -> 202
  p50/p99 (targets 50 ms / 250 ms) and state change -> receiver 2xx p50 (target 50 ms), against
  the bare POST's own p50 in the same run.
- `--burst`: `--batches` signed (v3) HubSpot webhook batches of 100 deal events, hydrated from a
  HubSpot API stand-in (two calls per event), all posted at once: every event processed once
  (its record's `attempts` == 1), no claim recovered, one submit per dispatch, one sandbox task
  per dispatch, and the time to drain, against the bare POST rate (the time the sandbox alone
  would take for as many dispatches).

    python -m benchmarks.pipeline [--events 4000] [--workers 2] [--senders 2]
    python -m benchmarks.pipeline --steady [--rate 50] [--duration 60]
    python -m benchmarks.pipeline --burst [--batches 100]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
import requests
from rq import Worker

from benchmarks.common import wait_for
from integration.dispatches import state
from integration.inbound import hubspot, records
from integration.scheduler import units
from integration.settings import SANDBOX_API_KEY
from integration.storage import free_port, redis_server_binary

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0123456789"
HUBSPOT_SECRET = "benchmark-hubspot-client-secret-0123"
HUBSPOT_URL = "https://bridge.example.com/webhooks/hubspot"  # what HubSpot signs: the public address
HUBSPOT_TOKEN = "pat-na1-benchmark-token"
SALESFORCE_ORG = "00D5e000000Fxq2EAC"
SALESFORCE_TOKEN = "bench-salesforce-token-0123456789"
WRITEBACK_SECRET = "whsec_YmVuY2htYXJrLXdyaXRlYmFjay1zZWNyZXQtMDE="
MB = 1024 * 1024

GENERIC_RULE = """\
  - name: bench
    when: {source: generic:bench, type: deal.stage_changed}
    dispatch:
      account: wa
      channel: whatsapp
      recipient: {phone: "{{ contact.phone }}"}
      content: {text: "Hi {{ contact.first_name }}"}
      interval_seconds: 60
"""
SALESFORCE_RULE = """\
  - name: bench-salesforce
    when: {source: salesforce, type: deal.stage_changed, match: {deal.StageName: Closed Won}}
    dispatch:
      account: mail
      channel: email
      recipient: {address: "owner+{{ deal.Id | lower }}@example.com"}
      content: {subject: "Won: {{ deal.Name }}", text: "Congratulations on {{ deal.Name }}"}
      interval_seconds: 60
"""
HUBSPOT_RULE = """\
  - name: bench-hubspot
    when: {source: hubspot, type: deal.stage_changed, match: {deal.dealstage: closedwon}}
    dispatch:
      account: mail
      channel: email
      recipient: {address: "{{ contact.email }}", name: "{{ contact.firstname }}"}
      content: {subject: "Welcome {{ deal.dealname }}", text: "Hi {{ contact.firstname }}"}
      interval_seconds: 60
"""


def rules_text(receiver_url: str | None, extra_rules: str = "") -> str:
    text = ("version: 1\naccounts: {wa: connect_account_sandbox_whatsapp, mail: connect_account_sandbox_email}\n"
            "rules:\n" + GENERIC_RULE + HUBSPOT_RULE + SALESFORCE_RULE + extra_rules)
    if receiver_url:
        text = text.replace("      interval_seconds: 60\n", "      interval_seconds: 60\n    writeback: [crm]\n")
        text += f"destinations:\n  crm:\n    url: \"{receiver_url}\"\n    secret: \"{WRITEBACK_SECRET}\"\n"
    return text


# ---- load generators (each in its own process) ----------------------------------------------------------


def generic_body(number: int) -> bytes:
    return json.dumps({"event": "deal.stage_changed", "event_id": f"bench-{number}", "deal__id": str(number),
                       "contact__first_name": "Lead", "contact__phone": f"+1415{number:07d}"}).encode()


def send_generic(url: str, numbers: list[int], start_at: float, rate: float, out: Any) -> None:
    """POST one event per request; `rate` > 0 paces them (event i at start_at + i / rate)."""
    headers = {"Content-Type": "application/json", "X-Hook-Token": TOKEN}
    sent: list[tuple[str, float]] = []
    refused = 0
    with requests.Session() as session:
        time.sleep(max(0.0, start_at - time.time()))
        for index, number in enumerate(numbers):
            if rate:
                time.sleep(max(0.0, start_at + index / rate - time.time()))
            moment = time.time()
            answer = session.post(url, data=generic_body(number), headers=headers, timeout=30)
            refused += answer.status_code != 200
            sent.append((f"bench-{number}", moment))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.put((sent, usage.ru_utime + usage.ru_stime, refused))


def salesforce_message(first: int, count: int) -> tuple[bytes, list[str]]:
    """One Outbound Message with `count` won opportunities (each its own record and event), and
    the event ids the bridge gives them (the notification ids)."""
    ids = [f"04l{n:015d}" for n in range(first, first + count)]
    notes = "".join(f"""<Notification><Id>{ids[n - first]}</Id>\
<sObject xsi:type="sf:Opportunity" xmlns:sf="urn:sobject.enterprise.soap.sforce.com"><sf:Id>006{n:015d}</sf:Id>\
<sf:LastModifiedDate>2026-01-01T11:59:55.000Z</sf:LastModifiedDate><sf:Name>Deal {n}</sf:Name>\
<sf:StageName>Closed Won</sf:StageName></sObject></Notification>""" for n in range(first, first + count))
    body = f"""<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope \
xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\
<soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>{SALESFORCE_ORG}\
</OrganizationId><ActionId>04k5e000000Kq7PAAS</ActionId><SessionId xsi:nil="true"/>{notes}</notifications>\
</soapenv:Body></soapenv:Envelope>"""
    return body.encode(), ids


def send_salesforce(url: str, firsts: list[int], size: int, events: int, out: Any) -> None:
    """Outbound Messages of `size` notifications, back to back (one load-generator process)."""
    headers = {"Content-Type": "text/xml; charset=utf-8"}
    sent: list[tuple[str, float]] = []
    refused = 0
    with requests.Session() as session:
        for first in firsts:
            body, ids = salesforce_message(first, min(size, events - first))
            moment = time.time()
            refused += session.post(url, data=body, headers=headers, timeout=60).status_code != 200
            sent += [(event_id, moment) for event_id in ids]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.put((sent, usage.ru_utime + usage.ru_stime, refused))


def hubspot_batch(first: int, count: int) -> list[dict[str, Any]]:
    now_ms = int(time.time() * 1000)
    return [{"eventId": first + n, "subscriptionId": 2718290, "portalId": 24681357, "appId": 3141592,
             "occurredAt": now_ms, "subscriptionType": "deal.propertyChange", "attemptNumber": 0,
             "objectId": 5_000_000 + first + n, "propertyName": "dealstage", "propertyValue": "closedwon",
             "changeSource": "CRM_UI"} for n in range(count)]


def send_hubspot(url: str, batches: int, size: int) -> tuple[float, float, int]:
    """All batches signed (v3) first, then posted back to back; (first POST time, seconds, refused)."""
    prepared = []
    for number in range(batches):
        body = json.dumps(hubspot_batch(number * size, size)).encode()
        timestamp = str(int(time.time() * 1000))
        prepared.append((body, {"Content-Type": "application/json", "X-HubSpot-Request-Timestamp": timestamp,
                                "X-HubSpot-Signature-v3": hubspot.v3_signature(HUBSPOT_SECRET, "POST", HUBSPOT_URL,
                                                                               body, timestamp)}))
    refused = 0
    with requests.Session() as session:
        first = time.time()
        started = time.perf_counter()
        for body, headers in prepared:
            refused += session.post(url, data=body, headers=headers, timeout=60).status_code != 200
        return first, time.perf_counter() - started, refused


# ---- the baseline: one process, bare requests.Session, valid dispatches, the same sandbox ----------------


def bare_posts(api_url: str, count: int, offset: int = 0) -> tuple[float, list[float]]:
    """Dispatches/s and each POST's latency (s), one after the other on one keep-alive session."""
    headers = {"Authorization": f"Bearer {SANDBOX_API_KEY}", "Content-Type": "application/json"}
    latencies = []
    with requests.Session() as session:
        started = time.perf_counter()
        for number in range(offset, offset + count):
            body = json.dumps({"account_id": "connect_account_sandbox_email", "channel": "email", "action": "outreach",
                               "recipient": {"address": f"bare{number}@example.com", "name": "Lead"},
                               "content": {"subject": "Hello", "text": "Hi there"},
                               "metadata": {"bench": "bare"}, "min_channel_task_interval_seconds": 60}).encode()
            moment = time.perf_counter()
            answer = session.post(api_url + "/outreach/dispatches", data=body,
                                  headers={**headers, "Idempotency-Key": f"bare-{number}"}, timeout=30)
            latencies.append(time.perf_counter() - moment)
            if answer.status_code != 202:
                raise SystemExit(f"baseline: the sandbox answered {answer.status_code}: {answer.text[:200]}")
        return count / (time.perf_counter() - started), latencies


# ---- memory -----------------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found += [int(c) for c in text.split()]
    except OSError:
        pass
    return found


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """Peak VmRSS of every process in the trees under the named roots, sampled every 0.2 s, and
    the CPU time each tree used since `mark()` (where the time goes)."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="rss")
        self.roots: dict[str, int] = {}
        self.peaks: dict[tuple[str, int], float] = {}
        self.cpu_seen: dict[tuple[str, int], float] = {}
        self.cpu_marked: dict[tuple[str, int], float] = {}
        self.done = threading.Event()

    def mark(self) -> None:
        """CPU is counted from here on (start-up and the baseline are not the pipeline's)."""
        self.sample()
        self.cpu_marked = dict(self.cpu_seen)

    def cpu(self) -> dict[str, float]:
        """CPU seconds per root since `mark()`, children included."""
        self.sample()
        used: dict[str, float] = {}
        for (label, pid), seconds in self.cpu_seen.items():
            root = label.removesuffix(" child")
            used[root] = used.get(root, 0.0) + seconds - self.cpu_marked.get((label, pid), 0.0)
        return used

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.sample()

    def sample(self) -> None:
        for label, root in list(self.roots.items()):
            stack, depth = [(root, 0)], {}
            while stack:
                pid, level = stack.pop()
                depth[pid] = level
                stack += [(child, level + 1) for child in _children(pid)]
            for pid, level in depth.items():
                rss, cpu = _rss_mb(pid), _cpu_seconds(pid)
                key = (f"{label}" if level == 0 else f"{label} child", pid)
                if rss is not None:
                    self.peaks[key] = max(self.peaks.get(key, 0.0), rss)
                if cpu is not None:
                    self.cpu_seen[key] = cpu

    def report(self) -> list[str]:
        grouped: dict[str, list[float]] = {}
        for (label, _), peak in sorted(self.peaks.items()):
            if not label.startswith(("web", "worker")):
                continue
            grouped.setdefault(label, []).append(peak)
        return [f"{label:<17}: " + ", ".join(f"{p:.1f}" for p in peaks) + " MB" for label, peaks in grouped.items()]

    def peak(self, prefix: str) -> float:
        return max((p for (label, _), p in self.peaks.items() if label.startswith(prefix)), default=0.0)


# ---- the processes ----------------------------------------------------------------------------------------


class RoundTrips(threading.Thread):
    """Redis' MONITOR during the measured phase: the commands clients sent (round trips or
    pipelined), apart from those scripts ran inside Redis. Slows Redis: a diagnostic run only."""

    def __init__(self, connection: redis.Redis) -> None:
        super().__init__(daemon=True, name="monitor")
        self.connection, self.sent, self.in_scripts = connection, Counter(), 0
        self.done = threading.Event()

    def start(self) -> RoundTrips:
        super().start()
        time.sleep(0.5)
        return self

    def run(self) -> None:
        with self.connection.monitor() as monitor:
            for command in monitor.listen():
                if self.done.is_set():
                    return
                if command.get("client_type") == "lua":
                    self.in_scripts += 1
                else:
                    self.sent[command["command"].split(" ", 1)[0].upper()] += 1

    def report(self, events: int) -> str:
        self.done.set()
        self.connection.ping()  # one more line for the monitor to notice the stop
        total = sum(self.sent.values())
        top = ", ".join(f"{name} {count / events:.1f}" for name, count in self.sent.most_common(10))
        return (f"commands sent per event   : {total / events:.1f} ({top}); run inside scripts: "
                f"{self.in_scripts / events:.1f}")


@dataclass
class Stack:
    folder: Path
    env: dict[str, str]
    redis: redis.Redis
    web_url: str
    sandbox_url: str
    receiver_url: str | None
    rss: RssSampler
    procs: list[subprocess.Popen] = field(default_factory=list)
    workers: list[subprocess.Popen] = field(default_factory=list)
    load_at_mark: float = 0.0  # the machine's 1-minute load average when the measured phase began

    def mark(self) -> None:
        """The measured phase starts: CPU times and Redis' command counts from here."""
        self.rss.mark()
        self.redis.config_resetstat()
        self.load_at_mark = os.getloadavg()[0]

    def costs(self, events: int) -> list[str]:
        """Redis commands and RQ jobs per event since `mark()` (round trips: what a loaded machine
        makes slow), read while the workers still run (their job counts go when they stop)."""
        stats = self.redis.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
        calls.pop("config", None)
        jobs = sum(w.successful_job_count + w.failed_job_count for w in Worker.all(connection=self.redis))
        top = ", ".join(f"{name} {count / events:.1f}" for name, count in
                        sorted(calls.items(), key=lambda i: -i[1])[:8])
        return [f"Redis commands per event  : {sum(calls.values()) / events:.1f} ({top})",
                f"RQ jobs run               : {jobs} ({jobs / events:.2f} per event)"]

    def watch_round_trips(self, enabled: bool) -> RoundTrips | None:
        return RoundTrips(self.redis).start() if enabled else None

    def profile(self, output: str | None) -> subprocess.Popen | None:
        """`py-spy record` of worker 1 (collapsed stacks into `output`) until the returned process
        gets SIGINT: where a worker's time goes during the measured phase."""
        if not output:
            return None
        binary = shutil.which("py-spy") or "py-spy"
        return subprocess.Popen([binary, "record", "-p", str(self.workers[0].pid), "-o", output, "-f", "raw",
                                 "-r", "250", "--gil"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start_workers(self, count: int) -> None:
        for number in range(count):
            proc = subprocess.Popen([sys.executable, "-m", "integration", "worker"], cwd=self.folder, env=self.env,
                                    stdout=subprocess.DEVNULL,
                                    stderr=open(self.folder / f"worker{number}.log", "w"),  # noqa: SIM115
                                    start_new_session=True)
            self.workers.append(proc)
            self.rss.roots[f"worker {number + 1}"] = proc.pid
        deadline = time.monotonic() + 60
        while len(self.redis.smembers("rq:workers")) < count and time.monotonic() < deadline:
            time.sleep(0.1)


def stop_profile(spy: subprocess.Popen | None) -> None:
    if spy is not None:
        spy.send_signal(2)
        spy.wait(timeout=60)


def _serve(app: str, port: int, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchmarks.serve", app, "--port", str(port), "--workers", "1"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextmanager
def stack(time_scale: float, receiver: bool, hubspot_api: bool, logs: str | None = None, extra_rules: str = "",
          extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """The processes (see the module docstring); `extra_rules` (YAML list items) and `extra_env`
    are for other benchmarks that reuse it (benchmarks/imports.py)."""
    folder = Path(tempfile.mkdtemp(prefix="rb-pipeline-"))
    ports = {name: free_port() for name in ("redis", "sandbox", "web", "hubspot", "receiver")}
    binary = shutil.which("redis-server") or redis_server_binary()
    procs = [subprocess.Popen([binary, "--port", str(ports["redis"]), "--bind", "127.0.0.1", "--dir", str(folder),
                               "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)]
    receiver_url = f"http://127.0.0.1:{ports['receiver']}/status" if receiver else None
    (folder / "rules.yaml").write_text(rules_text(receiver_url, extra_rules))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVOR_", "GENERIC_WEBHOOK_", "HUBSPOT_"))}
    env.update(REDIS_URL=f"redis://127.0.0.1:{ports['redis']}/0", RULES_FILE=str(folder / "rules.yaml"),
               GENERIC_WEBHOOK_SECRET_BENCH=TOKEN, REVOR_BASE_URL=f"http://127.0.0.1:{ports['sandbox']}/api/v1",
               REVOR_MAX_RPS="1000", LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT), PORT=str(ports["web"]),
               HUBSPOT_CLIENT_SECRET=HUBSPOT_SECRET, HUBSPOT_WEBHOOK_URL=HUBSPOT_URL,
               HUBSPOT_ACCESS_TOKEN=HUBSPOT_TOKEN, HUBSPOT_API_BASE_URL=f"http://127.0.0.1:{ports['hubspot']}",
               HUBSPOT_MAX_RPS="1000", SALESFORCE_ORG_IDS=SALESFORCE_ORG, SALESFORCE_WEBHOOK_TOKEN=SALESFORCE_TOKEN)
    env.update(extra_env or {})
    rss = RssSampler()
    result = Stack(folder, env, redis.Redis(port=ports["redis"]), f"http://127.0.0.1:{ports['web']}",
                   f"http://127.0.0.1:{ports['sandbox']}", receiver_url, rss, procs)
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "integration", "sandbox", "--port", str(ports["sandbox"]),
                                       "--time-scale", str(time_scale), "--rate-limit", "0"], cwd=folder, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        rss.roots.update(redis=procs[0].pid, sandbox=procs[1].pid)
        web = subprocess.Popen([sys.executable, "-m", "integration", "web", "--host", "127.0.0.1"], cwd=folder,
                               env=env, stdout=subprocess.DEVNULL, stderr=open(folder / "web.log", "w"))  # noqa: SIM115
        procs.append(web)
        rss.roots["web"] = web.pid
        if hubspot_api:
            procs.append(_serve("benchmarks.standins:hubspot_app()", ports["hubspot"], env))
            rss.roots["stand-in HubSpot"] = procs[-1].pid
            wait_for(f"http://127.0.0.1:{ports['hubspot']}/")
        if receiver:
            procs.append(_serve("benchmarks.standins:receiver_app()", ports["receiver"], env))
            rss.roots["stand-in receiver"] = procs[-1].pid
            wait_for(f"http://127.0.0.1:{ports['receiver']}/times")
        wait_for(result.sandbox_url + "/_sandbox/config")
        wait_for(result.web_url + "/healthz")
        rss.start()
        yield result
    finally:
        rss.done.set()
        for proc in result.workers:  # SIGTERM to the group: the worker and its clock
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in result.workers:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        if logs:
            Path(logs).mkdir(parents=True, exist_ok=True)
            for log in folder.glob("*.log"):
                shutil.copy(log, Path(logs) / log.name)
        shutil.rmtree(folder, ignore_errors=True)


# ---- what happened, read back from Redis and the sandbox --------------------------------------------------


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@dataclass
class Outcome:
    events_final: Counter = field(default_factory=Counter)  # event status -> count
    event_runs: Counter = field(default_factory=Counter)  # attempts -> events
    dispatch_status: Counter = field(default_factory=Counter)
    submit_runs: Counter = field(default_factory=Counter)  # submit_attempts -> dispatches
    accepted_at: dict[str, float] = field(default_factory=dict)  # crm event id -> first `accepted` entry
    changes: dict[tuple[str, int], float] = field(default_factory=dict)  # (dispatch, sequence) -> at
    written_states: int = 0  # state changes a destination hears of (all but `pending`)
    tasks: int = 0
    tasks_per_dispatch: Counter = field(default_factory=Counter)  # tasks -> dispatches
    recovered: int = 0


def wait_until_drained(s: Stack, events: int, timeout: float) -> bool:
    """Every event has its outcome and no dispatch waits to be submitted. On a time-out the
    logs' last lines go to stderr (a worker that cannot start says why there)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with s.redis.pipeline(transaction=False) as pipe:
            for status in records.FINAL:
                pipe.zcard(records.STATUS_INDEX + status)
            pipe.zcard(state.STATUS_INDEX + "pending")
            *finals, pending = pipe.execute()
        if sum(finals) >= events and pending == 0:
            return True
        time.sleep(0.2)
    for log in sorted(s.folder.glob("*.log")):
        print(f"--- {log.name} (last lines)", *log.read_text(errors="replace").splitlines()[-15:], sep="\n",
              file=sys.stderr)
    return False


def _load_many(connection: redis.Redis, ids: list[str]) -> list[tuple[dict[str, Any] | None, list[dict[str, Any]]]]:
    """Records and timelines through the state module (whatever its storage layout)."""
    many = getattr(state, "load_many", None)
    if many is not None:
        return many(connection, ids)
    return [(state.load(connection, i), state.timeline(connection, i)) for i in ids]


def read_outcome(s: Stack) -> Outcome:
    out = Outcome()
    connection = s.redis
    for status in records.FINAL:
        keys = connection.zrange(records.STATUS_INDEX + status, 0, -1)
        out.events_final[status] = len(keys)
        for start in range(0, len(keys), 1000):
            with connection.pipeline(transaction=False) as pipe:
                for key in keys[start:start + 1000]:
                    pipe.hget(key, "attempts")
                out.event_runs.update(int(a or 0) for a in pipe.execute())
    ids = [i.decode() for i in connection.zrange(state.ALL_INDEX, 0, -1)]
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        for dispatch_id, (record, timeline) in zip(chunk, _load_many(connection, chunk), strict=True):
            record = record or {}
            out.dispatch_status[record.get("status", "gone")] += 1
            out.submit_runs[int(record.get("submit_attempts") or 0)] += 1
            crm = record.get("crm")
            event_id = (json.loads(crm) if isinstance(crm, str) else crm or {}).get("event_id", dispatch_id)
            for entry in timeline:
                out.changes[(dispatch_id, entry["sequence"])] = _epoch(entry["at"])
                out.written_states += entry["status"] != "pending"
                if entry["status"] == "accepted":
                    out.accepted_at.setdefault(event_id, _epoch(entry["at"]))
    tasks = requests.get(s.sandbox_url + "/_sandbox/tasks", timeout=120).json()["items"]
    per_dispatch = Counter(t["body"].get("metadata", {}).get("dispatch_id") for t in tasks)
    per_dispatch.pop(None, None)  # the baseline's own tasks
    out.tasks = sum(per_dispatch.values())
    out.tasks_per_dispatch = Counter(per_dispatch.values())
    out.recovered = int(connection.get(units.RECOVERED) or 0)
    return out


def pct(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(share * len(ordered))) - 1))]


def ms(value: float) -> str:
    return f"{value * 1000:8.1f} ms"


def print_exactly_once(out: Outcome, events: int) -> None:
    print(f"events                    : {events} sent; outcomes {dict(out.events_final)}; runs per event "
          f"{dict(sorted(out.event_runs.items()))}")
    print(f"dispatches                : {sum(out.dispatch_status.values())} ({dict(out.dispatch_status)}); "
          f"submit runs per dispatch {dict(sorted(out.submit_runs.items()))}")
    print(f"sandbox tasks             : {out.tasks} for {sum(out.tasks_per_dispatch.values())} dispatches "
          f"(tasks per dispatch {dict(out.tasks_per_dispatch)})")
    print(f"claims recovered          : {out.recovered} (no worker died)")


def print_cpu(s: Stack, events: int, generator_cpu: float, wall: float, costs: list[str]) -> None:
    """Where the time goes: CPU ms per event of each process tree, over the measured phase."""
    used = s.rss.cpu()
    used["load generator"] = generator_cpu
    parts = ", ".join(f"{label} {seconds * 1000 / events:.2f}" for label, seconds in sorted(used.items(),
                                                                                          key=lambda i: -i[1]))
    print(f"CPU ms per event          : {parts}; total {sum(used.values()) * 1000 / events:.2f} "
          f"({sum(used.values()) / wall:.2f} cores busy over {wall:.1f} s; {os.cpu_count()} cores, load average "
          f"{s.load_at_mark:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)")
    print(*costs, sep="\n")


def print_memory(s: Stack) -> None:
    for line in s.rss.report():
        print(f"peak RSS {line}")
    print(f"peak RSS web, any process : {s.rss.peak('web'):.1f} MB (target <= 100)   "
          f"worker, any process: {s.rss.peak('worker'):.1f} MB (target <= 150)")


# ---- the modes --------------------------------------------------------------------------------------------


def stored_events(connection: redis.Redis) -> int:
    with connection.pipeline(transaction=False) as pipe:
        for status in ("received", *records.FINAL):
            pipe.zcard(records.STATUS_INDEX + status)
        return sum(pipe.execute())


def run_wrk(web_url: str, connection: redis.Redis, events: int, threads: int,
            connections: int) -> tuple[list[tuple[str, float]], float, int]:
    """wrk (C, a few µs per request) as the load generator: `events` new events over `threads`
    threads, stopped (SIGINT) once Redis holds them all; per event only the run's start and the
    moment the last one was stored are known (so no per-event latency)."""
    quota = events // threads
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    proc = subprocess.Popen(["wrk", f"-t{threads}", f"-c{connections}", "-d300s", "--timeout", "30s", "-s",
                             str(Path(__file__).resolve().parent / "wrk_pipeline.lua"), web_url, "--", TOKEN,
                             str(quota)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wrk drops a request it had built for a connection that the server closed, yet counts it:
    # the events are those Redis holds once their number stops growing.
    count, stored = 0, time.time()
    while proc.poll() is None and count < quota * threads and time.time() - stored < 1.0:
        time.sleep(0.02)
        now_count = stored_events(connection)
        if now_count != count:
            count, stored = now_count, time.time()
    proc.send_signal(2)
    output, _ = proc.communicate(timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = dict(part.split("=") for part in next(line for line in output.splitlines()
                                                     if line.startswith("wrk-summary")).split()[1:])
    sent = [(f"bench-{thread}{number:06d}", started) for thread in range(1, threads + 1)
            for number in range(1, quota + 1)]
    sent = sent[:count]
    sent[-1] = (sent[-1][0], stored)  # the span of sending: until Redis held the last event
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return sent, cpu, int(summary["refused"])


def run_generators(url: str, groups: list[list[int]], rate: float) -> tuple[list[tuple[str, float]], float, int]:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    start_at = time.time() + 2.0  # every generator imported and connected before the first POST
    procs = [context.Process(target=send_generic, args=(url, group, start_at, rate, out)) for group in groups]
    for proc in procs:
        proc.start()
    results = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    sent = [item for result in results for item in result[0]]
    return sent, sum(r[1] for r in results), sum(r[2] for r in results)


def run_salesforce(url: str, groups: list[list[int]], events: int) -> tuple[list[tuple[str, float]], float, int]:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    procs = [context.Process(target=send_salesforce, args=(url, group, 100, events, out)) for group in groups]
    for proc in procs:
        proc.start()
    results = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    return [item for result in results for item in result[0]], sum(r[1] for r in results), sum(r[2] for r in results)


def throughput(args: argparse.Namespace) -> None:
    with stack(args.time_scale, receiver=False, hubspot_api=False, logs=args.logs) as s:
        bare_rate, _ = bare_posts(s.sandbox_url + "/api/v1", args.baseline)
        numbers = list(range(args.events))
        def generate() -> tuple[list[tuple[str, float]], float, int]:
            if args.salesforce:
                firsts = list(range(0, args.events, 100))
                return run_salesforce(s.web_url + f"/webhooks/salesforce?token={SALESFORCE_TOKEN}",
                                      [firsts[i::args.senders] for i in range(args.senders)], args.events)
            if args.wrk:
                return run_wrk(s.web_url, s.redis, args.events, args.senders, args.wrk_connections)
            return run_generators(s.web_url + "/webhooks/generic/bench",
                                  [numbers[i::args.senders] for i in range(args.senders)], 0)

        if args.send_first:  # every webhook stored before a worker runs: the workers' own rate
            sent, cpu, refused = generate()
        s.start_workers(args.workers)
        s.mark()
        spy, monitor = s.profile(args.py_spy), s.watch_round_trips(args.round_trips)
        if not args.send_first:
            sent, cpu, refused = generate()
        if refused:
            raise SystemExit(f"{refused} webhooks were not answered 200")
        args.events = len(sent)  # with wrk: those Redis holds
        drained = wait_until_drained(s, args.events, args.timeout)
        stop_profile(spy)
        costs = s.costs(args.events) + ([monitor.report(args.events)] if monitor else [])
        out = read_outcome(s)
        bare_after, _ = bare_posts(s.sandbox_url + "/api/v1", args.baseline, offset=args.baseline)
        bare_before, bare_rate = bare_rate, (bare_rate + bare_after) / 2
        first = min(t for _, t in sent)
        send_span = max(t for _, t in sent) - first
        what = ("Salesforce events in Outbound Messages of 100 (no hydration)" if args.salesforce else
                "generic-hook events (one per request, X-Hook-Token)")
        print(f"mode: throughput; {args.events} {what}; "
              f"{args.workers} worker processes; web: revor-bridge web (WEB_CONCURRENCY "
              f"{s.env.get('WEB_CONCURRENCY', '2')}); sandbox time scale {args.time_scale:g}")
        kind = (f"{args.senders} Python processes, Outbound Messages of 100" if args.salesforce else
                f"wrk, {args.senders} threads, {args.wrk_connections} connections" if args.wrk else
                f"{args.senders} Python processes (requests.Session)")
        print(f"load generator            : {kind}; {len(sent)} webhooks in {send_span:.2f} s = "
              f"{len(sent) / send_span:.0f}/s, {cpu:.1f} CPU s")
        print_exactly_once(out, args.events)
        latencies = [out.accepted_at[e] - t for e, t in sent if e in out.accepted_at]
        if args.send_first:  # from the first dispatch the workers created
            first = min(out.changes.values())
        span = max(out.accepted_at.values()) - first
        rate = len(out.accepted_at) / span
        print(f"events reached 202        : {len(out.accepted_at)} of {args.events}" + ("" if drained else
                                                                                    " (timed out)"))
        if not args.send_first and not args.wrk:
            print(f"webhook -> 202 p50 / p99  : {ms(statistics.median(latencies))} / {ms(pct(latencies, 0.99))}")
        print_cpu(s, args.events, 0.0 if args.send_first else cpu, span, costs)
        print_memory(s)
        print(f"bare POST to the sandbox  : {bare_rate:8.1f} dispatches/s (one process, requests.Session, "
              f"{args.baseline} POSTs before the run: {bare_before:.0f}/s, {args.baseline} after: {bare_after:.0f}/s)")
        if args.send_first:
            print(f"workers' drain            : {rate:8.1f} events/s (stored events: first dispatch created to "
                  f"last 202)")
            print(f"ratio drain/bare          : {rate / bare_rate:8.3f}")
            return
        print(f"end to end                : {rate:8.1f} events/s (first webhook to last 202; target >= 400)")
        print(f"ratio end-to-end/bare     : {rate / bare_rate:8.3f}  (target >= 0.5)")


def steady(args: argparse.Namespace) -> None:
    events = int(args.rate * args.duration)
    with stack(args.time_scale, receiver=True, hubspot_api=False, logs=args.logs) as s:
        _, bare_latencies = bare_posts(s.sandbox_url + "/api/v1", args.baseline)
        s.start_workers(args.workers)
        s.mark()
        spy, monitor = s.profile(args.py_spy), s.watch_round_trips(args.round_trips)
        sent, cpu, refused = run_generators(s.web_url + "/webhooks/generic/bench", [list(range(events))], args.rate)
        if refused:
            raise SystemExit(f"{refused} webhooks were not answered 200")
        drained = wait_until_drained(s, events, args.timeout)
        stop_profile(spy)
        time.sleep(3)  # the last write-backs
        costs = s.costs(events) + ([monitor.report(events)] if monitor else [])
        out = read_outcome(s)
        arrivals = requests.get(s.receiver_url.replace("/status", "/times"), timeout=60).json()["items"]
        first = min(t for _, t in sent)
        send_span = max(t for _, t in sent) - first
        print(f"mode: steady; {events} generic-hook events at {args.rate:g}/s for {args.duration:g} s; "
              f"{args.workers} worker processes; write-back of every state to a local receiver; sandbox time "
              f"scale {args.time_scale:g}")
        print(f"load generator            : {len(sent)} webhooks in {send_span:.2f} s = {len(sent) / send_span:.1f}/s, "
              f"{cpu:.1f} CPU s")
        print_exactly_once(out, events)
        latencies = [out.accepted_at[e] - t for e, t in sent if e in out.accepted_at]
        print(f"events reached 202        : {len(out.accepted_at)} of {events}" + ("" if drained else " (timed out)"))
        writebacks = []
        for moment, message_id in arrivals:
            dispatch_id, sequence, _ = message_id.removeprefix("msg_").rsplit("_", 2)
            changed = out.changes.get((dispatch_id, int(sequence)))
            if changed is not None:
                writebacks.append(moment - changed)
        print(f"write-backs received      : {len(arrivals)} for {out.written_states} state changes after `pending`")
        print_cpu(s, events, cpu, max(out.accepted_at.values()) - first, costs)
        print_memory(s)
        bare_p50 = statistics.median(bare_latencies)
        p50, p99 = statistics.median(latencies), pct(latencies, 0.99)
        print(f"bare POST latency p50     : {ms(bare_p50)} (one process, requests.Session, same sandbox, same run)")
        print(f"webhook -> 202 p50        : {ms(p50)} (target <= 50 ms); ratio to the bare POST: {p50 / bare_p50:.1f}")
        print(f"webhook -> 202 p99        : {ms(p99)} (target <= 250 ms)")
        print(f"state change -> 2xx p50   : {ms(statistics.median(writebacks))} (target <= 50 ms); "
              f"p99 {ms(pct(writebacks, 0.99)).strip()}")


def burst(args: argparse.Namespace) -> None:
    events = args.batches * 100
    with stack(args.time_scale, receiver=False, hubspot_api=True, logs=args.logs) as s:
        bare_rate, _ = bare_posts(s.sandbox_url + "/api/v1", args.baseline)
        s.start_workers(args.workers)
        s.mark()
        spy, monitor = s.profile(args.py_spy), s.watch_round_trips(args.round_trips)
        before = resource.getrusage(resource.RUSAGE_SELF)
        first, posting, refused = send_hubspot(s.web_url + "/webhooks/hubspot", args.batches, 100)
        after = resource.getrusage(resource.RUSAGE_SELF)
        generator_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        if refused:
            raise SystemExit(f"{refused} HubSpot batches were not answered 200")
        drained = wait_until_drained(s, events, args.timeout)
        stop_profile(spy)
        costs = s.costs(events) + ([monitor.report(events)] if monitor else [])
        out = read_outcome(s)
        bare_after, _ = bare_posts(s.sandbox_url + "/api/v1", args.baseline, offset=args.baseline)
        bare_before, bare_rate = bare_rate, (bare_rate + bare_after) / 2
        print(f"mode: burst; {args.batches} signed (v3) HubSpot batches of 100 deal events, hydrated from a local "
              f"HubSpot API stand-in (2 calls per event); {args.workers} worker processes; sandbox time scale "
              f"{args.time_scale:g}")
        print(f"load generator            : {args.batches} batches in {posting:.2f} s = "
              f"{events / posting:.0f} events/s, {generator_cpu:.1f} CPU s (signing included)")
        print_exactly_once(out, events)
        once = out.event_runs.get(1, 0)
        drain = max(out.accepted_at.values()) - first if out.accepted_at else float("nan")
        submitted = sum(out.dispatch_status[s] for s in out.dispatch_status if s not in ("pending", "invalid",
                                                                                         "skipped", "rejected"))
        print(f"processed exactly once    : {once} of {events} events (attempts == 1)")
        print(f"dispatches submitted      : {submitted} of {events} events; sandbox tasks {out.tasks}")
        print_cpu(s, events, generator_cpu, drain, costs)
        print_memory(s)
        print(f"time to drain             : {drain:8.2f} s (first batch posted to last 202)"
              + ("" if drained else " (timed out)"))
        print(f"bare POST to the sandbox  : {bare_rate:8.1f} dispatches/s ({events / bare_rate:.2f} s for {events}; "
              f"before the run {bare_before:.0f}/s, after {bare_after:.0f}/s)")
        print(f"ratio drain rate/bare     : {events / drain / bare_rate:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--steady", action="store_true", help="a steady --rate for --duration seconds")
    mode.add_argument("--burst", action="store_true", help="--batches HubSpot batches of 100 at once")
    parser.add_argument("--events", type=int, default=4000, help="throughput mode: events to send")
    parser.add_argument("--senders", type=int, default=2, help="throughput mode: load-generator processes")
    parser.add_argument("--wrk", action="store_true",
                        help="throughput mode: wrk as the load generator (--senders threads), not Python processes")
    parser.add_argument("--wrk-connections", type=int, default=8, help="with --wrk: connections")
    parser.add_argument("--salesforce", action="store_true",
                        help="throughput mode: Salesforce Outbound Messages of 100 events instead of one event "
                             "per generic-hook request (ingest then costs little per event)")
    parser.add_argument("--send-first", action="store_true",
                        help="throughput mode: store every webhook before the workers start (their own rate)")
    parser.add_argument("--rate", type=float, default=50.0, help="steady mode: events per second")
    parser.add_argument("--duration", type=float, default=60.0, help="steady mode: seconds")
    parser.add_argument("--batches", type=int, default=100, help="burst mode: HubSpot batches of 100 events")
    parser.add_argument("--workers", type=int, default=2, help="revor-bridge worker processes")
    parser.add_argument("--baseline", type=int, default=2000, help="bare POSTs for the baseline")
    parser.add_argument("--time-scale", type=float, default=None,
                        help="sandbox time scale (default: 1 = Revor's own pacing, so polls fall after the run; "
                             "steady: 10000, so each dispatch runs its whole course and is written back)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the pipeline to drain")
    parser.add_argument("--logs", metavar="DIR", help="keep the web's and workers' logs in DIR")
    parser.add_argument("--round-trips", action="store_true",
                        help="count the commands clients send to Redis (MONITOR: slows Redis, diagnostic only)")
    parser.add_argument("--py-spy", metavar="FILE", help="profile worker 1 with py-spy (collapsed stacks to FILE)")
    args = parser.parse_args()
    if args.time_scale is None:
        args.time_scale = 10000.0 if args.steady else 1.0
    (steady if args.steady else burst if args.burst else throughput)(args)


if __name__ == "__main__":
    main()
