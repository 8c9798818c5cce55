"""Specification of helpers.speech.collate: on-the-fly features and labels, batch padding.

The processor is the tiny one of tests/fixtures.py: Whisper log-mel features over a 5 s window
(80 mel bins x 500 frames, 100 frames per second) and a 310-token BPE tokenizer.
"""
import numpy as np
import pandas as pd
import pytest
import torch

from helpers.speech.collate import FeatureTransform, WhisperCollator, to_dataset
from tests.fixtures import write_tone

SOT, EOT = 1000, 1001  # stand-in ids for the collator tests (it only compares ids)


@pytest.fixture(scope="module")
def processor(tiny_whisper):  # noqa: F811
    return tiny_whisper[1]


def prefix_ids(processor):
    return processor.tokenizer.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|zh|>", "<|transcribe|>", "<|notimestamps|>"])


# ---------------------------------------------------------------- WhisperCollator


def features(labels=None):
    item = {"input_features": np.zeros((80, 500), np.float32)}
    if labels is not None:
        item["labels"] = labels
    return item


def test_collator_pads_labels_to_the_longest_with_minus_100():
    collate = WhisperCollator(processor=None, decoder_start_token_id=SOT)
    batch = collate([features([5, 6, 7, EOT]), features([8, EOT])])
    assert batch["labels"].tolist() == [[5, 6, 7, EOT], [8, EOT, -100, -100]]
    assert batch["labels"].dtype == torch.long


def test_collator_strips_a_leading_start_of_transcript():
    # the model prepends decoder_start_token_id itself: labels must not hold it twice
    collate = WhisperCollator(processor=None, decoder_start_token_id=SOT)
    batch = collate([features([SOT, 5, 6, EOT]), features([SOT, 8, EOT])])
    assert batch["labels"].tolist() == [[5, 6, EOT], [8, EOT, -100]]


def test_collator_leaves_labels_without_start_of_transcript_alone():
    collate = WhisperCollator(processor=None, decoder_start_token_id=SOT)
    batch = collate([features([SOT, 5, EOT]), features([5, SOT, EOT])])
    # only the first row starts with SOT; an SOT further in is not touched
    assert batch["labels"].tolist() == [[5, EOT, -100], [5, SOT, EOT]]


def test_collator_stacks_input_features_into_one_tensor():
    collate = WhisperCollator(processor=None, decoder_start_token_id=SOT)
    batch = collate([features([5]), features([6]), features([7])])
    assert batch["input_features"].shape == (3, 80, 500)
    assert batch["input_features"].dtype == torch.float32


def test_collator_without_labels_gives_only_input_features():
    collate = WhisperCollator(processor=None, decoder_start_token_id=SOT)
    assert set(collate([features(), features()])) == {"input_features"}


# ---------------------------------------------------------------- FeatureTransform


@pytest.fixture
def clips(tmp_path):
    """A 1 s tone at 16 kHz and a 2 s tone at 8 kHz."""
    return [str(write_tone(tmp_path / "a.wav", 1.0)), str(write_tone(tmp_path / "b.wav", 2.0, sample_rate=8_000))]


def test_feature_transform_makes_one_mel_window_per_clip(processor, clips):
    # 5 s window at 100 frames per second = 500 frames of 80 mel bins, whatever the clip's length
    out = FeatureTransform(processor)({"audio": clips, "text": ["你好", "今天天氣很好"]})
    assert [f.shape for f in out["input_features"]] == [(80, 500), (80, 500)]
    assert all(f.dtype == np.float32 for f in out["input_features"])


def test_feature_transform_pads_or_cuts_a_clip_longer_than_the_window(processor, tmp_path):
    long_clip = str(write_tone(tmp_path / "long.wav", 7.0))
    out = FeatureTransform(processor)({"audio": [long_clip]})
    assert out["input_features"][0].shape == (80, 500)


def test_feature_transform_labels_carry_the_prompt_and_end_of_text(processor, clips):
    out = FeatureTransform(processor)({"audio": clips, "text": ["你好", "今天天氣很好"]})
    eot = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    for labels, text in zip(out["labels"], ["你好", "今天天氣很好"]):
        assert labels[:4] == prefix_ids(processor) and labels[-1] == eot
        assert processor.tokenizer.decode(labels, skip_special_tokens=True) == text


def test_feature_transform_without_text_gives_no_labels(processor, clips):
    assert set(FeatureTransform(processor)({"audio": clips})) == {"input_features", "attention_mask"}


def test_feature_transform_features_differ_for_different_audio(processor, clips):
    a, b = FeatureTransform(processor)({"audio": clips})["input_features"]
    assert not np.allclose(a, b)


def test_dataset_with_transform_and_collator_make_a_training_batch(processor, clips):
    # collate.to_dataset wraps FeatureTransform in datasets' with_transform; rows turn into features when read
    manifest = pd.DataFrame({"audio": clips, "text": ["你好", "今天天氣很好"], "duration": [1.0, 2.0]})
    ds = to_dataset(manifest, processor)
    items = [ds[0], ds[1]]
    assert set(items[0]) == {"input_features", "attention_mask", "labels"}
    sot = processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    batch = WhisperCollator(processor, decoder_start_token_id=sot)(items)
    assert batch["input_features"].shape == (2, 80, 500)
    # the mask marks the frames that hold audio: 1 s and 2 s at 100 frames a second, the rest padding
    assert batch["attention_mask"].sum(dim=1).tolist() == [100, 200]
    longest = max(len(i["labels"]) for i in items) - 1  # the leading start-of-transcript is stripped
    assert batch["labels"].shape == (2, longest)
    assert batch["labels"][:, 0].tolist() == [processor.tokenizer.convert_tokens_to_ids("<|zh|>")] * 2
