"""Distillation: the loss by hand, the encoder modes agree with the plain computation, frozen stays frozen."""
import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers import config, distill, pseudo, student
from helpers.whisper import encoder_cache
from helpers.whisper.models import LoadedWhisper
from tests.fixtures import build_tiny_whisper


def test_kd_loss_matches_the_hand_computed_value():
    # one position, vocabulary of 2, label 1, T = 1
    # teacher p = softmax([0, ln 3]) = [1/4, 3/4]; student q = softmax([0, 0]) = [1/2, 1/2]
    # CE = -ln q[1] = ln 2 = 0.693147;  KL(p||q) = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.130812
    # loss = 0.8 * 0.693147 + 1.0 * 0.130812 = 0.685330
    s = torch.tensor([[[0.0, 0.0]]])
    t = torch.tensor([[[0.0, math.log(3)]]])
    loss, ce, kl = distill.kd_loss(s, t, torch.tensor([[1]]), ce_weight=0.8, kl_weight=1.0, temperature=1.0)
    assert ce.item() == pytest.approx(math.log(2), abs=1e-6)
    assert kl.item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-6)
    assert loss.item() == pytest.approx(0.685330, abs=1e-5)


def test_kd_loss_scales_the_softened_kl_by_t_squared():
    # T = 2: teacher logits / 2 = [0, ln 3 / 2] -> p = [1/(1+sqrt 3), sqrt 3/(1+sqrt 3)]; student q = [1/2, 1/2]
    s = torch.tensor([[[0.0, 0.0]]])
    t = torch.tensor([[[0.0, math.log(3)]]])
    p1 = math.sqrt(3) / (1 + math.sqrt(3))
    expected = 4 * ((1 - p1) * math.log((1 - p1) / 0.5) + p1 * math.log(p1 / 0.5))
    _, _, kl = distill.kd_loss(s, t, torch.tensor([[1]]), temperature=2.0)
    assert kl.item() == pytest.approx(expected, abs=1e-6)


def test_kd_loss_ignores_padding_positions():
    torch.manual_seed(0)
    s, t = torch.randn(1, 3, 5), torch.randn(1, 3, 5)
    labels = torch.tensor([[1, 2, -100]])
    padded = distill.kd_loss(s, t, labels)[0]
    s2, t2 = s.clone(), t.clone()
    s2[0, 2], t2[0, 2] = 100.0, -100.0  # garbage where the label is padding
    assert distill.kd_loss(s2, t2, labels)[0].item() == pytest.approx(padded.item())
    assert padded.item() == pytest.approx(distill.kd_loss(s[:, :2], t[:, :2], labels[:, :2])[0].item())


def test_kd_loss_refuses_a_non_positive_temperature_and_other_vocabularies():
    with pytest.raises(ValueError, match="temperature must be positive"):
        distill.kd_loss(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), torch.tensor([[0]]), temperature=0)
    with pytest.raises(ValueError, match="vocabularies differ"):
        distill.kd_loss(torch.zeros(1, 1, 2), torch.zeros(1, 1, 3), torch.tensor([[0]]))


def pair():
    model, processor = build_tiny_whisper()
    teacher = LoadedWhisper(copy.deepcopy(model), processor, "teacher")
    return teacher, student.make_student(teacher, decoder_layers=1)[0]


def test_modes_are_chosen_from_what_the_encoders_allow():
    teacher, pupil = pair()
    assert distill.choose_mode(teacher.model, pupil.model, True, cache_available=True)[0] == "cached"
    assert distill.choose_mode(teacher.model, pupil.model, True, cache_available=False)[0] == "shared"
    assert distill.choose_mode(teacher.model, pupil.model, False, cache_available=True)[0] == "separate"
    with torch.no_grad():
        pupil.model.model.encoder.conv1.bias.add_(1.0)
    assert distill.choose_mode(teacher.model, pupil.model, True, cache_available=True)[0] == "separate"


def trainer_for(mode, teacher, pupil, tmp_path):
    p = SimpleNamespace(**{**config.defaults("05_distill"), "max_steps": 2, "eval_steps": 1, "save_steps": 1,
                           "per_device_train_batch_size": 2, "warmup_steps": 0, "generation_max_length": 8})
    from helpers.whisper import train
    return train.build_trainer(p, pupil, None, [{"labels": [1]}], tmp_path, trainer_class=distill.DistillTrainer,
                               teacher_model=teacher.model, mode=mode)


