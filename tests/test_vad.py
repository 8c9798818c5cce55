"""speech.vad and audio.cut_at_pauses(detector="silero"): speech found by voice activity detection, so that noise,
however loud or changing, is a pause and never a piece of its own.

Fixtures: the espeak clips of the ``synthetic_run`` fixture (with their lead-in and tail in the manifest) joined
into recordings whose pauses carry the clips' own noise; noises of every kind the corpus mixes in, alone; a
recording whose background jumps 20 dB in a pause.
"""
import numpy as np
import pandas as pd
import pytest

from helpers.speech import audio, recordings, synth
from helpers.speech.vad import voice_spans

SR = 16_000


@pytest.fixture(scope="module")
def clips(synthetic_run):
    _, result = synthetic_run
    return pd.concat([result[s] for s in ("train", "valid", "test")], ignore_index=True)


@pytest.fixture(scope="module")
def made(clips, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vad_recordings")
    return recordings.make_recordings(clips, 3, folder, seed=1, clips=(3, 5), pause_s=(0.4, 1.2), no_pause_share=0.0)


def _speech(rec, clips):
    """True speech stretches (seconds) of a recording: each clip's place without its lead-in and tail."""
    lead, tail = (dict(zip(clips["audio"], clips[c])) for c in ("lead_s", "tail_s"))
    table = rec.clips
    return (table["start"] + table["audio"].map(lead)).to_numpy(), (table["end"] - table["audio"].map(tail)).to_numpy()


def test_voice_spans_find_every_clip_and_nothing_else(made, clips):
    for rec in made:
        samples = audio.read_recording(rec.path, SR)
        starts, ends = _speech(rec, clips)
        spans = np.array(voice_spans(samples, SR), float) / SR
        assert len(spans) == len(starts), f"{rec.path.name}: one stretch per clip, got {spans.round(2).tolist()}"
        assert np.abs(spans[:, 0] - starts).max() < 0.3 and np.abs(spans[:, 1] - ends).max() < 0.3
        pieces = audio.cut_at_pauses(samples, SR, 5.0, pad_s=0.3, detector="silero", cut_pause_s=0.3)
        for start, end in pieces:  # each piece holds one clip's speech, whole, and a little around it
            inside = (starts >= start - 1e-6) & (ends <= end + 1e-6)
            # 0.3 s of padding on a stretch found within 0.3 s
            assert inside.sum() == 1 and start >= starts[inside][0] - 0.61 and end <= ends[inside][0] + 0.61


@pytest.mark.parametrize("kind", synth.NOISE_KINDS)
def test_noise_alone_is_no_speech(kind):
    rng = np.random.default_rng(3)
    noise = synth.make_noise(kind, 4 * SR, rng)
    noise = (0.1 * noise / np.sqrt(np.mean(noise ** 2))).astype(np.float32)
    assert voice_spans(noise, SR) == [], f"{kind} noise taken for speech"
    assert audio.cut_at_pauses(noise, SR, 5.0, detector="silero") == []


def test_a_jump_in_the_background_is_a_pause_for_silero(made, clips):
    rec = made[0]
    samples = audio.read_recording(rec.path, SR)
    starts, ends = _speech(rec, clips)
    cut = int(round((ends[0] + starts[1]) / 2 * SR))  # louder background from the middle of the first pause on
    louder = samples.copy()
    louder[cut:] += 0.1 * np.random.default_rng(0).standard_normal(len(samples) - cut).astype(np.float32)
    for start, end in audio.cut_at_pauses(louder, SR, 5.0, pad_s=0.0, detector="silero", cut_pause_s=0.3):
        overlap = np.clip(np.minimum(end, ends) - np.maximum(start, starts), 0, None)
        assert overlap.sum() > 0.5 * (end - start), f"a piece of noise at {start:.2f}-{end:.2f} s"


@pytest.mark.parametrize("rate", [8_000, 44_100])
def test_other_sampling_rates_give_the_same_places(made, rate):
    at16 = np.array(voice_spans(audio.read_recording(made[1].path, SR), SR), float) / SR
    other = np.array(voice_spans(audio.read_recording(made[1].path, rate), rate), float) / rate
    tolerance = 0.3 if rate < SR else 0.1  # 8 kHz audio has lost the hiss above 4 kHz; else a few 32 ms frames
    assert other.shape == at16.shape and np.abs(other - at16).max() < tolerance


def test_bad_settings_are_named():
    silence = np.zeros(SR, np.float32)
    assert voice_spans(silence, SR) == [] and voice_spans(np.zeros(0, np.float32), SR) == []
    with pytest.raises(ValueError, match="threshold is a speech probability"):
        voice_spans(silence, SR, threshold=1.5)
    with pytest.raises(ValueError, match="min_silence_s and min_speech_s are seconds"):
        voice_spans(silence, SR, min_silence_s=-1)
    with pytest.raises(ValueError, match="detector must be 'energy'"):
        audio.cut_at_pauses(silence, SR, 5.0, detector="webrtc")
