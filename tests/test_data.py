"""Specification of helpers.data: one manifest format from a CSV, a hub-style dataset or the synthetic corpus.

Audio here is mostly sine tones written with soundfile (instant); only the synthetic end-to-end run
uses espeak (9 clips, shared with other test modules through tests/fixtures.py).
"""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from helpers import config, data
from helpers.speech import manifest
from tests.fixtures import write_tone

HEADER = "file,中文意譯\n"
CSV_ROWS = [("audio/a.wav", "今天天氣很好"), ("audio/b.wav", "我們去台北車站")]


def csv_text(rows=CSV_ROWS, header=HEADER):
    return header + "".join(f"{a},{t}\n" for a, t in rows)


def manifest_rows(*records):
    """Hand-made manifest rows: (audio, text) pairs with the columns read_csv produces."""
    return pd.DataFrame({"audio": [a for a, _ in records], "text": [t for _, t in records],
                         "duration": float("nan"), "split": "train", "source": "csv",
                         "row": range(2, len(records) + 2)})


@pytest.fixture(autouse=True)
def datasets_cache_in_tmp(tmp_path, monkeypatch):
    """``datasets`` writes Arrow caches of what it loads: keep them out of the user's cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets_cache")


# ---------------------------------------------------------------- read_csv: encodings


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp950"])
def test_read_csv_reads_the_same_rows_from_utf8_utf8_with_bom_and_cp950(tmp_path, encoding):
    reference = tmp_path / "reference.csv"
    reference.write_text(csv_text(), encoding="utf-8")
    encoded = tmp_path / f"{encoding}.csv"
    encoded.write_bytes(csv_text().encode(encoding))
    pd.testing.assert_frame_equal(manifest.read_csv(encoded).drop(columns="csv"),
                                  manifest.read_csv(reference).drop(columns="csv"))


def test_read_csv_strips_the_utf8_byte_order_mark_from_the_first_column_name(tmp_path):
    # with the BOM left in, the first column would be "\ufefffile" and "file" would be missing
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + csv_text().encode("utf-8"))
    assert manifest.read_csv(path)["text"].tolist() == ["今天天氣很好", "我們去台北車站"]


def test_read_csv_falls_back_to_big5_hkscs_for_characters_cp950_lacks(tmp_path):
    # 堃 and 喆 (common in Taiwanese given names) are in Big5-HKSCS but not in cp950
    path = tmp_path / "hkscs.csv"
    path.write_bytes(csv_text([("a.wav", "王小堃和李喆")]).encode("big5hkscs"))
    assert manifest.read_csv(path)["text"].tolist() == ["王小堃和李喆"]


def test_read_csv_with_an_explicit_wrong_encoding_raises_a_clear_value_error(tmp_path):
    path = tmp_path / "big5.csv"
    path.write_bytes(csv_text().encode("cp950"))
    with pytest.raises(ValueError, match="cannot decode the file as utf-8; save it as UTF-8, or give its encoding"):
        manifest.read_csv(path, encoding="utf-8")


def test_read_csv_with_an_explicit_right_encoding_reads_it(tmp_path):
    path = tmp_path / "big5.csv"
    path.write_bytes(csv_text().encode("cp950"))
    assert manifest.read_csv(path, encoding="cp950")["text"].tolist() == ["今天天氣很好", "我們去台北車站"]


def test_read_csv_of_bytes_no_encoding_decodes_raises_a_value_error_naming_the_encodings_tried(tmp_path):
    # 0xFF starts no character in UTF-8, cp950 or Big5-HKSCS
    path = tmp_path / "garbage.csv"
    path.write_bytes(HEADER.encode("utf-8") + b"a.wav,\xff\xff\xff\n")
    with pytest.raises(ValueError, match="utf-8-sig or cp950 or big5hkscs"):
        manifest.read_csv(path)


def test_read_csv_of_a_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        manifest.read_csv(tmp_path / "nothing.csv")


# ---------------------------------------------------------------- read_csv: columns and rows


def test_read_csv_missing_columns_raise_a_value_error_naming_the_columns_found(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("path,sentence\na.wav,你好\n", encoding="utf-8")
    expected = "no column(s) ['file', '中文意譯']; the file has columns ['path', 'sentence']"
    with pytest.raises(ValueError, match=re.escape(expected)):
        manifest.read_csv(path)


def test_read_csv_takes_other_column_names_when_told(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("path,sentence\na.wav,你好\n", encoding="utf-8")
    assert manifest.read_csv(path, audio_column="path", text_column="sentence")["text"].tolist() == ["你好"]


def test_read_csv_resolves_relative_audio_paths_against_the_csv_folder_not_the_cwd(tmp_path, monkeypatch):
    folder = tmp_path / "corpus"
    folder.mkdir()
    path = folder / "list.csv"
    path.write_text(csv_text([("audio/a.wav", "一"), ("../elsewhere/b.wav", "二")]), encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # somewhere else than the CSV's folder
    assert manifest.read_csv(path)["audio"].tolist() == [str((folder / "audio" / "a.wav").resolve()),
                                                    str((tmp_path / "elsewhere" / "b.wav").resolve())]


def test_read_csv_keeps_absolute_audio_paths_and_leaves_blank_ones_blank(tmp_path):
    absolute = str((tmp_path / "x" / "a.wav").resolve())
    path = tmp_path / "list.csv"
    path.write_text(csv_text([(absolute, "一"), ("  ", "二")]), encoding="utf-8")
    assert manifest.read_csv(path)["audio"].tolist() == [absolute, ""]


def test_read_csv_returns_manifest_rows_with_csv_line_numbers(tmp_path):
    # header is line 1, so the two data rows are lines 2 and 3
    path = tmp_path / "list.csv"
    path.write_text(csv_text([("a.wav", "  前後有空白  "), ("b.wav", "二")]), encoding="utf-8")
    rows = manifest.read_csv(path, split="test")
    assert list(rows.columns) == ["audio", "text", "duration", "split", "source", "row", "csv", "problem",
                                  "problem_detail"]
    assert rows["csv"].tolist() == [str(path)] * 2 and (rows["problem"] == "").all()
    assert rows["text"].tolist() == ["前後有空白", "二"]
    assert rows["row"].tolist() == [2, 3]
    assert rows["split"].tolist() == ["test", "test"] and rows["source"].tolist() == ["csv", "csv"]
    assert rows["duration"].isna().all()  # filled in by check_rows


def test_read_csv_keeps_a_numeric_looking_transcript_as_text(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text(csv_text([("a.wav", "0911"), ("b.wav", "")]), encoding="utf-8")
    assert manifest.read_csv(path)["text"].tolist() == ["0911", ""]


# ---------------------------------------------------------------- check_rows: hand-made rows


def test_check_rows_keeps_a_good_row_with_its_duration_from_the_file_header(tmp_path):
    wav = write_tone(tmp_path / "good.wav", 1.5)
    kept, skipped = manifest.check_rows(manifest_rows((str(wav), "你好")), max_duration_s=5.0)
    assert kept["duration"].tolist() == [1.5]  # 24000 frames / 16000 Hz
    assert kept["text"].tolist() == ["你好"] and skipped.empty


def _reason(rows, max_duration_s=5.0):
    kept, skipped = manifest.check_rows(rows, max_duration_s)
    assert kept.empty and len(skipped) == 1
    return skipped["reason"].iloc[0]


def test_check_rows_skips_a_row_without_audio_path():
    assert _reason(manifest_rows(("", "你好"))) == "no audio file named"


def test_check_rows_skips_a_row_whose_file_is_missing(tmp_path):
    assert _reason(manifest_rows((str(tmp_path / "gone.wav"), "你好"))) == "missing file"


def test_check_rows_skips_unreadable_audio_with_libsndfiles_reason(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("this is not audio", "utf-8")
    reason = _reason(manifest_rows((str(bad), "你好")))
    assert reason.startswith("unreadable audio (") and str(tmp_path) not in reason


def test_check_rows_skips_an_audio_file_without_samples(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16_000)
    assert _reason(manifest_rows((str(empty), "你好"))) == "empty audio"


@pytest.mark.parametrize("text", ["", "   "])
def test_check_rows_skips_an_empty_transcript(tmp_path, text):
    wav = write_tone(tmp_path / "good.wav", 1.0)
    assert _reason(manifest_rows((str(wav), text))) == "empty transcript"


@pytest.mark.parametrize("text", [None, float("nan")])
def test_check_rows_skips_a_missing_transcript(tmp_path, text):
    wav = write_tone(tmp_path / "good.wav", 1.0)
    assert _reason(manifest_rows((str(wav), text))) == "empty transcript"


@pytest.mark.parametrize("text", ["", None])
def test_check_rows_keeps_a_row_of_the_unlabelled_split_without_transcript(tmp_path, text):
    wav = write_tone(tmp_path / "good.wav", 1.0)
    kept, skipped = manifest.check_rows(manifest_rows((str(wav), text)).assign(split="unlabelled"), 5.0)
    assert len(kept) == 1 and skipped.empty


def test_check_rows_skips_audio_longer_than_the_maximum(tmp_path):
    wav = write_tone(tmp_path / "long.wav", 3.0)
    assert _reason(manifest_rows((str(wav), "你好")), max_duration_s=2.5) == "longer than 2.5 s"


def test_check_rows_without_a_maximum_keeps_long_audio(tmp_path):
    wav = write_tone(tmp_path / "long.wav", 3.0)
    kept, _ = manifest.check_rows(manifest_rows((str(wav), "你好")), max_duration_s=None)
    assert kept["duration"].tolist() == [3.0]


def test_check_rows_reports_the_row_number_split_and_source_of_a_skipped_row(tmp_path):
    rows = manifest_rows((str(tmp_path / "gone.wav"), "你好"))
    _, skipped = manifest.check_rows(rows, 5.0)
    record = skipped.to_dict("records")[0]
    assert {k: record[k] for k in ("audio", "row", "split", "source", "reason")} == {
        "audio": str(tmp_path / "gone.wav"), "row": 2, "split": "train", "source": "csv", "reason": "missing file"}
    assert record["detail"].startswith(f"{tmp_path / 'gone.wav'} does not exist")


def test_check_rows_with_no_usable_rows_returns_an_empty_table_with_the_manifest_columns():
    kept, skipped = manifest.check_rows(manifest_rows(("", "你好")), 5.0)
    assert kept.empty and list(kept.columns) == ["audio", "text", "duration", "split", "source", "row"]


# ---------------------------------------------------------------- check_rows: the messy CSV


@pytest.fixture
def messy_csv(tmp_path):
    """write_messy_csv from two good tone clips (1.0 s and 1.5 s): the long clip is 3 x 2.5 = 7.5 s."""
    good = pd.DataFrame({"audio": [str(write_tone(tmp_path / "src" / "a.wav", 1.0)),
                                   str(write_tone(tmp_path / "src" / "b.wav", 1.5, freq=660))],
                         "text": ["第一句", "第二句"]})
    return data.write_messy_csv(tmp_path / "messy", good)


def test_messy_csv_is_written_in_cp950(messy_csv):
    raw = messy_csv.read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    assert raw.decode("cp950").startswith("file,中文意譯")


def test_check_rows_keeps_only_the_good_rows_of_the_messy_csv(messy_csv):
    kept, _ = manifest.check_rows(manifest.read_csv(messy_csv), max_duration_s=5.0)
    assert kept["text"].tolist() == ["第一句", "第二句"]
    assert kept["duration"].tolist() == [1.0, 1.5]


def test_check_rows_gives_each_bad_row_of_the_messy_csv_its_reason(messy_csv):
    _, skipped = manifest.check_rows(manifest.read_csv(messy_csv), max_duration_s=5.0)
    # lines 2-3 are the good clips; then one row per problem, in this order
    assert skipped["row"].tolist() == [4, 5, 6, 7, 8]
    assert skipped["reason"].tolist()[:3] == ["missing file", "empty transcript", "empty audio"]
    assert skipped["reason"].iloc[3].startswith("unreadable audio (")
    assert skipped["reason"].iloc[4] == "longer than 5 s"


# ---------------------------------------------------------------- holdout_split and take


def ten_rows():
    return pd.DataFrame({"audio": [f"/{i}.wav" for i in range(10)], "text": list("一二三四五六七八九十"),
                         "split": "train"})


def test_holdout_split_marks_the_requested_fractions():
    split = manifest.holdout_split(ten_rows(), {"valid": 0.2, "test": 0.3})
    assert split["split"].value_counts().to_dict() == {"train": 5, "test": 3, "valid": 2}  # round(10 x share)


def test_holdout_split_holds_out_at_least_one_row():
    # round(10 * 0.01) = 0, raised to 1 so the split is never empty
    assert (manifest.holdout_split(ten_rows(), {"test": 0.01})["split"] == "test").sum() == 1


def test_holdout_split_is_deterministic_for_a_seed_and_varies_with_it():
    first = manifest.holdout_split(ten_rows(), {"test": 0.3}, seed=0)["split"].tolist()
    assert manifest.holdout_split(ten_rows(), {"test": 0.3}, seed=0)["split"].tolist() == first
    others = {tuple(manifest.holdout_split(ten_rows(), {"test": 0.3}, seed=s)["split"]) for s in range(1, 6)}
    assert others != {tuple(first)}


def test_holdout_split_leaves_its_input_unchanged():
    rows = ten_rows()
    manifest.holdout_split(rows, {"test": 0.5})
    assert rows["split"].tolist() == ["train"] * 10


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_holdout_split_rejects_a_fraction_outside_0_to_1(fraction):
    with pytest.raises(ValueError, match="share of rows held out for test must be between 0 and 1"):
        manifest.holdout_split(ten_rows(), {"test": fraction})


def speakers_rows():
    """12 rows of 4 speakers (a: 6 rows, b: 3, c: 2, d: 1)."""
    rows = pd.DataFrame({"audio": [f"/{i}.wav" for i in range(12)], "text": [f"句{i}" for i in range(12)],
                         "split": "train", "speaker": list("aaaaaabbbccd")})
    return rows


def test_holdout_by_speaker_never_puts_one_speaker_on_two_sides():
    for seed in range(20):
        split = manifest.holdout_split(speakers_rows(), {"valid": 0.1, "test": 0.1}, seed, group_column="speaker")
        sides = split.groupby("speaker")["split"].nunique()
        assert (sides == 1).all(), split
        assert set(split["split"]) == {"train", "valid", "test"}  # each split got at least one speaker


def test_holdout_by_speaker_refuses_when_no_speaker_would_be_left_for_training():
    rows = speakers_rows()
    rows["speaker"] = list("aaaaaabbbbbb")  # two speakers: one for valid, one for test, none for training
    with pytest.raises(manifest.DataError, match="only 2 usable 'speaker' groups in train: cannot hold out valid, "
                                                 "test"):
        manifest.holdout_split(rows, {"valid": 0.1, "test": 0.1}, group_column="speaker")


def test_holdout_by_speaker_needs_the_column():
    with pytest.raises(ValueError, match="no column 'speaker' to group the hold-out by"):
        manifest.holdout_split(ten_rows(), {"test": 0.1}, group_column="speaker")


def both_splits():
    rows = ten_rows()
    rows["split"] = ["train"] * 7 + ["test"] * 3
    return rows


def test_take_returns_all_rows_of_the_split_when_n_is_none():
    part = manifest.take(both_splits(), "test", None)
    assert part["text"].tolist() == ["八", "九", "十"]
    assert part.index.tolist() == [0, 1, 2]


def test_take_samples_n_rows_deterministically_in_their_original_order():
    first = manifest.take(both_splits(), "train", 4, seed=0)
    assert len(first) == 4
    assert first["text"].tolist() == manifest.take(both_splits(), "train", 4, seed=0)["text"].tolist()
    order = [list("一二三四五六七").index(t) for t in first["text"]]
    assert order == sorted(order)


def test_take_with_n_above_the_split_size_returns_the_whole_split():
    assert len(manifest.take(both_splits(), "train", 100)) == 7


# ---------------------------------------------------------------- save_manifests / load_manifest


def test_saved_manifests_load_back_unchanged_with_text_kept_as_text(tmp_path):
    # "007" and "2024" must not become numbers, nor "true" a bool
    rows = pd.DataFrame({"audio": ["/a.wav", "/b.wav", "/c.wav"], "text": ["007", "2024", "true"],
                         "duration": [1.0, 2.5, 3.0], "split": "train", "source": "csv", "row": [2, 3, 4]})
    skipped = pd.DataFrame(columns=["audio", "row", "split", "source", "reason"])
    manifest.save_manifests(tmp_path, {"train": rows}, skipped, {"source": "csv"})
    pd.testing.assert_frame_equal(manifest.load_manifest(tmp_path, "train"), rows, check_dtype=False)
    assert manifest.load_manifest(tmp_path, "train")["text"].tolist() == ["007", "2024", "true"]


def test_save_manifests_writes_one_jsonl_per_split_and_the_skipped_table_and_report(tmp_path):
    part = pd.DataFrame({"audio": ["/a.wav"], "text": ["你好"], "duration": [1.0], "split": "train", "source": "csv"})
    skipped = pd.DataFrame([{"audio": "", "row": 3, "split": "train", "source": "csv",
                             "reason": "no audio file named"}])
    out = manifest.save_manifests(tmp_path / "data", {"train": part, "test": part}, skipped, {"note": "報告"})
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "skipped.csv", "test.jsonl", "train.jsonl"]
    assert json.loads((out / "report.json").read_text("utf-8")) == {"note": "報告"}
    assert pd.read_csv(out / "skipped.csv")["reason"].tolist() == ["no audio file named"]


def test_load_manifest_of_a_split_never_written_says_which_notebook_writes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="run 01_data with the same run_dir"):
        manifest.load_manifest(tmp_path / "data", "train")
    with pytest.raises(FileNotFoundError, match="run 03_pseudo_label with the same run_dir"):
        manifest.load_manifest(tmp_path / "pseudo", "train")


# ---------------------------------------------------------------- load_hub through a local dataset folder


def _parquet_dataset(folder: Path, splits: dict[str, dict]) -> Path:
    """Save ``{split: columns}`` as ``folder/data/<split>-00000-of-00001.parquet``, the hub's layout."""
    import datasets

    (folder / "data").mkdir(parents=True)
    for split, columns in splits.items():
        ds = datasets.Dataset.from_dict(columns).cast_column("audio", datasets.Audio(decode=False))
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


