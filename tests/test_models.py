"""Specification of helpers.whisper.models: the tiny offline Whisper, its tokenizer, saving, loading and counting.

The shared tokenizer (tests/fixtures.py) has 300 byte-level BPE tokens (ids 0-299) plus Whisper's
10 special tokens (ids 300-309); the shared model is a random 1+1-layer Whisper of width 64.
Nothing here touches the Hugging Face hub: every model is loaded from a temporary folder.
"""
import json

import pytest
import torch

from helpers.whisper import models

SENTENCE = "明天下午三點的meeting改到台北車站"
PROMPT = ["<|startoftranscript|>", "<|zh|>", "<|transcribe|>", "<|notimestamps|>"]
SMALL = dict(d_model=64, layers=1, heads=2, ffn=128)  # the fixture model's size


@pytest.fixture(scope="module")
def tokenizer(tiny_whisper):  # noqa: F811
    return tiny_whisper[1].tokenizer


@pytest.fixture(scope="module")
def saved(tiny_whisper, tmp_path_factory):  # noqa: F811
    """The shared model and processor saved with save_whisper, and what load_whisper makes of the folder."""
    model, processor = tiny_whisper
    folder = models.save_whisper(model, processor, tmp_path_factory.mktemp("tiny_whisper"))
    return folder, models.load_whisper(folder)


def ids(tokenizer, tokens):
    return tokenizer.convert_tokens_to_ids(tokens)


# ---------------------------------------------------------------- build_tokenizer


def test_build_tokenizer_puts_the_special_tokens_on_top_in_whispers_order(tokenizer):
    # 300 BPE tokens take ids 0-299, so the 10 specials take 300-309 in WHISPER_SPECIALS order
    assert ids(tokenizer, models.WHISPER_SPECIALS) == list(range(300, 310))
    assert len(tokenizer) == 310


def test_language_tokens_follow_start_of_transcript_in_whispers_language_order(tokenizer):
    # Whisper computes a language id as start-of-transcript + 1 + index in (en, zh, ...): zh is index 1
    sot = ids(tokenizer, "<|startoftranscript|>")
    assert ids(tokenizer, "<|en|>") == sot + 1
    assert ids(tokenizer, "<|zh|>") == sot + 2


def test_no_timestamps_is_the_last_id_and_no_speech_the_one_before(tokenizer):
    # ids above no-timestamps would be read as timestamps, and no-speech = no-timestamps - 1
    no_timestamps = ids(tokenizer, "<|notimestamps|>")
    assert no_timestamps == len(tokenizer) - 1
    assert ids(tokenizer, "<|nospeech|>") == no_timestamps - 1


def test_special_tokens_are_never_split(tokenizer):
    assert tokenizer.tokenize("<|zh|><|transcribe|>") == ["<|zh|>", "<|transcribe|>"]


def test_tokenizer_round_trips_mandarin_with_english_words(tokenizer):
    encoded = tokenizer(SENTENCE).input_ids
    assert tokenizer.decode(encoded, skip_special_tokens=True) == SENTENCE


def test_tokenizer_prefixes_the_prompt_and_appends_end_of_text(tokenizer):
    encoded = tokenizer(SENTENCE).input_ids
    assert encoded[:4] == ids(tokenizer, PROMPT)
    assert encoded[-1] == ids(tokenizer, "<|endoftext|>")


def test_tokenizer_covers_unseen_characters_with_bytes(tokenizer):
    # byte-level BPE: a character absent from the training sentences still encodes and decodes
    assert tokenizer.decode(tokenizer("鯨魚").input_ids, skip_special_tokens=True) == "鯨魚"


# ---------------------------------------------------------------- new_tiny_whisper


def test_new_tiny_whisper_config_matches_its_tokenizer_and_window(tiny_whisper, tokenizer):  # noqa: F811
    model, processor = tiny_whisper
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.decoder_start_token_id == ids(tokenizer, "<|startoftranscript|>")
    assert model.config.max_source_positions == 250  # 5 s x 50 encoder positions per second
    assert models.window_seconds(processor.feature_extractor) == 5.0


def test_new_tiny_whisper_generation_config_points_into_the_small_vocabulary(tiny_whisper, tokenizer):  # noqa: F811
    gen = tiny_whisper[0].generation_config
    assert gen.lang_to_id == {"<|en|>": ids(tokenizer, "<|en|>"), "<|zh|>": ids(tokenizer, "<|zh|>")}
    assert gen.task_to_id["transcribe"] == ids(tokenizer, "<|transcribe|>")
    assert gen.no_timestamps_token_id == ids(tokenizer, "<|notimestamps|>")
    assert (gen.language, gen.task) == ("zh", "transcribe")


def test_new_tiny_whisper_is_reproducible_for_a_seed(tokenizer):
    a, _ = models.new_tiny_whisper(tokenizer, seed=3, **SMALL)
    b, _ = models.new_tiny_whisper(tokenizer, seed=3, **SMALL)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---------------------------------------------------------------- save_whisper / load_whisper


def test_save_whisper_writes_safetensors_and_the_processor(saved):
    folder, _ = saved
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json"} <= names
    assert not any(n.endswith(".bin") for n in names)


