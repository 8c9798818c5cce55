"""Pseudo-labelling: the CER filter, the guards against degenerate outputs, and the encoder cache."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import pseudo
from helpers.models import LoadedWhisper, tiny_feature_extractor
from tests.fixtures import build_tiny_whisper, synthetic_run  # noqa: F401


@pytest.mark.parametrize("prediction, reason", [
    ("", "empty output"),
    ("，。！", "empty output"),                      # punctuation only normalises to nothing
    ("的的的的", "repetition loop"),                  # one character, 4 times in a row
    ("明天開會明天開會明天開會明天開會", "repetition loop"),  # a 4-character unit, 4 times
    ("meeting meeting meeting meeting", "repetition loop"),
    ("明天下午三點開會", None),
    ("十一月十一號", None),                            # 十一 twice is normal speech, not a loop
])
def test_degenerate_reason(prediction, reason):
    assert pseudo.degenerate_reason(prediction) == reason


def manifest(texts):
    return pd.DataFrame({"audio": [f"/a/{i}.wav" for i in range(len(texts))], "text": texts,
                         "duration": 1.0, "split": "train", "source": "csv"})


def test_label_rows_keeps_filters_and_explains_each_row():
    rows = pseudo.label_rows(
        manifest(["今天下午三點", "今天下午三點", "今天下午三點", None, ""]),
        ["今天下午三點", "明天上午四點", "", "沒有參考", "也沒有參考"], cer_threshold=20)
    assert rows["status"].tolist() == [
        "kept",                           # CER 0
        "filtered: CER above threshold",  # 明天上午四點 vs 今天下午三點: 3 substitutions / 6 = 50 %
        "filtered: empty output",
        "kept (no reference)",
        "kept (no reference)",            # an empty transcript is no reference either
    ]
    assert rows["cer"].iloc[1] == pytest.approx(50.0)
    assert rows["kept"].tolist() == [True, False, False, True, True]
    assert rows["text"].tolist()[0] == "今天下午三點" and rows["reference"].iloc[3] is None


def test_threshold_is_inclusive():
    # 1 substitution in 5 characters = 20 %: kept at threshold 20, filtered at 19.9
    rows = manifest(["今天下午好"])
    assert pseudo.label_rows(rows, ["明天下午好"], 20)["kept"].item()
    assert not pseudo.label_rows(rows, ["明天下午好"], 19.9)["kept"].item()


def tiny_teacher():
    model, processor = build_tiny_whisper()
    return LoadedWhisper(copy.deepcopy(model), copy.deepcopy(processor), "tiny-test")


def test_pseudo_label_transcribes_every_row_and_reports_throughput(synthetic_run):
    _, result = synthetic_run
    rows, summary = pseudo.pseudo_label(tiny_teacher(), result["train"], cer_threshold=50, batch_size=4, progress=False)
    assert len(rows) == len(result["train"]) == summary["utterances"]
    assert summary["rtfx"] > 0 and summary["audio_s"] == pytest.approx(result["train"]["duration"].sum())
    assert sum(summary["by_status"].values()) == len(rows)


def test_encoder_cache_round_trip_gives_the_teachers_encoder_outputs(synthetic_run, tmp_path):
    _, result = synthetic_run
    teacher = tiny_teacher()
    rows = result["train"].head(3)
    cache = pseudo.open_encoder_cache(pseudo.write_encoder_cache(teacher, rows, tmp_path, progress=False),
                                      teacher, rows["audio"].tolist())
    assert cache.dtype == np.float16 and isinstance(cache, np.memmap)
    fe = teacher.feature_extractor
    from helpers.collate import read_audio
    feats = fe([read_audio(rows["audio"].iloc[1])], sampling_rate=16_000, return_tensors="pt").input_features
    with torch.no_grad():
        direct = teacher.model.model.encoder(feats).last_hidden_state[0].numpy()
    np.testing.assert_allclose(cache[1].astype(np.float32), direct, atol=2e-3, rtol=2e-3)  # fp16 precision


def test_encoder_cache_refuses_another_teacher(synthetic_run, tmp_path):
    _, result = synthetic_run
    teacher = tiny_teacher()
    pseudo.write_encoder_cache(teacher, result["train"].head(2), tmp_path, progress=False)
    other = tiny_teacher()
    with torch.no_grad():
        other.model.model.encoder.conv1.weight.add_(0.01)
    with pytest.raises(ValueError, match="made by another teacher"):
        pseudo.open_encoder_cache(tmp_path, other)


def test_encoder_cache_refuses_other_feature_settings_and_other_rows(synthetic_run, tmp_path):
    _, result = synthetic_run
    teacher = tiny_teacher()
    pseudo.write_encoder_cache(teacher, result["train"].head(2), tmp_path, progress=False)
    with pytest.raises(ValueError, match="holds other utterances"):
        pseudo.open_encoder_cache(tmp_path, teacher, result["train"]["audio"].tolist()[::-1][:2])
    teacher.processor.feature_extractor = tiny_feature_extractor(window_s=4)
    with pytest.raises(ValueError, match="other feature settings"):
        pseudo.open_encoder_cache(tmp_path, teacher)


def test_missing_cache_says_which_notebook_makes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="notebook 03"):
        pseudo.open_encoder_cache(tmp_path, tiny_teacher())


def test_pseudo_labels_cache_and_student_follow_the_checkpoint_shape_not_the_tiny_one(synthetic_run, tmp_path):
    # A checkpoint with Whisper's own 30 s window (1500 encoder frames) and 128 mel bins (large-v3 style):
    # everything must be read from the model and its processor.
    from helpers import models, student
    from helpers.models import tiny_feature_extractor

    _, result = synthetic_run
    _, processor = build_tiny_whisper()
    model, _ = models.new_tiny_whisper(processor.tokenizer, window_s=30, num_mel_bins=128, d_model=32, layers=2,
                                       heads=2, ffn=64)
    processor = copy.deepcopy(processor)
    processor.feature_extractor = tiny_feature_extractor(window_s=30, num_mel_bins=128)
    models.save_whisper(model, processor, tmp_path / "ckpt")
    teacher = models.load_whisper(tmp_path / "ckpt")
    rows = result["train"].head(2)
    labelled, _ = pseudo.pseudo_label(teacher, rows, cer_threshold=100, batch_size=2, progress=False)
    assert len(labelled) == 2
    cache = pseudo.open_encoder_cache(pseudo.write_encoder_cache(teacher, rows, tmp_path / "cache", progress=False),
                                      teacher)
    assert cache.shape == (2, 1500, 32)
    pupil, maps = student.make_student(teacher, decoder_layers=1)
    assert maps["decoder"] == [1] and pupil.feature_extractor.feature_size == 128
