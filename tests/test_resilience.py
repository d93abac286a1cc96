"""Redis going away: the worker (with its clock and RQ scheduler) waits it out and goes on by itself.

Everything is real: a redis-server of this test's own (with append-only persistence, so a restart
keeps the data, as Heroku Redis does), the web app over HTTP, a `revor-bridge worker` process,
the Revor sandbox and a write-back receiver.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from integration.sandbox.core import Faults
from integration.sandbox.server import SandboxServer
from integration.storage import free_port, redis_server_binary
from tests.conftest import cli_env, configure, revor_bridge, sandbox_requests, sandbox_tasks, wait_for_port
from tests.servers import ThreadServer, writeback_receiver
from tests.test_pipeline import RULES, WRITEBACK_SECRET, ZAP_HEADERS, assert_writebacks_complete, settle, zap


def test_worker_with_redis_unreachable_at_start_says_so_in_one_line_and_exits_3(tmp_path):
    closed = free_port()  # nothing listens there
    result = revor_bridge("worker", env=cli_env(REDIS_URL=f"redis://:hunter2-secret@127.0.0.1:{closed}/0"),
                          cwd=tmp_path, timeout=60)
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("revor-bridge: Redis unreachable at 127.0.0.1:"), result.stderr
    assert "hunter2" not in result.stderr


def test_an_outage_is_one_line_when_it_starts_and_one_when_it_ends_with_back_off(caplog):
    import logging

    from integration.scheduler.outage import Outage

    answers = [redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
               redis.exceptions.TimeoutError("Timeout reading from socket"),
               redis.exceptions.ConnectionError("Connection closed by server."), None]
    probes = []

    def ping() -> None:
        probes.append(time.monotonic())
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    outage = Outage(logging.getLogger("test.outage"), "worker", first=0.02, cap=0.05)
    with caplog.at_level(logging.INFO, logger="test.outage"):
        started = time.monotonic()
        assert outage.wait(redis.exceptions.ConnectionError("gone"), ping, lambda: False)
    gaps = [b - a for a, b in zip([started, *probes], probes, strict=False)]
    assert len(probes) == 4  # back-off: 0.02 s, doubling, up to the 0.05 s cap
    assert all(gap >= pause - 0.005 for gap, pause in zip(gaps, (0.02, 0.04, 0.05, 0.05), strict=True)), gaps
    assert [r.getMessage().split(" (")[0].split(" after")[0] for r in caplog.records] == [
        "worker: Redis unreachable", "worker: Redis is back"]
    assert not outage.ongoing
    # A stop requested during an outage ends the wait at once, without waiting for Redis.
    stopped = time.monotonic()
    assert not Outage(logging.getLogger("test.outage"), "clock", first=5.0).wait(
        redis.exceptions.ConnectionError("gone"), ping, lambda: time.monotonic() - stopped > 0.1)
    assert time.monotonic() - stopped < 1.0


class RedisServer:
    """A redis-server on a fixed port and folder that can be stopped and started again."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.proc = folder, free_port(), None
        folder.mkdir()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or redis_server_binary()
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # answering, and done loading the append-only file
            try:
                if redis.Redis.from_url(self.url).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not come back")

    def stop(self) -> None:
        """SIGTERM: Redis writes what it has and exits, as on a managed Redis restart."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


def _post_until_accepted(bridge, number: int, timeout: float = 15) -> None:
    """A sender retrying after a 503, as every CRM does."""
    deadline = time.monotonic() + timeout
    while True:
        answer = bridge.post("/webhooks/generic/zapier", zap(number), ZAP_HEADERS)
        if answer.status_code == 200:
            return
        assert answer.status_code == 503 and time.monotonic() < deadline, (answer.status_code, answer.text)
        time.sleep(0.2)


def test_worker_rides_out_a_redis_restart_and_processes_every_event_once(tmp_path, make_bridge):
    """Issue 9 item 13: stop redis-server under a working worker, keep posting, start it again."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    receiver_app, receiver_state = writeback_receiver(WRITEBACK_SECRET)
    worker = None
    try:
        with SandboxServer(faults=Faults(time_scale=200.0, rate_limit=0), seed=7) as sandbox, \
                ThreadServer(receiver_app) as receiver:
            configure(sandbox, latency_ms=300)  # jobs are in flight when Redis goes
            rules = tmp_path / "rules.yaml"
            rules.write_text(RULES)
            os.environ["RECEIVER_URL"] = receiver.url + "/status"  # for create_app's rules load
            try:
                bridge = make_bridge(rules_file=rules, redis_url=server.url)
            finally:
                del os.environ["RECEIVER_URL"]
            env = cli_env(REDIS_URL=server.url, REVOR_BASE_URL=sandbox.api_url, RULES_FILE=str(rules),
                          RECEIVER_URL=receiver.url + "/status", BRIDGE_LEASE_SECONDS="3", REVOR_MAX_RPS="200",
                          WRITEBACK_RETRY_SCALE="0.002", LOG_LEVEL="INFO")
            log_path = tmp_path / "worker.log"
            worker = subprocess.Popen([sys.executable, "-m", "integration", "worker"], env=env, cwd=tmp_path,
                                      stdout=subprocess.DEVNULL, stderr=open(log_path, "w"), start_new_session=True)
            for number in range(4):
                _post_until_accepted(bridge, number)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not sandbox_requests(sandbox):
                time.sleep(0.05)

            server.stop()
            refused = [bridge.post("/webhooks/generic/zapier", zap(number), ZAP_HEADERS).status_code
                       for number in range(4, 8)]
            assert refused == [503] * 4  # nothing accepted that could not be stored: the senders retry
            time.sleep(6)  # longer than redis-py's own retries of one command
            assert worker.poll() is None, log_path.read_text()[-3000:]
            server.start()

            for number in range(4, 8):
                _post_until_accepted(bridge, number)
            client = redis.Redis.from_url(server.url)
            found = settle({"redis": client, "tmp": tmp_path}, expected=8, timeout=90)
            assert worker.poll() is None  # the same process all along
            ids = [t["body"]["metadata"]["dispatch_id"] for t in sandbox_tasks(sandbox)]
            assert sorted(ids) == sorted(found) and len(set(ids)) == 8, (ids, log_path.read_text()[-5000:])
            assert all(d["status"] == "succeeded" for d in found.values()), (found, log_path.read_text()[-5000:])
            try:
                assert_writebacks_complete(receiver_state, found)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{receiver_state['times']}\n{log_path.read_text()[-5000:]}") from None
            client.close()
            log = log_path.read_text()  # before SIGTERM: RQ's shutdown has tracebacks of its own
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:  # RQ can lose a SIGTERM raised inside a log call
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        server.stop()
    assert "unhandled exception" not in log and "Traceback" not in log, log[-3000:]
    for who in ("worker", "clock", "scheduler"):  # one line when it went, one when it came back
        assert log.count(f"{who}: Redis unreachable") <= 1 and log.count(f"{who}: Redis is back") <= 1, log[-3000:]
    assert "worker: Redis is back" in log and "clock: Redis is back" in log


def test_a_sigterm_swallowed_by_a_log_call_still_stops_the_worker(redis_db):
    """RQ raises StopRequested from its SIGTERM handler; inside a log call, logging swallows it."""
    import logging

    import pytest
    from rq import Queue
    from rq.exceptions import StopRequested

    from integration.jobs.worker import BridgeWorker

    worker = BridgeWorker([Queue("default", connection=redis_db)], connection=redis_db)
    class Interrupted:  # the signal arrives while a line is being written
        def write(self, text: str) -> None:
            worker._shutdown()

        def flush(self) -> None:
            pass

    handler = logging.StreamHandler(Interrupted())
    logging.getLogger("test.sigterm").addHandler(handler)
    try:
        logging.getLogger("test.sigterm").warning("a line")  # logging calls handleError: swallowed
    except StopRequested:
        pytest.fail("logging no longer swallows it; this test no longer models the problem")
    finally:
        logging.getLogger("test.sigterm").removeHandler(handler)
    assert worker._stop_requested  # the work loop stops after the job at hand
