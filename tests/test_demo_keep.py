"""`revor-bridge demo --keep` (issue 11 item 5): the demo's run stays up to be looked at in a browser.

The demo runs as a real process; the test signs in with the link it prints (as a browser would,
following the redirect and keeping the cookie), sees the dashboard and the demo's dispatches, then
stops it with a signal and checks that nothing it started is left: no process, no listening port.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import cli_env
from tests.test_procfile import listening


def _lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def _read_until(lines: queue.Queue, pattern: str, timeout: float, seen: list[str]) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.05, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen)}")


def _descendants(pid: int) -> set[int]:
    """Live processes started by `pid`, at any depth, and those in its session (from /proc)."""
    parents: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = (int(fields[1]), int(fields[4]))  # ppid, session
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, (ppid, _) in parents.items() if ppid in frontier} - found
        found |= frontier
    return found | {p for p, (_, session) in parents.items() if session == pid and p != pid}


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_keep_leaves_everything_up_with_a_sign_in_link_until_a_signal(tmp_path, stop):
    env = cli_env(BRIDGE_DATA_DIR=str(tmp_path / "data"))
    env.pop("ADMIN_TOKEN", None)  # the demo makes one up
    demo = subprocess.Popen([sys.executable, "-m", "integration", "demo", "--keep", "--time-scale", "300",
                             "--timeout", "60"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(demo.stdout, lines), daemon=True).start()
    seen: list[str] = []
    ports: set[int] = set()
    children: set[int] = set()
    try:
        link = _read_until(lines, r"dashboard +(http://127\.0\.0\.1:\d+/dashboard/sign-in/\S+)", 90, seen).group(1)
        token = _read_until(lines, r"ADMIN_TOKEN +(\S+)", 5, seen).group(1)
        curl = _read_until(lines, r"^ +(curl -X POST .*)$", 5, seen).group(1)
        _read_until(lines, r"press Ctrl-C", 5, seen)
        output = "".join(seen)
        assert ('done: {"salesforce-closed-won": "succeeded", "stage-linkedin": "succeeded", '
                '"won-whatsapp": "succeeded"}') in output
        ports = {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", output)}
        assert len(ports) == 4, output  # embedded Redis, sandbox, write-back receiver, web
        web = link.split("/dashboard/")[0]
        children = _descendants(demo.pid)
        assert len(children) >= 3, children  # the worker, its clock, the embedded Redis

        time.sleep(1)  # "everything keeps running" is not just for an instant
        browser = requests.Session()
        assert "rb_dashboard=" not in browser.get(link, timeout=10).headers.get("Set-Cookie", "")  # a look
        signed_in = browser.post(link, timeout=10)  # the page's Sign in button
        assert signed_in.status_code == 200 and signed_in.url.rstrip("/").endswith("/dashboard"), signed_in.url
        assert browser.get(f"{web}/dashboard", timeout=10).status_code == 200
        without = requests.get(signed_in.url, timeout=10)  # the same page without the session cookie
        assert "/dashboard/sign-in" in without.url, without.url
        assert requests.post(link, timeout=10).status_code == 403  # the link signs in once
        api = {"Authorization": f"Bearer {token}"}
        listed = requests.get(f"{web}/api/v1/dispatches", headers=api, timeout=10).json()["items"]
        # The samples' three succeeded; then the kept run added what a new user needs to see on
        # every page: a failed, an invalid and a skipped dispatch, and a dead letter.
        assert sorted((d["rule"], d["status"]) for d in listed) == [
            ("lost-followup", "succeeded"), ("salesforce-closed-won", "succeeded"), ("stage-linkedin", "failed"),
            ("stage-linkedin", "succeeded"), ("won-whatsapp", "invalid"), ("won-whatsapp", "skipped"),
            ("won-whatsapp", "succeeded")], output
        dead = requests.get(f"{web}/api/v1/deliveries/dead", headers=api, timeout=10).json()["items"]
        assert [d["destination"] for d in dead] == ["crm-archive"], dead
        # The printed curl, run as printed, posts one's own event, and the example rules pick it up.
        posted = subprocess.run([*shlex.split(curl), "-s", "-o", "/dev/null", "-w", "%{http_code}"],
                                capture_output=True, text=True, timeout=30)
        assert posted.stdout.startswith("2"), (curl, posted.stdout, posted.stderr)
        deadline, own = time.monotonic() + 30, []
        while not own and time.monotonic() < deadline:
            time.sleep(0.3)
            own = [d for d in requests.get(f"{web}/api/v1/dispatches", headers=api, timeout=10).json()["items"]
                   if d["crm"]["event_id"] == "my-first-event"]
        assert [(d["rule"], d["recipient"]) for d in own] == [("won-whatsapp", {"phone": "+14155550142"})]
        assert demo.poll() is None
    finally:
        if demo.poll() is None:
            demo.send_signal(stop)  # to the demo alone: it must stop what it started
        try:
            code = demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
            code = demo.wait(timeout=10)
        left = {pid for pid in children if Path(f"/proc/{pid}").exists()}
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert code == 0, "".join(seen) + "".join(iter(lambda: lines.get(timeout=5) or "", ""))
    assert left == set()
    assert [port for port in ports if listening(port)] == []


def test_a_demo_killed_outright_does_not_leave_its_worker_running(tmp_path):
    """kill -9 (or a closed terminal) gives the demo no chance to stop anything: the worker, in a
    session of its own, must still end (it got SIGTERM from the kernel), its clock with it. The
    embedded Redis may stay: the next demo in the folder reuses it."""
    env = cli_env(BRIDGE_DATA_DIR=str(tmp_path / "data"))
    demo = subprocess.Popen([sys.executable, "-m", "integration", "demo", "--keep", "--time-scale", "300",
                             "--timeout", "60"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(demo.stdout, lines), daemon=True).start()
    seen: list[str] = []
    started: set[int] = set()
    try:
        worker = int(_read_until(lines, r"worker +pid (\d+)", 90, seen).group(1))
        _read_until(lines, r"press Ctrl-C", 90, seen)
        started = _descendants(demo.pid)
        workers = {worker} | _descendants(worker)
        assert len(workers) >= 2, workers  # the worker and its clock
        demo.kill()
        demo.wait(timeout=10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
            time.sleep(0.2)
        left = {pid for pid in workers if Path(f"/proc/{pid}/stat").exists()
                and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"}
        assert left == set(), "".join(seen)
    finally:
        for pid in started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
