"""Row checks: which manifest rows a model can learn from, and for every other row a reason and what to do.

:func:`check_rows` looks at each row in turn and stops at its first problem:

1. the line of the CSV could be read (:mod:`helpers.speech.csvfile` marks those it could not);
2. the path: named, not a web address, not a Windows path this machine cannot follow, not a folder, a symbolic
   link loop or a broken link, and readable by this user;
3. the header: audio libsndfile can read, with samples;
4. the transcript (transcribed rows): not empty, and not empty once the scoring normaliser has taken out
   punctuation, symbols and invisible characters;
5. the length: not longer than ``max_duration_s`` (transcribed rows) and not shorter than ``min_duration_s``;
6. the samples (every file up to :data:`CONTENT_SCAN_MAX_S`): all finite, as many as the header promises, not
   silent once averaged to mono (peak and RMS level), and a transcript not implausibly long for them
   (``max_chars_per_s``: a CJK character or a Latin word a second).

Each problem is ``(reason, detail)``: a short reason that tables count, and a detail that names the file, what
was expected and what to do. The thresholds are notebook 01's parameters (:class:`RowLimits`).
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import struct
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from .. import config
from . import text

UNLABELLED = "unlabelled"  # the split of audio without transcripts (pseudo-labelled by the teacher only)
SKIPPED_COLUMNS = ["audio", "row", "split", "source", "reason", "csv", "detail"]
CONTENT_SCAN_MAX_S = 120.0  # longer files (untranscribed recordings) are not read here: sources.cut_long reads them
Problem = tuple[str, str]  # (reason, detail)


@dataclass(frozen=True)
class RowLimits:
    """What a usable clip is: at most ``max_duration_s`` (None: any length) and at least ``min_duration_s``
    seconds, a peak of at least ``min_peak_dbfs`` and an RMS level of at least ``min_rms_dbfs`` (dB re full
    scale), and at most ``max_chars_per_s`` transcript characters a second (None: no limit)."""
    max_duration_s: float | None
    min_duration_s: float
    min_peak_dbfs: float
    min_rms_dbfs: float
    max_chars_per_s: float | None

    @classmethod
    def of(cls, p=None, max_duration_s: float | None = None) -> RowLimits:
        """The limits in notebook 01's parameters ``p``; without ``p``, the default table's with ``max_duration_s``."""
        if p is not None:
            return cls(**{f.name: getattr(p, f.name) for f in fields(cls)})
        table = config.NOTEBOOK_PARAMS["01_data"]
        return cls(max_duration_s, **{f.name: table[f.name] for f in fields(cls) if f.name != "max_duration_s"})


def check_rows(rows: pd.DataFrame, max_duration_s: float | None, limits: RowLimits | None = None,
               content_keys: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``rows`` into usable rows (``duration`` filled in from the file header, seconds) and skipped rows
    (:data:`SKIPPED_COLUMNS`: ``reason`` short, ``detail`` what was found and what to do; ``row`` and ``csv`` say
    where). ``limits`` None: the default thresholds with ``max_duration_s``. Rows of the ``unlabelled`` split have no
    transcript and may be of any length (they are cut at pauses later, ``sources.cut_long``). With
    ``content_keys`` the usable rows carry ``content``: a hash of their samples (None for files not read), which
    finds the same recording under two names (:func:`helpers.speech.leaks.drop_repeats`)."""
    limits = limits or RowLimits.of(max_duration_s=max_duration_s)
    kept, skipped = [], []
    for rec in rows.to_dict("records"):
        problem, key = check_row(rec, limits)
        rec.pop("problem", None), rec.pop("problem_detail", None)
        if problem is None:
            kept.append({**rec, **({"content": key} if content_keys else {})})
        else:
            skipped.append({"audio": rec["audio"], "row": rec.get("row"), "split": rec["split"],
                            "source": rec["source"], "reason": problem[0], "csv": rec.get("csv") or "",
                            "detail": problem[1]})
    columns = [c for c in rows.columns if c not in ("problem", "problem_detail")] + ["content"] * content_keys
    return pd.DataFrame(kept, columns=None if kept else columns), pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)


