r"""Row-bootstrap confidence intervals for any similarity measure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .._checks import check_positive_float, check_positive_int
from ._reps import _check_pair

__all__ = ["BootstrapResult", "bootstrap_ci"]


class BootstrapResult(NamedTuple):
    """``(estimate, low, high)`` from :func:`bootstrap_ci`.

    Example:
        >>> import torch
        >>> from subspaces.representations import bootstrap_ci, linear_cka
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(80, 4, generator=g, dtype=torch.float64)
        >>> Y = X + 0.5 * torch.randn(80, 4, generator=g, dtype=torch.float64)
        >>> ci = bootstrap_ci(linear_cka, X, Y, num_samples=50, generator=g)
        >>> ci.estimate == float(linear_cka(X, Y)), ci.low < ci.estimate < ci.high
        (True, True)
    """

    estimate: float
    low: float
    high: float


def bootstrap_ci(
    measure: Callable[[Tensor, Tensor], Any],
    X: Tensor,
    Y: Tensor,
    *,
    num_samples: int = 200,
    level: float = 0.95,
    generator: torch.Generator | None = None,
) -> BootstrapResult:
    """Percentile bootstrap confidence interval of a similarity measure, resampling rows.

    Efron & Tibshirani, "An Introduction to the Bootstrap" (1993): the same ``N`` row indices,
    drawn with replacement, are applied to ``X`` and ``Y``; the interval is the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled values. Resampling
    duplicates rows, which unbiased estimators treat as distinct inputs; read intervals of
    unbiased CKA as approximate.

    Args:
        measure: ``measure(X, Y)`` returning something ``float()`` accepts (every measure in
            this module does).
        X: ``(N, p)`` representation.
        Y: ``(N, q)`` representation of the same ``N`` inputs.
        num_samples: number of bootstrap resamples (at least 2).
        level: confidence level, in ``(0, 1)``.
        generator: source of randomness for the row indices.

    Returns:
        A :class:`BootstrapResult` ``(estimate, low, high)`` where ``estimate`` is the measure
        on the full data.

    Raises:
        TypeError: if ``measure`` is not callable, or an input has the wrong type.
        ValueError: if ``X``/``Y`` are invalid as for the measures, ``level`` is outside
            ``(0, 1)`` or ``num_samples < 2``.

    Example:
        >>> import torch
        >>> from subspaces.representations import linear_cka
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(80, 4, generator=g)
        >>> Y = X + 0.5 * torch.randn(80, 4, generator=g)
        >>> est, low, high = bootstrap_ci(linear_cka, X, Y, num_samples=50, generator=g)
        >>> low <= est <= high
        True
    """
    if not callable(measure):
        raise TypeError(f"measure must be callable, got {type(measure).__name__}")
    Xd, Yd = _check_pair(X, Y, min_rows=2)
    check_positive_int(num_samples, "num_samples", minimum=2)
    level = check_positive_float(level, "level")
    if not level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = Xd.shape[0]
    estimate = float(measure(Xd, Yd))
    values = torch.empty(num_samples, dtype=torch.float64)
    for i in range(num_samples):
        idx = torch.randint(0, n, (n,), generator=generator).to(Xd.device)
        values[i] = float(measure(Xd[idx], Yd[idx]))
    tail = (1.0 - level) / 2.0
    q = torch.quantile(values, torch.tensor([tail, 1.0 - tail], dtype=torch.float64))
    return BootstrapResult(estimate, float(q[0]), float(q[1]))
