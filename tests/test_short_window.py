"""Short audio windows: the encoder's own modules on fewer frames, the window rule, batches by window, and
CTranslate2 on the same trimmed features.

The tiny shipped teacher has a 5 s window (500 log-mel frames, 250 encoder positions, width 192). Whisper's
features have 100 frames a second; two frames make one encoder position.
"""
import copy
import random

import numpy as np
import pytest
import torch
from torch import nn

from helpers import config
from helpers.whisper import models
from helpers.whisper.short_window import (
    WindowRule,
    encode_short,
    short_window_generate,
    short_window_transcribe,
    until_end,
    window_batches,
    window_features,
)


@pytest.fixture(scope="module")
def tiny():
    loaded = models.load_whisper(config.TINY_TEACHER)
    loaded.model.eval()
    return loaded


@pytest.fixture(scope="module")
def clips():
    """Three espeak Mandarin sentences, 2.3-2.6 s each at 16 kHz (a few ms of synthesis each)."""
    from helpers.speech import synth

    plan = synth.plan_corpus(synth.default_splits(2, 2, seed=3), seed=3)[:3]
    return [synth.render(row) for row in plan]


def random_features(batch: int = 2, frames: int = 500, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 80, frames, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# encode_short against transformers' own encoder
# ---------------------------------------------------------------------------------------------
def test_full_window_equals_the_transformers_encoder(tiny):
    features = random_features()
    with torch.no_grad():
        expected = tiny.model.get_encoder()(features).last_hidden_state
        torch.testing.assert_close(encode_short(tiny.model, features, 500).last_hidden_state, expected)
        torch.testing.assert_close(encode_short(tiny.model, features).last_hidden_state, expected)


def test_short_window_has_half_as_many_positions_as_frames(tiny):
    with torch.no_grad():
        out = encode_short(tiny.model, random_features(), 200)  # the first 2 s of the 5 s window
    assert out.last_hidden_state.shape == (2, 100, 192)


def test_short_window_differs_from_the_full_window_only_through_attention_and_its_last_position(tiny):
    # Without the layers (no attention), each position depends only on nearby frames: conv2 position p reads conv1
    # outputs 2p-1 .. 2p+1, and conv1 output f reads frames f-1 .. f+1. The last of 100 positions (p = 99) reads
    # frame 200, which the 200-frame window lacks (conv padding: 0) and the full window has: positions 0..98 are
    # the full window's, position 99 is not.
    no_layers = copy.deepcopy(tiny.model)
    no_layers.model.encoder.layers = nn.ModuleList()
    features = random_features()
    with torch.no_grad():
        full = encode_short(no_layers, features, 500).last_hidden_state
        short = encode_short(no_layers, features, 200).last_hidden_state
        torch.testing.assert_close(short[:, :99], full[:, :99])
        assert not torch.allclose(short[:, 99], full[:, 99])
        # with its layers, every position attends over the whole window: the windows' outputs differ everywhere
        with_layers = encode_short(tiny.model, features, 200).last_hidden_state
        full_layers = encode_short(tiny.model, features, 500).last_hidden_state[:, :100]
    assert (with_layers - full_layers).abs().amax(dim=-1).min() > 1e-3


def test_short_window_output_feeds_generate(tiny):
    with torch.no_grad():
        encoded = encode_short(tiny.model, random_features(1), 300)
        out = tiny.model.generate(encoder_outputs=encoded, max_new_tokens=5)
    assert out.shape[0] == 1 and 1 <= out.shape[1] <= 5


@pytest.mark.parametrize("frames", [199, 0, 502, 600])
def test_encode_short_refuses_odd_or_too_many_frames(tiny, frames):
    with pytest.raises(ValueError, match="frames"):
        encode_short(tiny.model, random_features(1, 600), frames)


# ---------------------------------------------------------------------------------------------
# The window rule
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule, duration_s, full_frames, expected", [
    (WindowRule(2.0, 0.0, 1.0), 3.1, 3000, 600),    # 3.1 + 2 = 5.1 s, rounded up to 6 s = 600 frames
    (WindowRule(2.0, 0.0, 1.0), 3.1, 500, 500),     # 600 frames is past the 5 s window: the full window
    (WindowRule(0.0, 0.0, 0.1), 5.1, 3000, 510),    # 5.1 s is 510 frames (floating 509.99999999999994)
    (WindowRule(0.5, 0.0, 0.25), 2.3, 3000, 300),   # 2.8 s = 11.2 quarters -> 12 quarters = 3 s
    (WindowRule(0.0, 10.0, 1.0), 2.0, 3000, 1000),  # 2 s, but the floor is 10 s
    (WindowRule(0.0, 0.0, 0.01), 1.234, 3000, 124),  # 123.4 frames -> 124 (one-frame rounding)
    (WindowRule(0.0, 0.0, 0.01), 1.205, 3000, 122),  # 120.5 -> 121 frames, odd -> 122 (2 frames a position)
    (WindowRule(0.0, 0.0, 1.0), 0.0, 3000, 100),  # an empty clip: 0 s -> 0 steps -> at least one step, 1 s
    (WindowRule(0.0, 0.0, 0.01), 0.0, 3000, 2),   # ... of one frame -> even: 2 frames, one position
    (WindowRule(2.0, 0.0, 1.0), 29.5, 3000, 3000),  # 31.5 s -> 32 s, past the 30 s window: the full window
    (WindowRule(0.0, 0.0, 1.0), 45.0, 3000, 3000),  # a clip longer than the window always gets the full window
    (WindowRule(0.0, 30.0, 1.0), 1.0, 3000, 3000),  # a floor of exactly the window is allowed
])
def test_window_rule_arithmetic(rule, duration_s, full_frames, expected):
    assert rule.frames_for(duration_s, full_frames) == expected