def check_row(rec: dict, limits: RowLimits) -> tuple[Problem | None, str | None]:
    """The first problem of one manifest row (None: usable; ``rec["duration"]`` is then filled in) and the hash of
    its samples (None when they were not read)."""
    import soundfile as sf

    if isinstance(rec.get("problem"), str) and rec["problem"]:
        return (rec["problem"], rec.get("problem_detail") or ""), None
    path = rec["audio"] if isinstance(rec["audio"], str) else ""
    problem = path_problem(path)
    if problem:
        return problem, None
    try:
        info = sf.info(path)
    except Exception as err:  # libsndfile says why: keep its words
        detail = str(err).splitlines()[0].split("': ")[-1]  # libsndfile's reason, without the path
        return (f"unreadable audio ({detail[:60]})", f"{path}: libsndfile cannot read it as audio ({detail}): "
                "save it as WAV or FLAC"), None
    rec["duration"] = round(info.frames / info.samplerate, 3) if info.samplerate else 0.0
    transcribed = rec["split"] != UNLABELLED
    problem = (empty_problem(path, info) or (text_problem(rec["text"]) if transcribed else None)
               or length_problem(rec["duration"], limits, transcribed))
    if problem:
        return problem, None
    if rec["duration"] > CONTENT_SCAN_MAX_S:
        return None, None
    try:
        samples = sf.read(path, dtype="float32", always_2d=True)[0]
    except Exception as err:  # a header that reads but data that does not
        return (f"unreadable audio ({str(err).splitlines()[0][-60:]})", f"{path}: the samples cannot be read "
                f"({err}): export it again"), None
    problem = samples_problem(path, samples, info, limits)
    if problem is None and transcribed:
        problem = rate_problem(rec["text"], rec["duration"], limits)
    key = hashlib.blake2b(samples.tobytes() + struct.pack("<I", info.samplerate), digest_size=16).hexdigest()
    return problem, key


_DRIVE = re.compile(r"(^|/)[A-Za-z]:([\\/]|$)")


def path_problem(path: str) -> Problem | None:
    """What keeps ``path`` (absolute) from being opened as a file: not named, a web address, a Windows path, a
    missing file (with a hint when the name differs only in letter case), a folder, a symbolic link loop or a
    broken link, no permission; None when it can be opened for reading."""
    if not path:
        return "no audio file named", "the audio column is empty on this line: write the recording's file name"
    if "://" in path:
        return "web address", f"{path} is a web address: download the file and give its path"
    try:
        st = os.stat(path)
    except ValueError:  # a NUL character in the name
        return "unusable file name", f"{path!r} holds a NUL character: write the file name again"
    except OSError as err:
        return _stat_problem(path, err)
    if stat.S_ISDIR(st.st_mode):
        return "a folder, not a file", (f"{path} is a folder: name an audio file inside it (folders of untranscribed "
                                        "recordings go in unlabelled_dir)")
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file", f"{path} is a device, pipe or socket, not an audio file"
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        return "no permission to read", f"{path}: this user may not read it; make it readable (chmod a+r)"
    except OSError as err:
        return "cannot open the file", f"{path}: {err.strerror or err}"
    return None


def _stat_problem(path: str, err: OSError) -> Problem:
    if err.errno == errno.ELOOP:
        return "symbolic link loop", f"{path} is a symbolic link that leads back to itself: point it at the real file"
    if err.errno == errno.EACCES:
        return "no permission to read", f"{path}: this user may not open its folder; make it readable (chmod a+rx)"
    if os.path.islink(path):
        return "broken symbolic link", f"{path} points to {os.readlink(path)}, which does not exist"
    drive = _DRIVE.search(path)
    if drive:
        return "Windows-style path", (f"{path[drive.start():].lstrip('/')!r} is a path on a Windows drive, which this "
                                      "machine cannot reach: copy the recording next to the CSV and write its path "
                                      "relative to the CSV's folder, with forward slashes (audio/x.wav)")
    if "\\" in Path(path).name:
        return "Windows-style path", (f"{Path(path).name!r} is written with backslashes, as on Windows, and no such "
                                      "file exists with forward slashes either: write it with forward slashes, "
                                      f"relative to the CSV's folder ({Path(path).name.replace(chr(92), '/')})")
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        return "missing file", f"{path} does not exist{_case_hint(path)}: check the name and that the path is " \
                               "relative to the CSV's folder"
    return "cannot open the file", f"{path}: {err.strerror or err}"


def _case_hint(path: str) -> str:
    """``" (but X exists: letter case differs)"`` when the folder holds the name in another letter case."""
    folder, name = os.path.split(path)
    try:
        twins = [n for n in os.listdir(folder) if n.lower() == name.lower()]
    except OSError:
        return ""
    return f" (but {twins[0]} exists: letter case counts here)" if twins else ""


def empty_problem(path: str, info) -> Problem | None:
    """A file whose header (``soundfile.info``) counts no samples."""
    if info.frames <= 0:
        return "empty audio", f"{path} holds no samples: record or export it again"
    return None


