"""The one timing routine: contenders warm up, then take turns over rounds; the median round counts.

Every speed figure of the workbook (notebooks 04 and 07, the exports, speculative decoding, ``bench/``) is measured
by :func:`take_turns`. Taking turns (A, B, C, A, B, C, ...) spreads whatever else the machine does over all
contenders alike, so their ratio stays honest on a busy laptop; the untimed warm-up pays for memory allocation and
kernel selection first. Each round is kept: a ratio is reported with the range the rounds allow.

The statistic is the *median round*: the round at position ``(n - 1) // 2`` of the sorted seconds (the middle one
for an odd count, the lower middle for an even count), so that it is always a round that happened and its other
figures (encoder seconds, transcripts) belong to it.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def median_index(seconds: list[float]) -> int:
    """The position in ``seconds`` of its median round (the lower middle of the sorted values)."""
    if not seconds:
        raise ValueError("no timing rounds")
    order = sorted(range(len(seconds)), key=seconds.__getitem__)
    return order[(len(seconds) - 1) // 2]


@dataclass
class Timed:
    """The rounds of one contender: ``seconds`` of each round in the order they ran, and what each round
    returned (``outputs``)."""
    seconds: list[float] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)

    @property
    def median(self) -> float:
        """Seconds of the median round."""
        return self.seconds[median_index(self.seconds)]

    @property
    def min(self) -> float:
        return min(self.seconds)

    @property
    def max(self) -> float:
        return max(self.seconds)

    @property
    def median_output(self):
        """What the median round returned."""
        return self.outputs[median_index(self.seconds)]

    def spread(self) -> dict:
        """``{"median", "min", "max"}`` seconds (see :func:`helpers.figures.stats.spread`)."""
        return {"median": self.median, "min": self.min, "max": self.max}


def take_turns(contenders: dict[str, Callable[[], Any]], rounds: int = 3, *,
               warmup: dict[str, Callable[[], Any]] | None = None, seconds: Callable[[Any], float] | None = None,
               before: Callable[[str], None] | None = None, after: Callable[[str], None] | None = None,
               on_round: Callable[[str], None] | None = None) -> dict[str, Timed]:
    """Time every contender (name -> a call without arguments) over ``rounds`` rounds, taking turns.

    ``warmup``: name -> an untimed call made once before the rounds (``None``: every contender's own call; a
    contender missing from a given dict is not warmed up).
    ``seconds(output)``: the seconds a round counts, read from what the call returned (e.g. the compute seconds a
    transcription measured itself, without reading audio); by default the wall time of the call.
    ``before(name)`` / ``after(name)``: run around every turn, untimed (e.g. move a model to the GPU and back).
    ``on_round(name)``: called after every turn (a progress bar). Returns name -> :class:`Timed`, in the order of
    ``contenders``. Raises ``ValueError`` for no contender or fewer than one round.
    """
    if not contenders:
        raise ValueError("take_turns: nothing to time")
    if rounds < 1:
        raise ValueError(f"take_turns: rounds must be at least 1, got {rounds}")
    hooks = (before or (lambda name: None), after or (lambda name: None))
    for name, call in (contenders if warmup is None else warmup).items():
        hooks[0](name)
        call()
        hooks[1](name)
    timed = {name: Timed() for name in contenders}
    for _ in range(rounds):
        for name, call in contenders.items():
            hooks[0](name)
            start = time.perf_counter()
            output = call()
            wall = time.perf_counter() - start
            hooks[1](name)
            timed[name].seconds.append(float(seconds(output)) if seconds else wall)
            timed[name].outputs.append(output)
            if on_round:
                on_round(name)
    return timed


def ratio(reference: Timed, other: Timed) -> dict:
    """How many times faster ``other`` ran than ``reference``: ``{"speed_up", "low", "high"}``, the median rounds'
    ratio and the range the rounds allow (slowest reference over fastest other, and the reverse)."""
    return {"speed_up": reference.median / other.median, "low": reference.min / other.max,
            "high": reference.max / other.min}
