"""Importing a list at scale: a million rows in bounded memory, and webhooks during an import.

Two modes, both through real processes (a redis-server of its own, `revor-bridge import` as a
subprocess, for the latency mode the whole stack of benchmarks/pipeline.py):

- default (`--rows N`, 1,000,000): writes a realistic HubSpot contacts export of N rows to disk
  (streamed, never built in memory: 14 columns, quoted company names with commas, accented
  names, some rows without a phone or an email), then measures, in the same run:
  - the baseline: the reader alone (`reader.iter_rows`) over the file, rows/s in this process,
    and the rows turned into events (still no Redis);
  - `revor-bridge import FILE --dry-run` (with the README's rule for such a list): rows/s and
    peak RSS of the command;
  - `revor-bridge import FILE --yes --max-pending 0 --no-wait` with no worker running: the rows
    are stored as events, not processed (store-only). Rows/s of the storing phase (from the run's
    `started_at` to its `stored` status), the peak RSS of the importer process (the kernel's
    high-water mark, from wait4; target at most 200 MB) and of each phase (/proc VmRSS sampled
    every 0.1 s), the CPU the importer and redis-server used meanwhile (which of them is the
    bottleneck), and Redis' `used_memory` grown per stored row (what a million rows need:
    INBOUND_MAX_STORED_BYTES is raised for this; its default is 256 MiB per source).
  The ratio import/reader says what storing costs over reading alone.
- `--latency`: two workers, the Revor sandbox and the web process (as benchmarks/pipeline.py
  starts them); a steady stream of signed webhooks (Standard Webhooks signatures on a generic
  hook, `--rate` per second for `--duration` seconds) measured first alone (the baseline), then
  while an import of `--import-rows` rows runs with the default `--max-pending` (or the one
  given). Prints webhook -> dispatch `accepted` (Revor's 202) p50 and p99 in both phases, their
  ratio, how late the load generator ran against its schedule (it must not be the bottleneck),
  and the import's rows/s meanwhile and overall.

    python -m benchmarks.imports [--rows 1000000]
    python -m benchmarks.imports --latency [--rate 20] [--duration 30] [--import-rows 20000]
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from benchmarks.pipeline import ms, pct, stack
from integration.dispatches import state
from integration.imports import runs
from integration.inbound.store import stored_bytes_key
from integration.storage import free_port, redis_server_binary

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "csv:bench"
TARGET_RSS_MB = 200
MB = 1024 * 1024
# Raised for the benchmark: a million rows need far more than the default 256 MiB per source.
STORED_BYTES_CEILING = str(2**40)
SIGNED_SECRET = "whsec_" + "aW1wb3J0LWJlbmNobWFyay1zZWNyZXQtMDEyMzQ1Njc="  # base64 of 32 bytes

HEADERS = ["Record ID", "First Name", "Last Name", "Email", "Phone Number", "Contact owner", "Lifecycle Stage",
           "Lead Status", "Company Name", "Job Title", "City", "Country/Region", "Create Date",
           "Last Activity Date"]
FIRST = ["Maria", "Brian", "Jane", "Luis", "Aiko", "José", "Zoë", "Łukasz", "Søren", "Amélie", "Chen", "Priya",
         "Olúwásẹ̀un", "Noah", "Emma", "Mateo", "Fatima", "Yuki", "Hannah", "Björn"]
LAST = ["Johnson", "Halligan", "Cooper", "García", "Tanaka", "Müller", "O'Brien", "Nguyen", "Kowalski", "Dubois",
        "Rossi", "Smith", "van der Berg", "Ødegaard", "Fernández", "Schmidt", "Kim", "Patel", "Novak", "Silva"]
COMPANIES = ["Northwind Traders", "Contoso, S.L.", "Fabrikam", "Tailspin Toys", "Wide World Importers",
             "Adventure Works", "Litware, Inc.", "Proseware", "Coho Winery", "Alpine Ski House",
             "Blue Yonder Airlines", "Lucerne Publishing", "Margie's Travel", "Trey Research", "\"Fourth\" Coffee"]
STAGES = ["Subscriber", "Lead", "Marketing Qualified Lead", "Sales Qualified Lead", "Opportunity", "Customer"]
STATUSES = ["", "New", "Open", "In Progress", "Open Deal", "Unqualified", "Attempted to Contact", "Connected"]
OWNERS = ["", "Ana Ruiz", "Tom Berg", "Lena Fischer", "Sam Okafor"]
TITLES = ["", "Head of Sales", "CTO", "Marketing Manager", "Founder & CEO", "Procurement, EMEA", "Engineer"]
CITIES = [("Boston", "United States"), ("London", "United Kingdom"), ("Madrid", "Spain"), ("Tokyo", "Japan"),
          ("München", "Germany"), ("São Paulo", "Brazil"), ("Kraków", "Poland"), ("Lagos", "Nigeria")]
# The README's rule for such a list: qualified leads get an email.
IMPORT_RULE = """\
  - name: list-welcome
    when:
      source: csv:bench
      type: contact.imported
      match: {contact.email: {exists: true}}
      if: "{{ contact['Lifecycle Stage'] in ['Marketing Qualified Lead', 'Sales Qualified Lead'] }}"
    dispatch:
      account: mail
      channel: email
      recipient: {address: "{{ contact.email }}", name: "{{ contact.first_name }}"}
      content:
        subject: "Hello {{ contact.first_name }}"
        text: "Hi {{ contact.first_name }}, thanks for your interest, and greetings to {{ company.name }}."
      interval_seconds: [180, 360]
