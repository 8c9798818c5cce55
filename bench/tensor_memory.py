"""Which fine-tuning recipe for Breeze-ASR-25 fits an 8 GB GPU? Tensor memory of one training step, on the CPU.

What it measures. For each recipe it builds a model of the exact Breeze-ASR-25 shape (Whisper-large-v2: 32+32
layers, width 1280, 51865 tokens; ``helpers.whisper.models.real_config``) with the workbook's own
``train.prepare_model`` (LoRA r=32 on q/k/v/out_proj/fc1/fc2, gradient checkpointing), makes its weights *fake* tensors
(``FakeTensorMode``: shapes, dtypes and storage sizes, no memory, no arithmetic), and runs ONE real training step
on a batch of 2 x 30 s (input_features 2 x 80 x 3000) with 448-token labels: forward under autocast, backward,
``AdamW.step()`` (fused, the Trainer's default ``adamw_torch_fused``), ``zero_grad``; then the next step with 2
accumulated micro-batches (``steady_state``), as every later step of a run is: the optimizer state and the first
micro-batch's gradients are alive through its forward pass. ``helpers.figures.memory.TensorMemory``
(a ``TorchDispatchMode``) adds up every tensor storage alive at each moment (rounded up to 512 bytes, the CUDA
caching allocator's block size) and reports the peak with its breakdown: parameters, gradients, optimizer state,
activations and temporaries. The accounting is checked against real tensors (``--validate``, and the unit test
tests/test_memory.py) and against ``torch.distributed._tools.mem_tracker.MemTracker``.

What it does not measure. This is a CPU measurement of tensor memory, not a GPU reading:
* CPU autocast stands in for CUDA autocast. They differ in one op the model uses: CUDA autocast runs
  ``layer_norm`` in float32, CPU autocast does not; ``helpers.figures.memory.cuda_autocast_policy`` makes the CPU do as
  CUDA does (``--cpu-autocast`` turns it off). Attention runs the CPU flash kernel (output + logsumexp kept, like
  CUDA's flash/memory-efficient kernels); the kernels' internal scratch memory is not seen.
* Fake tensors cannot answer data-dependent questions, so transformers materialises the decoder's causal mask
  (2 x 448 x 448, under 1 MB) where real tensors skip it; bitsandbytes' outlier columns are data-dependent too,
  so the 8-bit recipe runs with ``llm_int8_threshold`` 0 (no fp16 outlier copies; the default 6.0 keeps a few).
* GradScaler (fp16) is left out: in-place on the gradients plus a few scalars.
* The CUDA context, cuBLAS workspaces and the caching allocator's unused blocks are not tensors: they are added
  as fixed costs (FIXED_COSTS below, with their sources) to estimate what the GPU needs.

    python bench/tensor_memory.py --shapes breeze-asr-25 whisper-small   # about 2 minutes
    python bench/tensor_memory.py --shapes breeze-asr-25 whisper-small --compare-cpu-autocast --validate  # ~11 min

The 8-bit recipe needs bitsandbytes importable (``pip install bitsandbytes``; here it was installed to a
side folder: ``PYTHONPATH=/path/to/bnb python bench/tensor_memory.py``); without it that row is derived from
the LoRA + checkpointing row and labelled so. Raw results: bench/results/tensor_memory_cpu.json.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import logging
import platform
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers.figures import memory
from helpers.whisper import train  # noqa: E402
from helpers.whisper.models import real_config  # noqa: E402

GB = memory.GB
RESULTS = Path(__file__).resolve().parent / "results" / "tensor_memory_cpu.json"

# recipe -> how the model is built and trained. base: dtype of the (frozen or trained) weights; autocast: the
# mixed-precision dtype. fp16 and bf16 have the same bytes; fp16 is what the gpu-8gb profile uses for LoRA.
RECIPES = {
    "full": dict(lora=False, ckpt=False, base=torch.float32, autocast=torch.bfloat16,
                 text="full fine-tuning, fp32 master weights, bf16 autocast, AdamW"),
    "full+ckpt": dict(lora=False, ckpt=True, base=torch.float32, autocast=torch.bfloat16,
                      text="full fine-tuning + gradient checkpointing"),
    "lora": dict(lora=True, ckpt=False, base=torch.float16, autocast=torch.float16,
                 text="LoRA r=32 on a frozen fp16 base, fp16 autocast, AdamW on the adapters"),
    "lora+ckpt": dict(lora=True, ckpt=True, base=torch.float16, autocast=torch.float16,
                      text="LoRA r=32 on a frozen fp16 base + gradient checkpointing (the gpu-8gb recipe)"),
    "lora+ckpt fp32 base": dict(lora=True, ckpt=True, base=torch.float32, autocast=torch.float16,
                                text="LoRA r=32 + checkpointing on a frozen fp32 base (load_whisper's default "
                                     "dtype, fp16 autocast)"),
    "lora8bit+ckpt": dict(lora=True, ckpt=True, base="int8", autocast=torch.float16,
                          text="LoRA r=32 + checkpointing on an 8-bit base (bitsandbytes LLM.int8, fp16 rest "
                               "upcast to fp32 by prepare_model_for_kbit_training)"),
}

# Costs a real GPU adds on top of tensor memory. Each with where the figure comes from; "assumption" says so.
FIXED_COSTS = {
    "cuda_context_gb": 0.6,
    "cublas_workspace_gb": 0.02,
    "allocator_overhead": 0.10,
    "block_rounding_bytes": 512,
    "notes": {
        "cuda_context_gb": (
            "Assumption within sourced bounds. The CUDA context (driver state + loaded kernel modules) is not a "
            "tensor. PyTorch PR #86509 (https://github.com/pytorch/pytorch/pull/86509), which made "
            "CUDA_MODULE_LOADING=LAZY PyTorch's default, measured 287,047,680 B with lazy loading vs 666,632,192 B "
            "eager right after initialisation; PyTorch forum threads report ~700-800 MB before lazy loading "
            "(https://discuss.pytorch.org/t/what-is-the-reason-for-pytorchs-gpu-memory-floor/73021: 723 MiB; "
            "https://discuss.pytorch.org/t/high-gpu-memory-overhead/81330: '~700+MB' 'depending on the CUDA "
            "version, device'). Lazy loading adds each kernel module when first used (NVIDIA CUDA C++ Programming "
            "Guide, 'Lazy Loading'), so a training step holds more than 0.29 GB; 0.6 GB is assumed."),
        "cublas_workspace_gb": (
            "PyTorch 'CUDA semantics' notes, section 'cuBLAS workspaces' (https://docs.pytorch.org/docs/stable/"
            "notes/cuda.html): one workspace per (cuBLAS handle, stream), default CUBLAS_WORKSPACE_CONFIG="
            ":4096:2:16:8 = 2 x 4096 + 8 x 16 KiB = 8.125 MiB; PyTorch's reproducibility notes say ':4096:8' 'will "
            "increase library footprint in GPU memory by approximately 24MiB'. cuBLASLt: 1 MiB default on small "
            "pre-Hopper GPUs (PyTorch PR #120925). Forward (main thread) and backward (autograd thread) use two "
            "handles: 2 x (8.125 + 1) MiB = 0.019 GB. These come from the caching allocator, so "
            "torch.cuda.max_memory_allocated includes them."),
        "allocator_overhead": (
            "Assumption. The caching allocator rounds every block up to 512 B (applied in the measurement, "
            "block_rounding_bytes) and keeps freed blocks cached; splitting large cached blocks leaves slivers it "
            "cannot reuse (fragmentation), which is why PYTORCH_CUDA_ALLOC_CONF offers max_split_size_mb and "
            "expandable_segments (PyTorch 'CUDA semantics' notes, 'Optimizing memory usage with "
            "PYTORCH_CUDA_ALLOC_CONF'). No source gives a general figure; 10 % of the peak tensor memory is assumed "
            "for reserved-but-unallocated memory at the peak."),
        "not_counted": (
            "A desktop or other processes on the same card; cuDNN / attention kernels' internal workspaces; an "
            "8 GB card has 8 GiB = 8.59 GB physically, of which the budget below counts only 8.0 GB."),
    },
}


def build(recipe: str, config, device: str):
    """The recipe's model on ``device`` ("meta" to be made fake afterwards, "cpu" for real tensors)."""
    from transformers import WhisperForConditionalGeneration

    spec = RECIPES[recipe]
    eight_bit = spec["base"] == "int8"
    torch.manual_seed(0)
    with torch.device(device):
        model = WhisperForConditionalGeneration(config)
    model.to(torch.float16 if eight_bit else spec["base"])
    if eight_bit:
        to_int8(model)
    p = SimpleNamespace(gradient_checkpointing=spec["ckpt"], use_lora=spec["lora"], lora_r=32, load_in_8bit=eight_bit)
    model = train.prepare_model(SimpleNamespace(model=model), p).model  # the workbook's own LoRA / checkpointing
    model.train()
    return model


