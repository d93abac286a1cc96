"""A real import: the file's rows stored as events, through the webhooks' own store, exactly once.

Each row becomes an event (rows.py) stored with inbound/store.py `store()`: durable, deduplicated
by its event key, made due for the workers, in batches of BATCH_SIZE events (one EVALSHA each).
After each batch one transaction moves the run's counters and its checkpoint (the last line
whose row is stored or reported) together (runs.py). So:

- a rerun (after Ctrl-C, SIGKILL, a crash) reads on from the checkpoint and counts every row once;
- rows of a batch stored just before the process died, whose checkpoint was never written, are
  stored again on the rerun: the store finds them (same event ids) and processes nothing twice;
  the runner recognises them as its own (the stored event's `_extra.import` names this run and
  line) and counts them `stored`, not `duplicate`; the same row twice in the file (the same
  event as an earlier line of this run) is `repeated`: imported once;
- a row already stored by another import or a webhook (the same event id) is a `duplicate`: it
  is never processed again, and the dispatch ids derived from the event id never send twice.

Webhooks first: the rows' events are due in the scheduler's bulk lane (`rb:due:bulk`,
scheduler/units.py), which a worker claims from only with room left after everything due in
`rb:due`, so a webhook arriving during an import waits for the units in hand, not behind the
list (benchmarks/imports.py --latency measures it). Backpressure: the importer keeps at most
`max_pending` of its own events stored and not yet processed, read from the run's counters
(`stored` less what the workers counted), which bounds what the list holds in Redis at once. The
run's counters are this import's alone; the size of a due set would also hold other units, and
would let another busy source stall the import.

Redis going away (a restart, a failover) makes the runner wait, probing with back-off, then go
on with the same batch: storing it again is safe for the reasons above. Nothing is lost and
nothing counted twice; the operator sees one line when it goes and one when it is back.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from rq import Queue

from integration.imports import runs
from integration.inbound.normalize import InboundEvent
from integration.inbound.store import StorageFull, event_key, store
from integration.scheduler import units
from integration.scheduler.outage import REDIS_DOWN, Outage

log = logging.getLogger(__name__)

BATCH_SIZE = 200  # events per store call (one EVALSHA)
MAX_BAD_PER_BATCH = 1000  # a file of nothing but bad rows still checkpoints as it goes
DEFAULT_MAX_PENDING = 1000
WAIT_POLL = 0.1  # seconds between reads of the counters while waiting for the workers
STALL_NOTICE = 15.0  # seconds without progress before saying the import waits for the workers


class OptionMismatch(Exception):
    """The run exists with other options (another --type, --id-column, --format)."""


@dataclass
class ImportOptions:
    path: Path
    source: str  # csv:<name>
    event_type: str | None = None  # None: contact.imported (deal.imported for a deals export)
    fmt: str | None = None  # hubspot | salesforce | pipedrive | plain; None: detected
    id_column: str | None = None  # None: the format's record id column
    max_pending: int = DEFAULT_MAX_PENDING  # 0: no limit
    batch_size: int = BATCH_SIZE
    max_stored_bytes: int = 0  # the source's ceiling (INBOUND_MAX_STORED_BYTES); 0: none
    retention_seconds: int = 30 * 86400  # a done run's keys expire with its dispatches
    wait: bool = True  # False (--no-wait): return once every row is stored; the workers go on alone


@dataclass
class Prepared:
    """The file as the import reads it: decided before anything is written."""

    options: ImportOptions
    table: Any  # reader.Table
    hmap: Any  # formats.HeaderMap
    id_column: str | None
    sha256: str
    run: str
    type_note: str = ""  # how the type was guessed from the columns (no --type), for the dry run and summary
    notes: list[str] = field(default_factory=list)  # said once the file is read (a report footer skipped)

    @property
    def meta(self) -> dict[str, str]:
        return {"source": self.options.source, "file": self.options.path.name, "sha256": self.sha256,
                "format": self.hmap.format, "encoding": self.table.encoding, "delimiter": self.table.delimiter,
                "type": self.options.event_type, "id_column": self.id_column or ""}

    def events(self, skip_to_line: int = 0) -> Iterator[tuple[int, InboundEvent | None, str | None]]:
        """(line, event, None) per good row, (line, None, reason) per bad one, after `skip_to_line`."""
        from integration.imports import reader, rows

        for item in self._without_footer(self.table.rows(skip_to_line=skip_to_line)):
            if item.line <= skip_to_line:  # the reader skips them already; a checkpoint is a promise
                continue
            if isinstance(item, reader.BadRow):
                yield item.line, None, item.reason
                continue
            try:
                event = rows.row_event(self.options.source, self.options.event_type, item, self.hmap,
                                       id_column=self.id_column)
            except rows.RowError as error:
                yield item.line, None, str(error)
                continue
            event.extra = {**event.extra, "import": {"run": self.run, "line": item.line}}
            yield item.line, event, None


    def _without_footer(self, items: Iterator[Any]) -> Iterator[Any]:
        """The rows, less a Salesforce report's footer: a report exported as CSV ends with rows
        like "Total", "Copyright (c) 2000-2025 salesforce.com, inc. ...", "Confidential
        Information - Do Not Distribute", "Generated By: ..." (and the company's name). Rows from
        one that starts such a footer on are held (at most FOOTER_ROWS) and, when the file ends
        with a salesforce.com copyright among them, skipped with one note; otherwise they are rows."""
        from integration.imports import reader

        held: list[Any] = []
        for item in items:
            if not held and (isinstance(item, reader.BadRow) or not FOOTER_START.match(_first_cell(item))):
                yield item
                continue
            held.append(item)
            if len(held) > FOOTER_ROWS:
                yield from held
                held = []
        if held and any(isinstance(item, reader.Row) and FOOTER_MARK.search(" ".join(item.fields.values()))
                        for item in held):
            note = (f"lines {held[0].line}-{held[-1].line} are a Salesforce report's footer (Total, Copyright, "
                    "Confidential Information, Generated By): skipped, not rows")
            if note not in self.notes:
                self.notes.append(note)
            return
        yield from held


FOOTER_START = re.compile(r"(total|grand totals?\b.*|copyright \(c\).*|confidential information.*|generated by\b.*)\Z",
                          re.IGNORECASE)
FOOTER_MARK = re.compile(r"copyright \(c\).*salesforce\.com", re.IGNORECASE)
FOOTER_ROWS = 20


def _first_cell(row: Any) -> str:
    return next((value.strip() for value in row.fields.values() if value and value.strip()), "")


def prepare(options: ImportOptions) -> Prepared:
    """Open the file (reader.NotCsv when it is not CSV), map its headers, name its run. No Redis.
    OptionMismatch when an option does not fit the file (an --id-column it does not have)."""
    from integration.imports import formats, reader, rows

    table = reader.open_table(options.path)
    chosen = options.fmt if options.fmt is not None else formats.detect(table.headers)
    try:
        hmap = formats.header_map(table.headers, None if chosen in (None, "plain") else chosen,
                                  id_column=options.id_column)
    except formats.HeaderError as error:
        raise OptionMismatch(str(error)) from None
    note = ""
    if options.event_type is None and hmap.decided_by is not None:
        name = hmap.names[hmap.headers.index(hmap.decided_by)]
        other = "deal.imported" if hmap.object_type == "contact" else "contact.imported"
        note = (f"guessed from the column {hmap.decided_by} ({name}); if the rows are not {hmap.object_type}s, "
                f"pass --type (e.g. --type {other})")
    options.event_type = options.event_type or rows.default_type(hmap)
    sha = runs.file_sha256(options.path)
    return Prepared(options, table, hmap, hmap.id_column, sha, runs.run_id(options.source, sha), note)


@dataclass
class RunResult:
    """How a run call ended: `done` (every row stored and processed), `stored` (every row stored,
    some still wait for the workers: only without `wait`), `interrupted` (stopped on request; the
    checkpoint is saved), `full` (the source's stored-bytes ceiling: `message`) or `cancelled` (the
    run was cancelled: `revor-bridge import cancel`, noticed at the next batch)."""

    status: str
    state: runs.RunState
    message: str = ""
    notes: list[str] = field(default_factory=list)


class Runner:
    """Runs one import. `stop` (set by Ctrl-C, or by the dashboard) ends it after the current
    batch; `on_progress(state)` is called after each batch and while waiting (progress.py);
    `notify(text)` receives the lines an operator must see (Redis away and back, workers idle)."""

    def __init__(self, connection: redis.Redis, queue: Queue, prepared: Prepared, *,
                 stop: threading.Event | None = None, on_progress: Callable[[runs.RunState], None] | None = None,
                 notify: Callable[[str], None] | None = None) -> None:
        self.connection, self.queue, self.prepared = connection, queue, prepared
        self.stop = stop or threading.Event()
        self.on_progress = on_progress or (lambda state: None)
        self.notify = notify or log.warning
        self.outage = Outage(_NotifyLogger(self.notify), "import", first=0.2, cap=5.0)
        self.run_id = prepared.run

    # ---- the whole run ----------------------------------------------------------------------

    def run(self) -> RunResult:
        """Read and store from the checkpoint on, then wait for the workers. Raises runs.Busy
        (another importer holds the run) and OptionMismatch (the run has other options)."""
        try:
            state = self._redis(lambda: runs.begin(self.connection, self.run_id, self.prepared.meta))
            self._check_options(state)
            if state.status == "cancelled":
                return RunResult("cancelled", state)
            if state.status not in ("stored", "done"):
                lock = runs.RunLock(self.connection, self.run_id)
                self._redis(lock.acquire)
                try:
                    result = self._read_and_store(state, lock)
                finally:
                    lock.release()
                if result is not None:
                    return result
                state = self._redis(self._load)
            if not self.prepared.options.wait and state.pending:
                return RunResult("stored", state)
            return self._finish(state)
        except _Stopped:
            return self._interrupted()
        except _Cancelled as cancelled:
            return RunResult("cancelled", cancelled.state)

    def _check_options(self, state: runs.RunState) -> None:
        mine = self.prepared.meta
        for name, option in (("type", "--type"), ("id_column", "--id-column"), ("format", "--format")):
            if state.meta.get(name) and state.meta[name] != mine[name]:
                raise OptionMismatch(f"run {self.run_id} of this file was started with {option} "
                                     f"{state.meta[name] or '(none)'}; run it with the same options to continue it "
                                     f"(this one has {mine[name] or '(none)'})")

    def _read_and_store(self, state: runs.RunState, lock: runs.RunLock) -> RunResult | None:
        size = max(1, min(self.prepared.options.batch_size, self.prepared.options.max_pending or BATCH_SIZE))
        pending = state.pending
        for batch in _batches(self.prepared.events(state.checkpoint), size):
            if self.stop.is_set():
                raise _Stopped
            self._wait_for_room(len(batch.events), pending, lock)
            outcome = self._redis(lambda batch=batch: self._store(batch, lock))
            if isinstance(outcome, RunResult):
                return outcome
            if outcome.status == "cancelled":
                raise _Cancelled(outcome)
            pending = outcome.pending
            self.on_progress(outcome)
        if self.stop.is_set():
            raise _Stopped
        if not self._redis(lambda: runs.set_status(self.connection, self.run_id, "stored")):
            raise _Cancelled(self._redis(self._load))
        return None

    def _finish(self, state: runs.RunState) -> RunResult:
        """Every row is stored: wait until the workers processed them all, then the run is done."""
        stalled_since, last = time.monotonic(), state.processed
        said = False
        while state.pending > 0:
            if self.stop.is_set():
                raise _Stopped
            time.sleep(WAIT_POLL)
            state = self._redis(self._load)
            self.on_progress(state)
            if state.status == "cancelled":
                raise _Cancelled(state)
            if state.processed != last:
                stalled_since, last = time.monotonic(), state.processed
            elif not said and time.monotonic() - stalled_since > STALL_NOTICE:
                self.notify(f"import: {state.pending} stored rows wait for a worker (is `revor-bridge worker` "
                            "running?); waiting")
                said = True
        if state.status == "cancelled":
            raise _Cancelled(state)
        if state.status != "done":
            if not self._redis(lambda: runs.set_status(self.connection, self.run_id, "done",
                                                       retention_seconds=self.prepared.options.retention_seconds)):
                raise _Cancelled(self._redis(self._load))
            state.status = "done"
        self.on_progress(state)
        return RunResult("done", state)

    def _load(self) -> runs.RunState:
        found = runs.load(self.connection, self.run_id)
        if found is None:  # its keys were deleted under it (a FLUSHDB): nothing to go on from
            raise redis.exceptions.ResponseError(f"import run {self.run_id} disappeared from Redis")
        return found

    def _interrupted(self) -> RunResult:
        """Stopped on request: the checkpoint is saved; a run still reading says `interrupted`."""
        state = self.last_state()
        if state.status == "running":
            try:
                runs.set_status(self.connection, self.run_id, "interrupted")
                state.status = "interrupted"
            except REDIS_DOWN:
                pass  # the checkpoint is what counts, and it is saved
        return RunResult("interrupted", state)

    def last_state(self) -> runs.RunState:
        """The run as Redis has it now (a blank one when Redis cannot say): for the summary of a stop."""
        try:
            found = runs.load(self.connection, self.run_id)
        except REDIS_DOWN:
            found = None
        return found or runs.RunState(self.run_id, self.prepared.meta, "running", 0,
                                      dict.fromkeys(runs.COUNTERS, 0), 0.0, 0.0)

    # ---- one batch --------------------------------------------------------------------------

    def _wait_for_room(self, count: int, pending: int, lock: runs.RunLock | None = None) -> None:
        """Wait until this batch keeps the run within max_pending (raises _Stopped when stopped)."""
        limit = self.prepared.options.max_pending
        if not limit or pending + count <= limit:
            return
        stalled_since, last, said = time.monotonic(), pending, False
        while True:
            if self.stop.is_set():
                raise _Stopped
            found = self._redis(self._load)
            if found.status == "cancelled":
                raise _Cancelled(found)
            if found.pending + count <= limit:
                return
            if lock is not None:
                self._redis(lock.keep)
            self.on_progress(found)
            if found.pending != last:
                stalled_since, last = time.monotonic(), found.pending
            elif not said and time.monotonic() - stalled_since > STALL_NOTICE:
                self.notify(f"import: {found.pending} stored rows wait for a worker (is `revor-bridge worker` "
                            f"running?); storing more once fewer than {limit} wait")
                said = True
            time.sleep(WAIT_POLL)

    def _store(self, batch: _Batch, lock: runs.RunLock) -> runs.RunState | RunResult:
        source = self.prepared.options.source
        stored = duplicate = repeated = 0
        if batch.events:
            record = self._record(batch)
            try:
                result = store(self.connection, self.queue, source, batch.events, record,
                               max_stored_bytes=self.prepared.options.max_stored_bytes, due_key=units.BULK)
            except StorageFull as full:
                return RunResult("full", self._interrupted().state, message=(
                    f"{source} reached its ceiling of stored bytes (INBOUND_MAX_STORED_BYTES): {full}; "
                    "nothing of this batch was stored. Raise the ceiling or wait for older events to expire, "
                    "then run the same command again"))
            mine, again = self._own_duplicates(batch, result.outcomes)
            for index, outcome in enumerate(result.outcomes):
                if outcome == "duplicate" and index in again:
                    repeated += 1
                elif outcome == "duplicate" and index not in mine:
                    duplicate += 1
                else:
                    stored += 1
        with self.connection.pipeline(transaction=True) as pipe:
            runs.record_batch(pipe, self.run_id, checkpoint=batch.last_line, read=batch.read, stored=stored,
                              duplicate=duplicate, bad=batch.bad, repeated=repeated)
            lock.renew(pipe)
            pipe.hgetall(runs.run_key(self.run_id))
            raw = pipe.execute()[-1]
        state = runs.state_of(self.run_id, raw)
        assert state is not None
        return state

    def _own_duplicates(self, batch: _Batch, outcomes: list[str]) -> tuple[set[int], set[int]]:
        """Indexes of `duplicate` outcomes that are this run's own rows, stored by an attempt
        whose checkpoint was never written (killed, or Redis gone before the reply); and of those
        that repeat an earlier line of this run (the same row twice in the file)."""
        indexes = [i for i, outcome in enumerate(outcomes) if outcome == "duplicate"]
        if not indexes:
            return set(), set()
        with self.connection.pipeline(transaction=False) as pipe:
            for i in indexes:
                event = batch.events[i].event
                pipe.hget(event_key(event["source"], event["event_id"]), "event")
            bodies = pipe.execute()
        mine, again = set(), set()
        for i, body in zip(indexes, bodies, strict=True):
            try:
                found = runs.import_of(json.loads(body)) if body else None
            except ValueError:
                found = None
            if found == (self.run_id, batch.lines[i]):
                mine.add(i)
            elif found is not None and found[0] == self.run_id:
                again.add(i)
        return mine, again

    def _record(self, batch: _Batch) -> dict[str, Any]:
        """The stored delivery of a batch: the import in place of a request's headers and body."""
        name = self.prepared.options.path.name
        return {"source": self.prepared.options.source, "received_at": time.time(), "method": "IMPORT",
                "path": name, "query": "", "headers": {}, "body": "", "body_encoding": "utf-8",
                "body_note": f"rows of lines {batch.lines[0]}-{batch.lines[-1]} of {name} (import run "
                             f"{self.run_id}); each row is its own event",
                "import": {"run": self.run_id, "file": name, "first_line": batch.lines[0],
                           "last_line": batch.lines[-1]},
                "events": [e.key for e in batch.events], "skipped": []}

    # ---- Redis away -------------------------------------------------------------------------

    def _redis(self, call: Callable[[], Any]) -> Any:
        """`call()`, waiting out a Redis outage and calling it again (raises _Stopped when stopped
        meanwhile: Ctrl-C during an outage ends the import; its checkpoint is saved)."""
        while True:
            try:
                result = call()
            except REDIS_DOWN as error:
                if not self.outage.wait(error, self.connection.ping, self.stop.is_set):
                    raise _Stopped from None
                continue
            self.outage.up()
            return result


