"""Notebook 03: the teacher transcribes the training audio, and only transcripts worth learning from are kept.

    python -m helpers.pseudo --run-dir runs/tiny -p cer_threshold 10

One pass over the audio: each batch's encoder outputs feed the teacher's decoder and, with
``cache_encoder_outputs``, the encoder cache that lets notebook 05 train decoders only.
"""
from __future__ import annotations

import re
import zlib

import pandas as pd

from . import config, models, text
from .decode import transcribe
from .encoder_cache import CacheWriter, cache_bytes
from .files import RunDir, shown
from .manifest import audio_to_pseudo_label, save_manifests
from .processes import process_state

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
                 progress: bool = True, on_encoded=None) -> tuple[pd.DataFrame, dict]:
    """Transcribe ``manifest`` with ``teacher`` (a LoadedWhisper) and label every row; returns (rows, summary).

    ``on_encoded`` receives each batch's encoder outputs (see ``decode.transcribe``). Under a launcher each
    process transcribes one contiguous block and the blocks are gathered in rank order, so every process
    returns the same rows, in manifest order, as one process would. ``summary`` adds ``processes``; its
    ``compute_s`` is the slowest block's wall time.
    """
    if not 0 <= cer_threshold:
        raise ValueError(f"cer_threshold is a percentage (e.g. 10), got {cer_threshold}")
    predictions, speed = transcribe(teacher.model, teacher.processor, manifest, batch_size, desc="pseudo-labelling",
                                    progress=progress, on_encoded=on_encoded)
    rows = label_rows(manifest, predictions, cer_threshold)
    labelled = rows[rows["reference"].notna()]
    summary = {"utterances": len(rows), "kept": int(rows["kept"].sum()), "cer_threshold": cer_threshold,
               "by_status": rows["status"].value_counts().to_dict(), **speed,
               "processes": process_state().num_processes,
               "teacher_cer": text.cer(labelled["reference"].tolist(), labelled["teacher_text"].tolist())
               if len(labelled) else None}
    return rows, summary


def run_phase(p) -> dict:
    """Notebook 03 for its parameters ``p``: the teacher (``p.teacher`` or ``run_dir/teacher``) transcribes
    ``run_dir/data/train.jsonl`` (and ``unlabelled.jsonl`` with ``p.include_unlabelled``); writes
    ``run_dir/pseudo/`` (``train.jsonl`` the kept rows, ``all.jsonl``, ``skipped.csv``, ``report.json``) and,
    with ``p.cache_encoder_outputs``, ``pseudo/encoder_cache/`` holding the encoder outputs of that same pass
    (every transcribed row; notebook 05 picks the kept ones). Returns the summary written to ``report.json``.
    On several processes the manifest and the cache are sharded; only the main process writes manifests.
    """
    state = process_state()
    run = RunDir(p.run_dir)
    teacher = models.load_whisper(p.teacher or run.teacher, device=state.device)
    rows = audio_to_pseudo_label(run.data, p.include_unlabelled)
    cache = None
    if p.cache_encoder_outputs:
        size = cache_bytes(len(rows), teacher.model.config)
        hours = rows["duration"].sum() / 3600
        if state.is_main_process:
            print(f"encoder cache: {len(rows)} clips, {size / 1e9:.2f} GB on disk in {shown(run.encoder_cache)} "
                  f"({size / len(rows) / 1e6:.2f} MB per clip, {size / 1e9 / max(hours, 1e-9):.1f} GB per hour "
                  "of audio)")
        cache = CacheWriter(teacher, rows, run.encoder_cache)
    rows, summary = pseudo_label(teacher, rows, p.cer_threshold, p.batch_size,
                                 progress=state.is_main_process and p.live_plot,
                                 on_encoded=cache.write if cache else None)
    if cache:
        cache.publish()
        summary["encoder_cache_bytes"] = size
    if state.is_main_process:
        save_manifests(run.pseudo, {"train": rows[rows["kept"]], "all": rows},
                       skipped=rows[~rows["kept"]][["audio", "status"]], report=summary)
        print(f"pseudo-labels: kept {summary['kept']} of {summary['utterances']} utterances "
              f"({summary['processes']} process(es)) -> {shown(run.pseudo)}")
    return summary


if __name__ == "__main__":
    import sys

    sys.exit(config.phase_main("pseudo", run_phase))
