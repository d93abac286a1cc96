"""The import's progress line (integration/imports/progress.py): a live line in a terminal, plain
periodic lines elsewhere, from the run's counters."""

from __future__ import annotations

import io
from pathlib import Path

from integration.imports.progress import Progress, duration, estimate_rows


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
    assert last == ("520 of ~1,000 rows read · 416 dispatched · 52 invalid · 0 skipped · 52 bad · "
                    "640 rows/s · ETA 1 s\x1b[K")  # 520 rows finished in 52/64 s; 480 left


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
    assert lines[2] == "import: 400 of ~600 rows read, 400 dispatched, 0 invalid, 0 skipped, 0 bad, 20 rows/s, ETA 10 s"
    assert lines[-1].startswith("import: 600 of 600 rows read, 600 dispatched") and lines[-1].endswith("done")


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
    assert "already imported" in progress.line(figures) and "no rule matched" in progress.line(figures)


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


def test_estimate_and_duration(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_bytes(b"a,b\n" + b"x" * 30 + b",y\n" + (b"1234567890,abcdefghijklmnopqrstu\n" * 99_999))
    assert abs(estimate_rows(path, sample_bytes=64 * 1024) - 100_000) < 200
    assert estimate_rows(tmp_path / "missing.csv") is None
    assert [duration(s) for s in (5, 600, 3 * 3600 + 600, 3 * 86400)] == ["5 s", "10 min", "3 h 10 min", "3 d"]
