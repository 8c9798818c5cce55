"""A decoding budget, so that no model makes a run hang: tokens per second of audio, and a repetition guard.

An untrained or broken model (a freshly cut student, a teacher fine-tuned on the wrong data) often repeats itself
until the length limit: 448 tokens a clip for Whisper, minutes of decoding for nothing. Everything that decodes in
the workbook therefore caps each clip's transcript at :func:`token_budget` (``TOKENS_PER_SECOND`` tokens per
second of audio plus ``EXTRA_TOKENS``, never past the model's own limit) and stops a transcript whose tail repeats
one n-gram over and over (:class:`RepetitionGuard`). Outputs that hit either are counted ("k of n outputs looped")
and reported by the phase that decoded them; their text is kept as the model wrote it, so that a score shows it.
CTranslate2 has no hook to stop a sequence on a loop: its transcripts are cut afterwards where the guard would have
stopped greedy decoding (:func:`cut_loop`), so that both runtimes write the same text.

The rate is set so that no real transcript is cut: Mandarin speech runs at about 3-6 characters a second and
Whisper's byte-level tokenizer spends 1-3 tokens on a character, so 25 tokens a second holds the fastest talker with
room to spare; the synthetic corpus' references need at most 5.2 tokens a second with the tiny tokenizer
(``tests/test_budget.py`` checks every reference of a generated corpus against the budget).
"""
from __future__ import annotations

import math

import torch
from transformers import StoppingCriteria

TOKENS_PER_SECOND = 25.0  # cap on generated tokens per second of audio
EXTRA_TOKENS = 16  # added to every clip's budget (prompt-free constant: short clips, punctuation)
MIN_REPEATED_TOKENS = 24  # a tail is a loop when one n-gram fills at least this many tokens...
MIN_REPEATS = 4  # ...and repeats at least this many times
MAX_PERIOD = 12  # the longest n-gram looked for


def token_budget(duration_s: float, limit: int) -> int:
    """New tokens allowed for ``duration_s`` seconds of audio: ``ceil(TOKENS_PER_SECOND x seconds) +
    EXTRA_TOKENS``, at most ``limit`` (the model's own maximum) and at least 1."""
    if not duration_s >= 0:  # NaN too
        raise ValueError(f"token_budget: duration must be a number of seconds >= 0, got {duration_s}")
    return max(1, min(int(limit), math.ceil(TOKENS_PER_SECOND * float(duration_s)) + EXTRA_TOKENS))


def repeats_at_end(tokens: list[int] | torch.Tensor) -> bool:
    """Whether ``tokens`` end in a loop: the same n-gram (n <= ``MAX_PERIOD``) at least ``MIN_REPEATS`` times in
    a row, covering at least ``MIN_REPEATED_TOKENS`` tokens. "哈哈哈" or a repeated word is not a loop; 24 times the
    same character, or one phrase 4 times over 24 tokens, is."""
    ids = torch.as_tensor(tokens)[None] if not torch.is_tensor(tokens) or tokens.dim() == 1 else tokens
    return bool(_looping(ids)[0])


def cut_loop(tokens: list[int]) -> tuple[list[int], bool]:
    """``tokens`` (a greedy transcript's text ids) up to where :class:`RepetitionGuard` would have stopped them: the
    shortest prefix whose tail is a loop (:func:`repeats_at_end`), with True; or all of ``tokens`` with False."""
    tokens = list(tokens)
    for end in range(MIN_REPEATED_TOKENS, len(tokens) + 1):  # no loop is shorter than MIN_REPEATED_TOKENS
        for period, span in _spans(end):
            if all(tokens[i] == tokens[i + period] for i in range(end - span, end - period)):
                return tokens[:end], True
    return tokens, False


def _spans(length: int):
    """``(period, span)`` of the n-gram lengths ``period`` a loop may have, with the tokens ``span`` its repeats
    must fill, up to the first span that does not fit in ``length`` tokens. The one definition of a loop for both
    the guard (:func:`_looping`) and :func:`cut_loop`."""
    for period in range(1, MAX_PERIOD + 1):
        span = period * max(MIN_REPEATS, math.ceil(MIN_REPEATED_TOKENS / period))
        if span > length:
            return
        yield period, span


def _looping(ids: torch.Tensor) -> torch.Tensor:
    """Per row of ``ids`` (batch x length): True where the tail is a loop (see :func:`repeats_at_end`)."""
    found = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for period, span in _spans(ids.shape[1]):
        tail = ids[:, -span:].reshape(ids.shape[0], span // period, period)
        found |= (tail == tail[:, -1:, :]).all(dim=2).all(dim=1)
    return found


class RepetitionGuard(StoppingCriteria):
    """Stops every sequence of a ``generate`` batch whose tail has become a loop (:func:`repeats_at_end`);
    ``fired`` holds, per sequence, whether it was stopped so (reset it with :meth:`reset` before a new batch)."""

    def __init__(self):
        self.fired: torch.Tensor | None = None

    def reset(self) -> RepetitionGuard:
        self.fired = None
        return self

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        looping = _looping(input_ids)
        self.fired = looping if self.fired is None or self.fired.shape != looping.shape else self.fired | looping
        return looping


def looped(sequences: torch.Tensor, eos_token_id: int, budget: int, guard: RepetitionGuard | None = None
           ) -> torch.Tensor:
    """Per generated sequence (``generate``'s output, prompt or not): True when it looped, i.e. the guard stopped it,
    or its text tokens filled the whole ``budget`` of new tokens (no room was left for the end-of-text). Text tokens
    are the ids below ``eos_token_id``: Whisper's special tokens (prompt, timestamps, padding) all come after it."""
    hit = (sequences < eos_token_id).sum(dim=1) >= budget
    if guard is not None and guard.fired is not None and guard.fired.shape[0] == sequences.shape[0]:
        hit |= guard.fired.to(hit.device)
    return hit
