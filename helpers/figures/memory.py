"""Memory: measured while the course runs, and the tensor memory of one training step accounted in advance.

:func:`memory_now` and :class:`PeakMemory` read what the running process holds (the GPU's allocated memory, or
the CPU process's resident set): the training curves and the evaluation table show them.

The rest answers "will this recipe fit my GPU?" before a GPU is at hand.

:class:`TensorMemory` is a ``TorchDispatchMode`` that sees every tensor an operator returns and adds its
storage's bytes (``UntypedStorage.nbytes``) to a category: parameters, buffers, inputs, gradients, optimizer,
activations (made in the forward pass), temporaries (made in the backward pass, recomputed checkpoints
included); the bytes leave when the storage is freed. It keeps the peak of the total and the breakdown at that
moment. Under ``torch._subclasses.fake_tensor.FakeTensorMode`` no memory is allocated at all, so a 1.5B model's
training step can be accounted on a laptop: the bytes are those the same step would hold in real tensors.

What it does not see: memory a kernel allocates internally (cuBLAS/cuDNN workspaces, attention kernels'
scratch), the CUDA context, the caching allocator's unused blocks. It is tensor memory, the counterpart of
``torch.cuda.max_memory_allocated``, not of ``nvidia-smi``. PyTorch's ``MemTracker``
(``torch.distributed._tools.mem_tracker``) does the same accounting but refuses models with frozen parameters
(it hooks every parameter), so not LoRA; the tests check this tracker against it on a model it accepts.
"""
from __future__ import annotations

import gc
import math
import os
import threading
import weakref
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING

import pandas as pd
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

if TYPE_CHECKING:
    import pandas as pd

