"""Exports to CTranslate2: layout, offline transcription close to the transformers model, alignment heads of a
student, bad input, a failing conversion, the command line, the side-by-side table, and the faster-whisper path.

The faster-whisper path needs the standard Whisper layout (51865 tokens with 1501 timestamp tokens, 30 s window).
:func:`standard_whisper` builds a random one small enough for a test: Whisper's special tokens at Whisper's ids
over a filler vocabulary, width 64. Its transcripts mean nothing; what is checked is that faster-whisper loads it
offline, prompts it with <|zh|><|transcribe|>, and returns segments with times.
"""
import hashlib
import json
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from helpers import config, export, student
from helpers.files import read_json, write_json
from helpers.speech import text
from helpers.speech.audio import read_recording
from helpers.whisper import decode, longform, models, runtime

_BUILT: dict = {}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection (a hub download) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)


def standard_whisper(folder: Path) -> Path:
    """Save a random Whisper of the standard layout into ``folder`` (once per session; later calls copy it)."""
    if "standard" not in _BUILT:
        import torch
        from tokenizers import Tokenizer
        from transformers import (
            AddedToken,
            GenerationConfig,
            WhisperConfig,
            WhisperForConditionalGeneration,
            WhisperProcessor,
            WhisperTokenizer,
        )
        from transformers.models.whisper.tokenization_whisper import LANGUAGES

        spec = json.loads(Tokenizer.from_file(str(config.TINY_TEACHER / "tokenizer.json")).to_str())["model"]
        vocab = dict(spec["vocab"]) | {f"<unused{i}>": i for i in range(len(spec["vocab"]), 50257)}
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]]
        tokenizer = WhisperTokenizer(vocab=vocab, merges=merges)
        languages = list(LANGUAGES)[:99]  # large-v2's 99 languages: 51865 tokens in all
        specials = ["<|endoftext|>", "<|startoftranscript|>", *[f"<|{c}|>" for c in languages], "<|translate|>",
                    "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials], special_tokens=True)
        tokenizer.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", special=False, normalized=False) for i in range(1501)])
        assert len(tokenizer) == 51865 and tokenizer.convert_tokens_to_ids("<|notimestamps|>") == 50363
        torch.manual_seed(0)
        model = WhisperForConditionalGeneration(WhisperConfig(
            vocab_size=51865, num_mel_bins=80, d_model=64, encoder_layers=1, decoder_layers=2,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
            max_source_positions=1500, max_target_positions=448, pad_token_id=50257, bos_token_id=50257,
            eos_token_id=50257, decoder_start_token_id=50258))
        tid = tokenizer.convert_tokens_to_ids
        model.generation_config = GenerationConfig(
            decoder_start_token_id=50258, bos_token_id=50257, eos_token_id=50257, pad_token_id=50257,
            lang_to_id={f"<|{c}|>": tid(f"<|{c}|>") for c in languages},
            task_to_id={"translate": 50358, "transcribe": 50359}, no_timestamps_token_id=50363,
            prev_sot_token_id=50361, is_multilingual=True, suppress_tokens=[], begin_suppress_tokens=[50257],
            max_length=448, max_initial_timestamp_index=50, alignment_heads=[[1, 0], [1, 1]])
        processor = WhisperProcessor(feature_extractor=models.tiny_feature_extractor(30, 80), tokenizer=tokenizer)
        models.set_prompt(model, processor)
        _BUILT["standard"] = models.save_whisper(model, processor, folder)
    elif _BUILT["standard"] != folder:
        shutil.copytree(_BUILT["standard"], folder, dirs_exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder with the tiny teacher (given alignment heads on decoder layers 2 and 3 of 4, as a real
    checkpoint has) and the 2-layer student cut from it, both exported to int8."""
    root = tmp_path_factory.mktemp("export_run")
    shutil.copytree(config.TINY_TEACHER, root / "teacher")
    generation = read_json(root / "teacher" / "generation_config.json")
    write_json(root / "teacher" / "generation_config.json", {**generation, "alignment_heads": [[2, 0], [3, 1], [3, 2]]})
    teacher = models.load_whisper(root / "teacher")
    small, maps = student.make_student(teacher, decoder_layers=2)
    student.save_student(small, root / "student_kd", maps)
    exports = {name: export.export_model(name, root) for name in ("teacher", "student_kd")}
    return SimpleNamespace(root=root, teacher=teacher, student=small, exports=exports)


@pytest.fixture(scope="module")
def clips(synthetic_run):
    _, result = synthetic_run
    return pd.concat([result["test"], result["train"]], ignore_index=True)


def test_export_holds_what_the_runtime_needs(run):
    path = run.exports["teacher"]
    assert path == run.root / "export" / "teacher-ct2-int8"
    assert {"model.bin", "vocabulary.json", "config.json", "tokenizer.json", "preprocessor_config.json",
            "export.json"} <= {p.name for p in path.iterdir()}
    assert not (config.TINY_TEACHER / "preprocessor_config.json").exists(), "the export adds it; the source lacks it"
    pre = read_json(path / "preprocessor_config.json")
    assert (pre["chunk_length"], pre["feature_size"]) == (5, 80)
    manifest = read_json(path / "export.json")
    digest = hashlib.sha256((run.root / "teacher" / "model.safetensors").read_bytes()).hexdigest()
    assert manifest["source_sha256"] == digest and manifest["quantization"] == "int8"
    assert manifest["runtime"] == "ctranslate2" and manifest["vocabulary_size"] == 1010
    assert 0 < manifest["export_bytes"] < manifest["source_bytes"]
    assert set(manifest["versions"]) == {"ctranslate2", "faster_whisper", "transformers", "torch"}
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == [], "no temporary folders left"


def test_int8_export_transcribes_like_the_transformers_model(run, clips):
    hf, _ = decode.transcribe(run.teacher.model, run.teacher.processor, clips, 16, progress=False, shard=False)
    loaded = runtime.load_export(run.exports["teacher"], threads=2)
    assert loaded.prompt == run.teacher.tokenizer.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|zh|>", "<|transcribe|>", "<|notimestamps|>"])
    ct2, stats = runtime.transcribe_export(loaded, clips, batch_size=4)
    agreement = text.score(hf, ct2)["cer"]
    int8_cer, fp32_cer = text.score(clips["text"], ct2)["cer"], text.score(clips["text"], hf)["cer"]
    print(f"CER int8 export vs transformers fp32 on {len(clips)} clips: {agreement:.1f} %; "
          f"vs references: {int8_cer:.1f} % (transformers {fp32_cer:.1f} %)")
    # int8 kernels differ by processor and, on AMD EPYC cores, from one process to the next: 0-5 % disagreement
    # seen on Intel cores, 9-21 % on AMD EPYC, the accuracy against the references kept. A broken export (wrong
    # prompt, features or vocabulary) disagrees on nearly everything; the float32 export is checked token for token
    # (tests/test_export_window.py, tests/test_short_window.py).
    assert agreement <= 40.0
    assert int8_cer <= fp32_cer + 15.0
    assert stats["audio_s"] == pytest.approx(clips["duration"].sum(), abs=0.01)
    assert stats["compute_s"] == pytest.approx(stats["encoder_s"] + stats["decoder_s"]) and stats["rtfx"] > 0
    again, _ = runtime.transcribe_export(loaded, list(clips["audio"]), batch_size=16)
    assert again == ct2, "batching and input form do not change the transcripts"


def test_student_alignment_heads_point_at_its_own_layers(run):
    heads = read_json(run.exports["student_kd"] / "config.json")["alignment_heads"]
    assert heads == [[1, 1], [1, 2]], "teacher layer 3 is student layer 1 (layer_map [0, 3]); layer 2 has no copy"
    assert read_json(run.exports["student_kd"] / "export.json")["alignment_heads"].startswith("remapped")
    import ctranslate2  # word timestamps read these heads (a head past the last layer crashes the process)

    loaded = runtime.load_export(run.exports["student_kd"])
    feats = loaded.features([np.zeros(16_000, np.float32)], sampling_rate=16_000, return_tensors="np").input_features
    aligned = loaded.model.align(ctranslate2.StorageView.from_array(feats), loaded.prompt[:3], [[10, 20, 30]], [100])
    assert len(aligned[0].alignments) > 0
    texts, _ = runtime.transcribe_export(loaded, np.zeros(16_000, np.float32))
    assert len(texts) == 1


@pytest.mark.parametrize("heads, layer_map, expected, action", [
    ([[3, 0], [3, 1]], None, None, "dropped"), ([[0, 1], [1, 0]], None, [[0, 1], [1, 0]], "kept"),
    ([[11, 0], [5, 2]], {"decoder": [0, 11]}, [[1, 0]], "remapped"), (None, None, None, "none given"),
    ([[11, 0]], {"decoder": [0, 6, 11]}, None, "dropped"),  # a map of another student: not used
    ([[1, 1]], {"decoder": [0, 11]}, [[1, 1]], "kept")])  # already the student's own heads
def test_fix_alignment_heads(heads, layer_map, expected, action):
    generation = {} if heads is None else {"alignment_heads": heads}
    assert export.fix_alignment_heads(generation, 2, layer_map).startswith(action)
    assert generation.get("alignment_heads") == expected


def test_a_distilled_student_uses_the_runs_layer_map(run):
    """student_kd / student_adalora folders hold no layer_map.json: the run's student_init has it."""
    shutil.copytree(run.root / "student_kd", run.root / "student_adalora")
    (run.root / "student_adalora" / "layer_map.json").unlink()
    (run.root / "student_init").mkdir()
    shutil.copy(run.root / "student_kd" / "layer_map.json", run.root / "student_init")
    path = export.export_model("student_adalora", run.root)
    assert read_json(path / "config.json")["alignment_heads"] == [[1, 1], [1, 2]]
    shutil.rmtree(path)
    shutil.rmtree(run.root / "student_adalora")


def test_bad_input_is_named(run, tmp_path):
    with pytest.raises(FileNotFoundError, match="student_adalora"):
        export.export_model("student_adalora", run.root)
    (tmp_path / "bert").mkdir()
    write_json(tmp_path / "bert" / "config.json", {"model_type": "bert"})
    with pytest.raises(ValueError, match="bert.*not Whisper"):
        export.export_model(tmp_path / "bert")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty holds no config.json"):
        export.export_model(tmp_path / "empty")
    with pytest.raises(ValueError, match="unsupported quantization 'int4'"):
        export.export_model("teacher", run.root, quantization="int4")
    if "float16" not in export.supported_quantizations("cpu"):
        with pytest.raises(ValueError, match="float16.*cannot run on this cpu; it can run"):
            export.export_model("teacher", run.root, quantization="float16")
    (tmp_path / "notes.wav").write_text("not audio", "utf-8")
    with pytest.raises(ValueError, match="notes.wav: cannot read the audio file"):
        runtime.transcribe_export(run.exports["teacher"], tmp_path / "notes.wav")
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        runtime.transcribe_export(run.exports["teacher"], [tmp_path / "missing.wav"])
    with pytest.raises(FileNotFoundError, match="is not an export"):
        runtime.load_export(run.root / "teacher")
    with pytest.raises(ValueError, match=r"no <\|ja\|>.*<\|en\|>, <\|zh\|>"):
        runtime.load_export(run.exports["teacher"], language="ja")


def test_a_failing_conversion_leaves_the_earlier_export(run, monkeypatch):
    from ctranslate2.converters import TransformersConverter

    path = run.exports["student_kd"]
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def broken(self, output_dir, **kwargs):
        Path(output_dir).mkdir()
        (Path(output_dir) / "model.bin").write_bytes(b"half")
        raise RuntimeError("conversion failed half-way")

    monkeypatch.setattr(TransformersConverter, "convert", broken)
    with pytest.raises(RuntimeError, match="half-way"):
        export.export_model("student_kd", run.root)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["student_kd-ct2-int8", "teacher-ct2-int8"]


def test_command_line(run, capsys):
    assert export.main(["--run-dir", str(run.root), "--model", "student_kd", "--quantization", "int8_float32"]) == 0
    out = capsys.readouterr().out
    assert "student_kd-ct2-int8_float32" in out and "int8_float32" in out
    assert read_json(run.root / "export" / "student_kd-ct2-int8_float32" / "export.json")["quantization"] == \
        "int8_float32"
    assert export.main(["--run-dir", str(run.root), "--model", "student_adalora"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "student_adalora" in err and err.count("\n") == 1
    assert export.main(["--run-dir", str(run.root), "--model", "teacher", "--quantization", "int3"]) == 2
    assert "int3" in capsys.readouterr().err


def test_compare_exports_table(run, clips):
    table = export.compare_exports({"teacher": run.teacher, "teacher int8": run.exports["teacher"],
                                    "student int8": run.exports["student_kd"]}, clips, rounds=2, warmup=1, threads=2)
    assert list(table.index) == ["teacher", "teacher int8", "student int8"]
    assert table.loc["teacher", "speed_up"] == 1.0 and table.loc["teacher", "cer_vs_reference"] == 0.0
    assert table.loc["teacher int8", "cer_vs_reference"] <= 40.0  # int8 kernels differ by processor (see above)
    assert table.loc["teacher int8", "size_mb"] < table.loc["teacher", "size_mb"]
    assert (table["rtfx_min"] <= table["rtfx"]).all() and (table["rtfx"] <= table["rtfx_max"]).all()
    assert list(table["runtime"]) == ["transformers", "ctranslate2", "ctranslate2"]
    with pytest.raises(ValueError, match="reference 'nobody'"):
        export.compare_exports({"teacher": run.teacher}, clips, reference="nobody")


@pytest.mark.parametrize("vocabulary, window_s, expected", [
    (["a"] * 1000 + models.WHISPER_SPECIALS, 5, "ctranslate2"),
    (["a"] * 50363 + ["<|notimestamps|>"] + [f"<|{i * 0.02:.2f}|>" for i in range(1501)], 30, "faster-whisper"),
    (["a"] * 50363 + ["<|notimestamps|>"] + [f"<|{i * 0.02:.2f}|>" for i in range(1501)], 5, "ctranslate2"),
    (["a"] * 100, 30, "ctranslate2")])
def test_runtime_for(vocabulary, window_s, expected):
    assert runtime.runtime_for(vocabulary, window_s) == expected


class PromptSpy:
    """The model faster-whisper runs, noting the prompt of every ``generate`` call (all else passes through)."""

    def __init__(self, model):
        self.model, self.prompts = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def generate(self, features, prompts, **kwargs):
        self.prompts.append(list(prompts[0]))
        return self.model.generate(features, prompts, **kwargs)


def test_standard_layout_goes_through_faster_whisper(tmp_path, synthetic_run):
    _, result = synthetic_run
    path = export.export_model(standard_whisper(tmp_path / "standard"), quantization="int8")
    manifest = read_json(path / "export.json")
    assert manifest["runtime"] == "faster-whisper" and manifest["alignment_heads"] == "kept"
    loaded = runtime.load_export(path, threads=2)
    assert loaded.whisper is not None and loaded.model is loaded.whisper.model
    assert loaded.prompt == [50258, 50260, 50359, 50363]  # <|startoftranscript|><|zh|><|transcribe|><|notimestamps|>
    loaded.whisper.model = spy = PromptSpy(loaded.whisper.model)
    clips = [read_recording(a) for a in result["test"]["audio"]]
    recording = tmp_path / "talk.wav"
    sf.write(recording, np.concatenate([np.concatenate([c, np.zeros(16_000, np.float32)]) for c in clips * 4]),
             16_000)
    long = longform.transcribe_long(loaded, recording, max_new_tokens=12)
    assert long.method == "vad" and long.srt.exists() and long.txt.exists()
    assert spy.prompts and all(p[-2:] == [50260, 50359] for p in spy.prompts), "prompted <|zh|><|transcribe|>"
    starts = [s.start for s in long.segments]
    # a random model places its timestamps anywhere in the window (even past the end of the audio): only the order
    assert starts == sorted(starts) and starts[0] >= 0 and all(s.start < s.end for s in long.segments)
    texts, stats = runtime.transcribe_export(loaded, clips, max_new_tokens=8)
    assert len(texts) == len(clips) and stats["encoder_s"] > 0
