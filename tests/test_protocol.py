"""The protocol: no training decision looks at the test set.

Every training phase (02 fine-tuning, 05 distillation, 06 AdaLoRA) evaluates, early-stops and keeps its best
checkpoint on the validation split; the test manifest is read only after training has ended, to score each model
once. These tests run each phase on a tiny run folder and record, in order, every manifest read and the end of
training.
"""
import copy
from pathlib import Path

import pandas as pd
import pytest

from helpers import adalora, config, distill, files, finetune, student
from helpers.speech import manifest
from helpers.whisper import models, train
from helpers.whisper.models import LoadedWhisper
from tests.fixtures import build_tiny_whisper

TRAINING = dict(max_steps=2, eval_steps=2, save_steps=2, warmup_steps=0, per_device_train_batch_size=2,
                per_device_eval_batch_size=4, generation_max_length=8, live_plot=False)


@pytest.fixture
def events(monkeypatch):
    """A list that receives ("read", split) for every manifest read and ("trained",) when a training run ends."""
    log = []
    load, run_training = manifest.load_manifest, train.run_training

    def recording_load(data_dir, split):
        log.append(("read", f"{Path(data_dir).name}/{split}"))
        return load(data_dir, split)

    def recording_training(*args, **kwargs):
        run_training(*args, **kwargs)
        log.append(("trained",))

    for module in (finetune, distill, adalora, manifest):
        if hasattr(module, "load_manifest"):
            monkeypatch.setattr(module, "load_manifest", recording_load)
    monkeypatch.setattr(train, "run_training", recording_training)
    return log


@pytest.fixture
def run_dir(tmp_path, synthetic_run):
    """A run folder with notebook 01's manifests, a random tiny teacher, its 1-layer student and pseudo-labels."""
    params, result = synthetic_run
    run = files.RunDir(tmp_path)
    manifest.save_manifests(run.data, {k: v for k, v in result.items() if k in ("train", "valid", "test")},
                            result["skipped"], result["report"])
    model, processor = build_tiny_whisper()
    teacher = LoadedWhisper(copy.deepcopy(model), copy.deepcopy(processor), "tiny-test")
    models.save_whisper(teacher.model, teacher.processor, run.teacher)
    files.write_json(run.metrics("teacher"), {"base_model": str(run.teacher)})
    pupil, maps = student.make_student(teacher, decoder_layers=1)
    student.save_student(pupil, run.student_init, maps)
    manifest.save_manifests(run.pseudo, {"train": result["train"]}, skipped=pd.DataFrame(), report={})
    return run


def assert_test_read_only_after_training(events):
    test_reads = [i for i, e in enumerate(events) if e == ("read", "data/test")]
    trained = events.index(("trained",))
    assert test_reads, f"the test set is never scored: {events}"
    assert all(i > trained for i in test_reads), f"the test set was read before training ended: {events}"
    assert ("read", "data/valid") in events[:trained], f"training did not evaluate on the validation split: {events}"


def test_fine_tuning_reads_the_test_set_only_after_training(run_dir, events):
    p = config.resolve("02_breeze_finetune", {"run_dir": str(run_dir.root), "base_model": str(run_dir.teacher),
                                              **TRAINING})
    finetune.run_phase(p)
    assert_test_read_only_after_training(events)


def test_distillation_reads_the_test_set_only_after_training(run_dir, events):
    p = config.resolve("05_distill", {"run_dir": str(run_dir.root), "use_encoder_cache": False, **TRAINING})
    distill.run_phase(p)
    assert_test_read_only_after_training(events)


def test_adalora_reads_the_test_set_only_after_training(run_dir, events):
    models.save_whisper(*build_tiny_whisper(), run_dir.student_kd)
    p = config.resolve("06_adalora", {"run_dir": str(run_dir.root), **TRAINING, "max_steps": 6, "tinit": 1,
                                      "tfinal": 1, "deltaT": 1, "eval_steps": 6, "save_steps": 6})
    adalora.run_phase(p)
    assert_test_read_only_after_training(events)
