"""Memory, measured while the course runs: the process's or the GPU's memory now, and the peak over a block.

(Merged into helpers/memory.py.)
"""
from __future__ import annotations

import gc
import os
import threading

import torch


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
