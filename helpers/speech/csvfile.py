"""Reading a person's CSV of recordings, as people really write them.

The reference layout is one row per recording: the audio file (relative to the CSV's folder) and its transcript
(``file,中文意譯``). What this module copes with, so that nothing is lost and every message can be acted on:

* encodings: a byte-order mark decides (UTF-8, UTF-16, UTF-32); a file without one is tried as UTF-8, cp950
  (Big5 as Windows in Taiwan writes it) and Big5-HKSCS; UTF-16 without a mark is recognised by its zero bytes;
  ``encoding`` (the ``csv_encoding`` parameter) overrides all of it;
* delimiters: comma, semicolon, tab or vertical bar, whichever splits the header into the columns asked for;
  ``delimiter`` (``csv_delimiter``) overrides it;
* line numbers are *physical* lines of the file (header = line 1 unless blank lines precede it), counted
  across blank lines and line breaks inside quoted transcripts, so a message points at the line an editor shows;
* a line the CSV rules cannot read (an unclosed or misplaced double quote, more fields than the header) becomes
  a row with a ``problem`` that :func:`helpers.speech.checks.check_rows` reports; the other lines are still read;
* audio paths written with backslashes (``audio\\x.wav``) are taken with forward slashes when that file exists;
  ``file://`` addresses become paths; ``~`` is the home folder.

Whole-file problems (no such file, 0 bytes, undecodable, no header, columns missing) raise
:class:`~helpers.speech.errors.DataError` naming the file and what to do.
"""
from __future__ import annotations

import codecs
import csv
import io
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd

from .audio import AUDIO_SUFFIXES
from .errors import DataError, DataFileNotFound

CSV_ENCODINGS = ("utf-8-sig", "cp950", "big5hkscs")  # tried in order without a byte-order mark; utf-8-sig reads UTF-8
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "vertical bar"}  # detected, in this order
_LINE_END = re.compile(r"(?<=\r\n)|(?<=\r)(?!\n)|(?<=\n)")  # where the csv module ends a physical line
_QUOTING = "put the transcript between double quotes, with any double quote inside it doubled (\"\")"
_CSV_ERRORS = {  # the csv module's words -> what they mean and what to do, for the person who wrote the file
    "unexpected end of data": f"a double quote opened on this line is never closed: close it, or {_QUOTING}",
    "expected after": f"a double quote in the middle of a field: {_QUOTING}",
    "NUL": "the line holds a NUL byte: is this a spreadsheet file rather than a CSV? Save the table as CSV",
    "field larger than field limit": "a field longer than 131072 characters: a double quote that is never closed?",
}


def read_csv(path: str | Path, audio_column: str = "file", text_column: str | None = "中文意譯",
             split: str = "train", encoding: str | None = None, speaker_column: str | None = None,
             delimiter: str | None = None) -> pd.DataFrame:
    """Read a CSV of recordings into manifest rows (durations left empty for :func:`checks.check_rows`).

    Returns one row per non-blank line: ``audio`` (absolute path; relative paths are taken from the CSV's folder),
    ``text`` (stripped; empty when ``text_column`` is None: audio without transcripts), ``duration`` (NaN),
    ``split``, ``source`` ("csv"), ``row`` (the physical line the record starts on), ``csv`` (the file's path),
    ``speaker`` with ``speaker_column``, and ``problem`` / ``problem_detail`` for a line the CSV rules cannot read
    (empty otherwise). ``encoding`` / ``delimiter`` None: detected (see the module notes). Raises
    :class:`DataError` for whole-file problems (``DataFileNotFound`` when the file does not exist).
    """
    path = Path(path)
    content, used = decode(_read_bytes(path), path, encoding)
    lines = [line for line in _LINE_END.split(content) if line]
    needed = [c for c in (audio_column, text_column, speaker_column) if c]
    first, delimiter, header = _header(lines, path, needed, delimiter, used)
    where = {name: header.index(name) for name in needed}
    records = []
    for line, fields, problem in physical_records(lines, first + 1, delimiter):
        if fields is not None and not any(f.strip() for f in fields):
            continue  # a blank line, or one of delimiters only (spreadsheets add them): not a row
        if problem is None:
            problem = _record_problem(fields, header, where, delimiter)
        cells = {name: fields[i].strip() if problem is None and i < len(fields) else "" for name, i in where.items()}
        records.append({
            "audio": audio_path(cells[audio_column], path.parent), "text": cells.get(text_column, ""),
            "duration": float("nan"), "split": split, "source": "csv", "row": line, "csv": str(path),
            **({"speaker": cells[speaker_column]} if speaker_column else {}),
            "problem": "malformed CSV line" if problem else "", "problem_detail": problem or ""})
    columns = ["audio", "text", "duration", "split", "source", "row", "csv"] + (["speaker"] if speaker_column else [])
    return pd.DataFrame(records, columns=columns + ["problem", "problem_detail"])


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataFileNotFound(f"CSV file {path} does not exist: check the path (relative paths start at the "
                               "repository's folder)") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not a CSV file: name the CSV file inside it") from None
    except PermissionError:
        raise DataError(f"CSV file {path}: no permission to read it; make it readable (chmod a+r)") from None
    except OSError as err:
        raise DataError(f"CSV file {path} cannot be read: {err.strerror or err}") from None
    if not raw:
        raise DataError(f"CSV file {path} is empty (0 bytes): save your table into it again, with a header line "
                        "such as `file,中文意譯`")
    return raw


