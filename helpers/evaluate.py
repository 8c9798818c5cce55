"""Transcribing a manifest with a model, and scoring the transcripts."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from . import text
from .collate import read_audio


@torch.no_grad()
def transcribe(model, processor, manifest: pd.DataFrame, batch_size: int = 16, max_new_tokens: int | None = None,
               progress: bool = True, desc: str = "transcribing") -> tuple[list[str], dict]:
    """Greedy transcripts of every row of ``manifest`` (in manifest order), batched by similar length.

    Returns ``(predictions, stats)``; stats hold ``audio_s`` (seconds of audio), ``compute_s`` (wall
    seconds spent), ``rtfx`` (audio seconds per compute second), ``decoder_steps`` (generation steps the
    batches ran: a batch runs until its longest transcript ends) and ``ms_per_step`` (wall ms per step,
    encoder time included, which makes models comparable when their transcripts differ in length).
    """
    from tqdm.auto import tqdm

    fe = processor.feature_extractor
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    max_new_tokens = max_new_tokens or model.config.max_target_positions - 8
    order = np.argsort(manifest["duration"].to_numpy(), kind="stable")[::-1]  # longest first: memory peaks early
    predictions: list[str | None] = [None] * len(manifest)
    steps = 0
    audio_s, started = float(manifest["duration"].sum()), time.time()
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(manifest), desc=desc, unit="utt", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        audio = [read_audio(manifest["audio"].iloc[i], fe.sampling_rate) for i in idx]
        feats = fe(audio, sampling_rate=fe.sampling_rate, return_tensors="pt").input_features.to(device, dtype)
        out = model.generate(feats, max_new_tokens=max_new_tokens)
        steps += out.shape[1]
        for i, pred in zip(idx, processor.tokenizer.batch_decode(out, skip_special_tokens=True)):
            predictions[i] = pred.strip()
        bar.update(len(idx))
        bar.set_postfix(audio_s_per_s=f"{audio_s * (start + len(idx)) / len(order) / (time.time() - started):.1f}")
    bar.close()
    model.train(was_training)
    compute_s = time.time() - started
    return predictions, {"audio_s": audio_s, "compute_s": compute_s, "rtfx": audio_s / max(compute_s, 1e-9),
                         "decoder_steps": steps, "ms_per_step": 1000 * compute_s / max(steps, 1)}


def score(references: list[str], predictions: list[str], fold: str | None = "t2s") -> dict:
    """Corpus CER, WER and MER in percent, and the share of exactly right utterances."""
    exact = np.mean([text.normalize(r, fold=fold) == text.normalize(p, fold=fold) for r, p in zip(references, predictions)])
    return {"cer": text.cer(references, predictions, fold=fold), "wer": text.wer(references, predictions, fold=fold),
            "mer": text.mer(references, predictions, fold=fold), "exact_match": 100.0 * float(exact)}


def compare_speed(models: dict, manifest: pd.DataFrame, batch_size: int = 16, rounds: int = 2,
                  warmup: int = 4) -> pd.DataFrame:
    """Decoding speed of several models on the same clips, same batch size, same device, side by side.

    Each model first decodes ``warmup`` clips (not timed); then the models take turns for ``rounds`` rounds
    over all clips and the fastest round of each counts (the least disturbed by other work). ``models``
    maps a name to a LoadedWhisper. Returns RTFx (audio seconds per second) and wall seconds per model,
    and the transcripts of the last round (for scoring).
    """
    for loaded in models.values():
        transcribe(loaded.model, loaded.processor, manifest.head(warmup), batch_size, progress=False)
    best: dict[str, dict] = {}
    for _ in range(rounds):
        for name, loaded in models.items():
            preds, stats = transcribe(loaded.model, loaded.processor, manifest, batch_size, progress=False)
            if name not in best or stats["compute_s"] < best[name]["compute_s"]:
                best[name] = {**stats, "predictions": preds}
    return pd.DataFrame.from_dict(best, orient="index")
