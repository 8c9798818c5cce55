"""Notebook 03: the teacher transcribes the training audio, and only transcripts worth learning from are kept.

    python -m helpers.pseudo --run-dir runs/tiny -p cer_threshold 10

One pass over the audio: each batch's encoder outputs feed the teacher's decoder and, with
``cache_encoder_outputs``, the encoder cache that lets notebook 05 train decoders only. Every transcript gets the
teacher's confidence (mean token log-probability, and the no-speech probability): where a human reference exists
the CER decides what is kept; where none does (untranscribed audio), the confidence stands in for it, with a
threshold chosen on the validation clips, whose references say how far confidence can be trusted.
"""
from __future__ import annotations

import re
import zlib

import numpy as np
import pandas as pd

from . import cli
from .files import RunDir, shown
from .speech import text
from .speech.errors import DataError
from .speech.manifest import audio_to_pseudo_label, load_manifest, save_manifests
from .whisper import models
from .whisper.decode import sequence_confidence, transcribe
from .whisper.encoder_cache import CacheWriter, cache_bytes, open_encoder_cache
from .whisper.processes import gather_blocks, process_state
from .whisper.teacher_targets import label_ids, target_bytes, write_targets

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


def label_rows(manifest: pd.DataFrame, predictions: list[str], cer_threshold: float,
               avg_logprob=None, no_speech_prob=None, min_avg_logprob: float | None = None,
               max_no_speech_prob: float | None = None) -> pd.DataFrame:
    """The pseudo-label manifest: teacher text beside the reference, per-utterance CER (%), confidence, and a status.

    Status is ``kept``, ``kept (no reference)``, ``filtered: CER above threshold`` (rows with a reference),
    ``filtered: low confidence`` (no reference, mean token log-probability below ``min_avg_logprob``),
    ``filtered: no speech`` (no reference, no-speech probability above ``max_no_speech_prob``),
    ``filtered: empty output`` or ``filtered: repetition loop`` (any row). A threshold of None does not filter.
    The ``text`` column holds what the student will learn: the teacher's transcript.
    """
    rows = manifest.copy().reset_index(drop=True)
    rows["reference"] = pd.Series([t if isinstance(t, str) and t.strip() else None for t in rows["text"]], dtype=object)
    rows["teacher_text"] = predictions
    rows["avg_logprob"] = np.nan if avg_logprob is None else np.asarray(avg_logprob, dtype=float)
    rows["no_speech_prob"] = np.nan if no_speech_prob is None else np.asarray(no_speech_prob, dtype=float)
    cers, statuses = [], []
    for ref, pred, logprob, silent in zip(rows["reference"], rows["teacher_text"], rows["avg_logprob"],
                                          rows["no_speech_prob"]):
        cer = text.cer([ref], [pred]) if ref is not None else None
        reason = degenerate_reason(pred)
        if reason:
            status = f"filtered: {reason}"
        elif ref is not None:
            status = "filtered: CER above threshold" if cer > cer_threshold else "kept"
        elif max_no_speech_prob is not None and silent > max_no_speech_prob:
            status = "filtered: no speech"
        elif min_avg_logprob is not None and logprob < min_avg_logprob:
            status = "filtered: low confidence"
        else:
            status = "kept (no reference)"
        cers.append(cer)
        statuses.append(status)
    rows["cer"] = cers
    rows["status"] = statuses
    rows["kept"] = rows["status"].str.startswith("kept")
    rows["text"] = rows["teacher_text"]
    return rows


class Confidence:
    """An ``on_batch`` for ``decode.transcribe`` that scores each transcript's confidence as it is made
    (``decode.sequence_confidence``); after the pass, :meth:`values` gives them in manifest order, gathered from
    every process under a launcher."""

    def __init__(self, teacher, n_rows: int, then=None):
        tokenizer = teacher.tokenizer
        self.model, self.n_rows, self.then = teacher.model, n_rows, then
        self.prompt = list(tokenizer.prefix_tokens)
        self.eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.no_speech = tokenizer.convert_tokens_to_ids("<|nospeech|>")
        self.found: dict[int, tuple[float, float]] = {}

    def __call__(self, rows, hidden, sequences):
        logprob, silent = sequence_confidence(self.model, hidden, sequences, self.prompt, self.eos, self.no_speech)
        self.found.update({int(r): (float(a), float(b)) for r, a, b in zip(rows, logprob, silent)})
        if self.then is not None:
            self.then(rows, hidden, sequences)

    def values(self) -> tuple[np.ndarray, np.ndarray]:
        merged = {k: v for block in gather_blocks(self.found) for k, v in block.items()}
        scores = np.array([merged[i] for i in range(self.n_rows)]).reshape(self.n_rows, 2)
        return scores[:, 0], scores[:, 1]


