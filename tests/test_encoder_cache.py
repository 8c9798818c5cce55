"""The encoder cache: written from the transcription pass itself (one encoder run per clip), read memory-mapped,
refused when it belongs to another teacher, other feature settings or other rows."""
import copy

import numpy as np
import pytest
import torch

from helpers import pseudo
from helpers.speech.audio import log_mel, read_row
from helpers.whisper import encoder_cache
from helpers.whisper.models import LoadedWhisper, tiny_feature_extractor
from tests.fixtures import build_tiny_whisper


def tiny_teacher():
    model, processor = build_tiny_whisper()
    return LoadedWhisper(copy.deepcopy(model), copy.deepcopy(processor), "tiny-test")


def one_pass_cache(teacher, rows, folder, batch_size=4):
    """Notebook 03's way: the cache is fed by the pseudo-labelling pass."""
    writer = encoder_cache.CacheWriter(teacher, rows, folder)
    labelled, _ = pseudo.pseudo_label(teacher, rows, 100, batch_size, progress=False, on_batch=writer.write)
    writer.publish()
    return labelled


def encode(teacher, rows, order):
    """The teacher's encoder outputs for ``rows`` taken in batches ``order`` (a list of row-index lists)."""
    fe = teacher.feature_extractor
    records = rows.to_dict("records")
    out = {}
    with torch.no_grad():
        for batch in order:
            hidden = teacher.model.model.encoder(log_mel(fe, [read_row(records[i]) for i in batch])).last_hidden_state
            out.update({i: h.to(torch.float16).numpy() for i, h in zip(batch, hidden)})
    return np.stack([out[i] for i in range(len(rows))])


def test_the_one_pass_cache_equals_the_encoder_bit_for_bit_on_the_same_batches(synthetic_run, tmp_path):
    _, result = synthetic_run
    teacher, rows = tiny_teacher(), result["train"]
    one_pass_cache(teacher, rows, tmp_path, batch_size=4)
    cache, index = encoder_cache.open_encoder_cache(tmp_path, teacher, rows)
    assert cache.dtype == np.float16 and isinstance(cache, np.memmap) and index == list(range(len(rows)))
    # transcribe's batches: longest first (stable), 4 at a time
    by_length = list(np.argsort(rows["duration"].to_numpy(), kind="stable")[::-1])
    same_batches = encode(teacher, rows, [by_length[i:i + 4] for i in range(0, len(rows), 4)])
    np.testing.assert_array_equal(np.asarray(cache), same_batches)


def test_the_one_pass_cache_matches_the_former_two_pass_cache_within_fp16_rounding(synthetic_run, tmp_path):
    _, result = synthetic_run
    teacher, rows = tiny_teacher(), result["train"]
    one_pass_cache(teacher, rows, tmp_path, batch_size=4)
    cache, _ = encoder_cache.open_encoder_cache(tmp_path, teacher)
    # the former cache encoded the rows a second time, in manifest order
    two_pass = encode(teacher, rows, [list(range(i, min(i + 4, len(rows)))) for i in range(0, len(rows), 4)])
    np.testing.assert_allclose(np.asarray(cache, np.float32), two_pass.astype(np.float32), rtol=2e-3, atol=2e-3)


def test_caching_does_not_change_the_transcripts(synthetic_run, tmp_path):
    _, result = synthetic_run
    teacher, rows = tiny_teacher(), result["train"]
    plain, _ = pseudo.pseudo_label(teacher, rows, 100, 4, progress=False)
    cached = one_pass_cache(teacher, rows, tmp_path)
    assert cached["teacher_text"].tolist() == plain["teacher_text"].tolist()


def test_the_cache_finds_each_requested_row_whatever_the_order(synthetic_run, tmp_path):
    _, result = synthetic_run
    teacher, rows = tiny_teacher(), result["train"]
    one_pass_cache(teacher, rows, tmp_path)
    picked = rows.iloc[[4, 1]]
    cache, index = encoder_cache.open_encoder_cache(tmp_path, teacher, picked)
    assert index == [4, 1]


def test_the_cache_refuses_another_teacher(synthetic_run, tmp_path):
    _, result = synthetic_run
    one_pass_cache(tiny_teacher(), result["train"].head(2), tmp_path)
    other = tiny_teacher()
    with torch.no_grad():
        other.model.model.encoder.conv1.weight.add_(0.01)
    with pytest.raises(ValueError, match="made by another teacher"):
        encoder_cache.open_encoder_cache(tmp_path, other)


def test_the_cache_refuses_rows_it_does_not_hold_and_other_feature_settings(synthetic_run, tmp_path):
    _, result = synthetic_run
    teacher = tiny_teacher()
    one_pass_cache(teacher, result["train"].head(2), tmp_path)
    with pytest.raises(ValueError, match="lacks 1 of the 2 utterances"):
        encoder_cache.open_encoder_cache(tmp_path, teacher, result["train"].iloc[[0, 3]])
    teacher.processor.feature_extractor = tiny_feature_extractor(window_s=4)
    with pytest.raises(ValueError, match="other feature settings"):
        encoder_cache.open_encoder_cache(tmp_path, teacher)


def test_a_missing_cache_says_which_notebook_makes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="notebook 03"):
        encoder_cache.open_encoder_cache(tmp_path, tiny_teacher())


def test_an_unfinished_cache_is_not_published(synthetic_run, tmp_path):
    _, result = synthetic_run
    writer = encoder_cache.CacheWriter(tiny_teacher(), result["train"].head(3), tmp_path)
    with pytest.raises(RuntimeError, match="3 rows of the encoder cache were never written"):
        writer.publish()
    assert not (tmp_path / "cache.json").exists()


def test_cache_bytes_is_two_bytes_per_value():
    class Config:
        max_source_positions, d_model = 1500, 768   # whisper-small, 30 s
    assert encoder_cache.cache_bytes(1, Config) == 2 * 1500 * 768  # 2.3 MB per clip
