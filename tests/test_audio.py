"""Specification of helpers.speech.audio: reading any file or a piece of one, mono, resampled; log-mel features."""
import numpy as np
import pytest
import soundfile as sf

from helpers.speech.audio import duration_of, log_mel, read_audio, read_row
from helpers.whisper.models import tiny_feature_extractor
from tests.fixtures import write_tone


def test_read_audio_averages_stereo_channels_to_mono(tmp_path):
    t = np.arange(16_000) / 16_000
    left = 0.4 * np.sin(2 * np.pi * 440 * t)
    right = 0.2 * np.sin(2 * np.pi * 660 * t)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 16_000, subtype="FLOAT")
    audio = read_audio(tmp_path / "stereo.wav")
    assert audio.shape == (16_000,)
    np.testing.assert_allclose(audio, (left + right) / 2, atol=1e-6)


def test_read_audio_resamples_8_khz_to_16_khz(tmp_path):
    # 1 s at 8 kHz = 8000 samples -> 16000 samples at 16 kHz: twice as many
    write_tone(tmp_path / "phone.wav", 1.0, sample_rate=8_000, freq=300)
    assert len(read_audio(tmp_path / "phone.wav")) == 2 * 8_000


def test_read_audio_keeps_the_tone_when_resampling(tmp_path):
    # a 300 Hz tone stays a 300 Hz tone: its spectrum peaks at bin 300 of a 1 s, 16 kHz FFT
    write_tone(tmp_path / "phone.wav", 1.0, sample_rate=8_000, freq=300)
    audio = read_audio(tmp_path / "phone.wav")
    assert int(np.argmax(np.abs(np.fft.rfft(audio)))) == 300


def test_read_audio_resamples_to_the_rate_asked_for(tmp_path):
    # 1 s at 16 kHz read at 8 kHz -> 8000 samples
    write_tone(tmp_path / "tone.wav", 1.0)
    assert len(read_audio(tmp_path / "tone.wav", sampling_rate=8_000)) == 8_000


def test_read_audio_returns_a_16_khz_file_as_it_is_in_float32(tmp_path):
    path = write_tone(tmp_path / "tone.wav", 0.5)
    audio = read_audio(path)
    expected, _ = sf.read(path, dtype="float32")
    assert audio.dtype == np.float32 and audio.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(audio, expected)


def test_read_audio_of_a_file_without_samples_raises(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16_000)
    with pytest.raises(ValueError, match="holds no samples"):
        read_audio(tmp_path / "empty.wav")




# ---------------------------------------------------------------- pieces of a file


def numbered_seconds(path, seconds=4, rate=16_000):
    """A file whose samples in second k all equal k / 10 (so a piece shows where it was cut)."""
    audio = np.repeat(np.arange(seconds) / 10, rate).astype(np.float32)
    sf.write(path, audio, rate, subtype="FLOAT")
    return path


def test_read_audio_reads_the_piece_asked_for(tmp_path):
    path = numbered_seconds(tmp_path / "counted.wav")
    piece = read_audio(path, offset=1.0, duration=2.0)
    assert len(piece) == 2 * 16_000
    np.testing.assert_allclose(piece[:16_000], 0.1) and np.testing.assert_allclose(piece[16_000:], 0.2)


def test_read_audio_of_a_piece_past_the_end_raises_naming_the_offset(tmp_path):
    path = numbered_seconds(tmp_path / "counted.wav")
    with pytest.raises(ValueError, match="holds no samples from 9 s"):
        read_audio(path, offset=9.0, duration=1.0)


def test_read_row_reads_the_whole_file_without_an_offset_and_the_piece_with_one(tmp_path):
    path = str(numbered_seconds(tmp_path / "counted.wav"))
    assert len(read_row({"audio": path, "duration": 4.0})) == 4 * 16_000
    assert len(read_row({"audio": path, "duration": 4.0, "offset": float("nan")})) == 4 * 16_000  # pandas' missing
    np.testing.assert_allclose(read_row({"audio": path, "offset": 3.0, "duration": 1.0}), 0.3)


def test_duration_of_reads_the_header(tmp_path):
    assert duration_of(write_tone(tmp_path / "t.flac", 1.5, sample_rate=8_000)) == pytest.approx(1.5)


def test_log_mel_pads_every_clip_to_the_window():
    fe = tiny_feature_extractor(window_s=5)  # 80 mel bins, 100 frames a second
    features = log_mel(fe, [np.zeros(8_000, np.float32), np.zeros(32_000, np.float32)])
    assert tuple(features.shape) == (2, 80, 500)
