"""The import's progress line (integration/imports/progress.py): a live line in a terminal, plain
periodic lines elsewhere, from the run's counters."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from integration.imports.progress import PlanProgress, Progress, duration, estimate_rows
from tests.test_import_run import STACK_RULES, leads_file, run_import
from tests.test_pipeline import _stack


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_terminal_redraws_in_place_at_most_five_times_a_second() -> None:
    counts = {"read": 0, "stored": 0, "dispatched": 0, "invalid": 0, "skipped": 0, "bad": 0}
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(lambda: counts, total=1000, stream=out, tty=True, clock=clock)
    drawn = 0
    for step in range(64):  # 64 updates in one second (1/64 s apart, exact in binary): 5 redraws
        counts.update(read=step * 10, stored=step * 9, bad=step, dispatched=step * 8, invalid=step)
        drawn += progress.tick()
        clock.now += 1 / 64
    assert drawn == 5
    text = out.getvalue()
    assert text.count("\r") == 5 and "\n" not in text
    last = text.rsplit("\r", 1)[1]
    assert last == ("520 of ~1,000 read · 640 rows/s · ETA 1 s · 416 dispatched · 52 invalid · 0 skipped · "
                    "52 bad\x1b[K")  # 520 rows finished in 52/64 s; 480 left


def test_plain_lines_every_ten_seconds_and_at_the_end() -> None:
    counts = {"read": 0, "stored": 0, "dispatched": 0, "status": "running"}
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(lambda: counts, total=600, stream=out, tty=False, clock=clock)
    for second in range(31):
        counts.update(read=second * 20, stored=second * 20, dispatched=second * 20)
        progress.tick()
        clock.now += 1
    counts.update(status="done")
    progress.finish()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 5  # at 0, 10, 20 and 30 s, and the end
    assert lines[2] == "import: 400 of ~600 read, 20 rows/s, ETA 10 s, 400 dispatched, 0 invalid, 0 skipped, 0 bad"
    assert lines[-1].startswith("import: 600 of 600 read, ") and ", done, 600 dispatched" in lines[-1]


def test_rate_is_recent_and_eta_counts_rows_left() -> None:
    counts = {"read": 0, "duplicate": 0, "no_match": 0}
    clock = FakeClock()
    progress = Progress(lambda: counts, total=10_000, stream=io.StringIO(), tty=False, clock=clock)
    figures = None
    for second in range(60):
        done = second * 100 if second < 30 else 3000 + (second - 30) * 10  # slows down after 30 s
        counts.update(read=done, duplicate=done // 2, no_match=done - done // 2)
        figures = progress.figures(counts, clock.now)
        clock.now += 1
    assert figures is not None and round(figures["rate"]) == 10  # the last 10 s, not the average
    assert figures["eta"] == (10_000 - 3290) / figures["rate"]
    assert "imported before" in progress.line(figures) and "no rule matched" in progress.line(figures)


def test_a_failing_read_is_skipped_and_the_last_figures_stay() -> None:
    calls = {"n": 0}

    def counters() -> dict[str, int]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("Redis away")
        return {"read": calls["n"]}

    clock, out = FakeClock(), io.StringIO()
    progress = Progress(counters, stream=out, tty=False, clock=clock, every=1)
    assert progress.tick() is True
    clock.now += 1
    assert progress.tick() is False
    clock.now += 1
    assert progress.tick() is True
    assert out.getvalue().splitlines()[-1].startswith("import: 3 rows read")


def test_the_dry_run_line_shows_only_when_planning_is_slow() -> None:
    planned = {"read": 0, "done": False}
    clock, out = FakeClock(), io.StringIO()
    quick = PlanProgress(lambda: planned, total=1000, stream=out, tty=True, clock=clock)
    quick.started = clock.now
    planned.update(read=1000, done=True)
    clock.now += 1.5
    assert quick.tick() is False  # under 2 s: nothing drawn, not even at the end
    quick.finish()
    assert out.getvalue() == ""
    slow = PlanProgress(lambda: planned, total=1_000_000, stream=out, tty=True, clock=clock)
    slow.started = clock.now
    planned.update(read=0, done=False)
    for second in range(1, 5):
        clock.now += 1
        planned["read"] = second * 5000
        slow.tick()
    assert out.getvalue().split("\r")[-1] == ("dry run: 20,000 of ~1,000,000 rows planned · 5,000 rows/s · "
                                              "ETA 3 min\x1b[K")
    planned.update(done=True)
    slow.finish()
    assert out.getvalue().endswith("20,000 rows planned · 5,000 rows/s · done\x1b[K\n")


def test_estimate_and_duration(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_bytes(b"a,b\n" + b"x" * 30 + b",y\n" + (b"1234567890,abcdefghijklmnopqrstu\n" * 99_999))
    assert abs(estimate_rows(path, sample_bytes=64 * 1024) - 100_000) < 200
    assert estimate_rows(tmp_path / "missing.csv") is None
    assert [duration(s) for s in (5, 600, 3 * 3600 + 600, 3 * 86400)] == ["5 s", "10 min", "3 h 10 min", "3 d"]


# ---- the real command: under a terminal (a pty) and without one ------------------------------------


@pytest.fixture
def leads_stack(tmp_path, make_bridge, redis_url, redis_db):
    """The import run tests' stack (tests/test_import_run.py): worker processes, the sandbox; no write-backs."""
    with _stack(tmp_path, make_bridge, redis_url, redis_db, STACK_RULES.replace("WRITEBACK\n", ""),
                {"REVOR_MAX_RPS": "1000"}) as stack:
        yield stack


