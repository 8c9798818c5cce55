"""One process or many: who am I in the group, which rows are mine, and how the blocks come back together.

Alone (a notebook, ``python -m helpers.<phase>``) there is one process of rank 0. Under ``accelerate launch``
(or :func:`launch.notebook_launch` with several GPUs) every process runs the same code; the heavy phases cut
their rows into one contiguous block per process (:func:`shard_bounds`) and gather the results in rank order
(:func:`gather_blocks`), so the outcome is that of one process.
"""
from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import torch


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
    ``launch.notebook_launch`` has not initialised accelerate in the parent process.
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


def gather_blocks(block) -> list:
    """Every process's ``block`` (any picklable object), in rank order, on every process; ``[block]`` alone."""
    if world_size() == 1:
        return [block]
    from accelerate.utils import gather_object

    return gather_object([block])


def free_port() -> int:
    """A TCP port nobody listens on now (for a rendezvous of processes, or a local server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
