"""Specification of helpers.evaluate, helpers.whisper.decode and helpers.speculative: metrics on known predictions,
RTFx, the side-by-side evaluation of several models with a failing one among them, the results files, and
speculative decoding that must give the teacher's greedy transcripts exactly.

The models are the shipped tiny teacher (assets/tiny-whisper-zh, 4+4 layers) and students cut from it;
the clips are the synthetic fixture's (3 test clips). Nothing touches the Hugging Face hub.
"""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import evaluate, files, report, speculative, student
from helpers.config import TINY_TEACHER
from helpers.figures.memory import PeakMemory
from helpers.files import write_json
from helpers.speech import text
from helpers.speech.manifest import load_manifest
from helpers.whisper import decode, measure, models
from tests.fixtures import build_tiny_whisper, write_tone


# ---------------------------------------------------------------------------------------------
# Metrics and RTFx
# ---------------------------------------------------------------------------------------------
def test_score_on_known_predictions():
    refs = ["今天下午三點開會", "明天天氣很好"]
    preds = ["今天下午三点开会", "明天天氣不好"]  # the first differs only in Simplified spelling
    s = text.score(refs, preds, fold="t2s")
    assert s["cer"] == pytest.approx(100 * 1 / 14)  # one substitution in 8 + 6 characters
    assert s["exact_match"] == 50.0
    assert text.score(refs, preds, fold=None)["cer"] == pytest.approx(100 * 4 / 14)  # 點开会 + 不 count


def test_score_of_perfect_predictions_is_zero_everywhere():
    refs = ["開 meeting 之前 check email"]
    assert text.score(refs, refs) == {"cer": 0.0, "wer": 0.0, "mer": 0.0, "exact_match": 100.0}


def test_rtfx_is_audio_seconds_per_compute_second():
    assert decode.rtfx(60.0, 4.0) == 15.0
    with pytest.raises(ValueError, match="positive"):
        decode.rtfx(60.0, 0.0)


# ---------------------------------------------------------------------------------------------
# Transcribing with the tiny teacher
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher():
    return models.load_whisper(TINY_TEACHER)


@pytest.fixture(scope="module")
def test_rows(synthetic_run):  # noqa: F811
    params, _ = synthetic_run
    return load_manifest(params.run_dir / "data", "test")


def test_transcribe_stats_add_up_and_batching_does_not_change_transcripts(teacher, test_rows):
    batched, stats = decode.transcribe(teacher.model, teacher.processor, test_rows, batch_size=3, progress=False)
    single, _ = decode.transcribe(teacher.model, teacher.processor, test_rows, batch_size=1, progress=False)
    assert batched == single and len(batched) == len(test_rows)
    assert stats["compute_s"] == pytest.approx(stats["encoder_s"] + stats["decoder_s"])
    assert stats["audio_s"] == pytest.approx(test_rows["duration"].sum())
    assert stats["rtfx"] == pytest.approx(stats["audio_s"] / stats["compute_s"])
    assert stats["decoder_steps_per_s"] == pytest.approx(stats["decoder_steps"] / stats["decoder_s"])


def test_transcribe_refuses_an_empty_manifest(teacher, test_rows):
    with pytest.raises(ValueError, match="no rows"):
        decode.transcribe(teacher.model, teacher.processor, test_rows.head(0), progress=False)


