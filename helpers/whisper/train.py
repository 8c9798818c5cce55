"""Fine-tuning with the Hugging Face Seq2SeqTrainer: arguments from the notebook parameters, LoRA and
8-bit options for small GPUs, CER as the metric, and a callback that records and draws training live.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from transformers import (
    EarlyStoppingCallback,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    StoppingCriteriaList,
    TrainerCallback,
)

from ..config import dataloader_workers
from ..figures.memory import memory_now
from ..figures.plots import training_curves
from ..files import shown, write_json
from ..speech import text
from ..speech.collate import WhisperCollator
from .budget import RepetitionGuard, repeats_at_end
from .models import load_whisper, no_transformers_bars, save_whisper

# The linear layers LoRA and AdaLoRA adapt, by their leaf names in a Whisper model.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def base_dtype(p) -> torch.dtype:
    """The dtype to load a model for training in: fp32 for full fine-tuning (the optimizer keeps fp32 master
    weights; autocast computes in half precision); with LoRA on a CUDA GPU the frozen base in fp16 or bf16
    (``p.fp16`` / ``p.bf16``), which halves its memory (bench/tensor_memory.py: at the Breeze-ASR-25 shape LoRA +
    checkpointing needs 8.6 GB of tensors on an fp32 base, 5.0 GB on an fp16 one)."""
    if getattr(p, "use_lora", False) and torch.cuda.is_available():
        if p.fp16:
            return torch.float16
        if p.bf16:
            return torch.bfloat16
    return torch.float32


def prepare_model(loaded, p):
    """Apply the memory options to a loaded teacher: LoRA adapters on a frozen base, gradient checkpointing."""
    model = loaded.model
    model.config.use_cache = not p.gradient_checkpointing
    if p.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if p.use_lora:
        from peft import LoraConfig, prepare_model_for_kbit_training

        if p.load_in_8bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=p.gradient_checkpointing)
        elif p.gradient_checkpointing:
            model.enable_input_require_grads()
        config = LoraConfig(r=p.lora_r, lora_alpha=2 * p.lora_r, lora_dropout=0.05, target_modules=LORA_TARGETS)
        model = add_adapters(model, config)
    loaded.model = model
    return loaded


def add_adapters(model, peft_config):
    """``peft.get_peft_model(model, peft_config)``, without the FutureWarning it raises today.

    peft 0.21 reads ``model.is_gradient_checkpointing``, a property transformers 5 deprecated in favour of
    ``is_activation_checkpointing`` and which warns on every read. The read is inside peft, not in this workbook,
    so only that one warning is silenced here; any other warning still shows.
    """
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, peft_config)


def cer_metric(tokenizer):
    """``compute_metrics`` for the Trainer: corpus CER (percent) on normalised text, exact-match share, and how many
    outputs ended in a loop (``budget.repeats_at_end``)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id

    def compute(eval_pred):
        preds, labels = eval_pred.predictions, eval_pred.label_ids
        preds = np.where(preds < 0, pad, preds)
        labels = np.where(labels < 0, pad, labels)
        hyp = tokenizer.batch_decode(preds, skip_special_tokens=True)
        ref = tokenizer.batch_decode(labels, skip_special_tokens=True)
        exact = np.mean([text.normalize(a) == text.normalize(b) for a, b in zip(ref, hyp)])
        loops = sum(repeats_at_end([t for t in row if t < eos]) for row in preds.tolist())
        return {"cer": text.cer(ref, hyp), "exact_match": 100.0 * float(exact), "looped": loops}

    return compute


