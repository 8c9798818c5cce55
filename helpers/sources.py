"""Where recordings come from: a hub dataset (or a local folder of the same structure) and the synthetic corpus.

Every source ends up as manifest rows (:mod:`helpers.manifest`, which also reads CSVs): audio paths, text as
written, split, source, and a ``speaker`` where the source knows one.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import synth


def load_hub(dataset: str, config: str | None, split: str, audio_column: str, text_column: str,
             out_dir: str | Path, split_name: str | None = None, speaker_column: str | None = None) -> pd.DataFrame:
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
        rows.append({"audio": audio_path, "text": str(example[text_column] or "").strip(), "duration": float("nan"),
                     "split": split_name or split, "source": "hub", "row": i,
                     **({"speaker": str(example[speaker_column])} if speaker_column else {})})
    return pd.DataFrame(rows)


def load_synthetic(out_dir: str | Path, num_train: int, num_test: int, seed: int = 0,
                   num_unlabelled: int = 0, num_valid: int = 0, progress: bool = True) -> pd.DataFrame:
    """The offline synthetic corpus (see :mod:`helpers.synth`), made once in ``out_dir`` and reused.

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
