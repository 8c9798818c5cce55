"""The manifest: the one table every phase reads and writes, and the checks that decide which rows a model can use.

A manifest is a table with one row per utterance: ``audio`` (absolute path), ``text`` (as written; empty for
audio without a transcript), ``duration`` (seconds), ``split`` (train, valid, test, or ``unlabelled``: audio
without a transcript, which only the teacher's pseudo-labels describe), ``source`` (csv/hub/synthetic), plus
whatever the source adds (speaker, noise...). Pieces of long recordings add ``offset`` (seconds into the file).
:func:`check_rows` keeps the rows a model can use and reports every other row with its reason, so nothing is
dropped silently. Manifests are JSON-lines files (``<split>.jsonl``) in ``RunDir.data``.
"""
from __future__ import annotations

import io
import random
from pathlib import Path

import pandas as pd

from ..files import atomic_write, write_json

CSV_ENCODINGS = ("utf-8-sig", "cp950", "big5hkscs")  # utf-8-sig also reads plain UTF-8
UNLABELLED = "unlabelled"  # the split of audio without transcripts (pseudo-labelled by the teacher only)


def read_csv(path: str | Path, audio_column: str = "file", text_column: str | None = "中文意譯",
             split: str = "train", encoding: str | None = None, speaker_column: str | None = None) -> pd.DataFrame:
    """Read a CSV in the reference layout (one row per recording: audio file, transcript).

    Encodings tried in order unless ``encoding`` is given: UTF-8 (with or without BOM), cp950, Big5-HKSCS.
    Relative audio paths are resolved against the CSV's folder. Returns manifest rows without
    durations (see :func:`check_rows`); ``row`` holds the CSV line number (header = line 1); with
    ``speaker_column`` the rows carry that column as ``speaker``. ``text_column`` None: audio without transcripts
    (the text is left empty, a transcript column the file may have is ignored).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file {path} does not exist")
    raw = path.read_bytes()
    for enc in ([encoding] if encoding else CSV_ENCODINGS):
        try:
            table = pd.read_csv(io.StringIO(raw.decode(enc)), dtype=str, keep_default_na=False)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise ValueError(f"{path}: cannot decode the file as {' or '.join([encoding] if encoding else CSV_ENCODINGS)}; "
                         "save it as UTF-8, or give its encoding")
    missing = [c for c in (audio_column, text_column, speaker_column) if c and c not in table.columns]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}; the file has columns {list(table.columns)}. "
                         "Set audio_column / text_column / speaker_column to the right names.")
    audio = [str((path.parent / a.strip()).resolve()) if a.strip() else "" for a in table[audio_column]]
    texts = table[text_column].str.strip() if text_column else ""
    rows = pd.DataFrame({"audio": audio, "text": texts, "duration": float("nan"), "split": split, "source": "csv",
                         "row": range(2, len(table) + 2)})
    if speaker_column:
        rows["speaker"] = table[speaker_column].str.strip().to_numpy()
    return rows


def check_rows(rows: pd.DataFrame, max_duration_s: float | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``rows`` into usable rows (with ``duration`` filled in from the file header) and skipped
    rows (``audio``, ``row``, ``split``, ``reason``). Reasons: no audio path, missing file, unreadable
    audio, empty audio, empty transcript, too long for the model's window. Rows of the ``unlabelled`` split
    have no transcript and may be of any length: they are cut at pauses later (``sources.cut_long``)."""
    import soundfile as sf

    kept, skipped = [], []
    for rec in rows.to_dict("records"):
        path = rec["audio"]
        reason = None
        if not path:
            reason = "no audio file named"
        elif not Path(path).is_file():
            reason = "missing file"
        else:
            try:
                info = sf.info(path)
                rec["duration"] = round(info.frames / info.samplerate, 3) if info.samplerate else 0.0
                if info.frames <= 0:
                    reason = "empty audio"
            except Exception as err:  # libsndfile says why: keep its words
                detail = str(err).splitlines()[0].split("': ")[-1]  # libsndfile's reason, without the path
                reason = f"unreadable audio ({detail[:60]})"
        no_text = not isinstance(rec["text"], str) or not rec["text"].strip()
        if reason is None and no_text and rec["split"] != UNLABELLED:
            reason = "empty transcript"
        if reason is None and max_duration_s and rec["duration"] > max_duration_s and rec["split"] != UNLABELLED:
            reason = f"longer than {max_duration_s:g} s"
        (kept if reason is None else skipped).append(rec if reason is None else {
            "audio": path, "row": rec.get("row"), "split": rec["split"], "source": rec["source"], "reason": reason})
    kept_df = pd.DataFrame(kept, columns=list(rows.columns) if not kept else None)
    skipped_df = pd.DataFrame(skipped, columns=["audio", "row", "split", "source", "reason"])
    return kept_df, skipped_df