def length_problem(duration: float, limits: RowLimits, transcribed: bool) -> Problem | None:
    """A clip longer than the model's window (transcribed rows only) or too short to hold a word (seconds)."""
    if transcribed and limits.max_duration_s and duration > limits.max_duration_s:
        return (f"longer than {limits.max_duration_s:g} s", f"{duration:g} s; the model's window is max_duration_s = "
                f"{limits.max_duration_s:g} s: cut the clip, or give it as untranscribed audio (unlabelled_csv)")
    if duration < limits.min_duration_s:
        return (f"shorter than {limits.min_duration_s:g} s", f"{duration:g} s is too short to hold a word "
                f"(min_duration_s = {limits.min_duration_s:g}): check the recording")
    return None


def text_problem(said) -> Problem | None:
    """An empty transcript, or one with nothing left for the scoring normaliser (punctuation, invisible
    characters); None when it holds a character or a word."""
    if not isinstance(said, str) or not said.strip():
        return "empty transcript", "the transcript is empty: write what is said"
    if not text.mixed_tokens(said):
        return "no words in transcript", (f"{said!r} holds no character or word once punctuation, symbols and "
                                          "invisible characters are taken out: write what is said")
    return None


def samples_problem(path: str, samples: np.ndarray, info, limits: RowLimits) -> Problem | None:
    """Problems the samples (frames x channels, float) show: NaN or infinite values, fewer frames than the header
    promises, silence once the channels are averaged to mono (what the model hears)."""
    finite = np.isfinite(samples)
    if not finite.all():
        return "NaN or infinite samples", (f"{path}: {int((~finite).sum())} of {samples.size} samples are not "
                                           "numbers (NaN or infinite): export the audio again as 16-bit PCM")
    promised = max(info.frames, wav_frames(path) or 0)
    if promised > len(samples) + max(1, promised // 100):
        return "shorter than its header says", (
            f"{path}: the header promises {promised / info.samplerate:.2f} s, the file holds "
            f"{len(samples) / info.samplerate:.2f} s (cut off while copying or recording?): copy or export it again")
    mono = samples.mean(axis=1)
    peak, rms = float(np.abs(mono).max(initial=0.0)), float(np.sqrt(np.mean(mono.astype(np.float64) ** 2)))
    peak_db, rms_db = (20 * np.log10(max(v, 1e-10)) for v in (peak, rms))
    if peak_db < limits.min_peak_dbfs or rms_db < limits.min_rms_dbfs:
        found = f"peak {peak_db:.0f} dBFS, RMS {rms_db:.0f} dBFS"
        advice = "check the recording (was the microphone on?)"
        if peak == 0 and np.abs(samples).max(initial=0.0) == 0:
            found = "every sample is zero"
        elif samples.shape[1] > 1 and 20 * np.log10(max(float(np.abs(samples).max()), 1e-10)) >= limits.min_peak_dbfs:
            found = "its channels cancel out when averaged to mono (one is the other upside down?)"
            advice = "keep one channel"
        return "silent", (f"{path}: {found}, below min_peak_dbfs = {limits.min_peak_dbfs:g} or min_rms_dbfs = "
                          f"{limits.min_rms_dbfs:g}: {advice}")
    return None


def rate_problem(said: str, duration: float, limits: RowLimits) -> Problem | None:
    """A transcript with more characters a second (a CJK character or a Latin word each) than anyone speaks."""
    count = len(text.mixed_tokens(said))
    if limits.max_chars_per_s and duration > 0 and count / duration > limits.max_chars_per_s:
        return "transcript too long for its audio", (
            f"{count} characters in {duration:g} s is {count / duration:.0f} a second, more than max_chars_per_s = "
            f"{limits.max_chars_per_s:g} (speech rarely passes 8): is it the transcript of another clip?")
    return None


def wav_frames(path: str) -> int | None:
    """The number of frames a WAV file's header promises (its ``data`` chunk size over the frame size), or None
    when ``path`` is not a RIFF WAV or its header does not say (streamed files write 0 or 0xFFFFFFFF)."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        order, block = ("<" if head[:4] == b"RIFF" else ">"), None
        for _ in range(64):  # chunks before the data: fmt, LIST, fact...
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            name, size = chunk[:4], struct.unpack(order + "I", chunk[4:])[0]
            if name == b"data":
                return size // block if block and size not in (0, 0xFFFFFFFF) else None
            body = f.read(size + (size & 1))
            if name == b"fmt " and len(body) >= 14:
                block = struct.unpack(order + "H", body[12:14])[0]
    return None
