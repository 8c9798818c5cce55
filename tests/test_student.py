"""Specification of helpers.student: cutting a small Whisper student out of a larger teacher.

Two tiny random teachers of different shapes share the fixture's tokenizer (300 BPE tokens + 10
specials): "4+4" (4 encoder and 4 decoder layers, width 64, 80 mel bins) and "3+5" (3 encoder and 5
decoder layers, width 32, 16 mel bins). Both use a 1 s window (max_source_positions 50, 100 frames),
so nothing here assumes one size. Nothing touches the Hugging Face hub.
"""
import copy
import json
import random

import pytest
import torch
from matplotlib.figure import Figure
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from helpers import student
from helpers.figures import plots
from helpers.whisper import models

SHAPES = {"4+4": dict(encoder_layers=4, decoder_layers=4, d_model=64, heads=2, ffn=128, num_mel_bins=80),
          "3+5": dict(encoder_layers=3, decoder_layers=5, d_model=32, heads=2, ffn=64, num_mel_bins=16)}


def build(tokenizer, encoder_layers, decoder_layers, d_model, heads, ffn, num_mel_bins, seed=0):
    """A random Whisper of that shape with a 1 s window, its generation config and processor."""
    config = models.tiny_config(tokenizer, window_s=1, d_model=d_model, layers=encoder_layers, heads=heads,
                                ffn=ffn, num_mel_bins=num_mel_bins)
    config.decoder_layers = decoder_layers
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = models.whisper_generation_config(tokenizer, config.max_target_positions)
    processor = WhisperProcessor(feature_extractor=models.tiny_feature_extractor(1, num_mel_bins), tokenizer=tokenizer)
    models.set_prompt(model, processor)
    return model, processor


@pytest.fixture(scope="module")
def tokenizer(tiny_whisper):  # noqa: F811
    return tiny_whisper[1].tokenizer


@pytest.fixture(scope="module")
def teachers(tokenizer):
    """{"4+4": (model, processor), "3+5": (model, processor)}; tests must not modify them."""
    return {name: build(copy.deepcopy(tokenizer), **shape) for name, shape in SHAPES.items()}


@pytest.fixture(scope="module", params=list(SHAPES))
def teacher(request, teachers):
    return teachers[request.param]


