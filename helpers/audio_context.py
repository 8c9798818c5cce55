"""Notebook 06, part 2: the student learns a short audio window (audio-context distillation).

Whisper pads every clip to its full window, so a 3 s clip pays for 5 s of encoder work on the tiny model and for 30 s
on Breeze-ASR-25; once distillation made the decoder cheap, that padding is most of the cost. Run untuned on a
window just longer than the clip (``whisper.short_window``), the model loses its way: it learnt to read a full,
padded window. Here it is taught to read the short one by distillation from itself: a frozen copy reads the full
window, a trainable copy reads the clip's window plus a random margin (``window_train_margin_s``), and the loss is
the mean squared difference between all their decoder hidden states, teacher-forced on the same transcripts
(the recipe of FUTO's audio-context fine-tuning). The frozen copy's states are computed with each batch (a cache,
as notebook 03 keeps for the encoder, would save that pass on large models).

    python -m helpers.audio_context --run-dir runs/tiny        # notebook 06's parameters, part 2 alone

The student tuned is the one with the lowest validation CER among the distilled and the AdaLoRA students (never
chosen on test); every decision (the best checkpoint, early stopping) is taken on the valid split, on the loss at
the inference window ``WindowRule(window_margin_s, window_floor_s, window_round_s)``. The result is saved to
``run_dir/student_short`` with ``window_rule.json``, which evaluation and export read.
"""
from __future__ import annotations

import random
import sys
from types import SimpleNamespace

import torch
from transformers.models.whisper.modeling_whisper import shift_tokens_right

from . import cli
from .files import STAGE_OF, RunDir, best_student, shown, write_json
from .speech.collate import to_dataset
from .speech.manifest import load_manifest
from .whisper import models, train
from .whisper.decode import transcribe_and_score
from .whisper.short_window import FRAMES_PER_SECOND, RULE_FILE, WindowRule, encode_short


def window_rule(p) -> WindowRule:
    """The inference window of notebook 06's parameters ``p`` (refused naming the parameter when it would cut
    speech)."""
    return WindowRule(p.window_margin_s, p.window_floor_s, p.window_round_s)


def decoder_states(model, encoder_hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every decoder layer's output (embeddings left out), teacher-forced on ``labels`` (-100 padded) over the
    encoder outputs ``encoder_hidden``."""
    cfg = model.config
    inputs = shift_tokens_right(labels, cfg.pad_token_id, cfg.decoder_start_token_id)
    out = model.model.decoder(input_ids=inputs, encoder_hidden_states=encoder_hidden, output_hidden_states=True)
    return out.hidden_states[1:]


def state_distance(short: tuple[torch.Tensor, ...], full: tuple[torch.Tensor, ...], labels: torch.Tensor
                   ) -> torch.Tensor:
    """Mean squared difference of two models' decoder states, over the layers and the label positions (padding
    left out): 0 when the short window changes nothing the decoder sees."""
    keep = (labels != -100).unsqueeze(-1).to(short[0].dtype)
    per_layer = [(((s - f) ** 2) * keep).sum() / (keep.sum() * s.shape[-1]) for s, f in zip(short, full)]
    return torch.stack(per_layer).mean()


class WindowTrainer(train.WhisperTrainer):
    """The Trainer of audio-context distillation: the loss of :func:`state_distance` between the trained model on
    a short window and ``frozen`` (the same model before training) on the full window. A training batch's window
    is its longest clip plus a margin drawn uniformly from 0 to ``train_margin_s`` (seeded); evaluation uses the
    inference ``rule``."""

    def __init__(self, *args, frozen=None, rule: WindowRule, train_margin_s: float, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.frozen, self.rule, self.train_margin_s = frozen.eval(), rule, train_margin_s
        self.draw = random.Random(seed)

    def window_frames(self, features: torch.Tensor, mask: torch.Tensor, training: bool) -> int:
        seconds = float(mask.sum(dim=1).max()) / FRAMES_PER_SECOND
        rule = self.rule if not training else WindowRule(self.draw.uniform(0.0, self.train_margin_s),
                                                         self.rule.floor_s, self.rule.round_to_s)
        return rule.frames_for(seconds, features.shape[-1])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        features, mask, labels = inputs["input_features"], inputs["attention_mask"], inputs["labels"]
        with torch.no_grad():
            target = decoder_states(self.frozen, self.frozen.get_encoder()(features).last_hidden_state, labels)
        frames = self.window_frames(features, mask, model.training)
        short = decoder_states(model, encode_short(model, features, frames).last_hidden_state, labels)
        loss = state_distance(short, target, labels)
        return (loss, {"loss": loss}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        """Validation is the loss at the inference window (no decoding: the CER comes after training)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