class _Stopped(Exception):
    """The stop event was set: end the run where it stands."""


class _Cancelled(Exception):
    """The run was cancelled (runs.cancel): nothing more is stored."""

    def __init__(self, state: runs.RunState) -> None:
        super().__init__(state.run)
        self.state = state


class _NotifyLogger(logging.Logger):
    """Outage's lines (Redis unreachable, Redis is back) to the operator's terminal."""

    def __init__(self, notify: Callable[[str], None]) -> None:
        super().__init__("revor_bridge.import")
        self._notify = notify

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:  # type: ignore[override]
        self._notify(str(msg) % args if args else str(msg))


@dataclass
class _Batch:
    events: list[InboundEvent] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # per event, its line
    bad: list[tuple[int, str]] = field(default_factory=list)
    read: int = 0
    last_line: int = 0


def _batches(items: Iterator[tuple[int, InboundEvent | None, str | None]], size: int) -> Iterator[_Batch]:
    batch = _Batch()
    for line, event, reason in items:
        batch.read += 1
        batch.last_line = line
        if event is None:
            batch.bad.append((line, reason or "unreadable row"))
        else:
            batch.events.append(event)
            batch.lines.append(line)
        if len(batch.events) >= size or len(batch.bad) >= MAX_BAD_PER_BATCH:
            yield batch
            batch = _Batch()
    if batch.read:
        yield batch
