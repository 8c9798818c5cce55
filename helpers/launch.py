"""One code path for one process or many: the heavy phases as commands, and the process helpers they share.

Each heavy phase has a ``run_phase(p)`` that does the whole phase (load, train or transcribe, save, write
metrics) for the resolved parameters ``p`` of its notebook, and a command that reads the same parameters:

    python -m helpers.finetune --run-dir runs/tiny -f params.yaml      # notebook 02, one process
    python -m helpers.pseudo   --run-dir runs/tiny                     # notebook 03
    python -m helpers.distill  --run-dir runs/tiny -p max_steps 2000   # notebook 05
    python -m helpers.adalora  --run-dir runs/tiny                     # notebook 06
    accelerate launch --multi_gpu --num_processes 4 -m helpers.distill --run-dir runs/full --profile full

Under ``accelerate launch`` every process runs the same command: the Trainer splits each global batch over
the processes (DDP, or DeepSpeed / FSDP from the ``accelerate config`` file), pseudo-labelling splits the
manifest, and only the main process writes files. From a notebook, :func:`notebook_launch` runs the same
``run_phase`` in-process (one process) or on several local GPUs through ``accelerate.notebook_launcher``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from . import config

# phase -> (notebook whose parameters it reads, module that runs it, the file it writes its results to)
PHASES: dict[str, tuple[str, str, str]] = {
    "finetune": ("02_breeze_finetune", "helpers.finetune", "teacher/metrics.json"),
    "pseudo": ("03_pseudo_label", "helpers.pseudo", "pseudo/report.json"),
    "distill": ("05_distill", "helpers.distill", "student_kd/metrics.json"),
    "adalora": ("06_adalora", "helpers.adalora", "student_adalora/metrics.json"),
}


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------
def world_size() -> int:
    """How many processes run this phase together (``WORLD_SIZE``, set by ``accelerate launch``); 1 alone."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class _OneProcess(SimpleNamespace):
    """What :func:`process_state` gives when nothing was launched: rank 0 of 1, no process group."""

    def wait_for_everyone(self) -> None:
        """Nothing to wait for."""


def process_state():
    """The running process's place in the group: ``num_processes``, ``process_index``, ``is_main_process``,
    ``device`` and ``wait_for_everyone()`` (a barrier).

    Under a launcher this is accelerate's ``PartialState`` (which joins the process group: gloo on CPU,
    NCCL on GPUs). Alone it is a plain stand-in, so that a notebook that later calls
    :func:`notebook_launch` has not initialised accelerate in the parent process.
    """
    if world_size() > 1:
        from accelerate import PartialState

        return PartialState(cpu=not torch.cuda.is_available())  # without a GPU: CPU processes over gloo
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return _OneProcess(num_processes=1, process_index=0, is_main_process=True, device=device)


def shard_bounds(n_rows: int, rank: int, n_shards: int) -> tuple[int, int]:
    """``(start, stop)`` of shard ``rank`` of ``n_rows`` rows cut into ``n_shards`` contiguous blocks whose sizes
    differ by at most one, the larger blocks first (10 rows in 3 shards: 0-4, 4-7, 7-10). Concatenating the
    shards in rank order gives the rows back in their order."""
    if not 0 <= rank < n_shards:
        raise ValueError(f"rank {rank} is not in 0..{n_shards - 1}")
    size, extra = divmod(n_rows, n_shards)
    start = rank * size + min(rank, extra)
    return start, start + size + (rank < extra)


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------
def phase_params(phase: str, params: dict) -> SimpleNamespace:
    """Resolve ``params`` for ``phase``'s notebook with its profile (``config.resolve``).

    A parameters file may serve the whole course, so names that belong to other notebooks are left out;
    a name no notebook knows is an error.
    """
    notebook = PHASES[phase][0]
    known = set().union(*(config.defaults(nb) for nb in config.NOTEBOOK_PARAMS))
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; the parameters of {notebook} are "
                         f"{sorted(config.defaults(notebook))}")
    own = config.defaults(notebook)
    return config.resolve(notebook, {k: v for k, v in params.items() if k in own})


