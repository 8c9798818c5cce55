"""How much faster is a distillation step when the frozen encoder, then the teacher itself, is never run again?

Times one optimizer step (forward, KD loss, backward, AdamW) through the workbook's own
``DistillTrainer.compute_loss`` in six set-ups:

* two encoders, student encoder trainable (the usual recipe),
* two encoders, student encoder frozen,
* one shared encoder pass feeding both decoders (mode ``shared``),
* cached encoder outputs, both decoders (mode ``cached``, teacher targets ``live``),
* cached encoder outputs and stored top-k teacher targets: the student's decoder alone (``topk``),
* cached encoder outputs and stored sampled teacher targets: the student's decoder alone (``sampled``),

on the tiny offline teacher and its 2-layer student, and random-initialised pairs of real shapes: whisper-small
(teacher 12/12 layers, student 12/2) and Breeze-ASR-25 (32/32, student 32/2), 30 s input, 51865-token vocabulary.
The set-ups take turns for several rounds and each keeps its fastest step (the one least disturbed by other work on
the machine). Each set-up's peak tensor memory during one step is counted too (``memory.tensor_peak``, PyTorch's
own dispatch; on a GPU, ``torch.cuda.max_memory_allocated``).

    python bench/distill_modes.py                 # tiny and whisper-small, batch 2, CPU or the GPU if there is one
    python bench/distill_modes.py --shapes whisper-small breeze-asr-25 --batch 8 --rounds 5
    python bench/distill_modes.py --shapes breeze-asr-25 --setups frozen shared cached topk sampled   # a CPU

Results go to bench/results/distill_modes_<device>.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers import config, distill, student
from helpers.figures import memory  # noqa: E402
from helpers.figures.timing import take_turns  # noqa: E402
from helpers.whisper import models, train  # noqa: E402

# key -> (name, encoder mode, student encoder frozen, stored teacher targets)
SETUPS = {"trainable": ("two encoders, student encoder trainable", "separate", False, None),
          "frozen": ("two encoders, student encoder frozen", "separate", True, None),
          "shared": ("one shared encoder pass", "shared", True, None),
          "cached": ("cached encoder outputs", "cached", True, None),
          "topk": ("cached encoder outputs + stored top-k targets", "cached", True, "topk"),
          "sampled": ("cached encoder outputs + stored sampled targets", "cached", True, "sampled")}


def load_teacher(shape: str, device: str):
    """The tiny offline teacher, or a random-initialised model of a real checkpoint's shape."""
    if shape == "tiny":
        return models.load_whisper(config.TINY_TEACHER, device=device).model.eval()
    torch.manual_seed(0)
    return models.WhisperForConditionalGeneration(models.real_config(shape)).to(device).eval()


