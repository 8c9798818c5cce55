"""Knowledge distillation: the student's decoder learns the teacher's pseudo-labels and its soft outputs.

loss = ce_weight * CE(student, pseudo-labels) + kl_weight * KL(teacher/T || student/T) * T^2, averaged over
non-padding label positions. Three encoder modes, chosen automatically:

* ``shared``: the student's encoder is a frozen copy of the teacher's, so one encoder pass per batch feeds
  both decoders;
* ``cached``: as shared, but the encoder outputs come from notebook 03's cache: decoders only;
* ``separate``: the encoders differ (a student from another checkpoint, or a trainable student encoder):
  each model runs its own.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Seq2SeqTrainer
from transformers.modeling_outputs import BaseModelOutput

MODES = ("shared", "cached", "separate")


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


def same_encoder(teacher_model, student_model) -> bool:
    """True when the two encoders have identical parameters (a student copied from this teacher)."""
    t, s = teacher_model.model.encoder.state_dict(), student_model.model.encoder.state_dict()
    return t.keys() == s.keys() and all(t[k].shape == s[k].shape and torch.equal(t[k], s[k].to(t[k].dtype)) for k in t)


def choose_mode(teacher_model, student_model, freeze_encoder: bool, cache_available: bool) -> tuple[str, str]:
    """The encoder mode and the reason, in words, for the notebook to show."""
    if not freeze_encoder:
        return "separate", "the student's encoder is trained, so it can differ from the teacher's: each runs its own"
    if not same_encoder(teacher_model, student_model):
        return "separate", "the student's encoder is not the teacher's (another checkpoint or fewer layers)"
    if cache_available:
        return "cached", "frozen encoder identical to the teacher's, outputs cached by notebook 03: decoders only"
    return "shared", "frozen encoder identical to the teacher's: one encoder pass per batch feeds both decoders"


def freeze_encoder(model) -> None:
    """Take the encoder out of training (no gradients, so the optimizer never sees it)."""
    for param in model.model.encoder.parameters():
        param.requires_grad_(False)


class CachedCollator:
    """Batches of cached encoder outputs (rows of ``cache`` picked by ``cache_index``) with padded labels;
    rows without ``cache_index`` (the evaluation set) go to ``label_collator`` unchanged."""

    def __init__(self, cache: np.ndarray, label_collator):
        self.cache, self.label_collator = cache, label_collator

    def __call__(self, features: list[dict]) -> dict:
        if "cache_index" not in features[0]:  # evaluation rows carry audio features: the plain collator
            return self.label_collator(features)
        index = [f["cache_index"] for f in features]
        batch = self.label_collator([{"input_features": np.zeros(1), "labels": f["labels"]} for f in features])
        batch["encoder_outputs"] = torch.from_numpy(np.stack([self.cache[i] for i in index]).astype(np.float32))
        del batch["input_features"]
        return batch


class DistillTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer whose loss is :func:`kd_loss` against a frozen teacher; logs ``ce`` and ``kl`` apart."""

    def __init__(self, *args, teacher_model, mode: str, ce_weight=0.8, kl_weight=1.0, temperature=2.0, **kwargs):
        super().__init__(*args, **kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.teacher = teacher_model.eval().requires_grad_(False).to(self.args.device)
        self.mode, self.ce_weight, self.kl_weight, self.temperature = mode, ce_weight, kl_weight, temperature
        self._parts: dict[str, list[float]] = {"ce": [], "kl": []}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        if not model.training:  # evaluation loss: plain CE, as for any model
            outputs = model(**inputs)
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        if self.mode == "separate":
            student_out = model(input_features=inputs["input_features"], labels=labels)
            with torch.no_grad():
                teacher_logits = self.teacher(input_features=inputs["input_features"], labels=labels).logits
        else:
            if self.mode == "cached":
                hidden = inputs["encoder_outputs"].to(self.teacher.dtype)
            else:
                with torch.no_grad():
                    hidden = self.teacher.model.encoder(inputs["input_features"].to(self.teacher.dtype)).last_hidden_state
            encoded = BaseModelOutput(last_hidden_state=hidden)
            student_out = model(encoder_outputs=encoded, labels=labels)
            with torch.no_grad():
                teacher_logits = self.teacher(encoder_outputs=encoded, labels=labels).logits
        loss, ce, kl = kd_loss(student_out.logits, teacher_logits, labels, self.ce_weight, self.kl_weight, self.temperature)
        self._parts["ce"].append(ce.item())
        self._parts["kl"].append(kl.item())
        return (loss, student_out) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs):
        if "loss" in logs and self._parts["ce"]:
            logs = {**logs, **{k: float(np.mean(v)) for k, v in self._parts.items()}}
            self._parts = {"ce": [], "kl": []}
        super().log(logs, *args, **kwargs)


def distil(p, teacher, student, pseudo_rows, test_rows, out_dir, cache_dir=None, live: bool = True):
    """Run distillation for notebook 05's parameters ``p``; returns ``(trainer, history records, mode, reason)``.

    ``teacher`` and ``student`` are LoadedWhisper; ``pseudo_rows`` the kept pseudo-labels (``text`` = teacher
    transcript); ``test_rows`` the held-out set for CER; ``cache_dir`` notebook 03's encoder cache, if any.
    """
    import datasets

    from . import data, pseudo, train
    from .collate import WhisperCollator
    from .student import check_compatible

    check_compatible(teacher.tokenizer, student.tokenizer)
    if p.freeze_encoder:
        freeze_encoder(student.model)
    cache_ok = bool(p.use_encoder_cache and cache_dir and (cache_dir / "cache.json").exists())
    mode, reason = choose_mode(teacher.model, student.model, p.freeze_encoder, cache_ok)
    collator = None
    if mode == "cached":
        cache = pseudo.open_encoder_cache(cache_dir, teacher, pseudo_rows["audio"].tolist())
        labels = student.tokenizer(pseudo_rows["text"].tolist()).input_ids
        train_ds = datasets.Dataset.from_dict({"cache_index": list(range(len(labels))), "labels": labels})
        collator = CachedCollator(cache, WhisperCollator(student.processor, student.model.config.decoder_start_token_id))
    else:
        train_ds = data.to_dataset(pseudo_rows, student.processor)
    out_dir.mkdir(parents=True, exist_ok=True)
    history = train.LiveHistory(out_dir / "history.json", live=live, title="distillation")
    trainer = train.build_trainer(p, student, train_ds, data.to_dataset(test_rows, student.processor), out_dir,
                                  [history], trainer_class=DistillTrainer, data_collator=collator,
                                  teacher_model=teacher.model, mode=mode, ce_weight=p.ce_weight,
                                  kl_weight=p.kl_weight, temperature=p.temperature)
    train.run_training(trainer, history, out_dir, p.resume)
    return trainer, history.records, mode, reason
