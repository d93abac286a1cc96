"""The result CSV of an import: what became of every row, by the file's line numbers.

Columns: line, event_id, dispatch_id, rule, recipient (the dispatch's address, phone or profile
URL, as the dispatch has it), status, reason. One line per dispatch a row made (a row that
matched two rules has two), one for a row without any: `bad` (never stored, with the reader's or
the row's reason), `no_match`, `duplicate` (the event was stored already: by an earlier import
or a webhook; its dispatches are the earlier ones, listed with it), `repeated` (the same row as
an earlier line of this file: imported once, as that line), `stored` (not processed yet),
`cancelled` (its import was cancelled before a worker took it, or before it was stored) or the
event's own outcome (`skipped`, `failed`) with its reason. A dispatch line has the dispatch's
current status and reason, as Revor reported it so far.

Made by reading the file again (rows are deterministic: the same row gives the same event id)
and looking the events and dispatches up CHUNK rows at a time in one pipeline each, so a file of
1,000,000 rows is written in bounded memory.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from integration.dispatches import state
from integration.imports import runs
from integration.inbound.store import event_key

COLUMNS = ("line", "event_id", "dispatch_id", "rule", "recipient", "status", "reason")
CHUNK = 500
# A cell Excel, LibreOffice or Sheets would run as a formula (`=HYPERLINK(...)`, `+cmd|...`,
# `@SUM(...)`): people open the result in a spreadsheet, and its event ids and reasons come from
# the imported file, i.e. from whoever filled in the CRM. Such a cell is written with a leading
# `'` (shown as text); a plain number (`-5`, `+33`) is left as it is.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?[0-9]+(?:[.,][0-9]+)?")


def safe_cell(value: Any) -> Any:
    """`value` as a spreadsheet shows it and never runs it (see _FORMULA_START)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def safe_row(row: tuple[Any, ...] | list[Any]) -> tuple[Any, ...]:
    """A line of a CSV file people open in a spreadsheet: every cell through safe_cell."""
    return tuple(safe_cell(value) for value in row)


def default_path(source_file: Path) -> Path:
    """`<file stem>.result.csv` next to the input."""
    return source_file.with_name(f"{source_file.stem}.result.csv")


def write(connection: redis.Redis, prepared: Any, out: Path) -> Counter[str]:
    """Write the result CSV of `prepared`'s run to `out` (via a temporary file, renamed at the
    end); returns how many lines of each status it wrote."""
    counts: Counter[str] = Counter()
    partial = out.with_name(out.name + ".part")
    try:
        with partial.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            for row in lines(connection, prepared):
                counts[row[COLUMNS.index("status")]] += 1
                writer.writerow(safe_row(row))
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)  # a write that failed (disk full, Redis gone) leaves nothing half done
    return counts


def lines(connection: redis.Redis, prepared: Any) -> Iterator[tuple[Any, ...]]:
    """The result's lines in file order (see the module docstring)."""
    found = runs.load(connection, prepared.run)
    cancelled = found is not None and found.status == "cancelled"
    chunk: list[tuple[int, Any, str | None]] = []
    for item in prepared.events(0):
        chunk.append(item)
        if len(chunk) >= CHUNK:
            yield from _chunk(connection, prepared.run, chunk, cancelled)
            chunk = []
    if chunk:
        yield from _chunk(connection, prepared.run, chunk, cancelled)


def _chunk(connection: redis.Redis, run: str, chunk: list[tuple[int, Any, str | None]],
           cancelled: bool = False) -> Iterator[tuple[Any, ...]]:
    with connection.pipeline(transaction=False) as pipe:
        for _, event, _ in chunk:
            if event is not None:
                pipe.hmget(event_key(event.event["source"], event.event["event_id"]),
                           ["status", "dispatches", "event", "reason"])
        found = iter(pipe.execute())
    looked: list[tuple[int, Any, str | None, list[Any] | None]] = []
    wanted: list[str] = []
    for line, event, reason in chunk:
        stored = next(found) if event is not None else None
        looked.append((line, event, reason, stored))
        if stored and stored[1]:
            wanted += json.loads(stored[1])
    records = dict(zip(wanted, (record for record, _ in state.load_many(connection, wanted)), strict=True)) \
        if wanted else {}
    for row in _outcomes(looked, records, run, cancelled):
        record = records.get(row[2]) if row[2] else None
        yield (*row[:3], (record or {}).get("rule") or "", recipient_of(record), *row[3:])


def _outcomes(looked: list[tuple[int, Any, str | None, list[Any] | None]], records: dict[str, Any], run: str,
              cancelled: bool) -> Iterator[tuple[Any, ...]]:
    """(line, event_id, dispatch_id, status, reason) per result line of a chunk."""
    for line, event, reason, stored in looked:
        if event is None:
            yield line, "", "", "bad", reason or ""
            continue
        event_id = event.event["event_id"]
        if not stored or stored[0] is None:
            if cancelled:
                yield line, event_id, "", "cancelled", f"{runs.CANCELLED_REASON} before this row was stored"
            else:
                yield line, event_id, "", "unknown", "not in Redis: not stored, or expired since"
            continue
        status = stored[0].decode()
        dispatch_ids = json.loads(stored[1]) if stored[1] else []
        own = _origin(stored[2])
        if own != (run, line):
            why = _earlier(own, run)
            kind = "repeated" if own is not None and own[0] == run else "duplicate"
            if not dispatch_ids:
                yield line, event_id, "", kind, f"{why} (no dispatch)"
            for dispatch_id in dispatch_ids:
                record = records.get(dispatch_id) or {}
                yield line, event_id, dispatch_id, kind, f"{why}: its dispatch is {record.get('status', 'gone')}"
            continue
        if status == "received" and cancelled:
            yield line, event_id, "", "cancelled", f"{runs.CANCELLED_REASON}: a worker skips it"
        elif status == "received":
            yield line, event_id, "", "stored", "not processed yet"
        elif status == "skipped" and stored[3] == runs.CANCELLED_REASON.encode():
            yield line, event_id, "", "cancelled", runs.CANCELLED_REASON
        elif status in ("skipped", "failed"):
            yield line, event_id, "", status, (stored[3] or b"").decode()
        elif not dispatch_ids:
            yield line, event_id, "", "no_match", (stored[3] or b"").decode() or "no rule matched"
        for dispatch_id in dispatch_ids if status == "processed" else ():
            record = records.get(dispatch_id)
            if record is None:
                yield line, event_id, dispatch_id, "unknown", "the dispatch expired"
            else:
                yield line, event_id, dispatch_id, record["status"], record.get("reason") or ""


def recipient_of(record: dict[str, Any] | None) -> str:
    """The dispatch's recipient as it has it: its address, phone or profile URL."""
    recipient = (record or {}).get("recipient") or {}
    if not isinstance(recipient, dict):
        return str(recipient)
    return next((str(recipient[k]) for k in ("address", "phone", "profile_url") if recipient.get(k)), "")


def _origin(body: bytes | None) -> tuple[str, int] | None:
    try:
        return runs.import_of(json.loads(body)) if body else None
    except ValueError:
        return None


def _earlier(origin: tuple[str, int] | None, run: str) -> str:
    if origin is None:
        return "already received from a webhook or another sender"
    if origin[0] == run:
        return f"repeated in this file: imported once, as line {origin[1]}"
    return f"already imported by an earlier run (run {origin[0]}, line {origin[1]}), not sent again"