def decode(raw: bytes, path: Path, encoding: str | None = None) -> tuple[str, str]:
    """The text of a CSV file's bytes and the encoding that read it: ``encoding`` when given, else the one its
    byte-order mark names, else UTF-16 when every other byte is zero, else the first of :data:`CSV_ENCODINGS` that
    decodes. Raises :class:`DataError` naming the encodings tried and the line of the first byte that failed."""
    if encoding:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise DataError(f"csv_encoding {encoding!r} is not an encoding name Python knows; use e.g. 'utf-8', "
                            "'utf-16', 'cp950' or 'big5hkscs' (or None to detect it)") from None
        tried = [encoding]
    else:
        tried = [_marked_encoding(raw)] if _marked_encoding(raw) else list(CSV_ENCODINGS)
    first_failure = None
    for name in tried:
        try:
            return raw.decode(name).removeprefix("\ufeff"), name
        except UnicodeDecodeError as err:
            first_failure = first_failure or err
    line = raw[: first_failure.start].count(b"\n") + 1
    raise DataError(f"{path}: cannot decode the file as {' or '.join(tried)}; save it as UTF-8, or give its encoding "
                    f"(csv_encoding, e.g. 'utf-16' or 'cp950'). The first byte {tried[0]} cannot read is on line "
                    f"{line}.")


