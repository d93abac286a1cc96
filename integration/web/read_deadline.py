"""A total deadline for reading a request, so a client trickling bytes cannot hold a thread.

A blocking read with a socket timeout only bounds the wait for the *next* byte: a client that
sends one byte a second never trips it, and gunicorn's body reader loops until it has what it
asked for. So the deadline is enforced from outside: a watchdog thread shuts the read side of an
overdue socket, the blocked read returns what it has, and the reader sees the deadline passed.
`ReadDeadline` uses it for request bodies (answering 408); the gunicorn worker in
`integration.web.serving` uses it for request heads.
"""

from __future__ import annotations

import functools
import heapq
import io
import itertools
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
Render = Callable[[str, int, str, str], tuple[bytes, str]]

READ_STEP = 64 * 1024


class Watch:
    """One socket's deadline; `fired` tells the reader that a short read was the deadline's doing."""

    __slots__ = ("sock", "deadline", "fired", "cancelled")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline
        self.fired = self.cancelled = False


class Watchdog:
    """One daemon thread per process that shuts the read side of sockets past their deadline.

    The thread starts on first use, in the process that uses it (gunicorn forks its workers
    before they build the app, and a thread does not survive a fork).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Watch]] = []
        self._order = itertools.count()
        self._pid: int | None = None

    def watch(self, sock: socket.socket, seconds: float) -> Watch:
        entry = Watch(sock, self._clock() + seconds)
        with self._cond:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="revor-bridge-read-deadline", daemon=True).start()
            heapq.heappush(self._heap, (entry.deadline, next(self._order), entry))
            self._cond.notify()
        return entry

    def cancel(self, entry: Watch) -> bool:
        """Stop watching; True when the deadline had already fired (the read was cut short)."""
        with self._cond:
            entry.cancelled = True
            return entry.fired

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][2].cancelled:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - self._clock()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                entry = heapq.heappop(self._heap)[2]
                # Under the lock: once cancel() returned, the socket (maybe kept alive for the
                # next request) is never shut behind the reader's back.
                entry.fired = True
                try:
                    entry.sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass  # already closed by the peer or the server


@functools.cache
def default_watchdog() -> Watchdog:
    """The process's watchdog, shared by the gunicorn worker (request heads) and the app (bodies)."""
    return Watchdog()


# Where ReadDeadline leaves the body it read, as bytes, in the WSGI environ.
BODY_KEY = "revor_bridge.body"


class ReadDeadline:
    """WSGI middleware: read the whole request body within `seconds`, or answer 408 and close.

    The body is buffered (at most `max_bytes` + 1 bytes, the app's own limit answers 413 above
    that) and handed to the app as a complete stream, so no view ever waits on the client. A
    chunked body becomes one of known length. `render(path, status, code, message)` gives an
    error's body and Content-Type (the app answers Salesforce with SOAP faults); JSON by default.
    """

    def __init__(self, app: WSGIApp, seconds: float, max_bytes: int, watchdog: Watchdog | None = None,
                 render: Render | None = None) -> None:
        self.app, self.seconds, self.max_bytes = app, seconds, max_bytes
        self.watchdog = watchdog or default_watchdog()
        self.render = render or json_error

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        length = _content_length(environ)
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if (not chunked and not length) or (length is not None and length > self.max_bytes):
            return self.app(environ, start_response)  # nothing to read, or refused (413) unread
        want = self.max_bytes + 1 if chunked or length is None else length
        sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
        entry = self.watchdog.watch(sock, self.seconds) if isinstance(sock, socket.socket) else None
        try:
            body = _read(environ["wsgi.input"], want)
        except Exception:
            if entry is not None and self.watchdog.cancel(entry):
                return self._too_slow(environ, start_response)  # the cut made the body reader fail
            raise
        if entry is not None and self.watchdog.cancel(entry) and len(body) < want:
            return self._too_slow(environ, start_response)
        if length is not None and not chunked and len(body) < length:
            return self._error(environ, start_response, 400, "body_incomplete",
                               f"the connection ended after {len(body)} of the {length} bytes in Content-Length")
        environ["wsgi.input"] = io.BytesIO(body)
        environ[BODY_KEY] = body  # the app may take it as it is (werkzeug's stream wrappers cost more)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return self.app(environ, start_response)

    def _too_slow(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        return self._error(environ, start_response, 408, "request_timeout",
                           f"the request body did not arrive within {self.seconds:g} s")

    def _error(self, environ: Environ, start_response: StartResponse, status: int, code: str,
               message: str) -> Iterable[bytes]:
        """The app's error shape; the connection closes, since the rest of the body is unread."""
        body, content_type = self.render(environ.get("PATH_INFO", ""), status, code, message)
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        if "werkzeug.socket" not in environ:  # werkzeug's server closes every connection and says so itself
            headers.append(("Connection", "close"))
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [body]


def json_error(path: str, status: int, code: str, message: str) -> tuple[bytes, str]:
    """The app's error shape: `{"error": {"code": ..., "message": ...}}`."""
    return json.dumps({"error": {"code": code, "message": message}}).encode(), "application/json"


def _content_length(environ: Environ) -> int | None:
    try:
        value = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None
    return value if value >= 0 else None


def _read(stream: Any, want: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < want:
        chunk = stream.read(min(READ_STEP, want - got))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)
