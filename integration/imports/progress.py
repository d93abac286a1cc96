"""Watching an import go: one live line in a terminal, a plain line now and then in a log.

The figures come from a callable returning the run's counters (runs.py: the run hash, which the
importer and the workers both count into), so the line shows what the workers made of the rows,
not only what the importer read, and the dashboard can read the same figures the same way.

In a terminal (stderr is a TTY) the line is redrawn in place with `\\r`, at most 5 times a second,
cut to the terminal's width (a wrapped line can no longer be redrawn in place). Elsewhere (a log
file, CI, a pipe) one plain line every 10 seconds and one at the end, never a `\\r`.

The line starts with rows read, the rate and the ETA, so a terminal of 80 columns (the line is cut
to its width) always shows them; the outcomes follow.

Rate and ETA: rows finished (processed by a worker, or reported bad, or a duplicate of an earlier
import) per second over the last RATE_WINDOW seconds; the ETA is the rows left at that rate. Until
the whole file is read the total is an estimate from the file's size (`estimate_rows`), said with
a `~`.
"""

from __future__ import annotations

import collections
import io
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

TTY_EVERY = 0.2  # seconds between two redraws in a terminal: at most 5 a second
PLAIN_EVERY = 10.0  # seconds between two plain lines
RATE_WINDOW = 10.0  # seconds of history the rate is measured over
WORKER_COUNTERS = ("dispatched", "invalid", "skipped", "no_match", "failed", "cancelled")
CLEAR_TO_END = "\x1b[K"
SAMPLE_BYTES = 1 << 20