"""
# For the latency mode: every row is sent (the import's events cost what a webhook's do).
IMPORT_RULE_ALL = """\
  - name: list-all
    when: {source: csv:bench, type: contact.imported, match: {contact.email: {exists: true}}}
    dispatch:
      account: mail
      channel: email
      recipient: {address: "{{ contact.email }}", name: "{{ contact.first_name }}"}
      content: {subject: "Hello {{ contact.first_name }}", text: "Greetings to {{ company.name }}."}
      interval_seconds: 60
"""


# ---- the file -----------------------------------------------------------------------------------


def write_hubspot_export(path: Path, rows: int, seed: int = 12) -> int:
    """A HubSpot contacts export (Contacts -> Export -> CSV) of `rows` rows, written row by row;
    returns its size in bytes. Deterministic: the same rows for the same seed."""
    rng = random.Random(seed)
    start = datetime(2023, 1, 2, 8, 0)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADERS)
        for number in range(rows):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            company = rng.choice(COMPANIES)
            domain = company.split(",")[0].strip('"').replace(" ", "").replace("'", "").lower() + ".example"
            email = "" if rng.random() < 0.01 else f"{first.lower()}.{number}@{domain}"
            phone = "" if rng.random() < 0.3 else f"+1 617 555 {rng.randrange(10000):04d}"
            city, country = rng.choice(CITIES)
            created = start + timedelta(minutes=number // 3)
            active = "" if rng.random() < 0.4 else (created + timedelta(days=rng.randrange(200))).strftime(
                "%Y-%m-%d %H:%M")
            writer.writerow([str(10_000_000 + 3 * number + rng.randrange(3)), first, last, email, phone,
                             rng.choice(OWNERS), rng.choice(STAGES), rng.choice(STATUSES), company,
                             rng.choice(TITLES), city, country, created.strftime("%Y-%m-%d %H:%M"), active])
    return path.stat().st_size


# ---- a process's memory and CPU, from /proc and wait4 ------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/status we need (VmRSS, VmHWM); {} once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


class Sampled(threading.Thread):
    """VmRSS of one process every 0.1 s, with the moment of each sample, and the last VmHWM seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True, name=f"rss-{pid}")
        self.pid, self.samples, self.hwm_kb = pid, [], 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            found = proc_status(self.pid)
            if found:
                self.samples.append((time.time(), found.get("VmRSS", 0)))
                self.hwm_kb = max(self.hwm_kb, found.get("VmHWM", 0))
            self.done.wait(0.1)

    def peak_mb(self, start: float = 0.0, end: float = float("inf")) -> float:
        return max((kb for at, kb in self.samples if start <= at <= end), default=0) / 1024


@dataclass
class Finished:
    code: int
    wall: float
    cpu: float  # user + system seconds of the process
    max_rss_mb: float  # the kernel's high-water mark (ru_maxrss)
    sampled: Sampled
    stderr: str


