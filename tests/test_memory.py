"""Specification of helpers.figures.memory: tensor memory of one training step, on real and on fake tensors.

The model is the shared tiny Whisper (tests/fixtures.py: 1+1 layers, width 64, 2 heads, ffn 128, 5 s window =
250 encoder positions, 96 target positions), rebuilt from its config: once with real tensors on the CPU and
once on the meta device turned into fake tensors. A fake step must hold exactly the bytes the real one holds.
"""
import contextlib
import copy

import pandas as pd
import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch._subclasses.fake_tensor import FakeTensorMode
from transformers import WhisperForConditionalGeneration

from helpers.figures import memory
from helpers.whisper.train import LORA_TARGETS

R = 4  # LoRA rank used here
LABELS = 20


def step(config, *, fake: bool, lora: bool = False, ckpt: bool = False, trainable_positions: bool = False):
    """One training step of the tiny model (bf16 autocast; LoRA on a bf16 base) under tensor_peak."""
    torch.manual_seed(0)
    with torch.device("meta" if fake else "cpu"):
        model = WhisperForConditionalGeneration(copy.deepcopy(config))
    model.train()
    model.config.use_cache = False
    if trainable_positions:  # MemTracker hooks every parameter, so none may be frozen
        model.model.encoder.embed_positions.weight.requires_grad_(True)
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        model.to(torch.bfloat16)
        if ckpt:
            model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=R, lora_alpha=2 * R, lora_dropout=0.05, target_modules=LORA_TARGETS))
    mode = FakeTensorMode() if fake else contextlib.nullcontext()
    if fake:
        memory.fake_module(model, mode)
    with mode:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
        batch = {"input_features": torch.randn(1, config.num_mel_bins, 2 * config.max_source_positions),
                 "labels": torch.randint(0, config.vocab_size, (1, LABELS))}
        return memory.tensor_peak(lambda: memory.training_step(model, batch, optimizer, torch.bfloat16),
                                  model=model, optimizer=optimizer, inputs=batch)


@pytest.fixture(scope="module")
def config(tiny_whisper):  # noqa: F811
    return tiny_whisper[0].config


def parameter_count_by_hand(c) -> int:
    """Whisper's parameters from its dimensions (no framework involved): the output projection is tied."""
    d, f = c.d_model, c.encoder_ffn_dim
    attention = 4 * d * d + 3 * d  # q, k, v, out weights; q, v, out biases (k has none)
    layer_norm = 2 * d
    ffn = d * f + f + f * d + d
    encoder_layer = attention + layer_norm + ffn + layer_norm
    decoder_layer = 2 * attention + 3 * layer_norm + ffn
    convs = c.num_mel_bins * d * 3 + d + d * d * 3 + d
    encoder = convs + c.max_source_positions * d + c.encoder_layers * encoder_layer + layer_norm
    decoder = c.vocab_size * d + c.max_target_positions * d + c.decoder_layers * decoder_layer + layer_norm
    return encoder + decoder


def lora_count_by_hand(c) -> int:
    d, f = c.d_model, c.encoder_ffn_dim
    per_attention = 4 * R * (d + d)
    ffn = R * (d + f) + R * (f + d)
    return c.encoder_layers * (per_attention + ffn) + c.decoder_layers * (2 * per_attention + ffn)


@pytest.mark.parametrize("recipe", [dict(), dict(ckpt=True), dict(lora=True, ckpt=True)],
                         ids=["full", "full+ckpt", "lora+ckpt"])
def test_fake_tensors_hold_exactly_the_bytes_real_tensors_hold(config, recipe):
    real = step(config, fake=False, **recipe)
    fake = step(config, fake=True, **recipe)
    assert fake["peak_bytes"] == real["peak_bytes"]
    assert fake["at_peak"] == real["at_peak"] and fake["peak_phase"] == real["peak_phase"]
    assert fake["optimizer_state_bytes"] == real["optimizer_state_bytes"]


def test_parameter_bytes_are_the_parameter_sizes_worked_out_by_hand(config):
    full = step(config, fake=True)
    assert full["parameter_bytes"] == 4 * parameter_count_by_hand(config)  # fp32
    assert full["at_peak"]["parameters"] == full["parameter_bytes"]  # every parameter is alive at the peak
    # AdamW keeps two fp32 moments per trainable parameter (+ a 4-byte step count per tensor)
    trainable = full["trainable_parameter_bytes"]
    n_tensors = sum(1 for p in WhisperForConditionalGeneration(config).parameters() if p.requires_grad)
    assert full["optimizer_state_bytes"] == 2 * trainable + 4 * n_tensors
    lora = step(config, fake=True, lora=True, ckpt=True)
    assert lora["trainable_parameter_bytes"] == 4 * lora_count_by_hand(config)  # fp32 adapters
    assert lora["parameter_bytes"] == 2 * parameter_count_by_hand(config) + 4 * lora_count_by_hand(config)
    assert lora["at_peak"]["optimizer"] <= lora["optimizer_state_bytes"] < full["optimizer_state_bytes"]


