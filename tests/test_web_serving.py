"""`revor-bridge web` as a process: slow clients, what the access log holds, two instances at once.

Real `revor-bridge web` processes (gunicorn) on loopback ports and raw sockets that trickle bytes
the way a slow or hostile client does.
"""

from __future__ import annotations

import base64
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from standardwebhooks import Webhook

from integration.storage import free_port
from tests.conftest import cli_env

SECRET = "whsec_" + base64.b64encode(b"web-serving-test-secret-0001").decode()
TOKEN = "SECRET123-query-token-never-logged"


@dataclass
class WebProcess:
    url: str
    port: int
    proc: subprocess.Popen
    out: Path
    err: Path

    def logs(self) -> str:
        return self.out.read_text() + self.err.read_text()


@contextmanager
def web_process(tmp_path: Path, redis_url: str, name: str = "web", **env: str) -> Iterator[WebProcess]:
    """`revor-bridge web` in its own process group, HOME and XDG_RUNTIME_DIR inside tmp_path."""
    port = free_port()
    home = tmp_path / "home"
    (home / "run").mkdir(parents=True, exist_ok=True)
    environment = cli_env(REDIS_URL=f"{redis_url}/1", PORT=str(port), HOME=str(home),
                          XDG_RUNTIME_DIR=str(home / "run"), **env)
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "integration", "web"], env=environment, cwd=tmp_path,
                                stdout=stdout, stderr=stderr, start_new_session=True)
    web = WebProcess(f"http://127.0.0.1:{port}", port, proc, out, err)
    try:
        _wait_healthy(web)
        yield web
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_healthy(web: WebProcess, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert web.proc.poll() is None, web.logs()
        try:
            if requests.get(web.url + "/healthz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"revor-bridge web did not answer /healthz in {timeout} s:\n{web.logs()}")


class SlowClient:
    """A connection that sends its first bytes at once, then one more byte per `tick()`."""

    def __init__(self, port: int, first: bytes, trickle: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(first)
        self.trickle = trickle
        self.answer: bytes | None = None
        self.answered_at: float | None = None

    def tick(self, now: float) -> None:
        if self.answer is not None:
            return
        if select.select([self.sock], [], [], 0)[0]:
            self._receive(now)
            return
        try:
            self.sock.sendall(self.trickle)
        except OSError:  # the server closed its side: what did it say first?
            self._receive(now)

    def _receive(self, now: float) -> None:
        try:
            self.answer = self.sock.recv(65536)
        except OSError:
            self.answer = b""
        self.answered_at = now
        self.sock.close()


def _signed_webhook(url: str) -> requests.Response:
    body = json.dumps({"type": "contact.created", "data": {"contact": {"id": "c-slow", "email": "s@example.com"}}})
    now = datetime.now(UTC)
    headers = {"Content-Type": "application/json", "webhook-id": "msg_slow_clients_1",
               "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(SECRET).sign("msg_slow_clients_1", now, body)}
    return requests.post(url + "/webhooks/generic/standard", data=body.encode(), headers=headers, timeout=1)


def test_slow_clients_do_not_starve_the_web_process(tmp_path, redis_url, redis_db):
    """8 uploads trickling a body and 2 clients trickling a request head, 1 byte a second each:
    /healthz and a signed webhook still answer within a second (sync workers: both stuck 30 s);
    the uploads get 408 and the heads a closed connection once WEB_READ_TIMEOUT has passed."""
    read_timeout = 3.0
    with web_process(tmp_path, redis_url, WEB_READ_TIMEOUT=f"{read_timeout:g}",
                     GENERIC_WEBHOOK_SECRET_STANDARD=SECRET) as web:
        upload_head = (b"POST /webhooks/generic/standard HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
        started = time.monotonic()
        uploads = [SlowClient(web.port, upload_head, b" ") for _ in range(8)]
        heads = [SlowClient(web.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X") for _ in range(2)]
        slow = uploads + heads

        def trickle_until(moment: float) -> None:
            while time.monotonic() < moment and any(c.answer is None for c in slow):
                for client in slow:
                    client.tick(time.monotonic() - started)
                time.sleep(min(1.0, max(0.0, moment - time.monotonic())))

        trickle_until(started + 1.5)  # every slow client has been taken on by a thread by now
        before = time.monotonic()
        health = requests.get(web.url + "/healthz", timeout=1)
        hook = _signed_webhook(web.url)
        assert health.status_code == 200 and hook.status_code == 200, hook.text
        assert time.monotonic() - before < 2.0  # both answers, each within its 1 s timeout
        assert json.loads(requests.get(web.url + "/healthz", timeout=1).text) == {"status": "ok"}
        trickle_until(started + read_timeout + 4)

    for client in uploads:
        assert client.answer is not None and client.answer.startswith(b"HTTP/1.1 408 "), client.answer
        assert b'"request_timeout"' in client.answer
        assert read_timeout - 0.5 <= client.answered_at <= read_timeout + 2.5, client.answered_at
    for client in heads:
        assert client.answer == b"", client.answer  # the head never completed: closed, no answer
        assert read_timeout - 0.5 <= client.answered_at <= read_timeout + 2.5, client.answered_at


def _closed_by_server(sock: socket.socket) -> bool:
    """True when the server closed `sock` (a read gives the end of the stream), False while it is open."""
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _timed(call) -> tuple[requests.Response, float]:
    started = time.monotonic()
    answer = call()
    return answer, time.monotonic() - started


def test_idle_and_trickling_connections_hold_no_thread(tmp_path, redis_url, redis_db):
    """One web process (16 threads): 200 connections that send nothing, 10 more every second, 50
    sending a head one byte a second and 20 uploads refused with 413 that go on sending. /healthz and
    a signed webhook answer within a second all along (gthread as shipped: 10 s, then timeouts); heads
    that never complete are closed WEB_READ_TIMEOUT after the connection was accepted."""
    read_timeout = 3.0
    with web_process(tmp_path, redis_url, WEB_CONCURRENCY="1", WEB_READ_TIMEOUT=f"{read_timeout:g}",
                     GENERIC_WEBHOOK_SECRET_STANDARD=SECRET) as web:
        started = time.monotonic()
        idle = [socket.create_connection(("127.0.0.1", web.port)) for _ in range(200)]
        heads = [SlowClient(web.port, b"G", b"E") for _ in range(50)]
        big = (b"POST /webhooks/generic/standard HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: 10000000\r\n\r\n{")
        uploads = [SlowClient(web.port, big, b" ") for _ in range(20)]
        later: list[socket.socket] = []
        latencies: list[float] = []
        while time.monotonic() - started < read_timeout + 2.5:
            for client in heads + uploads:
                client.tick(time.monotonic() - started)
            later += [socket.create_connection(("127.0.0.1", web.port)) for _ in range(10)]
            health, took = _timed(lambda: requests.get(web.url + "/healthz", timeout=1))
            hook, hook_took = _timed(lambda: _signed_webhook(web.url))
            assert health.status_code == 200 and hook.status_code == 200, hook.text
            latencies += [took, hook_took]
            time.sleep(max(0.0, 1 - took - hook_took))
        waited = time.monotonic() - started
        print(f"/healthz and webhook under load: max {max(latencies) * 1000:.0f} ms")  # README's number
        assert max(latencies) < 1.0
        assert all(_closed_by_server(sock) for sock in idle)  # expired (or evicted, oldest first)
        for client in heads:
            assert client.answer == b"" and client.answered_at <= read_timeout + 2.5, client.answered_at  # ticks: 1 s
        for client in uploads:
            assert client.answer is not None and client.answer.startswith(b"HTTP/1.1 413 "), client.answer
        assert waited < read_timeout + 4
        for sock in idle + later:
            sock.close()


def test_waiting_connections_are_capped_oldest_silent_first(tmp_path, redis_url, redis_db):
    """Past 256 connections waiting for their head, the oldest that sent nothing is closed first:
    the process keeps accepting (and answering) new ones."""
    from integration.web.serving import DeadlineThreadWorker

    cap = DeadlineThreadWorker.max_waiting
    with web_process(tmp_path, redis_url, WEB_CONCURRENCY="1", WEB_READ_TIMEOUT="30") as web:
        started = [socket.create_connection(("127.0.0.1", web.port)) for _ in range(5)]
        for sock in started:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(0.3)
        silent = [socket.create_connection(("127.0.0.1", web.port)) for _ in range(cap + 40)]
        time.sleep(1.0)
        evicted = len(started) + len(silent) - cap
        assert [_closed_by_server(s) for s in silent] == [True] * evicted + [False] * (len(silent) - evicted)
        assert not any(_closed_by_server(s) for s in started)
        health, took = _timed(lambda: requests.get(web.url + "/healthz", timeout=1))
        assert health.status_code == 200 and took < 1.0
        for sock in started:  # the heads that had begun still complete and are answered
            sock.setblocking(True)
            sock.settimeout(5)
            sock.sendall(b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        for sock in started + silent:
            sock.close()


def test_kept_alive_and_pipelined_requests_are_answered(tmp_path, redis_url, redis_db):
    """Heads read by the poller: a second request on a kept-alive connection, and one pipelined
    behind the first whose end arrives later, are both answered; an endless head gets 431."""
    with web_process(tmp_path, redis_url, WEB_CONCURRENCY="1") as web:
        with requests.Session() as session:
            assert [session.get(web.url + "/healthz", timeout=2).status_code for _ in range(3)] == [200] * 3
        with socket.create_connection(("127.0.0.1", web.port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /readyz HTTP/1.1\r\nHost: a\r\n")
            time.sleep(0.5)
            sock.sendall(b"Connection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.count(b"HTTP/1.1 200 ") == 2 and b'"status":"ready"' in answer.replace(b" ", b"")
        # A head that outgrows what the poller keeps (64 KiB) is refused without reaching a thread.
        huge = b"GET /healthz HTTP/1.1\r\n" + b"X-Filler: " + b"x" * 70000
        assert _raw_exchange(web.port, huge, close_write=False).startswith(b"HTTP/1.1 431 ")


def test_access_log_has_paths_without_query_strings(tmp_path, redis_url, redis_db):
    """A token in a query string (or a referrer) never reaches the log, refused or not; the path does."""
    with web_process(tmp_path, redis_url, WEB_CONCURRENCY="1") as web:
        soap = b'<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"/>'
        posted = requests.post(f"{web.url}/webhooks/salesforce?token={TOKEN}", data=soap,
                               headers={"Content-Type": "text/xml"}, timeout=5)
        listed = requests.get(f"{web.url}/api/v1/events/hubspot/e1?token={TOKEN}&x=1",
                              headers={"Referer": f"https://crm.example.com/hook?token={TOKEN}"}, timeout=5)
        assert posted.status_code >= 400 and listed.status_code >= 400
        # A malformed request line: gunicorn refuses it and quotes it in its error log.
        refused = _raw_exchange(web.port, f"GET  /webhooks/salesforce?token={TOKEN} HTTP/1.1\r\n\r\n".encode(),
                                close_write=False)
        assert refused.startswith(b"HTTP/1.1 400 ")
        # A quote inside the query (and a byte that is not UTF-8) must not end the redaction.
        quoted = _raw_exchange(web.port, f"POST /webhooks/salesforce?flow='x&token={TOKEN}".encode()
                               + b"\xff HTTP/1.1\r\n\r\n", close_write=False)
        assert quoted.startswith(b"HTTP/1.1 400 ")
    logs = web.logs()
    assert TOKEN not in logs and "SECRET123" not in logs and "token=" not in logs, logs
    assert "Invalid HTTP request line: \"POST /webhooks/salesforce?<redacted> HTTP/1.1\"" in logs
    assert "Invalid HTTP request line: 'GET  /webhooks/salesforce?<redacted> HTTP/1.1'" in logs
    assert '"POST /webhooks/salesforce HTTP/1.1"' in logs and '"GET /api/v1/events/hubspot/e1 HTTP/1.1"' in logs


def test_two_web_instances_run_side_by_side(tmp_path, redis_url, redis_db):
    """Two instances run by one user, as in tests or two apps on one machine: no shared control socket."""
    with web_process(tmp_path, redis_url, name="first", WEB_CONCURRENCY="1") as first, \
            web_process(tmp_path, redis_url, name="second", WEB_CONCURRENCY="1") as second:
        for web in (first, second):
            assert requests.get(web.url + "/healthz", timeout=5).json() == {"status": "ok"}
    assert first.proc.returncode == 0 and second.proc.returncode == 0
    for web in (first, second):
        assert "control socket" not in web.logs().lower(), web.logs()
    assert not list((tmp_path / "home").rglob("*.ctl"))  # gunicorn's default spot: $XDG_RUNTIME_DIR


def test_a_chunked_body_is_read_whole_and_an_oversized_one_refused(tmp_path, redis_url, redis_db):
    """Bodies are read by the deadline reader before any view: chunked ones too."""
    with web_process(tmp_path, redis_url, WEB_CONCURRENCY="1", GENERIC_WEBHOOK_SECRET_STANDARD=SECRET) as web:
        body = json.dumps({"type": "contact.created", "data": {"contact": {"id": "c-chunk"}}}).encode()
        now = datetime.now(UTC)
        headers = {"Content-Type": "application/json", "webhook-id": "msg_chunked_1",
                   "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": Webhook(SECRET).sign("msg_chunked_1", now, body.decode())}
        chunked = requests.post(web.url + "/webhooks/generic/standard", data=iter([body[:10], body[10:]]),
                                headers=headers, timeout=5)
        assert chunked.status_code == 200, chunked.text
        oversized = requests.post(web.url + "/webhooks/generic/standard", data=iter([b" " * 65536] * 9),
                                  headers=headers, timeout=5)
        assert oversized.status_code == 413 and oversized.json()["error"]["code"] == "body_too_large"


def _raw_exchange(port: int, request: bytes, close_write: bool, wait: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(request)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_in_process_a_body_cut_short_is_400_and_a_stalled_one_408(make_bridge):
    """The same reader under werkzeug's server (the one tests and the demo use)."""
    bridge = make_bridge(web_read_timeout=0.5)
    head = (b"POST /webhooks/generic/zapier HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{\"a\":")
    cut = _raw_exchange(bridge.server.port, head, close_write=True)
    assert cut.startswith(b"HTTP/1.1 400 ") and b'"body_incomplete"' in cut and b"after 5 of the 100 bytes" in cut
    started = time.monotonic()
    stalled = _raw_exchange(bridge.server.port, head, close_write=False)
    assert stalled.startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in stalled
    assert 0.4 <= time.monotonic() - started < 3


def test_gunicorn_options_from_settings():
    from integration.settings import Settings, SettingsError
    from integration.web.serving import DeadlineThreadWorker, gunicorn_options

    settings = Settings.from_env({"PORT": "5055", "WEB_CONCURRENCY": "3", "WEB_THREADS": "4",
                                  "WEB_READ_TIMEOUT": "2.5"})
    options = gunicorn_options(settings)
    assert options["bind"] == ["0.0.0.0:5055"] and options["workers"] == 3 and options["threads"] == 4
    assert issubclass(options["worker_class"], DeadlineThreadWorker) and options["worker_class"].read_timeout == 2.5
    assert options["control_socket_disable"] is True
    assert not any(atom in options["access_log_format"] for atom in ("%(r)s", "%(q)s", "%(f)s"))
    defaults = Settings.from_env({})
    assert defaults.web_threads == 16 and defaults.web_read_timeout == 10.0
    for name, value in (("WEB_THREADS", "0"), ("WEB_READ_TIMEOUT", "0"), ("WEB_READ_TIMEOUT", "soon")):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})


def test_gunicorn_error_log_drops_query_strings_from_messages_and_tracebacks():
    import logging

    from gunicorn.config import Config

    from integration.web.serving import QueryRedactingLogger

    logger = QueryRedactingLogger(Config())
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.error_log.addHandler(handler)
    try:
        raise ValueError(f"bad uri /api/v1/x?token={TOKEN}")
    except ValueError:
        logger.exception("Error handling request %s %s", "GET", f"/api/v1/x?token={TOKEN}&a=b")
    logger.error_log.removeHandler(handler)
    text = logging.Formatter().format(records[0])
    assert TOKEN not in text and "Error handling request GET /api/v1/x?<redacted>" in text
    assert "ValueError: bad uri /api/v1/x?<redacted>" in text
