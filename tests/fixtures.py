"""Shared, expensive test material, built once per test session.

Import the fixtures into a test module (``from tests.fixtures import synthetic_run``) to use them.
pytest registers an imported fixture once per module, so the work itself is cached here in
``_CACHE`` to happen only once per session, whichever module asks first.

* ``synthetic_run``  - notebook 01's data phase on the synthetic corpus at a tiny size (6 train / 3 valid /
  3 test / 2 unlabelled clips, ~6 s of espeak synthesis), via ``config.resolve`` and ``data.prepare``.
* ``tiny_whisper``   - a byte-level BPE tokenizer (vocab 300 + the 10 Whisper specials) trained on
  200 grammar sentences and a random 1+1-layer Whisper of width 64 with its processor.
* ``write_tone``     - a helper writing a sine tone as an audio file (no espeak needed).
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

_CACHE: dict = {}

SYNTHETIC_SIZES = {"num_train": 6, "num_valid": 3, "num_test": 3, "num_unlabelled": 2}


def write_tone(path: str | Path, seconds: float, sample_rate: int = 16_000, channels: int = 1,
               freq: float = 440.0, amplitude: float = 0.3) -> Path:
    """Write ``seconds`` of a sine tone to ``path`` (format from the suffix); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    tone = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    sf.write(path, np.stack([tone] * channels, axis=1) if channels > 1 else tone, sample_rate)
    return path


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory):
    """``(params, result)`` of ``data.prepare`` on the synthetic source, 6 train / 3 test / 2 unlabelled clips."""
    if "synthetic_run" not in _CACHE:
        from helpers import config, data

        run_dir = tmp_path_factory.mktemp("synthetic_run")
        params = config.resolve("01_data", {"source": "synthetic", "run_dir": str(run_dir), **SYNTHETIC_SIZES})
        _CACHE["synthetic_run"] = (params, data.prepare(params))
    return _CACHE["synthetic_run"]


def build_tiny_whisper():
    """``(model, processor)``: tokenizer of 300 BPE tokens + 10 specials, a 1+1-layer width-64 Whisper."""
    if "tiny_whisper" not in _CACHE:
        from helpers.speech import grammar
        from helpers.whisper import models

        rng = random.Random(0)
        texts = [grammar.make_sentence(rng) for _ in range(200)]
        tokenizer = models.build_tokenizer(texts, vocab_size=300)
        _CACHE["tiny_whisper"] = models.new_tiny_whisper(tokenizer, d_model=64, layers=1, heads=2, ffn=128)
    return _CACHE["tiny_whisper"]


@pytest.fixture(scope="session")
def tiny_whisper():
    """``(model, processor)`` of :func:`build_tiny_whisper` (shared: tests must not modify them)."""
    return build_tiny_whisper()
