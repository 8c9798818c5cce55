"""Knowledge distillation: the student's decoder learns the teacher's pseudo-labels and its soft outputs.

loss = ce_weight * CE(student, pseudo-labels) + kl_weight * KL(teacher/T || student/T) * T^2, averaged over
non-padding label positions. Three encoder modes, chosen automatically:

* ``shared``: the student's encoder is a frozen copy of the teacher's, so one encoder pass per batch feeds
  both decoders;
* ``cached``: as shared, but the encoder outputs come from notebook 03's cache: decoders only;
* ``separate``: the encoders differ (a student from another checkpoint, or a trainable student encoder):
  each model runs its own.

And three ways to get the teacher's soft targets (``teacher_targets``): ``live`` (the teacher's decoder runs beside
the student's at every step), or ``topk`` / ``sampled``: read from what notebook 03 stored
(:mod:`helpers.whisper.teacher_targets`), so the teacher never runs during training and only the student's decoder (with
the cached encoder outputs) is left in each step.
"""
from __future__ import annotations

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutput

from . import cli
from .files import RunDir, shown, write_json
from .speech.collate import WhisperCollator, pad_labels, to_dataset
from .speech.errors import DataError
from .speech.manifest import load_manifest
from .whisper import models, train
from .whisper.decode import transcribe_and_score
from .whisper.encoder_cache import open_encoder_cache
from .whisper.teacher_targets import kl_from_targets, model_fingerprint, open_targets

MODES = ("shared", "cached", "separate", "own encoder")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            ce_weight: float = 0.8, kl_weight: float = 1.0, temperature: float = 2.0):
    """``(loss, ce, kl)`` over the positions where ``labels != -100``.

    CE is the mean token cross-entropy against ``labels``; KL is the mean over positions of
    KL(softmax(teacher/T) || softmax(student/T)) summed over the vocabulary, times T^2 (Hinton et al., so
    gradients keep their scale as T changes).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"student and teacher vocabularies differ ({student_logits.shape[-1]} vs "
                         f"{teacher_logits.shape[-1]} logits): distillation needs a shared tokenizer")
    mask = labels != -100
    s, t = student_logits[mask].float(), teacher_logits[mask].float()
    ce = F.cross_entropy(s, labels[mask])
    kl = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), log_target=True,
                  reduction="batchmean") * temperature ** 2
    return ce_weight * ce + kl_weight * kl, ce, kl


def choose_mode(teacher_model, student_model, freeze_encoder: bool, cache_available: bool,
                teacher_runs: bool = True) -> tuple[str, str]:
    """The encoder mode and the reason, in words, for the notebook to show. ``teacher_runs`` False (stored teacher
    targets): no teacher pass at all, the encoder outputs come from the cache or from the student's own encoder."""
    if not teacher_runs:
        if cache_available and freeze_encoder and models.same_encoder(teacher_model, student_model):
            return "cached", "stored teacher targets and cached encoder outputs: the student's decoder alone"
        return "own encoder", "stored teacher targets: the teacher never runs; the student runs its own encoder"
    if not freeze_encoder:
        return "separate", "the student's encoder is trained, so it can differ from the teacher's: each runs its own"
    if not models.same_encoder(teacher_model, student_model):
        return "separate", "the student's encoder is not the teacher's (another checkpoint or fewer layers)"
    if cache_available:
        return "cached", "frozen encoder identical to the teacher's, outputs cached by notebook 03: decoders only"
    return "shared", "frozen encoder identical to the teacher's: one encoder pass per batch feeds both decoders"


def freeze_encoder(model) -> None:
    """Take the encoder out of training (no gradients, so the optimizer never sees it)."""
    for param in model.model.encoder.parameters():
        param.requires_grad_(False)


class CachedCollator:
    """Batches of cached encoder outputs (rows of ``cache`` picked by ``cache_index``) with padded labels; rows
    without ``cache_index`` (the evaluation set) go to ``label_collator`` unchanged. With stored teacher targets
    (``targets``: ``(ids, logprobs)`` arrays, rows' spans in ``target_span``), each batch also carries
    ``target_ids`` and ``target_logprobs`` (``batch x labels x k``, zero-padded)."""

    def __init__(self, cache: np.ndarray | None, label_collator: WhisperCollator, targets=None):
        self.cache, self.label_collator, self.targets = cache, label_collator, targets

    def __call__(self, features: list[dict]) -> dict:
        if "target_span" not in features[0] and "cache_index" not in features[0]:  # evaluation rows: plain
            return self.label_collator(features)
        if self.cache is not None:
            hidden = np.stack([self.cache[f["cache_index"]] for f in features]).astype(np.float32)
            batch = {"encoder_outputs": torch.from_numpy(hidden),
                     "labels": pad_labels([f["labels"] for f in features], self.label_collator.decoder_start_token_id)}
        else:
            batch = self.label_collator([{k: v for k, v in f.items() if k != "target_span"} for f in features])
        if self.targets is not None:
            ids, logprobs = self.targets
            width, k = batch["labels"].shape[1], ids.shape[1]
            batch["target_ids"] = torch.zeros(len(features), width, k, dtype=torch.long)
            batch["target_logprobs"] = torch.zeros(len(features), width, k)
            for row, f in enumerate(features):
                start, length = f["target_span"]
                batch["target_ids"][row, :length] = torch.from_numpy(ids[start:start + length].astype(np.int64))
                batch["target_logprobs"][row, :length] = torch.from_numpy(logprobs[start:start + length].astype(
                    np.float32))
        return batch


