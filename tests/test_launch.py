"""Scaling out: the phases as commands, and two CPU processes (gloo) giving what one process gives.

The two-process runs start ``accelerate launch --multi_gpu --num_processes 2`` in a subprocess, the command
a person types on a machine with two GPUs. On a machine without a GPU that launcher starts two CPU
processes joined over gloo (accelerate 1.x: ``--cpu --num_processes 2`` starts only one process unless
an mpirun host file is given).
"""
import copy
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from helpers import cli, config, launch, student
from helpers.files import read_json
from helpers.speech.manifest import load_manifest, save_manifests
from helpers.whisper import models, processes
from helpers.whisper.models import LoadedWhisper
from helpers.whisper.processes import free_port
from tests.fixtures import build_tiny_whisper


def test_shards_are_contiguous_blocks_that_cover_the_rows_in_order():
    # 10 rows in 3 shards: sizes 4, 3, 3 (the first 10 % 3 = 1 shard takes one more)
    assert [processes.shard_bounds(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [processes.shard_bounds(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]  # more processes than rows
    with pytest.raises(ValueError, match="rank 2 is not in 0..1"):
        processes.shard_bounds(4, 2, 2)


def test_a_phase_takes_its_notebooks_parameters_and_leaves_other_notebooks_ones_out():
    params = {"max_steps": 7, "num_train": 50, "profile": "gpu-8gb"}
    p = config.resolve("05_distill", config.own_params("05_distill", params))
    assert p.max_steps == 7 and not hasattr(p, "num_train")  # num_train belongs to notebook 01
    assert p.learning_rate == config.defaults("05_distill", "gpu-8gb")["learning_rate"]


def test_the_command_refuses_an_unknown_parameter_by_name_before_running(capsys):
    ran = []
    assert cli.phase_main("pseudo", ran.append, ["-p", "cer_treshold", "10"]) == 2
    err = capsys.readouterr().err
    assert ran == [] and "cer_treshold" in err and "cer_threshold" in err  # the valid names are listed
    assert "Traceback" not in err


def test_the_command_refuses_a_value_of_the_wrong_type_in_one_line(capsys):
    assert cli.phase_main("distill", lambda p: None, ["-p", "max_steps", "abc"]) == 2
    assert capsys.readouterr().err == "error: parameter max_steps must be an integer >= 1, got 'abc' (str)\n"


def test_the_command_says_which_input_is_missing_without_a_traceback(tmp_path, capsys):
    assert cli.phase_main("distill", launch.RUN_PHASE["distill"], ["--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "teacher" in err and "Traceback" not in err


def test_a_single_process_needs_no_launcher_and_no_process_group():
    state = processes.process_state()
    assert (state.num_processes, state.process_index, state.is_main_process) == (1, 0, True)
    state.wait_for_everyone()  # a no-op alone


def test_notebook_launch_refuses_zero_processes_and_unknown_phases():
    with pytest.raises(ValueError, match="num_processes must be at least 1"):
        launch.notebook_launch("distill", None, 0)
    with pytest.raises(ValueError, match="phase must be one of"):
        launch.notebook_launch("train", None, 1)


# ---------------------------------------------------------------------------------------------
# Two processes against one
# ---------------------------------------------------------------------------------------------
def run_command(module: str, run_dir, params: dict, processes: int, timeout: int = 240):
    """``python -m <module> --run-dir <run_dir> -p name value ...`` alone (1 process), or under
    ``accelerate launch --multi_gpu --num_processes <processes>`` (on CPU: gloo processes)."""
    launcher = [] if processes == 1 else [
        "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    command = [sys.executable, *launcher, "-m", module, "--run-dir", str(run_dir)]
    for name, value in params.items():
        command += ["-p", name, json.dumps(value)]  # JSON is YAML: numbers, true/false, quoted strings
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(config.REPO)}
    done = subprocess.run(command, cwd=config.REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def run_dir_with_data(root, synthetic_run):
    """A fresh run_dir holding notebook 01's manifests (the audio stays where the fixture wrote it)."""
    params, _ = synthetic_run
    shutil.copytree(params.run_dir / "data", root / "data")
    return root


def test_two_processes_pseudo_label_and_cache_exactly_what_one_process_does(tmp_path, synthetic_run):
    # Each process transcribes and encodes a contiguous half of the manifest; the shards merged in rank
    # order must give the single-process manifest row for row, and the same cache bytes.
    params = {"teacher": str(config.TINY_TEACHER), "cer_threshold": 100.0, "batch_size": 3,
              "cache_encoder_outputs": True}
    one = run_dir_with_data(tmp_path / "one", synthetic_run)
    two = run_dir_with_data(tmp_path / "two", synthetic_run)
    run_command("helpers.pseudo", one, params, processes=1)
    run_command("helpers.pseudo", two, params, processes=2)
    summary = read_json(one / "pseudo" / "report.json")

    for name in ("all", "train"):
        pd.testing.assert_frame_equal(load_manifest(one / "pseudo", name), load_manifest(two / "pseudo", name))
    assert summary["kept"] >= 2  # the halves both hold kept rows, so the cache really was written by shards
    report = read_json(two / "pseudo" / "report.json")
    assert report["processes"] == 2 and summary["processes"] == 1
    labels = ("utterances", "kept", "cer_threshold", "by_status", "teacher_cer", "audio_s")  # timings differ
    assert {k: report[k] for k in labels} == {k: summary[k] for k in labels}
    assert read_json(one / "pseudo/encoder_cache/cache.json") == read_json(two / "pseudo/encoder_cache/cache.json")
    np.testing.assert_array_equal(np.load(one / "pseudo/encoder_cache/encoder_outputs.npy"),
                                  np.load(two / "pseudo/encoder_cache/encoder_outputs.npy"))


def distillation_run_dir(root, synthetic_run):
    """run_dir with a tiny random teacher, a 1-decoder-layer student cut from it, and 8 pseudo-labels."""
    _, result = synthetic_run
    run_dir = run_dir_with_data(root, synthetic_run)
    model, processor = build_tiny_whisper()
    teacher = LoadedWhisper(copy.deepcopy(model), copy.deepcopy(processor), "tiny-test")
    models.save_whisper(teacher.model, teacher.processor, run_dir / "teacher")
    pupil, maps = student.make_student(teacher, decoder_layers=1)
    student.save_student(pupil, run_dir / "student_init", maps)
    rows = pd.concat([result["train"], result["train"].head(2)], ignore_index=True)  # 8 = 2 steps of 4
    save_manifests(run_dir / "pseudo", {"train": rows}, skipped=rows.head(0), report={})
    return run_dir


DISTILL = {"max_steps": 4, "eval_steps": 4, "save_steps": 4, "warmup_steps": 0, "learning_rate": 1e-3,
           "per_device_eval_batch_size": 4, "generation_max_length": 8, "use_encoder_cache": False}


def test_two_processes_of_batch_2_distil_like_one_process_of_batch_4(tmp_path, synthetic_run):
    """Two processes with 2 utterances each (DDP over gloo) against one process with 4: the same 4
    utterances make each optimizer step (accelerate hands process r the r-th half of the global batch),
    the loss is the mean over all the step's label tokens and DDP sums the per-process shares, so the
    logged loss, CE and KL of every step agree within rtol 1e-4 (atol 1e-5 for the KL, which starts at 0:
    the student is cut from this teacher). Measured: at most 1.4e-6 apart on losses near 4.5 (relative
    3e-7), the float32 rounding of batches of another size. Dropout is 0 in the tiny model."""
    one = distillation_run_dir(tmp_path / "one", synthetic_run)
    two = distillation_run_dir(tmp_path / "two", synthetic_run)
    run_command("helpers.distill", one, {**DISTILL, "per_device_train_batch_size": 4}, processes=1)
    run_command("helpers.distill", two, {**DISTILL, "per_device_train_batch_size": 2}, processes=2)

    def curve(run_dir):
        history = read_json(run_dir / "student_kd" / "history.json")
        return {r["step"]: (r["loss"], r["ce"], r["kl"]) for r in history if "loss" in r}

    single, double = curve(one), curve(two)
    assert sorted(single) == sorted(double) == [1, 2, 3, 4]
    np.testing.assert_allclose([double[s] for s in range(1, 5)], [single[s] for s in range(1, 5)], rtol=1e-4, atol=1e-5)
    assert single[4][0] < single[1][0]  # it did learn: the comparison is not between two flat lines
    launched, alone = read_json(two / "student_kd" / "metrics.json"), read_json(one / "student_kd" / "metrics.json")
    assert launched["processes"] == 2 and alone["processes"] == 1 and launched["steps"] == alone["steps"] == 4
    assert (two / "student_kd" / "model.safetensors").exists()


def test_two_processes_read_their_shares_of_the_stored_teacher_targets_like_one(tmp_path, synthetic_run):
    """Distillation from stored top-k targets (the teacher never runs): two processes of batch 2 log the same loss,
    CE and KL at every step as one process of batch 4, each process reading the targets of its own utterances."""
    from helpers.files import RunDir
    from helpers.whisper import teacher_targets

    runs = []
    for name in ("one", "two"):
        run_dir = distillation_run_dir(tmp_path / name, synthetic_run)
        rows = load_manifest(run_dir / "pseudo", "train")
        teacher = models.load_whisper(run_dir / "teacher")
        teacher_targets.write_targets(teacher, rows, RunDir(run_dir).teacher_targets("topk"), 8, 2.0, "topk",
                                      progress=False)
        runs.append(run_dir)
    params = {**DISTILL, "teacher_targets": "topk"}
    run_command("helpers.distill", runs[0], {**params, "per_device_train_batch_size": 4}, processes=1)
    run_command("helpers.distill", runs[1], {**params, "per_device_train_batch_size": 2}, processes=2)

    def curve(run_dir):
        history = read_json(run_dir / "student_kd" / "history.json")
        return [(r["loss"], r["ce"], r["kl"]) for r in history if "loss" in r]

    single, double = curve(runs[0]), curve(runs[1])
    assert len(single) == len(double) == 4
    np.testing.assert_allclose(double, single, rtol=1e-4, atol=1e-5)
    assert read_json(runs[1] / "student_kd" / "metrics.json")["teacher_targets"] == "topk"