def run_phase(phase: str, p) -> dict:
    """Run ``phase`` in this process (one of many under a launcher); returns its results (main process)."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {sorted(PHASES)}, got {phase!r}")
    return importlib.import_module(PHASES[phase][1]).run_phase(p)


def main(phase: str, argv: list[str] | None = None) -> int:
    """The command line of ``python -m helpers.<phase>``: the parameters as ``python -m helpers.course``
    takes them (``--profile``, ``--run-dir``, ``-f params.yaml``, ``-p name value``), then the phase."""
    from .course import parse_params

    notebook, module, results = PHASES[phase]
    ap = argparse.ArgumentParser(
        prog=f"python -m {module}", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"The {phase} phase of notebook {notebook}, with that notebook's parameters. Alone it runs in "
                    f"one process; under `accelerate launch ... -m {module}` on all the launched processes. "
                    f"Results go to <run_dir>/{results}.")
    ap.add_argument("--profile", help="tiny (default) | gpu-8gb | full")
    ap.add_argument("--run-dir", help="the course's output folder (default runs/<profile>)")
    ap.add_argument("-f", "--parameters-file", action="append", default=[], help="YAML file of parameters (repeatable)")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="one parameter (repeatable); the value is read as YAML")
    args = ap.parse_args(argv)
    params = parse_params(args.parameters_file, args.parameter, args.profile, args.run_dir)
    params.setdefault("live_plot", False)  # no notebook to draw in
    try:
        p = phase_params(phase, params)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_phase(phase, p)
    return 0


# ---------------------------------------------------------------------------------------------
# From a notebook
# ---------------------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port nobody listens on now, for the processes' rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def notebook_launch(phase: str, p, num_processes: int = 1) -> dict:
    """Run ``phase`` for the notebook's parameters ``p``: in this process when ``num_processes`` is 1, else
    on ``num_processes`` local GPUs through ``accelerate.notebook_launcher`` (processes forked from the
    kernel). Returns the phase's results, read back from the file the main process wrote.

    ``accelerate.notebook_launcher`` needs a kernel in which neither CUDA nor an ``Accelerator`` was
    started: run it before anything else touches the GPU (restart the kernel if needed).
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {sorted(PHASES)}, got {phase!r}")
    if num_processes < 1:
        raise ValueError(f"num_processes must be at least 1, got {num_processes}")
    if num_processes == 1:
        return run_phase(phase, p)
    if torch.cuda.is_available() and num_processes > torch.cuda.device_count():
        raise ValueError(f"num_processes = {num_processes} but this machine has {torch.cuda.device_count()} GPU(s)")
    from accelerate import notebook_launcher

    from .data import read_json

    p = SimpleNamespace(**{**vars(p), "live_plot": False})  # the forked processes cannot draw in the notebook
    notebook_launcher(run_phase, args=(phase, p), num_processes=num_processes, use_port=str(free_port()))
    results = Path(p.run_dir) / PHASES[phase][2]
    if not results.exists():
        raise RuntimeError(f"the {phase} phase ran on {num_processes} processes but wrote no {results}")
    return read_json(results)


def transcribe(model, processor, manifest, batch_size: int, desc: str = "transcribing",
               progress: bool = True) -> tuple[list[str], dict]:
    """``evaluate.transcribe`` shared out: each process transcribes one contiguous block of ``manifest``
    and every process gets all transcripts back in manifest order (``stats`` as for one process, with
    ``compute_s`` the slowest block's wall time). Alone, exactly ``evaluate.transcribe``."""
    from .evaluate import transcribe as transcribe_rows

    state = process_state()
    if state.num_processes == 1:
        return transcribe_rows(model, processor, manifest, batch_size, desc=desc, progress=progress)
    from accelerate.utils import gather_object

    start, stop = shard_bounds(len(manifest), state.process_index, state.num_processes)
    predictions, stats = transcribe_rows(model, processor, manifest.iloc[start:stop], batch_size,
                                         progress=progress and state.is_main_process, desc=desc)
    blocks = gather_object([(predictions, stats)])  # one (predictions, stats) per process, in rank order
    return [text for block, _ in blocks for text in block], merge_speed([s for _, s in blocks])


def merge_speed(shards: list[dict]) -> dict:
    """One ``evaluate.transcribe`` stats dict from those of processes that ran side by side.

    Seconds of audio or of work (``*_s``) and step counts add up, except ``compute_s``, the wall time of
    the run, which is the slowest process's; the rates are worked out again from the merged totals
    (``rtfx`` = audio_s / compute_s, ``ms_per_step`` and ``decoder_steps_per_s`` per process-second).
    """
    merged = {}
    for key in shards[0]:
        values = [s[key] for s in shards]
        merged[key] = max(values) if key == "compute_s" else sum(values)
    busy_s, steps = sum(s["compute_s"] for s in shards), merged.get("decoder_steps", 0)
    merged["rtfx"] = merged["audio_s"] / max(merged["compute_s"], 1e-9)
    if "ms_per_step" in merged:
        merged["ms_per_step"] = 1000 * busy_s / max(steps, 1)
    if "decoder_steps_per_s" in merged:
        merged["decoder_steps_per_s"] = steps / max(merged.get("decoder_s", 0.0), 1e-9)
    return merged
