"""Notebook 06, part 2: audio-context distillation teaches the student a short window; decoding with a window."""
import shutil

import pytest
import torch

from helpers import audio_context, config
from helpers.config import TINY_TEACHER
from helpers.files import RunDir, read_json, write_json
from helpers.speech.manifest import load_manifest
from helpers.whisper import decode
from helpers.whisper.models import load_whisper
from helpers.whisper.short_window import WindowRule


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, synthetic_run):
    """A run folder with notebook 01's manifests, pseudo-labels (the train rows) and a 'distilled student' (the
    tiny teacher), then notebook 06's part 2 run for 4 steps."""
    params, _ = synthetic_run
    root = tmp_path_factory.mktemp("short_run")
    run = RunDir(root)
    shutil.copytree(RunDir(params.run_dir).data, run.data)
    run.pseudo.mkdir()
    shutil.copy(run.manifest("train"), run.pseudo_manifest("train"))
    shutil.copytree(TINY_TEACHER, run.student_kd)
    write_json(run.metrics("student_kd"), {"student after KD": {"valid": {"cer": 40.0}}})
    p = config.resolve("06_adalora", {"run_dir": str(root), "window_steps": 4, "per_device_train_batch_size": 3,
                                      "per_device_eval_batch_size": 8, "live_plot": False})
    return run, p, audio_context.run_phase(p)


def test_the_short_window_student_is_saved_with_its_rule_and_its_validation_figures(short_run):
    run, p, metrics = short_run
    assert (run.student_short / "config.json").exists()
    rule = read_json(run.student_short / audio_context.RULE_FILE)
    chosen = [m for m in metrics["margins"] if m["chosen"]]
    assert [m["margin_s"] for m in metrics["margins"]] == sorted(p.window_margins_s) and len(chosen) == 1
    assert WindowRule(rule["margin_s"], rule["floor_s"], rule["round_to_s"]) == WindowRule(
        chosen[0]["margin_s"], p.window_floor_s, p.window_round_s)
    assert metrics["valid"]["short window, tuned"]["cer"] == chosen[0]["cer"]
    assert rule["source"] == "distilled student" and metrics["steps"] <= 4
    assert set(metrics["valid"]) == {"full window", "short window, untuned", "short window, tuned"}
    assert all(0 <= v["cer"] and v["utterances"] == len(load_manifest(run.data, "valid"))
               for v in metrics["valid"].values())
    assert read_json(run.phase_results("audio_context")) == metrics


def _margins(cers: dict, tolerance=2.0, margins=None):
    p = config.resolve("06_adalora", {"window_margins_s": margins if margins is not None else sorted(cers),
                                      "window_cer_tolerance": tolerance})
    return audio_context.choose_margin(p, lambda rule: {"cer": cers[rule.margin_s]}, full_cer=40.0)


def test_the_margin_kept_is_the_smallest_within_the_tolerance_of_the_full_window_on_valid():
    rule, rows = _margins({0.25: 50.0, 0.5: 41.5, 1.0: 40.5})
    assert rule.margin_s == 0.5 and [r["chosen"] for r in rows] == [False, True, False]
    assert _margins({0.25: 50.0, 0.5: 41.5, 1.0: 40.5}, tolerance=1.0)[0].margin_s == 1.0
    assert _margins({0.5: 45.0, 1.0: 44.0, 1.5: 44.0})[0].margin_s == 1.0  # none close: lowest CER, smaller on a tie
    rule, rows = _margins({0.5: 60.0}, margins=[])  # no candidates: window_margin_s alone
    assert rule.margin_s == 0.5 and rows[0]["chosen"]
    with pytest.raises(ValueError, match="window_margins_s"):
        config.resolve("06_adalora", {"window_margins_s": [0.5, -1.0]})


def test_the_phase_is_skipped_when_turned_off(short_run):
    _, p, _ = short_run
    off = config.resolve("06_adalora", {"run_dir": str(p.run_dir), "short_window": False})
    assert audio_context.run_phase(off) is None


def test_identical_decoder_states_are_at_distance_zero_and_padding_does_not_count():
    states = (torch.randn(2, 3, 4), torch.randn(2, 3, 4))
    labels = torch.tensor([[1, 2, -100], [1, -100, -100]])
    assert audio_context.state_distance(states, states, labels) == 0
    moved = tuple(s.clone() for s in states)
    moved[0][:, 2] += 5.0  # only padded positions move: (0, 2) and (1, 2) are padding
    assert audio_context.state_distance(moved, states, labels) == 0
    moved[0][0, 0] += 1.0  # one real position of one layer by 1 in each of 4 features: 4 / (3 positions x 4) / 2 layers
    assert float(audio_context.state_distance(moved, states, labels)) == pytest.approx(4 / 12 / 2)


def test_a_window_rule_that_would_cut_speech_is_refused_naming_the_parameter():
    p = config.resolve("06_adalora", {})
    with pytest.raises(ValueError, match="window_margin_s"):
        config.resolve("06_adalora", {"window_margin_s": -0.5})
    assert audio_context.window_rule(p).margin_s == p.window_margin_s


def test_transcribing_with_a_window_as_long_as_the_full_one_changes_nothing(synthetic_run):
    _, result = synthetic_run
    loaded = load_whisper(TINY_TEACHER)
    rows = result["test"]
    full, _ = decode.transcribe(loaded.model, loaded.processor, rows, 4, progress=False)
    wide = WindowRule(margin_s=10.0, floor_s=0.0, round_to_s=0.5)  # always capped at the 5 s window
    same, _ = decode.transcribe(loaded.model, loaded.processor, rows, 4, progress=False, window=wide)
    assert same == full
    frames = []
    decode.transcribe(loaded.model, loaded.processor, rows, 4, progress=False, window=WindowRule(0.0, 0.0, 0.5),
                      on_batch=lambda idx, hidden, out: frames.append(hidden.shape[1]))
    assert max(frames) < 250  # the encoder read fewer than the full window's 250 positions


def test_evaluation_reads_the_short_window_rows_and_adds_the_untuned_one(short_run):
    from helpers import evaluate, report
    from helpers.whisper import measure

    run, p, _ = short_run
    paths, windows = evaluate.short_windows(run.root, evaluate.find_models(run.root))
    assert list(paths) == ["distilled student", "short-window student", "distilled student, short window untuned"]
    assert paths["distilled student, short window untuned"] == str(run.student_kd)
    assert windows["short-window student"] == windows["distilled student, short window untuned"] == \
        audio_context.window_rule(p)
    rows = load_manifest(run.data, "test")
    results, predictions = measure.evaluate_models(paths, {"test": rows}, batch_size=4, rounds=1, progress=False,
                                                   windows=windows)
    assert results.set_index("model")["window"].to_dict() == {
        "distilled student": "full", "short-window student": audio_context.window_rule(p).describe(),
        "distilled student, short window untuned": audio_context.window_rule(p).describe()}
    assert (results["looped"] <= results["outputs"]).all()
    verdicts = report.window_verdicts(results, predictions, windows).set_index("model")
    # both short-window rows are compared with the distilled student at its full window
    assert set(verdicts["against"]) == {"distilled student (full window)"}
    assert set(verdicts.index) == {"short-window student", "distilled student, short window untuned"}
    assert set(verdicts["accuracy"]) <= {"better", "worse", "within noise"}