def to_int8(model) -> None:
    """Swap every linear layer but the output projection for bitsandbytes' ``Linear8bitLt`` holding int8 weights
    and fp32 row scales, as ``from_pretrained(quantization_config=BitsAndBytesConfig(load_in_8bit=True))`` leaves
    them. The scales are registered as a buffer so that they are counted."""
    import bitsandbytes as bnb

    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and child_name != "proj_out":
                device = child.weight.device
                new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                          has_fp16_weights=False, threshold=0.0, device=device)
                weight = torch.zeros(child.out_features, child.in_features, dtype=torch.int8, device=device)
                new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
                new.register_buffer("row_scales", torch.ones(child.out_features, device=device))
                if child.bias is not None:
                    new.bias = torch.nn.Parameter(child.bias.detach().clone(), requires_grad=False)
                setattr(module, child_name, new)
    model.is_loaded_in_8bit = True


def arm_int8(model) -> None:
    """Give each ``Linear8bitLt`` its quantised state (weight = CB, row scales = SCB), after any fake conversion."""
    import bitsandbytes as bnb

    for m in model.modules():
        if isinstance(m, bnb.nn.Linear8bitLt):
            m.weight.CB, m.weight.SCB = m.weight.data, m.row_scales  # CB shares the weight's storage


@contextlib.contextmanager
def cuda_int8_path():
    """bitsandbytes trains on a CPU with a dequantise-then-matmul path (MatMul8bitFp); the CUDA path is
    MatMul8bitLt (int8 matmul, quantised activations). The device of a fake tensor reads "cpu", so pick the CUDA
    path explicitly."""
    import bitsandbytes as bnb
    from bitsandbytes.autograd import _functions as F

    def matmul(A, B, out=None, state=None, threshold=0.0, bias=None):
        state = state or F.MatmulLtState()
        return F.MatMul8bitLt.apply(A, B, out, bias, state)

    saved = bnb.matmul
    bnb.matmul = matmul
    try:
        yield
    finally:
        bnb.matmul = saved


