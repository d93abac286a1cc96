"""Reading a CSV file as a stream of rows, whatever spreadsheet or CRM saved it.

Excel, Numbers, LibreOffice and the CRMs' exports disagree on almost everything: UTF-8 with or
without a byte-order mark, UTF-16 ("Unicode text", tab-separated), Windows-1252 with `;` (a
European Excel's "CSV"), quoted cells holding line breaks. `open_table` looks at the first 64 KB
once to decide the encoding and the delimiter and reads the header row; `Table.rows` then reads
the file line by line (never the whole file in memory) and yields one `Row` per record, numbered
by the physical line where it starts, so a reason in the result CSV points at the line a person
sees in an editor. A record that cannot be read is a `BadRow` with that line and a reason: one bad
line never stops an import. A file that is not CSV at all is `NotCsv`, raised once, with one line
that says what the file is.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_BYTES = 64 * 1024
DELIMITERS = (",", ";", "\t")
DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}  # a pipe only when `sep=|` says so
# Records read to choose the delimiter: enough to see that the columns line up.
SNIFF_RECORDS = 50
# A physical line is read at most this many characters at a time: a file of one endless line
# (no line break in 500 MB) is a bad row, not 500 MB in memory (nor millions of cells: a line
# of `a,a,a,...` this long is a million of them, about 60 MB). A cell is capped by
# csv.field_size_limit() (131,072 characters) already; a CRM export's row is a few KB.
MAX_LINE_CHARS = 1 << 21
# More columns than any CRM export has: a row of them would be an event of megabytes.
MAX_COLUMNS = 5000

# Undecodable bytes become lone surrogates U+DC00+byte (what `surrogateescape` does for UTF-8, but
# for every codec, UTF-16 included), which no valid text decodes to: a line holding one is bad.
_ERRORS = "revor-bridge-mark-undecodable"
_SURROGATE = re.compile("[\ud800-\udfff]+")
# How many undecodable sequences this thread's decoders marked: a reader starts searching its
# cells when the count moves (decoders run in the thread that reads).
_MARKED = threading.local()
# Python's codec for each encoding `open_table` reports.
CODECS = {"utf-8": "utf-8", "utf-8-sig": "utf-8-sig", "utf-16": "utf-16", "utf-16-le": "utf-16-le",
          "utf-16-be": "utf-16-be", "cp1252": "cp1252"}
ENCODING_NAMES = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8", "utf-16": "UTF-16", "utf-16-le": "UTF-16",
                  "utf-16-be": "UTF-16", "cp1252": "Windows-1252"}

# What a file is when it is not text: (signature, what to tell the person who chose it).
SIGNATURES = (
    (b"PK\x03\x04", "it is a ZIP archive (an Excel .xlsx or Numbers file is one): save the sheet as CSV and "
                    "import that"),
    (b"PK\x05\x06", "it is an empty ZIP archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "it is an Excel 97-2003 workbook (.xls): save the sheet as CSV and "
                                          "import that"),
    (b"\x89PNG\r\n\x1a\n", "it is a PNG image"),
    (b"\xff\xd8\xff", "it is a JPEG image"),
    (b"GIF8", "it is a GIF image"),
    (b"%PDF", "it is a PDF document"),
    (b"\x1f\x8b", "it is gzip-compressed: decompress it first"),
)
# Excel reads (and some exports write) a first line `sep=;` naming the delimiter.
_SEP_HINT = re.compile(r"sep=([,;\t|])[ \t]*(?:\r\n|\r|\n)")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
# A lone column name: a few words, no sentence (for a file with one column and so no delimiter).
_ONE_COLUMN_HEADER = re.compile(r"[^\W_][\w .()/#&'+:-]{0,63}")


Refuse = Callable[[str], "NotCsv"]


class NotCsv(Exception):  # noqa: N818 - the name says what the file is not
    """The file is not CSV at all (binary, a workbook, JSON, empty): one line saying what it is."""


@dataclass(frozen=True, slots=True)
class Row:
    """One record: `line` is the file's 1-based physical line where it starts."""

    line: int
    fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class BadRow:
    """A record that cannot be read (undecodable bytes, wrong cell count, broken quoting)."""

    line: int
    reason: str


