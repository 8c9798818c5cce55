"""How sure are we? Bootstrap intervals for error rates, paired differences, and timing spreads.

A test set of a few hundred utterances gives a CER that would move by a point or more on another draw of
utterances. :func:`bootstrap_rate` resamples the utterances (with replacement, fixed seed) and recomputes the
corpus rate each time; the 2.5th and 97.5th percentiles are a 95 % interval. :func:`paired_difference` does the
same for student minus teacher on the *same* resampled utterances, which is far tighter than comparing two
separate intervals, and :func:`verdict` turns it into words.
"""
from __future__ import annotations

import numpy as np

RESAMPLES, SEED, LEVEL = 1000, 0, 0.95


def _resampled_rates(errors: np.ndarray, n_ref: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Corpus rates (percent) of ``resamples`` bootstrap draws of the utterances: rows = draws, columns = systems
    (``errors`` is utterances x systems, ``n_ref`` utterances)."""
    rng = np.random.default_rng(seed)
    n = len(n_ref)
    draws = rng.integers(0, n, size=(resamples, n))
    total_ref = np.maximum(n_ref[draws].sum(axis=1), 1)
    return 100.0 * errors[draws].sum(axis=1) / total_ref[:, None]


def _check(errors, n_ref) -> tuple[np.ndarray, np.ndarray]:
    errors, n_ref = np.asarray(errors, dtype=float), np.asarray(n_ref, dtype=float)
    if errors.ndim == 1:
        errors = errors[:, None]
    if len(n_ref) == 0 or len(errors) != len(n_ref):
        raise ValueError(f"need the same, non-zero number of utterances in errors ({len(errors)}) and "
                         f"reference lengths ({len(n_ref)})")
    return errors, n_ref


def bootstrap_rate(errors, n_ref, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> dict:
    """The corpus error rate (percent: sum of errors / sum of reference tokens) with a bootstrap interval.

    ``errors`` and ``n_ref`` hold one number per utterance (edits, and reference characters for CER). Returns
    ``{"rate", "low", "high"}``: the rate of the whole set and the ``level`` percentile interval of
    ``resamples`` resamples of the utterances.
    """
    errors, n_ref = _check(errors, n_ref)
    rates = _resampled_rates(errors, n_ref, resamples, seed)[:, 0]
    tail = 100 * (1 - level) / 2
    return {"rate": 100.0 * errors[:, 0].sum() / max(n_ref.sum(), 1),
            "low": float(np.percentile(rates, tail)), "high": float(np.percentile(rates, 100 - tail))}


def paired_difference(errors_a, errors_b, n_ref, resamples: int = RESAMPLES, seed: int = SEED,
                      level: float = LEVEL) -> dict:
    """Rate of system A minus rate of system B (percentage points) on the same utterances, with a bootstrap
    interval in which every resample draws the same utterances for both. Returns ``{"difference", "low",
    "high"}``."""
    errors, n_ref = _check(np.stack([np.asarray(errors_a, float), np.asarray(errors_b, float)], axis=1), n_ref)
    rates = _resampled_rates(errors, n_ref, resamples, seed)
    diffs = rates[:, 0] - rates[:, 1]
    tail = 100 * (1 - level) / 2
    return {"difference": 100.0 * (errors[:, 0].sum() - errors[:, 1].sum()) / max(n_ref.sum(), 1),
            "low": float(np.percentile(diffs, tail)), "high": float(np.percentile(diffs, 100 - tail))}


def verdict(difference: dict, lower_is_better: bool = True) -> str:
    """``"better"``, ``"worse"`` or ``"within noise"`` for A against B, from a :func:`paired_difference` interval:
    better when the whole interval is below 0 (for error rates), worse when it is all above, else within noise."""
    if difference["high"] < 0:
        return "better" if lower_is_better else "worse"
    if difference["low"] > 0:
        return "worse" if lower_is_better else "better"
    return "within noise"


def spread(values) -> dict:
    """Median, minimum and maximum of repeated measurements (e.g. seconds of several timing rounds). The median is
    the median round of :mod:`helpers.figures.timing` (the lower middle for an even count), a value that occurred."""
    values = sorted(float(v) for v in values)
    if not values:
        raise ValueError("no measurements")
    return {"median": values[(len(values) - 1) // 2], "min": values[0], "max": values[-1]}


def overlap(a: dict, b: dict) -> bool:
    """Whether two :func:`spread` ranges (min..max) overlap: then their difference is within timing noise."""
    return a["min"] <= b["max"] and b["min"] <= a["max"]
