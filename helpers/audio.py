"""Audio in, features out: reading any file (or a piece of one), resampling, and Whisper's log-mel features.

Files are read with soundfile (wav, flac, ogg, mp3 through libsndfile), averaged to mono and resampled with
librosa; ``datasets``' own decoder is not used (it needs torchcodec, which fails on CPU-only machines).
:func:`log_mel` is the one place the course turns waveforms into model input.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def read_audio(path: str | Path, sampling_rate: int = 16_000, offset: float | None = None,
               duration: float | None = None) -> np.ndarray:
    """Read ``path`` (or ``duration`` seconds of it from ``offset`` seconds on), average to mono and
    resample to ``sampling_rate`` Hz. Returns float32 samples.

    Raises ``ValueError`` naming the file when it (or the piece asked for) holds no samples; soundfile's
    own error (``soundfile.LibsndfileError``) when it is not audio.
    """
    import librosa
    import soundfile as sf

    offset = None if offset is None or (isinstance(offset, float) and math.isnan(offset)) else float(offset)
    with sf.SoundFile(str(path)) as f:
        rate = f.samplerate
        if offset is not None:
            f.seek(min(int(round(offset * rate)), f.frames))
            frames = -1 if duration is None else int(round(float(duration) * rate))
        else:
            frames = -1
        audio = f.read(frames, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if audio.size == 0:
        where = f" from {offset:g} s" if offset is not None else ""
        raise ValueError(f"{path}: the audio file holds no samples{where}")
    if rate != sampling_rate:
        audio = librosa.resample(audio, orig_sr=rate, target_sr=sampling_rate)
    return np.ascontiguousarray(audio, dtype=np.float32)


def read_row(row: dict, sampling_rate: int = 16_000) -> np.ndarray:
    """The audio of one manifest row: the whole file, or the piece ``offset`` .. ``offset + duration`` when the
    row has an ``offset`` (a piece of a long recording, see ``audio.cut_at_pauses``)."""
    offset = row.get("offset")
    if offset is None or (isinstance(offset, float) and math.isnan(offset)):
        return read_audio(row["audio"], sampling_rate)
    return read_audio(row["audio"], sampling_rate, offset, row["duration"])


def log_mel(feature_extractor, audio: list[np.ndarray], device: str | torch.device = "cpu",
            dtype: torch.dtype = torch.float32, with_mask: bool = False):
    """Whisper's log-mel features of a batch of waveforms (at the extractor's rate), padded or cut to its
    window: a tensor of ``batch x mel bins x frames`` on ``device`` in ``dtype``. With ``with_mask``, returns
    ``(features, attention_mask)``, the mask (``batch x frames``, 1 where there is audio, 0 on padding) for
    ``generate``; Whisper's encoder reads the padded window whatever the mask says."""
    fe = feature_extractor
    out = fe(audio, sampling_rate=fe.sampling_rate, return_tensors="pt", return_attention_mask=with_mask)
    features = out.input_features.to(device, dtype)
    return (features, out.attention_mask.to(device)) if with_mask else features


def duration_of(path: str | Path) -> float:
    """Length of an audio file in seconds, from its header (nothing is decoded)."""
    import soundfile as sf

    info = sf.info(str(path))
    return info.frames / info.samplerate if info.samplerate else 0.0
