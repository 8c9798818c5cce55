"""Transcribing a manifest with a Whisper model: the one ``transcribe`` of the course, batched, timed, sharded.

Every phase that turns audio into text calls :func:`transcribe`: scoring in notebooks 02, 05 and 06,
pseudo-labelling in 03 (which also keeps the encoder outputs of the same pass for the cache), and the
evaluation of notebook 07. Under a launcher each process transcribes one contiguous block of the manifest and
every process gets all transcripts back in manifest order.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from transformers import StoppingCriteriaList

from ..figures.timing import take_turns
from ..speech.audio import log_mel, read_row
from ..speech.text import score
from .budget import RepetitionGuard, looped, token_budget
from .models import quiet_generation
from .processes import gather_blocks, process_state, shard_bounds
from .short_window import encode_short


def default_device() -> tuple[torch.device, torch.dtype]:
    """Where to decode: the first CUDA GPU in fp16 (how a student is deployed), else the CPU in fp32."""
    if torch.cuda.is_available():
        return torch.device("cuda:0"), torch.float16
    return torch.device("cpu"), torch.float32


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rtfx(audio_seconds: float, compute_seconds: float) -> float:
    """Inverse real-time factor: seconds of audio transcribed per second of compute (higher is faster)."""
    if compute_seconds <= 0:
        raise ValueError(f"compute time must be positive, got {compute_seconds}")
    return audio_seconds / compute_seconds


def transcribe(model, processor, manifest: pd.DataFrame, batch_size: int = 16, *, max_new_tokens: int | None = None,
               progress: bool = True, desc: str = "transcribing", assistant_model=None, on_batch=None,
               shard: bool = True, window=None) -> tuple[list[str], dict]:
    """Greedy transcripts of every row of ``manifest`` (in manifest order), batched by similar length.

    Returns ``(predictions, stats)``. ``stats`` hold ``audio_s`` (seconds of audio), ``compute_s`` (wall
    seconds), ``rtfx`` (audio seconds per compute second), ``encoder_s`` and ``decoder_s`` (the encoder
    pass and the generation loop timed apart), ``decoder_steps`` (generation steps the batches ran: a batch
    runs until its longest transcript ends), ``decoder_steps_per_s`` (steps per second of the generation
    loop alone), ``ms_per_step`` (wall ms per step, encoder included, which makes models comparable
    when their transcripts differ in length), ``outputs`` and ``looped``: how many outputs the decoding budget
    stopped (each batch gets ``budget.token_budget`` of its longest clip, at most ``max_new_tokens``, by default the
    model's limit) or the repetition guard cut (:mod:`helpers.whisper.budget`).

    ``on_batch(rows, hidden, sequences)``, when given, receives every batch as it is decoded: ``rows`` the batch's
    positions in ``manifest`` (a numpy array), ``hidden`` the encoder outputs (``batch x frames x width``) and
    ``sequences`` the generated token ids (prompt included). Notebook 03 writes the encoder outputs to its cache
    (so the encoder runs once per clip) and scores each transcript's confidence (:func:`sequence_confidence`).

    With ``assistant_model`` the model decodes speculatively (one utterance at a time, ``batch_size``
    must be 1); the assistant's drafts are verified, so the transcripts are the model's own. The
    encoder then runs inside ``generate`` and ``encoder_s`` is not separated (NaN).

    ``window``: a ``short_window.WindowRule``: each batch's encoder runs over a window just longer than its longest
    clip (``short_window.encode_short``; ``encoded`` then has fewer frames) instead of the model's full window.
    Only for clips; long recordings keep full windows.

    Under a launcher (``shard``, several processes) each process transcribes one contiguous block
    (:func:`processes.shard_bounds`) and all get every transcript back; ``compute_s`` is then the slowest
    block's wall time.
    """
    if len(manifest) == 0:
        raise ValueError("the manifest to transcribe has no rows")
    if assistant_model is not None and batch_size != 1:
        raise ValueError(f"speculative decoding runs one utterance at a time: batch_size must be 1, got {batch_size}")
    state = process_state()
    if not shard or state.num_processes == 1:
        return _transcribe_block(model, processor, manifest, 0, batch_size, max_new_tokens, progress, desc,
                                 assistant_model, on_batch, window)
    start, stop = shard_bounds(len(manifest), state.process_index, state.num_processes)
    block = _transcribe_block(model, processor, manifest.iloc[start:stop], start, batch_size, max_new_tokens,
                              progress and state.is_main_process, desc, assistant_model, on_batch, window)
    blocks = gather_blocks(block)  # one (predictions, stats) per process, in rank order
    return [text for predictions, _ in blocks for text in predictions], merge_speed([s for _, s in blocks])


def _generate_batch(model, feats, mask, budget: int, assistant_model, frames: int | None = None) -> tuple:
    """One batch: the encoder pass (over the first ``frames`` frames when given: a short window) and the generation
    loop, timed apart and capped at ``budget`` new tokens with a repetition guard. Returns ``(encoded or None,
    sequences, encoder seconds, decoder seconds, looped per row)``."""
    device = feats.device
    guard = RepetitionGuard()
    stop = StoppingCriteriaList([guard])
    _sync(device)
    t0 = time.perf_counter()
    if assistant_model is None:
        encoded = model.get_encoder()(feats) if frames is None else encode_short(model, feats, frames)
        mask = mask if frames is None else mask[:, :frames]
        _sync(device)
        t1 = time.perf_counter()
        out = model.generate(encoder_outputs=encoded, attention_mask=mask, max_new_tokens=budget,
                             stopping_criteria=stop)
    else:
        t1, encoded = t0, None
        out = model.generate(feats, attention_mask=mask, assistant_model=assistant_model, max_new_tokens=budget,
                             stopping_criteria=stop)
    _sync(device)
    t2 = time.perf_counter()
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    return encoded, out, t1 - t0, t2 - t1, looped(out, eos, budget, guard)


@torch.no_grad()
def _transcribe_block(model, processor, manifest, first_row, batch_size, max_new_tokens, progress, desc,
                      assistant_model, on_batch, window=None):
    from tqdm.auto import tqdm

    fe = processor.feature_extractor
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    limit = max_new_tokens or model.config.max_target_positions - 8
    durations = manifest["duration"].to_numpy()
    order = np.argsort(durations, kind="stable")[::-1]  # longest first: memory peaks early
    records = manifest.to_dict("records")
    predictions: list[str | None] = [None] * len(manifest)
    steps, loops, encoder_s, decoder_s, done_s = 0, 0, 0.0, 0.0, 0.0
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(manifest), desc=desc, unit="utt", disable=not progress)
    with quiet_generation():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            feats, mask = log_mel(fe, [read_row(records[i], fe.sampling_rate) for i in idx], device, dtype,
                                  with_mask=True)
            budget = token_budget(float(durations[idx].max()), limit)
            frames = None if window is None else window.frames_for(float(durations[idx].max()), feats.shape[-1])
            encoded, out, enc_s, dec_s, looping = _generate_batch(model, feats, mask, budget, assistant_model, frames)
            encoder_s, decoder_s, steps, loops = encoder_s + enc_s, decoder_s + dec_s, steps + out.shape[1], \
                loops + int(looping.sum())
            if on_batch is not None and encoded is not None:
                on_batch(first_row + idx, encoded.last_hidden_state, out)
            for i, pred in zip(idx, processor.tokenizer.batch_decode(out, skip_special_tokens=True)):
                predictions[i] = pred.strip()
            bar.update(len(idx))
            done_s += float(durations[idx].sum())
            bar.set_postfix(audio_s_per_s=f"{done_s / max(encoder_s + decoder_s, 1e-9):.1f}", looped=loops)
    bar.close()
    model.train(was_training)
    compute_s = encoder_s + decoder_s
    audio_s = float(durations.sum())
    return predictions, {"audio_s": audio_s, "compute_s": compute_s, "rtfx": rtfx(audio_s, max(compute_s, 1e-9)),
                         "encoder_s": encoder_s if assistant_model is None else float("nan"),
                         "decoder_s": decoder_s, "decoder_steps": steps,
                         "decoder_steps_per_s": steps / max(decoder_s, 1e-9),
                         "ms_per_step": 1000 * compute_s / max(steps, 1), "outputs": len(manifest), "looped": loops}


@torch.no_grad()
def transcribe_audio(model, processor, audio: np.ndarray, window=None) -> tuple[str, bool]:
    """One clip of samples (at the feature extractor's rate, within the model's window) transcribed greedily, with
    the decoding budget and the repetition guard, over a short ``window`` when given: ``(text, looped)``."""
    fe = processor.feature_extractor
    param = next(model.parameters())
    feats, mask = log_mel(fe, [audio], param.device, param.dtype, with_mask=True)
    frames = None if window is None else window.frames_for(len(audio) / fe.sampling_rate, feats.shape[-1])
    budget = token_budget(len(audio) / fe.sampling_rate, model.config.max_target_positions - 8)
    with quiet_generation():
        _, out, _, _, looping = _generate_batch(model.eval(), feats, mask, budget, None, frames)
    return processor.tokenizer.batch_decode(out, skip_special_tokens=True)[0].strip(), bool(looping[0])


def transcribe_and_score(model, processor, rows: pd.DataFrame, batch_size: int = 16, *, fold: str | None = "t2s",
                         desc: str = "scoring", progress: bool = True, **kwargs) -> tuple[dict, list[str]]:
    """Transcribe a split (:func:`transcribe`) and score it against ``rows["text"]``: the one way every phase
    scores a model. Returns ``(metrics, predictions)``; ``metrics`` has ``cer``, ``wer``, ``mer`` and
    ``exact_match`` (percent, ``text.score`` with ``fold``), ``utterances``, ``audio_s``, ``compute_s``, ``rtfx``
    and ``looped`` (outputs stopped by the decoding budget or the repetition guard, :mod:`helpers.whisper.budget`).
    ``kwargs`` go to :func:`transcribe` (``max_new_tokens``, ``shard``...)."""
    predictions, stats = transcribe(model, processor, rows, batch_size, desc=desc, progress=progress, **kwargs)
    metrics = {**score(rows["text"].tolist(), predictions, fold), "utterances": len(rows),
               **{key: stats[key] for key in ("audio_s", "compute_s", "rtfx", "looped")}}
    return metrics, predictions


@torch.no_grad()
def sequence_confidence(model, hidden: torch.Tensor, sequences: torch.Tensor, prompt: list[int], eos_token_id: int,
                        no_speech_token_id: int | None = None, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """How sure ``model`` was of the ``sequences`` it generated from the encoder outputs ``hidden``:
    ``(avg_logprob, no_speech_prob)``, one value per sequence.

    ``avg_logprob`` is the mean log-probability (natural log) of the generated tokens, from the first after the
    forced ``prompt`` (start of transcript, language, task...) up to and including the first end-of-text, as
    OpenAI's Whisper computes it for its own fallback (``generate`` returns the sequences with or without the
    prompt depending on its code path: both are accepted); ``no_speech_prob`` is the probability of
    ``<|nospeech|>`` right after the start of transcript (NaN without ``no_speech_token_id``; only meaningful for a
    model trained to predict it). One teacher-forced decoder pass; the vocabulary projection runs ``chunk``
    positions at a time, so memory stays at ``batch x chunk x vocabulary``.
    """
    prefix = torch.tensor(prompt, device=sequences.device)
    if sequences.shape[1] >= len(prompt) and bool((sequences[:, :len(prompt)] == prefix).all()):
        sequences = sequences[:, len(prompt):]
    # what each sequence said: its tokens up to its first end-of-text (generate may or may not have kept that one,
    # and pads with it), then one end-of-text, scored after the prompt
    ends = torch.where((sequences == eos_token_id).any(1), (sequences == eos_token_id).float().argmax(1),
                       torch.full_like(sequences[:, 0], sequences.shape[1]))
    width = len(prompt) + int(ends.max()) + 1
    tokens = torch.full((len(sequences), width), eos_token_id, dtype=torch.long, device=sequences.device)
    tokens[:, :len(prompt)] = prefix
    for row, end in enumerate(ends.tolist()):
        tokens[row, len(prompt):len(prompt) + end] = sequences[row, :end]
    decoded = model.model.decoder(input_ids=tokens[:, :-1], encoder_hidden_states=hidden).last_hidden_state
    targets = tokens[:, 1:]
    chosen = torch.empty(targets.shape, dtype=torch.float32, device=targets.device)
    no_speech = np.full(len(sequences), np.nan)
    for start in range(0, targets.shape[1], chunk):
        logprobs = torch.log_softmax(model.proj_out(decoded[:, start:start + chunk]).float(), dim=-1)
        chosen[:, start:start + chunk] = logprobs.gather(-1, targets[:, start:start + chunk, None])[..., 0]
        if start == 0 and no_speech_token_id is not None:
            no_speech = logprobs[:, 0, no_speech_token_id].exp().cpu().numpy()
    position = torch.arange(targets.shape[1], device=targets.device)[None]
    first = len(prompt) - 1  # targets[j] is token j + 1: the first generated token is targets[len(prompt) - 1]
    counted = (position >= first) & (position <= first + ends[:, None])  # the text and its end-of-text
    average = (chosen * counted).sum(1) / counted.sum(1)
    return average.cpu().numpy(), no_speech


def merge_speed(shards: list[dict]) -> dict:
    """One :func:`transcribe` stats dict from those of processes that ran side by side.

    Seconds of audio or of work (``*_s``) and step counts add up, except ``compute_s``, the wall time of
    the run, which is the slowest process's; the rates are worked out again from the merged totals
    (``rtfx`` = audio_s / compute_s, ``ms_per_step`` and ``decoder_steps_per_s`` per process-second).
    """
    merged = {}
    for key in shards[0]:
        values = [s[key] for s in shards]
        merged[key] = max(values) if key == "compute_s" else sum(values)
    busy_s, steps = sum(s["compute_s"] for s in shards), merged.get("decoder_steps", 0)
    merged["rtfx"] = merged["audio_s"] / max(merged["compute_s"], 1e-9)
    if "ms_per_step" in merged:
        merged["ms_per_step"] = 1000 * busy_s / max(steps, 1)
    if "decoder_steps_per_s" in merged:
        merged["decoder_steps_per_s"] = steps / max(merged.get("decoder_s", 0.0), 1e-9)
    return merged


def compare_speed(models: dict, manifest: pd.DataFrame, batch_size: int = 16, rounds: int = 3,
                  warmup: int = 4, fold: str | None = "t2s") -> pd.DataFrame:
    """Decoding speed of several loaded models on the same clips, same batch size, same device, side by side.

    :func:`helpers.figures.timing.take_turns`: after ``warmup`` untimed clips each, the models take turns for
    ``rounds`` rounds over all clips, each round counting the compute seconds :func:`transcribe` measured. ``models``
    maps a name to a LoadedWhisper. Returns one row per model: its scores against ``manifest["text"]`` (``cer``,
    ``wer``, ``mer``, ``exact_match``, as :func:`transcribe_and_score`), the stats of :func:`transcribe` for its
    median round, ``compute_s_min`` and ``compute_s_max`` over the rounds, and its transcripts (``predictions``).
    """
    def run(loaded, rows):
        return lambda: transcribe(loaded.model, loaded.processor, rows, batch_size, progress=False, shard=False)

    timed = take_turns({name: run(m, manifest) for name, m in models.items()}, rounds,
                       warmup={name: run(m, manifest.head(warmup)) for name, m in models.items()},
                       seconds=lambda out: out[1]["compute_s"])
    rows = {}
    for name, t in timed.items():
        predictions, median = t.median_output
        rows[name] = {**score(manifest["text"].tolist(), predictions, fold), **median, "compute_s_min": t.min,
                      "compute_s_max": t.max, "predictions": predictions}
    return pd.DataFrame.from_dict(rows, orient="index")
