"""Notebook 02 as one call and one command: fine-tune the teacher on validation's advice, score it, save it.

    python -m helpers.finetune --run-dir runs/tiny
    accelerate launch --multi_gpu --num_processes 4 -m helpers.finetune --profile full -f params.yaml

The training machinery (Trainer arguments, LoRA, checkpoints, the history callback) is in ``train.py``;
this module strings it together the way notebook 02 does, for :mod:`helpers.launch`.
"""
from __future__ import annotations

import pandas as pd

from . import cli
from .files import RunDir, shown
from .speech.collate import to_dataset
from .speech.manifest import load_manifest
from .whisper import models, train
from .whisper.decode import transcribe_and_score


def run_phase(p) -> dict | None:
    """Notebook 02 for its parameters ``p``: fine-tune ``p.base_model`` on ``run_dir/data/train.jsonl``, with every
    training decision (evaluation curve, early stopping, best checkpoint) taken on ``valid.jsonl``; once training
    has ended, score the fine-tuned teacher on ``test.jsonl`` (once), and save it (LoRA merged) to
    ``run_dir/teacher`` with ``metrics.json`` (validation CER before and after, test CER after),
    ``history.json`` and ``test_predictions.csv``. Returns the metrics in the main process; the other processes of
    a launched run (which train and score their share) return None.
    """
    run = RunDir(p.run_dir)
    train_rows, valid_rows = load_manifest(run.data, "train"), load_manifest(run.data, "valid")
    teacher = models.load_whisper(p.base_model, language=p.language, task=p.task, dtype=train.base_dtype(p))
    valid_before, _ = transcribe_and_score(teacher.model, teacher.processor, valid_rows,
                                           p.per_device_eval_batch_size, desc="validation, before",
                                           progress=p.live_plot)
    teacher = train.prepare_model(teacher, p)
    trainer, history = train.finetune(p, teacher, to_dataset(train_rows, teacher.processor),
                                      to_dataset(valid_rows, teacher.processor), run.teacher, live=p.live_plot)
    best = [r["eval_cer"] for r in history if "eval_cer" in r]
    test_rows = load_manifest(run.data, "test")  # training has ended: the test set is scored once
    test, test_predictions = transcribe_and_score(trainer.model, teacher.processor, test_rows,
                                                  p.per_device_eval_batch_size, desc="test", progress=p.live_plot)
    if not trainer.is_world_process_zero():
        return None
    metrics = {"base_model": teacher.source, "valid_cer_before": valid_before["cer"],
               "valid_cer_after": min(best) if best else None, "test_cer": test["cer"],
               "test_exact_match": test["exact_match"], "valid_utterances": len(valid_rows),
               "test_utterances": len(test_rows), "steps": trainer.state.global_step,
               "best_checkpoint": shown(best_dir) if (best_dir := trainer.state.best_model_checkpoint) else None,
               "train_seconds": round(history[-1]["time_s"], 1) if history else None,
               "processes": trainer.accelerator.num_processes}
    train.save_finetuned(teacher, p, run.teacher, metrics)
    pd.DataFrame({"reference": test_rows["text"], "prediction": test_predictions}).to_csv(
        run.teacher / "test_predictions.csv", index=False)
    print(f"teacher: validation CER {valid_before['cer']:.1f}% before -> {metrics['valid_cer_after']:.1f}% after "
          f"fine-tuning; test CER {test['cer']:.1f}% ({metrics['processes']} process(es)) -> {shown(run.teacher)}")
    return metrics


if __name__ == "__main__":
    import sys

    sys.exit(cli.phase_main("finetune", run_phase))