@pytest.fixture
def tones(tmp_path):
    """Three tone files of 0.5, 1.0 and 1.5 s."""
    return [write_tone(tmp_path / "tones" / f"t{i}.wav", 0.5 * (i + 1), freq=300 + 100 * i) for i in range(3)]


@pytest.fixture
def path_dataset(tmp_path, tones):
    """A local dataset whose audio column holds file paths (no bytes), like a dataset made from files."""
    return _parquet_dataset(tmp_path / "path_ds", {
        "train": {"audio": [str(t) for t in tones[:2]], "sentence": ["第一句", "第二句"]},
        "test": {"audio": [str(tones[2])], "sentence": ["第三句"]}})


@pytest.fixture
def bytes_dataset(tmp_path, tones):
    """A local dataset whose audio column embeds the bytes under bare file names, as hub datasets do."""
    audio = [{"bytes": t.read_bytes(), "path": f"clip_{i}.wav"} for i, t in enumerate(tones)]
    return _parquet_dataset(tmp_path / "bytes_ds", {
        "train": {"audio": audio[:2], "sentence": ["第一句", None]},
        "test": {"audio": audio[2:], "sentence": ["第三句"]}})


def test_a_parquet_dataset_made_from_files_stores_paths_not_bytes(path_dataset, tones):
    # what load_hub must cope with: Dataset.to_parquet does not embed external audio files
    import datasets

    ds = datasets.load_dataset(str(path_dataset), split="train")
    assert ds.column_names == ["audio", "sentence"]
    assert ds[0]["audio"] == {"bytes": None, "path": str(tones[0])}


