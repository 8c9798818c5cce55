"""audio.cut_at_pauses: pieces of a long recording that fit a window, cut where the speaker pauses.

The recording: the synthetic corpus's clips (espeak speech, most with noise, 0.05-0.6 s of padding either side),
repeated at random gains with random pauses between them, under a faint room tone, for three minutes.
"""
import random

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from helpers.speech import audio

SR = 16_000


@pytest.fixture(scope="module")
def recording(synthetic_run, tmp_path_factory):
    """``(path, samples, clips)``: ~3 minutes of clips with pauses of 0.4-1.5 s, written as a float wav; ``clips``
    holds each clip's speech: start and end (seconds), its padding left out (the corpus's lead_s and tail_s)."""
    _, result = synthetic_run
    rows = pd.concat([result[s] for s in ("train", "test", "unlabelled")], ignore_index=True)
    waves = [audio.read_row(r, SR) for r in rows.to_dict("records")]
    pads = rows[["lead_s", "tail_s"]].to_numpy()
    rng, noise = random.Random(0), np.random.default_rng(0)
    parts, clips, at = [], [], 0
    while at < 180 * SR:
        gap = np.zeros(int(rng.uniform(0.4, 1.5) * SR), np.float32)
        i = len(clips) % len(waves)
        clip = waves[i] * rng.uniform(0.3, 1.0)
        parts += [gap, clip]
        start, end = at + len(gap), at + len(gap) + len(clip)
        clips.append((start + pads[i][0] * SR, end - pads[i][1] * SR))
        at += len(gap) + len(clip)
    parts.append(np.zeros(SR, np.float32))
    samples = np.concatenate(parts)
    samples = (samples + noise.standard_normal(len(samples)) * 10 ** (-55 / 20)).astype(np.float32)  # room tone
    path = tmp_path_factory.mktemp("pauses") / "long.wav"
    sf.write(path, samples, SR, subtype="FLOAT")
    return path, samples, [(s / SR, e / SR) for s, e in clips]


def inside_speech(t: float, clips) -> bool:
    return any(s + 0.01 < t < e - 0.01 for s, e in clips)


@pytest.mark.parametrize("max_s", [5.0, 30.0])
def test_pieces_fit_the_window_and_end_in_pauses(recording, max_s):
    _, samples, clips = recording
    pieces = audio.cut_at_pauses(samples, SR, max_s)
    assert len(samples) / SR > 180 and len(pieces) >= (180 / max_s)
    assert all(0 <= s < e <= len(samples) / SR and e - s <= max_s + 1e-9 for s, e in pieces)
    assert all(a[1] <= b[0] for a, b in zip(pieces, pieces[1:])), "pieces in order, not overlapping"
    cuts = [t for piece in pieces for t in piece]
    assert [t for t in cuts if inside_speech(t, clips)] == []
    for s, e in clips:  # nothing is dropped: every clip's speech lies within one piece
        assert any(ps <= s and e <= pe for ps, pe in pieces), (s, e)


def test_quieter_recording_is_cut_at_the_same_pauses(recording):
    _, samples, clips = recording
    pieces = audio.cut_at_pauses(samples * 0.1, SR, 5.0)  # 20 dB down: the thresholds follow the loudness
    assert [t for piece in pieces for t in piece if inside_speech(t, clips)] == []
    assert all(e - s <= 5.0 for s, e in pieces)


def test_pieces_read_back_are_the_recordings_samples(recording):
    path, samples, _ = recording
    for start, end in audio.cut_at_pauses(samples, SR, 5.0)[::7]:
        piece = audio.read_audio(path, SR, offset=start, duration=end - start)
        first = int(round(start * SR))
        np.testing.assert_array_equal(piece, samples[first:first + len(piece)])
        assert abs(len(piece) - (end - start) * SR) <= 1


def test_a_stretch_without_pauses_is_split_hard_with_overlap():
    rng = np.random.default_rng(1)
    t = np.arange(12 * SR) / SR
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    samples = np.concatenate([np.zeros(SR, np.float32), tone, np.zeros(SR, np.float32)])
    samples += (rng.standard_normal(len(samples)) * 1e-4).astype(np.float32)
    pieces = audio.cut_at_pauses(samples, SR, 5.0, overlap_s=0.5)
    assert len(pieces) == 3 and all(e - s <= 5.0 for s, e in pieces)
    assert all(a[1] - b[0] >= 0.5 - 1e-3 for a, b in zip(pieces, pieces[1:])), "neighbours overlap by overlap_s"
    assert pieces[0][0] <= 1.0 + 0.05 and pieces[-1][1] >= 13.0 - 0.05, "the whole tone is covered"


def test_short_pieces_are_merged_up_to_the_window():
    blip = (0.3 * np.sin(2 * np.pi * 300 * np.arange(int(0.5 * SR)) / SR)).astype(np.float32)
    pause = np.zeros(int(0.5 * SR), np.float32)
    samples = np.concatenate([pause] + [blip, pause] * 10)  # ten 0.5 s sounds 0.5 s apart, from 0.5 s to 10 s
    pieces = audio.cut_at_pauses(samples, SR, 5.0, pad_s=0.0)
    assert len(pieces) == 2, pieces  # five sounds (4.5 s from first onset to last end) to a piece
    assert all(e - s <= 5.0 for s, e in pieces) and abs(pieces[0][0] - 0.5) < 0.02 and abs(pieces[1][1] - 10) < 0.02


@pytest.mark.parametrize("samples", [np.zeros(10 * SR, np.float32), np.zeros(0, np.float32),
                                     (np.random.default_rng(2).standard_normal(5 * SR) * 1e-4).astype(np.float32)],
                         ids=["zeros", "empty", "faint noise (-80 dBFS)"])
def test_silence_gives_no_pieces(samples):
    assert audio.cut_at_pauses(samples, SR, 5.0) == []


@pytest.mark.parametrize("kwargs, name", [({"max_s": 0}, "max_s"), ({"max_s": 5, "overlap_s": 3}, "overlap_s"),
                                          ({"max_s": 5, "overlap_s": -1}, "overlap_s")])
def test_bad_parameters_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        audio.cut_at_pauses(np.zeros(SR, np.float32), SR, **kwargs)


def test_stereo_is_refused():
    with pytest.raises(ValueError, match="mono"):
        audio.cut_at_pauses(np.zeros((SR, 2), np.float32), SR, 5.0)
