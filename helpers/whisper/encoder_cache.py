"""The teacher's encoder outputs, computed once and kept on disk for decoder-only distillation.

When the student's encoder is a frozen copy of the teacher's, both produce the same encoder outputs: notebook 03
keeps those of its transcription pass (:class:`CacheWriter`, fed by ``decode.transcribe(on_batch=...)``), and
notebook 05 reads them (:func:`open_encoder_cache`) instead of running any encoder. One fp16 array of
``rows x frames x width`` in ``encoder_outputs.npy``, read memory-mapped (never whole in memory), and
``cache.json`` tying each row to its audio, the teacher's encoder fingerprint and the feature settings.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..files import write_json
from ..speech.manifest import row_keys
from .models import encoder_fingerprint
from .processes import process_state

ARRAY, META = "encoder_outputs.npy", "cache.json"


def feature_settings(feature_extractor) -> dict:
    """The feature extractor settings a cache depends on."""
    keys = ("feature_size", "sampling_rate", "hop_length", "n_fft", "chunk_length", "n_samples")
    return {k: getattr(feature_extractor, k) for k in keys}


def cache_bytes(n_rows: int, model_config) -> int:
    """Disk bytes of a cache of ``n_rows`` clips for a model of ``model_config`` (fp16, frames x width each)."""
    return 2 * n_rows * model_config.max_source_positions * model_config.d_model


class CacheWriter:
    """Writes the encoder outputs of ``rows`` into ``cache_dir`` as :func:`decode.transcribe` makes them.

    Call :meth:`write` from ``transcribe``'s ``on_batch``, then :meth:`publish`. Under a launcher every
    process writes the rows of its own block into the same file (created by the main process); the cache
    becomes visible (rename, then ``cache.json``) only when every row is in, so a crash never leaves a cache
    that looks complete. On several machines ``cache_dir`` must be on a shared file system.
    """

    def __init__(self, teacher, rows: pd.DataFrame, cache_dir: str | Path):
        from numpy.lib.format import open_memmap

        self.state = process_state()
        self.teacher, self.rows, self.cache_dir = teacher, rows, Path(cache_dir)
        cfg = teacher.model.config
        self.shape = (len(rows), cfg.max_source_positions, cfg.d_model)
        self.tmp = self.cache_dir / "encoder_outputs.tmp.npy"
        if self.state.is_main_process:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            for old in (self.cache_dir / META, self.cache_dir / ARRAY):  # an older cache stops being valid now
                old.unlink(missing_ok=True)
            created = open_memmap(self.tmp, mode="w+", dtype=np.float16, shape=self.shape)
            del created  # header and size are on disk: the other processes may open the file now
        self.state.wait_for_everyone()
        self.array = open_memmap(self.tmp, mode="r+")
        self.written = np.zeros(len(rows), dtype=bool)

    def write(self, rows: np.ndarray, hidden: torch.Tensor, *_) -> None:
        """Store ``hidden`` (``batch x frames x width``) as the encoder outputs of manifest positions ``rows``."""
        if tuple(hidden.shape[1:]) != self.shape[1:]:
            raise ValueError(f"encoder outputs of shape {tuple(hidden.shape[1:])} do not fit a cache of "
                             f"{self.shape[1:]} per clip")
        self.array[rows] = hidden.detach().to("cpu", torch.float16).numpy()
        self.written[rows] = True

    def publish(self) -> Path:
        """Flush, check every row of this process was written, and (main process) make the cache visible."""
        self.array.flush()
        del self.array
        missing = int((~self.written).sum())
        if self.state.num_processes == 1 and missing:
            raise RuntimeError(f"{missing} rows of the encoder cache were never written")
        self.state.wait_for_everyone()
        if self.state.is_main_process:
            self.tmp.replace(self.cache_dir / ARRAY)
            write_json(self.cache_dir / META, {
                "teacher_fingerprint": encoder_fingerprint(self.teacher.model),
                "features": feature_settings(self.teacher.feature_extractor), "shape": list(self.shape),
                "dtype": "float16", "rows": row_keys(self.rows)})
        self.state.wait_for_everyone()  # nobody reads the cache before it is published
        return self.cache_dir


def open_encoder_cache(cache_dir: str | Path, teacher, rows: pd.DataFrame | None = None
                       ) -> tuple[np.ndarray, list[int] | None]:
    """``(outputs, index)``: the cached encoder outputs (memory-mapped), after checking they were made by this
    teacher with these feature settings, and, when ``rows`` (a manifest) is given, the cache row of each of its
    rows (``outputs[index[i]]`` belongs to ``rows`` row i). Raises ``ValueError`` when the teacher, the
    settings or the rows do not match, ``FileNotFoundError`` when there is no cache."""
    cache_dir = Path(cache_dir)
    if not (cache_dir / META).exists():
        raise FileNotFoundError(f"{cache_dir} holds no encoder cache: run notebook 03 with "
                                "cache_encoder_outputs = True")
    meta = json.loads((cache_dir / META).read_text("utf-8"))
    if meta["teacher_fingerprint"] != encoder_fingerprint(teacher.model):
        raise ValueError(f"the encoder cache in {cache_dir} was made by another teacher (encoder fingerprint "
                         f"{meta['teacher_fingerprint']}); re-run notebook 03 with this teacher")
    if meta["features"] != feature_settings(teacher.feature_extractor):
        raise ValueError(f"the encoder cache in {cache_dir} was made with other feature settings "
                         f"({meta['features']}); re-run notebook 03")
    outputs = np.load(cache_dir / ARRAY, mmap_mode="r")
    if rows is None:
        return outputs, None
    position = {key: i for i, key in enumerate(meta["rows"])}
    keys = row_keys(rows)
    missing = [k for k in keys if k not in position]
    if missing:
        raise ValueError(f"the encoder cache in {cache_dir} lacks {len(missing)} of the {len(keys)} utterances asked "
                         f"for (first: {missing[0]}); re-run notebook 03")
    return outputs, [position[k] for k in keys]