def measure(recipe: str, shape: str, batch: int, label_len: int, fake: bool = True, cuda_policy: bool = True,
            round_to: int = 512, steady: bool = True) -> dict:
    """``recipe`` at ``shape`` under the tensor tracker; sizes in bytes. First one training step from scratch
    (as the brief asks); with ``steady``, then a second step of 2 accumulated micro-batches, as every later
    step of a run is: the optimizer state of the first step and the first micro-batch's gradients are alive."""
    spec = RECIPES[recipe]
    config = real_config(shape)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "inputs will be cast to float16", per layer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecations, checkpointing's and peft's advice, repeated per layer
        model = build(recipe, config, "meta" if fake else "cpu")
        mode = FakeTensorMode() if fake else contextlib.nullcontext()
        if fake:
            memory.fake_module(model, mode)
        eight_bit = spec["base"] == "int8"
        if eight_bit:
            arm_int8(model)
        with mode, (memory.cuda_autocast_policy() if cuda_policy else contextlib.nullcontext()), \
                (cuda_int8_path() if eight_bit else contextlib.nullcontext()):
            trainable = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=True)
            inputs = {"input_features": torch.randn(batch, config.num_mel_bins, 2 * config.max_source_positions),
                      "labels": torch.randint(0, 50000, (batch, label_len))}
            t0 = time.perf_counter()
            result = memory.tensor_peak(lambda: memory.training_step(model, inputs, optimizer, spec["autocast"]),
                                        model=model, optimizer=optimizer, inputs=inputs, round_to=round_to)
            if steady:
                result["steady_state"] = memory.tensor_peak(
                    lambda: memory.training_step(model, inputs, optimizer, spec["autocast"], accumulation_steps=2),
                    model=model, optimizer=optimizer, inputs=inputs, round_to=round_to)
                result["steady_state"]["accumulation_steps"] = 2
            result["seconds"] = round(time.perf_counter() - t0, 1)
    result.update(recipe=spec["text"], how="measured" + (" (fake tensors)" if fake else " (real tensors)"),
                  trainable_parameters=sum(p.numel() for p in trainable),
                  parameters=sum(p.numel() for p in model.parameters()),
                  base_dtype=str(spec["base"]).replace("torch.", ""),
                  autocast=str(spec["autocast"]).replace("torch.", ""),
                  gradient_checkpointing=spec["ckpt"], use_cache=bool(model.config.use_cache),
                  cuda_autocast_policy=cuda_policy, optimizer="AdamW fused (Trainer default adamw_torch_fused)")
    if eight_bit:
        result["note"] = "bitsandbytes MatMul8bitLt (CUDA path) on fake tensors, llm_int8_threshold 0"
    return result


