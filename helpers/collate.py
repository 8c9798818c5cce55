"""Turning manifest rows into Whisper model inputs: audio reading, log-mel features, label padding."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


def read_audio(path: str | Path, sampling_rate: int = 16_000) -> np.ndarray:
    """Read an audio file with soundfile (wav, flac, ogg, mp3), average to mono and resample with
    librosa to ``sampling_rate`` Hz. Returns float32 samples; raises ``ValueError`` for empty audio."""
    import librosa
    import soundfile as sf

    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if audio.size == 0:
        raise ValueError(f"{path}: the audio file holds no samples")
    if rate != sampling_rate:
        audio = librosa.resample(audio, orig_sr=rate, target_sr=sampling_rate)
    return np.ascontiguousarray(audio, dtype=np.float32)


class FeatureTransform:
    """For ``Dataset.with_transform``: reads each row's audio and makes log-mel features and labels on the fly.

    ``rows`` batches hold ``audio`` (path) and ``text``; the output holds ``input_features`` (mel bins x
    frames) and ``labels`` (token ids with the language/task prefix, ending with end-of-text).
    """

    def __init__(self, processor, audio_column: str = "audio", text_column: str = "text"):
        self.processor = processor
        self.audio_column, self.text_column = audio_column, text_column

    def __call__(self, batch: dict) -> dict:
        fe = self.processor.feature_extractor
        audio = [read_audio(p, fe.sampling_rate) for p in batch[self.audio_column]]
        features = fe(audio, sampling_rate=fe.sampling_rate, return_tensors="np").input_features
        out = {"input_features": list(features.astype(np.float32))}
        if self.text_column in batch:
            out["labels"] = self.processor.tokenizer(list(batch[self.text_column])).input_ids
        return out


@dataclass
class WhisperCollator:
    """Pads a list of ``{"input_features", "labels"}`` into a batch for any Whisper processor.

    Labels are padded with -100 (ignored by the loss), and a leading start-of-transcript token is
    removed because the model prepends ``decoder_start_token_id`` itself.
    """
    processor: object
    decoder_start_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = {"input_features": torch.as_tensor(np.stack([np.asarray(f["input_features"]) for f in features]))}
        if "labels" in features[0]:
            labels = [list(f["labels"]) for f in features]
            labels = [l[1:] if l and l[0] == self.decoder_start_token_id else l for l in labels]
            width = max(len(l) for l in labels)
            batch["labels"] = torch.tensor([l + [-100] * (width - len(l)) for l in labels], dtype=torch.long)
        return batch