@pytest.mark.parametrize("kwargs, name", [
    (dict(margin_s=-0.5, floor_s=0.0, round_to_s=1.0), "margin_s"),
    (dict(margin_s=1.0, floor_s=-1.0, round_to_s=1.0), "floor_s"),
    (dict(margin_s=1.0, floor_s=0.0, round_to_s=0.0), "round_to_s"),
    (dict(margin_s=1.0, floor_s=0.0, round_to_s=-1.0), "round_to_s"),
    (dict(margin_s=1.0, floor_s=0.0, round_to_s=0.001), "round_to_s"),  # below one frame (0.01 s)
    (dict(margin_s=float("nan"), floor_s=0.0, round_to_s=1.0), "margin_s"),
    (dict(margin_s="2", floor_s=0.0, round_to_s=1.0), "margin_s"),
])
def test_a_rule_that_would_cut_speech_is_refused_naming_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        WindowRule(**kwargs)


def test_a_floor_above_the_window_is_refused_naming_floor_s():
    rule = WindowRule(margin_s=1.0, floor_s=6.0, round_to_s=1.0)
    with pytest.raises(ValueError, match="floor_s = 6.0 s is longer than the model's full window \\(5 s"):
        rule.frames_for(2.0, 500)


def test_rule_is_frozen_and_round_trips_as_a_dict():
    rule = WindowRule(2.0, 0.0, 1.0)
    with pytest.raises(AttributeError):
        rule.margin_s = 0.0
    assert WindowRule(**rule.to_dict()) == rule and rule.to_dict() == {"margin_s": 2.0, "floor_s": 0.0,
                                                                       "round_to_s": 1.0}