def test_load_hub_takes_audio_paths_as_they_are(path_dataset, tones, tmp_path):
    rows = data.load_hub(str(path_dataset), None, "train", "audio", "sentence", tmp_path / "out")
    assert rows["audio"].tolist() == [str(tones[0].resolve()), str(tones[1].resolve())]
    assert rows["text"].tolist() == ["第一句", "第二句"]
    assert rows["split"].tolist() == ["train", "train"] and rows["source"].tolist() == ["hub", "hub"]
    assert rows["row"].tolist() == [0, 1]
    assert list((tmp_path / "out" / "train").iterdir()) == []  # nothing copied


def test_load_hub_writes_embedded_bytes_to_files_under_the_split_name(bytes_dataset, tones, tmp_path):
    rows = data.load_hub(str(bytes_dataset), None, "train", "audio", "sentence", tmp_path / "out", "fit")
    out = (tmp_path / "out" / "fit").resolve()
    assert rows["audio"].tolist() == [str(out / "000000.wav"), str(out / "000001.wav")]
    assert rows["split"].tolist() == ["fit", "fit"]
    assert Path(rows["audio"][1]).read_bytes() == tones[1].read_bytes()


def test_load_hub_turns_a_missing_transcript_into_an_empty_one(bytes_dataset, tmp_path):
    rows = data.load_hub(str(bytes_dataset), None, "train", "audio", "sentence", tmp_path / "out")
    assert rows["text"].tolist() == ["第一句", ""]


