"""Counters that say whether the bridge is healthy, shared by every web and worker process.

They live in Redis, in one hash (`rb:metrics`), so `/metrics` on any web process shows what all
processes did, and a restart loses nothing. A field is a JSON array, `[family, label values...]`,
its value the count (a float for the latency sum). Label values are config names (source, rule,
destination) or a fixed set (outcomes, statuses, endpoints): never ids, addresses or secrets.

Counting costs no extra round trip where the bridge writes anyway: the store script counts what
the web stored, the dispatch state script each transition, the event's final pipeline its
outcome, the write-back pipelines each attempt. Revor calls are tallied in the worker's memory
(`Tally`) and added to Redis once at the end of each engine run (a run covers many events).

Families (what `/metrics` names them, in integration/web/metrics.py):

- `events` (source, outcome): at the door `stored`, `duplicate`, `ignored` (an item of a
  verified batch the bridge does not handle), `rejected` (a refused request, counted once per
  request: bad signature or token, malformed body, storage full, source not configured); when a
  worker finishes the event `processed`, `skipped` (stale) or `failed`.
- `transitions` (status, rule): every dispatch state change, `pending` included (its creation).
- `revor_requests` (endpoint, status): each HTTP request to Revor, status the HTTP status or
  `error` (no answer: connection failure, timeout); `revor_seconds_bucket` (endpoint, le),
  `revor_seconds_sum` and `revor_seconds_count` (endpoint): its duration.
- `writeback_attempts` (destination, outcome): `delivered` (2xx), `retry` (failed, tried again
  later), `dead` (failed, no retry left: a dead letter), `gone` (410: the destination is disabled).
"""

from __future__ import annotations

import bisect
import json
import threading
from collections import defaultdict
from typing import Any

import redis

from schemas.events import split_event_ref

KEY = "rb:metrics"
EVENTS = "events"
TRANSITIONS = "transitions"
REVOR_REQUESTS = "revor_requests"
REVOR_BUCKET = "revor_seconds_bucket"
REVOR_SUM = "revor_seconds_sum"
REVOR_COUNT = "revor_seconds_count"
WRITEBACK = "writeback_attempts"
# Upper bounds (seconds) of the Revor latency histogram; slower calls only count in +Inf.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
EVENT_PREFIX = "rb:event:"  # inbound/store.py's event keys: rb:event:<source>:<event id>


def field(family: str, *labels: str) -> str:
    """The hash field of one counter: the same text whichever process writes it."""
    return json.dumps([family, *labels], separators=(",", ":"), ensure_ascii=False)


def event_field(source: str, outcome: str) -> str:
    return field(EVENTS, source, outcome)


def transition_field(status: str, rule: str) -> str:
    return field(TRANSITIONS, status, rule)


def writeback_field(destination: str, outcome: str) -> str:
    return field(WRITEBACK, destination, outcome)


def source_of(event_key: str) -> str:
    """An event key's source (`hubspot`, `generic:zapier`, `csv:leads`); the event id after it may
    hold colons. An import's source is a label value too: operators name it on the command line,
    so there are few."""
    return split_event_ref(event_key.removeprefix(EVENT_PREFIX))[0]


def count(pipe: Any, name: str, amount: int = 1) -> None:
    """Add to a counter inside the caller's pipeline or transaction (no round trip of its own)."""
    pipe.hincrby(KEY, name, amount)


def revor_endpoint(method: str, path: str) -> str:
    """The endpoint label of a Revor request: the client's three calls, by name."""
    if path.startswith("/outreach/jobs/"):
        return "get_job"
    return {("POST", "/outreach/dispatches"): "create_dispatch",
            ("GET", "/connect/accounts"): "list_accounts"}.get((method, path), "other")


def bucket_label(bound: float) -> str:
    """An `le` value as Prometheus' own Python client writes it: 0.05, 1.0, 10.0."""
    return repr(float(bound))