def derived_8bit(lora_ckpt: dict) -> dict:
    """Recipe 4 (LoRA + checkpointing on an fp16 base) with the frozen base weights' bytes halved: the naive
    8-bit figure, given when bitsandbytes cannot run (and beside the measured one when it can). Derived, not
    measured: it ignores what prepare_model_for_kbit_training upcasts to fp32 and what the int8 matmul keeps."""
    r = {k: v for k, v in json.loads(json.dumps(lora_ckpt)).items()
         if k not in ("plain_cpu_autocast", "phase_peaks", "max", "seconds")}
    r.get("steady_state", {}).pop("phase_peaks", None)
    r.get("steady_state", {}).pop("max", None)
    frozen_half = (r["parameter_bytes"] - r["trainable_parameter_bytes"]) // 2
    for entry in (r, r.get("steady_state")):
        if entry:
            entry["at_peak"]["parameters"] -= frozen_half
            entry["peak_bytes"] -= frozen_half
    r.update(how="derived: lora+ckpt with the frozen base weights' bytes halved (not measured)",
             recipe=RECIPES["lora8bit+ckpt"]["text"])
    return r


def validate(shape: str = "whisper-small", recipes=("full", "lora+ckpt"), batch: int = 1, label_len: int = 32) -> dict:
    """The same step with real and with fake tensors: their peaks must agree (bytes, exact)."""
    out = {"shape": shape, "batch": batch, "label_tokens": label_len, "recipes": {}}
    for recipe in recipes:
        row = {}
        for fake in (False, True):
            t0 = time.perf_counter()
            r = measure(recipe, shape, batch, label_len, fake=fake, round_to=1, steady=False)
            row["fake" if fake else "real"] = {"peak_bytes": r["peak_bytes"], "peak_phase": r["peak_phase"],
                                               "at_peak": r["at_peak"], "seconds": round(time.perf_counter() - t0, 1)}
        row["fake_minus_real_bytes"] = row["fake"]["peak_bytes"] - row["real"]["peak_bytes"]
        row["relative"] = row["fake_minus_real_bytes"] / row["real"]["peak_bytes"]
        print(f"  validate {shape} {recipe}: real {row['real']['peak_bytes'] / GB:.4f} GB, fake "
              f"{row['fake']['peak_bytes'] / GB:.4f} GB, difference {row['fake_minus_real_bytes']:+d} B", flush=True)
        out["recipes"][recipe] = row
    return out


def bnb_status() -> dict:
    try:
        import bitsandbytes as bnb
    except ImportError as err:
        return {"importable": False, "why": str(err)}
    return {"importable": True, "version": bnb.__version__,
            "fake_tensors": "Int8Params cannot wrap a FakeTensor (torch.Tensor._make_subclass refuses), so the "
                            "int8 weights are plain fake int8 parameters given bitsandbytes' CB/SCB attributes; "
                            "bitsandbytes' own Linear8bitLt module, MatMul8bitLt autograd function and its ops' "
                            "fake kernels run the step (threshold 0: outlier columns have data-dependent size). The "
                            "int8 weights, fp32 row scales and fp16 rest match what from_pretrained(..., "
                            "quantization_config=BitsAndBytesConfig(load_in_8bit=True)) leaves (checked on the tiny "
                            "model on this CPU)",
            "cpu_real": "bitsandbytes runs 8-bit linear layers on this CPU with real tensors; left to itself it trains "
                        "there through MatMul8bitFp (dequantise + matmul). The fake run and its real-tensor "
                        "validation (--validate) both force MatMul8bitLt, the CUDA path."}


