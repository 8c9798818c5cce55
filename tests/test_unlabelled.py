"""Untranscribed audio of any length: folders (nested, mixed formats and rates), CSVs of paths and hub splits, cut at
pauses into pieces that fit the window, every file and piece accounted for."""
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from helpers import config, data
from helpers.speech import sources
from helpers.speech.audio import read_audio, read_row
from helpers.speech.recordings import make_long_recording
from tests.fixtures import SYNTHETIC_SIZES, write_tone


@pytest.fixture(scope="module")
def recordings(tmp_path_factory, synthetic_run):
    """A folder of untranscribed audio: a 3-minute recording of synthetic clips with pauses (flac, 44.1 kHz), a short
    clip in a nested folder (ogg, 8 kHz), a short clip (mp3 is read too but not written by libsndfile everywhere:
    wav here), a silent file, a file that is not audio, and a text file that is not looked at."""
    _, result = synthetic_run
    folder = tmp_path_factory.mktemp("recordings")
    clips = pd.concat([result["train"], result["valid"], result["test"]] * 3, ignore_index=True)
    long = make_long_recording(clips, pause_s=(0.6, 1.2), out_path=folder / "meeting" / "long.wav", seed=1)
    audio = read_audio(long.path, 44_100)
    sf.write(folder / "meeting" / "long.flac", audio, 44_100)
    long.path.unlink()
    long.clips[["lead_s", "tail_s"]] = clips[["lead_s", "tail_s"]].to_numpy()  # the silence inside each clip
    (folder / "nested" / "deeper").mkdir(parents=True)
    sf.write(folder / "nested" / "deeper" / "short.ogg", read_audio(result["train"]["audio"].iloc[0], 8_000), 8_000)
    write_tone(folder / "tone.wav", 1.0)
    sf.write(folder / "silence.wav", np.zeros(16_000 * 3, np.float32), 16_000)
    (folder / "broken.mp3").write_bytes(b"ID3 this is not an mp3")
    (folder / "notes.txt").write_text("not audio, not looked at", "utf-8")
    return folder, long


def test_find_audio_searches_subfolders_for_every_audio_format(recordings):
    folder, _ = recordings
    found = sources.find_audio(folder)
    assert found["row"].tolist() == ["broken.mp3", "meeting/long.flac", "nested/deeper/short.ogg", "silence.wav",
                                     "tone.wav"]
    assert (found["split"] == "unlabelled").all() and (found["text"] == "").all()


def test_find_audio_says_what_is_wrong_with_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        sources.find_audio(tmp_path / "nope")
    with pytest.raises(ValueError, match="holds no audio file"):
        sources.find_audio(tmp_path)


@pytest.fixture(scope="module")
def prepared(recordings, synthetic_run, tmp_path_factory):
    params, _ = synthetic_run
    folder, long = recordings
    run_dir = tmp_path_factory.mktemp("run")
    shutil.copytree(params.run_dir / "corpus", run_dir / "corpus")  # the fixture's corpus: same seed and sizes
    p = config.resolve("01_data", {"run_dir": str(run_dir), "unlabelled_dir": str(folder), **SYNTHETIC_SIZES,
                                   "live_plot": False})
    return p, data.prepare(p), long


def test_every_file_is_accounted_for_as_pieces_or_a_skipped_row(prepared, recordings):
    p, result, _ = prepared
    folder, _ = recordings
    pieces, skipped = result["unlabelled"], result["skipped"]
    pieces = pieces[pieces["source"] == "folder"]
    files = set(sources.find_audio(folder)["audio"])
    assert set(pieces["audio"]) | set(skipped["audio"]) == files
    reasons = dict(zip(skipped["audio"].map(lambda a: Path(a).name), skipped["reason"]))
    assert reasons["silence.wav"] == "silent" and reasons["broken.mp3"].startswith("unreadable audio")
    report = result["report"]["splits"]["unlabelled"]["recordings"]
    assert report["files"] == 3 and report["pieces"] == len(pieces)  # long.flac, short.ogg, tone.wav


def test_a_long_recording_becomes_pieces_within_the_window_that_never_cut_a_clip(prepared):
    p, result, long = prepared
    pieces = result["unlabelled"]
    cut = pieces[pieces["audio"].str.endswith("long.flac")].sort_values("offset")
    assert len(cut) > 10 and (cut["duration"] <= p.max_duration_s + 1e-6).all()
    assert cut["file_duration"].iloc[0] == pytest.approx(long.clips["end"].iloc[-1], abs=0.05)
    for _, clip in long.clips.iterrows():  # each clip's speech lies inside one piece
        start, end = clip["start"] + clip["lead_s"], clip["end"] - clip["tail_s"]  # a clip's lead-in, tail: silence
        inside = cut[(cut["offset"] <= start + 0.1) & (cut["offset"] + cut["duration"] >= end - 0.1)]
        assert len(inside) >= 1, f"speech {start:.2f}-{end:.2f} s is cut apart"


def test_a_piece_reads_back_the_samples_of_the_file_at_its_offset(prepared, recordings):
    _, result, _ = prepared
    piece = result["unlabelled"][result["unlabelled"]["audio"].str.endswith("long.flac")].iloc[3].to_dict()
    rate = sf.info(piece["audio"]).samplerate  # at the file's own rate, no resampling blurs the comparison
    whole, part = read_audio(piece["audio"], rate), read_row(piece, rate)
    start = int(round(piece["offset"] * rate))
    assert len(part) == int(round(piece["duration"] * rate))
    np.testing.assert_array_equal(part, whole[start:start + len(part)])


def test_short_files_at_any_rate_become_one_piece_each(prepared):
    _, result, _ = prepared
    pieces = result["unlabelled"]
    assert (pieces["source"] == "synthetic").sum() == SYNTHETIC_SIZES["num_unlabelled"]  # both kinds side by side
    for name in ("short.ogg", "tone.wav"):
        assert (pieces["audio"].str.endswith(name)).sum() == 1


def test_an_unlabelled_csv_is_read_without_its_transcripts(tmp_path, recordings):
    folder, _ = recordings
    (tmp_path / "u.csv").write_text(f"file,中文意譯\n{folder / 'tone.wav'},這句不用\n", "utf-8")
    rows = data.read_unlabelled(config.resolve("01_data", {"unlabelled_csv": str(tmp_path / "u.csv")}), tmp_path)
    assert rows["text"].tolist() == [""] and rows["split"].tolist() == ["unlabelled"]


def test_a_hub_unlabelled_split_needs_a_dataset(tmp_path):
    with pytest.raises(ValueError, match="hub_unlabelled_split needs hub_dataset"):
        data.read_unlabelled(config.resolve("01_data", {"hub_unlabelled_split": "other"}), tmp_path)
