"""Bad and odd inputs for notebook 01, each beside good rows: a generator of small CSV data sets.

``make_case(kind, folder, seed)`` writes, into ``folder``, six good recordings (tones with a little noise, 1.0 to
1.9 s, each its own samples) listed in ``train.csv`` with one kind of trouble mixed in at a place the seed picks,
and returns a :class:`Case`: the parameters for ``config.resolve("01_data", ...)``, the good rows (exact text ->
audio path) that must come out in train, valid or test, and the bad rows ``(csv file, physical line, reason)``
that ``skipped.csv`` must list. Line numbers are counted here from the text written, independently of the reader.

* :data:`ROW_KINDS`: one kind of bad row (or several), the run goes on;
* :data:`ODD_KINDS`: files written in an unusual but valid way; every row is good (some add one bad row after the
  oddity, to check that line numbers are still right);
* :data:`STOP_KINDS`: the whole input is unusable; the run must stop with the project's ``DataError`` saying why.
"""
from __future__ import annotations

import csv
import io
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16_000
GOOD_TEXTS = ["今天下午三點開會", "我們明天去台北車站", "請把email寄給經理", "這個deadline太趕了", "阿嬤晚上要散步",
              "週末一起去看電影", "早上八點的火車", "他說好，我們走吧"]


@dataclass
class Case:
    kind: str
    params: dict
    good: dict[str, str] = field(default_factory=dict)  # exact text -> resolved audio path, kept somewhere
    bad: list[tuple[str, int, str]] = field(default_factory=list)  # (csv name, physical line, reason) skipped
    stops: str | None = None  # a regular expression the DataError's message must match
    unreadable: list[Path] = field(default_factory=list)  # files with no read permission


@dataclass
class Entry:
    audio: str = ""  # the audio cell as written
    text: str = ""
    reason: str | None = None  # None: a good row
    raw: str | None = None  # a line written as it is (malformed on purpose), instead of audio/text
    kept_as: Path | None = None  # the path a good row must come out with (default: folder / audio, resolved)
    extra: dict = field(default_factory=dict)  # more columns


class Builder:
    """Writes the audio and the CSVs of one case; ``entries[name]`` are the rows of ``name`` (a CSV file)."""

    def __init__(self, kind: str, folder: Path, seed: int):
        self.kind, self.folder, self.seed = kind, folder, seed
        self.rng, self.random = np.random.default_rng(seed), random.Random(seed)
        (folder / "audio").mkdir(parents=True, exist_ok=True)
        self.case = Case(kind, {"source": "csv", "train_csv": str(folder / "train.csv"), "seed": seed,
                                "run_dir": str(folder / "run"), "live_plot": False})
        self.entries: dict[str, list[Entry]] = {"train.csv": []}
        self.layout = {}  # csv name -> write options

    def tone(self, name: str, seconds: float = 1.2, freq: float | None = None, channels: int = 1, rate: int = RATE,
             subtype: str = "PCM_16", level: float = 0.25, samples: np.ndarray | None = None) -> str:
        """Write ``audio/<name>`` and return its cell (``audio/<name>``)."""
        if samples is None:
            t = np.arange(int(round(seconds * rate))) / rate
            freq = freq or float(self.rng.uniform(180, 900))
            samples = level * np.sin(2 * np.pi * freq * t) + 0.01 * self.rng.standard_normal(len(t))
            samples = np.stack([samples] * channels, axis=1) if channels > 1 else samples
        sf.write(self.folder / "audio" / name, np.asarray(samples, dtype=np.float32), rate, subtype=subtype)
        return f"audio/{name}"

    def good_rows(self, n: int = 6, csv_name: str = "train.csv", first: int = 0) -> list[Entry]:
        rows = [Entry(self.tone(f"good{first + i}_{self.seed}.wav", 1.0 + 0.15 * i), GOOD_TEXTS[first + i])
                for i in range(n)]
        self.entries.setdefault(csv_name, []).extend(rows)
        return rows

    def bad(self, audio: str = "", text: str = "一句話", reason: str = "", csv_name: str = "train.csv",
            after: int | None = None, **kw) -> Entry:
        """Add a bad row at a place the seed picks (after row ``after`` when given)."""
        rows = self.entries.setdefault(csv_name, [])
        low = 0 if after is None else after + 1
        entry = Entry(audio, text, reason, **kw)
        rows.insert(self.random.randint(low, len(rows)), entry)
        return entry

    def write(self) -> Case:
        for name, rows in self.entries.items():
            self._write_table(name, rows, **self.layout.get(name, {}))
        return self.case

    def _write_table(self, name: str, rows: list[Entry], header=("file", "中文意譯"), delimiter=",",
                     encoding="utf-8", newline="\n", before="", blank_every=0, columns=None):
        content = before + delimiter.join(header) + newline
        for i, entry in enumerate(rows):
            if blank_every and i and i % blank_every == 0:
                content += newline
            line = len(re.findall(r"\r\n|\r|\n", content)) + 1
            if entry.raw is not None:
                content += entry.raw + newline
            else:
                out = io.StringIO()
                cells = {"file": entry.audio, "中文意譯": entry.text, **entry.extra}
                csv.writer(out, delimiter=delimiter, lineterminator=newline).writerow(
                    [cells.get(c, "") for c in (columns or header)])
                content += out.getvalue()
            if entry.reason:
                self.case.bad.append((name, line, entry.reason))
            elif entry.raw is None:
                kept = entry.kept_as or (self.folder / entry.audio).resolve()
                self.case.good[entry.text.strip()] = str(kept)
        (self.folder / name).write_bytes(content.encode(encoding))