# ---------------------------------------------------------------------------------------------
# Batches by window, features, generation
# ---------------------------------------------------------------------------------------------
def test_clips_are_batched_by_window():
    # margin 0.5 s, whole seconds: 4.6 -> 5.1 -> 6 s (600); 1.0 -> 2 s (200); 2.2 -> 3 s (300); 1.3 -> 2 s (200);
    # 30 -> 31 s, past the window (3000)
    durations = [4.6, 1.0, 2.2, 1.3, 30.0]
    rule = WindowRule(0.5, 0.0, 1.0)
    assert window_batches(durations, rule, 3000) == [(200, [1, 3]), (300, [2]), (600, [0]), (3000, [4])]
    assert window_batches(durations, rule, 3000, batch_size=1)[:2] == [(200, [1]), (200, [3])]
    assert window_batches(durations, None, 3000) == [(3000, [0, 1, 2, 3, 4])]


def test_window_features_are_the_full_windows_first_frames(tiny, clips):
    fe = tiny.feature_extractor
    full, full_mask = window_features(fe, clips, 500)
    short, short_mask = window_features(fe, clips, 300)
    assert full.shape == (3, 80, 500) and short.shape == (3, 80, 300) and short_mask.shape == (3, 300)
    np.testing.assert_array_equal(short, full[..., :300])
    np.testing.assert_array_equal(full, fe(clips, sampling_rate=16_000, return_tensors="np").input_features)


def test_until_end():
    assert until_end([5, 6, 1000, 7, 1000], 1000) == [5, 6] and until_end([5, 6], 1000) == [5, 6]


def test_full_windows_generate_what_transformers_generates(tiny, clips):
    features = torch.from_numpy(window_features(tiny.feature_extractor, clips, 500)[0])
    with torch.no_grad():
        plain = tiny.model.generate(features, max_new_tokens=40)
    expected = [until_end(seq, 1000) for seq in plain.tolist()]  # <|endoftext|> is id 1000 in the tiny vocabulary
    assert short_window_generate(tiny.model, tiny.feature_extractor, clips, None, max_new_tokens=40) == expected
    # a rule whose windows reach the full window (2.3-2.6 s + 2 s, in whole seconds: 5 s = 500 frames) changes nothing
    assert short_window_generate(tiny.model, tiny.feature_extractor, clips, WindowRule(2.0, 0.0, 1.0),
                                 max_new_tokens=40, batch_size=2) == expected


def test_short_windows_transcribe_in_input_order(tiny, clips):
    rule = WindowRule(0.5, 0.0, 0.5)  # 2.3-2.6 s + 0.5 s -> 3.0 or 3.5 s: two windows
    windows = {frames for frames, _ in window_batches([len(c) / 16_000 for c in clips], rule, 500)}
    assert len(windows) >= 2 and max(windows) < 500
    texts = short_window_transcribe(tiny.model, tiny.processor, clips, rule, max_new_tokens=40)
    one_by_one = [short_window_transcribe(tiny.model, tiny.processor, [c], rule, max_new_tokens=40)[0] for c in clips]
    assert texts == one_by_one and all(texts)


def test_a_feature_extractor_of_another_window_is_refused(tiny, clips):
    with pytest.raises(ValueError, match="feature extractor's window"):
        short_window_generate(tiny.model, models.tiny_feature_extractor(30), clips, None)


# ---------------------------------------------------------------------------------------------
# CTranslate2 on the same trimmed features
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ct2_float32(tmp_path_factory):
    import ctranslate2

    from helpers import export

    folder = export.export_model(config.TINY_TEACHER, quantization="float32",
                                 out_root=tmp_path_factory.mktemp("short_window_export"))
    return ctranslate2.models.Whisper(str(folder), device="cpu", intra_threads=2)


def test_ct2_encodes_a_short_window_as_transformers_does(tiny, ct2_float32):
    from helpers.whisper.short_window_ct2 import encode

    features = random_features(2, 300, seed=1)
    with torch.no_grad():
        expected = encode_short(tiny.model, features).last_hidden_state.numpy()
    np.testing.assert_allclose(np.array(encode(ct2_float32, features.numpy())), expected, atol=1e-4)


