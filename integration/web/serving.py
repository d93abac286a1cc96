"""How `revor-bridge web` serves the app: gunicorn's options and a gthread worker with a read deadline.

Sync workers serve one request per process, so two clients trickling a body stall a two-process
web dyno until gunicorn's 30 s timeout. Threads (`WEB_THREADS` per process) keep the rest
served while some wait on slow clients, and a deadline on reading each request
(`WEB_READ_TIMEOUT`) bounds how long a slow client holds its thread: the head here, the body in
`ReadDeadline` (which answers 408).
"""

from __future__ import annotations

import errno
import logging
import re
import selectors
import socket
import time
from functools import partial
from typing import Any

from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import TConn, ThreadWorker

from integration import logs
from integration.settings import Settings
from integration.web.read_deadline import READ_STEP, default_watchdog
from integration.web.request_ids import REQUEST_ID_KEY, STORED_KEY

# gunicorn's default format logs the request line ("%(r)s"), query string included: a token a
# sender puts in the URL would land in the log. Method and path only, and no referrer either.
# The request's id (web/request_ids.py) last, to find the app's lines of the same request, and
# for a stored webhook what it stored (`stored`: source, delivery, event ids; empty otherwise).
ACCESS_LOG_FORMAT = ('%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms "%(a)s" '
                     f"request_id=%({{{REQUEST_ID_KEY}}}e)s%(stored)s")


def stored_text(stored: dict[str, Any] | None) -> str:
    """A text access line's tail for a stored webhook: ` source=... event_id=...` (or the
    delivery and the count of its events, for a batch)."""
    if not stored:
        return ""
    names = ("source", "event_id") if "event_id" in stored else ("source", "delivery_id", "events")
    return "".join(f" {name}={stored[name]}" for name in names)


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """gunicorn's settings for the web process (what `gunicorn --help` calls them)."""
    return {
        "bind": [f"0.0.0.0:{settings.port}"],
        "workers": settings.web_concurrency,
        # A subclass per run carries the deadline into the forked workers.
        "worker_class": type("DeadlineThreadWorker", (DeadlineThreadWorker,),
                             {"read_timeout": settings.web_read_timeout}),
        "threads": settings.web_threads,
        "timeout": 30,  # a worker whose main loop stops (not a slow request) is restarted
        "accesslog": "-",
        "access_log_format": ACCESS_LOG_FORMAT,
        "logger_class": QueryRedactingLogger,
        # On by default since gunicorn 25 at one path per user: a second instance (another app,
        # a test) fights the first over it. Nothing here uses gunicornc.
        "control_socket_disable": True,
    }


# Up to whitespace only: a quote can be part of the query (`?flow='x&token=...`), so stopping at
# one would leave the rest of the query in the log.
_QUERY = re.compile(r"\?\S+")


def redact_queries(text: str) -> str:
    """`GET /x?token=abc HTTP/1.1` -> `GET /x?<redacted> HTTP/1.1`: what follows a `?` up to whitespace.

    A closing quote right after the query goes too (`'GET /x?<redacted>`): better than a token.
    """
    return _QUERY.sub("?<redacted>", text)


