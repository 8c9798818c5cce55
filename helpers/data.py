"""Notebook 01 as one call: build the manifests from your own CSV, a hub dataset or the synthetic corpus.

    python -m helpers.data --run-dir runs/tiny -p num_train 1200

Every source ends up as one manifest format (:mod:`helpers.speech.manifest`); every row a model cannot use is skipped
and reported, never silently dropped.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from . import cli, config
from .files import RunDir, shown
from .speech import text
from .speech.audio import SAMPLING_RATE, read_audio
from .speech.checks import SKIPPED_COLUMNS, RowLimits
from .speech.errors import DataError
from .speech.leaks import drop_repeats
from .speech.manifest import UNLABELLED, check_rows, holdout_split, read_csv, save_manifests, take, text_overlap
from .speech.sources import cut_long, find_audio, load_hub, load_synthetic

# ---------------------------------------------------------------------------------------------
# The whole data phase (notebook 01) in one call
# ---------------------------------------------------------------------------------------------
SPLITS = ("train", "valid", "test")  # the transcribed splits, in the order the course uses them
SMALL_SPLIT = 10  # valid or test with fewer utterances: their error rates are mostly chance (a warning says so)


def prepare(p) -> dict:
    """Build, check, split and save the manifests for notebook 01's parameters ``p`` (see config.py).

    Returns ``{"train", "valid", "test", "skipped", "report"}`` (and ``"unlabelled"`` when the synthetic source
    makes ``p.num_unlabelled`` clips without transcripts, or untranscribed recordings are given); files go to
    ``RunDir(p.run_dir).data``. Every row is checked first (:func:`check_rows`), then one row per recording is kept
    (:func:`drop_repeats`: duplicates, and audio given in two splits, are reported), and only then is a split the
    source does not provide (no ``valid_csv``, no ``hub_valid_split``...) held out of the usable training rows:
    ``valid_fraction`` / ``test_fraction`` of them, whole speakers at a time when ``speaker_column`` is named.
    Whatever stops the run, ``skipped.csv`` and ``report.json`` are written first; bad input raises
    :class:`DataError` with a message that says what to do and where the skipped rows are listed.
    """
    data_dir = RunDir(p.run_dir).data
    found = {"skipped": pd.DataFrame(columns=SKIPPED_COLUMNS)}
    try:
        return _prepare(p, data_dir, found)
    except Exception as err:
        pointer = _write_stopped(data_dir, found["skipped"], p, err)
        if isinstance(err, DataError):
            raise type(err)(f"{err} {pointer}") from None
        raise


def _prepare(p, data_dir: Path, found: dict) -> dict:
    """:func:`prepare`'s steps; ``found["skipped"]`` holds the rows skipped so far, for when a step stops."""
    rows = pd.concat([read_source(p, data_dir), read_unlabelled(p, data_dir)], ignore_index=True)
    kept, skipped = check_rows(rows, p.max_duration_s, RowLimits.of(p), content_keys=True)
    found["skipped"] = skipped
    kept, repeats = drop_repeats(kept)
    found["skipped"] = skipped = _joined(skipped, repeats)
    kept = hold_out(kept.drop(columns="content"), p, skipped)
    recordings = (kept["split"] == UNLABELLED) & (kept["source"] != "synthetic")  # of any length: cut at pauses
    pieces, silent = cut_long(kept[recordings], p.max_duration_s or 30.0, progress=p.live_plot)
    if recordings.any():
        kept, skipped = kept[~recordings], _joined(skipped, silent)
        found["skipped"] = skipped
    sizes = {"train": p.num_train, "valid": p.num_valid, "test": p.num_test}
    splits = {name: take(kept, name, sizes[name], p.seed) for name in SPLITS}
    synthetic = kept[(kept["split"] == UNLABELLED) & (kept["source"] == "synthetic")]
    unlabelled = [part for part in (take(synthetic, UNLABELLED, p.num_unlabelled, p.seed), pieces) if len(part)]
    if unlabelled:
        splits[UNLABELLED] = pd.concat(unlabelled, ignore_index=True)
    for name in SPLITS:
        if splits[name].empty:
            raise DataError(_nothing_left(name, p, skipped))
    report = summarize(splits, skipped, p)
    notes = _small_split_notes(splits, p)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=3)
    if notes:
        report["warnings"] = notes
    save_manifests(data_dir, splits, skipped, report)
    return {**splits, "skipped": skipped, "report": report}


