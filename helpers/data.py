"""One manifest format from three sources: your own CSV, a hub dataset, or the synthetic corpus.

A manifest is a table with one row per utterance: ``audio`` (absolute path), ``text`` (as written),
``duration`` (seconds), ``split`` (train/test, or ``unlabelled``: audio without a transcript, which only the
teacher's pseudo-labels describe), ``source`` (csv/hub/synthetic), plus whatever the source
adds (speaker, noise...). :func:`check_rows` keeps the rows a model can use and reports every other
row with its reason, so nothing is dropped silently.
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pandas as pd

CSV_ENCODINGS = ("utf-8-sig", "cp950", "big5hkscs")  # utf-8-sig also reads plain UTF-8
MANIFEST_COLUMNS = ["audio", "text", "duration", "split", "source"]
UNLABELLED = "unlabelled"  # the split of audio without transcripts (pseudo-labelled by the teacher only)


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------
def read_csv(path: str | Path, audio_column: str = "file", text_column: str = "中文意譯",
             split: str = "train", encoding: str | None = None) -> pd.DataFrame:
    """Read a CSV in the reference layout (one row per recording: audio file, transcript).

    Encodings tried in order unless ``encoding`` is given: UTF-8 (with or without BOM), cp950, Big5-HKSCS.
    Relative audio paths are resolved against the CSV's folder. Returns manifest rows without
    durations (see :func:`check_rows`); ``row`` holds the CSV line number (header = line 1).
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
    missing = [c for c in (audio_column, text_column) if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}; the file has columns {list(table.columns)}. "
                         "Set audio_column / text_column to the right names.")
    audio = [str((path.parent / a.strip()).resolve()) if a.strip() else "" for a in table[audio_column]]
    return pd.DataFrame({"audio": audio, "text": table[text_column].str.strip(), "duration": float("nan"),
                         "split": split, "source": "csv", "row": range(2, len(table) + 2)})


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
                   num_unlabelled: int = 0) -> pd.DataFrame:
    """The offline synthetic corpus (see :mod:`helpers.synth`), made once in ``out_dir`` and reused.

    The ``unlabelled`` split (``num_unlabelled`` clips of the training speakers) comes without transcripts:
    its ``text`` is emptied here, so no later step can learn from the sentences that were spoken.
    """
    from . import synth

    manifest = synth.write_corpus(out_dir, synth.default_splits(num_train, num_test, seed, num_unlabelled), seed=seed)
    rows = pd.read_json(manifest, lines=True, dtype={"snr_db": float, "text": str})
    rows.loc[rows["split"] == "unlabelled", "text"] = ""
    rows["audio"] = [str((Path(out_dir) / a).resolve()) for a in rows["audio"]]
    rows["row"] = range(len(rows))
    return rows


# ---------------------------------------------------------------------------------------------
# Checking, splitting, saving
# ---------------------------------------------------------------------------------------------
def check_rows(rows: pd.DataFrame, max_duration_s: float | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``rows`` into usable rows (with ``duration`` filled in from the file header) and skipped
    rows (``audio``, ``row``, ``split``, ``reason``). Reasons: no audio path, missing file, unreadable
    audio, empty audio, empty transcript (except in the ``unlabelled`` split, which has none), too long
    for the model's window."""
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
        if reason is None and max_duration_s and rec["duration"] > max_duration_s:
            reason = f"longer than {max_duration_s:g} s"
        (kept if reason is None else skipped).append(rec if reason is None else {
            "audio": path, "row": rec.get("row"), "split": rec["split"], "source": rec["source"], "reason": reason})
    kept_df = pd.DataFrame(kept, columns=list(rows.columns) if not kept else None)
    skipped_df = pd.DataFrame(skipped, columns=["audio", "row", "split", "source", "reason"])
    return kept_df, skipped_df


def holdout_split(rows: pd.DataFrame, test_fraction: float, seed: int = 0) -> pd.DataFrame:
    """Mark a deterministic ``test_fraction`` of rows as ``test`` (when no separate test set is given)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    test = set(order[: max(1, round(len(rows) * test_fraction))])
    rows = rows.copy()
    rows["split"] = ["test" if i in test else "train" for i in range(len(rows))]
    return rows


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
        _atomic_write(data_dir / f"{name}.jsonl", part.to_json(orient="records", lines=True, force_ascii=False))
    _atomic_write(data_dir / "skipped.csv", skipped.to_csv(index=False))
    write_json(data_dir / "report.json", report)
    return data_dir


def load_manifest(data_dir: str | Path, split: str) -> pd.DataFrame:
    """Read ``<data_dir>/<split>.jsonl`` written by notebook 01; a clear error if it is not there."""
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run notebook 01_data with the same run_dir first")
    return pd.read_json(path, lines=True, dtype={"text": str})


def audio_to_pseudo_label(data_dir: str | Path, include_unlabelled: bool = True) -> pd.DataFrame:
    """What the teacher transcribes in notebook 03: the ``train`` manifest, followed by the ``unlabelled``
    one (audio without transcripts) when ``include_unlabelled`` and notebook 01 wrote it. Never the test set.
    Unlabelled rows have an empty ``text``: pseudo-labelling keeps them as ``kept (no reference)``."""
    rows = load_manifest(data_dir, "train")
    if include_unlabelled and (Path(data_dir) / f"{UNLABELLED}.jsonl").exists():
        rows = pd.concat([rows, load_manifest(data_dir, UNLABELLED)], ignore_index=True)
    return rows


def _atomic_write(path: Path, content: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content, "utf-8")
    tmp.replace(path)


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as JSON atomically (a reader never sees half a file, even after a crash)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, json.dumps(obj, ensure_ascii=False, indent=2, default=float))
    return path


def read_json(path: str | Path, default=None):
    """The JSON in ``path``, or ``default`` when the file does not exist."""
    path = Path(path)
    return json.loads(path.read_text("utf-8")) if path.exists() else default


def to_dataset(manifest: pd.DataFrame, processor):
    """A ``datasets.Dataset`` whose rows turn into ``input_features`` + ``labels`` when read (``with_transform``)."""
    import datasets

    from .collate import FeatureTransform

    ds = datasets.Dataset.from_pandas(manifest[["audio", "text"]].reset_index(drop=True), preserve_index=False)
    return ds.with_transform(FeatureTransform(processor))


# ---------------------------------------------------------------------------------------------
# The whole data phase (notebook 01) in one call
# ---------------------------------------------------------------------------------------------
def prepare(p) -> dict:
    """Build, check, split and save the manifests for notebook 01's parameters ``p`` (see config.py).

    Returns ``{"train", "test", "skipped", "report"}`` (and ``"unlabelled"`` when the synthetic source makes
    ``p.num_unlabelled`` clips without transcripts); files go to ``p.run_dir / "data"``.
    """
    from .config import repo_path

    data_dir = Path(p.run_dir) / "data"
    if p.source == "synthetic":
        rows = load_synthetic(Path(p.run_dir) / "corpus", p.num_train, p.num_test, p.seed, p.num_unlabelled or 0)
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
    import numpy as np
    import soundfile as sf

    from .collate import read_audio

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
    lines += [("audio/missing.wav", "這個檔案不存在"), (f"audio/good0.wav", ""), ("audio/empty.wav", "沒有聲音"),
              ("audio/not_audio.wav", "不是音檔"), ("audio/long.wav", "太長的錄音")]
    csv = folder / "messy.csv"
    pd.DataFrame(lines, columns=["file", "中文意譯"]).to_csv(csv, index=False, encoding=encoding)
    return csv