class _RedactQueries(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact_queries(record.getMessage()), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_queries(logging.Formatter().formatException(record.exc_info))
        return True


_REDACT_QUERIES = _RedactQueries()


class _EscapeControls(logging.Filter):
    """Text lines: gunicorn writes the decoded path (`/x%0aFORGED` holds a line feed) as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = logs.escape_controls(record.getMessage()), ()
        return True


_ESCAPE_CONTROLS = _EscapeControls()


class QueryRedactingLogger(glogging.Logger):
    """gunicorn's logger, with query strings removed from its error log; JSON lines with LOG_FORMAT=json.

    gunicorn quotes the raw request line when it refuses a malformed one ("Invalid HTTP request
    line: 'GET /webhooks/salesforce?token=...'") and the URI when a request fails.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        self.error_log.addFilter(_REDACT_QUERIES)  # the same object each time: added once
        if logs.json_lines():
            for handler in self.error_log.handlers + self.access_log.handlers:
                handler.setFormatter(logs.JsonFormatter())
        else:
            self.error_log.addFilter(_ESCAPE_CONTROLS)
            self.access_log.addFilter(_ESCAPE_CONTROLS)

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        return {**super().atoms(resp, req, environ, request_time), "stored": stored_text(environ.get(STORED_KEY))}

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        """In json mode one object per request, its fields apart; the path never has its query."""
        if not logs.json_lines():
            super().access(resp, req, environ, request_time)
            return
        if not self.access_log_enabled:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        fields = {"method": environ.get("REQUEST_METHOD"), "path": environ.get("PATH_INFO"),
                  "status": int(status) if str(status).isdigit() else status,
                  "bytes": getattr(resp, "sent", None),
                  "duration_ms": round(request_time.total_seconds() * 1000, 1),
                  "request_id": environ.get(REQUEST_ID_KEY), "user_agent": environ.get("HTTP_USER_AGENT"),
                  "remote_addr": environ.get("REMOTE_ADDR"), **(environ.get(STORED_KEY) or {})}
        self.access_log.info("%s %s %s", fields["method"], fields["path"], fields["status"],
                             extra={"fields": fields})


class DeadlineThreadWorker(ThreadWorker):
    """gunicorn's gthread worker, where no thread ever waits on a client for its request head.

    gthread hands every new connection to a pool thread, which waits up to 5 s for a first byte
    and then reads the head with a blocking socket: a few hundred connections that send nothing,
    or a hundred that send one byte a second, hold every thread and `/healthz` waits behind
    them. Here the main loop (gthread's poller) reads request heads itself, with non-blocking
    reads, and a connection reaches the pool only once its head is complete: a thread then has
    all it needs to parse the head, and the body has its own deadline (`ReadDeadline`, 408).

    A head must be complete `read_timeout` seconds after the connection was accepted (or, on a
    kept-alive connection, after its next request started), else the connection is closed
    without an answer. At most `max_waiting` connections per process wait for their head; past
    that the oldest one that has sent nothing (else the oldest one) is closed, so the process
    always accepts new connections (gthread stops accepting at `worker_connections`).

    gthread also closes connections "gracefully" on its main loop, lingering up to 2 s on a
    blocking read: a client that keeps sending after its answer, or just keeps its end open,
    stalls everyone for 2 s each. Here that linger is non-blocking, in the poller (`linger`).
    """

    read_timeout: float = Settings.web_read_timeout
    max_waiting = 256
    max_head_bytes = 64 * 1024  # gunicorn's own limits allow ~800 KiB; webhook heads are < 4 KiB

    def init_process(self) -> None:
        if self.cfg.is_ssl:  # heads are read as plain bytes: TLS ends at the router (Heroku's)
            raise RuntimeError("revor-bridge web serves plain HTTP; terminate TLS in front of it")
        self.waiting: dict[Any, None] = {}  # connections reading their head, oldest first
        self.lingering: dict[socket.socket, list[float]] = {}  # closing sockets: [deadline, bytes drained]
        super().init_process()

    def accept(self, listener: Any) -> None:
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = _Connection(self, client, address, listener.getsockname())  # non-blocking
        self._wait_for_head(conn)

    def enqueue_req(self, conn: Any) -> None:
        """The one way to the pool: a complete head goes on, anything less waits in the poller."""
        if conn.parser is not None:  # bytes read ahead after a kept-alive response
            conn.head += conn.parser.unreader.take_buffered()
        if _head_complete(conn.head):
            super().enqueue_req(conn)
        else:
            self._wait_for_head(conn, conn.head)

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        # A kept-alive connection's next request started: its head is read here too.
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._wait_for_head(conn)

    def _wait_for_head(self, conn: Any, head: bytes = b"") -> None:
        if len(self.waiting) >= self.max_waiting:
            oldest = next((c for c in self.waiting if not c.head), None) or next(iter(self.waiting))
            self._drop(oldest)
        conn.head, conn.head_deadline = head, time.monotonic() + self.read_timeout
        conn.sock.setblocking(False)  # a kept-alive socket comes back from a thread blocking
        self.waiting[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read_head, conn))

    def _read_head(self, conn: Any, client: Any) -> None:
        try:
            data = conn.sock.recv(READ_STEP)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client left before its request was complete
            self._drop(conn)
            return
        seen, conn.head = len(conn.head), conn.head + data
        if len(conn.head) > self.max_head_bytes:
            _send_quietly(conn.sock, HEAD_TOO_LARGE)
            self._drop(conn, graceful=True)
        elif _head_complete(conn.head, seen):
            del self.waiting[conn]
            self.poller.unregister(conn.sock)
            super().enqueue_req(conn)

    def _drop(self, conn: Any, graceful: bool = False) -> None:
        del self.waiting[conn]
        self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close(graceful)

    def linger(self, sock: socket.socket) -> None:
        """gunicorn's graceful close (FIN, then read what the client still sends, at most 2 s or
        64 KiB, so that the answer is not cut by a reset), with the reads done by the poller."""
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            self.poller.register(sock, selectors.EVENT_READ, self._drain)
        except (OSError, ValueError):
            sock.close()
            return
        self.lingering[sock] = [time.monotonic() + LINGER_SECONDS, 0]

    def _drain(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(READ_STEP)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        self.lingering[sock][1] += len(data)
        if not data or self.lingering[sock][1] >= LINGER_MAX_BYTES:
            self._close_lingering(sock)

    def _close_lingering(self, sock: socket.socket) -> None:
        del self.lingering[sock]
        self.poller.unregister(sock)
        sock.close()

    def murder_pending(self) -> None:
        """Also close the connections whose head is late (every loop, at least once a second),
        and, once the worker stops, those that have sent nothing."""
        super().murder_pending()
        now = time.monotonic()
        for conn in list(self.waiting):
            if conn.head_deadline <= now or (not self.alive and not conn.head):
                self._drop(conn)
        for sock, (deadline, _) in list(self.lingering.items()):
            if deadline <= now:
                self._close_lingering(sock)

    def handle(self, conn: Any) -> Any:
        """Runs in a pool thread, with the complete head held in `conn.head`."""
        conn.sock.setblocking(True)
        conn.init()
        conn.parser.unreader.unread(conn.head)
        conn.head = b""
        # Should gunicorn's parser want more than the poller found (it never should), a deadline
        # still holds. A fresh one: time spent queued for a thread is not the client's doing.
        conn.head_watch = default_watchdog().watch(conn.sock, self.read_timeout)
        try:
            return super().handle(conn)
        finally:
            default_watchdog().cancel(conn.head_watch)

    def handle_request(self, req: Any, conn: Any) -> Any:
        default_watchdog().cancel(conn.head_watch)  # the head is in; the body has its own deadline
        return super().handle_request(req, conn)

    def _keepalive_after(self, conn: Any, keepalive: bool) -> bool:
        """Keep the connection only if its body was read whole (gthread drains for up to 5 s).

        `ReadDeadline` reads every body it accepts; one left unread was refused (413), and a
        client still sending it must not hold a thread: close instead.
        """
        return bool(keepalive) and bool(conn.parser.finish_body(deadline=time.monotonic() + 0.1))


class _Connection(TConn):  # type: ignore[misc]
    """gthread's connection, with the request head read so far and a close that never blocks."""

    def __init__(self, worker: DeadlineThreadWorker, *args: Any) -> None:
        super().__init__(worker.cfg, *args)
        self.worker = worker
        self.head, self.head_deadline = b"", 0.0
        self.data_ready = True  # gthread's in-thread wait for a first byte is never needed

    def close(self, graceful: bool = False) -> None:
        if graceful:  # on the main loop (gthread's finish_request)
            self.worker.linger(self.sock)
        else:
            super().close()


LINGER_SECONDS, LINGER_MAX_BYTES = 2.0, 64 * 1024  # gunicorn's close_graceful
HEAD_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
                  b"Content-Length: 0\r\n\r\n")


def _head_complete(head: bytes, seen: int = 0) -> bool:
    """Whether `head` holds a whole request head (the blank line that ends it), searching past `seen`."""
    return head.find(b"\r\n\r\n", max(seen - 3, 0)) >= 0


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.send(data)
    except OSError:
        pass


class WebServer(BaseApplication):  # type: ignore[misc]
    """gunicorn run from Python with explicit options (no argv parsing, no config file)."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for name, value in self.options.items():
            self.cfg.set(name, value)

    def load(self) -> Any:
        from integration.web import create_app

        return create_app()  # in each worker, after the fork; settings from the environment