def _joined(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """Two skipped tables as one (an empty one adds nothing)."""
    return pd.concat([first, second], ignore_index=True) if len(second) else first


def _nothing_left(split: str, p, skipped: pd.DataFrame) -> str:
    """Why ``split`` has no usable rows: its source holds none, or every one was skipped (reasons counted)."""
    counts = skipped.loc[skipped["split"] == split, "reason"].value_counts()
    if counts.empty:
        return (f"no usable {split} rows are left: {_origin(split, p)} holds no rows; write one line per recording "
                "under the header")
    reasons = ", ".join(f"{reason} {n}" for reason, n in counts.items())
    return (f"no usable {split} rows are left ({_origin(split, p)}; skipped: {reasons}). Check the paths and "
            "transcripts of your data.")


def _write_stopped(data_dir: Path, skipped: pd.DataFrame, p, err: Exception) -> str:
    """Write ``skipped.csv`` and a report saying why the run stopped, remove the manifests of an earlier run (later
    notebooks must not train on data this run refused), show the skipped rows by reason, and return the sentence
    that points at ``skipped.csv``."""
    report = {"source": p.source, "seed": p.seed, "stopped": f"{type(err).__name__}: {err}",
              "skipped": {"total": int(len(skipped)), "by_reason": skipped["reason"].value_counts().to_dict()}}
    try:
        for stale in data_dir.glob("*.jsonl"):
            stale.unlink()
        save_manifests(data_dir, {}, skipped, report)
    except OSError as failed:
        return f"(skipped.csv could not be written to {shown(data_dir)}: {failed})"
    if not skipped.empty:
        print(f"the run stopped; {len(skipped)} rows were skipped before it did:")
        print(skipped["reason"].value_counts().rename_axis("reason").rename("rows").to_string())
    if skipped.empty:
        return f"(nothing was skipped before this: {shown(data_dir / 'skipped.csv')} is empty)"
    return f"(the {len(skipped)} skipped rows, each with its reason and line: {shown(data_dir / 'skipped.csv')})"


def _small_split_notes(splits: dict, p) -> list[str]:
    """A warning when your own valid or test split is too small for its error rates to mean anything."""
    small = {name: len(splits[name]) for name in ("valid", "test") if len(splits[name]) < SMALL_SPLIT}
    if not small or p.source == "synthetic":
        return []
    sizes = ", ".join(f"{name} {n}" for name, n in small.items())
    return [f"only {sizes} utterances: each clip weighs {100 / min(small.values()):.0f} % of its split, so the error "
            f"rates measured on them are mostly chance and the figures will be meaningless; give at least "
            f"{SMALL_SPLIT} each (valid_csv / test_csv, or more rows) for numbers worth reading"]


def missing_splits(p) -> dict[str, float]:
    """The splits the source does not provide, with the share of the training rows held out for each."""
    if p.source == "synthetic":
        return {}
    given = ({"valid": p.valid_csv, "test": p.test_csv} if p.source == "csv"
             else {"valid": p.hub_valid_split, "test": p.hub_test_split})
    return {split: getattr(p, f"{split}_fraction") for split, name in given.items() if not name}


def hold_out(kept: pd.DataFrame, p, skipped: pd.DataFrame) -> pd.DataFrame:
    """Hold valid and/or test out of the usable training rows (:func:`missing_splits`); with too few of them, a
    :class:`DataError` saying how many there are, what each split needs and the two ways out."""
    missing = missing_splits(p)
    if not missing:
        return kept
    if not (kept["split"] == "train").any():
        raise DataError(_nothing_left("train", p, skipped))
    try:
        return holdout_split(kept, missing, p.seed, "speaker" if p.speaker_column else None)
    except DataError as err:
        given = " and ".join(f"{s}_csv" if p.source == "csv" else f"hub_{s}_split" for s in missing)
        raise DataError(f"{_origin('train', p)}: {err}. Two ways out: give {given} (rows of their own), or add "
                        f"usable rows ({int((skipped['split'] == 'train').sum())} skipped)") from None


def _origin(split: str, p) -> str:
    """Where the rows of ``split`` come from, as a message names it."""
    if p.source == "csv":
        path = getattr(p, f"{split}_csv")
        return f"{split}_csv {path}" if path else f"held out of train_csv {p.train_csv}"
    if p.source == "hub":
        name = getattr(p, f"hub_{split}_split")
        return f"split {name!r} of {p.hub_dataset}" if name else f"held out of split {p.hub_train_split!r}"
    return "the synthetic corpus"


def read_source(p, data_dir: Path) -> pd.DataFrame:
    """The rows of ``p.source`` with their ``split`` (train, and valid / test where the source gives them),
    before any check; valid and test rows the source does not give are held out later (:func:`hold_out`)."""
    repo_path = config.repo_path
    if p.source == "synthetic":
        return load_synthetic(Path(p.run_dir) / "corpus", p.num_train, p.num_test, p.seed, p.num_unlabelled or 0,
                              p.num_valid or 0, progress=p.live_plot)
    if p.source == "csv":
        if not p.train_csv:
            raise DataError("source='csv' needs train_csv (a CSV with columns "
                            f"{p.audio_column!r} and {p.text_column!r})")
        csvs = {"train": p.train_csv, "valid": p.valid_csv, "test": p.test_csv}
        given = {split: read_csv(repo_path(path), p.audio_column, p.text_column, split, p.csv_encoding,
                                 p.speaker_column, p.csv_delimiter)
                 for split, path in csvs.items() if path}
    else:  # hub
        if not p.hub_dataset:
            raise DataError("source='hub' needs hub_dataset (a hub id or a local dataset folder)")
        names = {"train": p.hub_train_split, "valid": p.hub_valid_split, "test": p.hub_test_split}
        given = {split: load_hub(p.hub_dataset, p.hub_config, name, p.hub_audio_column, p.hub_text_column,
                                 data_dir / "hub_audio", split, speaker_column=p.speaker_column)
                 for split, name in names.items() if name}
    return pd.concat(given.values(), ignore_index=True)


def read_unlabelled(p, data_dir: Path) -> pd.DataFrame:
    """Untranscribed recordings from ``p.unlabelled_dir`` (a folder, searched recursively), ``p.unlabelled_csv``
    (its ``audio_column``; a transcript column is ignored) and ``p.hub_unlabelled_split`` (of ``p.hub_dataset``),
    as rows of the ``unlabelled`` split; none of them given: no rows."""
    parts = []
    if p.unlabelled_dir:
        parts.append(find_audio(config.repo_path(p.unlabelled_dir)))
    if p.unlabelled_csv:
        parts.append(read_csv(config.repo_path(p.unlabelled_csv), p.audio_column, None, UNLABELLED, p.csv_encoding,
                              delimiter=p.csv_delimiter))
    if p.hub_unlabelled_split:
        if not p.hub_dataset:
            raise DataError("hub_unlabelled_split needs hub_dataset (a hub id or a local dataset folder)")
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
        sf.write(folder / "audio" / f"good{i}.wav", read_audio(rec["audio"]), SAMPLING_RATE)
        lines.append((f"audio/good{i}.wav", rec["text"]))
    sf.write(folder / "audio" / "empty.wav", np.zeros(0, np.float32), SAMPLING_RATE)
    (folder / "audio" / "not_audio.wav").write_text("this is not a wav file", "utf-8")
    long_clip = np.concatenate([read_audio(a) for a in good_clips["audio"]] * 3)
    sf.write(folder / "audio" / "long.wav", long_clip, SAMPLING_RATE)
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

    sys.exit(cli.phase_main("data", run_phase, input_errors=(DataError,)))