# ---------------------------------------------------------------------------------------------
# What to evaluate
# ---------------------------------------------------------------------------------------------
def fake_stage(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")


def test_find_models_lists_the_stages_that_exist_in_course_order(tmp_path):
    for name in ("student_kd", "teacher", "student_init"):  # made out of order; student_adalora missing
        fake_stage(tmp_path / name)
    write_json(tmp_path / "teacher" / "metrics.json", {"base_model": "MediaTek-Research/Breeze-ASR-25"})
    found = evaluate.find_models(tmp_path)
    assert list(found) == ["base teacher", "fine-tuned teacher", "student before KD", "distilled student"]
    assert found["base teacher"] == "MediaTek-Research/Breeze-ASR-25"
    assert found["distilled student"] == str(tmp_path / "student_kd")


def test_find_models_uses_the_models_given(tmp_path):
    assert evaluate.find_models(tmp_path, {"mine": "/x"}) == {"mine": "/x"}
    with pytest.raises(TypeError, match="map a name"):
        evaluate.find_models(tmp_path, ["/x"])


def test_find_models_says_what_to_run_when_nothing_is_there(tmp_path):
    with pytest.raises(FileNotFoundError, match="run notebooks 02 to 06"):
        evaluate.find_models(tmp_path)


def test_load_test_set_reads_a_csv_and_counts_what_it_skips(tmp_path):
    write_tone(tmp_path / "a.wav", 1.0)
    write_tone(tmp_path / "long.wav", 7.0)
    (tmp_path / "set.csv").write_text("file,中文意譯\na.wav,你好\nmissing.wav,再見\nlong.wav,太長了\n", "utf-8")
    rows, skipped = evaluate.load_test_set(tmp_path / "set.csv", max_duration_s=5.0)
    assert rows["text"].tolist() == ["你好"] and rows["duration"].tolist() == [1.0]
    assert sorted(skipped["reason"]) == ["longer than 5 s", "missing file"]


def test_load_test_set_refuses_a_set_with_no_usable_row(tmp_path):
    (tmp_path / "set.csv").write_text("file,中文意譯\nmissing.wav,再見\n", "utf-8")
    with pytest.raises(ValueError, match=r"set.csv has no usable rows .*missing file"):
        evaluate.load_test_set(tmp_path / "set.csv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate.load_test_set(tmp_path / "nope.jsonl")


def test_load_test_sets_defaults_to_notebook_01s_test_split(synthetic_run):  # noqa: F811
    params, _ = synthetic_run
    sets, skipped = evaluate.load_test_sets(None, params.run_dir)
    assert list(sets) == ["test"] and len(sets["test"]) == 3 and skipped.empty


def test_describe_models_reads_configs_without_loading_and_notes_a_missing_one(tmp_path):
    table = evaluate.describe_models({"tiny": str(TINY_TEACHER), "gone": str(tmp_path / "gone")})
    assert table.loc["tiny", "from"] == "assets/tiny-whisper-zh"  # relative to the repository
    assert (table.loc["tiny", "encoder layers"], table.loc["tiny", "decoder layers"]) == (4, 4)
    assert "cannot read its config" in table.loc["gone", "note"]


# ---------------------------------------------------------------------------------------------
# Several models side by side, one of them broken
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def student_dir(teacher, tmp_path_factory):
    small, maps = student.make_student(teacher, "teacher", decoder_layers=2)
    return student.save_student(small, tmp_path_factory.mktemp("student"), maps)


@pytest.fixture(scope="module")
def evaluated(student_dir, test_rows):
    paths = {"fine-tuned teacher": str(TINY_TEACHER), "broken": "/no/such/model",
             "student before KD": str(student_dir)}
    results, predictions = measure.evaluate_models(paths, {"test": test_rows, "again": test_rows.head(2)},
                                                    batch_size=2, rounds=3, progress=False, device="cpu")
    return report.add_comparisons(results, predictions), predictions


def test_a_failing_model_keeps_its_error_and_the_others_their_results(evaluated):
    results, _ = evaluated
    status = results.set_index(["model", "test_set"])["status"]
    assert status[("broken", "test")].startswith("FileNotFoundError: model folder /no/such/model does not exist")
    assert status[("fine-tuned teacher", "again")] == "ok" and status[("student before KD", "test")] == "ok"
    assert len(results) == 6


def test_results_carry_sizes_speeds_and_speed_up_over_the_teacher(evaluated):
    results, _ = evaluated
    ok = results[results["status"] == "ok"].set_index(["model", "test_set"])
    teacher, small = ok.loc[("fine-tuned teacher", "test")], ok.loc[("student before KD", "test")]
    assert (teacher["decoder_layers"], small["decoder_layers"]) == (4, 2)
    assert small["params_M"] < teacher["params_M"]
    assert teacher["speed_up"] == 1.0
    assert small["speed_up"] == pytest.approx(small["rtfx"] / teacher["rtfx"])  # ratio of the median rounds
    assert small["speed_up_low"] <= small["speed_up"] <= small["speed_up_high"]
    assert small["speed_verdict"] in ("faster", "slower", "within timing noise")
    assert (ok["rounds"] == 3).all() and (ok["compute_s_min"] <= ok["compute_s"]).all()
    assert (ok["compute_s"] <= ok["compute_s_max"]).all()
    assert results.attrs["reference"] == "fine-tuned teacher"
    assert (ok["peak_memory_MB"] >= 0).all() and (ok["size_MB"] > 0).all()


def test_results_carry_a_bootstrap_interval_and_a_paired_verdict_against_the_teacher(evaluated):
    results, predictions = evaluated
    ok = results[results["status"] == "ok"].set_index(["model", "test_set"])
    small = ok.loc[("student before KD", "test")]
    assert small["cer_low"] <= small["cer"] <= small["cer_high"]
    assert small["cer_diff"] == pytest.approx(small["cer"] - ok.loc[("fine-tuned teacher", "test"), "cer"])
    assert small["cer_diff_low"] <= small["cer_diff"] <= small["cer_diff_high"]
    assert small["cer_verdict"] in ("better", "worse", "within noise")
    utt = predictions[(predictions["model"] == "student before KD") & (predictions["test_set"] == "test")]
    assert 100 * utt["errors"].sum() / utt["n_ref"].sum() == pytest.approx(small["cer"])


def test_predictions_have_one_row_per_model_and_utterance_with_its_scores(evaluated, test_rows):
    results, predictions = evaluated
    assert len(predictions) == 2 * (len(test_rows) + 2)  # two working models, both test sets
    teacher = predictions[(predictions["model"] == "fine-tuned teacher") & (predictions["test_set"] == "test")]
    corpus = results.set_index(["model", "test_set"]).loc[("fine-tuned teacher", "test"), "cer"]
    assert text.score(teacher["reference"].tolist(), teacher["prediction"].tolist())["cer"] == pytest.approx(corpus)


def test_results_files_are_written_and_read_back(evaluated, tmp_path):
    results, predictions = evaluated
    out = evaluate.save_results(tmp_path / "eval", results, predictions, {"speculative": {"differ": 0}})
    table = pd.read_csv(out / "results.csv")
    assert len(table) == len(results) and set(table["model"]) == {"fine-tuned teacher", "broken", "student before KD"}
    saved = json.loads((out / "results.json").read_text("utf-8"))
    assert saved["reference"] == "fine-tuned teacher" and saved["speculative"] == {"differ": 0}
    broken = [r for r in saved["results"] if r["model"] == "broken"]
    assert len(broken) == 2 and all(r["cer"] is None for r in broken)  # no number (JSON null), not NaN
    assert len(pd.read_csv(out / "predictions.csv")) == len(predictions)


def test_comparison_table_and_conclusion_are_computed_from_the_results(evaluated):
    results, _ = evaluated
    table = report.comparison_table(results, "test")
    assert list(table.index) == ["fine-tuned teacher", "broken", "student before KD"]
    assert table.loc["fine-tuned teacher", "speed-up"] == 1.0
    text = report.conclusion(results, "test", "student before KD")
    small = results.set_index(["model", "test_set"]).loc[("student before KD", "test")]
    assert f"{small['params_M']:.1f}M parameters" in text and f"CER {small['cer']:.1f}%" in text


def test_worst_utterances_come_highest_cer_first(evaluated):
    _, predictions = evaluated
    worst = report.worst_utterances(predictions, "student before KD", n=2, test_set="test")
    assert len(worst) == 2 and worst["cer"].is_monotonic_decreasing
    with pytest.raises(ValueError, match="no predictions for model 'nobody'"):
        report.worst_utterances(predictions, "nobody")


def test_evaluate_models_refuses_an_empty_test_set(test_rows):
    with pytest.raises(ValueError, match="'empty' has no rows"):
        measure.evaluate_models({"t": str(TINY_TEACHER)}, {"empty": test_rows.head(0)}, progress=False)


def test_peak_memory_sees_a_large_allocation():
    with PeakMemory("cpu", interval=0.001) as mem:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        block.sum()
        import time
        time.sleep(0.05)
    assert mem.peak_mb > 40


# ---------------------------------------------------------------------------------------------
# Speculative decoding
# ---------------------------------------------------------------------------------------------
def test_speculative_decoding_gives_the_teachers_greedy_transcripts(teacher, student_dir, test_rows):
    small = models.load_whisper(student_dir)
    summary, speed = speculative.speculative_check(teacher, small, test_rows, rounds=2, warmup=0)
    assert summary["differ"] == 0 and summary["utterances"] == len(test_rows)
    assert summary["assistant"].startswith("decoder only")  # the student's encoder is the teacher's
    assert speed.loc["teacher + student (speculative)", "CER %"] == speed.loc["teacher alone", "CER %"]
    assert list(speed.index) == ["teacher alone", "teacher + student (speculative)", "student alone"]


def test_an_assistant_with_its_own_encoder_runs_whole_and_is_still_exact(teacher, student_dir, test_rows):
    small = models.load_whisper(student_dir)
    with torch.no_grad():
        small.model.model.encoder.layers[0].fc1.weight.mul_(1.01)
    assistant, how = speculative.make_assistant(teacher, small)
    assert how.startswith("whole student") and assistant is small.model
    summary, _ = speculative.speculative_check(teacher, small, test_rows.head(2), rounds=1, warmup=0)
    assert summary["speed_verdict"] in ("faster", "slower", "within timing noise")
    assert summary["differ"] == 0


def test_the_decoder_only_assistant_leaves_the_students_config_alone(teacher, student_dir):
    small = models.load_whisper(student_dir)
    speculative.make_assistant(teacher, small)
    assert small.model.config.is_encoder_decoder  # WhisperForCausalLM's __init__ would flip a shared config


def test_speculative_decoding_refuses_another_tokenizer(teacher):
    model, processor = build_tiny_whisper()  # 300 BPE tokens: not the tiny teacher's 1000
    other = models.LoadedWhisper(model, processor, "other")
    with pytest.raises(ValueError, match="speculative decoding needs the teacher's tokenizer"):
        speculative.make_assistant(teacher, other)


def test_speculative_decoding_refuses_batches(teacher, test_rows):
    with pytest.raises(ValueError, match="batch_size must be 1"):
        decode.transcribe(teacher.model, teacher.processor, test_rows, batch_size=2, progress=False,
                            assistant_model=teacher.model)


def test_pick_speculative_pair():
    paths = {"base teacher": "a", "fine-tuned teacher": "b", "student before KD": "c", "distilled student": "d"}
    assert speculative.pick_speculative_pair(paths, True) == ("fine-tuned teacher", "distilled student")
    assert speculative.pick_speculative_pair(paths, "student before KD") == ("fine-tuned teacher", "student before KD")
    assert speculative.pick_speculative_pair(paths, False) is None
    assert speculative.pick_speculative_pair({"distilled student": "d"}, True) is None
    with pytest.raises(ValueError, match="names no model"):
        speculative.pick_speculative_pair(paths, "AdaLoRA student")


def test_the_student_to_ship_is_chosen_on_validation_never_on_test(tmp_path):
    run = files.RunDir(tmp_path)
    # the AdaLoRA student is better on test but worse on validation: validation decides
    files.write_json(run.metrics("student_kd"), {"student after KD": {"valid": {"cer": 30.0}, "test": {"cer": 45.0}}})
    files.write_json(run.metrics("student_adalora"), {"valid_cer_merged": 31.0, "test_cer_merged": 40.0})
    assert files.best_student(tmp_path) == "distilled student"
    assert files.best_student(tmp_path, available=("AdaLoRA student", "student before KD")) == "AdaLoRA student"


def test_without_validation_figures_the_distilled_student_is_shown(tmp_path):
    assert files.best_student(tmp_path) == "distilled student"
    assert files.best_student(tmp_path, available=("student before KD",)) == "student before KD"
