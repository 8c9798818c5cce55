"""AdaLoRA: schedule checks, the allocator callback really reallocates ranks, merging keeps generations."""
import copy
from types import SimpleNamespace

import pytest
import torch

from helpers import adalora, config
from helpers.speech.collate import to_dataset
from helpers.whisper import train
from helpers.whisper.models import LoadedWhisper, load_whisper
from tests.fixtures import build_tiny_whisper


def params(**overrides):
    base = {**config.defaults("06_adalora"), "init_r": 4, "target_r": 2, "tinit": 2, "tfinal": 4, "deltaT": 2,
            "max_steps": 12, "eval_steps": 12, "save_steps": 12, "per_device_train_batch_size": 2, "warmup_steps": 0,
            "per_device_eval_batch_size": 4, "generation_max_length": 8, "learning_rate": 5e-3}
    return SimpleNamespace(**{**base, **overrides})


def fresh_model():
    model, _ = build_tiny_whisper()
    return copy.deepcopy(model)


@pytest.mark.parametrize("overrides, message", [
    (dict(tinit=5, tfinal=7), r"tinit \+ tfinal \(5 \+ 7\) must be below the optimizer steps \(12\)"),
    (dict(target_r=8), r"target_r \(8\) must not exceed init_r \(4\)"),
    (dict(deltaT=6), r"deltaT \(6\) is not shorter than the reallocation phase \(6 steps\)"),
])
def test_impossible_schedules_are_refused_before_training(overrides, message):
    p = params(**overrides)
    with pytest.raises(ValueError, match=message):
        adalora.check_schedule(p.init_r, p.target_r, p.tinit, p.tfinal, p.deltaT, p.max_steps)
    with pytest.raises(ValueError, match=message):  # and already when the notebook's parameters are resolved
        config.resolve("06_adalora", {k: v for k, v in vars(p).items() if k in config.defaults("06_adalora")})


def test_target_modules_that_match_nothing_are_refused_naming_the_real_ones():
    with pytest.raises(ValueError, match=r"match no linear layer.*'fc1'"):
        adalora.add_adalora(fresh_model(), params(), target_modules=["query", "value"])


@pytest.mark.parametrize("adapt, parts", [("decoder", {"decoder"}), ("encoder", {"encoder"}),
                                           ("all", {"encoder", "decoder"})])
def test_adapt_puts_adapters_on_the_chosen_part_only(adapt, parts):
    ranks = adalora.current_ranks(adalora.add_adalora(fresh_model(), params(adapt=adapt)))
    assert set(ranks["part"]) == parts
    # 1 layer per part, 10 matrices each: self q k v out, cross q k v out, fc1, fc2 (decoder); encoder has no cross
    assert len(ranks) == {"decoder": 10, "encoder": 6, "all": 16}[adapt]


def test_an_unknown_adapt_value_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"adapt must be one of \['all', 'decoder', 'encoder'\], got 'both'"):
        adalora.add_adalora(fresh_model(), params(adapt="both"))


def test_planned_budget_is_peft_s_own_schedule():
    p = params(max_steps=40, tinit=5, tfinal=10, deltaT=3)
    model = adalora.add_adalora(fresh_model(), p)
    n_matrices = len(adalora.current_ranks(model))
    planned = adalora.planned_budget(p, n_matrices).set_index("step")["budget"]
    allocator = model.base_model.rankallocator
    assert [planned[s] for s in range(41)] == [allocator.budget_schedule(s)[0] for s in range(41)]
    assert planned[0] == 4 * n_matrices and planned[40] == 2 * n_matrices  # init_r and target_r per matrix


def trained(synthetic_run, tmp_path, with_callback):
    _, result = synthetic_run
    _, processor = build_tiny_whisper()
    p = params()
    model = adalora.add_adalora(fresh_model(), p)
    callbacks = [adalora.RankAllocatorCallback(model)] if with_callback else []
    train_ds, test_ds = to_dataset(result["train"], processor), to_dataset(result["test"], processor)
    trainer = train.build_trainer(p, LoadedWhisper(model, processor, "tiny"), train_ds, test_ds, tmp_path, callbacks,
                                  keep_best=False)
    with adalora.pruned_ranks_saved():  # checkpoints of pruned adapters, as run_phase saves them
        trainer.train()
    return model, processor, callbacks


def test_the_allocator_callback_reallocates_ranks_to_the_target_budget(synthetic_run, tmp_path):
    model, _, (callback,) = trained(synthetic_run, tmp_path, with_callback=True)
    ranks = adalora.current_ranks(model)
    assert ranks["rank"].sum() == 2 * len(ranks)      # the target budget: target_r per matrix on average
    assert ranks["rank"].nunique() > 1                # not uniform: some matrices kept more rank than others
    # recorded right after each allocation: never above the planned budget, ending at the target
    planned = adalora.planned_budget(params(), len(ranks)).set_index("step")["budget"]
    assert all(r["total_rank"] <= planned[r["step"]] for r in callback.budget)
    last = callback.budget[-1]
    assert (last["step"], last["total_rank"]) == (12, 2 * len(ranks))
    assert sum(last["ranks"].values()) == last["total_rank"] and len(last["ranks"]) == len(ranks)


def test_without_the_callback_adalora_is_plain_lora(synthetic_run, tmp_path):
    model, _, _ = trained(synthetic_run, tmp_path, with_callback=False)
    assert set(adalora.current_ranks(model)["rank"]) == {4}  # every matrix still at init_r


def test_merged_model_generates_what_the_adapter_model_generates_and_reloads(synthetic_run, tmp_path):
    model, processor, _ = trained(synthetic_run, tmp_path, with_callback=True)
    model.eval()
    torch.manual_seed(0)
    feats = torch.randn(2, 80, model.base_model.model.config.max_source_positions * 2)
    with torch.no_grad():
        adapter_out = model.generate(input_features=feats, max_new_tokens=6)
    merged, folder = adalora.merge_and_save(model, processor, tmp_path / "merged")
    with torch.no_grad():
        assert torch.equal(merged.generate(input_features=feats, max_new_tokens=6), adapter_out)
    assert (folder / "adapter" / "adapter_config.json").exists()
    reloaded = load_whisper(folder).model.eval()
    assert not any("lora" in name for name, _ in reloaded.named_parameters())
    with torch.no_grad():
        assert torch.equal(reloaded.generate(input_features=feats, max_new_tokens=6), adapter_out)
