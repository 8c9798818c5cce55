"""Specification of notebook 01 meeting a person's own CSV: nothing crashes, nothing is lost, nothing leaks.

Every case of tests/bad_inputs.py (one kind of trouble beside six good rows, over several seeds, which move the bad
rows and change the hold-out) is run through ``data.prepare`` as notebook 01 runs it. What must hold:

* every good row comes out once, in train, valid or test, with its exact text and its file;
* every bad row is in ``skipped.csv`` with its reason, the CSV it is in and its physical line, and nothing else is;
* no split is empty, and no recording is in two splits (by resolved path, and by its samples);
* unusable input stops with the project's ``DataError`` (nothing else), whose message says why and points at
  ``skipped.csv``, which is written first.
"""
import hashlib
import json
import os
import subprocess
import sys
import warnings
from itertools import combinations
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf

from helpers import config, data
from helpers.speech import checks
from helpers.speech.errors import DataError
from tests.bad_inputs import ODD_KINDS, ROW_KINDS, STOP_KINDS, make_case

SEEDS = (0, 1, 2)
REPO = Path(__file__).resolve().parent.parent


def _open_as_a_user(path, *args, **kwargs):
    """``open`` as a user without read permission meets it (root reads every file, so the tests stand in)."""
    if os.stat(path).st_mode & 0o444 == 0:
        raise PermissionError(13, "Permission denied", str(path))
    return open(path, *args, **kwargs)


def _params(case, monkeypatch):
    if case.unreadable and os.geteuid() == 0:
        monkeypatch.setattr(checks, "open", _open_as_a_user, raising=False)
    return config.resolve("01_data", case.params)


def _skipped(p) -> pd.DataFrame:
    return pd.read_csv(Path(p.run_dir) / "data" / "skipped.csv", keep_default_na=False)


def _where(skipped: pd.DataFrame) -> list[tuple[str, int, str]]:
    return sorted(zip(skipped["csv"].map(lambda c: Path(c).name), skipped["row"], skipped["reason"]))


def _samples_hash(path: str) -> str:
    return hashlib.sha1(sf.read(path, dtype="float32")[0].tobytes()).hexdigest()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", [*ROW_KINDS, *ODD_KINDS])
def test_good_rows_are_kept_bad_rows_reported_and_no_recording_is_in_two_splits(tmp_path, kind, seed, monkeypatch):
    case = make_case(kind, tmp_path, seed)
    p = _params(case, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # six rows make tiny valid and test splits: warned, on purpose
        result = data.prepare(p)
    splits = {name: result[name] for name in ("train", "valid", "test")}
    assert {name: len(part) > 0 for name, part in splits.items()} == {"train": True, "valid": True, "test": True}
    kept = pd.concat(splits.values(), ignore_index=True)
    assert sorted(kept["text"]) == sorted(case.good)  # each good row once, with its exact text
    assert dict(zip(kept["text"], kept["audio"])) == case.good
    skipped = _skipped(p)
    assert _where(skipped) == sorted(case.bad)
    assert (skipped["detail"].str.len() > 0).all()
    for a, b in combinations(splits, 2):
        assert not set(splits[a]["audio"].map(os.path.realpath)) & set(splits[b]["audio"].map(os.path.realpath))
        assert not set(splits[a]["audio"].map(_samples_hash)) & set(splits[b]["audio"].map(_samples_hash))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", list(STOP_KINDS))
def test_unusable_input_stops_with_a_data_error_after_writing_skipped_csv(tmp_path, kind, seed, monkeypatch):
    case = make_case(kind, tmp_path, seed)
    p = _params(case, monkeypatch)
    with pytest.raises(DataError, match=case.stops) as stopped:
        data.prepare(p)
    data_dir = Path(p.run_dir) / "data"
    assert f"{data_dir / 'skipped.csv'}" in str(stopped.value)
    assert _where(_skipped(p)) == sorted(case.bad)
    report = json.loads((data_dir / "report.json").read_text("utf-8"))
    assert report["stopped"].startswith(("DataError", "DataFileNotFound"))


def test_the_generator_holds_at_least_thirty_kinds_of_bad_or_odd_input():
    assert len(ROW_KINDS) + len(ODD_KINDS) + len(STOP_KINDS) >= 30 and len(ROW_KINDS) >= 30


def test_three_usable_rows_make_a_one_one_one_split_with_a_warning(tmp_path, monkeypatch):
    case = make_case("three usable rows", tmp_path, 0)
    with pytest.warns(UserWarning, match="the figures will be meaningless"):
        result = data.prepare(_params(case, monkeypatch))
    assert [len(result[name]) for name in ("train", "valid", "test")] == [1, 1, 1]
    assert "meaningless" in result["report"]["warnings"][0]


def test_hold_out_by_speaker_keeps_each_speaker_on_one_side(tmp_path, monkeypatch):
    case = make_case("speaker column", tmp_path, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = data.prepare(_params(case, monkeypatch))
    speakers = [set(result[name]["speaker"]) for name in ("train", "valid", "test")]
    assert all(not a & b for a, b in combinations(speakers, 2))


@pytest.mark.parametrize("kind, words", [
    ("windows path", "forward slashes"), ("windows drive", "Windows drive"), ("folder as audio", "is a folder"),
    ("symlink loop", "leads back to itself"), ("broken symlink", "points to gone.wav"),
    ("no permission", "chmod a+r"), ("web address", "download the file"), ("letter case differs", "letter case"),
    ("header promises more", "the header promises 2.00 s"), ("channels cancel", "channels cancel out"),
    ("transcript too long", "1000 characters in 1 s"), ("unclosed quote", "never closed"),
    ("unquoted comma", "3 fields where the header has 2"), ("duplicate row", "repeats line"),
    ("valid and test repeat train", "in two splits")])
def test_a_skipped_row_says_what_was_found_and_what_to_do(tmp_path, kind, words, monkeypatch):
    case = make_case(kind, tmp_path, 0)
    p = _params(case, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        data.prepare(p)
    assert any(words in detail for detail in _skipped(p)["detail"]), _skipped(p)["detail"].tolist()


def test_python_m_helpers_data_prints_one_line_for_bad_input(tmp_path):
    case = make_case("every row bad", tmp_path, 0)
    args = [arg for name, value in case.params.items() if name != "live_plot" for arg in ("-p", name, str(value))]
    done = subprocess.run([sys.executable, "-m", "helpers.data", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no usable train rows"), done.stderr
    assert "skipped.csv" in lines[0] and "Traceback" not in done.stderr
