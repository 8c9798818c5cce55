"""Which fine-tuning recipe for Breeze-ASR-25 fits an 8 GB GPU? Peak memory and step time, measured.

Builds a random-initialised model of the Breeze-ASR-25 shape (Whisper-large-v2: 32+32 layers, width 1280,
51865 tokens, 80 mel bins, 30 s): the same tensors as the real checkpoint, so the same memory. For each
candidate recipe it runs a few optimizer steps on a batch of 30 s inputs and reports
``torch.cuda.max_memory_allocated`` (what PyTorch really held, activations included) and the median step time.

    python bench/finetune_memory.py                     # all recipes, fp16 and bf16, batch 2
    python bench/finetune_memory.py --shape whisper-small --precisions bf16

Needs a CUDA GPU: on a CPU it says so and exits. Results also go to bench/results/finetune_memory.json.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers.whisper.models import real_config  # noqa: E402
from helpers.whisper.train import LORA_TARGETS  # noqa: E402

RECIPES = ["full", "full+ckpt", "lora", "lora+ckpt", "lora8bit+ckpt"]
GIB = 2 ** 30


def build(recipe: str, shape: str, dtype: torch.dtype):
    from transformers import WhisperForConditionalGeneration

    config = real_config(shape)
    lora, ckpt, eight_bit = recipe.startswith("lora"), recipe.endswith("ckpt"), "8bit" in recipe
    torch.manual_seed(0)
    if eight_bit:
        import tempfile

        from transformers import BitsAndBytesConfig

        with tempfile.TemporaryDirectory() as tmp:  # quantisation happens when loading: save a random model first
            WhisperForConditionalGeneration(config).to(torch.float16).save_pretrained(tmp)
            model = WhisperForConditionalGeneration.from_pretrained(
                tmp, quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map={"": 0})
    else:  # full fine-tuning keeps fp32 master weights (autocast does the rest); LoRA freezes a half base
        model = WhisperForConditionalGeneration(config).to("cuda", torch.float32 if not lora else dtype)
    model.config.use_cache = False
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if eight_bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=ckpt)
        elif ckpt:
            model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, lora_dropout=0.05, target_modules=LORA_TARGETS))
    return model


def measure(recipe, shape, dtype, batch, label_len, steps):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        model = build(recipe, shape, dtype)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optim = torch.optim.AdamW(trainable, lr=1e-5)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        feats = torch.randn(batch, 80, 3000, device="cuda")
        labels = torch.randint(0, 50000, (batch, label_len), device="cuda")
        times = []
        for i in range(steps + 2):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=dtype):
                loss = model(input_features=feats if recipe.startswith("full") else feats.to(dtype), labels=labels).loss
            scaler.scale(loss).backward()
            scaler.step(optim)
            scaler.update()
            optim.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        result = {"peak_gib": torch.cuda.max_memory_allocated() / GIB, "step_s": statistics.median(times),
                  "trainable_M": sum(p.numel() for p in trainable) / 1e6}
    except torch.cuda.OutOfMemoryError:
        result = {"peak_gib": None, "step_s": None, "error": "out of memory"}
    except ImportError as err:
        result = {"peak_gib": None, "step_s": None, "error": f"skipped: {err}"}
    finally:
        model = optim = None  # noqa: F841
        gc.collect()
        torch.cuda.empty_cache()
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="breeze-asr-25", choices=["breeze-asr-25", "whisper-small"])
    ap.add_argument("--recipes", nargs="+", default=RECIPES, choices=RECIPES)
    ap.add_argument("--precisions", nargs="+", default=["fp16", "bf16"], choices=["fp16", "bf16"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--label-len", type=int, default=64, help="label tokens per clip")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("--budget-gib", type=float, default=8.0, help="the card to fit (an RTX 3060 Ti: 8 GB)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("This benchmark measures GPU memory and needs a CUDA GPU; none is visible here. "
              "Run it on a GPU machine: python bench/finetune_memory.py")
        return 0
    device = torch.cuda.get_device_name()
    rows = []
    print(f"{args.shape}, batch {args.batch} x 30 s, {args.label_len} label tokens, on {device}")
    print(f"{'recipe':<16}{'precision':<10}{'peak GiB':>10}{'step s':>9}{'trainable M':>13}  "
          f"fits {args.budget_gib:g} GB?")
    for precision in args.precisions:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        for recipe in args.recipes:
            r = {"recipe": recipe, "precision": precision, **measure(recipe, args.shape, dtype, args.batch,
                                                                      args.label_len, args.steps)}
            rows.append(r)
            if r["peak_gib"] is None:
                print(f"{recipe:<16}{precision:<10}{r['error']:>32}")
            else:
                fits = r["peak_gib"] * GIB < args.budget_gib * 1e9 * 0.95  # leave 5 % for the CUDA context etc.
                print(f"{recipe:<16}{precision:<10}{r['peak_gib']:>10.2f}{r['step_s']:>9.3f}{r['trainable_M']:>13.1f}  "
                      f"{'yes' if fits else 'no'}")
    out = Path(__file__).parent / "results" / "finetune_memory.json"
    out.parent.mkdir(exist_ok=True)
    results = {"device": device, "torch": torch.__version__, "args": vars(args), "rows": rows}
    out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