def test_load_hub_names_the_columns_a_dataset_has_when_one_is_missing(path_dataset, tmp_path):
    with pytest.raises(ValueError, match=re.escape("has no column(s) ['text']; it has ['audio', 'sentence']")):
        data.load_hub(str(path_dataset), None, "train", "audio", "text", tmp_path / "out")


def test_load_hub_explains_a_dataset_that_cannot_be_loaded(tmp_path):
    with pytest.raises(RuntimeError, match="could not load hub dataset .*use source='csv'"):
        data.load_hub(str(tmp_path / "no_such_dataset"), None, "train", "audio", "sentence", tmp_path / "out")


def test_load_hub_into_a_used_folder_gives_each_row_its_own_datasets_audio(tmp_path, tones):
    first = _parquet_dataset(tmp_path / "first", {"train": {
        "audio": [{"bytes": tones[0].read_bytes(), "path": "a.wav"}], "sentence": ["舊的"]}})
    second = _parquet_dataset(tmp_path / "second", {"train": {
        "audio": [{"bytes": tones[2].read_bytes(), "path": "b.wav"}], "sentence": ["新的"]}})
    data.load_hub(str(first), None, "train", "audio", "sentence", tmp_path / "out")
    rows = data.load_hub(str(second), None, "train", "audio", "sentence", tmp_path / "out")
    assert Path(rows["audio"][0]).read_bytes() == tones[2].read_bytes()