def test_loaded_tokenizer_gives_the_same_ids_as_the_saved_one(saved, tokenizer):
    _, loaded = saved
    assert loaded.tokenizer(SENTENCE).input_ids == tokenizer(SENTENCE).input_ids


def test_loaded_tokenizer_has_the_zh_transcribe_prompt(saved):
    _, loaded = saved
    assert loaded.tokenizer.prefix_tokens == ids(loaded.tokenizer, PROMPT)


def test_loaded_model_has_the_saved_weights(saved, tiny_whisper):  # noqa: F811
    _, loaded = saved
    original = tiny_whisper[0].state_dict()
    assert all(torch.equal(original[k], v) for k, v in loaded.model.state_dict().items())


def test_loaded_feature_extractor_keeps_the_5_s_window(saved):
    _, loaded = saved
    assert models.window_seconds(loaded.feature_extractor) == 5.0
    assert loaded.feature_extractor.feature_size == 80


def test_load_whisper_sets_the_prompt_on_the_generation_config(saved):
    _, loaded = saved
    gen = loaded.model.generation_config
    assert (gen.language, gen.task, gen.forced_decoder_ids) == ("zh", "transcribe", None)
    assert loaded.source == str(saved[0])


def test_load_whisper_can_set_another_task(saved):
    folder, _ = saved
    loaded = models.load_whisper(folder, task="translate")
    assert loaded.tokenizer.prefix_tokens[2] == ids(loaded.tokenizer, "<|translate|>")
    assert loaded.model.generation_config.task == "translate"


def test_a_loaded_random_model_generates_ids_of_its_vocabulary(saved):
    _, loaded = saved
    audio = torch.zeros(16_000).numpy()  # 1 s of silence
    feats = loaded.feature_extractor([audio], sampling_rate=16_000, return_tensors="pt").input_features
    with torch.no_grad():
        out = loaded.model.generate(feats, language="zh", task="transcribe", max_new_tokens=4)
    assert out.shape[0] == 1 and 1 <= out.shape[1] <= 4 + 4  # at most the prompt plus 4 new tokens
    assert int(out.max()) < len(loaded.tokenizer)


def test_load_whisper_of_a_folder_without_config_json_explains_what_to_give(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model", "utf-8")
    with pytest.raises(ValueError, match="holds no config.json: it is not a saved model"):
        models.load_whisper(tmp_path)


def test_load_whisper_of_another_architecture_says_it_is_not_whisper(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}), "utf-8")
    with pytest.raises(ValueError, match="holds a 'wav2vec2' model, not a Whisper model"):
        models.load_whisper(tmp_path)


def test_load_whisper_of_a_missing_absolute_folder_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.load_whisper(tmp_path / "no_such_model")


def test_load_whisper_of_a_missing_dot_relative_folder_raises_file_not_found():
    # "./..." can only be a folder, never a hub id: no hub request is made
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.load_whisper("./runs/no_such_run/teacher")


def test_save_whisper_with_a_dtype_leaves_the_callers_model_as_it_was(tokenizer, tmp_path):
    model, processor = models.new_tiny_whisper(tokenizer, **SMALL)
    models.save_whisper(model, processor, tmp_path, dtype=torch.float16)
    assert next(model.parameters()).dtype == torch.float32


def test_save_whisper_with_a_dtype_stores_weights_in_that_dtype(tokenizer, tmp_path):
    from safetensors import safe_open

    model, processor = models.new_tiny_whisper(tokenizer, **SMALL)
    models.save_whisper(model, processor, tmp_path, dtype=torch.float16)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert next(models.load_whisper(tmp_path).model.parameters()).dtype == torch.float32  # loads as asked


# ---------------------------------------------------------------- count_parameters


def test_count_parameters_parts_add_up_to_the_total(tiny_whisper):  # noqa: F811
    counts = models.count_parameters(tiny_whisper[0])
    assert counts["encoder"] + counts["decoder"] + counts["embeddings"] == pytest.approx(counts["total"], abs=1e-9)


def test_count_parameters_counts_the_tied_output_projection_once(tiny_whisper):  # noqa: F811
    model = tiny_whisper[0]
    assert model.proj_out.weight is model.model.decoder.embed_tokens.weight
    assert models.count_parameters(model)["total"] * 1e6 == pytest.approx(
        sum(p.numel() for p in model.model.parameters()))


def test_count_parameters_embeddings_are_token_plus_decoder_positions(tiny_whisper):  # noqa: F811
    # 310 tokens x 64 + 96 positions x 64 = 19840 + 6144 = 25984 -> 0.025984 M
    assert models.count_parameters(tiny_whisper[0])["embeddings"] == pytest.approx(0.025984)


def test_count_parameters_trainable_leaves_out_the_fixed_encoder_positions(tiny_whisper):  # noqa: F811
    # Whisper's sinusoidal encoder positions are frozen: 250 positions x 64 = 16000 -> 0.016 M
    counts = models.count_parameters(tiny_whisper[0])
    assert counts["total"] - counts["trainable"] == pytest.approx(0.016)
