"""The widgets' plain functions on fixed inputs, and the widgets' callbacks driven from Python as a learner would
(ipywidgets lets a test set a slider's value or an upload's content and click a button)."""
import datetime
import io

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from helpers import config, student, widgets
from helpers.whisper import models
from tests.fixtures import write_tone


def upload_of(path, name=None):
    """What ipywidgets 8's FileUpload holds after a file is chosen."""
    data = path.read_bytes()
    return ({"name": name or path.name, "type": "", "size": len(data), "content": memoryview(data),
             "last_modified": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)},)


# ---------------------------------------------------------------- uploads


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg"])
def test_an_upload_of_any_rate_and_channels_becomes_16_khz_mono(tmp_path, suffix):
    path = write_tone(tmp_path / f"stereo{suffix}", 1.0, sample_rate=44_100, channels=2)
    audio, name = widgets.read_upload(upload_of(path))
    assert name == path.name and audio.dtype == np.float32 and len(audio) == pytest.approx(16_000, abs=2)


@pytest.mark.parametrize("value, message", [
    ((), "choose one audio file"),
    (({"name": "notes.txt", "content": memoryview(b"hello")},), "notes.txt: not one of the formats"),
    (({"name": "fake.wav", "content": memoryview(b"not audio at all")},), "fake.wav cannot be read as audio"),
])
def test_a_bad_upload_gets_a_message_naming_the_file(value, message):
    with pytest.raises(ValueError, match=message):
        widgets.read_upload(value)


def test_an_empty_recording_is_refused(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16_000)
    with pytest.raises(ValueError, match="empty.wav holds no samples"):
        widgets.read_upload(upload_of(tmp_path / "empty.wav"))


# ---------------------------------------------------------------- try it yourself


@pytest.fixture(scope="module")
def shelf(tmp_path_factory):
    teacher = models.load_whisper(config.TINY_TEACHER)
    small, maps = student.make_student(teacher, decoder_layers=2)
    folder = student.save_student(small, tmp_path_factory.mktemp("student"), maps)
    return widgets.ModelShelf({"teacher": str(config.TINY_TEACHER), "student": str(folder)})


def test_try_clip_gives_every_model_its_transcript_time_and_cer(shelf, synthetic_run):
    _, result = synthetic_run
    row = result["test"].iloc[0].to_dict()
    table = widgets.try_clip(shelf, widgets.read_row(row), row["text"])
    assert list(table.index) == ["teacher", "student"]
    assert (table["seconds"] > 0).all() and table["CER %"].notna().all()
    html = widgets.try_clip_html(table, row["text"])
    assert "teacher" in html and "<table" in html  # the alignment with the reference


def test_a_recording_longer_than_the_window_is_transcribed_in_pieces(shelf, synthetic_run):
    _, result = synthetic_run
    clips = [widgets.read_row(r) for r in result["test"].to_dict("records")]
    pause = np.zeros(8_000, np.float32)
    long = np.concatenate([c for clip in clips for c in (clip, pause)])
    assert len(long) / 16_000 > 5  # the tiny models' window
    table = widgets.try_clip(shelf, long)
    assert table["transcript"].str.len().min() > 0 and "CER %" not in table


def test_the_transcription_box_shows_every_model_after_a_click(shelf, synthetic_run):
    _, result = synthetic_run
    box = widgets.transcription_box(shelf, result["test"])
    button, out = box.children[0].children[2], box.children[1]
    button.click()
    shown = "".join(str(o.get("data", {}).get("text/html", "")) for o in out.outputs)
    assert "teacher" in shown and "student" in shown


def test_the_transcription_box_shows_a_bad_upload_as_a_message(shelf, synthetic_run, tmp_path):
    _, result = synthetic_run
    box = widgets.transcription_box(shelf, result["test"])
    (_, upload, button), out = box.children[0].children, box.children[1]
    (tmp_path / "broken.wav").write_bytes(b"RIFF nonsense")
    upload.value = upload_of(tmp_path / "broken.wav")
    button.click()
    printed = "".join(o.get("text", "") for o in out.outputs)
    assert "cannot transcribe: broken.wav cannot be read as audio" in printed and "Traceback" not in printed


# ---------------------------------------------------------------- notebooks 01, 03, 06


def test_clip_view_shows_the_transcript_a_player_and_the_log_mel_image(synthetic_run):
    _, result = synthetic_run
    html, figure = widgets.clip_view(result["train"].iloc[0].to_dict(), models.tiny_feature_extractor())
    assert result["train"]["text"].iloc[0] in html.data and "<audio" in html.data
    assert figure is not None and figure.axes[0].get_ylabel() == "mel bin"


def test_the_clip_browser_follows_its_slider(synthetic_run):
    _, result = synthetic_run
    box = widgets.clip_browser(result["train"])
    slider, out = box.children
    slider.value = 2
    shown = "".join(str(o.get("data", {}).get("text/html", "")) for o in out.outputs)
    assert result["train"]["text"].iloc[2] in shown


def pseudo_rows():
    return pd.DataFrame({"cer": [0.0, 10.0, 19.0, 25.0, 60.0, None, 5.0],
                         "status": ["kept", "kept", "kept", "filtered: CER above threshold",
                                    "filtered: CER above threshold", "kept (no reference)",
                                    "filtered: repetition loop"],
                         "reference": list("abcdefg"), "teacher_text": list("abcdxyz")})


def test_threshold_effect_counts_what_a_threshold_keeps_and_drops():
    counts, examples = widgets.threshold_effect(pseudo_rows(), 20.0)
    # with a reference: 0, 10, 19 kept; 25, 60 dropped, and the repetition loop dropped whatever its CER
    assert counts == {"threshold": 20.0, "kept": 3, "dropped": 3}
    assert widgets.threshold_effect(pseudo_rows(), 30.0)[0]["kept"] == 4
    assert examples.iloc[0]["side"] == "kept" and examples.iloc[0]["cer"] == 19.0  # nearest the threshold first


def test_the_threshold_explorer_prints_the_counts_at_its_slider(capsys):
    box = widgets.threshold_explorer(pseudo_rows(), 20.0)
    slider, out = box.children
    slider.value = 70.0
    printed = "".join(o.get("text", "") for o in out.outputs)
    assert "at 70%: 5 kept, 1 dropped (the parameter says 20%)" in printed


def test_rank_snapshot_draws_the_ranks_of_one_allocation():
    budget = [{"step": 5, "total_rank": 6,
               "ranks": {"model.decoder.layers.0.self_attn.q_proj": 4, "model.decoder.layers.0.fc1": 2}},
              {"step": 10, "total_rank": 3,
               "ranks": {"model.decoder.layers.0.self_attn.q_proj": 3, "model.decoder.layers.0.fc1": 0}}]
    figure = widgets.rank_snapshot(budget, 1, init_r=4)
    assert "step 10" in figure.axes[0].get_title()
    box = widgets.rank_player(budget, init_r=4)
    assert box.children[0].value == 1  # starts at the last allocation


def test_widgets_read_audio_as_16_bit_files_do(tmp_path):
    buffer = io.BytesIO()
    sf.write(buffer, (0.1 * np.ones(1600)).astype(np.float32), 8_000, format="WAV", subtype="PCM_16")
    value = ({"name": "x.wav", "content": memoryview(buffer.getvalue())},)
    audio, _ = widgets.read_upload(value)
    assert len(audio) == 3200 and abs(float(audio.mean()) - 0.1) < 1e-3
