"""Issue 12: hostile files and hostile options against `revor-bridge import` (what an attack found).

Each test here failed before its fix: a cell that a spreadsheet runs as a formula in the result
CSV, `--result` overwriting the file being imported, a result path found unwritable only after the
whole import (with a traceback), a FIFO that hung the command, one endless line read whole into
memory, a header of a million columns, a trailing line break in `--source` ending in a traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tracemalloc

import pytest

from integration.imports import reader, result, runs
from integration.imports.reader import BadRow, NotCsv, Row, open_table
from tests.conftest import cli_env
from tests.test_import_run import (
    HEADER,
    STACK_RULES,
    assert_every_row_once,
    leads_file,
    result_rows,
    run_import,
    run_of,
    start_import,
    wait_for,
)
from tests.test_pipeline import _stack


@pytest.fixture
def stack(tmp_path, make_bridge, redis_url, redis_db):
    """The import tests' stack (tests/test_import_run.py quiet_stack): workers, sandbox, bridge."""
    with _stack(tmp_path, make_bridge, redis_url, redis_db, STACK_RULES.replace("WRITEBACK\n", ""),
                {"REVOR_MAX_RPS": "1000"}) as found:
        yield found

# ---- the reader ---------------------------------------------------------------------------------


def test_one_endless_line_is_a_bad_row_read_in_bounded_memory(tmp_path):
    """A quoted cell opened and never closed on a file without line breaks (40 MB here; 500 MB
    would do the same): one bad row, and the line is never held whole in memory."""
    path = tmp_path / "endless.csv"
    with path.open("wb") as out:
        out.write(b'Email,Name\na@example.com,"')
        block = b"z" * (1 << 20)
        for _ in range(40):
            out.write(block)
        out.write(b'"\nb@example.com,B\n')
    table = open_table(path)
    tracemalloc.start()
    try:
        rows = list(table.rows())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(type(row).__name__, row.line) for row in rows] == [("BadRow", 2), ("Row", 3)]
    assert rows[0].reason == f"line 2 is over {reader.MAX_LINE_CHARS:,} characters long (not read)"
    assert rows[1].fields == {"Email": "b@example.com", "Name": "B"}
    assert peak < 8 * reader.MAX_LINE_CHARS, peak  # a few line-sized pieces, not the 40 MB line


