"""Short audio windows: encode a clip over a window just longer than itself instead of the model's full window.

Whisper pads every clip to its full window (30 s = 3000 log-mel frames; 5 s = 500 for the tiny teacher), so a 5 s
voice note pays for 30 s of encoder work. transformers' ``WhisperEncoder.forward`` refuses anything but the full
window; :func:`encode_short` runs the encoder's own modules (the two convolutions, the position embeddings cut to
the window, the layers, the final layer norm) on features cut to fewer frames, exactly as ``forward`` does on the
full window. Its output goes to ``model.generate(encoder_outputs=...)`` as it is.

* :class:`WindowRule` - how long a clip's window is: its length + a margin, rounded up, at least a floor, never past
  the full window (a clip longer than the full window always gets the full window).
* :func:`window_batches` - clips grouped by window length, so that every batch shares one window.
* :func:`window_features` - log-mel features computed at the full window (as in training), then cut to a window.
* :func:`short_window_generate` / :func:`short_window_transcribe` - token ids / texts of 16 kHz waveforms.

Frames and seconds: Whisper's features have 100 frames a second (hop 160 at 16 kHz); the encoder halves them
(conv2 has stride 2), so a window of ``frames`` frames gives ``frames / 2`` encoder positions and ``frames`` must be
even. An untuned model loses accuracy with short windows (../shared/FACTS.md, "Shorter audio windows"): a window
rule is a trade that the valid split decides.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from transformers import StoppingCriteriaList
from transformers.modeling_outputs import BaseModelOutput

from .budget import RepetitionGuard, token_budget
from .models import quiet_generation

FRAMES_PER_SECOND = 100  # Whisper's log-mel frames per second of audio (hop 160 samples at 16 kHz)
RULE_FILE = "window_rule.json"  # beside a short-window model (and in its export): the rule its windows follow


def _ceil(x: float) -> int:
    """``ceil`` that ignores floating-point dust: (3.1 + 2) * 100 is 509.99999999999994 or 510.0000000000001."""
    return math.ceil(round(x, 6))


@dataclass(frozen=True)
class WindowRule:
    """How long a clip's encoder window is, in seconds of audio.

    ``margin_s``: seconds added after the clip's end (>= 0; a negative margin would cut speech).
    ``floor_s``: the shortest window in seconds (>= 0, and not longer than the model's full window).
    ``round_to_s``: windows are whole multiples of this many seconds (> 0; at least one frame, 0.01 s), so that
    clips of similar length share a window and can be batched.
    A rule that would cut speech raises ``ValueError`` naming the parameter (``floor_s`` against the window only when
    the window is known: :meth:`frames_for`).
    """
    margin_s: float
    floor_s: float
    round_to_s: float

    def __post_init__(self):
        for name in ("margin_s", "floor_s", "round_to_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"WindowRule: {name} must be a finite number of seconds, got {value!r}")
        if self.margin_s < 0:
            raise ValueError(f"WindowRule: margin_s = {self.margin_s} s is negative: the window would end before the "
                             "clip does and cut its last words. Use a margin of 0 s or more (2 s is safe untuned).")
        if self.floor_s < 0:
            raise ValueError(f"WindowRule: floor_s = {self.floor_s} s is negative; use 0 s for no floor")
        if round(self.round_to_s * FRAMES_PER_SECOND, 6) < 1:
            raise ValueError(f"WindowRule: round_to_s = {self.round_to_s} s is below one frame (0.01 s): windows must "
                             "be rounded to a positive number of seconds, e.g. 1.0")

    def frames_for(self, duration_s: float, full_frames: int, frames_per_s: int = FRAMES_PER_SECOND) -> int:
        """The window, in log-mel frames, of a clip of ``duration_s`` seconds for a model whose full window is
        ``full_frames`` frames (3000 for Whisper, 500 for the tiny teacher).

        ``ceil((duration_s + margin_s) / round_to_s) * round_to_s`` seconds (at least one ``round_to_s``, for an
        empty clip), at least ``floor_s``, in frames rounded up to an even number (two frames make one encoder
        position), at most ``full_frames``: a clip as long as the full window or longer always gets the full window.
        Raises ``ValueError`` for a negative duration, or naming ``floor_s`` when the floor is longer than the full
        window.
        """
        if duration_s < 0 or not math.isfinite(duration_s):
            raise ValueError(f"frames_for: duration_s must be a length in seconds >= 0, got {duration_s!r}")
        if _ceil(self.floor_s * frames_per_s) > full_frames:
            raise ValueError(f"WindowRule: floor_s = {self.floor_s} s is longer than the model's full window "
                             f"({full_frames / frames_per_s:g} s = {full_frames} frames): lower floor_s to at most "
                             f"{full_frames / frames_per_s:g} s")
        step = round(self.round_to_s * frames_per_s, 6)
        frames = _ceil(max(1, _ceil((duration_s + self.margin_s) * frames_per_s / step)) * step)
        frames = max(frames, _ceil(self.floor_s * frames_per_s))
        frames += frames % 2
        return min(frames, full_frames)

    def describe(self) -> str:
        """The rule in words, for tables: ``"clip + 0.5 s, at least 1 s, in steps of 0.5 s"``."""
        return f"clip + {self.margin_s:g} s, at least {self.floor_s:g} s, in steps of {self.round_to_s:g} s"

    def to_dict(self) -> dict:
        """The rule as plain numbers (for ``export.json`` and results files); ``WindowRule(**d)`` reads it back."""
        return asdict(self)


def full_window_frames(model) -> int:
    """Log-mel frames of ``model``'s full window: 2 x ``max_source_positions`` (3000 for Whisper, 500 tiny)."""
    return 2 * model.config.max_source_positions


def encode_short(model, features: torch.Tensor, frames: int | None = None) -> BaseModelOutput:
    """Whisper's encoder on a window of ``frames`` log-mel frames (default: all of ``features``' frames).

    ``model``: a ``WhisperForConditionalGeneration`` (anything with ``get_encoder()`` returning a
    ``WhisperEncoder``). ``features``: ``batch x mel bins x T`` log-mel frames (``T`` >= ``frames``; the first
    ``frames`` are used), moved to the encoder's device and dtype. ``frames``: even, 2 .. full window.
    Returns a ``BaseModelOutput`` whose ``last_hidden_state`` is ``batch x frames / 2 x d_model``, usable as
    ``encoder_outputs=`` of ``model.generate``. At the full window it equals ``model.get_encoder()(features)``: the
    same modules in the same order (``WhisperEncoder.forward``, transformers 5), the position embeddings cut to the
    window; dropout and layer drop apply only while the encoder is training, as there.
    """
    encoder = model.get_encoder()
    full = 2 * encoder.embed_positions.num_embeddings
    frames = features.shape[-1] if frames is None else int(frames)
    if frames % 2 or not 2 <= frames <= min(full, features.shape[-1]):
        raise ValueError(f"encode_short: frames = {frames} must be even, between 2 and the full window ({full}) and "
                         f"at most the {features.shape[-1]} frames given")
    weight = encoder.conv1.weight
    x = features[..., :frames].to(weight.device, weight.dtype)
    x = nn.functional.gelu(encoder.conv1(x))
    x = nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)
    hidden = x + encoder.embed_positions.weight[: x.shape[1]]
    hidden = nn.functional.dropout(hidden, p=encoder.dropout, training=encoder.training)
    for layer in encoder.layers:
        if encoder.training and encoder.layerdrop > 0.0 and torch.rand([]) < encoder.layerdrop:
            continue  # layer drop, as WhisperEncoder.forward does while training
        hidden = layer(hidden, None)
    return BaseModelOutput(last_hidden_state=encoder.layer_norm(hidden))


