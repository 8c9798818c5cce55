"""Turning manifest rows into Whisper model inputs: datasets whose features are made on the fly, label padding."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .audio import log_mel, read_row


class FeatureTransform:
    """For ``Dataset.with_transform``: reads each row's audio and makes log-mel features and labels on the fly.

    Batches hold ``audio`` (path), ``text`` and, for pieces of long recordings, ``offset`` and ``duration``
    (seconds); the output holds ``input_features`` (mel bins x frames), their ``attention_mask`` (frames) and
    ``labels`` (token ids with the language/task prefix, ending with end-of-text).
    """

    def __init__(self, processor, keep: tuple[str, ...] = ()):
        self.processor, self.keep = processor, keep

    def __call__(self, batch: dict) -> dict:
        fe = self.processor.feature_extractor
        keys = [k for k in ("audio", "offset", "duration") if k in batch]
        rows = [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]
        features, mask = log_mel(fe, [read_row(r, fe.sampling_rate) for r in rows], with_mask=True)
        out = {"input_features": list(features.numpy()), "attention_mask": list(mask.numpy()),
               **{k: batch[k] for k in self.keep if k in batch}}
        if "text" in batch:
            out["labels"] = self.processor.tokenizer(list(batch["text"])).input_ids
        return out


def to_dataset(manifest: pd.DataFrame, processor, keep: tuple[str, ...] = ()):
    """A ``datasets.Dataset`` whose rows turn into ``input_features`` + ``labels`` when read (``with_transform``);
    the columns named in ``keep`` pass through as they are."""
    import datasets

    columns = [c for c in ("audio", "text", "offset", "duration", *keep) if c in manifest]
    ds = datasets.Dataset.from_pandas(manifest[columns].reset_index(drop=True), preserve_index=False)
    return ds.with_transform(FeatureTransform(processor, keep))


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
        if "attention_mask" in features[0]:  # generate() wants one with batched input (evaluation)
            batch["attention_mask"] = torch.as_tensor(np.stack([np.asarray(f["attention_mask"]) for f in features]))
        if "labels" in features[0]:
            batch["labels"] = pad_labels([f["labels"] for f in features], self.decoder_start_token_id)
        return batch


def pad_labels(labels: list, decoder_start_token_id: int) -> torch.Tensor:
    """Token-id lists as one ``batch x longest`` tensor padded with -100, a leading start-of-transcript removed."""
    labels = [list(l) for l in labels]
    labels = [l[1:] if l and l[0] == decoder_start_token_id else l for l in labels]
    width = max(len(l) for l in labels)
    return torch.tensor([l + [-100] * (width - len(l)) for l in labels], dtype=torch.long)
