"""Notebook 02 as one call and one command: fine-tune the teacher, score it before and after, save it.

    python -m helpers.finetune --run-dir runs/tiny
    accelerate launch --multi_gpu --num_processes 4 -m helpers.finetune --profile full -f params.yaml

The training machinery (Trainer arguments, LoRA, checkpoints, the history callback) is in ``train.py``;
this module strings it together the way notebook 02 does, for :mod:`helpers.launch`.
"""
from __future__ import annotations

import pandas as pd

from . import config, models, train
from .collate import to_dataset
from .decode import transcribe
from .files import RunDir, shown
from .manifest import load_manifest
from .text import score


def run_phase(p) -> dict | None:
    """Notebook 02 for its parameters ``p``: fine-tune ``p.base_model`` on ``run_dir/data/train.jsonl``,
    score it on ``run_dir/data/test.jsonl`` before and after, and save it (LoRA merged) to
    ``run_dir/teacher`` with ``metrics.json``, ``history.json`` and ``test_predictions.csv`` (reference,
    before, after). Returns the metrics in the main process; the other processes of a launched run (which
    train and score their share) return None.
    """
    run = RunDir(p.run_dir)
    train_rows, test_rows = load_manifest(run.data, "train"), load_manifest(run.data, "test")
    teacher = models.load_whisper(p.base_model, language=p.language, task=p.task)
    refs = test_rows["text"].tolist()
    before_predictions, _ = transcribe(teacher.model, teacher.processor, test_rows, p.per_device_eval_batch_size,
                                       desc="test, before", progress=p.live_plot)
    before = score(refs, before_predictions)
    teacher = train.prepare_model(teacher, p)
    out_dir = run.teacher
    trainer, history = train.finetune(p, teacher, to_dataset(train_rows, teacher.processor),
                                      to_dataset(test_rows, teacher.processor), out_dir, live=p.live_plot)
    after_predictions, _ = transcribe(trainer.model, teacher.processor, test_rows, p.per_device_eval_batch_size,
                                      desc="test, after", progress=p.live_plot)
    after = score(refs, after_predictions)
    if not trainer.is_world_process_zero():
        return None
    metrics = {"base_model": teacher.source, "cer_before": before["cer"], "cer_after": after["cer"],
               "exact_match_before": before["exact_match"], "exact_match_after": after["exact_match"],
               "steps": trainer.state.global_step, "best_checkpoint": trainer.state.best_model_checkpoint,
               "train_seconds": round(history[-1]["time_s"], 1) if history else None,
               "processes": trainer.accelerator.num_processes}
    train.save_finetuned(teacher, p, out_dir, metrics)
    pd.DataFrame({"reference": refs, "before": before_predictions, "after": after_predictions}).to_csv(
        out_dir / "test_predictions.csv", index=False)
    print(f"teacher: test CER {before['cer']:.1f}% before -> {after['cer']:.1f}% after fine-tuning "
          f"({metrics['processes']} process(es)) -> {shown(out_dir)}")
    return metrics


if __name__ == "__main__":
    import sys

    sys.exit(config.phase_main("finetune", run_phase))