def window_batches(durations_s, rule: WindowRule | None, full_frames: int, batch_size: int = 16,
                   frames_per_s: int = FRAMES_PER_SECOND) -> list[tuple[int, list[int]]]:
    """Clips grouped by window: ``[(frames, [clip indices]), ...]``, every batch at most ``batch_size`` clips that
    share one window of ``frames`` frames (``rule.frames_for``; ``rule=None``: all at the full window). Windows in
    increasing order, clips within a window in input order; every index of ``durations_s`` (seconds) appears once.
    """
    if batch_size < 1:
        raise ValueError(f"window_batches: batch_size must be at least 1, got {batch_size}")
    windows = [full_frames if rule is None else rule.frames_for(float(d), full_frames, frames_per_s)
               for d in durations_s]
    batches = []
    for frames in sorted(set(windows)):
        members = [i for i, w in enumerate(windows) if w == frames]
        batches += [(frames, members[s:s + batch_size]) for s in range(0, len(members), batch_size)]
    return batches


def window_features(feature_extractor, waves: list[np.ndarray], frames: int) -> tuple[np.ndarray, np.ndarray]:
    """``(features, mask)`` of ``waves`` (1-D float arrays at the extractor's rate, 16 kHz) cut to a window of
    ``frames`` frames: float32 ``batch x mel bins x frames`` and int ``batch x frames`` (1 on audio, 0 on padding).
    The log-mel is computed at the full window first, padded as in training (Whisper normalises by the loudest
    frame of the padded window), and only then cut, so a window's frames equal the full window's first frames."""
    fe = feature_extractor
    out = fe(waves, sampling_rate=fe.sampling_rate, return_tensors="np", return_attention_mask=True)
    return (np.ascontiguousarray(out.input_features[..., :frames], np.float32),
            np.ascontiguousarray(out.attention_mask[..., :frames]))


