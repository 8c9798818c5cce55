"""Pseudo-labelling: the CER filter and the guards against degenerate outputs."""
import copy

import pandas as pd
import pytest

from helpers import pseudo
from helpers.whisper import encoder_cache
from helpers.whisper.models import LoadedWhisper, tiny_feature_extractor
from tests.fixtures import build_tiny_whisper


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


def test_pseudo_labels_cache_and_student_follow_the_checkpoint_shape_not_the_tiny_one(synthetic_run, tmp_path):
    # A checkpoint with Whisper's own 30 s window (1500 encoder frames) and 128 mel bins (large-v3 style):
    # everything must be read from the model and its processor.
    from helpers import student
    from helpers.whisper import models

    _, result = synthetic_run
    _, processor = build_tiny_whisper()
    model, _ = models.new_tiny_whisper(processor.tokenizer, window_s=30, num_mel_bins=128, d_model=32, layers=2,
                                       heads=2, ffn=64)
    processor = copy.deepcopy(processor)
    processor.feature_extractor = tiny_feature_extractor(window_s=30, num_mel_bins=128)
    models.save_whisper(model, processor, tmp_path / "ckpt")
    teacher = models.load_whisper(tmp_path / "ckpt")
    rows = result["train"].head(2)
    writer = encoder_cache.CacheWriter(teacher, rows, tmp_path / "cache")
    labelled, _ = pseudo.pseudo_label(teacher, rows, cer_threshold=100, batch_size=2, progress=False,
                                      on_batch=writer.write)
    assert len(labelled) == 2
    cache, _ = encoder_cache.open_encoder_cache(writer.publish(), teacher)
    assert cache.shape == (2, 1500, 32)
    pupil, maps = student.make_student(teacher, decoder_layers=1)
    assert maps["decoder"] == [1] and pupil.feature_extractor.feature_size == 128


# ---------------------------------------------------------------- confidence


def test_rows_without_a_reference_are_filtered_by_confidence_and_every_drop_has_its_reason():
    rows = pseudo.label_rows(manifest(["今天下午三點", None, None, None, ""]),
                             ["明天上午四點", "很有把握", "沒把握", "沒有人說話", "的的的的"],
                             cer_threshold=20, avg_logprob=[-3.0, -0.1, -2.0, -0.2, -0.1],
                             no_speech_prob=[0.0, 0.1, 0.1, 0.9, 0.0], min_avg_logprob=-1.0, max_no_speech_prob=0.6)
    assert rows["status"].tolist() == [
        "filtered: CER above threshold",  # a reference: the CER decides, not the confidence
        "kept (no reference)",            # confident
        "filtered: low confidence",       # mean log-probability -2.0 < -1.0
        "filtered: no speech",            # no-speech probability 0.9 > 0.6
        "filtered: repetition loop",      # whatever its confidence
    ]
    assert rows["avg_logprob"].tolist() == [-3.0, -0.1, -2.0, -0.2, -0.1]


def test_without_thresholds_confidence_is_recorded_but_filters_nothing():
    rows = pseudo.label_rows(manifest([None, None]), ["一", "二"], 20, avg_logprob=[-9.0, -0.1],
                             no_speech_prob=[0.99, 0.0])
    assert rows["kept"].all()


def test_the_chosen_threshold_separates_good_from_bad_transcripts_best():
    # clips with CER <= 20 have log-probabilities -0.1..-0.5, the others -0.9..-2: any threshold in (-0.9, -0.5]
    # separates them perfectly; the highest such candidate that is a value of a good clip is -0.5
    logprob = [-0.1, -0.3, -0.5, -0.9, -1.5, -2.0]
    cer = [0.0, 10.0, 20.0, 40.0, 80.0, 100.0]
    assert pseudo.choose_logprob_threshold(logprob, cer, 20.0) == -0.5


def test_a_threshold_cannot_be_chosen_on_clips_that_are_all_good():
    with pytest.raises(ValueError, match="all 3 validation transcripts are within the CER threshold"):
        pseudo.choose_logprob_threshold([-0.1, -0.2, -0.3], [0.0, 1.0, 2.0], 20.0)


def test_pseudo_labelling_scores_confidence_as_the_teacher_decodes(synthetic_run):
    _, result = synthetic_run
    teacher = tiny_teacher()
    rows, _ = pseudo.pseudo_label(teacher, result["train"], cer_threshold=50, batch_size=4, progress=False)
    assert (rows["avg_logprob"] <= 0).all() and rows["no_speech_prob"].between(0, 1).all()
    # the mean log-probability is that of a teacher-forced pass over the transcript the teacher generated
    import torch

    from helpers.speech.audio import log_mel, read_row
    from helpers.whisper.decode import sequence_confidence
    row = result["train"].iloc[0].to_dict()
    features = log_mel(teacher.feature_extractor, [read_row(row)])
    with torch.no_grad():
        hidden = teacher.model.model.encoder(features).last_hidden_state
        sequences = teacher.model.generate(features)
    prompt = list(teacher.tokenizer.prefix_tokens)
    eos = teacher.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    logprob, _ = sequence_confidence(teacher.model, hidden, sequences, prompt, eos)
    # alone here, in a batch of 4 there: float rounding differs in the third decimal
    assert rows["avg_logprob"].iloc[0] == pytest.approx(float(logprob[0]), abs=1e-2)
    # with or without the prompt, with or without end-of-text padding (generate's code paths differ): the same value
    prefix = torch.tensor([prompt])
    said = sequences[:, len(prompt):] if bool((sequences[:, :len(prompt)] == prefix).all()) else sequences
    said = said[:, : int((said[0] == eos).nonzero()[0]) if (said[0] == eos).any() else said.shape[1]]
    for variant in (said, torch.cat([prefix, said], 1), torch.cat([said, torch.full((1, 3), eos)], 1)):
        again, _ = sequence_confidence(teacher.model, hidden, variant, prompt, eos)
        assert float(again[0]) == pytest.approx(float(logprob[0]), abs=1e-6)


def test_an_empty_pseudo_label_set_says_which_filter_emptied_it_and_what_to_change():
    summary = {"utterances": 10, "teacher_cer": 2206.3,
               "by_status": {"filtered: repetition loop": 7, "filtered: CER above threshold": 3}}
    message = pseudo.nothing_kept(summary)
    assert "kept no pseudo-label of 10 utterances" in message
    assert "repetition loop: 7 (no parameter: the teacher repeats itself, fine-tune it first)" in message
    assert "CER above threshold: 3 (cer_threshold" in message and "2206.3 %" in message