def pseudo_label(teacher, manifest: pd.DataFrame, cer_threshold: float, batch_size: int = 16,
                 progress: bool = True, on_batch=None, min_avg_logprob: float | None = None,
                 max_no_speech_prob: float | None = None) -> tuple[pd.DataFrame, dict]:
    """Transcribe ``manifest`` with ``teacher`` (a LoadedWhisper), score each transcript's confidence and label
    every row (:func:`label_rows`); returns (rows, summary).

    ``on_batch`` also receives each batch (see ``decode.transcribe``: the encoder cache). Under a launcher each
    process transcribes one contiguous block and the blocks are gathered in rank order, so every process returns
    the same rows, in manifest order, as one process would. ``summary`` adds ``processes``; its ``compute_s`` is
    the slowest block's wall time.
    """
    if not 0 <= cer_threshold:
        raise ValueError(f"cer_threshold is a percentage (e.g. 10), got {cer_threshold}")
    confidence = Confidence(teacher, len(manifest), then=on_batch)
    predictions, speed = transcribe(teacher.model, teacher.processor, manifest, batch_size, desc="pseudo-labelling",
                                    progress=progress, on_batch=confidence)
    rows = label_rows(manifest, predictions, cer_threshold, *confidence.values(), min_avg_logprob,
                      max_no_speech_prob)
    labelled = rows[rows["reference"].notna()]
    summary = {"utterances": len(rows), "kept": int(rows["kept"].sum()), "cer_threshold": cer_threshold,
               "min_avg_logprob": min_avg_logprob, "max_no_speech_prob": max_no_speech_prob,
               "by_status": rows["status"].value_counts().to_dict(), **speed,
               "processes": process_state().num_processes,
               "teacher_cer": text.cer(labelled["reference"].tolist(), labelled["teacher_text"].tolist())
               if len(labelled) else None}
    return rows, summary


def choose_logprob_threshold(avg_logprob, cer, cer_threshold: float) -> float:
    """The mean-log-probability threshold that best tells transcripts within ``cer_threshold`` (percent) from the
    others, on clips whose references give their CER: the value maximising true-positive minus false-positive
    rate (Youden's J) when "log-probability >= threshold" predicts "CER <= cer_threshold". Raises ``ValueError``
    when the clips are all good or all bad (nothing to separate)."""
    avg_logprob, good = np.asarray(avg_logprob, float), np.asarray(cer, float) <= cer_threshold
    if good.all() or not good.any():
        raise ValueError(f"all {len(good)} validation transcripts are {'within' if good.all() else 'above'} the CER "
                         "threshold: they cannot calibrate a confidence threshold; give min_avg_logprob yourself")
    candidates = np.unique(avg_logprob)
    scores = [(good & (avg_logprob >= t)).sum() / good.sum() - (~good & (avg_logprob >= t)).sum() / (~good).sum()
              for t in candidates]
    return float(candidates[int(np.argmax(scores))])


def calibrate(teacher, rows: pd.DataFrame, cer_threshold: float, batch_size: int, progress: bool = True
              ) -> tuple[float, pd.DataFrame]:
    """Transcribe ``rows`` (the validation clips, which have references) and choose the confidence threshold on
    them (:func:`choose_logprob_threshold`); returns ``(threshold, labelled rows)``."""
    labelled, _ = pseudo_label(teacher, rows, cer_threshold, batch_size, progress)
    return choose_logprob_threshold(labelled["avg_logprob"], labelled["cer"], cer_threshold), labelled


def store_targets(teacher, kept: pd.DataFrame, run: RunDir, p, progress: bool = True) -> dict:
    """Notebook 03's optional last step: the teacher's compact next-token distributions at every label position of
    the kept pseudo-labels (``teacher_targets.write_targets``), for each method of ``p.store_teacher_targets``,
    reading the encoder outputs from the cache when there is one. Prints the disk size (and per hour of audio)
    before writing; returns ``{method: bytes}``. Main process only."""
    state = process_state()
    methods = ("topk", "sampled") if p.store_teacher_targets == "both" else (p.store_teacher_targets,)
    tokens = sum(len(ids) for ids in label_ids(teacher.tokenizer, kept["text"].tolist()))
    size = target_bytes(tokens, p.targets_k)
    hours = kept["duration"].sum() / 3600
    written = {}
    if state.is_main_process:
        encoded = open_encoder_cache(run.encoder_cache, teacher, kept) if p.cache_encoder_outputs else None
        for method in methods:
            print(f"teacher targets ({method}, k={p.targets_k}, T={p.targets_temperature:g}): {tokens} label tokens, "
                  f"{size / 1e6:.1f} MB in {shown(run.teacher_targets(method))} ({size / 1e6 / max(hours, 1e-9):.0f} "
                  "MB per hour of audio)")
            write_targets(teacher, kept, run.teacher_targets(method), p.targets_k, p.targets_temperature, method,
                          encoded, p.batch_size, p.seed, progress)
            written[method] = size
    state.wait_for_everyone()
    return written


