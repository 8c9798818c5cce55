"""Exports carry the window rule of a short-window student, and the runtime applies it to clips (issue 27, item 4).

The "short-window student" here is the tiny teacher itself with a ``window_rule.json`` beside it (what notebook 06,
part 2 writes): the mechanics are the same whatever the weights learnt. Exports are float32, so that a transcript
can be compared with the transformers model's. What is checked: ``export.json`` records the rule (and the file is
copied); ``transcribe_export`` encodes each batch over the rule's window (the encoder is watched: fewer frames), and
over full windows when told ``window=None`` or when the export has no rule; a long recording keeps full windows;
``compare_exports`` takes ``(model, rule)`` and says which window each row ran; ``ship`` adds the short-window rows.
"""
import dataclasses
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from helpers import config, export
from helpers.files import read_json, write_json
from helpers.speech import recordings, text
from helpers.whisper import decode, longform, models, runtime
from helpers.whisper.short_window import RULE_FILE, WindowRule

RULE = WindowRule(margin_s=0.5, floor_s=1.0, round_to_s=0.5)
FULL = 500  # the tiny teacher's 5 s window, in log-mel frames


class Watched:
    """A CTranslate2 Whisper whose ``encode`` notes the frames of every batch it is given."""

    def __init__(self, model):
        self._model, self.frames = model, []

    def encode(self, features, *args, **kwargs):
        self.frames.append(features.shape[-1])
        return self._model.encode(features, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


def watched(path, threads: int = 2) -> runtime.Export:
    loaded = runtime.load_export(path, threads=threads)
    return dataclasses.replace(loaded, model=Watched(loaded.model))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder with the tiny teacher as ``teacher`` and as ``student_kd``, and as ``student_short`` with a
    window rule; the short one and the teacher exported to float32."""
    root = tmp_path_factory.mktemp("export_window")
    for folder in ("teacher", "student_kd", "student_short"):
        shutil.copytree(config.TINY_TEACHER, root / folder)
    write_json(root / "student_short" / RULE_FILE, {**RULE.to_dict(), "source": "distilled student",
                                                    "source_folder": "student_kd"})
    exports = {name: export.export_model(name, root, quantization="float32") for name in ("teacher", "student_short")}
    return SimpleNamespace(root=root, exports=exports, teacher=models.load_whisper(root / "teacher"))


@pytest.fixture(scope="module")
def clips(synthetic_run):
    _, result = synthetic_run
    return pd.concat([result["test"], result["train"]], ignore_index=True)


def test_the_export_records_the_rule(run):
    short, plain = (read_json(run.exports[name] / "export.json") for name in ("student_short", "teacher"))
    assert short["window_rule"] == {"margin_s": 0.5, "floor_s": 1.0, "round_to_s": 0.5}
    assert read_json(run.exports["student_short"] / RULE_FILE)["margin_s"] == 0.5, "copied for plain CTranslate2"
    assert plain["window_rule"] is None and not (run.exports["teacher"] / RULE_FILE).exists()


def test_transcribe_export_applies_the_rule(run, clips):
    loaded = watched(run.exports["student_short"])
    texts, stats = runtime.transcribe_export(loaded, clips, batch_size=4)
    assert stats["window"] == RULE.to_dict()
    longest = sorted((len(w) / 16_000 for w in runtime._waves(clips, 16_000)), reverse=True)  # batches by length
    assert loaded.model.frames == [RULE.frames_for(longest[i], FULL) for i in range(0, len(longest), 4)]
    assert max(loaded.model.frames) < FULL, "the clips (~3 s) get windows shorter than 5 s"
    # the same windows as the transformers path (decode.transcribe with the rule), in float32 the same text
    hf, _ = decode.transcribe(run.teacher.model, run.teacher.processor, clips, 4, progress=False, shard=False,
                              window=RULE)
    assert text.score(hf, texts)["cer"] <= 5.0
    loaded.model.frames.clear()
    full, stats = runtime.transcribe_export(loaded, clips, batch_size=4, window=None)
    assert stats["window"] is None and set(loaded.model.frames) == {FULL}
    assert stats["encoder_s"] > 0 and full != texts, "an untuned model reads short windows differently"


def test_a_rule_that_gives_full_windows_changes_nothing(run, clips):
    loaded = runtime.load_export(run.exports["student_short"], threads=2)
    full, _ = runtime.transcribe_export(loaded, clips, window=None)
    wide, stats = runtime.transcribe_export(loaded, clips, window=WindowRule(margin_s=5.0, floor_s=0.0,
                                                                              round_to_s=1.0))
    assert wide == full and stats["window"]["margin_s"] == 5.0


def test_an_export_without_a_rule_runs_full_windows(run, clips):
    loaded = watched(run.exports["teacher"])
    texts, stats = runtime.transcribe_export(loaded, clips, batch_size=16)
    assert stats["window"] is None and set(loaded.model.frames) == {FULL}
    short, stats = runtime.transcribe_export(loaded, clips, batch_size=16, window=RULE)  # a rule given overrides
    assert stats["window"] == RULE.to_dict() and max(loaded.model.frames[1:]) < FULL
    tuned, _ = runtime.transcribe_export(runtime.load_export(run.exports["student_short"], threads=2), clips)
    assert short == tuned, "the same weights with the same rule"
    with pytest.raises(ValueError, match="window must be 'auto', None"):
        runtime.transcribe_export(loaded, clips, window="short")


def test_a_clip_longer_than_the_window_keeps_the_full_window(run, clips):
    loaded = watched(run.exports["student_short"])
    clip = runtime._waves(clips.head(1), 16_000)[0]
    _, stats = runtime.transcribe_export(loaded, [np.tile(clip, 3)[: 6 * 16_000]])  # 6 s, the window is 5 s
    assert loaded.model.frames == [FULL] and stats["window"] == RULE.to_dict()


def test_long_recordings_keep_full_windows(run, clips, tmp_path):
    rec = recordings.make_long_recording(clips.head(4), 1.0, tmp_path / "talk.wav")
    loaded = watched(run.exports["student_short"])
    long = longform.transcribe_long(loaded, rec.path, out_dir=tmp_path / "short")
    assert long.method == "pauses" and long.stats["window"] is None and set(loaded.model.frames) == {FULL}
    plain = longform.transcribe_long(run.exports["teacher"], rec.path, out_dir=tmp_path / "plain", threads=2)
    assert [s.text for s in long.segments] == [s.text for s in plain.segments], "the rule is ignored"


@pytest.mark.parametrize("rule, parameter", [({"margin_s": -1.0, "floor_s": 0.0, "round_to_s": 1.0}, "margin_s"),
                                             ({"margin_s": 1.0, "floor_s": 9.0, "round_to_s": 1.0}, "floor_s"),
                                             ({"margin_s": 1.0, "floor_s": 0.0}, "round_to_s")])
def test_a_bad_rule_is_refused_naming_the_parameter(run, tmp_path, rule, parameter):
    shutil.copytree(config.TINY_TEACHER, tmp_path / "student_short")
    write_json(tmp_path / "student_short" / RULE_FILE, rule)
    with pytest.raises(ValueError, match=parameter):
        export.export_model(tmp_path / "student_short", out_root=tmp_path / "export", quantization="float32")
    assert not (tmp_path / "export" / "student_short-ct2-float32").exists()


def test_compare_exports_says_which_window(run, clips):
    table = export.compare_exports({"teacher": run.teacher, "teacher short": (run.teacher, RULE),
                                    "short export": run.exports["student_short"],
                                    "short export full": (run.exports["student_short"], None)},
                                   clips.head(6), rounds=1, warmup=1, threads=2)
    assert list(table["window"]) == ["full", RULE.describe(), RULE.describe(), "full"]
    assert text.score(table.loc["teacher", "predictions"], table.loc["short export full", "predictions"])["cer"] <= 5
    assert text.score(table.loc["teacher short", "predictions"], table.loc["short export", "predictions"])["cer"] <= 5


@pytest.fixture(scope="module")
def shipped(run, clips):
    return export.ship(run.root, "distilled student", clips.head(4), ("float32",), rounds=1)


def test_ship_adds_the_short_window_rows(run, shipped):
    exports, table = shipped
    assert exports["short-window float32"] == run.exports["student_short"]
    assert list(table.index) == ["fine-tuned teacher (transformers fp32)", "distilled student (transformers fp32)",
                                 "distilled student (CTranslate2 float32)",
                                 "short-window student (CTranslate2 float32, short window)",
                                 "distilled student (CTranslate2 float32, short window, untuned)"]
    assert list(table["window"]) == ["full"] * 3 + [RULE.describe()] * 2
    # here both students are the teacher's weights: the untuned row reads what the "tuned" one reads
    assert table["predictions"].iloc[3] == table["predictions"].iloc[4]


def test_the_exports_become_rows_of_the_results_with_intervals_and_the_shipping_runs_speed_up(run, clips, shipped):
    """The exports join results.csv (issue 27, item 3): one row each in the results table's shape, their
    utterances in the predictions table, a CER interval and a paired difference from the teacher, and the speed-up
    over the teacher from the shipping run in which they took turns with it."""
    from helpers import report
    _, table = shipped
    rows = clips.head(4)
    results, predictions = report.export_rows(table, "test", rows, "t2s")
    exported = [name for name in table.index if "CTranslate2" in name]
    assert list(results["model"]) == exported and set(results["runtime"]) == {"ctranslate2"}
    assert all(Path(p).is_dir() for p in results["path"])
    assert len(predictions) == len(exported) * len(rows)
    assert list(predictions["reference"].iloc[:4]) == rows["text"].tolist()
    per_model = predictions.groupby("model", sort=False)
    for name, utt in per_model:
        assert 100 * utt["errors"].sum() / utt["n_ref"].sum() == pytest.approx(table.loc[name, "cer"])
    teacher = "fine-tuned teacher (transformers fp32)"
    own = text.utterance_scores(rows["text"].tolist(), table.loc[teacher, "predictions"], fold="t2s")
    main = pd.DataFrame([{"test_set": "test", "model": teacher, "status": "ok", "audio_s": rows["duration"].sum(),
                          "compute_s": 99.0, "compute_s_min": 98.0, "compute_s_max": 100.0}])
    main_utt = pd.DataFrame({"test_set": "test", "model": teacher, "errors": [s["char_sub"] + s["char_del"] +
                                                                              s["char_ins"] for s in own],
                             "n_ref": [s["char_n_ref"] for s in own]})
    both = report.add_comparisons(pd.concat([main, results], ignore_index=True),
                                  pd.concat([main_utt, predictions], ignore_index=True), teacher)
    both = report.ship_speed(both, table).set_index("model")
    for name in exported:
        assert both.loc[name, "cer_low"] <= both.loc[name, "cer"] <= both.loc[name, "cer_high"]
        # the RTFx range is that of the audio the export read, so it holds its median (the plot's whiskers)
        assert both.loc[name, "rtfx_low"] <= both.loc[name, "rtfx"] <= both.loc[name, "rtfx_high"]
        assert pd.notna(both.loc[name, "cer_diff"]) and both.loc[name, "cer_verdict"] is not None
        # the speed-up comes from the shipping run (compute_s 99 s in the other table would make it huge)
        ratio = table.loc[teacher, "compute_s"] / table.loc[name, "compute_s"]
        assert both.loc[name, "speed_up"] == pytest.approx(ratio)
