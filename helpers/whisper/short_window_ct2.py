"""Short audio windows in CTranslate2: ``ctranslate2.models.Whisper`` on features cut to a clip's window.

CTranslate2 (>= 3.19) encodes Whisper features shorter than 3000 frames as given (it rejects only longer ones);
faster-whisper always pads to 30 s, so a short window means calling the model's ``encode`` and ``generate``
directly, which these plain functions do. The window rule and the features are the transformers side's
(``short_window.WindowRule``, ``short_window.window_features``): both runtimes see the same frames.

    whisper = ctranslate2.models.Whisper(export_dir, device="cpu", intra_threads=2)
    ids = short_window_generate_ct2(whisper, feature_extractor, waves, WindowRule(2.0, 0.0, 1.0), prompt, eot)
"""
from __future__ import annotations

import numpy as np

from .budget import cut_loop, token_budget
from .short_window import WindowRule, until_end, window_batches, window_features


def encode(whisper, features: np.ndarray):
    """``whisper`` (``ctranslate2.models.Whisper``) encodes ``features``, ``batch x mel bins x frames`` log-mel
    frames already cut to the window (an even number of frames, at most the model's full window). Returns the
    encoder output as a ``ctranslate2.StorageView`` (``batch x frames / 2 x d_model``) for :func:`generate`."""
    import ctranslate2

    features = np.ascontiguousarray(features, np.float32)
    if features.ndim != 3 or features.shape[-1] % 2:
        raise ValueError(f"encode: features must be batch x mel bins x frames with an even number of frames, got "
                         f"shape {features.shape}")
    return whisper.encode(ctranslate2.StorageView.from_array(features))


def generate(whisper, encoded, prompt: list[int], eot: int, max_new_tokens: int, **options) -> list[list[int]]:
    """Greedy decoding of ``encoded`` (from :func:`encode`) after the prompt ``prompt`` (token ids, e.g.
    ``<|startoftranscript|><|zh|><|transcribe|><|notimestamps|>``), at most ``max_new_tokens`` tokens per clip.
    Returns per clip the generated ids without the prompt, up to (not including) the first end-of-text ``eot``,
    cut where the repetition guard of the transformers path would have stopped (``budget.cut_loop``).
    ``options`` go to ``Whisper.generate`` (e.g. ``suppress_tokens``). CTranslate2 generates at most
    ``max_length / 2`` tokens and at most ``max_length`` minus the prompt but one, so ``max_length`` is set to the
    larger of ``2 x max_new_tokens`` and ``max_new_tokens + len(prompt) - 1`` (measured with 4.8.5)."""
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be at least 1, got {max_new_tokens}")
    max_length = max(2 * max_new_tokens, max_new_tokens + len(prompt) - 1)
    results = whisper.generate(encoded, [list(prompt)] * encoded.shape[0], beam_size=1, max_length=max_length,
                               **options)
    return [cut_loop(until_end(r.sequences_ids[0][:max_new_tokens], eot))[0] for r in results]


def short_window_generate_ct2(whisper, feature_extractor, waves: list[np.ndarray], rule: WindowRule | None,
                              prompt: list[int], eot: int, *, max_new_tokens: int = 88, batch_size: int = 16,
                              **options) -> list[list[int]]:
    """Greedy token ids of every clip of ``waves`` (1-D float arrays at the extractor's rate, 16 kHz) with the
    CTranslate2 Whisper ``whisper``, each clip encoded over its own window.

    ``feature_extractor``: the ``WhisperFeatureExtractor`` saved with the export (its window is the full window);
    ``rule``: a ``WindowRule`` (``None``: full windows); ``prompt``, ``eot``, ``max_new_tokens``, ``options``: see
    :func:`generate`. Clips are batched by window (``window_batches``). Returns per clip, in input order, the
    generated ids before the first end-of-text."""
    fe = feature_extractor
    durations = [len(w) / fe.sampling_rate for w in waves]
    ids: list[list[int] | None] = [None] * len(waves)
    for frames, members in window_batches(durations, rule, fe.nb_max_frames, batch_size):
        features, _ = window_features(fe, [waves[i] for i in members], frames)
        budget = token_budget(max(durations[i] for i in members), max_new_tokens)  # the decoding budget
        for i, seq in zip(members, generate(whisper, encode(whisper, features), prompt, eot, budget, **options)):
            ids[i] = seq
    return ids