def holdout_split(rows: pd.DataFrame, fractions: dict[str, float], seed: int = 0,
                  group_column: str | None = None) -> pd.DataFrame:
    """Move a deterministic share of the ``train`` rows to other splits, e.g. ``{"valid": 0.1, "test": 0.1}``.

    Without ``group_column`` rows are drawn one by one. With it (``"speaker"``), whole groups move: every row of a
    speaker lands in the same split, so no speaker is on both sides of a comparison; the shares are then met as
    closely as whole groups allow (at least one group each). Rows without a group value count as groups of their
    own. Raises ``ValueError`` when there are not enough rows or groups to leave some in ``train``.
    """
    for name, share in fractions.items():
        if not 0 < share < 1:
            raise ValueError(f"the share of rows held out for {name} must be between 0 and 1, got {share}")
    rows = rows.copy()
    eligible = rows.index[rows["split"] == "train"]
    if group_column:
        if group_column not in rows:
            raise ValueError(f"no column {group_column!r} to group the hold-out by; columns: {list(rows.columns)}")
        groups = rows.loc[eligible, group_column]
        keys = [g if isinstance(g, str) and g else f"\0row{i}" for i, g in zip(eligible, groups)]
    else:
        keys = [f"\0row{i}" for i in eligible]
    units: dict[str, list] = {}
    for key, index in zip(keys, eligible):
        units.setdefault(key, []).append(index)
    order = sorted(units)
    random.Random(seed).shuffle(order)
    if len(order) <= len(fractions):
        what = f"{group_column!r} groups" if group_column else "rows"
        raise ValueError(f"only {len(order)} {what} in train: cannot hold out {', '.join(fractions)} and keep some "
                         "for training; give separate files for them or more data")
    position = 0
    for name, share in fractions.items():
        target, taken = round(share * len(eligible)), 0
        while position < len(order) - 1 and (taken == 0 or taken < target):
            members = units[order[position]]
            rows.loc[members, "split"] = name
            taken += len(members)
            position += 1
    return rows


def text_overlap(splits: dict[str, pd.DataFrame], normalize) -> dict[str, dict]:
    """Transcripts that occur in more than one split, per pair of splits: ``{"train/test": {"texts": n,
    "examples": [...]}}`` with ``n`` distinct texts found in both after ``normalize`` (the scoring normaliser).
    Untranscribed splits are left out."""
    texts = {name: {normalize(t) for t in part["text"] if isinstance(t, str) and t.strip()}
             for name, part in splits.items()}
    names = [n for n in splits if texts[n]]
    overlap = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(texts[a] & texts[b])
            overlap[f"{a}/{b}"] = {"texts": len(shared), "examples": shared[:3]}
    return overlap


def take(rows: pd.DataFrame, split: str, n: int | None, seed: int = 0) -> pd.DataFrame:
    """The rows of ``split``, or a deterministic sample of ``n`` of them (``None``: all)."""
    part = rows[rows["split"] == split]
    if n is not None and n < len(part):
        part = part.sample(n=n, random_state=seed).sort_index()
    return part.reset_index(drop=True)


def save_manifests(data_dir: str | Path, splits: dict[str, pd.DataFrame], skipped: pd.DataFrame, report: dict) -> Path:
    """Write ``<split>.jsonl`` manifests, ``skipped.csv`` and ``report.json`` into ``data_dir`` atomically."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        atomic_write(data_dir / f"{name}.jsonl", part.to_json(orient="records", lines=True, force_ascii=False))
    atomic_write(data_dir / "skipped.csv", skipped.to_csv(index=False))
    write_json(data_dir / "report.json", report)
    return data_dir


WRITTEN_BY = {"data": "01_data", "pseudo": "03_pseudo_label"}  # manifest folder -> the notebook that writes it


def load_manifest(data_dir: str | Path, split: str) -> pd.DataFrame:
    """Read ``<data_dir>/<split>.jsonl``; a clear error naming the notebook to run if it is not there."""
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.exists():
        notebook = WRITTEN_BY.get(Path(data_dir).name, "the notebook that writes it")
        raise FileNotFoundError(f"{path} does not exist: run {notebook} with the same run_dir first")
    return pd.read_json(path, lines=True, dtype={"text": str})


def row_keys(rows: pd.DataFrame) -> list[str]:
    """One key per row naming its audio: the file path, followed by ``@offset`` for a piece of a long file."""
    offsets = rows["offset"] if "offset" in rows else [None] * len(rows)
    return [audio if offset is None or pd.isna(offset) else f"{audio}@{float(offset):.3f}"
            for audio, offset in zip(rows["audio"], offsets)]


def audio_to_pseudo_label(data_dir: str | Path, include_unlabelled: bool = True) -> pd.DataFrame:
    """What the teacher transcribes in notebook 03: the ``train`` manifest, followed by the ``unlabelled``
    one (audio without transcripts) when ``include_unlabelled`` and notebook 01 wrote it. Never the test set.
    Unlabelled rows have an empty ``text``: pseudo-labelling keeps them as ``kept (no reference)``."""
    rows = load_manifest(data_dir, "train")
    if include_unlabelled and (Path(data_dir) / f"{UNLABELLED}.jsonl").exists():
        rows = pd.concat([rows, load_manifest(data_dir, UNLABELLED)], ignore_index=True)
    return rows
