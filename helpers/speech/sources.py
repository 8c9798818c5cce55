"""Where recordings come from: a hub dataset (or a local folder of the same structure), the synthetic corpus, and
folders of untranscribed recordings of any length.

Every source ends up as manifest rows (:mod:`helpers.speech.manifest`, which also reads CSVs): audio paths, text as
written, split, source, and a ``speaker`` where the source knows one. Untranscribed recordings longer than the
model's window are cut at pauses into pieces (:func:`cut_long`): a piece is a row with the file's path, its
``offset`` into the file and its ``duration``; the audio itself is never copied.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import synth
from .audio import AUDIO_SUFFIXES, SAMPLING_RATE, cut_at_pauses, read_audio
from .checks import SKIPPED_COLUMNS
from .errors import DataError, DataFileNotFound
from .manifest import UNLABELLED

BLOCK_S = 1800.0  # longer files are read and cut 30 minutes at a time (memory stays bounded)


def load_hub(dataset: str, config: str | None, split: str, audio_column: str, text_column: str | None,
             out_dir: str | Path, split_name: str | None = None, speaker_column: str | None = None) -> pd.DataFrame:
    """Load ``dataset`` (hub id or local folder of the same structure) with ``datasets`` and write its audio
    to ``out_dir/<split>/`` as files, so every source ends up as audio paths.

    Audio is not decoded by ``datasets`` (its decoder needs torchcodec, which fails on CPU-only
    machines): the raw bytes or the original file are taken as they are and read with soundfile later.
    ``text_column`` None: audio without transcripts (any transcript column is ignored).
    """
    import datasets

    try:
        ds = datasets.load_dataset(dataset, config, split=split)
    except Exception as err:  # hub errors are many: say what was asked for and how to fix the usual causes
        raise RuntimeError(f"could not load hub dataset {dataset!r} (config {config!r}, split {split!r}): {err}. "
                           "Check the name, log in with `hf auth login` for gated sets, or use source='csv'.") from err
    missing = [c for c in (audio_column, text_column, speaker_column) if c and c not in ds.column_names]
    if missing:
        raise ValueError(f"{dataset} split {split!r} has no column(s) {missing}; it has {ds.column_names}. "
                         "Set hub_audio_column / hub_text_column / speaker_column.")
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
        said = str(example[text_column] or "").strip() if text_column else ""
        rows.append({"audio": audio_path, "text": said, "duration": float("nan"),
                     "split": split_name or split, "source": "hub", "row": i,
                     **({"speaker": str(example[speaker_column])} if speaker_column else {})})
    return pd.DataFrame(rows)


def load_synthetic(out_dir: str | Path, num_train: int, num_test: int, seed: int = 0,
                   num_unlabelled: int = 0, num_valid: int = 0, progress: bool = True) -> pd.DataFrame:
    """The offline synthetic corpus (see :mod:`helpers.speech.synth`), made once in ``out_dir`` and reused.

    Train, valid and test have their own voices and noises. The ``unlabelled`` split (``num_unlabelled`` clips of
    the training speakers) comes without transcripts: its ``text`` is emptied here, so no later step can learn
    from the sentences that were spoken.
    """
    splits = synth.default_splits(num_train, num_test, seed, num_unlabelled, num_valid)
    manifest = synth.write_corpus(out_dir, splits, seed=seed, progress=progress)
    rows = pd.read_json(manifest, lines=True, dtype={"snr_db": float, "text": str})
    rows.loc[rows["split"] == "unlabelled", "text"] = ""
    rows["audio"] = [str((Path(out_dir) / a).resolve()) for a in rows["audio"]]
    rows["row"] = range(len(rows))
    return rows


def find_audio(folder: str | Path) -> pd.DataFrame:
    """Every audio file (wav, flac, ogg, mp3, any case) under ``folder``, subfolders included, in sorted order, as
    untranscribed manifest rows (``source`` "folder", ``row`` the path relative to ``folder``). Raises
    ``DataFileNotFound`` (a ``FileNotFoundError``) for a missing folder and ``DataError`` when it holds no audio
    file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFileNotFound(f"unlabelled_dir {folder} is not a folder")
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise DataError(f"unlabelled_dir {folder} holds no audio file ({', '.join(AUDIO_SUFFIXES)}), subfolders "
                         "included")
    return pd.DataFrame({"audio": [str(f.resolve()) for f in files], "text": "", "duration": float("nan"),
                         "split": UNLABELLED, "source": "folder",
                         "row": [f.relative_to(folder).as_posix() for f in files]})


def cut_long(rows: pd.DataFrame, window_s: float, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Untranscribed recordings as pieces a model can take: every file of ``rows`` (checked rows with their
    ``duration``) is read (30 minutes at a time) and cut at pauses into pieces of at most ``window_s`` seconds
    (``audio.cut_at_pauses``). Returns ``(pieces, skipped)``: one row per piece (the file's ``audio``, ``offset``
    and ``duration`` in seconds, ``piece`` its number in the file, ``file_duration``, and the file's other columns),
    and the files without any sound (``reason`` "silent"), so that every file is accounted for."""
    from tqdm.auto import tqdm

    pieces, skipped = [], []
    for rec in tqdm(rows.to_dict("records"), desc="cutting at pauses", unit="file", disable=not progress):
        found = []
        for start in np.arange(0.0, rec["duration"], BLOCK_S):
            length = min(BLOCK_S, rec["duration"] - start)
            audio = read_audio(rec["audio"], SAMPLING_RATE, offset=float(start), duration=float(length))
            found += [(start + a, start + b) for a, b in cut_at_pauses(audio, SAMPLING_RATE, window_s)]
        if not found:
            skipped.append({"audio": rec["audio"], "row": rec.get("row"), "split": rec["split"],
                            "source": rec["source"], "reason": "silent", "csv": rec.get("csv") or "",
                            "detail": f"{rec['audio']}: no stretch of it is louder than the silence threshold"})
        for k, (a, b) in enumerate(found):
            pieces.append({**rec, "offset": round(float(a), 3), "duration": round(float(b - a), 3), "piece": k,
                           "file_duration": rec["duration"]})
    columns = list(rows.columns) + ["offset", "piece", "file_duration"]
    return (pd.DataFrame(pieces, columns=columns),
            pd.DataFrame(skipped, columns=SKIPPED_COLUMNS))
