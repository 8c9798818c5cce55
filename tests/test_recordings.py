"""Recordings made of clips with their background through the pauses (speech.recordings), the long-form
measurement (whisper.long_measure), the cut rules it tunes (audio.cut_at_pauses) and bad recordings.

The clips: the 12 labelled clips of the ``synthetic_run`` fixture (espeak, ~3 s each, 70 % with noise of a kind at
10-25 dB SNR, the rest clean), joined 3-5 at a time so that a test takes seconds.
"""
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from helpers.config import TINY_TEACHER
from helpers.speech import audio, recordings
from helpers.whisper import long_measure
from helpers.whisper.longform import Segment

SR = 16_000


@pytest.fixture(scope="module")
def clips(synthetic_run):
    _, result = synthetic_run
    return pd.concat([result[s] for s in ("train", "valid", "test")], ignore_index=True)


@pytest.fixture(scope="module")
def made(clips, tmp_path_factory):
    folder = tmp_path_factory.mktemp("recordings")
    return recordings.make_recordings(clips, 3, folder, seed=0, clips=(3, 5), pause_s=(0.6, 0.9), no_pause_share=0.0)


def test_the_same_seed_makes_the_same_recordings(clips, tmp_path):
    one = recordings.make_recordings(clips, 2, tmp_path / "a", seed=5, clips=(3, 4))
    two = recordings.make_recordings(clips, 2, tmp_path / "b", seed=5, clips=(3, 4))
    other = recordings.make_recordings(clips, 2, tmp_path / "c", seed=6, clips=(3, 4))
    for a, b in zip(one, two):
        assert np.array_equal(sf.read(a.path)[0], sf.read(b.path)[0])
        pd.testing.assert_frame_equal(a.clips, b.clips)
    assert any(len(a.clips) != len(c.clips) or list(a.clips["audio"]) != list(c.clips["audio"])
               or not np.array_equal(sf.read(a.path)[0], sf.read(c.path)[0]) for a, c in zip(one, other))
    table = pd.read_json(tmp_path / "a" / "recordings.jsonl", lines=True)
    assert len(table) == sum(len(r.clips) for r in one) and set(table["recording"]) == {r.path.name for r in one}
    assert not list((tmp_path / "a").glob(".*part*")), "no temporary file left behind"


def test_clip_boundaries_and_texts(made, clips):
    for rec in made:
        table = rec.clips
        assert 3 <= len(table) <= 5 and table["audio"].is_unique
        assert rec.reference == " ".join(table["text"])
        assert table["start"].iloc[0] == 0 and table["pause_before_s"].iloc[0] == 0
        pauses = table["start"].iloc[1:].to_numpy() - table["end"].iloc[:-1].to_numpy()
        assert np.allclose(pauses, table["pause_before_s"].iloc[1:])
        assert ((pauses > 0.6 - 1e-3) & (pauses < 0.9 + 1e-3)).all()
        durations = {a: d for a, d in zip(clips["audio"], clips["duration"])}
        assert np.allclose(table["end"] - table["start"], [durations[a] for a in table["audio"]], atol=1e-3)
        assert table["end"].iloc[-1] == pytest.approx(sf.info(rec.path).duration, abs=1e-4)


def test_no_pause_at_all_when_asked(clips, tmp_path):
    rec = recordings.make_recordings(clips, 1, tmp_path, clips=(4, 4), no_pause_share=1.0)[0]
    assert (rec.clips["start"].iloc[1:].to_numpy() == rec.clips["end"].iloc[:-1].to_numpy()).all()


def test_the_background_goes_on_through_the_pauses(made):
    checked = 0
    for rec in made:
        samples, _ = sf.read(rec.path, dtype="float32")
        table = rec.clips
        for i in range(1, len(table)):
            before, after = table["noise_rms"].iloc[i - 1], table["noise_rms"].iloc[i]
            pause = samples[int(table["end"].iloc[i - 1] * SR) + 200: int(table["start"].iloc[i] * SR) - 200]
            rms = float(np.sqrt(np.mean(pause ** 2)))
            expected = np.sqrt((before ** 2 + after ** 2) / 2)  # equal-power fade from one noise to the other
            if expected > 1e-3:
                assert rms > 0 and 0.5 * expected < rms < 2 * expected, (rec.path.name, i, rms, expected)
                checked += 1
    assert checked, "some pause lies between noisy clips"


def test_the_noise_level_is_the_one_in_the_clip(clips):
    # brown noise is left out: its power sits at the lowest frequencies, so 0.13 s of it is no sample of its level
    noisy = clips[~clips["noise"].isin(["none", "brown"])].head(3)
    assert len(noisy)
    for row in noisy.to_dict("records"):
        wave = audio.read_row(row)
        lead_in = wave[int(0.02 * SR): int(0.15 * SR)]  # synth pads every clip with 0.2 s of noise alone
        measured = float(np.sqrt(np.mean(lead_in ** 2)))
        assert recordings.noise_level(wave, row["snr_db"]) == pytest.approx(measured, rel=0.35)
        assert recordings.noise_level(wave) == pytest.approx(measured, rel=0.5)  # from its quietest frames


@pytest.mark.parametrize("kwargs, message", [({"n": 0}, "n must be"), ({"clips": (0, 3)}, "clips must be"),
                                             ({"pause_s": (-1.0, 1.0)}, "pause_s must be")])
