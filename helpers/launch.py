"""One code path for one process or many: a notebook runs its phase here, in the kernel or on several GPUs.

Each phase module has a ``run_phase(p)`` that does the whole phase (load, train or transcribe, save, write
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

from types import SimpleNamespace

import torch

from . import adalora, audio_context, data, distill, evaluate, finetune, pseudo, student
from .config import PHASES
from .files import RunDir, read_json
from .whisper.processes import free_port

RUN_PHASE = {module.__name__.rsplit(".", 1)[1]: module.run_phase
             for module in (data, finetune, pseudo, student, distill, adalora, audio_context, evaluate)}
assert set(RUN_PHASE) == set(PHASES), "every phase of config.PHASES has a module with run_phase"


def notebook_launch(phase: str, p, num_processes: int = 1) -> dict:
    """Run ``phase`` for the notebook's parameters ``p``: in this process when ``num_processes`` is 1, else
    on ``num_processes`` local GPUs through ``accelerate.notebook_launcher`` (processes forked from the
    kernel). Returns the phase's results, read back from the file the main process wrote.

    ``accelerate.notebook_launcher`` needs a kernel in which neither CUDA nor an ``Accelerator`` was
    started: run it before anything else touches the GPU (restart the kernel if needed).
    """
    if phase not in RUN_PHASE:
        raise ValueError(f"phase must be one of {sorted(RUN_PHASE)}, got {phase!r}")
    if num_processes < 1:
        raise ValueError(f"num_processes must be at least 1, got {num_processes}")
    if num_processes == 1:
        return RUN_PHASE[phase](p)
    if torch.cuda.is_available() and num_processes > torch.cuda.device_count():
        raise ValueError(f"num_processes = {num_processes} but this machine has {torch.cuda.device_count()} GPU(s)")
    from accelerate import notebook_launcher

    p = SimpleNamespace(**{**vars(p), "live_plot": False})  # the forked processes cannot draw in the notebook
    notebook_launcher(RUN_PHASE[phase], args=(p,), num_processes=num_processes, use_port=str(free_port()))
    results = RunDir(p.run_dir).phase_results(phase)
    if not results.exists():
        raise RuntimeError(f"the {phase} phase ran on {num_processes} processes but wrote no {results}")
    return read_json(results)