def run_in_pty(command: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> tuple[int, bytes, float]:
    """Run `command` with stderr (and stdin, stdout) on a pseudo-terminal; return its code, all it
    wrote and how long it ran."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # 160 columns, as a terminal has
    os.set_blocking(master, True)
    started = time.monotonic()
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the last holder of the terminal closed it
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    code = proc.wait(timeout=timeout)
    elapsed = time.monotonic() - started
    reader.join(timeout=10)
    os.close(master)
    return code, b"".join(chunks), elapsed


def test_the_import_redraws_one_line_in_a_terminal_and_writes_plain_lines_elsewhere(leads_stack) -> None:
    stack = leads_stack
    stack["start_worker"]()
    # Each import waits for the worker to process what it stored (at most --max-pending ahead), so it
    # runs for a few seconds: long enough for several redraws and several plain lines.
    first = leads_file(stack["tmp"] / "first.csv", range(1, 601), vip_every=3)
    command = [sys.executable, "-m", "integration", "import", str(first), "--source", "csv:leads",
               "--max-pending", "50"]
    code, written, elapsed = run_in_pty(command, stack["env"], stack["tmp"])
    text = written.decode()
    assert code == 0, text
    progress = text[text.index("\r"):text.index("imported first.csv")]
    redraws = progress.count("\r") - progress.count("\r\n")  # the terminal turns \n into \r\n
    assert redraws >= 3, progress
    assert redraws <= 5 * elapsed + 2  # at most 5 a second
    last = progress.split("\r")[-2] if progress.endswith("\r\n") else progress.split("\r")[-1]
    assert last.startswith("600 of 600 read · ") and " · done · 200 dispatched · 0 invalid · 0 skipped · 0 bad" \
        in last, repr(last)
    assert "no rule matched" in last

    second = leads_file(stack["tmp"] / "second.csv", range(601, 1201), vip_every=3)
    plain = run_import(stack, str(second), "--source", "csv:leads", "--max-pending", "50", "--progress-every", "0.5")
    assert plain.returncode == 0, plain.stderr
    assert "\r" not in plain.stderr and "\x1b" not in plain.stderr
    lines = [line for line in plain.stderr.splitlines() if line.startswith("import: ")]
    assert len(lines) >= 3, plain.stderr  # every 0.5 s (10 s by default), and one at the end
    assert lines[-1].startswith("import: 600 of 600 read, ") and "rows/s, done, 200 dispatched, 0 invalid, " \
        "0 skipped, 0 bad" in lines[-1]
