"""The notebooks under papermill with non-default parameters, chained in one run directory.

nbval (see pyproject.toml) re-runs the committed notebooks with their own parameters and compares outputs;
these tests check that other parameters reach the code and that each notebook writes what the next reads.
"""
import json
from pathlib import Path

import pandas as pd
import papermill
import pytest

from helpers.config import TINY_TEACHER
from helpers.course import LocalKernelManager, current_kernel
from helpers.whisper import models

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
pytestmark = pytest.mark.skipif(not (TINY_TEACHER / "model.safetensors").exists(),
                                reason="the tiny teacher asset is missing (python assets/build_tiny_teacher.py)")


def run(name, out_dir, **parameters):
    out = out_dir / f"{name}.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out), parameters=parameters,
                               cwd=str(NOTEBOOKS), kernel_name=current_kernel(), progress_bar=False,
                               kernel_manager_class=LocalKernelManager)
    return json.loads(out.read_text("utf-8"))


def stdout(nb) -> str:
    return "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", []) if o.get("name") == "stdout")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("course")


@pytest.fixture(scope="module")
def recordings(tmp_path_factory, synthetic_run):
    """A folder of untranscribed audio: one recording of 6 synthetic sentences with pauses, several windows long."""
    from helpers.speech.recordings import make_long_recording

    _, result = synthetic_run
    folder = tmp_path_factory.mktemp("recordings")
    make_long_recording(result["train"], pause_s=(0.6, 1.0), out_path=folder / "talk" / "meeting.wav", seed=0)
    return folder


@pytest.fixture(scope="module")
def data_notebook(run_dir, recordings):
    return run("01_data", run_dir, run_dir=str(run_dir), num_train=24, num_valid=8, num_test=8, num_unlabelled=6,
               seed=3, unlabelled_dir=str(recordings))


def test_data_notebook_takes_its_sizes_and_seed_from_the_parameters(data_notebook, run_dir):
    report = json.loads((run_dir / "data" / "report.json").read_text("utf-8"))
    assert report["seed"] == 3
    sizes = {name: s["utterances"] for name, s in report["splits"].items()}
    assert (sizes["train"], sizes["valid"], sizes["test"]) == (24, 8, 8)
    assert "num_train=24, num_valid=8, num_test=8" in stdout(data_notebook)
    assert "2 rows kept, 5 skipped" in stdout(data_notebook)  # the messy-CSV demonstration


def test_data_notebook_cuts_the_untranscribed_recording_into_pieces_beside_the_synthetic_clips(data_notebook,
                                                                                              run_dir):
    report = json.loads((run_dir / "data" / "report.json").read_text("utf-8"))
    recording = report["splits"]["unlabelled"]["recordings"]
    assert recording["files"] == 1 and recording["pieces"] >= 3
    assert report["splits"]["unlabelled"]["utterances"] == 6 + recording["pieces"]


@pytest.fixture(scope="module")
def finetune_notebook(data_notebook, run_dir):
    return run("02_breeze_finetune", run_dir, run_dir=str(run_dir), max_steps=4, eval_steps=2, save_steps=2,
               per_device_train_batch_size=4, per_device_eval_batch_size=8, live_plot=False)


def test_finetune_notebook_trains_the_given_steps_and_saves_a_loadable_teacher(finetune_notebook, run_dir):
    metrics = json.loads((run_dir / "teacher" / "metrics.json").read_text("utf-8"))
    assert metrics["steps"] == 4
    assert 0 <= metrics["valid_cer_after"] and 0 <= metrics["valid_cer_before"] and 0 <= metrics["test_cer"]
    history = json.loads((run_dir / "teacher" / "history.json").read_text("utf-8"))
    assert [r["step"] for r in history if "eval_cer" in r] == [2, 4]
    assert models.load_whisper(run_dir / "teacher").model.config.decoder_layers == 4


@pytest.fixture(scope="module")
def pseudo_notebook(finetune_notebook, run_dir):
    return run("03_pseudo_label", run_dir, run_dir=str(run_dir), cer_threshold=100.0, batch_size=8)


def test_pseudo_label_notebook_writes_the_kept_rows_and_the_encoder_cache(pseudo_notebook, run_dir):
    summary = json.loads((run_dir / "pseudo" / "report.json").read_text("utf-8"))
    pieces = json.loads((run_dir / "data" / "report.json").read_text("utf-8"))["splits"]["unlabelled"]["recordings"]
    untranscribed = 6 + pieces["pieces"]  # the synthetic clips and the recording's pieces
    assert summary["utterances"] == 24 + untranscribed and summary["cer_threshold"] == 100.0
    assert f"24 with a transcript, {untranscribed} without" in stdout(pseudo_notebook)
    everything = pd.read_json(run_dir / "pseudo" / "all.jsonl", lines=True)
    assert everything["offset"].notna().sum() == pieces["pieces"]  # the pieces keep their place in the file
    assert sum(summary["by_status"].values()) == summary["utterances"]  # every piece accounted for
    kept = (run_dir / "pseudo" / "train.jsonl").read_text("utf-8").splitlines()
    assert len(kept) == summary["kept"]
    cache = json.loads((run_dir / "pseudo" / "encoder_cache" / "cache.json").read_text("utf-8"))
    assert cache["shape"][0] == summary["utterances"]  # the transcription pass itself filled the cache


