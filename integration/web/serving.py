"""How `revor-bridge web` serves the app: gunicorn's options and a gthread worker with a read deadline.

Sync workers serve one request per process, so two clients trickling a body stall a two-process
web dyno until gunicorn's 30 s timeout. Threads (`WEB_THREADS` per process) keep the rest
served while some wait on slow clients, and a deadline on reading each request
(`WEB_READ_TIMEOUT`) bounds how long a slow client holds its thread: the head here, the body in
`ReadDeadline` (which answers 408).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import _DEFER, DEFAULT_WORKER_DATA_TIMEOUT, ThreadWorker

from integration.settings import Settings
from integration.web.read_deadline import default_watchdog

# gunicorn's default format logs the request line ("%(r)s"), query string included: a token a
# sender puts in the URL would land in the log. Method and path only, and no referrer either.
ACCESS_LOG_FORMAT = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms "%(a)s"'


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


_QUERY = re.compile(r"\?[^\s'\"]+")


def redact_queries(text: str) -> str:
    """`GET /x?token=abc HTTP/1.1` -> `GET /x?<redacted> HTTP/1.1`: what follows a `?` up to a space or quote."""
    return _QUERY.sub("?<redacted>", text)


class _RedactQueries(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact_queries(record.getMessage()), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_queries(logging.Formatter().formatException(record.exc_info))
        return True


_REDACT_QUERIES = _RedactQueries()


class QueryRedactingLogger(glogging.Logger):
    """gunicorn's logger, with query strings removed from its error log.

    gunicorn quotes the raw request line when it refuses a malformed one ("Invalid HTTP request
    line: 'GET /webhooks/salesforce?token=...'") and the URI when a request fails.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        self.error_log.addFilter(_REDACT_QUERIES)  # the same object each time: added once


class DeadlineThreadWorker(ThreadWorker):
    """gunicorn's gthread worker, with a deadline on reading each request's head.

    gthread reads the head with a blocking socket once the first byte is in: a client sending
    one header byte a second would hold the thread for good. The watchdog shuts the socket's
    read side at the deadline, the parser sees the end of the stream, and gunicorn closes the
    connection.
    """

    read_timeout: float = Settings.web_read_timeout

    def handle(self, conn: Any) -> Any:
        # gthread's own wait for a new connection's first byte (it parks the silent ones on its
        # poller), done here so the deadline starts when the client starts sending.
        if not conn.initialized and not conn.data_ready and not conn.wait_for_data(DEFAULT_WORKER_DATA_TIMEOUT):
            return _DEFER
        conn.head_watch = default_watchdog().watch(conn.sock, self.read_timeout)
        try:
            return super().handle(conn)
        finally:
            default_watchdog().cancel(conn.head_watch)

    def handle_request(self, req: Any, conn: Any) -> Any:
        default_watchdog().cancel(conn.head_watch)  # the head is in; the body has its own deadline
        return super().handle_request(req, conn)


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
