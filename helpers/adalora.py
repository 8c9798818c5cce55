"""AdaLoRA fine-tuning of the student, with the rank budget really adapting.

AdaLoRA (Zhang et al., 2023) starts every adapted matrix at rank ``init_r`` and, between steps ``tinit`` and
``total_step - tfinal``, prunes the least important singular values every ``deltaT`` steps on a cubic
schedule until the total budget is ``target_r`` per matrix on average. Neither the Trainer nor peft calls
the allocator by itself: without :class:`RankAllocatorCallback` AdaLoRA silently stays plain LoRA.
"""
from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch
from transformers import TrainerCallback

from . import cli, config
from .files import RunDir, shown, write_json
from .speech.collate import to_dataset
from .speech.manifest import load_manifest
from .whisper import models, train
from .whisper.decode import transcribe_and_score

TARGET_MODULES = train.LORA_TARGETS


def check_schedule(init_r: int, target_r: int, tinit: int, tfinal: int, deltaT: int, total_step: int) -> None:
    """Refuse an AdaLoRA schedule that cannot work, before training starts (``config`` checks the same
    when the parameters are resolved)."""
    problems = config.adalora_schedule_problems(init_r, target_r, tinit, tfinal, deltaT, total_step)
    if target_r < 1 or tinit < 0 or tfinal < 0 or deltaT < 1:
        problems.insert(0, f"target_r ({target_r}) and deltaT ({deltaT}) must be >= 1, tinit ({tinit}) and "
                           f"tfinal ({tfinal}) >= 0")
    if problems:
        raise ValueError("AdaLoRA parameters:\n  - " + "\n  - ".join(problems))


ADAPT_PARTS = {"decoder": "decoder", "encoder": "encoder", "all": "(?:encoder|decoder)"}


def target_pattern(adapt: str, target_modules=TARGET_MODULES) -> str:
    """The peft ``target_modules`` regular expression for the linear layers ``target_modules`` (leaf names)
    of the ``adapt`` part of a Whisper model: ``"decoder"``, ``"encoder"`` or ``"all"`` (both).

    peft matches it against full module names, e.g. ``model.decoder.layers.1.encoder_attn.q_proj``.
    """
    if adapt not in ADAPT_PARTS:
        raise ValueError(f"adapt must be one of {sorted(ADAPT_PARTS)}, got {adapt!r}")
    leaves = "|".join(re.escape(t) for t in target_modules)
    return rf".*\b{ADAPT_PARTS[adapt]}\.layers\.\d+\.(?:self_attn\.|encoder_attn\.)?(?:{leaves})"