def test_ct2_float32_short_window_transcripts_equal_transformers(tiny, ct2_float32, clips):
    from helpers.whisper.short_window_ct2 import short_window_generate_ct2

    prompt = tiny.tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|zh|>", "<|transcribe|>",
                                                   "<|notimestamps|>"])
    rng = random.Random(0)
    waves = clips + [clips[0][: int(16_000 * rng.uniform(1.2, 1.6))]]  # and a cut clip: 1.2-1.6 s
    for rule in (WindowRule(0.5, 0.0, 0.5), WindowRule(0.0, 0.0, 0.5), None):
        hf = short_window_generate(tiny.model, tiny.feature_extractor, waves, rule, max_new_tokens=40)
        ct2 = short_window_generate_ct2(ct2_float32, tiny.feature_extractor, waves, rule, prompt, 1000,
                                        max_new_tokens=40)
        assert ct2 == hf, rule


def test_ct2_generate_stops_at_max_new_tokens(ct2_float32):
    from helpers.whisper.short_window_ct2 import encode, generate

    encoded = encode(ct2_float32, random_features(1, 200, seed=2).numpy())
    ids = generate(ct2_float32, encoded, [1001, 1003, 1005, 1009], 1000, 5, suppress_tokens=[1000])
    assert len(ids[0]) == 5  # <|endoftext|> suppressed: exactly 5 tokens


def _bench_file(folder, name, device, dtype, ct2):
    """A results file shaped as bench/short_window_speed.py writes it (two clip lengths, one batch size)."""
    import json
    ups = {"hf_student_full": 2.0, "hf_student_short": 3.0}
    if ct2:
        ups |= {"ct2_student_full": 4.0, "ct2_student_short": 9.5}
    rows = [{"clip_s": s, "speed_up_vs_teacher": {k: {"median": v * s / 5} for k, v in ups.items()}} for s in (2, 5)]
    machine = {"cpu": "Some CPU", "device": device, "threads": 2, "torch": "2.x", "ctranslate2": "4.8" if ct2 else None,
               "note": "quiet"}
    args = {"batch_sizes": [1], "new_tokens": 32, "dtype": dtype, "ct2_compute_type": "int8"}
    (folder / name).write_text(json.dumps({"machine": machine, "args": args,
                                           "results": [{"shape": "whisper-small", "batch": 1, "rows": rows}]}))


def test_short_window_benchmark_table_names_device_and_dtype(tmp_path):
    """Notebook 07's real-shape table: one row per device, shape, batch and clip; CPU and GPU files kept apart with
    their transformers dtype; a GPU file without CTranslate2 has no CTranslate2 figures; smoke runs are left out."""
    from helpers import report
    _bench_file(tmp_path, "short_window_speed_cpu_whisper-small.json", "cpu", "float32", ct2=True)
    _bench_file(tmp_path, "short_window_speed_gpu_whisper-small.json", "NVIDIA H200", "float16", ct2=False)
    _bench_file(tmp_path, "short_window_speed_cpu_whisper-small_quick.json", "cpu", "float32", ct2=True)
    table, machines = report.short_window_benchmark(tmp_path)
    assert len(table) == 4 and len(machines) == 2
    cpu, gpu = table.loc[("CPU Some CPU", "whisper-small", 1, 5)], table.loc[("NVIDIA H200", "whisper-small", 1, 5)]
    assert cpu["transformers dtype"] == "float32" and cpu["CTranslate2 student, short window"] == 9.5
    assert gpu["transformers dtype"] == "float16" and np.isnan(gpu["CTranslate2 student, short window"])
    assert gpu["transformers student, short window"] == 3.0
    assert "NVIDIA H200" in machines[1] and "float16" in machines[1] and "no CTranslate2" in machines[1]
    assert "CTranslate2 4.8 int8" in machines[0]
    empty, none = report.short_window_benchmark(tmp_path / "nowhere")
    assert empty.empty and none == []