def estimate_rows(path: Path, sample_bytes: int = SAMPLE_BYTES) -> int | None:
    """About how many rows the file holds (its header aside), from the line length in its first MB."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            sample = handle.read(sample_bytes)
    except OSError:
        return None
    lines = sample.count(b"\n") + (0 if sample.endswith(b"\n") else 1)
    if not sample or lines < 1:
        return None
    if len(sample) >= size:
        return max(0, lines - 1)
    return max(0, round(size * lines / len(sample)) - 1)


def _number(value: Any) -> int:
    if isinstance(value, bytes):
        value = value.decode()
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def duration(seconds: float) -> str:
    """A short ETA: 45 s, 12 min, 3 h 10 min, 2 d 4 h."""
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


class Progress:
    """`with Progress(counters, total=...):` draws from a thread of its own until the block ends
    (then the last line); `tick()` draws once when one is due, for callers without a thread."""

    def __init__(self, counters: Callable[[], Mapping[str, Any]], *, total: int | None = None,
                 stream: TextIO | None = None, tty: bool | None = None, every: float | None = None,
                 clock: Callable[[], float] = time.monotonic, label: str = "import", delay: float = 0.0) -> None:
        self.counters = counters
        self.delay = delay  # no line at all for work that ends sooner (a small file's dry run)
        self.started: float | None = None
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self._isatty(self.stream) if tty is None else tty
        self.every = every if every is not None else (TTY_EVERY if self.tty else PLAIN_EVERY)
        self.clock = clock
        self.label = label
        self.samples: collections.deque[tuple[float, int]] = collections.deque()
        self.last_draw: float | None = None
        self.last: dict[str, Any] = {}
        self.drawn = 0
        self._width = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @staticmethod
    def _isatty(stream: TextIO) -> bool:
        try:
            return stream.isatty()
        except (AttributeError, ValueError):
            return False

    # ---- figures ---------------------------------------------------------------------------------

    def figures(self, counts: Mapping[str, Any], now: float) -> dict[str, Any]:
        """What the line shows: counters, finished rows, the total (exact once all is read), rate, ETA."""
        values = {name: _number(counts.get(name)) for name in
                  ("read", "stored", "duplicate", "repeated", "bad", *WORKER_COUNTERS)}
        finished = values["duplicate"] + values["repeated"] + values["bad"] + sum(values[name] for name in
                                                                                  WORKER_COUNTERS)
        read_all = _text(counts.get("status")) in ("stored", "done")
        total = values["read"] if read_all else self.total
        if total is not None and not read_all:
            total = max(total, values["read"])
        self.samples.append((now, finished))
        while len(self.samples) > 2 and self.samples[1][0] <= now - RATE_WINDOW:
            self.samples.popleft()
        then, before = self.samples[0]
        rate = (finished - before) / (now - then) if now > then else 0.0
        eta = (total - finished) / rate if total is not None and rate > 0 and total >= finished else None
        return {**values, "finished": finished, "total": total, "exact": read_all, "rate": rate, "eta": eta,
                "done": read_all and finished >= values["read"]}

    def line(self, figures: Mapping[str, Any]) -> str:
        """Rows read, rate and ETA first (what a terminal of 80 columns must show), then the outcomes."""
        total = figures["total"]
        if total is None:
            read = f"{figures['read']:,} rows read"
        else:
            read = f"{figures['read']:,} of {'' if figures['exact'] else '~'}{total:,} read"
        parts = [read, f"{figures['rate']:,.0f} rows/s"]
        if figures["done"]:
            parts.append("done")
        elif figures["eta"] is not None:
            parts.append(f"ETA {duration(figures['eta'])}")
        parts += [f"{figures[name]:,} {name}" for name in ("dispatched", "invalid", "skipped", "bad")]
        for name, label in (("repeated", "repeated in file"), ("duplicate", "imported before"),
                            ("no_match", "no rule matched"), ("failed", "failed"), ("cancelled", "cancelled")):
            if figures[name]:
                parts.append(f"{figures[name]:,} {label}")
        return (" · " if self.tty else ", ").join(parts)

    # ---- drawing ---------------------------------------------------------------------------------

    def tick(self, force: bool = False) -> bool:
        """Read the counters and draw, if a draw is due (or `force`); False when nothing was drawn."""
        with self._lock:
            now = self.clock()
            if not force and self.last_draw is not None and now - self.last_draw < self.every:
                return False
            if self.delay and not self.drawn and (self.started is None or now - self.started < self.delay):
                return False
            try:
                self.last = dict(self.counters())
            except Exception:  # Redis away for a moment: the next tick tries again, the import goes on
                if not force or not self.last:
                    return False
            self.last_draw = now
            self._draw(self.line(self.figures(self.last, now)))
            return True

    def _draw(self, text: str) -> None:
        if self.tty:
            width = self._columns()
            self.stream.write("\r" + text[:width - 1] + CLEAR_TO_END)
        else:
            self.stream.write(f"{self.label}: {text}\n")
        self.stream.flush()
        self.drawn += 1

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 80
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):  # not a real terminal
            return 200

    def finish(self) -> None:
        """The last figures, drawn whatever the time since the previous line; a terminal gets its line break."""
        self.stop()
        if self.delay and not self.drawn:
            return
        self.tick(force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    # ---- the drawing thread ------------------------------------------------------------------------

    def start(self) -> Progress:
        self.started = self.clock()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="import-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None

    def _loop(self) -> None:
        if self.tty and not self.delay:
            self.tick(force=True)
        else:  # a log's first line comes after `every` seconds; the rate counts from now
            with self._lock:
                self.last_draw = self.clock()
                try:
                    self.last = dict(self.counters())
                    self.figures(self.last, self.last_draw)
                except Exception:
                    pass
        while True:
            due = self.every - (self.clock() - (self.last_draw or 0.0))
            if self._stop.wait(max(due, 0.01)):
                return
            self.tick()

    def __enter__(self) -> Progress:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.finish()


class PlanProgress(Progress):
    """The dry run's line: rows planned so far (`counters()` gives {"read": n}), rate and ETA; shown
    only when planning takes longer than `delay` seconds (a million rows take a few minutes)."""

    def __init__(self, counters: Callable[[], Mapping[str, Any]], **options: Any) -> None:
        options.setdefault("label", "dry run")
        options.setdefault("delay", 2.0)
        super().__init__(counters, **options)

    def figures(self, counts: Mapping[str, Any], now: float) -> dict[str, Any]:
        planned = _number(counts.get("read"))
        self.samples.append((now, planned))
        while len(self.samples) > 2 and self.samples[1][0] <= now - RATE_WINDOW:
            self.samples.popleft()
        then, before = self.samples[0]
        rate = (planned - before) / (now - then) if now > then else 0.0
        total = max(self.total, planned) if self.total is not None else None
        eta = (total - planned) / rate if total is not None and rate > 0 else None
        return {"read": planned, "total": total, "rate": rate, "eta": eta, "done": bool(counts.get("done"))}

    def line(self, figures: Mapping[str, Any]) -> str:
        total = figures["total"]
        parts = [f"{figures['read']:,} rows planned" if total is None or figures["done"]
                 else f"{figures['read']:,} of ~{total:,} rows planned", f"{figures['rate']:,.0f} rows/s"]
        if figures["done"]:
            parts.append("done")
        elif figures["eta"] is not None:
            parts.append(f"ETA {duration(figures['eta'])}")
        return (" · " if self.tty else ", ").join(["dry run: " + parts[0] if self.tty else parts[0], *parts[1:]])