class DistillTrainer(train.WhisperTrainer):
    """``train.WhisperTrainer`` whose loss is :func:`kd_loss` against a frozen teacher; logs ``ce`` and ``kl`` apart.

    The loss of an optimizer step is the mean over all its label tokens, whichever process and accumulated
    batch they sit in (the Trainer's ``num_items_in_batch``): N processes with B utterances each train and
    log exactly as one process with N x B, up to floating-point rounding.
    """

    loss_weighs_tokens = True  # compute_loss divides by the step's tokens on all processes (num_items_in_batch)

    def __init__(self, *args, teacher_model, mode: str, ce_weight=0.8, kl_weight=1.0, temperature=2.0,
                 targets_method: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.targets_method = targets_method  # None: the teacher runs; else the stored targets' method
        self.teacher = None if targets_method else teacher_model.eval().requires_grad_(False).to(self.args.device)
        self.mode, self.ce_weight, self.kl_weight, self.temperature = mode, ce_weight, kl_weight, temperature
        self._parts = torch.zeros(3, dtype=torch.float64)  # token-weighted CE and KL sums, tokens, since the last log

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        if not model.training:  # evaluation loss: plain CE, as for any model
            outputs = model(**inputs)
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        if self.targets_method:  # the teacher's soft targets were stored by notebook 03: the student alone
            source = ({"encoder_outputs": BaseModelOutput(last_hidden_state=inputs["encoder_outputs"].to(model.dtype))}
                      if "encoder_outputs" in inputs else {"input_features": inputs["input_features"]})
            student_out = model(**source, labels=labels)
            mask = labels != -100
            ce = F.cross_entropy(student_out.logits[mask].float(), labels[mask])
            kl = kl_from_targets(student_out.logits, inputs["target_ids"], inputs["target_logprobs"], mask,
                                 self.targets_method, self.temperature)
            loss = self.ce_weight * ce + self.kl_weight * kl
        elif self.mode == "separate":
            student_out = model(input_features=inputs["input_features"], labels=labels)
            with torch.no_grad():
                teacher_logits = self.teacher(input_features=inputs["input_features"], labels=labels).logits
        else:
            if self.mode == "cached":
                hidden = inputs["encoder_outputs"].to(self.teacher.dtype)
            else:
                with torch.no_grad():
                    features = inputs["input_features"].to(self.teacher.dtype)
                    hidden = self.teacher.model.encoder(features).last_hidden_state
            encoded = BaseModelOutput(last_hidden_state=hidden)
            student_out = model(encoder_outputs=encoded, labels=labels)
            with torch.no_grad():
                teacher_logits = self.teacher(encoder_outputs=encoded, labels=labels).logits
        if not self.targets_method:
            loss, ce, kl = kd_loss(student_out.logits, teacher_logits, labels, self.ce_weight, self.kl_weight,
                                   self.temperature)
        tokens = int((labels != -100).sum())
        self._parts += torch.tensor([ce.item() * tokens, kl.item() * tokens, tokens], dtype=torch.float64)
        if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
            # The Trainer then neither divides by the accumulation steps nor lets DDP's gradient mean stand:
            # weigh this batch's token mean by its share of the step's tokens on all processes, times the
            # process count that DDP's averaging divides by (what Trainer.compute_loss does for a model's loss).
            loss = loss * (tokens / num_items_in_batch)
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        return (loss, student_out) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs):
        if "loss" in logs:  # a training log: every process is here at the same step
            parts = self._parts.to(self.args.device, torch.float32)
            if self.accelerator.num_processes > 1:
                parts = self.accelerator.reduce(parts, reduction="sum")
            if parts[2] > 0:
                logs = {**logs, "ce": float(parts[0] / parts[2]), "kl": float(parts[1] / parts[2])}
            self._parts.zero_()
        super().log(logs, *args, **kwargs)


