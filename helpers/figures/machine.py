"""What a measurement ran on: every benchmark's results file names the machine, so a figure is never read without it."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def describe_machine(threads: int, device: str = "cpu") -> dict:
    """CPU model, cores, memory (GiB), ``threads``, the GPU's name when ``device`` is ``cuda``, platform, the versions
    of Python, torch, transformers and ctranslate2 (None when not installed) and the load average at the start."""
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if cpuinfo.exists() else platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": _memory_gb(), "threads": threads,
            "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": _version("transformers"),
            "ctranslate2": _version("ctranslate2"),
            "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None}


def _memory_gb() -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    return round(psutil.virtual_memory().total / 2 ** 30, 1)


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
