"""Seed statistics for reproductions: per-seed values, their mean and a bootstrap interval.

A reproduction that compares methods runs each of them on the same seeds (paired) and reports,
for every quantity its verdict rests on, the per-seed values, their mean and a percentile
bootstrap confidence interval of the mean (Efron & Tibshirani, "An Introduction to the
Bootstrap", 1993). :func:`paired_summary` is the same summary of the per-seed differences, which
is the right interval for "method A beats method B": it removes the seed-to-seed variation that
both methods share.

With three seeds the bootstrap interval is crude (it can only take the values of means of three
resampled numbers); it is reported so that a reader sees the spread, not as a significance test.
The resampling uses a fixed NumPy generator, so the interval is a deterministic function of the
values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["paired_summary", "seed_summary"]

NUM_RESAMPLES = 10_000


def _as_values(values: Sequence[float], name: str) -> np.ndarray:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    array = np.asarray([float(v) for v in values], dtype=np.float64)
    if array.size == 0:
        raise ValueError(f"{name} is empty: give at least one per-seed value")
    bad = ~np.isfinite(array)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}[{index}] is {array[index]}, expected a finite number")
    return array


def seed_summary(values: Sequence[float], *, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Per-seed values, their mean and a percentile bootstrap interval of the mean.

    Args:
        values: one number per seed (finite).
        level: confidence level of the interval, in ``(0, 1)``.
        seed: seed of the resampling generator (the interval is deterministic given it).

    Returns:
        ``{"per_seed": [...], "mean": m, "ci95": [low, high], "n": n}`` (the key says ``ci95``
        whatever ``level`` is only when ``level == 0.95``; otherwise it is ``"ci"`` plus
        ``"level"``). With one value the interval is ``[m, m]``.

    Raises:
        TypeError: if ``values`` is not a sequence.
        ValueError: if ``values`` is empty or holds NaN/Inf, or ``level`` is outside ``(0, 1)``.

    Example:
        >>> s = seed_summary([0.90, 0.92, 0.94])
        >>> round(s["mean"], 6), s["n"]
        (0.92, 3)
        >>> 0.90 <= s["ci95"][0] <= s["mean"] <= s["ci95"][1] <= 0.94
        True
    """
    array = _as_values(values, "values")
    if not (isinstance(level, (int, float)) and 0.0 < float(level) < 1.0):
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    mean = float(array.mean())
    if array.size == 1:
        low = high = mean
    else:
        rng = np.random.default_rng(seed)
        index = rng.integers(0, array.size, size=(NUM_RESAMPLES, array.size))
        means = array[index].mean(axis=1)
        low, high = (float(q) for q in np.quantile(means, [(1 - level) / 2, (1 + level) / 2]))
        # Quantiles of means of the values lie in [min, max]; clip rounding outside it.
        low, high = max(low, float(array.min())), min(high, float(array.max()))
    out: dict[str, Any] = {
        "per_seed": [float(v) for v in array],
        "mean": mean,
        "n": int(array.size),
    }
    if math.isclose(float(level), 0.95):
        out["ci95"] = [low, high]
    else:
        out["ci"] = [low, high]
        out["level"] = float(level)
    return out


def paired_summary(
    a: Sequence[float], b: Sequence[float], *, level: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """:func:`seed_summary` of the per-seed differences ``a[i] - b[i]`` (same seeds, same order).

    Args:
        a: per-seed values of the first method.
        b: per-seed values of the second method, on the same seeds.
        level: confidence level of the interval, in ``(0, 1)``.
        seed: seed of the resampling generator.

    Returns:
        The summary of the differences, as :func:`seed_summary` returns it.

    Raises:
        ValueError: if ``a`` and ``b`` differ in length, or as :func:`seed_summary`.

    Example:
        >>> d = paired_summary([0.91, 0.95, 0.93], [0.90, 0.92, 0.93])
        >>> round(d["mean"], 6), d["ci95"][0] >= 0.0
        (0.013333, True)
    """
    first = _as_values(a, "a")
    second = _as_values(b, "b")
    if first.size != second.size:
        raise ValueError(
            f"a and b must hold one value per seed for the same seeds, got {first.size} and "
            f"{second.size} values"
        )
    return seed_summary(list(first - second), level=level, seed=seed)