# ---------------------------------------------------------------- prepare: synthetic


def test_prepare_synthetic_gives_the_requested_numbers_of_clips(synthetic_run):
    _, result = synthetic_run
    assert (len(result["train"]), len(result["test"])) == (6, 3)
    assert result["skipped"].empty


def test_prepare_synthetic_rows_point_to_existing_audio_within_the_length_limit(synthetic_run):
    params, result = synthetic_run
    for part in (result["train"], result["test"]):
        assert all(Path(a).is_absolute() and Path(a).is_file() for a in part["audio"])
        assert ((part["duration"] > 0.5) & (part["duration"] <= params.max_duration_s)).all()
        assert (part["source"] == "synthetic").all() and part["text"].str.len().gt(0).all()


def test_prepare_synthetic_keeps_test_voices_out_of_train(synthetic_run):
    _, result = synthetic_run
    assert not set(result["train"]["voice"]) & set(result["test"]["voice"])


def test_prepare_writes_manifests_that_load_back(synthetic_run):
    params, result = synthetic_run
    data_dir = Path(params.run_dir) / "data"
    for split in ("train", "test"):
        assert manifest.load_manifest(data_dir, split)["text"].tolist() == result[split]["text"].tolist()
    assert json.loads((data_dir / "report.json").read_text("utf-8")) == result["report"]