def memory_now() -> dict[str, float]:
    """Memory in MB: GPU allocated and peak (``torch.cuda``) when CUDA is used, else this process's RSS."""
    if torch.cuda.is_available():
        return {"gpu_allocated_mb": torch.cuda.memory_allocated() / 2**20,
                "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20}
    import psutil

    return {"rss_mb": psutil.Process(os.getpid()).memory_info().rss / 2**20}



class PeakMemory:
    """Peak memory taken while the block runs, above what was in use when it started, in MiB.

    GPU: torch's peak allocated memory on the device. CPU: the process's resident set size, sampled
    every ``interval`` seconds by a background thread (short spikes between samples can be missed).
    """

    def __init__(self, device: str | torch.device = "cpu", interval: float = 0.005):
        self.device, self.interval, self.peak_mb = torch.device(device), interval, float("nan")

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        proc = psutil.Process()
        self._base = self._peak = proc.memory_info().rss
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self._peak = max(self._peak, proc.memory_info().rss)
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = self._peak
        self.peak_mb = (peak - self._base) / 2**20
        return False


# ---------------------------------------------------------------------------------------------
# Tensor memory of a training step, accounted
# ---------------------------------------------------------------------------------------------
CATEGORIES = ("parameters", "buffers", "inputs", "gradients", "optimizer", "activations", "temporaries")
GB = 1e9  # results and tables are in GB of 10^9 bytes, like memory_budget


def _storages(tensor: torch.Tensor) -> list:
    try:
        return [tensor.untyped_storage()]
    except (RuntimeError, NotImplementedError):  # sparse or storage-less tensors
        return []


class TensorMemory(TorchDispatchMode):
    """Bytes held by live tensor storages, per category, with the peak and the breakdown at the peak.

    ``round_to`` rounds each storage up to a multiple of that many bytes (512 mimics the CUDA caching
    allocator's block size, which ``torch.cuda.max_memory_allocated`` counts); 1 counts exact bytes.
    """

    def __init__(self, round_to: int = 1):
        super().__init__()
        self.round_to = round_to
        self.now = dict.fromkeys(CATEGORIES, 0)
        self.peak_bytes, self.at_peak, self.peak_phase = 0, dict(self.now), "start"
        self.maxima = dict(self.now)
        self.phase_peaks: dict[str, int] = {}
        self._seen = WeakIdKeyDictionary()  # storage -> ([bytes, category], weakref with release callback)
        self._in_optimizer = False
        self._handles: list = []

    # -- what is tracked -------------------------------------------------------------------------------
    def track(self, tensors, category: str) -> None:
        """Count ``tensors`` (a tensor or a nest of them) under ``category``, moving them there if counted."""
        for t in tree_leaves(tensors):
            if isinstance(t, torch.Tensor):
                for st in _storages(t):
                    self._count(st, category, move=True)
        self._update_peak()

    def track_module(self, module: torch.nn.Module) -> None:
        """Count a module's parameters (and existing gradients) and buffers; gradients made later are counted
        as gradients the moment they are accumulated."""
        for p in module.parameters():
            self.track(p, "parameters")
            if p.grad is not None:
                self.track(p.grad, "gradients")
            if p.requires_grad:
                self._handles.append(p.register_post_accumulate_grad_hook(lambda q: self.track(q.grad, "gradients")))
        self.track(list(module.buffers()), "buffers")

    def _count(self, st, category: str, move: bool = False) -> None:
        size = math.ceil(st.nbytes() / self.round_to) * self.round_to
        entry = self._seen.get(st)
        if entry is None:
            info = [size, category]
            self._seen[st] = (info, weakref.ref(st, partial(self._release, info)))
            self.now[category] += size
            return
        info = entry[0]
        self.now[info[1]] += size - info[0]  # resized in place (rarely)
        info[0] = size
        if move and info[1] != category:
            self.now[info[1]] -= size
            self.now[category] += size
            info[1] = category

    def _release(self, info, _ref) -> None:
        self.now[info[1]] -= info[0]

    def _phase(self) -> str:
        if self._in_optimizer:
            return "optimizer"
        return "backward" if torch._C._current_graph_task_id() != -1 else "forward"

    def _update_peak(self) -> None:
        for k, v in self.now.items():
            self.maxima[k] = max(self.maxima[k], v)
        total, phase = sum(self.now.values()), self._phase()
        self.phase_peaks[phase] = max(self.phase_peaks.get(phase, 0), total)
        if total > self.peak_bytes:
            self.peak_bytes, self.at_peak, self.peak_phase = total, dict(self.now), phase

    # -- the dispatch mode -----------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        category = {"forward": "activations", "backward": "temporaries", "optimizer": "optimizer"}[self._phase()]
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                for st in _storages(t):
                    self._count(st, category)
        self._update_peak()
        return out

    def __enter__(self):
        def flag(value):
            return lambda *_: setattr(self, "_in_optimizer", value)

        self._handles += [register_optimizer_step_pre_hook(flag(True)), register_optimizer_step_post_hook(flag(False))]
        return super().__enter__()

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return super().__exit__(*exc)


def tensor_peak(step_fn, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, inputs=(),
                round_to: int = 1) -> dict:
    """Run ``step_fn()`` (one training step) under :class:`TensorMemory`; all sizes in bytes.

    ``model``'s parameters, buffers and gradients, the ``optimizer``'s state (from an earlier step) and the
    ``inputs`` tensors exist before the step and are counted from the start. Returns ``peak_bytes`` (most
    bytes held at once), ``peak_phase`` (forward, backward or optimizer), ``phase_peaks`` (the peak within each
    phase), ``at_peak`` (the breakdown at the peak: parameters, buffers, inputs, gradients, optimizer state,
    activations, temporaries; optimizer tensors beyond the state left after the step count as temporaries),
    ``max`` (each category's own maximum), ``parameter_bytes`` and ``trainable_parameter_bytes`` (all and
    trainable parameters, shared storage once) and ``optimizer_state_bytes`` (the state after the step).
    """
    mem = TensorMemory(round_to=round_to)
    mem.track_module(model)
    if optimizer is not None:
        mem.track([v for state in optimizer.state.values() for v in state.values()], "optimizer")
    mem.track(inputs, "inputs")
    with mem:
        step_fn()
    state = sum({id(st): st.nbytes() for s in (optimizer.state.values() if optimizer else ()) for v in s.values()
                 if isinstance(v, torch.Tensor) for st in _storages(v)}.values())  # optimizer state after the step
    at_peak = dict(mem.at_peak)
    extra = max(0, at_peak["optimizer"] - state)  # e.g. foreach AdamW's intermediate lists
    at_peak["optimizer"] -= extra
    at_peak["temporaries"] += extra
    params = {id(st): st.nbytes() for p in model.parameters() for st in _storages(p)}
    trainable = {id(st): st.nbytes() for p in model.parameters() if p.requires_grad for st in _storages(p)}
    return {"peak_bytes": mem.peak_bytes, "peak_phase": mem.peak_phase, "phase_peaks": dict(mem.phase_peaks),
            "at_peak": at_peak, "max": dict(mem.maxima), "parameter_bytes": sum(params.values()),
            "trainable_parameter_bytes": sum(trainable.values()), "optimizer_state_bytes": state,
            "round_to": round_to}


def fake_module(module: torch.nn.Module, fake_mode, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Turn a module built on the ``meta`` device into fake tensors on ``device`` (in place; returns it).

    Build on ``meta`` (``Module.to``, LoRA, checkpointing work there; ``Module.to`` cannot convert fake
    parameters), then call this with the ``FakeTensorMode`` the step will run under: fake tensors on "cpu" take
    the CPU code paths. A parameter shared by several modules (tied embeddings) stays shared.
    """
    from torch._subclasses.fake_tensor import FakeTensor

    device = torch.device(device)
    done: dict[int, torch.Tensor] = {}

    def fake(t, parameter: bool):
        if id(t) not in done:
            if t.device.type != "meta":
                raise ValueError(f"fake_module needs a module on the meta device, found a tensor on {t.device}")
            f = FakeTensor(fake_mode, t.detach(), device)
            done[id(t)] = torch.nn.Parameter(f, requires_grad=t.requires_grad) if parameter else f
        return done[id(t)]

    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[name] = fake(p, True)
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = fake(b, False)
    return module


def training_step(model, batch: dict, optimizer, autocast_dtype: torch.dtype | None = None,
                  device_type: str = "cpu", accumulation_steps: int = 1):
    """One optimizer step as the Trainer takes it: ``accumulation_steps`` forward passes (under autocast when
    ``autocast_dtype`` is given) and backward passes on ``batch``, then ``optimizer.step()`` and
    ``zero_grad(set_to_none=True)``. Returns the last loss tensor, detached."""
    for _ in range(accumulation_steps):
        with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            loss = model(**batch).loss
        (loss / accumulation_steps).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


@contextmanager
def cuda_autocast_policy(ops=("layer_norm",)):
    """Make CPU autocast run ``ops`` in float32, as CUDA autocast does and CPU autocast does not.

    CUDA autocast lists ``layer_norm`` among the ops it casts to float32; CPU autocast leaves it in its input
    dtype. On a half-precision base that changes which tensors the next linear layers save, so the CPU stands in
    for CUDA more faithfully with this policy. Registers an ``AutocastCPU`` kernel for the duration only.
    """
    lib = torch.library.Library("aten", "IMPL")
    excluded = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

    def fp32_kernel(op):
        def kernel(*args, **kwargs):
            def up(a):
                return a.float() if isinstance(a, torch.Tensor) and a.dtype in (torch.float16, torch.bfloat16) else a

            with torch._C._ExcludeDispatchKeyGuard(excluded):
                return op(*[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})
        return kernel

    for name in ops:
        lib.impl(name, fp32_kernel(getattr(torch.ops.aten, name).default), "AutocastCPU")
    try:
        yield
    finally:
        lib._destroy()


def memory_budget(n_params: int, n_lora: int) -> pd.DataFrame:
    """Static GPU memory (GB, 1e9 bytes) of each fine-tuning recipe before activations.

    Full fine-tuning with AdamW in mixed precision keeps fp32 weights (4 B), fp32 gradients (4 B) and two
    fp32 Adam moments (8 B) per parameter: 16 B. LoRA keeps the base frozen in fp16 (2 B) or 8-bit (1 B)
    and trains only the adapters (16 B each). Activations come on top: measure them (bench/).
    """
    rows = [("full fine-tuning, AdamW, mixed precision", 4 * n_params, 4 * n_params, 8 * n_params),
            ("full fine-tuning, 8-bit Adam", 4 * n_params, 4 * n_params, 2 * n_params),
            ("LoRA on a frozen fp16 base", 2 * n_params + 4 * n_lora, 4 * n_lora, 8 * n_lora),
            ("LoRA on a frozen 8-bit base", n_params + 4 * n_lora, 4 * n_lora, 8 * n_lora)]
    table = pd.DataFrame(rows, columns=["recipe", "weights", "gradients", "optimizer"]).set_index("recipe") / 1e9
    table["total (GB)"] = table.sum(axis=1)
    return table.round(2)


def fit_table(results: dict, budget_gb: float = 8.0, *, cuda_context_gb: float | None = None,
              allocator_overhead: float | None = None) -> pd.DataFrame:
    """The table of ``bench/results/tensor_memory_cpu.json``: one row per (shape, recipe), sizes in GB (10^9 B).

    The breakdown and ``peak tensor GB`` are those of the larger of the first step (``first step GB``) and a
    later step (``steady_state``: optimizer state and accumulated gradients alive) when the results have one.
    Estimated GPU memory = peak tensor memory x (1 + allocator overhead) + CUDA context + cuBLAS workspaces,
    with the fixed costs recorded in the results (``fixed_costs``) unless given here. ``fits`` compares it with
    ``budget_gb``; ``margin GB`` is what is left (negative: missing). ``how`` says measured or derived.
    """
    import pandas as pd

    fixed = results["fixed_costs"]
    context = fixed["cuda_context_gb"] if cuda_context_gb is None else cuda_context_gb
    overhead = fixed["allocator_overhead"] if allocator_overhead is None else allocator_overhead
    rows = []
    for shape, entry in results["shapes"].items():
        for recipe, r in entry["recipes"].items():
            if "at_peak" not in r:  # not run (an error is recorded instead)
                continue
            s = max(r, r.get("steady_state", r), key=lambda e: e["peak_bytes"])
            a = {k: v / GB for k, v in s["at_peak"].items()}
            peak = s["peak_bytes"] / GB
            gpu = peak * (1 + overhead) + context + fixed["cublas_workspace_gb"]
            rows.append({"shape": shape, "recipe": recipe, "params GB": a["parameters"] + a["buffers"],
                         "grads GB": a["gradients"], "optimizer GB": a["optimizer"],
                         "activations GB": a["activations"] + a["temporaries"] + a["inputs"],
                         "first step GB": r["peak_bytes"] / GB, "peak tensor GB": peak, "peak in": s["peak_phase"],
                         "estimated GPU GB": gpu, f"fits {budget_gb:g} GB": gpu <= budget_gb,
                         "margin GB": budget_gb - gpu, "how": r.get("how", "measured")})
    return pd.DataFrame(rows).set_index(["shape", "recipe"]).round(2)