@dataclass(frozen=True)
class Table:
    """A CSV file's shape, decided once; `rows()` reads the file again from its start each time."""

    path: Path
    headers: list[str]
    encoding: str
    delimiter: str
    # The line after the header record (a header cell may span lines too).
    first_data_line: int
    # Said once per file: header names that were empty or repeated, and how they were renamed.
    warnings: list[str] = field(default_factory=list)

    @property
    def delimiter_name(self) -> str:
        return DELIMITER_NAMES[self.delimiter]

    def rows(self, *, skip_to_line: int = 0) -> Iterator[Row | BadRow]:
        """The data records in file order; those starting at or before `skip_to_line` are skipped
        (read, since a quoted cell may hold line breaks, but not built): an import continues there."""
        width = len(self.headers)
        headers = self.headers
        records = _records(self.path, self.encoding, self.delimiter)
        for start, _end, cells, problem in records:
            if start < self.first_data_line or start <= skip_to_line:
                continue
            if problem is None and cells[0][:1] == "\ufeff":
                # Two exports joined (`cat a.csv b.csv`): the second one's byte-order mark starts a
                # row; kept, it would make `\ufeff51` another id than `51` and send that row twice.
                cells[0] = cells[0].lstrip("\ufeff")
            if problem is None and cells[0].strip() == headers[0] and unique_headers(cells)[0] == headers:
                problem = "the header row again: not a row (two files joined into one?)"
            if problem is not None:
                yield BadRow(start, problem)
            elif len(cells) == width:
                yield Row(start, dict(zip(headers, cells, strict=True)))
            elif len(cells) < width:
                # Some tools drop a row's trailing empty cells: the missing ones are empty.
                yield Row(start, dict(zip(headers, cells + [""] * (width - len(cells)), strict=True)))
            elif not any(cell.strip() for cell in cells[width:]):
                yield Row(start, dict(zip(headers, cells[:width], strict=True)))  # trailing delimiters
            else:
                yield BadRow(start, f"{len(cells)} cells where the header has {width} columns")


def iter_rows(path: Path, *, skip_to_line: int = 0) -> Iterator[Row | BadRow]:
    """`open_table(path).rows(skip_to_line=...)`: raises NotCsv before the first row."""
    return open_table(path).rows(skip_to_line=skip_to_line)


def open_table(path: Path) -> Table:
    """Decide the file's encoding and delimiter from its first 64 KB and read its header row.

    Raises NotCsv (one line, naming the file) when the file is not CSV at all."""
    path = Path(path)
    _register_error_handler()

    def refuse(why: str) -> NotCsv:
        return NotCsv(f"{path.name} is not a CSV file: {why}")

    # A pipe (`<(...)`, a FIFO) or a device can be read once: an import reads its file again (to
    # hash it, to continue a run, for the result), and a second open of a FIFO waits forever.
    if not stat.S_ISREG(path.stat().st_mode):
        raise refuse("it is not a regular file (a pipe, a device or a directory): save it to a file first")
    with path.open("rb") as raw:
        sample = raw.read(SAMPLE_BYTES + 1)
    complete = len(sample) <= SAMPLE_BYTES
    sample = sample[:SAMPLE_BYTES]

    for signature, what in SIGNATURES:
        if sample.startswith(signature):
            raise refuse(what)
    encoding = _sniff_encoding(sample, complete, refuse)
    text = codecs.getincrementaldecoder(CODECS[encoding])(errors=_ERRORS).decode(sample, final=complete)
    if not complete:  # the last line may be cut: sniff whole lines only
        cut = max(text.rfind("\n"), text.rfind("\r"))
        text = text[:cut + 1] if cut > 0 else text
    stripped = text.lstrip("\ufeff \t\r\n")
    if not stripped:
        raise refuse("it is empty" if not text.strip("\ufeff") else "it holds only blank lines, no header row")
    if stripped[0] == "{" or (stripped[0] == "[" and stripped[1:].lstrip()[:1] in ("{", "[", '"', "]")):
        raise refuse(f"it is JSON (it starts with `{stripped[0]}`)")
    if stripped[0] == "<":
        raise refuse("it is XML or HTML (it starts with `<`)")
    hint = _SEP_HINT.match(stripped)
    if hint:  # Excel's `sep=;` first line: the delimiter said, not guessed
        preamble = len(_LINE_BREAK.findall(text, 0, len(text) - len(stripped) + hint.end()))
        delimiter = hint.group(1)
    else:
        preamble, delimiter = 0, _sniff_delimiter(text, refuse)
    header_start, first_data_line, cells, problem = _header_record(path, encoding, delimiter, preamble, refuse)
    if problem is not None:
        raise refuse(f"its header row (line {header_start}) cannot be read: {problem}")
    looks_like_data = next((cell.strip() for cell in cells if _EMAIL.fullmatch(cell.strip())), None)
    if looks_like_data:
        raise refuse(f"its first row holds data ({looks_like_data!r}), not column names: add a header row")
    if len(cells) > MAX_COLUMNS:
        raise refuse(f"its header row has {len(cells):,} columns, at most {MAX_COLUMNS:,}: export fewer columns")
    headers, warnings = unique_headers(cells)
    return Table(path, headers, encoding, delimiter, first_data_line, warnings)