def until_end(ids, eot: int) -> list[int]:
    """The tokens of one generated sequence ``ids`` before its first end-of-text ``eot``."""
    ids = [int(t) for t in ids]
    return ids[: ids.index(eot)] if eot in ids else ids


def short_window_generate(model, feature_extractor, waves: list[np.ndarray], rule: WindowRule | None, *,
                          max_new_tokens: int | None = None, batch_size: int = 16,
                          **generate_kwargs) -> list[list[int]]:
    """Greedy token ids of every clip of ``waves`` (1-D float arrays, 16 kHz), each encoded over its own window.

    ``model``: a ``WhisperForConditionalGeneration`` with its language/task prompt set (``models.set_prompt``);
    ``feature_extractor``: its ``WhisperFeatureExtractor``; ``rule``: a :class:`WindowRule` (``None``: full
    windows). Clips are batched by window (:func:`window_batches`), encoded by :func:`encode_short` and decoded by
    ``model.generate`` (``generate_kwargs``) within the decoding budget (``budget.token_budget`` of each batch's
    longest clip, at most ``max_new_tokens``, default the model's positions minus 8) and the repetition guard. Returns
    per clip, in input order, the generated ids without the prompt, up to (not including) the first end-of-text.
    Raises ``ValueError`` when the extractor's window is not the model's.
    """
    full = full_window_frames(model)
    if feature_extractor.nb_max_frames != full:
        raise ValueError(f"the feature extractor's window ({feature_extractor.nb_max_frames} frames) is not the "
                         f"model's ({full} frames): use the feature extractor saved with the model")
    eot = model.generation_config.eos_token_id
    eot = eot[0] if isinstance(eot, list) else eot
    param = next(model.parameters())
    durations = [len(w) / feature_extractor.sampling_rate for w in waves]
    ids: list[list[int] | None] = [None] * len(waves)
    was_training = model.training
    model.eval()
    try:
        for frames, members in window_batches(durations, rule, full, batch_size):
            features, mask = window_features(feature_extractor, [waves[i] for i in members], frames)
            with torch.inference_mode(), quiet_generation():
                encoded = encode_short(model, torch.from_numpy(features), frames)
                budget = token_budget(max(durations[i] for i in members),  # the decoding budget, with a guard
                                      max_new_tokens or model.config.max_target_positions - 8)
                out = model.generate(encoder_outputs=encoded, attention_mask=torch.from_numpy(mask).to(param.device),
                                     max_new_tokens=budget, **{"stopping_criteria": StoppingCriteriaList(
                                         [RepetitionGuard()]), **generate_kwargs})
            for i, seq in zip(members, out.tolist()):
                ids[i] = until_end(seq, eot)
    finally:
        model.train(was_training)
    return ids


def short_window_transcribe(model, processor, waves: list[np.ndarray], rule: WindowRule | None, *,
                            max_new_tokens: int | None = None, batch_size: int = 16) -> list[str]:
    """Greedy transcripts (text, special tokens dropped, stripped) of ``waves`` with ``model`` and its
    ``processor`` (features + tokenizer), each clip over its own window: :func:`short_window_generate`."""
    ids = short_window_generate(model, processor.feature_extractor, waves, rule, max_new_tokens=max_new_tokens,
                                batch_size=batch_size)
    return [t.strip() for t in processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]