class Tally:
    """Counts kept in this process until `flush` adds them to Redis in one round trip.

    For the Revor client, which has no Redis of its own: the worker's engine flushes at the end of
    each run. Thread-safe: the engine's threads share one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = defaultdict(int)
        self._sums: dict[str, float] = defaultdict(float)  # added with HINCRBYFLOAT

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def revor_request(self, endpoint: str, status: str, seconds: float) -> None:
        """One Revor request: its status and its duration in the histogram."""
        with self._lock:
            self._counts[field(REVOR_REQUESTS, endpoint, status)] += 1
            at = bisect.bisect_left(BUCKETS, seconds)
            if at < len(BUCKETS):  # stored per bucket; /metrics adds them up (le is cumulative)
                self._counts[field(REVOR_BUCKET, endpoint, bucket_label(BUCKETS[at]))] += 1
            self._counts[field(REVOR_COUNT, endpoint)] += 1
            self._sums[field(REVOR_SUM, endpoint)] += seconds

    def flush(self, connection: redis.Redis) -> None:
        """Add what was counted to Redis; kept for the next flush when Redis cannot take it."""
        with self._lock:
            counts, sums = self._counts, self._sums
            self._counts, self._sums = defaultdict(int), defaultdict(float)
        if not counts and not sums:
            return
        try:
            with connection.pipeline(transaction=False) as pipe:
                for name, amount in counts.items():
                    pipe.hincrby(KEY, name, amount)
                for name, total in sums.items():
                    pipe.hincrbyfloat(KEY, name, total)
                pipe.execute()
        except redis.RedisError:
            with self._lock:
                for name, amount in counts.items():
                    self._counts[name] += amount
                for name, total in sums.items():
                    self._sums[name] += total
            raise


_tally: Tally | None = None
_tally_built = threading.Lock()


def process_tally() -> Tally:
    """This process's tally (built on first use)."""
    global _tally
    with _tally_built:
        if _tally is None:
            _tally = Tally()
        return _tally


def _number(raw: bytes | str) -> float | int:
    try:
        return int(raw)
    except ValueError:
        return float(raw)


def snapshot(connection: redis.Redis) -> dict[str, Any]:
    """Every counter, read in one round trip, as rows of labels and a value (for `/metrics` and
    the dashboard). The histogram's buckets are cumulative, `+Inf` equal to its count."""
    raw = connection.hgetall(KEY)
    rows: dict[str, list[dict[str, Any]]] = {EVENTS: [], TRANSITIONS: [], REVOR_REQUESTS: [], WRITEBACK: []}
    names = {EVENTS: ("source", "outcome"), TRANSITIONS: ("status", "rule"),
             REVOR_REQUESTS: ("endpoint", "status"), WRITEBACK: ("destination", "outcome")}
    seconds: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        try:
            family, *labels = json.loads(name)
            number = _number(value)
        except (ValueError, TypeError):
            continue  # not ours: never let a stray field break /metrics
        if family in names and len(labels) == 2:
            rows[family].append({**dict(zip(names[family], labels, strict=True)), "value": number})
        elif family in (REVOR_BUCKET, REVOR_SUM, REVOR_COUNT) and labels:
            entry = seconds.setdefault(labels[0], {"endpoint": labels[0], "per_bucket": {}, "sum": 0.0, "count": 0})
            if family == REVOR_BUCKET and len(labels) == 2:
                entry["per_bucket"][labels[1]] = number
            elif family == REVOR_SUM:
                entry["sum"] = float(number)
            else:
                entry["count"] = int(number)
    histograms = []
    for endpoint in sorted(seconds):
        entry = seconds[endpoint]
        running, buckets = 0, {}
        for bound in BUCKETS:
            running += int(entry["per_bucket"].get(bucket_label(bound), 0))
            buckets[bucket_label(bound)] = running
        buckets["+Inf"] = max(entry["count"], running)
        histograms.append({"endpoint": endpoint, "buckets": buckets, "sum": entry["sum"],
                           "count": buckets["+Inf"]})
    result: dict[str, Any] = {family: sorted(found, key=lambda row: [str(v) for v in row.values()])
                              for family, found in rows.items()}
    result["revor_request_seconds"] = histograms
    return result