def test_bad_arguments_are_named(clips, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        recordings.make_recordings(clips, **{"n": 1, "out_dir": tmp_path, **kwargs})
    with pytest.raises(ValueError, match="no rows"):
        recordings.make_recordings(clips.head(0), 1, tmp_path)


def test_boundary_hits_worked_by_hand():
    table = pd.DataFrame({"start": [0.0, 3.5], "end": [3.0, 6.0]})
    # one segment over both clips: starts 0.1 (finds 0.0), ends 6.2 (finds 6.0); 3.0 and 3.5 are 2.9 s away
    assert long_measure.boundary_hits([Segment(0.1, 6.2, "x")], table) == (2, 0)
    assert long_measure.boundary_hits([Segment(0.1, 3.2, "x"), Segment(3.3, 6.4, "y")], table) == (4, 2)
    assert long_measure.boundary_hits([], table) == (0, 0)


def test_measurement_tables(made, tmp_path):
    teacher = long_measure.load_model(TINY_TEACHER)
    measured = long_measure.measure_long(teacher, made, tmp_path)
    row = measured.summary.iloc[0]
    assert len(measured.summary) == 1 and row["recordings"] == 3 and row["clips"] == sum(len(r.clips) for r in made)
    assert row["method"] == "pauses" and row["long-form vs clips"] in ("better", "worse", "within noise")
    low, high = (float(v) for v in row["long-form 95 % CI"].split(" - "))
    assert low <= row["long-form CER %"] <= high and 0 <= row["boundaries within 0.5 s %"] <= 100
    assert list(measured.recordings["recording"]) == [r.path.name for r in made] and len(measured.clip_texts) == 3
    assert (tmp_path / "recording_000.srt").exists() and (tmp_path / "recording_000.txt").exists()
    table = long_measure.try_settings(teacher, made[:2], tmp_path / "try",
                                      {"pad 0.1": {"pad_s": 0.1}, "pad 0.3": {"pad_s": 0.3}})
    assert sorted(table.index) == ["pad 0.1", "pad 0.3"] and table["recordings"].tolist() == [2, 2]


def test_cut_rules(tmp_path):
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(SR) / SR).astype(np.float32)
    gap = np.zeros(int(0.5 * SR), np.float32)
    samples = np.concatenate([tone, gap, tone, gap, tone])  # 3 x 1 s of sound, 0.5 s pauses: 4 s, fits 5 s
    assert len(audio.cut_at_pauses(samples, SR, 5.0)) == 1, "merged: one piece fits"
    assert len(audio.cut_at_pauses(samples, SR, 5.0, cut_pause_s=0.3)) == 3, "every pause of 0.3 s or more cuts"
    rng = np.random.default_rng(0)
    loud = 0.02 * rng.standard_normal(2 * SR).astype(np.float32)  # noise 21 dB below the tone, then a quiet room
    samples = np.concatenate([tone + loud[:SR], loud, tone, np.zeros(3 * SR, np.float32), tone * 0.2])
    global_floor = audio.cut_at_pauses(samples, SR, 5.0, pad_s=0.0)
    local_floor = audio.cut_at_pauses(samples, SR, 5.0, pad_s=0.0, floor_window_s=2.0, cut_pause_s=0.3)
    assert global_floor[0][1] > 2.5, "the loud noise counts as sound against the quiet room's floor"
    assert local_floor[0][1] == pytest.approx(1.0, abs=0.1), "against its own floor it is a pause"


def test_bad_recordings_are_named(tmp_path, made):
    sf.write(tmp_path / "quiet.wav", np.zeros(8 * SR, np.float32), SR)
    sf.write(tmp_path / "short.wav", 0.3 * np.sin(np.arange(2 * SR) / 10).astype(np.float32), SR)
    broken = 0.1 * np.ones(8 * SR, np.float32)
    broken[100] = np.nan
    sf.write(tmp_path / "nan.wav", broken, SR, subtype="FLOAT")
    (tmp_path / "notes.wav").write_text("not audio", "utf-8")
    for name, message in (("quiet", "quiet.wav: the recording is silent"), ("short", "short.wav: the recording "
                          "is 2.0 s, shorter than one window"), ("nan", "nan.wav: the audio holds 1 NaN"),
                          ("notes", "notes.wav: cannot read the audio file")):
        with pytest.raises(ValueError, match=message):
            recordings.check_recording(tmp_path / f"{name}.wav", window_s=5.0)
    with pytest.raises(FileNotFoundError, match="gone.wav does not exist"):
        recordings.check_recording(tmp_path / "gone.wav")
    silent = made[0]._replace(path=tmp_path / "quiet.wav")
    with pytest.raises(ValueError, match="quiet.wav: the recording is silent"):
        long_measure.measure_long(TINY_TEACHER, [silent], tmp_path)


def test_the_notebooks_measurement_makes_recordings_longer_than_the_window_or_says_why(synthetic_run, tmp_path):
    from helpers.whisper import long_measure

    _, result = synthetic_run
    rows = result["test"]  # 3 synthetic clips of about 3 s: a recording of all 3 is longer than the 5 s window
    measure, note = long_measure.measure_split(str(TINY_TEACHER), rows, tmp_path / "long", recordings=2)
    assert measure is not None and note == "2 recordings of 3-3 clips"
    assert len(measure.recordings) == 2
    short, why = long_measure.measure_split(str(TINY_TEACHER), rows.head(1), tmp_path / "one", recordings=2)
    assert short is None and "no long recording can be made" in why