# ---------------------------------------------------------------------------------------------
# Bad rows beside good ones: the run goes on
# ---------------------------------------------------------------------------------------------
def _samples(b: Builder, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.25 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)


def _link(b: Builder, name: str, target: str) -> str:
    os.symlink(target, b.folder / "audio" / name)
    return f"audio/{name}"


def _truncated(b: Builder) -> str:
    cell = b.tone("truncated.wav", 2.0)
    path = b.folder / cell
    data = path.read_bytes()
    path.write_bytes(data[: 44 + (len(data) - 44) // 2])  # the header still promises 2 s
    return cell


def _no_permission(b: Builder) -> str:
    cell = b.tone("locked.wav", 1.0)
    os.chmod(b.folder / cell, 0)
    b.case.unreadable.append(b.folder / cell)
    return cell


def _copy(b: Builder, good: Entry, name: str) -> str:
    data, rate = sf.read(b.folder / good.audio, dtype="float32")
    return b.tone(name, samples=data, rate=rate, subtype="FLOAT")  # other bytes, the same samples


ROW_KINDS = {
    "missing file": lambda b: b.bad("audio/not_there.wav", reason="missing file"),
    "folder as audio": lambda b: b.bad("audio", reason="a folder, not a file"),
    "symlink loop": lambda b: (_link(b, "loop_a.wav", "loop_b.wav"),
                               b.bad(_link(b, "loop_b.wav", "loop_a.wav"), reason="symbolic link loop")),
    "broken symlink": lambda b: b.bad(_link(b, "broken.wav", "gone.wav"), reason="broken symbolic link"),
    "no permission": lambda b: b.bad(_no_permission(b), reason="no permission to read"),
    "windows path": lambda b: b.bad("audio\\nowhere.wav", reason="Windows-style path"),
    "windows drive": lambda b: b.bad("C:\\Users\\me\\rec.wav", reason="Windows-style path"),
    "web address": lambda b: b.bad("https://example.org/rec.wav", reason="web address"),
    "no audio named": lambda b: b.bad("", reason="no audio file named"),
    "not audio": lambda b: ((b.folder / "audio" / "notes.wav").write_text("not audio", "utf-8"),
                            b.bad("audio/notes.wav", reason="unreadable audio (Format not recognised.)")),
    "no samples": lambda b: b.bad(b.tone("empty.wav", samples=np.zeros(0, np.float32)), reason="empty audio"),
    "nan samples": lambda b: b.bad(b.tone("nan.wav", samples=np.where(np.arange(RATE) % 100 == 0, np.nan,
                                                                      _samples(b)), subtype="FLOAT"),
                                   reason="NaN or infinite samples"),
    "inf samples": lambda b: b.bad(b.tone("inf.wav", samples=np.where(np.arange(RATE) == 5, np.inf, _samples(b)),
                                          subtype="FLOAT"), reason="NaN or infinite samples"),
    "all zero": lambda b: b.bad(b.tone("zero.wav", samples=np.zeros(RATE, np.float32)), reason="silent"),
    "nearly silent": lambda b: b.bad(b.tone("quiet.wav", samples=_samples(b) * 1e-4, subtype="FLOAT"),
                                     reason="silent"),
    "channels cancel": lambda b: b.bad(b.tone("phase.wav", samples=np.stack([_samples(b), -_samples(b)], axis=1)),
                                       reason="silent"),
    "too short": lambda b: b.bad(b.tone("blip.wav", 0.05), reason="shorter than 0.1 s"),
    "too long": lambda b: b.bad(b.tone("long.wav", 6.0), reason="longer than 5 s"),
    "header promises more": lambda b: b.bad(_truncated(b), reason="shorter than its header says"),
    "empty transcript": lambda b: b.bad(b.tone("no_text.wav"), "", reason="empty transcript"),
    "blank transcript": lambda b: b.bad(b.tone("blank_text.wav"), "\u3000 ", reason="empty transcript"),
    "punctuation only": lambda b: b.bad(b.tone("punct.wav"), "。，！？……", reason="no words in transcript"),
    "zero-width space": lambda b: b.bad(b.tone("zwsp.wav"), "\u200b", reason="no words in transcript"),
    "transcript too long": lambda b: b.bad(b.tone("one_second.wav", 1.0), "長" * 1000,
                                           reason="transcript too long for its audio"),
    "duplicate row": lambda b: b.bad(b.entries["train.csv"][2].audio, b.entries["train.csv"][2].text,
                                     reason="duplicate row", after=2),
    "copy under another name": lambda b: b.bad(_copy(b, b.entries["train.csv"][1], "copy.wav"),
                                               b.entries["train.csv"][1].text, reason="duplicate row", after=1),
    "same audio, other text": lambda b: b.bad(b.entries["train.csv"][3].audio, "完全不同的句子",
                                              reason="same audio, another transcript", after=3),
    "unquoted comma": lambda b: b.bad(raw=f"{b.tone('comma.wav')},你好,世界", reason="malformed CSV line"),
    "unclosed quote": lambda b: b.bad(raw=f'{b.tone("quote.wav")},"你好', reason="malformed CSV line"),
    "misplaced quote": lambda b: b.bad(raw=f'{b.tone("quote2.wav")},"你好"嗎', reason="malformed CSV line"),
    "missing field": lambda b: b.bad(raw=b.tone("lonely.wav"), reason="malformed CSV line"),
    "nul byte": lambda b: b.bad(raw=f"{b.tone('nul.wav')},你\x00好", reason="malformed CSV line"),
}


def _valid_repeats_train(b: Builder):
    """valid.csv and test.csv given; valid repeats a train row (same file), test a copy of another (same samples)."""
    train = b.entries["train.csv"]
    b.good_rows(1, "valid.csv", first=6)
    b.good_rows(1, "test.csv", first=7)
    b.entries["valid.csv"].append(Entry(train[0].audio, train[0].text))
    b.entries["test.csv"].append(Entry(_copy(b, train[4], "test_copy.wav"), train[4].text,
                                       kept_as=(b.folder / "audio" / "test_copy.wav").resolve()))
    train[0].reason, train[4].reason = "same audio as a valid row", "same audio as a test row"
    b.case.params.update(valid_csv=str(b.folder / "valid.csv"), test_csv=str(b.folder / "test.csv"))


ROW_KINDS["valid and test repeat train"] = _valid_repeats_train
ROW_KINDS["letter case differs"] = lambda b: b.bad(b.entries["train.csv"][0].audio.replace("good", "GOOD"),
                                                   reason="missing file")


# ---------------------------------------------------------------------------------------------
# Unusual but valid files: every row good (a bad row after the oddity checks the line numbers)
# ---------------------------------------------------------------------------------------------
def _layout(**options):
    def apply(b: Builder):
        b.layout["train.csv"] = options
        b.bad("audio/missing_after.wav", reason="missing file", after=len(b.entries["train.csv"]) // 2)
    return apply


def _odd_row(b: Builder, entry: Entry):
    rows = b.entries["train.csv"]
    rows.insert(b.random.randint(0, len(rows)), entry)


def _good_windows_path(b: Builder):
    cell = b.tone("win_ok.wav", 1.1)
    _odd_row(b, Entry(cell.replace("/", "\\"), "反斜線的路徑", kept_as=(b.folder / cell).resolve()))


def _good_quoted_newline(b: Builder):
    _odd_row(b, Entry(b.tone("two_lines.wav", 1.5), "第一行\n第二行"))
    b.bad("audio/missing_after.wav", reason="missing file", after=len(b.entries["train.csv"]) - 1)


def _speakers(b: Builder):
    b.layout["train.csv"] = {"header": ("file", "中文意譯", "說話者")}
    for i, entry in enumerate(b.entries["train.csv"]):
        entry.extra["說話者"] = "ABC"[i % 3]
    b.bad("audio/missing_speaker.wav", reason="missing file").extra["說話者"] = "A"
    b.case.params["speaker_column"] = "說話者"


ODD_KINDS = {
    "utf-16 with BOM": _layout(encoding="utf-16"),
    "utf-16 without BOM": _layout(encoding="utf-16-le"),
    "utf-8 with BOM": _layout(encoding="utf-8-sig"),
    "cp950 (Big5)": _layout(encoding="cp950"),
    "semicolons": _layout(delimiter=";"),
    "tabs": _layout(delimiter="\t"),
    "CRLF line ends": _layout(newline="\r\n"),
    "CR line ends": _layout(newline="\r"),
    "blank lines": _layout(blank_every=2, before="\n\n"),
    "columns reordered": _layout(header=("說話者", "中文意譯", "file")),
    "quoted newline": _good_quoted_newline,
    "windows path that exists": _good_windows_path,
    "absolute path": lambda b: _odd_row(b, Entry(str((b.folder / b.tone("abs.wav")).resolve()), "絕對路徑的檔案")),
    "file address": lambda b: _odd_row(b, Entry((b.folder / b.tone("url.wav")).resolve().as_uri(), "網址寫法的路徑",
                                                kept_as=(b.folder / "audio" / "url.wav").resolve())),
    "symlink to a file": lambda b: _odd_row(b, Entry(_link(b, "link.wav", Path(b.tone("real.wav")).name),
                                                     "連結到檔案", kept_as=(b.folder / "audio/real.wav").resolve())),
    "name with spaces and 中文": lambda b: _odd_row(b, Entry(b.tone("錄音 01.wav"), "檔名有空白")),
    "stereo 44.1 kHz": lambda b: _odd_row(b, Entry(b.tone("stereo.wav", 1.3, channels=2, rate=44_100), "立體聲")),
    "flac": lambda b: _odd_row(b, Entry(b.tone("clip.flac", 1.4), "無損壓縮")),
    "spaces around cells": lambda b: _odd_row(b, Entry(f"  {b.tone('spaced.wav')}  ", "  前後空白  ",
                                                       kept_as=(b.folder / "audio" / "spaced.wav").resolve())),
    "digits only": lambda b: _odd_row(b, Entry(b.tone("digits.wav"), "0911")),
    "trailing empty lines": lambda b: b.entries["train.csv"].extend([Entry(raw=","), Entry(raw=",,"), Entry(raw="")]),
    "speaker column": _speakers,
    "three usable rows": lambda b: (b.entries["train.csv"].__delitem__(slice(3, None)),
                                    b.bad("audio/gone.wav", reason="missing file")),
}


# ---------------------------------------------------------------------------------------------
# Unusable input: the run stops with DataError (skipped.csv written first)
# ---------------------------------------------------------------------------------------------
def _replace_train(b: Builder, content: bytes):
    b.entries.pop("train.csv")
    (b.folder / "train.csv").write_bytes(content)


def _every_row_bad(b: Builder):
    b.entries["train.csv"].clear()
    for name in ("a", "b", "c"):
        b.bad(f"audio/{name}_missing.wav", reason="missing file")
    b.case.stops = r"no usable train rows .*missing file 3"


def _two_usable(b: Builder):
    del b.entries["train.csv"][2:]
    b.bad("audio/gone.wav", reason="missing file")
    b.case.stops = (r"only 2 usable rows in train: cannot hold out valid, test .*at least 3: 1 for valid, 1 for "
                    r"test and 1 to train on.*Two ways out: give valid_csv and test_csv")


STOP_KINDS = {
    "0-byte CSV": lambda b: (_replace_train(b, b""), setattr(b.case, "stops", r"train\.csv is empty \(0 bytes\)")),
    "header only": lambda b: (_replace_train(b, "file,中文意譯\n".encode()),
                              setattr(b.case, "stops", "no usable train rows")),
    "other column names": lambda b: (_replace_train(b, "path,sentence\naudio/x.wav,你好\n".encode()),
                                     setattr(b.case, "stops", r"no column\(s\) \['file', '中文意譯'\]")),
    "no header line": lambda b: (_replace_train(b, "audio/x.wav,你好\naudio/y.wav,再見\n".encode()),
                                 setattr(b.case, "stops", "looks like a recording, not a header")),
    "wrong csv_encoding": lambda b: (b.layout.update({"train.csv": {"encoding": "cp950"}}),
                                     b.case.params.update(csv_encoding="utf-8"),
                                     setattr(b.case, "stops", r"cannot decode the file as utf-8.*line 1")),
    "unknown csv_encoding": lambda b: (b.case.params.update(csv_encoding="traditional-chinese"),
                                       setattr(b.case, "stops", "not an encoding name Python knows")),
    "CSV is a folder": lambda b: (b.case.params.update(train_csv=str(b.folder / "audio")),
                                  setattr(b.case, "stops", "is a folder, not a CSV file")),
    "CSV missing": lambda b: (b.case.params.update(train_csv=str(b.folder / "nothing.csv")),
                              setattr(b.case, "stops", "nothing.csv does not exist")),
    "every row bad": _every_row_bad,
    "two usable rows": _two_usable,
    "valid file all bad": lambda b: (b.bad("audio/v_missing.wav", reason="missing file", csv_name="valid.csv"),
                                     b.case.params.update(valid_csv=str(b.folder / "valid.csv")),
                                     setattr(b.case, "stops", r"no usable valid rows .*valid_csv .*missing file 1")),
}


def make_case(kind: str, folder: Path, seed: int) -> Case:
    """Write the case ``kind`` (a key of :data:`ROW_KINDS`, :data:`ODD_KINDS` or :data:`STOP_KINDS`) into
    ``folder`` for ``seed`` and return what the run must make of it."""
    b = Builder(kind, Path(folder), seed)
    b.good_rows()
    {**ROW_KINDS, **ODD_KINDS, **STOP_KINDS}[kind](b)
    return b.write()