def test_a_long_line_inside_a_quoted_cell_makes_its_record_bad_and_lines_still_count(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text('Email,Note\na@example.com,"first\n' + "y" * (reader.MAX_LINE_CHARS + 5) + '\nlast"\n'
                    "b@example.com,B\n")
    rows = list(open_table(path).rows())
    assert [(type(row).__name__, row.line) for row in rows] == [("BadRow", 2), ("Row", 5)]
    assert "line 3 is over" in rows[0].reason


def test_a_header_of_a_million_columns_is_refused_in_one_line(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{n}" for n in range(reader.MAX_COLUMNS + 1)) + "\n" +
                    ",".join("v" for _ in range(reader.MAX_COLUMNS + 1)) + "\n")
    with pytest.raises(NotCsv, match=f"its header row has {reader.MAX_COLUMNS + 1:,} columns, at most"):
        open_table(path)
    path.write_text(",".join(f"c{n}" for n in range(reader.MAX_COLUMNS)) + "\n")
    assert len(open_table(path).headers) == reader.MAX_COLUMNS


def test_a_long_unquoted_cell_is_not_called_an_unclosed_quote(tmp_path):
    path = tmp_path / "bigcell.csv"
    path.write_text("Email,Name\na@example.com," + "x" * 1_000_000 + "\nb@example.com,B\n")
    rows = list(open_table(path).rows())
    assert isinstance(rows[0], BadRow) and isinstance(rows[1], Row)
    assert rows[0].reason == "a cell on line 2 is over 131,072 characters"


def test_a_fifo_is_refused_at_once_not_waited_on_forever(tmp_path):
    """`import <(cat list.csv)` or a named pipe: read once, then the hash and the rows open it
    again and wait for a writer that never comes. Refused before anything is read."""
    fifo = tmp_path / "list.csv"
    os.mkfifo(fifo)
    with pytest.raises(NotCsv, match="not a regular file"):
        open_table(fifo)
    writer = subprocess.Popen(["sh", "-c", f"printf 'Email,Name\\na@example.com,A\\n' > {fifo}"])
    try:
        done = subprocess.run([sys.executable, "-m", "integration", "import", str(fifo), "--source", "csv:leads"],
                              env=cli_env(REDIS_URL="redis://127.0.0.1:1/0"), cwd=tmp_path, capture_output=True,
                              text=True, timeout=30)
    finally:
        writer.kill()
        writer.wait()
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "list.csv is not a CSV file: it is not a regular file" in done.stderr


# ---- the result CSV ----------------------------------------------------------------------------


@pytest.mark.parametrize(("cell", "written"), [
    ('=HYPERLINK("http://evil.example","x")', '\'=HYPERLINK("http://evil.example","x")'),
    ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
    ("-2+3", "'-2+3"),
    ("@SUM(1+1)", "'@SUM(1+1)"),
    ("\t=1", "'\t=1"),
    ("-5", "-5"), ("+33", "+33"), ("12.5", "12.5"), ("lead-1", "lead-1"), ("", ""), (7, 7),
])
def test_a_cell_a_spreadsheet_would_run_is_written_as_text(cell, written):
    assert result.safe_cell(cell) == written


def test_hostile_ids_and_options_through_the_real_command(stack):
    """One stack for the command-line attacks: formula ids in the result CSV, a repeated id,
    --result naming the input, a missing folder or an unwritable place, a line break in --source."""
    stack["start_worker"]()
    tmp = stack["tmp"]
    evil = tmp / "evil.csv"
    evil.write_text(HEADER + '"=HYPERLINK(""http://evil.example"",""open"")",a@example.com,A,vip\n'
                    "+cmd|x,b@example.com,B,vip\n"
                    "dup,e@example.com,E,vip\n"
                    "dup,f@example.com,F,vip\n"
                    "@SUM(1),g@example.com,G,vip\n")
    done = run_import(stack, str(evil), "--source", "csv:leads")
    assert done.returncode == 0, done.stderr
    rows = {int(row["line"]): row for row in result_rows(tmp / "evil.result.csv")}
    assert rows[2]["event_id"] == '\'=HYPERLINK("http://evil.example","open")'
    assert rows[3]["event_id"] == "'+cmd|x" and rows[6]["event_id"] == "'@SUM(1)"
    assert all(row["status"] in ("pending", "accepted", "repeated") for row in rows.values()), rows
    # A second row with the same id is never sent, and the result says which row it repeats.
    assert rows[5]["status"] == "repeated" and rows[5]["dispatch_id"] == rows[4]["dispatch_id"]
    assert rows[5]["reason"].startswith("repeated in this file: imported once, as line 4")

    # --result naming the file being imported (or a link to it): refused before anything is stored.
    source = leads_file(tmp / "list.csv", range(100, 105))
    before = source.read_bytes()
    link = tmp / "link.csv"
    link.symlink_to(source)
    for target in (source, link):
        refused = run_import(stack, str(source), "--source", "csv:leads", "--result", str(target))
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.strip() == (f"revor-bridge import: --result {target} is the file being imported: "
                                          "choose another path for the result CSV")
    assert source.read_bytes() == before
    assert not stack["redis"].exists(runs.run_key(run_of(stack, source)))
    missing = run_import(stack, str(source), "--source", "csv:leads", "--result", str(tmp / "nowhere" / "r.csv"))
    assert missing.returncode == 2 and "the folder" in missing.stderr and "does not exist" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and not missing.stdout, missing.stderr
    assert not stack["redis"].exists(runs.run_key(run_of(stack, source)))
    # A place that looks writable and is not (/proc): the import is done, one line says where it failed.
    late = run_import(stack, str(source), "--source", "csv:leads", "--result", "/proc/list.result.csv")
    assert late.returncode == 2 and "Traceback" not in late.stderr, late.stderr
    assert "cannot write the result CSV to /proc/list.result.csv" in late.stderr.strip().splitlines()[-1]
    assert runs.load(stack["redis"], run_of(stack, source)).status == "done"
    status = subprocess.run([sys.executable, "-m", "integration", "import", "status", run_of(stack, source), "--csv",
                             "/proc/status.csv"], env=stack["env"], cwd=tmp, capture_output=True, text=True, timeout=60)
    assert status.returncode == 2 and "Traceback" not in status.stderr, status.stderr

    newline = run_import(stack, str(source), "--source", "csv:leads\n")
    assert newline.returncode == 1 and "Traceback" not in newline.stderr, newline.stderr
    assert "expected csv:<name>" in newline.stderr
    typed = run_import(stack, str(source), "--source", "csv:leads", "--type", "contact.imported\n")
    assert typed.returncode == 1 and "--type" in typed.stderr, typed.stderr


def test_two_exports_joined_into_one_file_give_the_same_ids_and_no_header_row(tmp_path):
    """`cat week1.csv week2.csv > all.csv` of two exports saved with a byte-order mark: the second
    header is a bad row (not an event named "Email"), and the second file's first id is `51`, not
    `\\ufeff51` (another event id: that row would have been sent twice)."""
    part = "Record ID,Email\n51,a@example.com\n"
    path = tmp_path / "all.csv"
    path.write_bytes(b"\xef\xbb\xbf" + part.encode() + b"\xef\xbb\xbf" + part.replace("51", "52").encode())
    rows = list(open_table(path).rows())
    assert [(type(row).__name__, row.line) for row in rows] == [("Row", 2), ("BadRow", 3), ("Row", 4)]
    assert rows[1].reason == "the header row again: not a row (two files joined into one?)"
    assert [rows[0].fields["Record ID"], rows[2].fields["Record ID"]] == ["51", "52"]
    path.write_text("\ufeffEmail,Name\r\n\ufeffa@example.com,A\r\n")
    assert [row.fields for row in open_table(path).rows()] == [{"Email": "a@example.com", "Name": "A"}]


def test_ctrl_c_twice_stops_at_once_and_the_run_says_interrupted(stack):
    """The second Ctrl-C stops the import wherever it is (here: its batch held by a Redis paused
    for writes, as during a failover); the run is left `interrupted`, not `running` with nothing
    running it, and the same command continues it: every row once."""
    rows = 2000
    path = leads_file(stack["tmp"] / "leads.csv", range(1, rows + 1), vip_every=50)
    run = run_of(stack, path)
    args = (str(path), "--source", "csv:leads", "--max-pending", "0")
    importing = start_import(stack, *args)
    wait_for(lambda: int(stack["redis"].hget(runs.run_key(run), "checkpoint") or 0) > 400, 60, "a few batches")
    stack["redis"].execute_command("CLIENT", "PAUSE", "2500", "WRITE")  # the batch in hand waits on Redis
    time.sleep(0.3)
    importing.send_signal(signal.SIGINT)
    time.sleep(0.3)
    importing.send_signal(signal.SIGINT)
    out, err = importing.communicate(timeout=60)
    assert importing.returncode == 130 and "Traceback" not in err, err
    found = runs.load(stack["redis"], run)
    assert found.status == "interrupted" and found.checkpoint < rows + 1, found
    stack["start_worker"]()
    again = run_import(stack, *args)
    assert again.returncode == 0, again.stderr
    assert_every_row_once(stack, path, rows, rows // 50)


def test_ctrl_c_during_the_dry_run_exits_130_with_one_line(stack):
    path = stack["tmp"] / "long.csv"
    with path.open("w") as out:
        out.write(HEADER)
        out.writelines(f"{n},lead{n}@example.com,Lead{n},vip\n" for n in range(1, 300_001))
    planning = start_import(stack, str(path), "--source", "csv:leads", "--dry-run", "--progress-every", "0.2")
    seen = []
    while not any("rows planned" in line for line in seen):  # its progress line: planning, 2 s in
        line = planning.stderr.readline()
        assert line, seen
        seen.append(line)
    planning.send_signal(signal.SIGINT)
    out, err = planning.communicate(timeout=60)
    assert planning.returncode == 130, (planning.returncode, err[-500:])
    last = err.strip().splitlines()[-1]
    assert last == "revor-bridge import: interrupted during the dry run: nothing was stored or sent", err[-500:]
    assert not stack["redis"].keys("rb:import*")