def phase_params(p) -> SimpleNamespace:
    """The Trainer's parameters for this part, from notebook 06's ``window_*`` parameters."""
    steps = p.window_steps
    return SimpleNamespace(**{**vars(p), "max_steps": steps, "learning_rate": p.window_learning_rate,
                              "warmup_steps": max(1, steps // 10), "eval_steps": max(1, steps // 5),
                              "save_steps": max(1, steps // 5), "early_stopping_patience": 2})


def tune(p, loaded, train_rows, valid_rows, out_dir) -> tuple[object, list[dict]]:
    """Audio-context distillation of ``loaded`` (a LoadedWhisper; trained in place) on ``train_rows``, the best
    checkpoint kept on ``valid_rows``' loss; returns ``(trainer, history records)``."""
    q = phase_params(p)
    frozen = models.load_whisper(loaded.source).model
    for param in frozen.parameters():
        param.requires_grad_(False)
    history = train.LiveHistory(out_dir / "history.json", live=p.live_plot, title="short window")
    trainer = train.build_trainer(q, loaded, to_dataset(train_rows, loaded.processor),
                                  to_dataset(valid_rows, loaded.processor), out_dir, [history],
                                  trainer_class=WindowTrainer, frozen=frozen, rule=window_rule(p),
                                  train_margin_s=p.window_train_margin_s, seed=p.seed)
    trainer.args.predict_with_generate, trainer.args.metric_for_best_model = False, "loss"
    train.run_training(trainer, history, out_dir, p.resume)
    return trainer, history.records


def choose_margin(p, score, full_cer: float) -> tuple[WindowRule, list[dict]]:
    """The inference window, chosen on valid: ``score(rule)`` (the validation metrics at ``rule``) for each margin of
    ``p.window_margins_s`` (None or empty: ``window_margin_s`` alone) with notebook 06's floor and rounding. Kept: the
    smallest margin whose CER is at most ``full_cer + p.window_cer_tolerance``, else the one with the lowest CER (the
    smaller on a tie). Returns ``(rule, one row per margin: margin_s, the metrics and chosen)``."""
    margins = sorted(set(p.window_margins_s or [p.window_margin_s]))
    rows = [{"margin_s": m, **score(WindowRule(m, p.window_floor_s, p.window_round_s))} for m in margins]
    close = [r for r in rows if r["cer"] <= full_cer + p.window_cer_tolerance]
    best = close[0] if close else min(rows, key=lambda r: (r["cer"], r["margin_s"]))
    for r in rows:
        r["chosen"] = r is best
    return WindowRule(best["margin_s"], p.window_floor_s, p.window_round_s), rows


def run_phase(p) -> dict | None:
    """Notebook 06, part 2, for its parameters ``p``: tune the student chosen on validation to a short window,
    score it on the valid split before and after (full window, short window), and save it to
    ``run_dir/student_short`` with ``window_rule.json``, ``metrics.json`` and ``history.json``. The test set is not
    read here (notebook 07 scores it once); the margin is chosen on valid after training (:func:`choose_margin`).
    Returns the metrics, or None when ``p.short_window`` is off."""
    if not p.short_window:
        print("short window: off (short_window = False)")
        return None
    run = RunDir(p.run_dir)
    source = best_student(run.root, ("distilled student", "AdaLoRA student"))
    loaded = models.load_whisper(run.stage(source))
    train_rows, valid_rows = load_manifest(run.pseudo, "train"), load_manifest(run.data, "valid")
    rule, batch = window_rule(p), p.per_device_eval_batch_size

    def valid(window, what):
        return transcribe_and_score(loaded.model, loaded.processor, valid_rows, batch, window=window,
                                    desc=f"{what} on valid", progress=p.live_plot)[0]

    before = {"full window": valid(None, "full window"), "short window, untuned": valid(rule, "short, untuned")}
    out_dir = run.stage("short-window student")
    trainer, history = tune(p, loaded, train_rows, valid_rows, out_dir)
    rule, margins = choose_margin(p, lambda r: valid(r, f"short, tuned, margin {r.margin_s:g} s"),
                                  before["full window"]["cer"])
    after = next(m for m in margins if m["chosen"])
    after = {k: v for k, v in after.items() if k not in ("margin_s", "chosen")}
    if not trainer.is_world_process_zero():
        return None
    models.save_whisper(loaded.model, loaded.processor, out_dir)
    write_json(out_dir / RULE_FILE, {**rule.to_dict(), "source": source, "source_folder": STAGE_OF[source].folder})
    metrics = {"source": source, "rule": rule.to_dict(), "steps": trainer.state.global_step,
               "valid": {**before, "short window, tuned": after}, "train_margin_s": p.window_train_margin_s,
               "learning_rate": p.window_learning_rate, "margins": margins,
               "cer_tolerance": p.window_cer_tolerance}
    write_json(run.metrics("student_short"), metrics)
    print(f"short window ({source}, margin {rule.margin_s:g} s chosen on valid, floor {rule.floor_s:g} s): "
          f"validation CER {before['full window']['cer']:.1f}% at the full window, "
          f"{before['short window, untuned']['cer']:.1f}% short untuned -> {after['cer']:.1f}% short tuned "
          f"({trainer.state.global_step} steps) -> {shown(out_dir)}")
    return metrics


if __name__ == "__main__":
    sys.exit(cli.phase_main("audio_context", run_phase))
