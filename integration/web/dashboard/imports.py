"""Imports: upload a CSV export, read its dry run, confirm, watch it go, download the result CSV.

The page drives the same code as `revor-bridge import` (integration/imports/): `runner.prepare`
opens the file, `dryrun.plan` says what the import would do, `runner.Runner` stores the rows
through the webhooks' store with a checkpoint, `result.lines` makes the result CSV. An upload is
imported exactly as the command imports a file: the same run id (its source and its content), the
same exactly-once path, and a run stopped here continues from its checkpoint like the command's.

Files: an upload is written to BRIDGE_DATA_DIR/imports/ while the form is read (never held in
memory), hashed on the way, then kept as `imports/<run>/<its name>` beside `options.json` (the
form's source, type, format and id column) and, once planned, `dryrun.json`. The browser's limit is
UPLOAD_MAX_BYTES; a bigger file goes through the command line, which streams any size.

Background work: the dry run and the import run in threads of the web process, at most one of each
per run in a process (`Jobs`). Across processes the run's lock (runs.RunLock) keeps one importer per
run, and the store's dedupe makes even a race store and send nothing twice. A web process that dies
mid-import leaves its run `running` with no live lock holder: the page shows it as interrupted, with
a Continue button that resumes from the checkpoint (the same file, the same run).
"""

from __future__ import annotations

import atexit
import csv
import hashlib
import io
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, g, redirect, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import FileStorage
from werkzeug.utils import secure_filename

from integration.dispatches import state as dispatch_state
from integration.imports import dryrun, formats, progress, reader, result, runner, runs
from integration.rules import fingerprint
from integration.web.dashboard.blueprint import dashboard, not_found, page, redis_connection
from integration.web.dashboard.listing import iso
from schemas.events import EVENT_TYPE, SOURCE_PATTERN

log = logging.getLogger(__name__)

UPLOAD_MAX_BYTES = 50 * 1024 * 1024  # the browser's limit; `revor-bridge import` takes any size
FORM_SLACK = 64 * 1024  # the form's other fields and the multipart headers around the file
MAX_DAYS = 7.0  # a longer projected schedule needs the "I understand" box (the command's --yes)
RECENT_RUNS = 20
BAD_PAGE = 50
DISPATCH_PAGE = 50
STALE_SECONDS = 86400  # an upload never confirmed (or whose run expired) is removed after a day
SPOOL_PREFIX = "upload-"
RUN_ID = re.compile(r"^imp_[0-9a-f]{20}$")
FORMAT_CHOICES = {"": "Detect", **{name: fmt.title for name, fmt in formats.FORMATS.items()},
                  "plain": "Plain (contact.email-style headers)"}
OPTIONS_FILE, PLAN_FILE, NOTE_FILE = "options.json", "dryrun.json", "stopped.txt"

NOTICES = {
    "started": ("Import started: its rows are stored and sent below as the workers take them.", "ok"),
    "continued": ("Continuing from the checkpoint: rows stored before are neither stored nor sent again.", "ok"),
    "running": ("This import is running already: nothing was started twice.", "warn"),
    "done": ("This file was imported already: nothing is sent again.", "warn"),
    "needs_ack": ("The schedule is longer than 7 days: tick the box saying you understand how long it takes, "
                  "then confirm again.", "error"),
    "not_planned": ("The dry run is not ready yet: wait for it, then confirm.", "error"),
    "cancelled": ("Import cancelled: no more rows are stored; the workers skip its rows not processed yet, and its "
                  "dispatches Revor does not have yet end cancelled. Those Revor accepted already run as scheduled: "
                  "Revor's API v1 cannot cancel a task.", "ok"),
    "rules": ("Not started: the workers do not run the rules this page planned with (see the line above the "
              "button).", "error"),
    "file_gone": ("The uploaded file is no longer on this server (the web process restarted on a fresh disk): "
                  "upload the same file with the same source again to continue this run.", "error"),
}


# ---- background work: one thread per run and kind in this process ------------------------------------