def unique_headers(cells: list[str]) -> tuple[list[str], list[str]]:
    """Header names stripped, an empty one named after its position, a repeated one numbered."""
    headers: list[str] = []
    renamed: list[str] = []
    seen: set[str] = set()
    for position, cell in enumerate(cells, 1):
        name = cell.strip().lstrip("\ufeff").strip()
        base = name or f"Column {position}"
        candidate, n = base, 1
        while candidate.casefold() in seen:
            n += 1
            candidate = f"{base} ({n})"
        if not name:
            renamed.append(f"column {position} has no name: called {candidate!r}")
        elif candidate != name:
            renamed.append(f"column {position} repeats the name {name!r}: called {candidate!r}")
        seen.add(candidate.casefold())
        headers.append(candidate)
    return headers, ([f"header: {'; '.join(renamed)}"] if renamed else [])


def _register_error_handler() -> None:
    try:
        codecs.lookup_error(_ERRORS)
    except LookupError:
        codecs.register_error(_ERRORS, _mark_undecodable)


def _mark_undecodable(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    _MARKED.count = _marks() + 1
    return "".join(chr(0xDC00 + byte) for byte in exc.object[exc.start:exc.end]), exc.end


def _sniff_encoding(sample: bytes, complete: bool, refuse: Refuse) -> str:
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if b"\x00" in sample:
        # UTF-16 without a byte-order mark: ASCII text has a NUL in every other byte.
        head = sample[:4096]
        even, odd = head[0::2].count(0), head[1::2].count(0)
        if odd >= len(head) // 4 and even == 0:
            return "utf-16-le"
        if even >= len(head) // 4 and odd == 0:
            return "utf-16-be"
        raise refuse("it holds binary data (NUL bytes)")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=complete)
    except UnicodeDecodeError:
        return "cp1252"  # what Excel on Windows saves as "CSV" outside "CSV UTF-8"
    return "utf-8"


def _sniff_delimiter(text: str, refuse: Refuse) -> str:
    """The delimiter whose header has the most columns among those with which the first records
    line up; `,` for a file of one column, when its first line plausibly names that column."""
    best: tuple[float, int, str] | None = None
    for delimiter in DELIMITERS:
        records = [cells for cells in _sample_records(text, delimiter) if any(c.strip() for c in cells)]
        if not records or len(records[0]) < 2:
            continue
        width = len(records[0])
        data = records[1:]
        fit = sum(len(cells) == width for cells in data) / len(data) if data else 1.0
        score = (fit, width, delimiter)
        if best is None or score[:2] > best[:2]:
            best = score
    if best is not None:
        return best[2]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if _ONE_COLUMN_HEADER.fullmatch(first.strip('"')):
        return ","
    shown = first if len(first) <= 40 else first[:37] + "..."
    raise refuse(f"its first line has no comma, semicolon or tab and does not name a column: {shown!r}")