def print_table(results: dict, budget: float) -> None:
    table = memory.fit_table(results, budget)
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20):
        for shape in table.index.get_level_values(0).unique():
            print(f"\n{shape}, batch {results['batch']} x 30 s, {results['label_tokens']}-token labels "
                  f"(CPU measurement of tensor memory, not a GPU reading; GB = 10^9 B):")
            print(table.loc[shape].drop(columns=["how"]).to_string())
            for recipe, how in table.loc[shape, "how"].items():
                if not how.startswith("measured"):
                    print(f"  {recipe}: {how}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["breeze-asr-25"], choices=["breeze-asr-25", "whisper-small"])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--label-len", type=int, default=448, help="label tokens per clip (448: Whisper's maximum)")
    ap.add_argument("--budget-gb", type=float, default=8.0)
    ap.add_argument("--cpu-autocast", action="store_true", help="plain CPU autocast (layer_norm not in float32)")
    ap.add_argument("--compare-cpu-autocast", action="store_true",
                    help="also record each peak under plain CPU autocast, to show what the float32 layer_norm costs")
    ap.add_argument("--validate", action="store_true", help="also compare real and fake tensors at whisper-small")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    import peft
    import transformers

    bnb = bnb_status()
    print(f"bitsandbytes: {'importable ' + bnb['version'] if bnb['importable'] else 'not importable'}", flush=True)
    results = {
        "what": "peak tensor memory of a first training step and of a later one (steady_state), CPU measurement "
                "with fake tensors (not a GPU reading); bytes, GB = 10^9 B in the tables",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, {platform.system()}",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "bitsandbytes": bnb.get("version"), "python": platform.python_version()},
        "command": "python bench/tensor_memory.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "batch": args.batch, "label_tokens": args.label_len, "input_features": [args.batch, 80, 3000],
        "step": "forward (autocast) + backward + AdamW(fused).step() + zero_grad(set_to_none=True); 'steady_state': "
                "the next step, 2 micro-batches accumulated (optimizer state and gradients alive in the forward)",
        "autocast": "CPU autocast standing in for CUDA autocast" + ("" if args.cpu_autocast else
                                                                    ", layer_norm in float32 as CUDA autocast does"),
        "bitsandbytes": bnb, "fixed_costs": FIXED_COSTS, "shapes": {},
    }
    for shape in args.shapes:
        entry = results["shapes"].setdefault(shape, {"recipes": {}})
        for recipe in args.recipes:
            if RECIPES[recipe]["base"] == "int8" and not bnb["importable"]:
                continue
            print(f"{shape}: {recipe} ...", end=" ", flush=True)
            try:
                r = measure(recipe, shape, args.batch, args.label_len, cuda_policy=not args.cpu_autocast)
            except Exception as err:  # noqa: BLE001 - record what failed and go on with the others
                print(f"failed: {type(err).__name__}: {err}", flush=True)
                entry["recipes"][recipe] = {"error": f"{type(err).__name__}: {err}"}
                continue
            if args.compare_cpu_autocast and not args.cpu_autocast:
                plain = measure(recipe, shape, args.batch, args.label_len, cuda_policy=False)
                r["plain_cpu_autocast"] = {"peak_bytes": plain["peak_bytes"],
                                           "steady_peak_bytes": plain["steady_state"]["peak_bytes"]}
            entry["recipes"][recipe] = r
            gc.collect()
            s = r["steady_state"]
            print(f"first step {r['peak_bytes'] / GB:.2f} GB (peak in the {r['peak_phase']}), next steps "
                  f"{s['peak_bytes'] / GB:.2f} GB (in the {s['peak_phase']}) [{r['seconds']} s]", flush=True)
        if "lora8bit+ckpt" in args.recipes and "at_peak" in entry["recipes"].get("lora+ckpt", {}):
            entry["recipes"]["lora8bit+ckpt (derived)"] = derived_8bit(entry["recipes"]["lora+ckpt"])
    if args.validate:
        print("validating the accounting: real against fake tensors", flush=True)
        recipes = ["full", "lora+ckpt"] + (["lora8bit+ckpt"] if bnb["importable"] else [])
        results["validation"] = validate(recipes=recipes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print_table(results, args.budget_gb)
    print(f"\nfixed costs added: CUDA context {FIXED_COSTS['cuda_context_gb']} GB, cuBLAS workspaces "
          f"{FIXED_COSTS['cublas_workspace_gb']} GB, allocator overhead {FIXED_COSTS['allocator_overhead']:.0%} of the "
          f"peak (sources and assumptions in {args.out.name})\nresults -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
