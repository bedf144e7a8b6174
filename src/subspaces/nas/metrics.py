"""Ranking metrics of a NAS method against a benchmark's ground truth: Kendall tau, top-k regret.

Kendall tau-b is how weight-sharing NAS papers (e.g. PA&DA, Lu et al., arXiv:2302.14772) score a
supernet's ranking of architectures against their standalone accuracies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["kendall_tau", "top_k_regret"]


def _pair(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> tuple:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"expected two 1-d arrays of one length, got {x.shape} and {y.shape}")
    if x.size < 2:
        raise ValueError(f"need at least 2 architectures, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("scores must be finite (found NaN or Inf)")
    return x, y


def kendall_tau(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Kendall's tau-b rank correlation (ties handled as in ``scipy.stats.kendalltau``).

    ``tau_b = (C - D) / sqrt((n0 - n1) (n0 - n2))`` with ``C``/``D`` the concordant/discordant
    pairs, ``n0 = n (n - 1) / 2`` and ``n1``, ``n2`` the pairs tied in ``a``, in ``b``. All
    pairs are formed at once (``O(n^2)`` memory: fine for the 625 cells here; for spaces of tens
    of thousands use ``scipy.stats.kendalltau``, ``O(n log n)``).

    Args:
        a: scores of ``n`` architectures (e.g. inherited accuracies).
        b: their ground truth (e.g. standalone accuracies).

    Returns:
        tau-b in ``[-1, 1]`` (NaN if either input is constant).

    Raises:
        ValueError: for mismatched shapes, fewer than 2 entries or non-finite values.

    Example:
        >>> kendall_tau([1, 2, 3, 4], [1, 3, 2, 4])  # 5 concordant, 1 discordant of 6
        0.6666666666666666
    """
    x, y = _pair(a, b)
    i, j = np.triu_indices(x.size, k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    n0 = i.size
    n1, n2 = int(np.sum(sx == 0)), int(np.sum(sy == 0))
    denom = np.sqrt(float(n0 - n1) * float(n0 - n2))
    return float(np.sum(sx * sy) / denom) if denom > 0 else float("nan")


def top_k_regret(
    scores: Sequence[float] | np.ndarray, truth: Sequence[float] | np.ndarray, k: int = 1
) -> float:
    """Best true accuracy of the space minus the best true accuracy of the ``k`` top-scored archs.

    Args:
        scores: predicted scores (higher is better; ties broken by order).
        truth: ground-truth accuracies of the same architectures.
        k: how many top-scored architectures are trained and the best kept.

    Returns:
        The regret (``>= 0``; 0 when the true best is among the top ``k``).

    Raises:
        ValueError: for mismatched shapes or ``k`` outside ``[1, n]``.

    Example:
        >>> top_k_regret([0.9, 0.8, 0.1], [0.5, 0.7, 0.9], k=2)  # picks 0.5, 0.7; best is 0.9
        0.20000000000000007
    """
    x, y = _pair(scores, truth)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= x.size:
        raise ValueError(f"k must be an int in [1, {x.size}], got {k!r}")
    top = np.argsort(-x, kind="stable")[:k]
    return float(y.max() - y[top].max())