def run_measured(command: list[str], env: dict[str, str], folder: Path, name: str, timeout: float) -> Finished:
    """Run `command`, sampling its RSS; its peak and CPU from wait4 (exact, whatever the sampling missed)."""
    err_path = folder / f"{name}.stderr"
    with (folder / f"{name}.stdout").open("w") as out, err_path.open("w") as err:
        started = time.monotonic()
        proc = subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=err)
        sampler = Sampled(proc.pid)
        sampler.start()
        deadline = started + timeout
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    proc.kill()
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.05)
        finally:
            sampler.done.set()
            sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return Finished(proc.returncode, time.monotonic() - started, usage.ru_utime + usage.ru_stime,
                    usage.ru_maxrss / 1024, sampler, err_path.read_text(errors="replace"))


def redis_cpu(connection: redis.Redis) -> float:
    info = connection.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def used_memory(connection: redis.Redis) -> int:
    """used_memory less the clients' buffers (mem_clients_normal), which are not stored data."""
    memory = connection.info("memory")
    return int(memory["used_memory"]) - int(memory["mem_clients_normal"])


# ---- mode (a): a million rows, store only ------------------------------------------------------------


@contextmanager
def redis_alone(folder: Path) -> Iterator[tuple[redis.Redis, str]]:
    port = free_port()
    binary = shutil.which("redis-server") or redis_server_binary()
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                               "--dir", str(folder)], stdout=subprocess.DEVNULL)
    connection = redis.Redis(port=port)
    try:
        for _ in range(200):
            try:
                connection.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield connection, f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=30)