def test_every_encoder_mode_gives_the_loss_of_the_plain_computation(tmp_path):
    teacher, pupil = pair()
    torch.manual_seed(1)
    feats = torch.randn(2, 80, teacher.model.config.max_source_positions * 2)
    labels = torch.tensor([[5, 6, 7, -100], [8, 9, 10, 11]])
    with torch.no_grad():
        plain = distill.kd_loss(pupil.model(input_features=feats, labels=labels).logits,
                                teacher.model(input_features=feats, labels=labels).logits, labels)[0].item()
        cached = teacher.model.model.encoder(feats).last_hidden_state
    pupil.model.train()
    for mode, inputs in (("separate", {"input_features": feats}), ("shared", {"input_features": feats}),
                         ("cached", {"encoder_outputs": cached})):
        trainer = trainer_for(mode, teacher, pupil, tmp_path)
        with torch.no_grad():
            loss = trainer.compute_loss(pupil.model, {**inputs, "labels": labels})
        assert loss.item() == pytest.approx(plain, abs=1e-5), mode


def test_cached_collator_stacks_cache_rows_and_pads_labels():
    from helpers.speech.collate import WhisperCollator
    cache = np.arange(3 * 2 * 4, dtype=np.float16).reshape(3, 2, 4)
    collate = distill.CachedCollator(cache, WhisperCollator(None, decoder_start_token_id=99))
    batch = collate([{"cache_index": 2, "labels": [99, 5, 6]}, {"cache_index": 0, "labels": [7]}])
    assert torch.equal(batch["encoder_outputs"], torch.from_numpy(cache[[2, 0]].astype(np.float32)))
    assert batch["labels"].tolist() == [[5, 6], [7, -100]]  # start-of-transcript stripped, padded with -100
    assert "input_features" not in batch


def test_distillation_in_cache_mode_trains_the_decoder_and_leaves_frozen_weights_alone(tmp_path, synthetic_run):
    _, result = synthetic_run
    teacher, pupil = pair()
    rows = result["train"]
    writer = encoder_cache.CacheWriter(teacher, rows, tmp_path / "cache")
    pseudo.pseudo_label(teacher, rows, 100, 4, progress=False, on_batch=writer.write)
    writer.publish()
    teacher_before = copy.deepcopy(teacher.model.state_dict())
    encoder_before = copy.deepcopy(pupil.model.model.encoder.state_dict())
    decoder_before = pupil.model.model.decoder.layers[0].fc1.weight.detach().clone()
    p = SimpleNamespace(**{**config.defaults("05_distill"), "max_steps": 3, "eval_steps": 3, "save_steps": 3,
                           "per_device_train_batch_size": 2, "warmup_steps": 0, "generation_max_length": 8,
                           "per_device_eval_batch_size": 4})
    trainer, records, mode, _ = distill.distil(p, teacher, pupil, rows, result["test"], tmp_path / "out",
                                               tmp_path / "cache", live=False)
    assert mode == "cached" and trainer.state.global_step == 3
    assert any("ce" in r and "kl" in r for r in records)  # CE and KL logged apart
    for name, value in teacher.model.state_dict().items():
        assert torch.equal(value, teacher_before[name]), name
    for name, value in pupil.model.model.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[name]), name
    assert not torch.equal(decoder_before, pupil.model.model.decoder.layers[0].fc1.weight)


def test_distillation_refuses_a_student_with_another_vocabulary(tmp_path, synthetic_run):
    import random

    from helpers.speech import grammar
    from helpers.whisper import models
    _, result = synthetic_run
    teacher, _ = pair()
    rng = random.Random(7)
    other_tok = models.build_tokenizer([grammar.make_sentence(rng) for _ in range(100)], vocab_size=280)
    other = LoadedWhisper(models.new_tiny_whisper(other_tok, d_model=64, layers=1, heads=2, ffn=128)[0],
                          models.new_tiny_whisper(other_tok, d_model=64, layers=1, heads=2, ffn=128)[1], "other")
    p = SimpleNamespace(**config.defaults("05_distill"))
    with pytest.raises(ValueError, match="tokenizer"):
        distill.distil(p, teacher, other, result["train"], result["test"], tmp_path, live=False)
