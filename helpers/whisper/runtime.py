"""Running a CTranslate2 export: loading it, and transcribing clips with it (the runtime people ship).

``export.export_model`` writes an export; this module runs one. Two runtimes (:func:`runtime_for`): the standard
Whisper layout (51865 tokens with timestamps, 30 s window: Breeze-ASR-25) goes through faster-whisper's
``WhisperModel``; the tiny models (own 1010-token vocabulary without timestamp tokens, 5 s window), whose layout
faster-whisper's tokenizer logic does not expect, through ``ctranslate2.models.Whisper`` with the prompt
``<|startoftranscript|><|zh|><|transcribe|><|notimestamps|>`` read from their own tokenizer.

Short windows: an export of a short-window student (notebook 06, part 2) carries its window rule in ``export.json``
(``window_rule``), and :func:`transcribe_export` encodes each batch of clips over a window just longer than its
longest clip (``short_window.WindowRule``), as the student was tuned to. CTranslate2's ``Whisper.encode`` takes the
shorter features as they are; faster-whisper always pads to 30 s, so the runtime calls ``encode`` and ``generate``
itself for both layouts. An export without a rule (every other model) runs full windows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..files import read_json, shown
from ..speech.audio import read_recording, read_row
from .budget import cut_loop, token_budget
from .decode import rtfx
from .models import no_transformers_bars
from .short_window import FRAMES_PER_SECOND, WindowRule, window_features
from .short_window_ct2 import encode

WHISPER_TIMESTAMPS = 1501  # Whisper's timestamp tokens <|0.00|> .. <|30.00|>, right after <|notimestamps|>
MANIFEST = "export.json"  # what export.export_model writes into every export


def runtime_for(vocabulary: list[str], window_s: float) -> str:
    """``"faster-whisper"`` for a standard Whisper layout (Whisper's 1501 timestamp tokens right after
    ``<|notimestamps|>``, 30 s window), else ``"ctranslate2"``: faster-whisper's tokenizer and seek logic assume
    that layout (timestamp ids, 448 positions, 30 s windows), so other models go to ``ctranslate2`` directly."""
    if "<|notimestamps|>" not in vocabulary:
        return "ctranslate2"
    first = vocabulary.index("<|notimestamps|>") + 1
    standard = len(vocabulary) - first >= WHISPER_TIMESTAMPS and vocabulary[first] == "<|0.00|>" and window_s == 30
    return "faster-whisper" if standard else "ctranslate2"


# ---------------------------------------------------------------------------------------------
class _Multilingual:
    """A CTranslate2 Whisper that says it is multilingual. faster-whisper puts the language and task tokens into the
    prompt only for models that report ``is_multilingual``, and this CTranslate2 (4.8.5) reports False for
    converted checkpoints whose vocabulary does have language tokens: without this, a Mandarin model would be
    prompted as an English-only one. Everything else is the model's own."""
    is_multilingual = True

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)


@dataclass
class Export:
    """An export loaded for transcription (:func:`load_export`): ``model`` (``ctranslate2.models.Whisper``, or
    faster-whisper's for the standard layout), ``whisper`` (faster-whisper's ``WhisperModel`` or None),
    ``features`` (the ``WhisperFeatureExtractor`` the model was trained with), ``tokenizer`` (``tokenizers``),
    ``prompt`` (token ids), ``manifest`` (``export.json``), ``threads``, ``language``, ``task``."""
    path: Path
    model: object
    whisper: object
    features: object
    tokenizer: object
    prompt: list[int]
    manifest: dict
    threads: int
    language: str
    task: str

    @property
    def eot(self) -> int:
        return self.tokenizer.token_to_id("<|endoftext|>")


def load_export(export_dir: str | Path, *, threads: int = 0, language: str | None = None,
                task: str = "transcribe") -> Export:
    """Load the export in ``export_dir`` (made by ``export.export_model``) on the CPU with ``threads`` threads (0:
    CTranslate2's default), prompting for ``language`` (default: the source's, else ``zh``) and ``task``. Needs no
    network: the tokenizer and feature settings come from the export. Raises ``FileNotFoundError`` naming the
    folder when it is not an export, ``ValueError`` when the vocabulary lacks the language or task token."""
    import ctranslate2
    from tokenizers import Tokenizer
    from transformers import WhisperFeatureExtractor

    path = Path(export_dir)
    manifest = read_json(path / MANIFEST)
    if manifest is None or not (path / "model.bin").exists():
        raise FileNotFoundError(f"{shown(path)} is not an export (no {MANIFEST} or model.bin): make one with "
                                "python -m helpers.export")
    language = (language or manifest.get("language") or "zh").strip("<|>")
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    ids = [tokenizer.token_to_id(t) for t in ("<|startoftranscript|>", f"<|{language}|>", f"<|{task}|>",
                                              "<|notimestamps|>")]
    if None in ids:
        known = [tokenizer.id_to_token(i) for i in read_json(path / "config.json", {}).get("lang_ids", [])]
        raise ValueError(f"{shown(path)}: the vocabulary has no <|{language}|> or <|{task}|> token; its language "
                         f"tokens: {', '.join(known)}")
    whisper = None
    if manifest["runtime"] == "faster-whisper":
        from faster_whisper import WhisperModel

        whisper = WhisperModel(str(path), device="cpu", compute_type="default", cpu_threads=threads)
        if not whisper.model.is_multilingual:
            whisper.model = _Multilingual(whisper.model)
        model = whisper.model
    else:
        model = ctranslate2.models.Whisper(str(path), device="cpu", compute_type="default", intra_threads=threads)
    with no_transformers_bars():
        features = WhisperFeatureExtractor.from_pretrained(str(path))
    return Export(path, model, whisper, features, tokenizer, ids, manifest, threads, language, task)