@pytest.mark.filterwarnings("ignore:Module is None")  # MemTracker's own hooks, on modules freed in backward
def test_the_tracker_agrees_with_pytorchs_memtracker(config):
    from torch.distributed._tools.mem_tracker import MemTracker

    ours = step(config, fake=False, trainable_positions=True)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(copy.deepcopy(config))
    model.train()
    model.config.use_cache = False
    model.model.encoder.embed_positions.weight.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batch = {"input_features": torch.randn(1, config.num_mel_bins, 2 * config.max_source_positions),
             "labels": torch.randint(0, config.vocab_size, (1, LABELS))}
    tracker = MemTracker()
    tracker.track_external(model, optimizer, batch["input_features"], batch["labels"])
    with tracker:
        memory.training_step(model, batch, optimizer, torch.bfloat16)
    (snapshot,) = tracker.get_tracker_snapshot("peak").values()
    assert snapshot["Total"] == ours["peak_bytes"]


def test_gradients_and_optimizer_state_are_told_apart_from_activations(config):
    result = step(config, fake=True, ckpt=True)
    assert result["max"]["gradients"] == result["trainable_parameter_bytes"]  # all gradients exist at once
    assert result["max"]["activations"] > 0 and result["max"]["temporaries"] > 0
    assert set(result["phase_peaks"]) == {"forward", "backward", "optimizer"}
    assert result["peak_bytes"] == max(result["phase_peaks"].values()) == sum(result["at_peak"].values())


def test_rounding_to_allocator_blocks_only_ever_adds_bytes():
    model = torch.nn.Linear(3, 5)  # 15 + 5 floats: 60 and 20 bytes
    exact = memory.tensor_peak(lambda: None, model=model, round_to=1)
    rounded = memory.tensor_peak(lambda: None, model=model, round_to=512)
    assert exact["peak_bytes"] == 80 and rounded["peak_bytes"] == 1024


def test_cuda_autocast_policy_runs_layer_norm_in_float32_only_while_active():
    x, shape = torch.randn(2, 4, 8, dtype=torch.float16), (8,)
    w, b = torch.ones(8, dtype=torch.float16), torch.zeros(8, dtype=torch.float16)
    with torch.autocast("cpu", dtype=torch.float16):
        assert torch.nn.functional.layer_norm(x, shape, w, b).dtype == torch.float16  # CPU autocast's own rule
        with memory.cuda_autocast_policy():
            assert torch.nn.functional.layer_norm(x, shape, w, b).dtype == torch.float32  # CUDA autocast's rule
        assert torch.nn.functional.layer_norm(x, shape, w, b).dtype == torch.float16


def test_fake_module_keeps_tied_weights_tied_and_needs_the_meta_device(config):
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(copy.deepcopy(config))
    memory.fake_module(model, FakeTensorMode(), "cpu")
    assert model.proj_out.weight is model.model.decoder.embed_tokens.weight
    assert model.proj_out.weight.device.type == "cpu"
    with pytest.raises(ValueError, match="meta device"):
        memory.fake_module(torch.nn.Linear(2, 2), FakeTensorMode())


def test_fit_table_adds_the_fixed_costs_and_tells_what_fits():
    gb = 1e9
    recipe = {"peak_bytes": 5 * gb, "peak_phase": "forward", "at_peak": {
        "parameters": 3 * gb, "buffers": 0, "inputs": 0, "gradients": 0.5 * gb, "optimizer": 0.5 * gb,
        "activations": 0.6 * gb, "temporaries": 0.4 * gb}}
    results = {"fixed_costs": {"cuda_context_gb": 0.5, "cublas_workspace_gb": 0.0, "allocator_overhead": 0.2},
               "shapes": {"s": {"recipes": {"a": recipe, "b": {**recipe, "peak_bytes": 7 * gb, "how": "derived"},
                                            "broken": {"error": "x"}}}}}
    table = memory.fit_table(results, budget_gb=8.0)
    assert isinstance(table, pd.DataFrame) and list(table.index) == [("s", "a"), ("s", "b")]
    a, b = table.loc[("s", "a")], table.loc[("s", "b")]
    assert a["estimated GPU GB"] == pytest.approx(5 * 1.2 + 0.5) and a["fits 8 GB"]
    assert a["margin GB"] == pytest.approx(8 - 6.5) and a["activations GB"] == pytest.approx(1.0)
    assert not b["fits 8 GB"] and b["margin GB"] == pytest.approx(8 - 8.9) and b["how"] == "derived"
    assert memory.fit_table(results, 8.0, allocator_overhead=0.0).loc[("s", "b"), "fits 8 GB"]
