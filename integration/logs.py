"""Log lines for people and for log drains: the one logging configuration of every process.

`LOG_FORMAT=text` (the default locally): `time LEVEL logger: message`, then the ids in play that
the message does not already name, as `key=value`. `LOG_FORMAT=json` (the default on a dyno, where
a log drain reads the lines): one JSON object per line with `time` (ISO 8601, UTC), `level`,
`logger`, `message`, `process` (web, worker, clock, check, ...) and the ids in play; a traceback
goes into an `exc` field of the same line, never onto lines of its own.

The ids in play (`request_id`, `event_id`, `dispatch_id`, `revor_job_id`, `destination`, ...)
live in a context variable: the web binds the request's id around each request, the engine the
unit's ids around each unit it runs, so every log call below them carries the ids without
passing them. A call may add its own with `extra={"dispatch_id": ...}`.

In json mode stdout and stderr themselves are guarded: a line written there by anything but
logging (a `click.echo`, a library's `print`, the release check's report) becomes a JSON object
too (`logger` "stdout" or "stderr"), and an uncaught exception is logged as one line. Configured
secrets are blanked out of every line in either format.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TextIO, TypeVar
from urllib.parse import urlsplit

from integration.settings import Settings

# The ids a line may carry, in the order they are shown.
ID_FIELDS = ("request_id", "source", "event_id", "dispatch_id", "revor_job_id", "destination")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "[redacted]"

P = ParamSpec("P")
R = TypeVar("R")
_ids: ContextVar[Mapping[str, str] | None] = ContextVar("revor_bridge_log_ids", default=None)


@dataclass
class _Config:
    format: str = "text"
    process: str = "revor-bridge"
    secrets: tuple[str, ...] = ()


_config = _Config()


# ---- the ids in play -------------------------------------------------------------------------------


def current() -> dict[str, str]:
    """The ids bound in this thread's context right now."""
    return dict(_ids.get() or {})


def _clean(ids: Mapping[str, Any]) -> dict[str, str]:
    return {name: str(value) for name, value in ids.items() if value not in (None, "")}


@contextmanager
def bind(**ids: Any) -> Iterator[None]:
    """The ids (empty ones left out) on every log line inside the block, then the previous ones."""
    token = _ids.set({**current(), **_clean(ids)})
    try:
        yield
    finally:
        _ids.reset(token)


def add(**ids: Any) -> None:
    """More ids for the rest of the enclosing `bind` block (a job id learnt along the way)."""
    _ids.set({**current(), **_clean(ids)})


def scoped(function: Callable[P, R]) -> Callable[P, R]:
    """`function` in a `bind` block of its own: the ids it `add`s (a stage that read its dispatch)
    end when it returns, wherever it is called from (the engine binds each unit; a test does not)."""
    @functools.wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with bind():
            return function(*args, **kwargs)
    return run


def ids_of(record: logging.LogRecord) -> dict[str, str]:
    """The record's ids: those in play, overridden by any passed with `extra=`."""
    ids = current()
    ids.update(_clean({name: getattr(record, name, None) for name in ID_FIELDS}))
    return {name: ids[name] for name in ID_FIELDS if name in ids}


# ---- formats ---------------------------------------------------------------------------------------


def secret_values(settings: Settings) -> tuple[str, ...]:
    """Every configured secret (what `records.describe` blanks out of stored errors), and the
    password of the Redis URL, longest first so that no secret is left half blanked."""
    from integration.inbound.records import secret_values as configured

    found = set(configured(settings))
    password = urlsplit(settings.redis_url or "").password
    if password and len(password) >= 4:
        found.add(password)
    return tuple(sorted(found, key=len, reverse=True))


# What a sender can put into a text line to forge lines of its own or hide text: control
# characters (a line feed in a decoded path or an event id, ANSI escapes for a terminal), the
# Unicode line and paragraph separators, and the bidirectional overrides.
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str) -> str:
    """One line whatever the text holds: each control character as a visible escape (`\\n`, `\\x1b`)."""
    return _CONTROLS.sub(lambda found: repr(found.group())[1:-1].replace("'", ""), text)


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def iso_time(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped by JSON)."""

    def __init__(self, secrets: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self._secrets = secrets

    @property
    def secrets(self) -> tuple[str, ...]:
        return _config.secrets if self._secrets is None else self._secrets

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": iso_time(record.created), "level": record.levelname, "logger": record.name,
            "message": record.getMessage(), "process": _config.process, **ids_of(record),
        }
        line.update(getattr(record, "fields", None) or {})  # structured fields (the access log's)
        exc = record.exc_text or (self.formatException(record.exc_info) if record.exc_info else "")
        if exc:
            line["exc"] = exc
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        secrets = self.secrets
        line = {name: _redact(value, secrets) if isinstance(value, str) else value for name, value in line.items()}
        return json.dumps(line, default=str)  # ASCII only: no character a reader could split a line on


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`: the ids the message does not name already."""

    def __init__(self, secrets: tuple[str, ...] | None = None) -> None:
        super().__init__(TEXT_FORMAT)
        self._secrets = secrets

    @property
    def secrets(self) -> tuple[str, ...]:
        return _config.secrets if self._secrets is None else self._secrets

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        text = escape_controls(super().formatMessage(record))  # a traceback after it keeps its lines
        extra = [f"{name}={escape_controls(value)}" for name, value in ids_of(record).items()
                 if value not in record.message]
        return " ".join([text, *extra])

    def format(self, record: logging.LogRecord) -> str:
        return _redact(super().format(record), self.secrets)


