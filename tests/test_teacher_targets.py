"""Stored teacher targets: the KL they give against the full one, the store's refusals, and distillation with them."""
import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import config, distill, pseudo, student
from helpers.whisper import encoder_cache, models, teacher_targets
from helpers.whisper.models import LoadedWhisper
from tests.fixtures import build_tiny_whisper


def full_kl(student_logits, teacher_logits, temperature):
    """KL(softmax(t/T) || softmax(s/T)) * T^2 per position, the live mode's term."""
    log_p = F.log_softmax(teacher_logits / temperature, -1)
    log_q = F.log_softmax(student_logits / temperature, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1) * temperature ** 2


@pytest.fixture
def logits():
    torch.manual_seed(0)
    return torch.randn(2, 5, 40) * 3, torch.randn(2, 5, 40) * 3  # teacher, student: batch 2, 5 positions, 40 tokens


def test_topk_over_the_whole_vocabulary_gives_the_full_kl(logits):
    teacher, pupil = logits
    mask = torch.ones(2, 5, dtype=torch.bool)
    ids, logprobs = teacher_targets.compact(teacher, 40, 2.0, "topk")
    stored = teacher_targets.kl_from_targets(pupil, ids, logprobs, mask, "topk", 2.0)
    assert stored.item() == pytest.approx(full_kl(pupil, teacher, 2.0).mean().item(), rel=1e-5)


def test_topk_with_fewer_tokens_is_close_when_the_teacher_is_sharp(logits):
    teacher, pupil = logits
    mask = torch.ones(2, 5, dtype=torch.bool)
    sharp = teacher * 4  # most of the mass on a few tokens
    ids, logprobs = teacher_targets.compact(sharp, 8, 1.0, "topk")
    approx = teacher_targets.kl_from_targets(pupil, ids, logprobs, mask, "topk", 1.0).item()
    assert approx == pytest.approx(full_kl(pupil, sharp, 1.0).mean().item(), rel=0.05)


def test_the_sampled_estimate_averages_to_the_full_kl(logits):
    # a fixed toy distribution: the mean of many independent sampled estimates approaches the true KL
    teacher, pupil = logits
    mask = torch.ones(2, 5, dtype=torch.bool)
    generator = torch.Generator().manual_seed(1)
    estimates = [teacher_targets.kl_from_targets(pupil, *teacher_targets.compact(teacher, 16, 2.0, "sampled",
                                                                                  generator), mask, "sampled",
                                                  2.0).item() for _ in range(400)]
    true = full_kl(pupil, teacher, 2.0).mean().item()
    standard_error = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - true) < 4 * standard_error
    assert np.std(estimates) > 0  # a real estimate, not the exact value in disguise


def test_masked_positions_do_not_count(logits):
    teacher, pupil = logits
    ids, logprobs = teacher_targets.compact(teacher, 40, 2.0, "topk")
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, :2] = True
    stored = teacher_targets.kl_from_targets(pupil, ids, logprobs, mask, "topk", 2.0)
    assert stored.item() == pytest.approx(full_kl(pupil, teacher, 2.0)[0, :2].mean().item(), rel=1e-5)


def test_bad_methods_and_sizes_are_refused(logits):
    teacher, _ = logits
    with pytest.raises(ValueError, match="method must be one of"):
        teacher_targets.compact(teacher, 4, 1.0, "mean")
    with pytest.raises(ValueError, match="k must be between 1 and the vocabulary size 40"):
        teacher_targets.compact(teacher, 41, 1.0, "topk")


# ---------------------------------------------------------------- the store


def tiny_pair():
    model, processor = build_tiny_whisper()
    teacher = LoadedWhisper(copy.deepcopy(model), copy.deepcopy(processor), "tiny-test")
    pupil, _ = student.make_student(teacher, decoder_layers=1)
    return teacher, pupil


@pytest.fixture
def stored(tmp_path, synthetic_run):
    _, result = synthetic_run
    teacher, _ = tiny_pair()
    rows = result["train"].assign(text=["今天下午三點", "明天開會", "請在十點以前到公司", "我們去台北", "好", "謝謝"])
    meta = teacher_targets.write_targets(teacher, rows, tmp_path / "targets_topk", 8, 2.0, "topk", batch_size=4,
                                         progress=False)
    return teacher, rows, tmp_path / "targets_topk", meta


def test_the_store_holds_the_teachers_distribution_at_every_label_position(stored):
    teacher, rows, folder, meta = stored
    ids, logprobs, spans, _ = teacher_targets.open_targets(folder, rows, meta["teacher_fingerprint"],
                                                           teacher.tokenizer, 2.0)
    labels = teacher_targets.label_ids(teacher.tokenizer, rows["text"].tolist())
    assert [length for _, length in spans] == [len(l) for l in labels] and ids.shape == (meta["tokens"], 8)
    # row 0, as the live mode computes it: the teacher's logits at the labels, from its own encoder pass
    from helpers.speech.audio import log_mel, read_row
    with torch.no_grad():
        hidden = teacher.model.model.encoder(log_mel(teacher.feature_extractor, [read_row(rows.iloc[0].to_dict())]))
        decoder_input = torch.tensor([[teacher.model.config.decoder_start_token_id] + labels[0][:-1]])
        logits = teacher.model(encoder_outputs=hidden, decoder_input_ids=decoder_input).logits[0]
    expected_ids, expected_logprobs = teacher_targets.compact(logits, 8, 2.0, "topk")
    start, length = spans[0]
    np.testing.assert_array_equal(ids[start:start + length], expected_ids.numpy())
    np.testing.assert_allclose(logprobs[start:start + length], expected_logprobs.numpy(), atol=2e-2)  # fp16


