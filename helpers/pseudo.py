"""Pseudo-labelling: the teacher transcribes the training audio, and only transcripts worth learning from
are kept; optionally the teacher's encoder outputs are cached for decoder-only distillation.
"""
from __future__ import annotations

import hashlib
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import text
from .collate import read_audio
from .data import write_json

# A unit of 1-8 characters repeated 4 or more times in a row ("的的的的", "meetingmeetingmeetingmeeting").
_LOOP = re.compile(r"(.{1,8}?)\1{3,}")


def degenerate_reason(prediction: str) -> str | None:
    """Why a transcript cannot be trusted whatever its CER: ``"empty output"``, ``"repetition loop"``, or None.

    A loop is a unit of 1-8 characters repeated 4+ times in a row, or text that compresses more than
    2.4:1 with zlib (Whisper's own test for runaway decoding).
    """
    norm = text.normalize(prediction, fold=None).replace(" ", "")
    if not norm:
        return "empty output"
    if _LOOP.search(norm):
        return "repetition loop"
    raw = norm.encode("utf-8")
    if len(raw) >= 60 and len(raw) / len(zlib.compress(raw)) > 2.4:
        return "repetition loop"
    return None


def label_rows(manifest: pd.DataFrame, predictions: list[str], cer_threshold: float) -> pd.DataFrame:
    """The pseudo-label manifest: teacher text beside the reference, per-utterance CER (%) and a status.

    Status is ``kept``, ``kept (no reference)`` (nothing to compare with: kept and marked unlabelled),
    ``filtered: CER above threshold``, ``filtered: empty output`` or ``filtered: repetition loop``.
    The ``text`` column holds what the student will learn: the teacher's transcript.
    """
    rows = manifest.copy().reset_index(drop=True)
    rows["reference"] = pd.Series([t if isinstance(t, str) and t.strip() else None for t in rows["text"]], dtype=object)
    rows["teacher_text"] = predictions
    cers, statuses = [], []
    for ref, pred in zip(rows["reference"], rows["teacher_text"]):
        cer = text.cer([ref], [pred]) if ref is not None else None
        reason = degenerate_reason(pred)
        if reason:
            status = f"filtered: {reason}"
        elif ref is None:
            status = "kept (no reference)"
        elif cer > cer_threshold:
            status = "filtered: CER above threshold"
        else:
            status = "kept"
        cers.append(cer)
        statuses.append(status)
    rows["cer"] = cers
    rows["status"] = statuses
    rows["kept"] = rows["status"].str.startswith("kept")
    rows["text"] = rows["teacher_text"]
    return rows


def pseudo_label(teacher, manifest: pd.DataFrame, cer_threshold: float, batch_size: int = 16,
                 progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Transcribe ``manifest`` with ``teacher`` (a LoadedWhisper) and label every row; returns (rows, summary).

    Alone, one process transcribes everything. Under a launcher (``WORLD_SIZE`` > 1) each process transcribes
    one contiguous block of the manifest and the blocks are gathered in rank order (:func:`launch.transcribe`),
    so every process returns the same rows, in manifest order, as one process would. ``summary`` adds
    ``processes``; its ``compute_s`` is the slowest block's wall time.
    """
    from .launch import process_state
    from .launch import transcribe as transcribe_shared

    if not 0 <= cer_threshold:
        raise ValueError(f"cer_threshold is a percentage (e.g. 10), got {cer_threshold}")
    predictions, speed = transcribe_shared(teacher.model, teacher.processor, manifest, batch_size,
                                           desc="pseudo-labelling", progress=progress)
    rows = label_rows(manifest, predictions, cer_threshold)
    labelled = rows[rows["reference"].notna()]
    summary = {"utterances": len(rows), "kept": int(rows["kept"].sum()), "cer_threshold": cer_threshold,
               "by_status": rows["status"].value_counts().to_dict(), **speed,
               "processes": process_state().num_processes,
               "teacher_cer": text.cer(labelled["reference"].tolist(), labelled["teacher_text"].tolist())
               if len(labelled) else None}
    return rows, summary


# ---------------------------------------------------------------------------------------------
# Encoder-output cache
# ---------------------------------------------------------------------------------------------
def encoder_fingerprint(model) -> str:
    """SHA-256 over the encoder's parameter names, shapes and fp16 values: which teacher made a cache."""
    digest = hashlib.sha256()
    for name, param in model.model.encoder.state_dict().items():
        digest.update(f"{name}{tuple(param.shape)}".encode())
        digest.update(param.detach().to("cpu", torch.float16).numpy().tobytes())
    return digest.hexdigest()[:16]


def feature_settings(feature_extractor) -> dict:
    """The feature extractor settings a cache depends on."""
    keys = ("feature_size", "sampling_rate", "hop_length", "n_fft", "chunk_length", "n_samples")
    return {k: getattr(feature_extractor, k) for k in keys}


@torch.no_grad()
def write_encoder_cache(teacher, rows: pd.DataFrame, cache_dir: str | Path, batch_size: int = 16,
                        progress: bool = True) -> Path:
    """Store the teacher's encoder outputs for ``rows`` as one fp16 array (rows x frames x width) in
    ``cache_dir/encoder_outputs.npy`` (read memory-mapped), with ``cache.json`` tying each row to its
    audio file, the teacher's encoder fingerprint and the feature settings.

    Under a launcher every process encodes one contiguous block of ``rows`` (:func:`launch.shard_bounds`)
    into its own slice of the same file: the cache is written by shards and read as one, identical to a
    single process's. The main process creates the file and publishes it (rename, then ``cache.json``) once
    every slice is in; on several machines ``cache_dir`` must be on a shared file system.
    """
    from numpy.lib.format import open_memmap
    from tqdm.auto import tqdm

    from .launch import process_state, shard_bounds

    state = process_state()
    cache_dir = Path(cache_dir)
    model, fe = teacher.model.eval(), teacher.feature_extractor
    device = next(model.parameters()).device
    frames, width = model.config.max_source_positions, model.config.d_model
    tmp = cache_dir / "encoder_outputs.tmp.npy"
    if state.is_main_process:
        cache_dir.mkdir(parents=True, exist_ok=True)
        created = open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(rows), frames, width))
        del created  # header and size are on disk: the other processes may open the file now
    state.wait_for_everyone()
    array = open_memmap(tmp, mode="r+")
    first, last = shard_bounds(len(rows), state.process_index, state.num_processes)
    for start in tqdm(range(first, last, batch_size), desc="caching encoder outputs",
                      disable=not (progress and state.is_main_process)):
        audio = [read_audio(a, fe.sampling_rate) for a in rows["audio"].iloc[start:min(start + batch_size, last)]]
        feats = fe(audio, sampling_rate=fe.sampling_rate, return_tensors="pt").input_features
        out = model.model.encoder(feats.to(device, model.dtype)).last_hidden_state
        array[start:start + len(audio)] = out.to("cpu", torch.float16).numpy()
    array.flush()
    del array
    state.wait_for_everyone()
    if state.is_main_process:
        tmp.replace(cache_dir / "encoder_outputs.npy")
        meta = {"teacher_fingerprint": encoder_fingerprint(model), "features": feature_settings(fe),
                "shape": [len(rows), frames, width], "dtype": "float16", "audio": rows["audio"].tolist()}
        write_json(cache_dir / "cache.json", meta)
    state.wait_for_everyone()  # nobody reads the cache before it is published
    return cache_dir