def run_phase(p) -> dict:
    """Notebook 03 for its parameters ``p``: the teacher (``p.teacher`` or ``run_dir/teacher``) transcribes
    ``run_dir/data/train.jsonl`` (and ``unlabelled.jsonl`` with ``p.include_unlabelled``); writes
    ``run_dir/pseudo/`` (``train.jsonl`` the kept rows, ``all.jsonl``, ``skipped.csv``, ``report.json``,
    ``valid_confidence.jsonl``) and, with ``p.cache_encoder_outputs``, ``pseudo/encoder_cache/`` holding the
    encoder outputs of that same pass (every transcribed row; notebook 05 picks the kept ones). Untranscribed rows
    are filtered by confidence: ``p.min_avg_logprob``, or a threshold chosen on the validation clips when it is None
    and ``p.confidence_filter``. Returns the summary written to ``report.json``. On several processes the manifest
    and the cache are sharded; only the main process writes manifests.
    """
    state = process_state()
    run = RunDir(p.run_dir)
    teacher = models.load_whisper(p.teacher or run.teacher, device=state.device)
    rows = audio_to_pseudo_label(run.data, p.include_unlabelled)
    progress = state.is_main_process and p.live_plot
    threshold, calibration = p.min_avg_logprob, None
    if p.confidence_filter and threshold is None and (rows["text"].str.strip() == "").any():
        try:
            threshold, calibration = calibrate(teacher, load_manifest(run.data, "valid"), p.cer_threshold,
                                               p.batch_size, progress)
            message = (f"confidence threshold chosen on the {len(calibration)} validation clips: mean token "
                       f"log-probability >= {threshold:.3f}")
        except ValueError as err:  # nothing to separate: say so, and filter by the other guards only
            message = f"no confidence threshold: {err}"
        if state.is_main_process:
            print(message)
    cache = None
    if p.cache_encoder_outputs:
        size = cache_bytes(len(rows), teacher.model.config)
        hours = rows["duration"].sum() / 3600
        if state.is_main_process:
            print(f"encoder cache: {len(rows)} clips, {size / 1e9:.2f} GB on disk in {shown(run.encoder_cache)} "
                  f"({size / len(rows) / 1e6:.2f} MB per clip, {size / 1e9 / max(hours, 1e-9):.1f} GB per hour "
                  "of audio)")
        cache = CacheWriter(teacher, rows, run.encoder_cache)
    rows, summary = pseudo_label(teacher, rows, p.cer_threshold, p.batch_size, progress=progress,
                                 on_batch=cache.write if cache else None,
                                 min_avg_logprob=threshold if p.confidence_filter else None,
                                 max_no_speech_prob=p.max_no_speech_prob if p.confidence_filter else None)
    if cache:
        cache.publish()
        summary["encoder_cache_bytes"] = size
    if p.store_teacher_targets != "off":
        summary["teacher_targets"] = store_targets(teacher, rows[rows["kept"]].reset_index(drop=True), run, p,
                                                   progress)
    summary["threshold_chosen_on_validation"] = calibration is not None
    if state.is_main_process:
        splits = {"train": rows[rows["kept"]], "all": rows}
        if calibration is not None:
            splits["valid_confidence"] = calibration
        save_manifests(run.pseudo, splits, skipped=rows[~rows["kept"]][["audio", "status"]], report=summary)
        print(f"pseudo-labels: kept {summary['kept']} of {summary['utterances']} utterances "
              f"({summary['processes']} process(es)) -> {shown(run.pseudo)}; {summary['looped']} of "
              f"{summary['outputs']} teacher outputs looped (stopped by the decoding budget or the repetition guard)")
    if summary["kept"] == 0:
        raise DataError(nothing_kept(summary))
    return summary


FILTER_PARAMETERS = {"filtered: CER above threshold": "cer_threshold (percent; higher keeps more)",
                     "filtered: repetition loop": "no parameter: the teacher repeats itself, fine-tune it first",
                     "filtered: empty output": "no parameter: the teacher wrote nothing, fine-tune it first",
                     "filtered: low confidence": "min_avg_logprob (lower keeps more), or confidence_filter = False",
                     "filtered: no speech": "max_no_speech_prob (higher keeps more), or confidence_filter = False"}


def nothing_kept(summary: dict) -> str:
    """Why no pseudo-label is left: how many utterances each filter removed and the parameter that controls it."""
    removed = [f"{status.removeprefix('filtered: ')}: {n} ({FILTER_PARAMETERS.get(status, 'see report.json')})"
               for status, n in summary["by_status"].items() if status.startswith("filtered")]
    teacher_cer = "unknown" if summary["teacher_cer"] is None else f"{summary['teacher_cer']:.1f} %"
    return (f"notebook 03 kept no pseudo-label of {summary['utterances']} utterances, so notebook 05 has nothing to "
            f"learn from. Removed by each filter: {'; '.join(removed) or 'none'}. The teacher's CER on the "
            f"transcribed ones: {teacher_cer}. Fine-tune the teacher longer (notebook 02) or loosen the filter named "
            "above; every row and its status is in pseudo/all.jsonl and pseudo/report.json.")


if __name__ == "__main__":
    import sys

    sys.exit(cli.phase_main("pseudo", run_phase))