def time_steps(shape: str, batch: int, rounds: int, label_len: int, device: str, k: int, setups=tuple(SETUPS)
               ) -> tuple[dict[str, float], dict[str, float]]:
    """``(seconds, peak bytes)`` per set-up (``setups``: keys of :data:`SETUPS`): the fastest of ``rounds`` steps, and
    the tensor memory of one step. The set-ups with a frozen student encoder share one copy of it (it is never
    updated), so that a large shape fits in memory."""
    teacher = load_teacher(shape, device)
    cfg = teacher.config
    torch.manual_seed(1)
    feats = torch.randn(batch, cfg.num_mel_bins, 2 * cfg.max_source_positions, device=device)
    labels = torch.randint(0, cfg.vocab_size - 20, (batch, label_len), device=device)
    with torch.no_grad():
        cached = teacher.model.encoder(feats).last_hidden_state
    target_ids = torch.randint(0, cfg.vocab_size, (batch, label_len, k), device=device)
    target_logprobs = torch.log_softmax(torch.randn(batch, label_len, k, device=device), -1)
    p = SimpleNamespace(**{**config.defaults("05_distill"), "per_device_train_batch_size": batch})
    processor = models.WhisperProcessor.from_pretrained(config.TINY_TEACHER)  # only for the Trainer's metric hook
    runs, frozen_encoder = {}, None
    for key, (name, mode, frozen, targets) in SETUPS.items():
        if key not in setups:
            continue
        pupil = student.init_student(teacher, decoder_layers=2)[0].train()
        if frozen:
            distill.freeze_encoder(pupil)
            frozen_encoder = frozen_encoder or pupil.model.encoder
            pupil.model.encoder = frozen_encoder
        trainer = train.build_trainer(p, models.LoadedWhisper(pupil, processor, shape), None, [{"labels": [1]}],
                                      Path("/tmp/bench_distill"), trainer_class=distill.DistillTrainer,
                                      teacher_model=teacher, mode=mode, targets_method=targets)
        optim = torch.optim.AdamW([q for q in pupil.parameters() if q.requires_grad], lr=1e-5)
        inputs = {"encoder_outputs": cached} if mode == "cached" else {"input_features": feats}
        if targets:
            inputs.update(target_ids=target_ids, target_logprobs=target_logprobs)
        runs[name] = (trainer, pupil, optim, {**inputs, "labels": labels})

    def step(trainer, pupil, optim, inputs):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.compute_loss(pupil, inputs).backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for run in runs.values():  # warm-up (and the optimizer's state exists before memory is counted)
        step(*run)
    peak = {}
    for name, (trainer, pupil, optim, inputs) in runs.items():
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            step(trainer, pupil, optim, inputs)
            peak[name] = torch.cuda.max_memory_allocated()
        else:  # the teacher counts too when it runs (live targets)
            model = torch.nn.ModuleList([pupil] + ([trainer.teacher] if trainer.teacher is not None else []))
            peak[name] = memory.tensor_peak(lambda run=(trainer, pupil, optim, inputs): step(*run), model=model,
                                            optimizer=optim, inputs=list(inputs.values()))["peak_bytes"]
    timed = take_turns({name: (lambda run=run: step(*run)) for name, run in runs.items()}, rounds, warmup={},
                       seconds=lambda seconds: seconds)  # warmed up above; each step times itself (synchronised)
    return {name: t.min for name, t in timed.items()}, peak


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["tiny", "whisper-small"],
                    choices=["tiny", "whisper-small", "breeze-asr-25"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--label-len", type=int, default=32, help="label tokens per utterance")
    ap.add_argument("--k", type=int, default=32, help="stored teacher tokens per label position")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's)")
    ap.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS),
                    help="which set-ups (default: all; at the Breeze shape on a CPU leave out 'trainable': its "
                         "AdamW state alone is 10 GB)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cpu = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    device_name = torch.cuda.get_device_name() if device == "cuda" else cpu
    print(f"Distillation step time by encoder mode, batch {args.batch}, on {device_name}; "
          f"fastest of {args.rounds} rounds\n")
    out = Path(__file__).parent / "results" / f"distill_modes_{device}.json"
    saved = json.loads(out.read_text()) if out.exists() else {}
    if saved.get("device") != device_name or "peak_tensor_bytes" not in saved:
        saved = {}  # another machine's, or an older format: start again
    results, peaks = saved.get("seconds_per_step", {}), saved.get("peak_tensor_bytes", {})
    runs_args = saved.get("args_per_shape", {})
    for shape in args.shapes:
        best, peak = time_steps(shape, args.batch, args.rounds, args.label_len, device, args.k, args.setups)
        results[shape], peaks[shape], runs_args[shape] = best, peak, vars(args)
        print(f"{shape}:")
        print(f"  {'set-up':<48}{'s/step':>8}{'vs two enc.':>12}{'vs shared':>10}{'vs cached':>10}{'peak MB':>9}")
        for name, seconds in best.items():
            bases = ((best.get(SETUPS[key][0]), w) for key, w in (("trainable", 11), ("shared", 9), ("cached", 9)))
            ratios = "".join(f"{base / seconds:>{w}.2f}x" if base else f"{'-':>{w + 1}}" for base, w in bases)
            print(f"  {name:<48}{seconds:>8.3f}{ratios}{peak[name] / 1e6:>9.0f}", flush=True)
        print()
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": device_name, "torch": torch.__version__, "args_per_shape": runs_args,
                               "seconds_per_step": results, "peak_tensor_bytes": peaks}, indent=2))
    print(f"written {out} (the shapes measured before on this device are kept)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
