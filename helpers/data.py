"""Notebook 01 as one call: build the manifests from your own CSV, a hub dataset or the synthetic corpus.

    python -m helpers.data --run-dir runs/tiny -p num_train 1200

Every source ends up as one manifest format (:mod:`helpers.manifest`); every row a model cannot use is skipped
and reported, never silently dropped.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from . import config, synth
from .audio import read_audio
from .files import RunDir, shown
from .manifest import UNLABELLED, check_rows, holdout_split, read_csv, save_manifests, take


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------
def load_hub(dataset: str, config: str | None, split: str, audio_column: str, text_column: str,
             out_dir: str | Path, split_name: str | None = None) -> pd.DataFrame:
    """Load ``dataset`` (hub id or local folder of the same structure) with ``datasets`` and write its audio
    to ``out_dir/<split>/`` as files, so every source ends up as audio paths.

    Audio is not decoded by ``datasets`` (its decoder needs torchcodec, which fails on CPU-only
    machines): the raw bytes or the original file are taken as they are and read with soundfile later.
    """
    import datasets

    try:
        ds = datasets.load_dataset(dataset, config, split=split)
    except Exception as err:  # hub errors are many: say what was asked for and how to fix the usual causes
        raise RuntimeError(f"could not load hub dataset {dataset!r} (config {config!r}, split {split!r}): {err}. "
                           "Check the name, log in with `hf auth login` for gated sets, or use source='csv'.") from err
    missing = [c for c in (audio_column, text_column) if c not in ds.column_names]
    if missing:
        raise ValueError(f"{dataset} split {split!r} has no column(s) {missing}; it has {ds.column_names}. "
                         "Set hub_audio_column / hub_text_column.")
    if isinstance(ds.features[audio_column], datasets.Audio):
        ds = ds.cast_column(audio_column, datasets.Audio(decode=False))
    folder = Path(out_dir) / (split_name or split)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, example in enumerate(ds):
        item = example[audio_column]
        item = item if isinstance(item, dict) else {"path": item, "bytes": None}
        audio_path = ""
        if item.get("bytes"):
            suffix = Path(item.get("path") or "x.wav").suffix or ".wav"
            target = folder / f"{i:06d}{suffix}"
            target.write_bytes(item["bytes"])  # always: the folder may hold another dataset's audio
            audio_path = str(target.resolve())
        elif item.get("path"):
            audio_path = str(Path(item["path"]).resolve())
        rows.append({"audio": audio_path, "text": str(example[text_column] or "").strip(), "duration": float("nan"),
                     "split": split_name or split, "source": "hub", "row": i})
    return pd.DataFrame(rows)


def load_synthetic(out_dir: str | Path, num_train: int, num_test: int, seed: int = 0,
                   num_unlabelled: int = 0, progress: bool = True) -> pd.DataFrame:
    """The offline synthetic corpus (see :mod:`helpers.synth`), made once in ``out_dir`` and reused.

    The ``unlabelled`` split (``num_unlabelled`` clips of the training speakers) comes without transcripts:
    its ``text`` is emptied here, so no later step can learn from the sentences that were spoken.
    """
    splits = synth.default_splits(num_train, num_test, seed, num_unlabelled)
    manifest = synth.write_corpus(out_dir, splits, seed=seed, progress=progress)
    rows = pd.read_json(manifest, lines=True, dtype={"snr_db": float, "text": str})
    rows.loc[rows["split"] == "unlabelled", "text"] = ""
    rows["audio"] = [str((Path(out_dir) / a).resolve()) for a in rows["audio"]]
    rows["row"] = range(len(rows))
    return rows


# ---------------------------------------------------------------------------------------------
# The whole data phase (notebook 01) in one call
# ---------------------------------------------------------------------------------------------
def prepare(p) -> dict:
    """Build, check, split and save the manifests for notebook 01's parameters ``p`` (see config.py).

    Returns ``{"train", "test", "skipped", "report"}`` (and ``"unlabelled"`` when the synthetic source makes
    ``p.num_unlabelled`` clips without transcripts); files go to ``p.run_dir / "data"``.
    """
    repo_path = config.repo_path
    data_dir = RunDir(p.run_dir).data
    if p.source == "synthetic":
        rows = load_synthetic(Path(p.run_dir) / "corpus", p.num_train, p.num_test, p.seed, p.num_unlabelled or 0,
                              progress=p.live_plot)
    elif p.source == "csv":
        if not p.train_csv:
            raise ValueError("source='csv' needs train_csv (a CSV with columns "
                             f"{p.audio_column!r} and {p.text_column!r})")
        rows = read_csv(repo_path(p.train_csv), p.audio_column, p.text_column, "train")
        if p.test_csv:
            rows = pd.concat([rows, read_csv(repo_path(p.test_csv), p.audio_column, p.text_column, "test")])
        else:
            rows = holdout_split(rows, p.test_fraction, p.seed)
    elif p.source == "hub":
        if not p.hub_dataset:
            raise ValueError("source='hub' needs hub_dataset (a hub id or a local dataset folder)")
        audio_dir = data_dir / "hub_audio"
        rows = pd.concat([load_hub(p.hub_dataset, p.hub_config, split, p.hub_audio_column, p.hub_text_column,
                                   audio_dir, name)
                          for split, name in ((p.hub_train_split, "train"), (p.hub_test_split, "test"))])
    else:
        raise ValueError(f"source must be 'synthetic', 'csv' or 'hub', got {p.source!r}")

    rows = rows.reset_index(drop=True)
    kept, skipped = check_rows(rows, p.max_duration_s)
    splits = {"train": take(kept, "train", p.num_train, p.seed), "test": take(kept, "test", p.num_test, p.seed)}
    if p.source == "synthetic" and p.num_unlabelled:
        splits[UNLABELLED] = take(kept, UNLABELLED, p.num_unlabelled, p.seed)
    for name, part in splits.items():
        if part.empty and name != UNLABELLED:
            raise ValueError(f"no usable {name} rows are left ({len(skipped)} skipped; see the skipped table). "
                             "Check the paths and transcripts of your data.")
    report = summarize(splits, skipped, p)
    save_manifests(data_dir, splits, skipped, report)
    return {**splits, "skipped": skipped, "report": report}


def summarize(splits: dict[str, pd.DataFrame], skipped: pd.DataFrame, p) -> dict:
    """The JSON data report: counts, hours, durations, transcript lengths, characters, skipped rows by reason."""
    report = {"source": p.source, "seed": p.seed, "max_duration_s": p.max_duration_s, "splits": {},
              "skipped": {"total": int(len(skipped)), "by_reason": skipped["reason"].value_counts().to_dict()}}
    for name, part in splits.items():
        chars = "".join(part["text"])
        report["splits"][name] = {
            "utterances": int(len(part)), "hours": round(float(part["duration"].sum()) / 3600, 4),
            "duration_s": {k: round(float(getattr(part["duration"], k)()), 2) for k in ("mean", "min", "max")},
            "transcript_chars_mean": round(float(part["text"].str.len().mean()), 2),
            "distinct_characters": len(set(chars) - {" "}),
            "code_switched_share": round(float(part["text"].str.contains("[A-Za-z]").mean()), 3),
            "by_source": part["source"].value_counts().to_dict(),
        }
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

    sys.exit(config.phase_main("data", run_phase))
