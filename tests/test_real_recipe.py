"""The gpu-8gb recipe end to end on a local Whisper folder: what a practitioner with Breeze-ASR-25 on an offline disk
runs. The model has Whisper's real layout (51865 tokens, timestamps, 30 s window, 80 mels) and tiny widths, and is
first taught the few synthetic training sentences (a random model only repeats itself, and notebook 03 rightly keeps
none of its pseudo-labels: tests/test_pseudo.py). Every notebook must
take the given ``base_model`` (one teacher everywhere) and none may touch a hub (HF_HUB_OFFLINE=1)."""
import json
import os
import subprocess
import sys

import pytest

from helpers.config import REPO
from tests.test_export import standard_whisper

# what differs from the gpu-8gb profile: the local teacher, a few synthetic clips and steps, and filters and an
# AdaLoRA schedule a random model can pass through
OVERRIDES = {"source": "synthetic", "num_train": 8, "num_valid": 4, "num_test": 4, "num_unlabelled": 2,
             "max_steps": 2, "eval_steps": 1, "save_steps": 1, "per_device_train_batch_size": 2,
             "gradient_accumulation_steps": 1, "per_device_eval_batch_size": 4, "batch_size": 4,
             "generation_max_length": 64, "cer_threshold": 10000.0, "confidence_filter": False,
             "tinit": 0, "tfinal": 0, "deltaT": 1, "speed_rounds": 1, "speculative_limit": 2}


def taught_whisper(folder, synthetic_run, steps: int = 40):
    """The standard-layout random Whisper of tests/test_export.py, taught the synthetic training clips (full-batch
    AdamW, lr 5e-3: 40 steps take the loss from ~10.9 to ~1), saved to ``folder``."""
    import torch

    from helpers.speech.collate import WhisperCollator, to_dataset
    from helpers.whisper import models

    loaded = models.load_whisper(standard_whisper(folder))
    _, result = synthetic_run
    dataset = to_dataset(result["train"], loaded.processor)
    batch = WhisperCollator(loaded.processor, loaded.model.config.decoder_start_token_id)(list(dataset))
    optimizer = torch.optim.AdamW(loaded.model.parameters(), lr=5e-3)
    loaded.model.train()
    for _ in range(steps):
        loaded.model(input_features=batch["input_features"], labels=batch["labels"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return models.save_whisper(loaded.model.eval(), loaded.processor, folder)


def run_course(teacher, run_dir, **extra):
    pairs = [["base_model", str(teacher)], *([k, json.dumps(v)] for k, v in {**OVERRIDES, **extra}.items())]
    command = [sys.executable, "-m", "helpers.course", "--profile", "gpu-8gb", "--run-dir", str(run_dir),
               *[x for pair in pairs for x in ("-p", *pair)]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=1500)


@pytest.fixture(scope="module")
def course_run(tmp_path_factory, synthetic_run):
    teacher = taught_whisper(tmp_path_factory.mktemp("local_whisper") / "breeze-like", synthetic_run)
    run_dir = tmp_path_factory.mktemp("gpu8gb_run")
    return run_course(teacher, run_dir), run_dir, teacher


def test_the_gpu_8gb_recipe_runs_on_a_local_whisper_folder(course_run):
    done, run_dir, _ = course_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in ("teacher", "student_init", "student_kd", "student_adalora"):
        assert (run_dir / stage / "config.json").exists(), stage


def test_every_notebook_used_the_given_teacher(course_run):
    done, run_dir, teacher = course_run
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((run_dir / "teacher" / "metrics.json").read_text("utf-8"))
    assert metrics["base_model"] == str(teacher)
    config = json.loads((run_dir / "student_kd" / "config.json").read_text("utf-8"))
    assert (config["vocab_size"], config["max_source_positions"], config["decoder_layers"]) == (51865, 1500, 2)
    results = json.loads((run_dir / "eval" / "results.json").read_text("utf-8"))
    assert {r["model"] for r in results["results"] if r["status"] == "ok"} >= {"base teacher", "fine-tuned teacher",
                                                                               "distilled student"}
    assert all(r["looped"] <= r["outputs"] for r in results["results"] if r["status"] == "ok")