def add_adalora(model, p, target_modules=TARGET_MODULES):
    """Wrap a Whisper model in AdaLoRA adapters for notebook 06's parameters ``p``, on the linear layers
    named ``target_modules`` in the part ``p.adapt`` (decoder, encoder or all; see :func:`target_pattern`).

    ``total_step`` is the optimizer-step count (``p.max_steps``); task type None, because the seq2seq
    task type would pass ``input_ids`` to Whisper, which takes ``input_features``.
    """
    from peft import AdaLoraConfig

    check_schedule(p.init_r, p.target_r, p.tinit, p.tfinal, p.deltaT, p.max_steps)
    pattern = target_pattern(p.adapt, target_modules)
    names = {name.split(".")[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    unmatched = [t for t in target_modules if t not in names]
    if unmatched or not target_modules:
        raise ValueError(f"target modules {unmatched or target_modules} match no linear layer of the model; "
                         f"its linear layers are named {sorted(names)}")
    config = AdaLoraConfig(init_r=p.init_r, target_r=p.target_r, tinit=p.tinit, tfinal=p.tfinal, deltaT=p.deltaT,
                           total_step=p.max_steps, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout,
                           target_modules=pattern, task_type=None)
    return train.add_adapters(model, config)


def current_ranks(peft_model) -> pd.DataFrame:
    """Rank of every adapted matrix now: the count of its non-zero singular values (``lora_E``), as
    :func:`ranks_table`."""
    return ranks_table({name.split(".lora_E")[0]: int((param.detach() != 0).sum())
                        for name, param in peft_model.named_parameters() if "lora_E" in name})


def ranks_table(ranks: dict[str, int]) -> pd.DataFrame:
    """``{module name: rank}`` (as in ``metrics.json``'s ``final_ranks``) as a table with columns ``module``
    (full name), ``part`` (encoder/decoder), ``layer``, ``matrix`` (e.g. ``self q``, ``cross v``, ``fc1``)
    and ``rank``."""
    rows = []
    for module, rank in ranks.items():
        match = re.search(r"(encoder|decoder)\.layers\.(\d+)\.(self_attn|encoder_attn)?\.?(\w+)$", module)
        part, layer, attn, leaf = match.groups()
        kind = "cross" if attn == "encoder_attn" else "self"
        matrix = leaf if attn is None else f"{kind} {leaf.replace('_proj', '')}"
        rows.append({"module": module, "part": part, "layer": int(layer), "matrix": matrix, "rank": int(rank)})
    return pd.DataFrame(rows, columns=["module", "part", "layer", "matrix", "rank"])


def planned_budget(p, n_matrices: int) -> pd.DataFrame:
    """The total rank AdaLoRA aims for at each step (peft's cubic schedule), for plotting before training."""
    init_bgt, target_bgt = p.init_r * n_matrices, p.target_r * n_matrices
    rows = []
    for step in range(p.max_steps + 1):
        if step <= p.tinit:
            budget = init_bgt
        elif step > p.max_steps - p.tfinal:
            budget = target_bgt
        else:
            coeff = 1 - (step - p.tinit) / (p.max_steps - p.tfinal - p.tinit)
            budget = int((init_bgt - target_bgt) * coeff ** 3 + target_bgt)
        rows.append({"step": step, "budget": budget})
    return pd.DataFrame(rows)


class RankAllocatorCallback(TrainerCallback):
    """Calls AdaLoRA's ``update_and_allocate`` after every optimizer step (gradients still present) and
    records in ``self.budget`` the ranks right after each allocation (step, total rank, rank of every matrix).

    Ranks are counted only where the allocator has just masked: between two allocations the pruned
    singular values are free to grow back until the next one, and at the start they are all zero.
    """

    def __init__(self, peft_model):
        self.peft_model = peft_model
        self.budget: list[dict] = []

    def on_optimizer_step(self, args, state, control, **kwargs):
        step = state.global_step + 1  # global_step is incremented after this event
        self.peft_model.base_model.update_and_allocate(step)
        _, masked = self.peft_model.base_model.rankallocator.budget_schedule(step)
        if masked:
            ranks = current_ranks(self.peft_model)
            self.budget.append({"step": step, "total_rank": int(ranks["rank"].sum()),
                                "ranks": ranks.set_index("module")["rank"].to_dict()})


@contextmanager
def pruned_ranks_saved():
    """Saving AdaLoRA adapters whose matrices were pruned to rank 0: peft then warns that zero-sized LoRA tensors
    mean DeepSpeed/FSDP shards were not gathered. Here they are empty on purpose (the allocator pruned them), so
    that one warning is silenced while saving; any other still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LoRA tensor\\(s\\) have invalid shape")
        yield


def merge_and_save(peft_model, processor, out_dir: str | Path) -> tuple[object, Path]:
    """Save the adapter alone to ``out_dir/adapter`` and the merged plain Whisper model (processor and
    generation config included) to ``out_dir``; returns the merged model and the folder."""
    out_dir = Path(out_dir)
    with pruned_ranks_saved():
        peft_model.save_pretrained(out_dir / "adapter")
    merged = peft_model.merge_and_unload()
    models.save_whisper(merged, processor, out_dir)
    return merged, out_dir


def run_phase(p) -> dict | None:
    """Notebook 06 for its parameters ``p``: AdaLoRA on ``p.student`` (default ``run_dir/student_kd``) with
    ``run_dir/data/train.jsonl``, the rank allocator called at every step and the validation CER followed on
    ``valid.jsonl``; then the merged model saved to ``run_dir/student_adalora`` with ``metrics.json``
    (validation and test CER before AdaLoRA, with adapters and merged; final ranks), ``history.json`` and
    ``rank_budget.json`` (total rank after each allocation). The test set is read once training has ended; the
    "before" model is the adapter model with its adapters switched off. Returns the metrics in the main process;
    the other processes of a launched run (which train and score their share) return None.
    """
    run = RunDir(p.run_dir)
    student = models.load_whisper(p.student or run.student_kd)
    train_rows, valid_rows = load_manifest(run.data, "train"), load_manifest(run.data, "valid")
    peft_model = add_adalora(student.model, p)
    trainable, total = peft_model.get_nb_trainable_parameters()
    out_dir = run.student_adalora
    out_dir.mkdir(parents=True, exist_ok=True)
    allocator = RankAllocatorCallback(peft_model)
    history = train.LiveHistory(run.history("student_adalora"), live=p.live_plot, title="AdaLoRA")
    loaded = models.LoadedWhisper(peft_model, student.processor, student.source)
    trainer = train.build_trainer(p, loaded, to_dataset(train_rows, loaded.processor),
                                  to_dataset(valid_rows, loaded.processor), out_dir, [allocator, history],
                                  keep_best=False)
    with pruned_ranks_saved():  # the Trainer's checkpoints save the adapters too
        train.run_training(trainer, history, out_dir, p.resume)
    ranks = current_ranks(peft_model)
    sets = {"valid": valid_rows, "test": load_manifest(run.data, "test")}  # training has ended: test, once

    def scores(model, name):
        out = {}
        for split, rows in sets.items():
            out[split] = transcribe_and_score(model, loaded.processor, rows, p.per_device_eval_batch_size,
                                              desc=f"{name} on {split}", progress=p.live_plot)
        return out

    with peft_model.disable_adapter():
        before = scores(peft_model, "before AdaLoRA")
    after = scores(peft_model, "adapter model")
    main = trainer.is_world_process_zero()
    merged = merge_and_save(peft_model, loaded.processor, out_dir)[0] if main else peft_model.merge_and_unload()
    merged_scores = scores(merged, "merged model")
    if not main:
        return None
    metrics = {f"{split}_cer_{stage}": result[split][0]["cer"] for split in sets
               for stage, result in (("before", before), ("after", after), ("merged", merged_scores))}
    metrics.update({
        "identical_after_merge": sum(a == b for a, b in zip(after["test"][1], merged_scores["test"][1])),
        "test_utterances": len(sets["test"]), "trainable_M": trainable / 1e6, "total_M": total / 1e6,
        "final_ranks": ranks.set_index("module")["rank"].to_dict(), "processes": trainer.accelerator.num_processes})
    write_json(run.metrics("student_adalora"), metrics)
    write_json(out_dir / "rank_budget.json", allocator.budget)
    print(f"AdaLoRA student: validation CER {metrics['valid_cer_before']:.1f}% -> {metrics['valid_cer_merged']:.1f}%, "
          f"test CER {metrics['test_cer_before']:.1f}% -> {metrics['test_cer_merged']:.1f}% merged "
          f"({metrics['processes']} process(es)) -> {shown(out_dir)}")
    return metrics


if __name__ == "__main__":
    import sys

    sys.exit(cli.phase_main("adalora", run_phase))