def test_prepare_synthetic_writes_an_unlabelled_split_without_transcripts_from_training_voices(synthetic_run):
    from helpers.speech import synth

    params, result = synthetic_run
    unlabelled = result["unlabelled"]
    assert len(unlabelled) == 2 and (unlabelled["text"] == "").all()  # the spoken sentences are thrown away
    train_voices = {s.voice for s in synth.default_splits(1, 1)[0].speakers}
    assert set(unlabelled["voice"]) <= train_voices and not set(unlabelled["voice"]) & set(result["test"]["voice"])
    written = manifest.load_manifest(Path(params.run_dir) / "data", "unlabelled")
    assert written["audio"].tolist() == unlabelled["audio"].tolist()


def test_audio_to_pseudo_label_is_train_then_unlabelled_never_test(synthetic_run):
    params, result = synthetic_run
    data_dir = Path(params.run_dir) / "data"
    train, unlabelled = result["train"]["audio"].tolist(), result["unlabelled"]["audio"].tolist()
    assert manifest.audio_to_pseudo_label(data_dir)["audio"].tolist() == train + unlabelled
    assert manifest.audio_to_pseudo_label(data_dir, include_unlabelled=False)["audio"].tolist() == train


def test_audio_to_pseudo_label_without_an_unlabelled_manifest_is_the_train_split(tmp_path):
    splits = {"train": manifest_rows(("a.wav", "你好")), "test": manifest_rows(("b.wav", "再見"))}
    manifest.save_manifests(tmp_path, splits, pd.DataFrame(), {})
    assert manifest.audio_to_pseudo_label(tmp_path)["audio"].tolist() == ["a.wav"]


