"""Notebook 01 as one call: build the manifests from your own CSV, a hub dataset or the synthetic corpus.

    python -m helpers.data --run-dir runs/tiny -p num_train 1200

Every source ends up as one manifest format (:mod:`helpers.speech.manifest`); every row a model cannot use is skipped
and reported, never silently dropped.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from . import cli, config
from .files import RunDir, shown
from .speech import text
from .speech.audio import read_audio
from .speech.manifest import UNLABELLED, check_rows, holdout_split, read_csv, save_manifests, take, text_overlap
from .speech.sources import cut_long, find_audio, load_hub, load_synthetic

# ---------------------------------------------------------------------------------------------
# The whole data phase (notebook 01) in one call
# ---------------------------------------------------------------------------------------------
SPLITS = ("train", "valid", "test")  # the transcribed splits, in the order the course uses them


def prepare(p) -> dict:
    """Build, check, split and save the manifests for notebook 01's parameters ``p`` (see config.py).

    Returns ``{"train", "valid", "test", "skipped", "report"}`` (and ``"unlabelled"`` when the synthetic source
    makes ``p.num_unlabelled`` clips without transcripts); files go to ``RunDir(p.run_dir).data``. A split the
    source does not provide (no ``valid_csv``, no ``hub_valid_split``...) is held out from the training rows:
    ``valid_fraction`` / ``test_fraction`` of them, whole speakers at a time when ``speaker_column`` is named.
    """
    data_dir = RunDir(p.run_dir).data
    rows = pd.concat([read_source(p, data_dir), read_unlabelled(p, data_dir)], ignore_index=True)
    kept, skipped = check_rows(rows, p.max_duration_s)
    recordings = (kept["split"] == UNLABELLED) & (kept["source"] != "synthetic")  # of any length: cut at pauses
    pieces, silent = cut_long(kept[recordings], p.max_duration_s or 30.0, progress=p.live_plot)
    if recordings.any():
        kept, skipped = kept[~recordings], pd.concat([skipped, silent], ignore_index=True)
    sizes = {"train": p.num_train, "valid": p.num_valid, "test": p.num_test}
    splits = {name: take(kept, name, sizes[name], p.seed) for name in SPLITS}
    synthetic = kept[(kept["split"] == UNLABELLED) & (kept["source"] == "synthetic")]
    unlabelled = [part for part in (take(synthetic, UNLABELLED, p.num_unlabelled, p.seed), pieces) if len(part)]
    if unlabelled:
        splits[UNLABELLED] = pd.concat(unlabelled, ignore_index=True)
    for name in SPLITS:
        if splits[name].empty:
            raise ValueError(f"no usable {name} rows are left ({len(skipped)} skipped; see the skipped table). "
                             "Check the paths and transcripts of your data.")
    report = summarize(splits, skipped, p)
    save_manifests(data_dir, splits, skipped, report)
    return {**splits, "skipped": skipped, "report": report}


def read_source(p, data_dir: Path) -> pd.DataFrame:
    """The rows of ``p.source`` with their ``split`` (train, valid, test, unlabelled), before any check."""
    repo_path = config.repo_path
    if p.source == "synthetic":
        return load_synthetic(Path(p.run_dir) / "corpus", p.num_train, p.num_test, p.seed, p.num_unlabelled or 0,
                              p.num_valid or 0, progress=p.live_plot)
    given = {}
    if p.source == "csv":
        if not p.train_csv:
            raise ValueError("source='csv' needs train_csv (a CSV with columns "
                             f"{p.audio_column!r} and {p.text_column!r})")
        csvs = {"train": p.train_csv, "valid": p.valid_csv, "test": p.test_csv}
        given = {split: read_csv(repo_path(path), p.audio_column, p.text_column, split,
                                 speaker_column=p.speaker_column)
                 for split, path in csvs.items() if path}
    else:  # hub
        if not p.hub_dataset:
            raise ValueError("source='hub' needs hub_dataset (a hub id or a local dataset folder)")
        names = {"train": p.hub_train_split, "valid": p.hub_valid_split, "test": p.hub_test_split}
        given = {split: load_hub(p.hub_dataset, p.hub_config, name, p.hub_audio_column, p.hub_text_column,
                                 data_dir / "hub_audio", split, speaker_column=p.speaker_column)
                 for split, name in names.items() if name}
    rows = pd.concat(given.values(), ignore_index=True)
    missing = {split: getattr(p, f"{split}_fraction") for split in ("valid", "test") if split not in given}
    if missing:
        rows = holdout_split(rows, missing, p.seed, "speaker" if p.speaker_column else None)
    return rows


def read_unlabelled(p, data_dir: Path) -> pd.DataFrame:
    """Untranscribed recordings from ``p.unlabelled_dir`` (a folder, searched recursively), ``p.unlabelled_csv``
    (its ``audio_column``; a transcript column is ignored) and ``p.hub_unlabelled_split`` (of ``p.hub_dataset``),
    as rows of the ``unlabelled`` split; none of them given: no rows."""
    parts = []
    if p.unlabelled_dir:
        parts.append(find_audio(config.repo_path(p.unlabelled_dir)))
    if p.unlabelled_csv:
        parts.append(read_csv(config.repo_path(p.unlabelled_csv), p.audio_column, None, UNLABELLED))
    if p.hub_unlabelled_split:
        if not p.hub_dataset:
            raise ValueError("hub_unlabelled_split needs hub_dataset (a hub id or a local dataset folder)")
        parts.append(load_hub(p.hub_dataset, p.hub_config, p.hub_unlabelled_split, p.hub_audio_column, None,
                              data_dir / "hub_audio", UNLABELLED))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def summarize(splits: dict[str, pd.DataFrame], skipped: pd.DataFrame, p) -> dict:
    """The JSON data report: per split counts, hours, durations, transcript lengths, characters, speakers; texts
    shared between splits (after the scoring normaliser); skipped rows by reason."""
    report = {"source": p.source, "seed": p.seed, "max_duration_s": p.max_duration_s, "splits": {},
              "skipped": {"total": int(len(skipped)), "by_reason": skipped["reason"].value_counts().to_dict()},
              "shared_texts": text_overlap({k: v for k, v in splits.items() if k in SPLITS}, text.normalize)}
    for name, part in splits.items():
        chars = "".join(part["text"])
        report["splits"][name] = {
            "utterances": int(len(part)), "hours": round(float(part["duration"].sum()) / 3600, 4),
            "duration_s": {k: round(float(getattr(part["duration"], k)()), 2) for k in ("mean", "min", "max")},
            "transcript_chars_mean": round(float(part["text"].str.len().mean()), 2),
            "distinct_characters": len(set(chars) - {" "}),
            "code_switched_share": round(float(part["text"].str.contains("[A-Za-z]").mean()), 3),
            "speakers": int(part["speaker"].nunique()) if "speaker" in part else None,
            "by_source": part["source"].value_counts().to_dict(),
        }
        if "piece" in part and part["piece"].notna().any():  # pieces of long recordings
            cut = part[part["piece"].notna()]
            files = cut.drop_duplicates("audio")
            report["splits"][name]["recordings"] = {
                "files": int(len(files)), "pieces": int(len(cut)),
                "file_hours": round(float(files["file_duration"].sum()) / 3600, 4),
                "piece_hours": round(float(cut["duration"].sum()) / 3600, 4)}
    return report


def write_messy_csv(folder: str | Path, good_clips: pd.DataFrame, encoding: str = "cp950") -> Path:
    """Write a small CSV in the reference layout (``file``, ``中文意譯``) holding every kind of bad row the
    loader handles, next to a few good ones; used by notebook 01 and the tests to show the checks.

    Rows: the good clips (copied), a missing file, an empty transcript, an audio file with no samples,
    a file that is not audio, and a clip longer than 5 s. Saved as ``encoding`` (cp950 = Big5, as
    Windows in Taiwan writes it).
    """
    folder = Path(folder)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, rec in enumerate(good_clips.to_dict("records")):
        sf.write(folder / "audio" / f"good{i}.wav", read_audio(rec["audio"]), 16_000)
        lines.append((f"audio/good{i}.wav", rec["text"]))
    sf.write(folder / "audio" / "empty.wav", np.zeros(0, np.float32), 16_000)
    (folder / "audio" / "not_audio.wav").write_text("this is not a wav file", "utf-8")
    long_clip = np.concatenate([read_audio(a) for a in good_clips["audio"]] * 3)
    sf.write(folder / "audio" / "long.wav", long_clip, 16_000)
    lines += [("audio/missing.wav", "這個檔案不存在"), ("audio/good0.wav", ""), ("audio/empty.wav", "沒有聲音"),
              ("audio/not_audio.wav", "不是音檔"), ("audio/long.wav", "太長的錄音")]
    csv = folder / "messy.csv"
    pd.DataFrame(lines, columns=["file", "中文意譯"]).to_csv(csv, index=False, encoding=encoding)
    return csv


def run_phase(p) -> dict:
    """Notebook 01 for its parameters ``p``: :func:`prepare`, returning the data report."""
    result = prepare(p)
    s = result["report"]["splits"]
    print("data: " + ", ".join(f"{n} {v['utterances']}" for n, v in s.items())
          + f" utterances; {len(result['skipped'])} rows skipped -> {shown(RunDir(p.run_dir).data)}")
    return result["report"]


if __name__ == "__main__":
    import sys

    sys.exit(cli.phase_main("data", run_phase))