@pytest.fixture(scope="module")
def student_notebook(pseudo_notebook, run_dir):
    return run("04_student_init", run_dir, run_dir=str(run_dir), decoder_layers=3, batch_size=8)


def test_student_notebook_copies_the_layers_asked_for(student_notebook, run_dir):
    layer_map = json.loads((run_dir / "student_init" / "layer_map.json").read_text("utf-8"))
    assert layer_map["decoder"] == [0, 2, 3]  # 4 -> 3: positions 0, 1.5, 3 rounded half up
    assert "bit for bit: True" in stdout(student_notebook)
    assert models.load_whisper(run_dir / "student_init").model.config.decoder_layers == 3


@pytest.fixture(scope="module")
def distill_notebook(student_notebook, run_dir):
    return run("05_distill", run_dir, run_dir=str(run_dir), max_steps=4, eval_steps=2, save_steps=2,
               per_device_train_batch_size=4, per_device_eval_batch_size=8, kl_weight=0.5, live_plot=False)


def test_distill_notebook_uses_the_cache_and_the_given_loss_weights(distill_notebook, run_dir):
    assert "encoder mode: cached" in stdout(distill_notebook)
    metrics = json.loads((run_dir / "student_kd" / "metrics.json").read_text("utf-8"))
    assert metrics["mode"] == "cached" and metrics["steps"] == 4
    assert models.load_whisper(run_dir / "student_kd").model.config.decoder_layers == 3


@pytest.fixture(scope="module")
def adalora_notebook(distill_notebook, run_dir):
    return run("06_adalora", run_dir, run_dir=str(run_dir), max_steps=8, tinit=2, tfinal=2, deltaT=2, eval_steps=4,
               save_steps=4, per_device_train_batch_size=4, per_device_eval_batch_size=8, live_plot=False,
               window_steps=4)


def test_adalora_notebook_tunes_the_student_chosen_on_validation_to_short_windows(adalora_notebook, run_dir):
    metrics = json.loads((run_dir / "student_short" / "metrics.json").read_text("utf-8"))
    assert metrics["steps"] <= 4 and metrics["source"] in ("distilled student", "AdaLoRA student")
    assert "short window (" in stdout(adalora_notebook)


def test_adalora_notebook_trains_the_given_schedule_and_merges_exactly(adalora_notebook, run_dir):
    metrics = json.loads((run_dir / "student_adalora" / "metrics.json").read_text("utf-8"))
    assert metrics["identical_after_merge"] == 8  # every test transcript
    budget = json.loads((run_dir / "student_adalora" / "rank_budget.json").read_text("utf-8"))
    assert budget and max(r["step"] for r in budget) <= 8
    assert models.load_whisper(run_dir / "student_adalora").model.config.decoder_layers == 3
    assert "adapted matrices" in stdout(adalora_notebook)


def test_eval_notebook_compares_every_stage_and_checks_speculative_decoding(adalora_notebook, run_dir):
    nb = run("07_eval", run_dir, run_dir=str(run_dir), batch_size=4, speed_rounds=1, speculative_limit=3)
    results = json.loads((run_dir / "eval" / "results.json").read_text("utf-8"))
    transformers = [r["model"] for r in results["results"] if r["runtime"] == "transformers"]
    assert transformers == ["base teacher", "fine-tuned teacher", "student before KD", "distilled student",
                            "AdaLoRA student", "short-window student", f"{short_source(run_dir)}, short window untuned"]
    exported = [r for r in results["results"] if r["runtime"] == "ctranslate2"]  # the shipping step's exports
    best = results["best_student"]
    assert [r["model"] for r in exported] == [f"{best} (CTranslate2 int8)", f"{best} (CTranslate2 float32)",
                                              "short-window student (CTranslate2 int8, short window)",
                                              f"{best} (CTranslate2 int8, short window, untuned)"]
    assert len(results["results"]) == len(transformers) + len(exported)
    assert all(r["status"] == "ok" and r["looped"] <= r["outputs"] for r in results["results"])
    assert results["reference"] == "fine-tuned teacher"
    assert results["speculative"]["differ"] == 0 and results["speculative"]["utterances"] == 3
    assert "0 transcripts differ from the teacher's greedy ones" in stdout(nb)


def short_source(run_dir) -> str:
    """The student notebook 06's part 2 tuned (chosen on validation)."""
    return json.loads((run_dir / "student_short" / "window_rule.json").read_text("utf-8"))["source"]


def test_eval_notebook_reports_a_missing_model_and_goes_on(adalora_notebook, run_dir, tmp_path):
    models_given = {"fine-tuned teacher": str(run_dir / "teacher"), "missing": str(tmp_path / "no_model")}
    nb = run("07_eval", tmp_path, run_dir=str(run_dir), models=models_given, batch_size=4, speed_rounds=1)
    results = json.loads((run_dir / "eval" / "results.json").read_text("utf-8"))
    status = {r["model"]: r["status"] for r in results["results"]}
    assert status["fine-tuned teacher"] == "ok" and status["missing"].startswith("FileNotFoundError")
    assert "missing on test: FileNotFoundError" in stdout(nb)