def test_prepare_report_counts_utterances_and_hours(synthetic_run):
    _, result = synthetic_run
    train = result["report"]["splits"]["train"]
    assert train["utterances"] == 6
    assert train["hours"] == pytest.approx(result["train"]["duration"].sum() / 3600, abs=1e-4)
    assert result["report"]["skipped"]["total"] == 0


# ---------------------------------------------------------------- prepare: csv and hub


def _tone_csv(folder: Path, name: str, n: int, first: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(first, first + n):
        write_tone(folder / "audio" / f"c{i}.wav", 0.5 + 0.1 * i, freq=200 + 20 * i)
        lines.append((f"audio/c{i}.wav", f"第{i}句"))
    path = folder / name
    path.write_text(csv_text(lines), encoding="utf-8")
    return path


def test_prepare_csv_without_valid_and_test_csvs_holds_both_out(tmp_path):
    train_csv = _tone_csv(tmp_path / "csv", "train.csv", 10)
    p = config.resolve("01_data", {"source": "csv", "train_csv": str(train_csv), "test_fraction": 0.2,
                                   "valid_fraction": 0.1, "run_dir": str(tmp_path / "run")})
    result = data.prepare(p)
    assert (len(result["train"]), len(result["valid"]), len(result["test"])) == (7, 1, 2)  # round(10 x share)
    texts = set(result["train"]["text"]) | set(result["valid"]["text"]) | set(result["test"]["text"])
    assert texts == {f"第{i}句" for i in range(10)}
    assert (Path(p.run_dir) / "data" / "valid.jsonl").is_file()


def test_prepare_csv_with_valid_and_test_csvs_takes_the_splits_from_the_files(tmp_path):
    train_csv = _tone_csv(tmp_path / "csv", "train.csv", 4)
    valid_csv = _tone_csv(tmp_path / "csv", "valid.csv", 1, first=6)
    test_csv = _tone_csv(tmp_path / "csv", "test.csv", 2, first=4)
    p = config.resolve("01_data", {"source": "csv", "train_csv": str(train_csv), "test_csv": str(test_csv),
                                   "valid_csv": str(valid_csv), "run_dir": str(tmp_path / "run")})
    result = data.prepare(p)
    assert result["train"]["text"].tolist() == ["第0句", "第1句", "第2句", "第3句"]
    assert result["valid"]["text"].tolist() == ["第6句"]
    assert result["test"]["text"].tolist() == ["第4句", "第5句"]


def test_prepare_csv_holds_out_whole_speakers_from_the_speaker_column(tmp_path):
    folder = tmp_path / "csv"
    lines = []
    for i in range(12):
        write_tone(folder / "audio" / f"s{i}.wav", 0.5, freq=200 + 20 * i)
        lines.append(f"audio/s{i}.wav,第{i}句,{'ABCD'[i % 4]}")
    (folder / "train.csv").write_text("file,中文意譯,說話者\n" + "\n".join(lines) + "\n", "utf-8")
    p = config.resolve("01_data", {"source": "csv", "train_csv": str(folder / "train.csv"),
                                   "speaker_column": "說話者", "run_dir": str(tmp_path / "run")})
    result = data.prepare(p)
    speakers = {name: set(result[name]["speaker"]) for name in ("train", "valid", "test")}
    assert speakers["train"].isdisjoint(speakers["valid"] | speakers["test"])
    assert speakers["valid"].isdisjoint(speakers["test"])
    assert result["report"]["splits"]["valid"]["speakers"] == 1


def test_prepare_reports_transcripts_shared_between_splits(tmp_path):
    train_csv = _tone_csv(tmp_path / "csv", "train.csv", 3)
    test_csv = tmp_path / "csv" / "test.csv"  # the same first sentence (another recording), other punctuation
    write_tone(tmp_path / "csv" / "audio" / "t0.wav", 0.8, freq=900)
    write_tone(tmp_path / "csv" / "audio" / "t1.wav", 0.9, freq=950)
    test_csv.write_text(csv_text([("audio/t0.wav", "第0句。"), ("audio/t1.wav", "別的句子")]), "utf-8")
    valid_csv = tmp_path / "csv" / "valid.csv"  # the third sentence, another recording
    write_tone(tmp_path / "csv" / "audio" / "v2.wav", 0.7, freq=1000)
    valid_csv.write_text(csv_text([("audio/v2.wav", "第2句")]), "utf-8")
    p = config.resolve("01_data", {"source": "csv", "train_csv": str(train_csv), "test_csv": str(test_csv),
                                   "valid_csv": str(valid_csv), "run_dir": str(tmp_path / "run")})
    shared = data.prepare(p)["report"]["shared_texts"]
    assert shared["train/test"] == {"texts": 1, "examples": ["第0句"]}
    assert shared["train/valid"]["texts"] == 1 and shared["valid/test"]["texts"] == 0


def test_prepare_csv_reports_the_messy_rows_it_skipped(tmp_path, messy_csv):
    test_csv = _tone_csv(tmp_path / "csv", "test.csv", 2)
    valid_csv = _tone_csv(tmp_path / "csv", "valid.csv", 2, first=2)
    p = config.resolve("01_data", {"source": "csv", "train_csv": str(messy_csv), "test_csv": str(test_csv),
                                   "valid_csv": str(valid_csv), "run_dir": str(tmp_path / "run")})
    result = data.prepare(p)
    assert len(result["train"]) == 2 and len(result["skipped"]) == 5
    assert result["report"]["skipped"]["total"] == 5
    assert result["report"]["skipped"]["by_reason"]["missing file"] == 1
    assert pd.read_csv(Path(p.run_dir) / "data" / "skipped.csv")["row"].tolist() == [4, 5, 6, 7, 8]


def test_prepare_csv_without_train_csv_says_what_it_needs(tmp_path):
    p = config.resolve("01_data", {"source": "csv", "run_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="needs train_csv"):
        data.prepare(p)


def test_an_unknown_source_is_refused_when_the_parameters_are_resolved(tmp_path):
    with pytest.raises(ValueError, match="source must be one of 'synthetic', 'csv', 'hub', got 'ftp'"):
        config.resolve("01_data", {"source": "ftp", "run_dir": str(tmp_path)})


def test_prepare_stops_when_a_split_has_no_usable_rows(tmp_path):
    train_csv = _tone_csv(tmp_path / "csv", "train.csv", 2)
    test_csv = tmp_path / "csv" / "test.csv"
    test_csv.write_text(csv_text([("audio/missing.wav", "不存在")]), encoding="utf-8")
    p = config.resolve("01_data", {"source": "csv", "train_csv": str(train_csv), "test_csv": str(test_csv),
                                   "run_dir": str(tmp_path / "run")})
    with pytest.raises(ValueError, match="no usable test rows"):
        data.prepare(p)


def test_prepare_hub_reads_the_splits_of_a_local_dataset_folder(tmp_path, tones):
    extra = write_tone(tmp_path / "tones" / "t3.wav", 1.2, freq=700)
    dataset = _parquet_dataset(tmp_path / "three_ds", {
        "train": {"audio": [str(t) for t in tones[:2]], "sentence": ["第一句", "第二句"]},
        "validation": {"audio": [str(extra)], "sentence": ["第四句"]},
        "test": {"audio": [str(tones[2])], "sentence": ["第三句"]}})
    p = config.resolve("01_data", {"source": "hub", "hub_dataset": str(dataset), "hub_valid_split": "validation",
                                   "run_dir": str(tmp_path / "run")})
    result = data.prepare(p)
    assert result["valid"]["text"].tolist() == ["第四句"]
    assert result["train"]["text"].tolist() == ["第一句", "第二句"]
    assert result["test"]["text"].tolist() == ["第三句"]
    assert result["test"]["duration"].tolist() == [1.5]


def test_prepare_hub_with_the_test_split_given_as_valid_too_stops_saying_why(tmp_path, path_dataset):
    # the test recordings would also steer training: kept in test, left out of valid, which is then empty
    p = config.resolve("01_data", {"source": "hub", "hub_dataset": str(path_dataset), "hub_valid_split": "test",
                                   "run_dir": str(tmp_path / "run")})
    with pytest.raises(manifest.DataError, match="no usable valid rows .*same audio as a test row 1"):
        data.prepare(p)
    skipped = pd.read_csv(Path(p.run_dir) / "data" / "skipped.csv")
    assert skipped[["split", "reason"]].values.tolist() == [["valid", "same audio as a test row"]]


def test_prepare_hub_without_a_dataset_says_what_it_needs(tmp_path):
    p = config.resolve("01_data", {"source": "hub", "run_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="needs hub_dataset"):
        data.prepare(p)
