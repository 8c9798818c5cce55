"""Specification of the pieces under notebook 01's first contact with a CSV: reading it (helpers.speech.csvfile),
checking rows (helpers.speech.checks), one row per recording (helpers.speech.leaks), and the one-line error of
``python -m helpers.<phase>`` (helpers.cli). The whole phase meets bad input in test_data_bad_inputs.py."""
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from helpers import cli, config
from helpers.speech import checks, csvfile, leaks
from helpers.speech.errors import DataError


def test_read_csv_numbers_rows_by_the_physical_line_they_start_on(tmp_path):
    # line 1 blank, 2 header, 3 a.wav, 4 blank, 5-6 b.wav (a quoted line break), 7 c.wav
    path = tmp_path / "list.csv"
    path.write_text('\nfile,中文意譯\na.wav,一\n\nb.wav,"二\n三"\nc.wav,四\n', "utf-8")
    rows = csvfile.read_csv(path)
    assert rows["row"].tolist() == [3, 5, 7]
    assert rows["text"].tolist() == ["一", "二\n三", "四"]


def test_read_csv_takes_the_delimiter_it_is_given(tmp_path):
    path = tmp_path / "list.tsv"
    path.write_text("file\t中文意譯\na.wav\t你好，世界\n", "utf-8")
    assert csvfile.read_csv(path, delimiter="tab")["text"].tolist() == ["你好，世界"]


def test_a_wrong_delimiter_given_is_named_in_the_message(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("file;中文意譯\na.wav;你好\n", "utf-8")
    with pytest.raises(DataError, match="or set csv_delimiter to the character that separates the columns"):
        csvfile.read_csv(path, delimiter=",")


def test_a_line_the_csv_rules_cannot_read_is_marked_and_the_next_lines_are_read(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text('file,中文意譯\na.wav,"一"二\nb.wav,三\n', "utf-8")
    rows = csvfile.read_csv(path)
    assert rows["problem"].tolist() == ["malformed CSV line", ""]
    assert rows["row"].tolist() == [2, 3] and rows["text"].tolist() == ["", "三"]


def test_a_backslash_path_is_taken_with_slashes_when_that_file_exists(tmp_path):
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "x.wav", np.zeros(160, np.float32), 16_000)
    assert csvfile.audio_path("audio\\x.wav", tmp_path) == str((tmp_path / "audio" / "x.wav").resolve())
    assert csvfile.audio_path("audio\\y.wav", tmp_path).endswith("audio\\y.wav")  # left for the check to name


def test_wav_frames_reads_what_the_header_promises(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(16_000, np.float32), 16_000, subtype="PCM_16")  # 16000 frames of 2 bytes
    assert checks.wav_frames(str(path)) == 16_000
    raw = path.read_bytes()
    path.write_bytes(raw[:-8_000])  # the data cut short, the header unchanged
    assert checks.wav_frames(str(path)) == 16_000 and sf.info(str(path)).frames == 12_000
    other = tmp_path / "a.flac"
    sf.write(other, np.zeros(160, np.float32), 16_000)
    assert checks.wav_frames(str(other)) is None


def test_row_limits_without_parameters_are_the_default_table_with_the_window_given():
    table = config.NOTEBOOK_PARAMS["01_data"]
    limits = checks.RowLimits.of(max_duration_s=30.0)
    assert limits.max_duration_s == 30.0
    assert (limits.min_duration_s, limits.max_chars_per_s) == (table["min_duration_s"], table["max_chars_per_s"])


def test_a_recording_in_several_splits_stays_in_test_then_valid_then_train():
    rows = pd.DataFrame({"audio": ["/u.wav", "/t.wav", "/v.wav", "/x.wav"], "text": ["", "一", "一", "一"],
                         "split": ["unlabelled", "train", "valid", "test"], "source": "csv", "row": [2, 3, 4, 5],
                         "csv": "/d/list.csv", "content": ["h", "h", "h", "h"]})  # the same samples four times
    kept, repeats = leaks.drop_repeats(rows)
    assert kept["split"].tolist() == ["test"]
    assert repeats[["split", "reason"]].values.tolist() == [
        ["unlabelled", "same audio as a test row"], ["train", "same audio as a test row"],
        ["valid", "same audio as a test row"]]
    assert repeats["detail"].str.startswith("line 5 of list.csv (x.wav: the same samples)").all()


def test_drop_repeats_without_repeats_returns_the_rows_as_they_are():
    rows = pd.DataFrame({"audio": ["/a.wav", "/b.wav"], "text": ["一", "二"], "split": "train", "source": "csv",
                         "content": ["h1", "h2"]}, index=[5, 9])
    kept, repeats = leaks.drop_repeats(rows)
    assert kept is rows and repeats.empty


def test_a_phase_command_prints_its_input_errors_in_one_line(capsys, tmp_path):
    def run_phase(p):
        raise DataError("train_csv x.csv: only 2 usable rows")

    status = cli.phase_main("data", run_phase, ["--run-dir", str(tmp_path)], input_errors=(DataError,))
    assert status == 2 and capsys.readouterr().err == "error: train_csv x.csv: only 2 usable rows\n"


def test_a_phase_command_lets_other_errors_through_as_bugs(tmp_path):
    def run_phase(p):
        raise ValueError("a bug, not bad input")

    with pytest.raises(ValueError, match="a bug"):
        cli.phase_main("data", run_phase, ["--run-dir", str(tmp_path)], input_errors=(DataError,))