def features(model, batch=2, seed=0):
    """Random input features of the shape the encoder accepts: batch x num_mel_bins x 2*max_source_positions."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.config.num_mel_bins, 2 * model.config.max_source_positions, generator=gen)


def layer_params(model, part, index):
    return dict(getattr(model.model, part).layers[index].named_parameters())


# ---------------------------------------------------------------- layer_map


def test_layer_map_12_to_2_takes_first_and_last():
    assert student.layer_map(12, 2) == [0, 11]


def test_layer_map_32_to_2_takes_first_and_last():
    # Breeze-ASR-25 (Whisper-large-v2 shape) has 32 decoder layers
    assert student.layer_map(32, 2) == [0, 31]


def test_layer_map_4_to_2_takes_first_and_last():
    assert student.layer_map(4, 2) == [0, 3]


def test_layer_map_12_to_3_rounds_the_middle_half_up():
    # positions 0, 11/2 = 5.5, 11 -> 5.5 rounds half up to 6
    assert student.layer_map(12, 3) == [0, 6, 11]


def test_layer_map_12_to_4_spaces_evenly():
    # positions 0, 11/3 = 3.67, 22/3 = 7.33, 11 -> rounded to 0, 4, 7, 11
    assert student.layer_map(12, 4) == [0, 4, 7, 11]


def test_layer_map_of_as_many_layers_takes_all():
    assert student.layer_map(6, 6) == [0, 1, 2, 3, 4, 5]


def test_layer_map_of_one_layer_takes_the_teachers_last():
    assert student.layer_map(5, 1) == [4]


def test_layer_map_is_strictly_increasing_from_0_to_the_last_for_every_size():
    for n_teacher in range(2, 33):
        for n_student in range(2, n_teacher + 1):
            m = student.layer_map(n_teacher, n_student)
            assert len(m) == n_student and m[0] == 0 and m[-1] == n_teacher - 1
            assert all(a < b for a, b in zip(m, m[1:])), (n_teacher, n_student, m)


def test_layer_map_of_no_student_layers_raises_naming_both_numbers():
    with pytest.raises(ValueError, match=r"1 to 12 layers .*got 0 student layers"):
        student.layer_map(12, 0)


def test_layer_map_of_more_student_than_teacher_layers_raises_naming_both_numbers():
    with pytest.raises(ValueError, match=r"12-layer teacher, got 13 student layers"):
        student.layer_map(12, 13)


# ---------------------------------------------------------------- init_student


def test_init_student_sets_the_decoder_layers_and_keeps_the_rest_of_the_config(teacher):
    model, _ = teacher
    small, maps = student.init_student(model, decoder_layers=2)
    assert small.config.decoder_layers == 2 and len(small.model.decoder.layers) == 2
    assert small.config.encoder_layers == model.config.encoder_layers  # encoder_layers=None keeps all
    expected = {"decoder": [0, model.config.decoder_layers - 1], "encoder": list(range(model.config.encoder_layers))}
    assert maps == expected
    for key in ("d_model", "vocab_size", "num_mel_bins", "max_source_positions", "decoder_ffn_dim"):
        assert getattr(small.config, key) == getattr(model.config, key)


def test_init_student_copies_teacher_layer_map_j_into_student_layer_j(teacher):
    model, _ = teacher
    small, maps = student.init_student(model, decoder_layers=2)
    # 4 -> 2 gives [0, 3]; 5 -> 2 gives [0, 4]
    for j, t in enumerate(maps["decoder"]):
        mine, theirs = layer_params(small, "decoder", j), layer_params(model, "decoder", t)
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_init_student_copies_every_weight_and_keeps_no_random_or_empty_one(teacher):
    model, _ = teacher
    small, _ = student.init_student(model, decoder_layers=2)
    fresh_keys = WhisperForConditionalGeneration(small.config).state_dict().keys()
    assert small.state_dict().keys() == fresh_keys  # what load_state_dict(strict=True) checked
    assert not any(p.is_meta for p in small.parameters())


def test_init_student_copies_embeddings_convolutions_and_layer_norms(teacher):
    model, _ = teacher
    small, _ = student.init_student(model, decoder_layers=2)
    teacher_state = model.state_dict()
    for key in ("model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight",
                "model.encoder.embed_positions.weight", "model.encoder.conv1.weight", "model.encoder.conv2.bias",
                "model.encoder.layer_norm.weight", "model.decoder.layer_norm.bias"):
        assert torch.equal(small.state_dict()[key], teacher_state[key]), key


def test_init_student_with_the_whole_encoder_gives_exactly_the_teachers_encoder_output(teacher):
    model, _ = teacher
    small, _ = student.init_student(model, decoder_layers=2)
    assert student.encoder_outputs_equal(model, small, features(model))


def test_init_student_keeps_the_output_projection_tied_to_the_token_embedding(teacher):
    model, _ = teacher
    small, _ = student.init_student(model, decoder_layers=2)
    assert small.proj_out.weight.data_ptr() == small.model.decoder.embed_tokens.weight.data_ptr()


def test_init_student_weights_are_copies_not_shared_with_the_teacher(teacher):
    model, _ = teacher
    small, _ = student.init_student(model, decoder_layers=2)
    with torch.no_grad():
        small.model.decoder.embed_tokens.weight.add_(1.0)
        small.model.encoder.layers[0].fc1.weight.add_(1.0)
    assert not torch.equal(small.model.decoder.embed_tokens.weight, model.model.decoder.embed_tokens.weight)
    assert not torch.equal(small.model.encoder.layers[0].fc1.weight, model.model.encoder.layers[0].fc1.weight)


def test_init_student_can_shrink_the_encoder_too(teachers):
    model, _ = teachers["4+4"]
    small, maps = student.init_student(model, decoder_layers=2, encoder_layers=2)
    assert maps["encoder"] == [0, 3]  # 4 -> 2: first and last
    assert small.config.encoder_layers == 2 and len(small.model.encoder.layers) == 2
    mine, theirs = layer_params(small, "encoder", 1), layer_params(model, "encoder", 3)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_init_student_with_a_shrunk_encoder_gives_another_encoder_output(teachers):
    model, _ = teachers["4+4"]
    small, _ = student.init_student(model, decoder_layers=2, encoder_layers=2)
    assert not student.encoder_outputs_equal(model, small, features(model), atol=1e-4)


def test_init_student_keeps_the_sources_dtype(teachers):
    model = copy.deepcopy(teachers["3+5"][0]).to(torch.bfloat16)
    small, _ = student.init_student(model, decoder_layers=2)
    assert {p.dtype for p in small.parameters()} == {torch.bfloat16}


def test_init_student_copies_the_generation_config(teacher):
    model, _ = teacher
    small, _ = student.init_student(model, decoder_layers=2)
    assert small.generation_config is not model.generation_config  # a deep copy
    assert small.generation_config.to_dict() == model.generation_config.to_dict()


def test_init_student_of_more_decoder_layers_than_the_teacher_has_raises(teachers):
    with pytest.raises(ValueError, match="4-layer teacher, got 6 student layers"):
        student.init_student(teachers["4+4"][0], decoder_layers=6)


def test_a_student_generates_ids_of_its_vocabulary(teacher, tokenizer):
    model, _ = teacher
    small, _ = student.init_student(model, decoder_layers=2)
    small.eval()
    with torch.no_grad():
        out = small.generate(features(model, batch=1), language="zh", task="transcribe", max_new_tokens=5)
    assert out.shape[0] == 1 and out.shape[1] <= 4 + 5  # at most the prompt plus 5 new tokens
    assert int(out.max()) < len(tokenizer)


# ---------------------------------------------------------------- encoder_outputs_equal


def test_encoder_outputs_equal_tells_apart_encoders_whose_weights_differ(teachers):
    model, _ = teachers["4+4"]
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.encoder.layers[2].fc2.bias.add_(1e-3)
    assert not student.encoder_outputs_equal(model, other, features(model))
    assert student.encoder_outputs_equal(model, other, features(model), atol=1.0)  # within a loose tolerance


def test_encoder_outputs_equal_restores_each_models_training_mode(teachers):
    model, _ = teachers["4+4"]
    small, _ = student.init_student(model, decoder_layers=2)
    small.train()
    student.encoder_outputs_equal(model, small, features(model))
    assert small.training and not model.training


# ---------------------------------------------------------------- check_compatible


def test_check_compatible_accepts_the_same_vocabulary(tokenizer):
    models.check_compatible(tokenizer, copy.deepcopy(tokenizer))  # no error


def test_check_compatible_rejects_another_vocabulary(tokenizer):
    rng = random.Random(1)
    texts = ["".join(rng.choice("abcdefghij ") for _ in range(30)) for _ in range(50)]
    other = models.build_tokenizer(texts, vocab_size=280)
    with pytest.raises(ValueError, match=r"differs from the teacher's in \d+ tokens .*needs a shared tokenizer"):
        models.check_compatible(tokenizer, other)


# ---------------------------------------------------------------- make_student / save_student


def loaded_teacher(teachers, task="transcribe"):
    model, processor = copy.deepcopy(teachers["4+4"])
    models.set_prompt(model, processor, task=task)
    return models.LoadedWhisper(model, processor, "runs/tiny/teacher")


def test_make_student_from_the_teacher_shrinks_it_and_keeps_its_processor(teachers):
    teacher = loaded_teacher(teachers)
    small, maps = student.make_student(teacher, "teacher", decoder_layers=2)
    assert maps["decoder"] == [0, 3] and small.model.config.decoder_layers == 2
    assert small.source == "runs/tiny/teacher"
    assert small.tokenizer.get_vocab() == teacher.tokenizer.get_vocab()
    assert small.feature_extractor.feature_size == 80


def test_make_student_from_a_checkpoint_folder_copies_that_checkpoints_layers(teachers, tmp_path):
    other, other_processor = teachers["3+5"]  # same tokenizer as the 4+4 teacher, 16 mel bins
    models.save_whisper(other, other_processor, tmp_path)
    small, maps = student.make_student(loaded_teacher(teachers), str(tmp_path), decoder_layers=2)
    assert maps == {"decoder": [0, 4], "encoder": [0, 1, 2]}  # 5 -> 2 decoder layers, encoder kept
    mine, theirs = layer_params(small.model, "decoder", 1), layer_params(other, "decoder", 4)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert small.feature_extractor.feature_size == 16  # the checkpoint's own features
    assert small.source == str(tmp_path)


def test_make_student_gives_the_student_the_teachers_prompt(teachers, tmp_path):
    models.save_whisper(*teachers["3+5"], tmp_path)  # saved with the transcribe prompt
    small, _ = student.make_student(loaded_teacher(teachers, task="translate"), str(tmp_path))
    ids = small.tokenizer.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|zh|>", "<|translate|>", "<|notimestamps|>"])
    assert small.tokenizer.prefix_tokens == ids
    assert (small.model.generation_config.language, small.model.generation_config.task) == ("zh", "translate")


def test_make_student_from_a_checkpoint_with_another_tokenizer_raises(teachers, tmp_path):
    rng = random.Random(2)
    other_tokenizer = models.build_tokenizer(["".join(rng.choice("klmnop ") for _ in range(30)) for _ in range(50)],
                                             vocab_size=280)
    models.save_whisper(*build(other_tokenizer, **SHAPES["3+5"]), tmp_path)
    with pytest.raises(ValueError, match="needs a shared tokenizer"):
        student.make_student(loaded_teacher(teachers), str(tmp_path))


def test_save_student_writes_the_layer_maps_teacher_layer_counts_and_source(teachers, tmp_path):
    small, maps = student.make_student(loaded_teacher(teachers), decoder_layers=2)
    folder = student.save_student(small, tmp_path / "student", maps)
    info = json.loads((folder / "layer_map.json").read_text("utf-8"))
    assert info == {"decoder": [0, 3], "encoder": [0, 1, 2, 3], "teacher_decoder_layers": 4,
                    "teacher_encoder_layers": 4, "source": "runs/tiny/teacher"}


def test_a_saved_student_reloads_with_load_whisper(teachers, tmp_path):
    small, maps = student.make_student(loaded_teacher(teachers), decoder_layers=2)
    folder = student.save_student(small, tmp_path / "student", maps)
    reloaded = models.load_whisper(folder)
    assert reloaded.model.config.decoder_layers == 2
    original = small.model.state_dict()
    assert all(torch.equal(original[k], v) for k, v in reloaded.model.state_dict().items())
    assert reloaded.model.proj_out.weight.data_ptr() == reloaded.model.model.decoder.embed_tokens.weight.data_ptr()


# ---------------------------------------------------------------- plot_layer_map


def test_plot_layer_map_of_the_decoder_returns_a_figure_with_one_panel():
    fig = plots.plot_layer_map(12, [0, 11])
    assert isinstance(fig, Figure) and len(fig.axes) == 1


def test_plot_layer_map_with_the_encoder_draws_a_panel_for_each():
    fig = plots.plot_layer_map(32, [0, 31], 32, student.layer_map(32, 4))
    assert isinstance(fig, Figure) and len(fig.axes) == 2