def cli_env(redis_url: str, rules: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REVOR_", "REDIS_", "HUBSPOT_", "GENERIC_WEBHOOK_", "PIPEDRIVE_", "SALESFORCE_"))}
    env.update(REDIS_URL=redis_url, RULES_FILE=str(rules), INBOUND_MAX_STORED_BYTES=STORED_BYTES_CEILING,
               LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return env


def reader_rates(path: Path) -> tuple[int, float, float]:
    """Rows, rows/s of the reader alone, rows/s of the rows made events (runner.Prepared.events): no Redis."""
    from integration.imports import reader, runner

    started = time.perf_counter()
    count = sum(1 for _ in reader.iter_rows(path))
    read_rate = count / (time.perf_counter() - started)
    prepared = runner.prepare(runner.ImportOptions(path, SOURCE))
    started = time.perf_counter()
    events = sum(1 for _ in prepared.events())
    return count, read_rate, events / (time.perf_counter() - started)


def where_it_goes(connection: redis.Redis, rows: int) -> str:
    """MEMORY USAGE per stored row of the event hashes (a sample of 1,000), the due (bulk lane)
    and received sets and the batches' delivery records."""
    from integration.inbound.store import RECEIVED_INDEX_KEY
    from integration.scheduler.units import BULK

    keys = []
    for key in connection.scan_iter(match="rb:event:csv:bench:*", count=1000):
        keys.append(key)
        if len(keys) >= 1000:
            break
    with connection.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.memory_usage(key, samples=0)
        sizes = pipe.execute()
    event = statistics.mean(int(s or 0) for s in sizes) if sizes else 0.0
    due = int(connection.memory_usage(BULK, samples=0) or 0) / rows
    received = int(connection.memory_usage(RECEIVED_INDEX_KEY, samples=0) or 0) / rows
    deliveries = 0
    for key in connection.scan_iter(match="rb:delivery:*", count=1000):
        deliveries += int(connection.memory_usage(key, samples=0) or 0)
    return (f"event hash {event:,.0f} B (mean of {len(keys)}), rb:due:bulk {due:,.0f} B, received index "
            f"{received:,.0f} B, delivery records {deliveries / rows:,.0f} B")


def rows_mode(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="rb-imports-"))
    try:
        path = folder / "hubspot-contacts.csv"
        started = time.perf_counter()
        size = write_hubspot_export(path, args.rows)
        written = time.perf_counter() - started
        rules = folder / "rules.yaml"
        rules.write_text("version: 1\naccounts: {mail: connect_account_sandbox_email}\nrules:\n" + IMPORT_RULE)
        print(f"mode: rows; {args.rows:,} rows of a HubSpot contacts export ({len(HEADERS)} columns, "
              f"{size / MB:.1f} MB, {size / max(1, args.rows):.0f} bytes a row), written in {written:.1f} s")
        count, read_rate, event_rate = reader_rates(path)
        if count != args.rows:
            raise SystemExit(f"the reader read {count} rows of {args.rows}")
        print(f"reader alone (iter_rows)  : {read_rate:10,.0f} rows/s (the baseline: the same file, this process)")
        print(f"rows as events, no Redis  : {event_rate:10,.0f} rows/s (reader, header map, event ids)")
        command = [sys.executable, "-m", "integration", "import", str(path), "--source", SOURCE]
        with redis_alone(folder) as (connection, redis_url):
            env = cli_env(redis_url, rules)
            before = used_memory(connection)
            dry = run_measured(command + ["--dry-run"], env, folder, "dry-run", args.timeout)
            if dry.code != 0:
                raise SystemExit(f"the dry run exited {dry.code}: {dry.stderr[-2000:]}")
            print(f"dry run                   : {args.rows / dry.wall:10,.0f} rows/s ({args.rows:,} rows in "
                  f"{dry.wall:.1f} s, the whole command); peak RSS {dry.max_rss_mb:.1f} MB")
            cpu_before = redis_cpu(connection)
            real = run_measured(command + ["--yes", "--max-pending", "0", "--no-wait"], env, folder, "import",
                                args.timeout)
            redis_used = redis_cpu(connection) - cpu_before
            if real.code != 0:
                raise SystemExit(f"the import exited {real.code}: {real.stderr[-2000:]}")
            run = connection.zrange(runs.RUNS_KEY, 0, 0)[0].decode()
            found = runs.load(connection, run)
            assert found is not None
            storing = found.updated_at - found.started_at
            stored = found.counts["stored"]
            if found.status != "stored" or found.counts["read"] != args.rows:
                raise SystemExit(f"the run is {found.status} with {found.counts}")
            rate = found.counts["read"] / storing
            grown = used_memory(connection) - before
            print(f"import, store only        : {rate:10,.0f} rows/s ({found.counts['read']:,} rows read, {stored:,} "
                  f"stored, {found.counts['bad']:,} bad in {storing:.1f} s of storing; the whole command "
                  f"{real.wall:.1f} s with its dry run first)")
            print(f"peak RSS importer         : {real.max_rss_mb:6.1f} MB (target <= {TARGET_RSS_MB}; wait4's "
                  f"ru_maxrss; VmHWM last seen {real.sampled.hwm_kb / 1024:.1f} MB); sampled: dry-run phase "
                  f"{real.sampled.peak_mb(0, found.started_at):.1f} MB, storing phase "
                  f"{real.sampled.peak_mb(found.started_at):.1f} MB")
            print(f"CPU over the command      : importer {real.cpu:.1f} s ({real.cpu / real.wall:.2f} cores busy), "
                  f"redis-server {redis_used:.1f} s ({redis_used / max(storing, 1e-9):.2f} cores over the storing); "
                  f"{os.cpu_count()} cores")
            print(f"Redis used_memory grown   : {grown:,} bytes = {grown / max(1, stored):,.0f} bytes per stored row "
                  f"({grown / max(1, stored) / (size / args.rows):.1f} x the row in the file)")
            print(f"  per stored row          : {where_it_goes(connection, max(1, stored))}")
            charged = sum(int(v) for v in connection.hvals(stored_bytes_key(SOURCE)))
            print(f"  charged to the ceiling  : {charged / max(1, stored):,.0f} bytes per stored row "
                  f"(INBOUND_MAX_STORED_BYTES, 7 days; its default 256 MiB holds about "
                  f"{256 * MB * max(1, stored) / max(1, charged):,.0f} such rows)")
        print(f"ratio import/reader       : {rate / read_rate:8.3f} (storing's rows/s against the reader alone)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---- mode (b): webhook latency during an import -----------------------------------------------------


def send_signed(url: str, ids: list[str], start_at: float, rate: float, out: Any) -> None:
    """Standard Webhooks signed events, one per request, event i at start_at + i / rate (own process)."""
    import json

    import requests
    from standardwebhooks import Webhook

    webhook = Webhook(SIGNED_SECRET)
    sent, lateness, refused = [], [], 0
    with requests.Session() as session:
        for index, msg_id in enumerate(ids):
            number = int(msg_id.rsplit("-", 1)[1])
            body = json.dumps({"event": "deal.stage_changed", "deal__id": str(number), "contact__first_name": "Lead",
                               "contact__phone": f"+1415{number:07d}"})
            planned = start_at + index / rate
            time.sleep(max(0.0, planned - time.time()))
            moment = time.time()
            now = datetime.now(UTC)
            headers = {"Content-Type": "application/json", "webhook-id": msg_id,
                       "webhook-timestamp": str(int(now.timestamp())),
                       "webhook-signature": webhook.sign(msg_id, now, body)}
            answer = session.post(url, data=body.encode(), headers=headers, timeout=30)
            refused += answer.status_code != 200
            sent.append((msg_id, moment))
            lateness.append(moment - planned)
    usage = os.times()
    out.put((sent, max(lateness, default=0.0), usage.user + usage.system, refused))


@dataclass
class Stream:
    sent: list[tuple[str, float]] = field(default_factory=list)
    late: float = 0.0
    cpu: float = 0.0
    refused: int = 0

    @property
    def span(self) -> float:
        return max(t for _, t in self.sent) - min(t for _, t in self.sent) if len(self.sent) > 1 else 0.0


def stream(url: str, prefix: str, first: int, rate: float, duration: float) -> Stream:
    ids = [f"{prefix}-{first + n}" for n in range(int(rate * duration))]
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    proc = context.Process(target=send_signed, args=(url, ids, time.time() + 1.5, rate, out))
    proc.start()
    sent, late, cpu, refused = out.get()
    proc.join()
    if refused:
        raise SystemExit(f"{refused} webhooks were not answered 200")
    return Stream(sent, late, cpu, refused)


def accepted_times(connection: redis.Redis, wanted: set[str]) -> dict[str, float]:
    """Event id -> the moment its dispatch was `accepted` (Revor's 202), for the webhook rule's dispatches."""
    found: dict[str, float] = {}
    ids = [i.decode() for i in connection.zrange(state.RULE_INDEX + "bench", 0, -1)]
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        for record, timeline in state.load_many(connection, chunk):
            crm = (record or {}).get("crm") or {}
            event_id = crm.get("event_id") if isinstance(crm, dict) else None
            if event_id not in wanted:
                continue
            for entry in timeline:
                if entry["status"] == "accepted":
                    found.setdefault(event_id, datetime.fromisoformat(entry["at"].replace("Z", "+00:00")).timestamp())
    return found


def latencies(connection: redis.Redis, sent: Stream, timeout: float) -> list[float]:
    wanted = {e for e, _ in sent.sent}
    deadline = time.monotonic() + timeout
    found: dict[str, float] = {}
    while time.monotonic() < deadline:
        found = accepted_times(connection, wanted)
        if len(found) == len(wanted):
            break
        time.sleep(0.5)
    return [found[e] - t for e, t in sent.sent if e in found]


def describe(name: str, values: list[float], total: int) -> str:
    return (f"webhook -> accepted {name:<6}: p50 {ms(statistics.median(values)).strip()}, p99 "
            f"{ms(pct(values, 0.99)).strip()} ({len(values)} of {total} accepted)")


def latency_mode(args: argparse.Namespace) -> None:
    signed = {"GENERIC_WEBHOOK_SECRET_BENCH": SIGNED_SECRET, "INBOUND_MAX_STORED_BYTES": STORED_BYTES_CEILING}
    with stack(args.time_scale, receiver=False, hubspot_api=False, extra_rules=IMPORT_RULE_ALL,
               extra_env=signed) as s:
        path = s.folder / "hubspot-contacts.csv"
        write_hubspot_export(path, args.import_rows)
        s.start_workers(args.workers)
        url = s.web_url + "/webhooks/generic/bench"
        alone = stream(url, "alone", 0, args.rate, args.duration)
        alone_latency = latencies(s.redis, alone, args.timeout)
        command = [sys.executable, "-m", "integration", "import", str(path), "--source", SOURCE, "--yes",
                   *(["--max-pending", str(args.max_pending)] if args.max_pending is not None else [])]
        with (s.folder / "import.stderr").open("w") as err:
            importer = subprocess.Popen(command, cwd=s.folder, env={**s.env, "PYTHONUNBUFFERED": "1"},
                                        stdout=subprocess.DEVNULL, stderr=err)
            try:
                run = wait_for_storing(s.redis, importer, min(args.import_rows // 4, args.max_pending or 1000))
                before = runs.load(s.redis, run)
                during = stream(url, "import", 10**6, args.rate, args.duration)
                after = runs.load(s.redis, run)
                during_latency = latencies(s.redis, during, args.timeout)
                code = importer.wait(timeout=args.timeout)
            finally:
                if importer.poll() is None:
                    importer.kill()
                    importer.wait()
        if code != 0:
            raise SystemExit(f"the import exited {code}: {(s.folder / 'import.stderr').read_text()[-2000:]}")
        done = runs.load(s.redis, run)
        assert before is not None and after is not None and done is not None
        window = max(t for _, t in during.sent) - min(t for _, t in during.sent)
        processed = after.processed - before.processed
        overall = done.counts["read"] / (done.updated_at - done.started_at)
        print(f"mode: latency; signed webhooks (Standard Webhooks, a generic hook) at {args.rate:g}/s for "
              f"{args.duration:g} s, alone then during an import of {args.import_rows:,} HubSpot contact rows "
              f"(--max-pending {args.max_pending if args.max_pending is not None else 'default, 1000'}); "
              f"{args.workers} worker processes; sandbox time scale {args.time_scale:g}")
        for name, sent in (("alone", alone), ("import", during)):
            print(f"load generator {name:<11}: {len(sent.sent)} webhooks in {sent.span:.2f} s = "
                  f"{(len(sent.sent) - 1) / max(sent.span, 1e-9):.1f}/s, at most {sent.late * 1000:.1f} ms behind its "
                  f"schedule, {sent.cpu:.1f} CPU s")
        print(describe("alone", alone_latency, len(alone.sent)))
        print(describe("import", during_latency, len(during.sent)))
        p50 = statistics.median(during_latency) / statistics.median(alone_latency)
        p99 = pct(during_latency, 0.99) / pct(alone_latency, 0.99)
        print(f"import meanwhile          : {processed:,} rows processed in the {window:.1f} s window = "
              f"{processed / max(window, 1e-9):,.0f} rows/s ({after.status} at its end, {after.pending:,} waiting); "
              f"the whole import {done.counts['read']:,} rows in {done.updated_at - done.started_at:.1f} s = "
              f"{overall:,.0f} rows/s, {done.counts['dispatched']:,} dispatched")
        print(f"ratio during/alone        : p50 {p50:.2f}, p99 {p99:.2f}")


def wait_for_storing(connection: redis.Redis, importer: subprocess.Popen, rows: int, timeout: float = 300) -> str:
    """The run's id once it has stored `rows` rows (its dry run is over and the import feeds the workers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = connection.zrange(runs.RUNS_KEY, 0, 0)
        if found:
            run = found[0].decode()
            current = runs.load(connection, run)
            if current is not None and current.counts["stored"] >= rows:
                return run
        if importer.poll() is not None:
            raise SystemExit(f"the import exited {importer.returncode} before storing {rows} rows")
        time.sleep(0.05)
    raise SystemExit(f"the import did not store {rows} rows within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows mode: rows in the export")
    parser.add_argument("--latency", action="store_true", help="webhook latency alone, then during an import")
    parser.add_argument("--rate", type=float, default=20.0, help="latency mode: webhooks per second")
    parser.add_argument("--duration", type=float, default=30.0, help="latency mode: seconds of webhooks per phase")
    parser.add_argument("--import-rows", type=int, default=20_000, help="latency mode: rows of the import")
    parser.add_argument("--max-pending", type=int, default=None,
                        help="latency mode: the import's --max-pending (default: the command's own)")
    parser.add_argument("--workers", type=int, default=2, help="latency mode: revor-bridge worker processes")
    parser.add_argument("--time-scale", type=float, default=1.0, help="latency mode: the sandbox's time scale")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds any one step may take")
    args = parser.parse_args()
    (latency_mode if args.latency else rows_mode)(args)


if __name__ == "__main__":
    main()