def _sample_records(text: str, delimiter: str) -> Iterator[list[str]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        for n, cells in enumerate(reader):
            if n >= SNIFF_RECORDS:
                return
            yield cells
    except csv.Error:
        return


def _header_record(path: Path, encoding: str, delimiter: str, preamble: int,
                   refuse: Refuse) -> tuple[int, int, list[str], str | None]:
    """(start line, first line after it, cells, problem) of the first record that is not blank
    after the `preamble` lines."""
    for start, end, cells, problem in _records(path, encoding, delimiter):
        if start <= preamble:
            continue
        if problem is not None or any(cell.strip() for cell in cells):
            return start, end + 1, cells, problem
    raise refuse("it holds only blank lines, no header row")


def _records(path: Path, encoding: str, delimiter: str) -> Iterator[tuple[int, int, list[str], str | None]]:
    """Every record that is not blank: (start line, end line, cells, why it cannot be read or None).

    Lines are physical lines as an editor counts them (`\\r\\n`, `\\n` or a lone `\\r` ends one);
    a record spans several when a quoted cell holds line breaks. Records whose cells are all blank
    (empty lines, the `,,,,` rows a spreadsheet leaves after formatted cells) are not rows at all.
    Cells are searched for marked (undecodable) bytes only once the decoder has marked some: a
    clean file, nearly every file, pays nothing for it.
    """
    _register_error_handler()
    name = ENCODING_NAMES[encoding]
    marks = _marks()
    careful = False
    with path.open("rb") as raw:
        text = io.TextIOWrapper(raw, encoding=CODECS[encoding], errors=_ERRORS, newline="")
        cut: list[int] = []  # lines over MAX_LINE_CHARS, in order: each read as one line break
        reader = csv.reader(_bounded_lines(text, cut), delimiter=delimiter, strict=True)
        end = 0
        while True:
            start = end + 1
            try:
                cells = next(reader)
                problem = None
            except StopIteration:
                return
            except csv.Error as exc:
                cells, problem = [], _csv_problem(str(exc), start, reader.line_num)
            end = reader.line_num
            if cut and cut[0] <= end:
                long = [line for line in cut if line <= end]
                del cut[:len(long)]
                if long[-1] >= start:
                    yield start, end, [], (f"line {long[-1]} is over {MAX_LINE_CHARS:,} characters long "
                                           "(not read)")
                    continue
            if problem is None:
                if not (cells and cells[0].strip()) and not any(cell.strip() for cell in cells):
                    continue
                careful = careful or _marks() != marks
                if careful:
                    problem = _undecodable(cells, name)
            yield start, end, cells, problem


def _bounded_lines(text: io.TextIOBase, cut: list[int]) -> Iterator[str]:
    """The file's physical lines, each read at most MAX_LINE_CHARS characters at a time; a longer
    one is skipped to its end (in pieces, never whole in memory), given as a bare line break and
    its number added to `cut`, so the record holding it is reported bad and line numbers hold."""
    readline = text.readline
    number = 0
    while line := readline(MAX_LINE_CHARS):
        number += 1
        if len(line) == MAX_LINE_CHARS and line[-1] not in "\r\n":
            while (more := readline(MAX_LINE_CHARS)) and len(more) == MAX_LINE_CHARS and more[-1] not in "\r\n":
                pass
            cut.append(number)
            line = "\n"
        yield line


def _marks() -> int:
    return getattr(_MARKED, "count", 0)


def _undecodable(cells: list[str], encoding_name: str) -> str | None:
    """Why a record holding marked bytes cannot be read: the bytes and the cell they are in."""
    for position, cell in enumerate(cells, 1):
        found = None if cell.isascii() else _SURROGATE.search(cell)
        if found is not None:
            shown = " ".join(f"0x{ord(char) - 0xDC00:02X}" for char in found.group()[:4])
            return f"not valid {encoding_name} text (byte {shown} in cell {position})"
    return None


def _csv_problem(message: str, start: int, end: int) -> str:
    span = f"lines {start}-{end}" if end > start else f"line {start}"
    if "field larger than field limit" in message and end == start:  # no quoted line break: one long cell
        return f"a cell on line {start} is over {csv.field_size_limit():,} characters"
    if "field larger than field limit" in message:
        return f"a quoted cell opened on line {start} is not closed ({span} read as one cell of over " \
               f"{csv.field_size_limit()} characters)"
    if "unexpected end of data" in message:
        return f"a quoted cell opened on line {start} is not closed before the end of the file"
    if "expected after" in message:
        return f"a quote inside a quoted cell is not doubled ({message})"
    return f"unreadable CSV ({message})"