def open_encoder_cache(cache_dir: str | Path, teacher, audio: list[str] | None = None) -> np.ndarray:
    """The cached encoder outputs (memory-mapped), after checking they were made by this teacher with these
    feature settings (and, if given, for these audio files in this order). Raises ValueError otherwise."""
    cache_dir = Path(cache_dir)
    if not (cache_dir / "cache.json").exists():
        raise FileNotFoundError(f"{cache_dir} holds no encoder cache: run notebook 03 with cache_encoder_outputs = True")
    meta = json.loads((cache_dir / "cache.json").read_text("utf-8"))
    if meta["teacher_fingerprint"] != encoder_fingerprint(teacher.model):
        raise ValueError(f"the encoder cache in {cache_dir} was made by another teacher (encoder fingerprint "
                         f"{meta['teacher_fingerprint']}); re-run notebook 03 with this teacher")
    if meta["features"] != feature_settings(teacher.feature_extractor):
        raise ValueError(f"the encoder cache in {cache_dir} was made with other feature settings "
                         f"({meta['features']}); re-run notebook 03")
    if audio is not None and list(audio) != meta["audio"]:
        raise ValueError(f"the encoder cache in {cache_dir} holds other utterances than the pseudo-label manifest")
    return np.load(cache_dir / "encoder_outputs.npy", mmap_mode="r")


# ---------------------------------------------------------------------------------------------
# The whole phase (notebook 03), in one process or under `accelerate launch`
# ---------------------------------------------------------------------------------------------
def run_phase(p) -> dict:
    """Notebook 03 for its parameters ``p``: the teacher (``p.teacher`` or ``run_dir/teacher``) transcribes
    ``run_dir/data/train.jsonl`` (and ``unlabelled.jsonl`` with ``p.include_unlabelled``); writes
    ``run_dir/pseudo/`` (``train.jsonl`` the kept rows, ``all.jsonl``, ``skipped.csv``, ``report.json``) and,
    with ``p.cache_encoder_outputs``, ``pseudo/encoder_cache/``. Returns the summary written to ``report.json``.
    On several processes the manifest and the cache are sharded (:func:`pseudo_label`,
    :func:`write_encoder_cache`); only the main process writes manifests.
    """
    from . import data, models
    from .launch import process_state

    state = process_state()
    teacher = models.load_whisper(p.teacher or p.run_dir / "teacher", device=state.device)
    train_rows = data.audio_to_pseudo_label(p.run_dir / "data", p.include_unlabelled)
    out_dir = p.run_dir / "pseudo"
    rows, summary = pseudo_label(teacher, train_rows, p.cer_threshold, p.batch_size, progress=state.is_main_process)
    if state.is_main_process:
        data.save_manifests(out_dir, {"train": rows[rows["kept"]], "all": rows},
                            skipped=rows[~rows["kept"]][["audio", "status"]], report=summary)
        print(f"pseudo-labels: kept {summary['kept']} of {summary['utterances']} utterances "
              f"({summary['processes']} process(es)) -> {out_dir}")
    if p.cache_encoder_outputs:
        write_encoder_cache(teacher, rows[rows["kept"]], out_dir / "encoder_cache", p.batch_size,
                            progress=state.is_main_process)
    return summary


if __name__ == "__main__":
    import sys

    from .launch import main

    sys.exit(main("pseudo"))
