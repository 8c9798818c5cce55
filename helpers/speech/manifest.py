"""The manifest: the one table every phase reads and writes, and the checks that decide which rows a model can use.

A manifest is a table with one row per utterance: ``audio`` (absolute path), ``text`` (as written; empty for
audio without a transcript), ``duration`` (seconds), ``split`` (train, valid, test, or ``unlabelled``: audio
without a transcript, which only the teacher's pseudo-labels describe), ``source`` (csv/hub/synthetic), plus
whatever the source adds (speaker, noise...). Pieces of long recordings add ``offset`` (seconds into the file).
:func:`check_rows` (:mod:`helpers.speech.checks`) keeps the rows a model can use and reports every other row with
its reason, so nothing is dropped silently; :func:`read_csv` (:mod:`helpers.speech.csvfile`) reads a person's CSV.
Manifests are JSON-lines files (``<split>.jsonl``) in ``RunDir.data``.
"""
from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

from ..files import atomic_write, write_json
from .checks import SKIPPED_COLUMNS, UNLABELLED, RowLimits, check_rows
from .csvfile import CSV_ENCODINGS, read_csv
from .errors import DataError

__all__ = ["CSV_ENCODINGS", "SKIPPED_COLUMNS", "UNLABELLED", "DataError", "RowLimits", "check_rows", "read_csv",
           "holdout_split", "text_overlap", "take", "save_manifests", "load_manifest", "row_keys",
           "audio_to_pseudo_label"]


def holdout_split(rows: pd.DataFrame, fractions: dict[str, float], seed: int = 0,
                  group_column: str | None = None) -> pd.DataFrame:
    """Move a deterministic share of the ``train`` rows to other splits, e.g. ``{"valid": 0.1, "test": 0.1}``.

    Without ``group_column`` rows are drawn one by one. With it (``"speaker"``), whole groups move: every row of a
    speaker lands in the same split, so no speaker is on both sides of a comparison; the shares are then met as
    closely as whole groups allow (at least one group each). Rows without a group value count as groups of their
    own. Raises :class:`DataError` saying how many rows (groups) there are and how many each split needs when
    there are not enough to leave some in ``train``.
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
        needs = ", ".join(f"{max(1, round(share * len(eligible)))} for {name}" for name, share in fractions.items())
        raise DataError(f"only {len(order)} usable {what} in train: cannot hold out {', '.join(fractions)} and keep "
                        f"some for training (that needs at least {len(fractions) + 1}: {needs} and 1 to train on)")
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