class Jobs:
    """The web process's import threads: `plan:<run>` (a dry run) and `run:<run>` (an import).
    A second start of a live one does nothing; at exit, imports stop after their batch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._stops: dict[str, threading.Event] = {}
        self.planned: dict[str, int] = {}  # rows planned so far, per run being planned
        self.errors: dict[str, str] = {}  # the last dry run that failed, per run
        self._exit_hooked = False

    def running(self, key: str) -> bool:
        with self._lock:
            thread = self._threads.get(key)
            return thread is not None and thread.is_alive()

    def start(self, key: str, target: Callable[[threading.Event], None]) -> bool:
        """Start `target(stop)` in a thread unless one runs for `key`; False when one does."""
        with self._lock:
            for name in [k for k, t in self._threads.items() if not t.is_alive()]:
                del self._threads[name]  # finished ones: the registry stays as small as the work
                self._stops.pop(name, None)
            if key in self._threads:
                return False
            stop = threading.Event()
            thread = threading.Thread(target=target, args=(stop,), name=f"revor-bridge-{key}", daemon=True)
            self._threads[key], self._stops[key] = thread, stop
            if not self._exit_hooked:
                atexit.register(self.stop_all)
                self._exit_hooked = True
            thread.start()
            return True

    def stop(self, key: str) -> None:
        """Ask the thread of `key` (if any) to stop after its batch."""
        with self._lock:
            stop = self._stops.get(key)
        if stop is not None:
            stop.set()

    def stop_all(self, timeout: float = 10.0) -> None:
        """The process is ending (a deploy, a restart): each import finishes its batch and saves its
        checkpoint, so its run shows as interrupted and Continue resumes it."""
        with self._lock:
            threads = list(self._threads.values())
            for stop in self._stops.values():
                stop.set()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _jobs() -> Jobs:
    return current_app.extensions.setdefault("revor_bridge.import_jobs", Jobs())


def _folder() -> Path:
    return Path(current_app.extensions["revor_bridge.settings"].data_dir) / "imports"


# ---- the upload: written to disk as it arrives ---------------------------------------------------------


class Spool:
    """A file part as werkzeug's form parser writes it: to disk in the imports folder, hashed and
    counted. Bytes past `cap` are read and dropped, so the answer can say the file is too big
    (and the browser shows it) instead of the connection being cut mid-upload."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path, self.cap = path, cap
        self.handle = path.open("w+b")
        self.digest = hashlib.sha256()
        self.size = 0
        self.kept = False

    @property
    def too_big(self) -> bool:
        return self.size > self.cap

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size <= self.cap:
            self.digest.update(data)
            self.handle.write(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        return self.handle.read(size)

    def readline(self, size: int = -1) -> bytes:
        return self.handle.readline(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()

    def discard(self) -> None:
        self.handle.close()
        self.path.unlink(missing_ok=True)


@dashboard.before_app_request
def _stream_uploads() -> None:
    """Runs before the dashboard's gate reads the form for its CSRF check (app-wide hooks come
    first): the upload takes a body bigger than the app's 512 KB, and its file part is written to
    the imports folder as it arrives rather than to memory or a temporary file elsewhere."""
    if request.endpoint != "dashboard.imports_upload" or request.method != "POST":
        return
    request.max_content_length = UPLOAD_MAX_BYTES + FORM_SLACK
    folder = _folder()
    spools: list[Spool] = []
    g.import_spools = spools

    def spool_factory(total_content_length: int | None, content_type: str | None, filename: str | None = None,
                      content_length: int | None = None) -> Spool:
        folder.mkdir(parents=True, exist_ok=True)
        spool = Spool(folder / f"{SPOOL_PREFIX}{secrets.token_hex(8)}.part", UPLOAD_MAX_BYTES)
        spools.append(spool)
        return spool

    request._get_file_stream = spool_factory  # type: ignore[method-assign]  # werkzeug's stream factory hook


@dashboard.teardown_request
def _drop_spools(exc: BaseException | None) -> None:
    """File parts not kept as an import (a refused form, a second file field) are removed."""
    for spool in g.pop("import_spools", []):
        if not spool.kept:
            spool.discard()


def too_large_upload() -> ResponseReturnValue:
    """A body over the limit by its Content-Length, refused before it is read (the dashboard's 413
    handler, in rules.py, calls this for the upload): the form again, saying what to do instead."""
    return _list_page(form_error=_too_big_text(), status=413)


def _too_big_text() -> str:
    return (f"File: over the browser's limit of {UPLOAD_MAX_BYTES // (1024 * 1024)} MB. Import a bigger file "
            "with the command line, which reads any size as a stream: revor-bridge import FILE --source "
            "csv:<name> (see the README's Importing a list).")


# ---- the list and the upload form ----------------------------------------------------------------------


def _csv_sources() -> list[str]:
    ruleset = current_app.extensions.get("revor_bridge.rules")
    return sorted({source for rule in (ruleset.rules if ruleset else []) for source in rule.when.get("source", [])
                   if source.startswith("csv:")})


def _holder_alive(holder: bytes | None) -> bool:
    """A lock holder that still runs: any other host's (its lock lapses on its own), or a live
    process of this host."""
    return holder is not None and not runs._dead_here(holder.decode())  # noqa: SLF001 - the lock's own test


def shown_status(found: runs.RunState, running_here: bool, holder: bytes | None) -> str:
    """`interrupted` for a run still marked running that nobody runs (its process died)."""
    if found.status == "running" and not running_here and not _holder_alive(holder):
        return "interrupted"
    return found.status


def _list_page(form_error: str | None = None, status: int = 200, form: dict[str, str] | None = None,
               ) -> ResponseReturnValue:
    connection = redis_connection()
    recent = runs.recent(connection, RECENT_RUNS)
    with connection.pipeline(transaction=False) as pipe:
        for found in recent:
            pipe.get(runs.lock_key(found.run))
        holders = pipe.execute()
    jobs = _jobs()
    items = [{"run": found.run, "file": found.meta["file"], "source": found.meta["source"], "counts": found.counts,
              "status": shown_status(found, jobs.running(f"run:{found.run}"), holder),
              "started": iso(found.started_at)} for found, holder in zip(recent, holders, strict=True)]
    sources = _csv_sources()
    values = form or {"source": sources[0] if sources else "", "format": "", "type": "", "id_column": ""}
    return page("dashboard/imports.html", items=items, sources=sources, formats=FORMAT_CHOICES, form=values,
                form_error=form_error, max_mb=UPLOAD_MAX_BYTES // (1024 * 1024)), status


@dashboard.get("/imports")
def imports() -> ResponseReturnValue:
    return _list_page()


class FormError(ValueError):
    """A field of the upload form, and what was expected."""


def _options_from(form: dict[str, str]) -> dict[str, str | None]:
    source = form["source"]
    if not re.match(SOURCE_PATTERN, source) or not source.startswith("csv:"):
        raise FormError("Source: expected csv:<name>, the name of a-z, 0-9, _ and - (at most 64), "
                        "the source the rules select with when.source")
    if form["type"] and not EVENT_TYPE.regex.match(form["type"]):
        raise FormError(f"Type: {EVENT_TYPE.error}")
    if form["format"] not in FORMAT_CHOICES:
        raise FormError("Format: choose one from the list")
    if len(form["id_column"]) > 200:
        raise FormError("Id column: a column name of at most 200 characters")
    return {"source": source, "type": form["type"] or None, "format": form["format"] or None,
            "id_column": form["id_column"] or None}


@dashboard.post("/imports")
def imports_upload() -> ResponseReturnValue:
    form = {name: (request.form.get(name) or "").strip() for name in ("source", "type", "format", "id_column")}
    upload = request.files.get("file")
    spool = upload.stream if isinstance(upload, FileStorage) and isinstance(upload.stream, Spool) else None
    if spool is None or not upload or not upload.filename:
        return _list_page("File: choose a CSV file to upload.", 400, form)
    if spool.too_big:
        return _list_page(_too_big_text(), 413, form)
    try:
        chosen = _options_from(form)
    except FormError as error:
        return _list_page(str(error), 400, form)
    run = runs.run_id(str(chosen["source"]), spool.digest.hexdigest())
    folder = _folder()
    _sweep(folder, redis_connection())
    place = folder / run
    place.mkdir(parents=True, exist_ok=True)
    path, new = _keep(spool, place, secure_filename(upload.filename) or "upload.csv")
    try:
        prepared = runner.prepare(_import_options(path, chosen))
    except (reader.NotCsv, runner.OptionMismatch, OSError) as error:
        if new:
            shutil.rmtree(place, ignore_errors=True)
        text = str(error) if not isinstance(error, OSError) else f"cannot read the file: {error.strerror or error}"
        return _list_page(f"{upload.filename}: {text}", 400, form)
    found = runs.load(redis_connection(), run)
    mismatch = _option_mismatch(found, prepared) if found is not None else None
    if mismatch:
        if new:
            shutil.rmtree(place, ignore_errors=True)
        return _list_page(mismatch, 400, form)
    if _read_json(place / OPTIONS_FILE) != chosen:
        (place / PLAN_FILE).unlink(missing_ok=True)  # planned with other options
        _write_json(place / OPTIONS_FILE, chosen)
    if found is None:
        _start_plan(run, place)
    # A run already started (here, by the command, or on a server that lost the file) goes on from its page.
    return redirect(url_for("dashboard.imports_run", run=run))


def _keep(spool: Spool, place: Path, name: str) -> tuple[Path, bool]:
    """The run's file: the one kept from an earlier upload of the same content, else this one."""
    existing = [p for p in place.iterdir() if p.is_file() and p.name not in (OPTIONS_FILE, PLAN_FILE, NOTE_FILE)]
    spool.close()
    if existing:
        spool.discard()
        spool.kept = True
        return existing[0], False
    path = place / name
    os.replace(spool.path, path)
    spool.kept = True
    return path, True


def _option_mismatch(found: runs.RunState, prepared: runner.Prepared) -> str | None:
    mine = prepared.meta
    for name, label in (("type", "type"), ("id_column", "id column"), ("format", "format")):
        if found.meta.get(name) and found.meta[name] != mine[name]:
            return (f"This file was imported before as run {found.run} with {label} {found.meta[name]}; upload it "
                    f"with the same {label} to continue that run (this upload has {mine[name] or '(none)'}).")
    return None


def _sweep(folder: Path, connection: Any, now: float | None = None) -> None:
    """Uploads never confirmed and runs whose keys expired leave the disk a day later; a part
    file of an upload cut off midway, an hour later."""
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        try:
            age = now - entry.stat().st_mtime
            if entry.is_file() and entry.name.startswith(SPOOL_PREFIX) and age > 3600:
                os.unlink(entry.path)
            elif entry.is_dir() and RUN_ID.match(entry.name) and age > STALE_SECONDS \
                    and now - _mtime(Path(entry.path) / OPTIONS_FILE, now) > STALE_SECONDS \
                    and not connection.exists(runs.run_key(entry.name)):
                shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            continue


def _mtime(path: Path, default: float) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return default


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, value: Any) -> None:
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    os.replace(partial, path)


def _import_options(path: Path, chosen: dict[str, Any]) -> runner.ImportOptions:
    settings = current_app.extensions["revor_bridge.settings"]
    return runner.ImportOptions(path=path, source=chosen["source"], event_type=chosen.get("type"),
                                fmt=chosen.get("format"), id_column=chosen.get("id_column"),
                                max_stored_bytes=settings.inbound_max_stored_bytes,
                                retention_seconds=settings.dispatch_retention_seconds)


def _stored_upload(run: str) -> tuple[Path, dict[str, Any]] | None:
    """The run's uploaded file and its options, when this server has them."""
    place = _folder() / run
    chosen = _read_json(place / OPTIONS_FILE)
    if not isinstance(chosen, dict):
        return None
    try:
        files = [p for p in place.iterdir() if p.is_file() and p.name not in (OPTIONS_FILE, PLAN_FILE, NOTE_FILE)
                 and not p.name.endswith(".part")]
    except OSError:
        return None
    return (files[0], chosen) if files else None


# ---- the dry run, in the background ------------------------------------------------------------------


def _start_plan(run: str, place: Path) -> None:
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    jobs = _jobs()
    upload = _stored_upload(run)
    if upload is None:
        return
    options = _import_options(*upload)
    connection, ruleset = redis_connection(), app.extensions.get("revor_bridge.rules")

    def plan(stop: threading.Event) -> None:
        jobs.errors.pop(run, None)
        try:
            planned = dryrun.plan(runner.prepare(options), ruleset=ruleset, connection=connection,
                                  on_row=lambda count: jobs.planned.__setitem__(run, count))
            _write_json(place / PLAN_FILE, {"plan": planned.as_dict(), "planned_at": time.time(),
                                            "refusal": planned.refusal(MAX_DAYS)})
        except Exception as error:  # shown on the page; a reload plans again
            log.exception("import %s: the dry run failed", run)
            jobs.errors[run] = f"{type(error).__name__}: {error}"
        finally:
            jobs.planned.pop(run, None)

    jobs.start(f"plan:{run}", plan)


def _plan_view(saved: dict[str, Any]) -> dict[str, Any]:
    """The dry run as the page shows it: verdict columns, reasons, pretty bodies, the longest schedule."""
    plan = saved["plan"]
    verdicts = [(key, label) for key, label in dryrun.VERDICT_LABELS.items()
                if key == dryrun.WOULD_SEND or any(rule["counts"].get(key) for rule in plan["rules"])]
    examples = []
    for example in plan["examples"]:
        try:
            body = json.dumps(json.loads(example["body"]), indent=2, ensure_ascii=False)
        except ValueError:
            body = example["body"]
        examples.append({**example, "pretty": body})
    longest = max(plan["schedule"], key=lambda bucket: bucket["seconds"], default=None)
    return {"plan": plan, "verdicts": verdicts, "examples": examples, "longest": longest,
            "needs_ack": bool(saved.get("refusal")), "planned_at": iso(saved.get("planned_at")),
            "days": round(longest["days"]) if longest else 0,
            "lists": [(title, plan[key]) for title, key in (("Bad rows (not imported)", "bad"),
                                                            ("Repeated in this file (imported once)",
                                                             "duplicates_in_file"),
                                                            ("Already imported by an earlier run (not sent again)",
                                                             "already_stored")) if plan[key]["count"]]}


# ---- one run: the dry run and Confirm, or its progress and result ---------------------------------------


def _notice() -> dict[str, str]:
    text, kind = NOTICES.get(request.args.get("notice") or "", (None, None))
    return {"notice": text, "notice_kind": kind} if text else {}


def _number(name: str) -> int:
    try:
        return max(0, min(int(request.args.get(name) or 0), 10**9))
    except ValueError:
        return 0


@dashboard.get("/imports/<run>")
def imports_run(run: str) -> ResponseReturnValue:
    if not RUN_ID.match(run):
        not_found("Import run")
    connection = redis_connection()
    jobs = _jobs()
    found = runs.load(connection, run)
    upload = _stored_upload(run)
    if found is None:
        if upload is None:
            not_found("Import run")
        path, chosen = upload
        saved = _read_json(path.parent / PLAN_FILE)
        if not isinstance(saved, dict) and not jobs.running(f"plan:{run}"):
            _start_plan(run, path.parent)
        return page("dashboard/import_run.html", run=run, found=None, file=path.name, chosen=chosen,
                    rules_check=_rules_check(connection), planning=not isinstance(saved, dict),
                    planned=jobs.planned.get(run),
                    plan_error=jobs.errors.get(run), max_days=MAX_DAYS,
                    **(_plan_view(saved) if isinstance(saved, dict) else {}), **_notice())
    running_here = jobs.running(f"run:{run}")
    status = shown_status(found, running_here, connection.get(runs.lock_key(run)))
    active = status in ("running", "stored")
    meter = progress.Progress(dict, total=progress.estimate_rows(upload[0]) if upload else None)
    meter.samples.append((found.started_at, 0))  # the page's rate: rows finished since the run started
    figures = meter.figures(found.as_dict(), time.time() if active else max(found.updated_at, found.started_at + 1))
    bad_start = _number("bad")
    after = _number("after")
    listed = runs.dispatch_page(connection, run, after, DISPATCH_PAGE)
    records = dispatch_state.load_many(connection, [dispatch_id for dispatch_id, _ in listed]) if listed else []
    note = (upload[0].parent / NOTE_FILE) if upload else None
    return page("dashboard/import_run.html", run=run, found=found, status=status, active=active, figures=figures,
                rules_check=_rules_check(connection) if status in ("running", "interrupted") else None,
                line=meter.line(figures), file=found.meta["file"], has_file=upload is not None,
                can_continue=upload is not None and not running_here and status in ("interrupted", "stored"),
                stopped=note.read_text(encoding="utf-8") if note and note.exists() and status == "interrupted" else "",
                bad=runs.bad_rows(connection, run, bad_start, BAD_PAGE), bad_start=bad_start, bad_page=BAD_PAGE,
                dispatches=[{"id": dispatch_id, "line": line, "status": (record or {}).get("status", "expired"),
                             "reason": (record or {}).get("reason") or ""}
                            for (dispatch_id, line), (record, _) in zip(listed, records, strict=True)],
                after=after, next_after=listed[-1][1] if len(listed) >= DISPATCH_PAGE else None,
                started=iso(found.started_at), updated=iso(found.updated_at), **_notice())


@dashboard.post("/imports/<run>/start")
def imports_start(run: str) -> ResponseReturnValue:
    """Confirm (a planned upload) or Continue (an interrupted run): one importer thread per run."""
    if not RUN_ID.match(run):
        not_found("Import run")
    connection = redis_connection()
    jobs = _jobs()
    upload = _stored_upload(run)
    found = runs.load(connection, run)
    if upload is None:
        if found is None:
            not_found("Import run")
        return _back(run, "file_gone")
    if found is not None and found.status == "done":
        return _back(run, "done")
    if jobs.running(f"run:{run}") or (found is not None and found.status == "running"
                                      and _holder_alive(connection.get(runs.lock_key(run)))):
        return _back(run, "running")
    if _rules_check(connection).refusal:
        return _back(run, "rules")
    path, chosen = upload
    if found is None:
        saved = _read_json(path.parent / PLAN_FILE)
        if not isinstance(saved, dict):
            return _back(run, "not_planned")
        if saved.get("refusal") and request.form.get("understand") != "yes":
            return _back(run, "needs_ack")
    (path.parent / NOTE_FILE).unlink(missing_ok=True)
    prepared = runner.prepare(_import_options(path, chosen))
    queue = current_app.extensions["revor_bridge.queue"]

    def work(stop: threading.Event) -> None:
        _run_import(connection, queue, prepared, stop, path.parent / NOTE_FILE)

    started = jobs.start(f"run:{run}", work)
    return _back(run, ("continued" if found is not None else "started") if started else "running")


@dashboard.post("/imports/<run>/cancel")
def imports_cancel(run: str) -> ResponseReturnValue:
    """Cancel (as `revor-bridge import cancel`): the run is marked cancelled in Redis, which every
    importer (this process's thread, a command elsewhere) and every worker reads."""
    if not RUN_ID.match(run):
        not_found("Import run")
    settings = current_app.extensions["revor_bridge.settings"]
    if runs.cancel(redis_connection(), run, retention_seconds=settings.dispatch_retention_seconds) is None:
        not_found("Import run")
    _jobs().stop(f"run:{run}")
    return _back(run, "cancelled")


def _rules_check(connection: Any) -> fingerprint.Verdict:
    """Do the live workers run the rules this web process plans with (rules/fingerprint.py)?"""
    return fingerprint.check(connection, current_app.extensions.get("revor_bridge.rules"))


def _back(run: str, notice: str) -> ResponseReturnValue:
    return redirect(url_for("dashboard.imports_run", run=run, notice=notice))


def _run_import(connection: Any, queue: Any, prepared: runner.Prepared, stop: threading.Event, note: Path) -> None:
    """The thread's body: the command's Runner; how it stopped, when it did not finish, in `note`."""
    run = prepared.run
    work = runner.Runner(connection, queue, prepared, stop=stop,
                         notify=lambda text: log.warning("import %s: %s", run, text))
    try:
        outcome = work.run()
    except runs.Busy as busy:
        log.info("import %s: %s", run, busy)  # another process runs it: nothing to do here
        return
    except runner.OptionMismatch as error:
        note.write_text(str(error), encoding="utf-8")
        return
    except Exception:
        log.exception("import %s stopped by an unexpected error", run)
        note.write_text("Stopped by an unexpected error (see the web process's log). Continue resumes from the "
                        "checkpoint.", encoding="utf-8")
        return
    if outcome.status == "full":
        note.write_text(outcome.message, encoding="utf-8")
    log.info("import %s: %s after line %s", run, outcome.status, outcome.state.checkpoint)


# ---- the result CSV ------------------------------------------------------------------------------------


@dashboard.get("/imports/<run>/result.csv")
def imports_result(run: str) -> ResponseReturnValue:
    """What became of every row, the lines `revor-bridge import` writes (result.py `lines` and
    `safe_row`), streamed as they are made: the file is read again and looked up in Redis a chunk
    at a time, so the first bytes leave at once and nothing is held whole, whatever the file's size."""
    if not RUN_ID.match(run):
        not_found("Import run")
    upload = _stored_upload(run)
    if upload is None or runs.load(redis_connection(), run) is None:
        not_found("Import run's file")
    assert upload is not None
    path, chosen = upload
    prepared = runner.prepare(_import_options(path, chosen))
    name = secure_filename(f"{path.stem}.result.csv") or "result.csv"
    return Response(_csv_lines(redis_connection(), prepared), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _csv_lines(connection: Any, prepared: runner.Prepared, every: int = result.CHUNK) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(result.COLUMNS)
    for count, row in enumerate(result.lines(connection, prepared), 1):
        writer.writerow(result.safe_row(row))  # as result.write writes it: no cell a spreadsheet would run
        if count % every == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