def training_arguments(p, out_dir: Path, keep_best: bool = True) -> Seq2SeqTrainingArguments:
    """Seq2SeqTrainingArguments from the notebook parameters (transformers 5 names). With ``keep_best`` the
    checkpoint of lowest eval CER is restored at the end; without it the model of the last step is kept."""
    cuda = torch.cuda.is_available()
    return Seq2SeqTrainingArguments(
        output_dir=str(out_dir), max_steps=p.max_steps, per_device_train_batch_size=p.per_device_train_batch_size,
        per_device_eval_batch_size=p.per_device_eval_batch_size,
        gradient_accumulation_steps=p.gradient_accumulation_steps,
        learning_rate=p.learning_rate, warmup_steps=p.warmup_steps, lr_scheduler_type="linear", weight_decay=0.0,
        eval_strategy="steps", eval_steps=p.eval_steps, save_strategy="steps", save_steps=p.save_steps,
        save_total_limit=2, load_best_model_at_end=keep_best, metric_for_best_model="cer", greater_is_better=False,
        predict_with_generate=True, generation_max_length=p.generation_max_length,
        fp16=bool(p.fp16 and cuda), bf16=bool(p.bf16), logging_steps=max(1, min(25, p.eval_steps // 4)),
        report_to=["tensorboard"], remove_unused_columns=False, label_names=["labels"], seed=p.seed,
        dataloader_num_workers=dataloader_workers(), use_cpu=not cuda,
        disable_tqdm=not p.live_plot)  # batch runs: no progress table in the saved notebook


class WhisperTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer for Whisper: validation decoding with a repetition guard (:meth:`prediction_step`), and
    models whose output projection is tied to the token embedding restored without a false alarm.

    A tied ``proj_out.weight`` is not written to checkpoints (it is the embedding), so restoring the best checkpoint
    reports it as a missing key although nothing is missing. That report is left out for tied weights only; a key
    that is really missing is still reported.
    """

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        """Validation decoding as the Trainer does it (``generation_max_length``), with a repetition guard: an
        untrained model's loops stop early instead of running every clip to the length limit."""
        if not gen_kwargs and hasattr(self, "_gen_kwargs"):
            gen_kwargs = self._gen_kwargs.copy()
        if self.args.predict_with_generate and not prediction_loss_only:
            gen_kwargs.setdefault("stopping_criteria", StoppingCriteriaList([RepetitionGuard()]))
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys, **gen_kwargs)

    def _issue_warnings_after_load(self, load_result) -> None:
        model = self.accelerator.unwrap_model(self.model)
        tied = {"proj_out.weight"} if (getattr(model, "proj_out", None) is not None and
                                       model.proj_out.weight is model.get_input_embeddings().weight) else set()
        missing = [k for k in load_result.missing_keys if k not in tied]
        super()._issue_warnings_after_load(type(load_result)(missing, load_result.unexpected_keys))


def build_trainer(p, loaded, train_ds, eval_ds, out_dir: Path, callbacks: list | None = None,
                  trainer_class=WhisperTrainer, data_collator=None, keep_best: bool = True,
                  **trainer_kwargs) -> Seq2SeqTrainer:
    """A Seq2SeqTrainer (or ``trainer_class``) that trains ``loaded.model``, evaluating CER every ``eval_steps``.

    With ``keep_best`` (default) training stops early after ``early_stopping_patience`` evaluations without
    a better CER and the best checkpoint is restored; without it, all ``max_steps`` run and the last model
    is kept (AdaLoRA: its rank schedule is planned over all steps). ``data_collator`` defaults to
    :class:`WhisperCollator`; ``trainer_kwargs`` go to ``trainer_class``.
    """
    args = training_arguments(p, out_dir, keep_best)
    if keep_best:
        callbacks = [EarlyStoppingCallback(early_stopping_patience=p.early_stopping_patience), *(callbacks or [])]
    collator = data_collator or WhisperCollator(loaded.processor, loaded.model.config.decoder_start_token_id)
    trainer = trainer_class(
        model=loaded.model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collator,
        processing_class=loaded.processor, compute_metrics=cer_metric(loaded.tokenizer), callbacks=callbacks,
        **trainer_kwargs)
    # Whisper's forward takes **kwargs, so the Trainer takes its loss for one already divided by the tokens of
    # the whole optimizer step on all processes and neither divides it by the accumulation steps nor undoes
    # its own scaling by the process count; Whisper's loss is a plain mean over the batch. Say so, unless the
    # trainer weighs tokens itself (DistillTrainer).
    trainer.model_accepts_loss_kwargs = getattr(trainer, "loss_weighs_tokens", False)
    return trainer


def last_checkpoint(out_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` folder in ``out_dir`` (what ``resume = True`` continues from)."""
    checkpoints = sorted(Path(out_dir).glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[-1]))
    return str(checkpoints[-1]) if checkpoints else None


class LiveHistory(TrainerCallback):
    """Records train/eval loss, eval metrics and memory at every log, writes ``history.json`` after each,
    and, when ``live``, redraws one figure in place in the notebook while training runs. With several
    processes only the main one records (the Trainer logs losses averaged over all processes)."""

    def __init__(self, history_file: str | Path, live: bool = True, title: str = "training"):
        self.history_file = Path(history_file)
        self.live, self.title = live, title
        self.records: list[dict] = []
        self._handle = None
        self._started = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not getattr(state, "is_world_process_zero", True):  # several processes: the main one records and draws
            return
        record = {"step": state.global_step, "time_s": round(time.time() - self._started, 2),
                  **{k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}, **memory_now()}
        self.records.append(record)
        write_json(self.history_file, self.records)
        if self.live:
            self._draw()

    def _draw(self):
        import matplotlib.pyplot as plt
        from IPython.display import display

        fig = training_curves(self.records, self.title)
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)


def lora_parameter_count(model, r: int, targets=LORA_TARGETS) -> int:
    """Parameters LoRA of rank ``r`` adds on the ``targets`` linear layers: r x (in + out) each."""
    return sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in targets)


def finetune(p, loaded, train_ds, eval_ds, out_dir: Path, live: bool = True):
    """Train with the Trainer (resuming from the last checkpoint when ``p.resume``); returns (trainer, records)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    history = LiveHistory(out_dir / "history.json", live=live, title="fine-tuning")
    trainer = build_trainer(p, loaded, train_ds, eval_ds, out_dir, [history])
    run_training(trainer, history, out_dir, p.resume)
    return trainer, history.records


def run_training(trainer, history: LiveHistory, out_dir: Path, resume: bool) -> None:
    """``trainer.train()``, from the last checkpoint in ``out_dir`` when ``resume`` (keeping the curve
    recorded up to that checkpoint), else from the start."""
    checkpoint = last_checkpoint(out_dir) if resume else None
    if resume and checkpoint is None:
        print(f"resume = True but {shown(out_dir)} holds no checkpoint yet: starting from the beginning")
    if checkpoint and history.history_file.exists():
        history.records = [r for r in json.loads(history.history_file.read_text("utf-8"))
                           if r["step"] <= int(checkpoint.rsplit("-", 1)[-1])]
    with no_transformers_bars():  # checkpoint saves would each draw a "writing shards" bar
        trainer.train(resume_from_checkpoint=checkpoint)


def save_finetuned(loaded, p, out_dir: Path, metrics: dict) -> Path:
    """Save the fine-tuned model as a plain Whisper checkpoint (LoRA merged in; the adapter saved beside
    it in ``adapter/``), with processor, generation config and ``metrics.json``."""
    model = loaded.model
    if p.use_lora:
        model.save_pretrained(out_dir / "adapter")
        if p.load_in_8bit:  # an 8-bit base cannot take merged weights: merge into an fp16 copy of the base
            from peft import PeftModel

            base = load_whisper(p.base_model, dtype=torch.float16).model
            model = PeftModel.from_pretrained(base, out_dir / "adapter")
        model = model.merge_and_unload()
    model.config.use_cache = True
    save_whisper(model, loaded.processor, out_dir)
    write_json(out_dir / "metrics.json", metrics)
    return out_dir