def _marked_encoding(raw: bytes) -> str | None:
    """The encoding a byte-order mark names, or UTF-16 recognised by its zero bytes; None otherwise."""
    for mark, name in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
                       (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if raw.startswith(mark):
            return name
    sample = raw[:4096]
    odd, even = sample[1::2].count(0), sample[0::2].count(0)  # UTF-16 writes every ASCII character with a zero
    if len(sample) >= 4 and max(odd, even) >= len(sample) // 10:  # byte; UTF-8 and Big5 text holds none
        return "utf-16-le" if odd > even else "utf-16-be"
    return None


def _header(lines: list[str], path: Path, needed: list[str], delimiter: str | None,
            encoding: str) -> tuple[int, str, list[str]]:
    """``(index of the header line, delimiter, column names)``; raises :class:`DataError` when the columns asked
    for are not there, saying which the file has and what to set."""
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise DataError(f"CSV file {path} holds only blank lines: write a header line such as `file,中文意譯` and "
                        "one line per recording")
    if delimiter is not None:
        delimiter = {"tab": "\t", "\\t": "\t"}.get(delimiter, delimiter)
        if len(delimiter) != 1:
            raise DataError(f"csv_delimiter must be one character (',', ';', 'tab' or '|'), got {delimiter!r}")
    candidates = [delimiter] if delimiter else list(DELIMITERS)
    split = {d: [c.strip() for c in next(csv.reader([lines[first].rstrip("\r\n")], delimiter=d))] for d in candidates}
    for d in candidates:
        if all(name in split[d] for name in needed):
            return first, d, split[d]
    best = max(candidates, key=lambda d: len(split[d]))
    columns = split[best]
    missing = [name for name in needed if name not in columns]
    message = (f"{path}: no column(s) {missing}; the file has columns {columns} (line {first + 1}, read as "
               f"{encoding}, {DELIMITERS.get(best, repr(best))}-separated). Set audio_column / text_column / "
               "speaker_column to the right names")
    if any(c.lower().endswith(AUDIO_SUFFIXES) for c in columns):
        message += f". The first line looks like a recording, not a header: add a header line such as " \
                   f"`{','.join(needed[:2])}` at the top"
    if delimiter and any(d in lines[first] for d in DELIMITERS if d != delimiter):
        message += ", or set csv_delimiter to the character that separates the columns (None: detect it)"
    raise DataError(message + ".")


def physical_records(lines: list[str], start: int, delimiter: str):
    """Yield ``(line number, fields, problem)`` for each CSV record in ``lines[start:]`` (physical lines with their
    line ends; numbers count from 1 at ``lines[0]``). A record the CSV rules cannot read yields ``fields`` None and
    a ``problem`` in plain words; reading goes on at the next physical line."""
    while start < len(lines):
        reader = csv.reader(io.StringIO("".join(lines[start:]), newline=""), delimiter=delimiter, strict=True)
        done = 0  # physical lines consumed by the records read so far
        try:
            for fields in reader:
                yield start + done + 1, fields, None
                done = reader.line_num
            return
        except csv.Error as err:
            words = next((plain for key, plain in _CSV_ERRORS.items() if key in str(err)), str(err))
            yield start + done + 1, None, words
            start += done + 1


def _record_problem(fields: list[str], header: list[str], where: dict[str, int], delimiter: str) -> str | None:
    """Why a record's fields do not line up with the header, or why it seems to hold several lines of the file
    (a double quote never closed that a later quote happened to close); None when it looks right."""
    if any("\x00" in f for f in fields):  # Python before 3.11 refuses the line itself (_CSV_ERRORS)
        return _CSV_ERRORS["NUL"]
    extra = [f for f in fields[len(header):] if f.strip()]
    if extra:
        return (f"{len(fields)} fields where the header has {len(header)} (a delimiter inside the transcript?): "
                + _QUOTING)
    if any(i >= len(fields) for i in where.values()):
        return f"{len(fields)} field(s) where the header has {len(header)}: a column is missing on this line"
    swallowed = [line for f in fields for line in f.splitlines()[1:]
                 if delimiter in line and any(s in line.lower() for s in AUDIO_SUFFIXES)]
    if swallowed:
        return (f"a double quote opened on this line is closed only {len(swallowed)}+ lines further on, so those "
                f"lines were read as part of this one: close the quote, or {_QUOTING}")
    return None


_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def audio_path(value: str, folder: Path) -> str:
    """The absolute path of an audio cell ``value`` written in a CSV in ``folder`` ("" for an empty cell).

    Relative paths are taken from ``folder``; ``~`` is the home folder; a ``file://`` address becomes its path; a
    path written with backslashes on a system that uses slashes is taken with slashes when that file exists (left as
    written otherwise, for the check to name it). Symbolic links are resolved when they lead to a file; a missing
    file, a broken link or a link loop keeps the name written, for the check to name it; other web addresses are
    kept as written."""
    value = value.strip()
    if not value:
        return ""
    if value.lower().startswith("file://"):
        value = unquote(urlparse(value).path)
    elif "://" in value:
        return value
    if "\\" in value and os.sep == "/" and not _DRIVE.match(value):
        forward = folder / value.replace("\\", "/")
        if forward.exists():
            value = value.replace("\\", "/")
    full = folder / Path(value).expanduser()
    try:
        return str(full.resolve(strict=True))
    except (OSError, RuntimeError):  # missing, a broken link or a link loop: the row check names which
        return os.path.abspath(full)