def test_the_store_refuses_another_teacher_temperature_tokenizer_or_rows(stored, synthetic_run):
    teacher, rows, folder, meta = stored
    with pytest.raises(ValueError, match="made by another teacher"):
        teacher_targets.open_targets(folder, rows, "0" * 16, teacher.tokenizer, 2.0)
    with pytest.raises(ValueError, match="softened with temperature 2.0, distillation asks for 1.0"):
        teacher_targets.open_targets(folder, rows, meta["teacher_fingerprint"], teacher.tokenizer, 1.0)
    other = models.build_tokenizer(["完全不同的句子"] * 20, vocab_size=280)
    with pytest.raises(ValueError, match="token ids of another tokenizer"):
        teacher_targets.open_targets(folder, rows, meta["teacher_fingerprint"], other, 2.0)
    _, result = synthetic_run
    with pytest.raises(ValueError, match="lack 3 of the 3 utterances"):
        teacher_targets.open_targets(folder, result["test"], meta["teacher_fingerprint"], teacher.tokenizer, 2.0)
    with pytest.raises(FileNotFoundError, match="run notebook 03 with teacher_targets set"):
        teacher_targets.open_targets(folder.parent / "none", rows, "", teacher.tokenizer, 2.0)


# ---------------------------------------------------------------- distillation with stored targets


@pytest.mark.parametrize("method", ["topk", "sampled"])
def test_distillation_with_stored_targets_never_runs_the_teacher(tmp_path, synthetic_run, method, monkeypatch):
    _, result = synthetic_run
    teacher, pupil = tiny_pair()
    rows = result["train"]
    writer = encoder_cache.CacheWriter(teacher, rows, tmp_path / "cache")
    rows, _ = pseudo.pseudo_label(teacher, rows, 100, 4, progress=False, on_batch=writer.write)
    writer.publish()
    cache = encoder_cache.open_encoder_cache(tmp_path / "cache", teacher, rows)
    teacher_targets.write_targets(teacher, rows, tmp_path / f"targets_{method}", 16, 2.0, method, cache,
                                  progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher ran during training")

    monkeypatch.setattr(teacher.model, "forward", refuse)
    p = SimpleNamespace(**{**config.defaults("05_distill"), "max_steps": 3, "eval_steps": 3, "save_steps": 3,
                           "per_device_train_batch_size": 2, "warmup_steps": 0, "generation_max_length": 8,
                           "per_device_eval_batch_size": 4, "teacher_targets": method, "live_plot": False})
    trainer, records, mode, reason = distill.distil(p, teacher, pupil, rows, result["valid"], tmp_path / "out",
                                                    tmp_path / "cache", live=False,
                                                    targets_dir=tmp_path / f"targets_{method}")
    assert mode == "cached" and "decoder alone" in reason
    assert trainer.state.global_step == 3 and any("kl" in r for r in records)
    assert all(np.isfinite(r["kl"]) for r in records if "kl" in r)


def test_the_topk_loss_over_the_whole_vocabulary_equals_the_live_loss(tmp_path, synthetic_run):
    """Through DistillTrainer.compute_loss: stored top-k targets with k = vocabulary give the live KD loss."""
    _, result = synthetic_run
    teacher, pupil = tiny_pair()
    with torch.no_grad():  # a student that differs from its teacher (cut from a 1-layer decoder, it would not)
        for param in pupil.model.model.decoder.parameters():
            param.add_(0.05 * torch.randn_like(param))
    rows = result["train"].head(4).assign(text=["今天", "明天開會", "好", "謝謝你"])
    vocab = teacher.model.config.vocab_size
    teacher_targets.write_targets(teacher, rows, tmp_path / "t", vocab, 2.0, "topk", progress=False)
    ids, logprobs, spans, _ = teacher_targets.open_targets(tmp_path / "t", rows, teacher_targets.model_fingerprint(
        teacher.model), teacher.tokenizer, 2.0)
    from helpers.speech.audio import log_mel, read_row
    from helpers.speech.collate import WhisperCollator
    features = log_mel(teacher.feature_extractor, [read_row(r) for r in rows.to_dict("records")])
    labels = teacher.tokenizer(rows["text"].tolist()).input_ids
    start = teacher.model.config.decoder_start_token_id
    collate = distill.CachedCollator(None, WhisperCollator(teacher.processor, start), (ids, logprobs))
    batch = collate([{"input_features": f.numpy(), "labels": l, "target_span": s} for f, l, s in
                     zip(features, labels, spans)])
    with torch.no_grad():
        hidden = teacher.model.model.encoder(batch["input_features"]).last_hidden_state
        live_logits = teacher.model(encoder_outputs=(hidden,), labels=batch["labels"]).logits
        student_logits = pupil.model(encoder_outputs=(hidden,), labels=batch["labels"]).logits
    mask = batch["labels"] != -100
    stored = teacher_targets.kl_from_targets(student_logits, batch["target_ids"], batch["target_logprobs"], mask,
                                             "topk", 2.0)
    _, _, live = distill.kd_loss(student_logits, live_logits, batch["labels"], temperature=2.0)
    assert stored.item() == pytest.approx(live.item(), rel=2e-3)  # fp16 storage of the log-probabilities


def test_target_bytes_are_k_ids_and_k_half_floats_per_token():
    assert teacher_targets.target_bytes(1000, 32) == 1000 * 32 * 6  # 192 kB for 1000 label tokens

