"""Running a CTranslate2 export: loading it, and transcribing clips with it (the runtime people ship).

``export.export_model`` writes an export; this module runs one. Two runtimes (:func:`runtime_for`): the standard
Whisper layout (51865 tokens with timestamps, 30 s window: Breeze-ASR-25) goes through faster-whisper's
``WhisperModel``; the tiny models (own 1010-token vocabulary without timestamp tokens, 5 s window), whose layout
faster-whisper's tokenizer logic does not expect, through ``ctranslate2.models.Whisper`` with the prompt
``<|startoftranscript|><|zh|><|transcribe|><|notimestamps|>`` read from their own tokenizer.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..files import read_json, shown
from ..speech.audio import read_recording, read_row
from .budget import repeats_at_end, token_budget
from .decode import rtfx
from .models import no_transformers_bars

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


def transcribe_export(export: Export | str | Path, audio, *, batch_size: int = 16, max_new_tokens: int | None = None,
                      threads: int = 0) -> tuple[list[str], dict]:
    """Greedy transcripts of clips that fit the window, with an export (an :class:`Export`, or its folder, loaded
    with ``threads``). ``audio``: manifest rows (``audio``, optional ``offset``/``duration``), a path, a 1-D array
    at the model's rate (16 kHz), or a list of paths/arrays. Returns ``(texts, stats)`` in input order; ``stats``
    as ``decode.transcribe``'s: ``audio_s``, ``compute_s`` (encoder + decoding loop, wall seconds), ``rtfx``,
    ``encoder_s``, ``decoder_s``, ``decoder_steps`` (per batch, the longest transcript's tokens plus its end),
    ``decoder_steps_per_s``, ``ms_per_step``, ``outputs`` and ``looped`` (transcripts that filled the batch's
    decoding budget, ``budget.token_budget`` of its longest clip, or end in a loop). Features are transformers'
    (audio padded to the window before the
    log-mel, as in training), not faster-whisper's (log-mel padded afterwards), which the tiny models do not
    tolerate. An unreadable file raises ``ValueError`` naming it."""
    import ctranslate2

    export = export if isinstance(export, Export) else load_export(export, threads=threads)
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
        feats = fe([waves[i] for i in idx], sampling_rate=fe.sampling_rate, return_tensors="np").input_features
        t0 = time.perf_counter()
        encoded = export.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats, np.float32)))
        t1 = time.perf_counter()
        budget = token_budget(max(len(waves[i]) for i in idx) / fe.sampling_rate, new)
        # CTranslate2 generates at most max_length / 2 tokens (and max_length minus the prompt)
        results = export.model.generate(encoded, [export.prompt] * len(idx), beam_size=1, max_length=2 * budget)
        t2 = time.perf_counter()
        encoder_s, decoder_s = encoder_s + t1 - t0, decoder_s + t2 - t1
        steps += max(len(r.sequences_ids[0]) for r in results) + 1
        for i, r in zip(idx, results):
            ids = [t for t in r.sequences_ids[0] if t < export.eot]
            loops += len(ids) >= budget or repeats_at_end(ids)
            texts[i] = export.tokenizer.decode(ids).strip()
    audio_s = float(sum(len(w) for w in waves)) / fe.sampling_rate
    compute_s = encoder_s + decoder_s
    return texts, {"audio_s": audio_s, "compute_s": compute_s, "rtfx": rtfx(audio_s, max(compute_s, 1e-9)),
                   "encoder_s": encoder_s, "decoder_s": decoder_s, "decoder_steps": steps,
                   "decoder_steps_per_s": steps / max(decoder_s, 1e-9), "ms_per_step": 1000 * compute_s / max(steps, 1),
                   "outputs": len(waves), "looped": int(loops)}