def distil(p, teacher, student, pseudo_rows, eval_rows, out_dir, cache_dir=None, live: bool = True,
           targets_dir=None):
    """Run distillation for notebook 05's parameters ``p``; returns ``(trainer, history records, mode, reason)``.

    ``teacher`` and ``student`` are LoadedWhisper; ``pseudo_rows`` the kept pseudo-labels (``text`` = teacher
    transcript); ``eval_rows`` the held-out set for CER during training; ``cache_dir`` notebook 03's encoder
    cache, if any; ``targets_dir`` its stored teacher targets (used when ``p.teacher_targets`` is not "live").
    """
    models.check_compatible(teacher.tokenizer, student.tokenizer)
    if p.freeze_encoder:
        freeze_encoder(student.model)
    stored = p.teacher_targets != "live"
    cache_ok = bool(p.use_encoder_cache and cache_dir and (cache_dir / "cache.json").exists())
    mode, reason = choose_mode(teacher.model, student.model, p.freeze_encoder, cache_ok, teacher_runs=not stored)
    columns, cache, targets = {}, None, None
    if stored:
        ids, logprobs, spans, _ = open_targets(targets_dir, pseudo_rows, model_fingerprint(teacher.model),
                                               teacher.tokenizer, p.temperature)
        columns["target_span"], targets = spans, (ids, logprobs)
    if mode == "cached":
        cache, columns["cache_index"] = open_encoder_cache(cache_dir, teacher, pseudo_rows)
    start = student.model.config.decoder_start_token_id
    if cache is not None:
        labels = student.tokenizer(pseudo_rows["text"].tolist()).input_ids
        train_ds = datasets.Dataset.from_dict({**columns, "labels": labels})
    else:
        train_ds = to_dataset(pseudo_rows.assign(**columns), student.processor, keep=tuple(columns))
    collator = CachedCollator(cache, WhisperCollator(student.processor, start), targets) if columns else None
    out_dir.mkdir(parents=True, exist_ok=True)
    history = train.LiveHistory(out_dir / "history.json", live=live, title="distillation")
    trainer = train.build_trainer(p, student, train_ds, to_dataset(eval_rows, student.processor), out_dir,
                                  [history], trainer_class=DistillTrainer, data_collator=collator,
                                  teacher_model=teacher.model, mode=mode, ce_weight=p.ce_weight,
                                  kl_weight=p.kl_weight, temperature=p.temperature,
                                  targets_method=p.teacher_targets if stored else None)
    train.run_training(trainer, history, out_dir, p.resume)
    return trainer, history.records, mode, reason


def run_phase(p) -> dict | None:
    """Notebook 05 for its parameters ``p``: distil ``p.student`` (default ``run_dir/student_init``) from
    ``p.teacher`` (default ``run_dir/teacher``) on ``run_dir/pseudo/train.jsonl`` (with notebook 03's encoder
    cache when it matches), evaluating and keeping the best checkpoint on ``data/valid.jsonl``; once training has
    ended, score teacher and student on the validation and the test set, and save the student with
    ``metrics.json`` and ``history.json`` in ``run_dir/student_kd``. Returns the metrics in the main process; the
    other processes of a launched run (which train and score their share) return None.
    """
    run = RunDir(p.run_dir)
    teacher = models.load_whisper(p.teacher or run.teacher)
    student = models.load_whisper(p.student or run.student_init)
    pseudo_rows = load_manifest(run.pseudo, "train")
    if len(pseudo_rows) == 0:
        raise DataError(f"{shown(run.pseudo_manifest('train'))} holds no pseudo-label: notebook 03's filters removed "
                        "every utterance (its report.json says how many each filter removed); loosen cer_threshold "
                        "or the confidence filter there, or fine-tune the teacher longer, then run notebook 03 again")
    valid_rows = load_manifest(run.data, "valid")
    trainer, history, mode, reason = distil(p, teacher, student, pseudo_rows, valid_rows, run.student_kd,
                                            run.encoder_cache, live=p.live_plot,
                                            targets_dir=run.teacher_targets(p.teacher_targets))
    sets = {"valid": valid_rows, "test": load_manifest(run.data, "test")}  # training has ended: test, once
    results = {}
    for name, loaded in (("teacher", teacher), ("student after KD", student)):
        results[name] = {}
        for split, rows in sets.items():
            results[name][split] = transcribe_and_score(loaded.model, loaded.processor, rows,
                                                        p.per_device_eval_batch_size, desc=f"{name} on {split}",
                                                        progress=p.live_plot)[0]
    if not trainer.is_world_process_zero():
        return None
    models.save_whisper(student.model, student.processor, run.student_kd)
    metrics = {"mode": mode, "reason": reason, "teacher_targets": p.teacher_targets,
               "steps": trainer.state.global_step,
               "processes": trainer.accelerator.num_processes, **results}
    write_json(run.metrics("student_kd"), metrics)
    kd, t = results["student after KD"], results["teacher"]
    print(f"distilled student ({mode} encoder, {p.teacher_targets} teacher targets, {metrics['processes']} "
          "process(es)): validation CER "
          f"{kd['valid']['cer']:.1f}% (teacher {t['valid']['cer']:.1f}%), test CER {kd['test']['cer']:.1f}% "
          f"(teacher {t['test']['cer']:.1f}%) -> {shown(run.student_kd)}")
    return metrics


if __name__ == "__main__":
    import sys

    sys.exit(cli.phase_main("distill", run_phase))