def json_lines() -> bool:
    """Whether this process writes JSON lines (set by `configure`)."""
    return _config.format == "json"


def formatter() -> logging.Formatter:
    """The formatter of this process's format (blanking out the secrets `configure` found)."""
    return JsonFormatter() if json_lines() else TextFormatter()


# ---- stdout and stderr in json mode ----------------------------------------------------------------


class JsonLines(io.TextIOBase):
    """A text stream that passes on JSON objects, one per line, and wraps every other line as one.

    Writes are buffered up to each newline (a `print` writes its text and its newline apart);
    a lock keeps the lines of threads apart.
    """

    def __init__(self, stream: TextIO, name: str, level: int) -> None:
        super().__init__()
        self.stream, self.name, self.level = stream, name, level
        self.json = JsonFormatter()
        self.pending = ""
        self.lock = threading.Lock()
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self.lock = threading.Lock()  # a thread of the parent may have held it at the fork

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.stream, "errors", None)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.stream.fileno()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self.lock:
            self.pending += text
            if "\n" not in self.pending:
                return len(text)
            *lines, self.pending = self.pending.split("\n")
            self.stream.write("".join(self._as_json(line) + "\n" for line in lines if line.strip()))
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        with self.lock:
            self.stream.flush()

    def _as_json(self, line: str) -> str:
        if line.startswith("{"):
            try:
                if isinstance(json.loads(line), dict):
                    return line
            except ValueError:
                pass
        record = logging.LogRecord(self.name, self.level, "", 0, line.rstrip("\r"), None, None)
        return self.json.format(record)


def _log_uncaught(kind: type[BaseException], error: BaseException, traceback: Any) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, traceback)
        return
    logging.getLogger("revor_bridge").critical("uncaught %s", kind.__name__, exc_info=(kind, error, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    logging.getLogger("revor_bridge").critical("uncaught %s in thread %s", args.exc_type.__name__,
                                               args.thread.name if args.thread else "?",
                                               exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


# ---- configuration ---------------------------------------------------------------------------------


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The bridge's own handler, told apart from one a host process installed (pytest's)."""


def configure(settings: Settings, process: str, whole_output: bool = False) -> None:
    """Set up logging for a `revor-bridge` process named `process`, on stderr as Heroku reads it.

    `whole_output`: all the process writes is its log (web, worker, the release check), so in
    json mode stdout and stderr are guarded too; a command whose output someone reads (`events`,
    `send`) keeps it as it is. Like `logging.basicConfig`, it leaves a process whose logging is
    set up already (a test runner that invokes a command in-process) as it is.
    """
    root = logging.getLogger()
    if any(not isinstance(handler, _Handler) for handler in root.handlers):
        return
    _config.format, _config.process, _config.secrets = settings.log_format, process, secret_values(settings)
    if json_lines() and whole_output:
        if not isinstance(sys.stdout, JsonLines):
            sys.stdout = JsonLines(sys.stdout, "stdout", logging.INFO)
        if not isinstance(sys.stderr, JsonLines):
            sys.stderr = JsonLines(sys.stderr, "stderr", logging.WARNING)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread
    handler = _Handler(sys.stderr)  # in json mode the guard: one lock for every writer of a line
    handler.setFormatter(formatter())
    root.handlers = [handler]
    root.setLevel(settings.log_level)
    # RQ's worker writes about four INFO lines per job, and the engine's job runs every few seconds
    # on an idle worker: they would drown the lines about events. Its warnings and errors stay
    # (the worker says itself when it starts and stops); LOG_LEVEL=DEBUG shows everything.
    # `rq.worker` by name too: importing rq.worker sets that logger to INFO when it has no level yet.
    for name in ("rq", "rq.worker"):
        logging.getLogger(name).setLevel(logging.DEBUG if settings.log_level == "DEBUG" else logging.WARNING)
    logging.captureWarnings(True)


def set_process(process: str) -> None:
    """This process's name on its lines from now on (a forked child: the worker's clock)."""
    _config.process = process