def _waves(audio, sampling_rate: int) -> list[np.ndarray]:
    """The samples of what :func:`transcribe_export` takes: rows, a path, an array, or a list of paths/arrays."""
    if isinstance(audio, pd.DataFrame):
        return [read_recording(r["audio"], sampling_rate) if pd.isna(r.get("offset", np.nan))
                else read_row(r, sampling_rate) for r in audio.to_dict("records")]
    items = list(audio) if isinstance(audio, (list, tuple)) else [audio]
    return [np.asarray(a, np.float32) if isinstance(a, np.ndarray) else read_recording(a, sampling_rate) for a in items]


def export_window(export: Export) -> WindowRule | None:
    """The window rule an export carries (``export.json``'s ``window_rule``, written by ``export.export_model`` from
    the source's ``window_rule.json``), or ``None``: the export runs full windows."""
    found = export.manifest.get("window_rule")
    return None if not found else WindowRule(found["margin_s"], found["floor_s"], found["round_to_s"])


def window_to_use(export: Export, window) -> WindowRule | None:
    """The rule :func:`transcribe_export` applies: ``"auto"`` -> the export's own (:func:`export_window`; ``None``
    when it has none), ``None`` -> full windows, a ``WindowRule`` -> that rule. Raises ``ValueError`` otherwise."""
    if isinstance(window, str) and window == "auto":
        return export_window(export)
    if window is None or isinstance(window, WindowRule):
        return window
    raise ValueError(f"transcribe_export: window must be 'auto', None (full windows) or a WindowRule, got {window!r}")


def transcribe_export(export: Export | str | Path, audio, *, batch_size: int = 16, max_new_tokens: int | None = None,
                      threads: int = 0, window="auto") -> tuple[list[str], dict]:
    """Greedy transcripts of clips that fit the window, with an export (an :class:`Export`, or its folder, loaded
    with ``threads``). ``audio``: manifest rows (``audio``, optional ``offset``/``duration``), a path, a 1-D array
    at the model's rate (16 kHz), or a list of paths/arrays. Clips go in batches of ``batch_size``, longest first.

    ``window``: ``"auto"`` (default) applies the export's window rule when ``export.json`` has one (a short-window
    student's export): each batch is encoded over ``rule.frames_for`` its longest clip, the features computed at the
    full window and cut (``short_window.window_features``); an export without a rule runs full windows. ``None``
    forces full windows (long recordings: ``longform.transcribe_long``), a ``short_window.WindowRule`` overrides the
    export's. A clip as long as the full window or longer always gets the full window.

    Returns ``(texts, stats)`` in input order; ``stats`` as ``decode.transcribe``'s: ``audio_s``, ``compute_s``
    (encoder + decoding loop, wall seconds), ``rtfx``, ``encoder_s``, ``decoder_s``, ``decoder_steps`` (per batch,
    the longest transcript's tokens plus its end), ``decoder_steps_per_s``, ``ms_per_step``, ``outputs`` and
    ``looped`` (transcripts that filled the batch's decoding budget, ``budget.token_budget`` of its longest clip, or
    end in a loop), and ``window`` (the rule applied, as ``WindowRule.to_dict``, or ``None`` for full windows).
    Features are transformers' (audio padded to the window before the log-mel, as in training), not
    faster-whisper's (log-mel padded afterwards), which the tiny models do not tolerate. An unreadable file raises
    ``ValueError`` naming it."""
    export = export if isinstance(export, Export) else load_export(export, threads=threads)
    rule = window_to_use(export, window)
    fe = export.features
    waves = _waves(audio, fe.sampling_rate)
    if not waves:
        raise ValueError("transcribe_export: no audio given")
    limit = export.manifest["max_target_positions"] - len(export.prompt)
    new = min(max_new_tokens or limit, limit)
    order = np.argsort([len(w) for w in waves], kind="stable")[::-1]
    texts: list[str | None] = [None] * len(waves)
    encoder_s = decoder_s = 0.0
    steps = loops = 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        longest_s = max(len(waves[i]) for i in idx) / fe.sampling_rate
        frames = fe.nb_max_frames if rule is None else rule.frames_for(longest_s, fe.nb_max_frames, FRAMES_PER_SECOND)
        feats, _ = window_features(fe, [waves[i] for i in idx], frames)
        t0 = time.perf_counter()
        encoded = encode(export.model, feats)
        t1 = time.perf_counter()
        budget = token_budget(longest_s, new)
        # CTranslate2 generates at most max_length / 2 tokens (and max_length minus the prompt)
        results = export.model.generate(encoded, [export.prompt] * len(idx), beam_size=1, max_length=2 * budget)
        t2 = time.perf_counter()
        encoder_s, decoder_s = encoder_s + t1 - t0, decoder_s + t2 - t1
        steps += max(len(r.sequences_ids[0]) for r in results) + 1
        for i, r in zip(idx, results):
            ids, stopped = cut_loop([t for t in r.sequences_ids[0] if t < export.eot])
            loops += stopped or len(ids) >= budget
            texts[i] = export.tokenizer.decode(ids).strip()
    audio_s = float(sum(len(w) for w in waves)) / fe.sampling_rate
    compute_s = encoder_s + decoder_s
    return texts, {"audio_s": audio_s, "compute_s": compute_s, "rtfx": rtfx(audio_s, max(compute_s, 1e-9)),
                   "encoder_s": encoder_s, "decoder_s": decoder_s, "decoder_steps": steps,
                   "decoder_steps_per_s": steps / max(decoder_s, 1e-9), "ms_per_step": 1000 * compute_s / max(steps, 1),
                   "outputs": len(waves), "looped": int(loops), "window": None if rule is None else rule.to_dict()}
