"""A first-time user's path: commands started together, `revor-bridge dev`, a wheel install, the errors.

Every test here runs real processes (`python -m integration ...` or the installed console
script) against real redis-server and HTTP servers on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from tests.conftest import cli_env


def _redis_servers_for(folder: Path) -> list[int]:
    """Pids of live redis-server processes working in `folder` (redis chdirs to its --dir; from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "comm").read_text().strip()
            state = (entry / "stat").read_text().split(")")[-1].split()[0]
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if name.startswith("redis-server") and state != "Z" and cwd == str(folder.resolve()):
            pids.append(int(entry.name))
    return sorted(pids)


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_commands_started_together_share_one_embedded_redis(tmp_path):
    """Issue 9 item 15: four commands resolving the embedded server at once get one server, not four."""
    start_at = time.time() + 1.5  # every process imports first, then all race for the server together
    code = ("import sys, time; from pathlib import Path; from integration.storage import resolve_redis_url;"
            f"time.sleep(max(0, {start_at!r} - time.time()));"
            f"url, embedded = resolve_redis_url(None, Path({str(tmp_path)!r})); print(url, embedded.pid)")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=cli_env()) for _ in range(4)]
    try:
        outputs = [proc.communicate(timeout=60) for proc in procs]
        assert all(proc.returncode == 0 for proc in procs), outputs
        answers = {out.strip() for out, _ in outputs}
        servers = _redis_servers_for(tmp_path / "redis")
        assert len(answers) == 1, f"each command got its own server: {answers}"
        url, pid = answers.pop().split()
        assert servers == [int(pid)]
        assert redis.Redis.from_url(url).ping()
    finally:
        _kill_all(_redis_servers_for(tmp_path / "redis"))
