"""The adaptive-sampling tests of AdAdaGrad on a matrix of per-sample gradients (P21).

Given per-sample gradients ``g_i`` (rows of ``G``, ``i = 1..n``) at the current iterate, their
mean ``g_B`` and the sample variances (Bessel-corrected, ``n - 1``), each test says how large a
batch must be for the mini-batch gradient to be accurate enough; the controller moves the batch
size to ``max(b, ceil(required))``:

* norm test (Byrd, Chin, Nocedal & Wu 2012): ``sum_j Var_i(g_ij) / (eta^2 ||g_B||^2)``;
* inner-product test (Bollapragada, Byrd & Nocedal 2018):
  ``Var_i(<g_i, g_B>) / (theta^2 ||g_B||^4)``;
* orthogonality test: ``sum_j Var_i(g_i - <g_i, g_B> g_B / ||g_B||^2)_j / (nu^2 ||g_B||^2)``;
* augmented inner-product test: the larger of the two previous ones;
* coordinate-wise test (Lau, Liu & Kolar, for AdAdaGrad): the norm test on every coordinate,
  ``max_j Var_i(g_ij) / (eta^2 g_Bj^2)``.

A zero denominator gives ``inf`` (the batch goes to its cap) unless the numerator is zero too
(all per-sample gradients agree: the test holds, ``0``). Inner products and the orthogonal parts
are taken on the whole concatenated gradient, as the paper defines them (the reference code sums
per-tensor inner products instead).

Distributed data parallelism: every statistic is a mean and a sum of squared deviations
(``M2``) of some per-sample quantity, so ranks combine them exactly with
:func:`pool_moments` (the law of total variance, Chan et al.'s pairwise update), passed to
:func:`gradient_statistics` as ``reducer``.

References:
    Lau, Liu & Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods",
    arXiv:2402.11215, 2024. Byrd, Chin, Nocedal & Wu, "Sample size selection in optimization
    methods for machine learning", Math. Program. 2012. Bollapragada, Byrd & Nocedal, "Adaptive
    sampling strategies for stochastic optimization", SIAM J. Optim. 2018 (arXiv:1710.11258).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor

__all__ = [
    "TESTS",
    "GradientStatistics",
    "MomentReducer",
    "TestName",
    "gradient_statistics",
    "pool_moments",
    "required_batch_size",
    "statistics_from_moments",
]

TestName = Literal["norm", "inner_product", "orthogonality", "augmented", "coordinate"]
TESTS: tuple[str, ...] = ("norm", "inner_product", "orthogonality", "augmented", "coordinate")

MomentReducer = Callable[[int, Tensor, Tensor], tuple[int, Tensor, Tensor]]


def pool_moments(
    counts: Sequence[int], means: Sequence[Tensor], m2s: Sequence[Tensor]
) -> tuple[int, Tensor, Tensor]:
    """Combine per-group ``(count, mean, M2)`` into those of the pooled samples, exactly.

    ``M2`` is the sum of squared deviations from the group mean. By the law of total variance the
    pooled ``M2`` is ``sum_r M2_r + sum_r n_r (mean_r - mean)^2`` with ``mean`` the count-weighted
    mean; groups with zero samples contribute nothing.

    Args:
        counts: samples per group (>= 0).
        means: per-group means (same shape each).
        m2s: per-group sums of squared deviations (same shape as the means).

    Returns:
        ``(n, mean, M2)`` of all samples together.

    Raises:
        ValueError: for empty or mismatched sequences, a negative count, or no samples at all.

    Example:
        >>> import torch
        >>> x = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64)
        >>> a, b = x[:1], x[1:]
        >>> n, m, m2 = pool_moments([1, 3], [a.mean(), b.mean()],
        ...                         [((a - a.mean()) ** 2).sum(), ((b - b.mean()) ** 2).sum()])
        >>> n, float(m), bool(torch.isclose(m2 / (n - 1), x.var()))
        (4, 3.5, True)
    """
    if not (len(counts) == len(means) == len(m2s)) or not counts:
        raise ValueError(
            f"counts, means and m2s must be non-empty and of equal lengths, got {len(counts)}, "
            f"{len(means)} and {len(m2s)}"
        )
    if any(int(c) < 0 for c in counts):
        raise ValueError(f"counts must be >= 0, got {list(counts)}")
    n = sum(int(c) for c in counts)
    if n == 0:
        raise ValueError("pool_moments needs at least one sample, got counts that sum to 0")
    live = [(int(c), m, s) for c, m, s in zip(counts, means, m2s, strict=True) if int(c) > 0]
    mean = sum(c * m for c, m, _ in live) / n
    m2 = sum(s + c * (m - mean) ** 2 for c, m, s in live)
    return n, torch.as_tensor(mean), torch.as_tensor(m2)


@dataclass(frozen=True)
class GradientStatistics:
    """Moments of the per-sample gradients that the tests need (after pooling across ranks).

    Attributes:
        count: number of per-sample gradients ``n``.
        mean: the batch gradient ``g_B`` (flattened, ``(d,)``).
        variance: per-coordinate sample variance ``Var_i(g_ij)`` (``(d,)``, divisor ``n - 1``).
        inner_product_variance: ``Var_i(<g_i, g_B>)``.
        orthogonality_variance: ``sum_j Var_i(g_i - <g_i, g_B> g_B / ||g_B||^2)_j``, computed as
            ``sum_j Var_i(g_ij) - Var_i(<g_i, g_B>) / ||g_B||^2`` (the orthogonal projection of
            the sample covariance; 0 when ``g_B = 0``).
    """

    count: int
    mean: Tensor
    variance: Tensor
    inner_product_variance: float
    orthogonality_variance: float

    @property
    def grad_norm_sq(self) -> float:
        """``||g_B||^2``."""
        return float(self.mean.square().sum())


def gradient_statistics(
    per_sample: Tensor, *, reducer: MomentReducer | None = None
) -> GradientStatistics:
    """The moments of a matrix of per-sample gradients used by every test.

    Args:
        per_sample: ``(n, d)`` per-sample gradients (one flattened gradient per row).
        reducer: maps this process's ``(count, mean, M2)`` to the pooled one (for data-parallel
            training, :func:`~subspaces.optim.all_reduce_moments`); ``None`` for one process.

    Returns:
        The statistics (computed in ``per_sample``'s dtype, float32 at least).

    Raises:
        ValueError: if ``per_sample`` is not 2-D, holds NaN/Inf, or fewer than 2 samples are
            pooled.
        TypeError: if it is not a floating tensor.

    Example:
        >>> import torch
        >>> G = torch.tensor([[1.0, 0.0], [3.0, 2.0]], dtype=torch.float64)
        >>> s = gradient_statistics(G)
        >>> s.mean.tolist(), s.variance.tolist(), s.grad_norm_sq
        ([2.0, 1.0], [2.0, 2.0], 5.0)
    """
    G = check_float_tensor(per_sample, "per_sample", ndim=2)
    if G.dtype in (torch.float16, torch.bfloat16):
        G = G.float()
    mean = G.mean(0)
    m2 = (G - mean).square_().sum(0)
    return statistics_from_moments(G.shape[0], mean, m2, lambda v: G @ v, reducer=reducer)


def statistics_from_moments(
    count: int,
    mean: Tensor,
    m2: Tensor,
    inner: Callable[[Tensor], Tensor],
    *,
    reducer: MomentReducer | None = None,
) -> GradientStatistics:
    """The test statistics from this process's per-sample gradient moments.

    Args:
        count: number of per-sample gradients here.
        mean: their mean ``(d,)``.
        m2: their per-coordinate sum of squared deviations ``(d,)``.
        inner: ``inner(v)`` returns ``<g_i, v>`` for every local sample (``(count,)``).
        reducer: pools ``(count, mean, M2)`` across processes (``None``: one process).

    Returns:
        The statistics, with ``g_B`` the pooled mean.

    Raises:
        ValueError: if fewer than 2 samples are pooled, or the moments hold NaN/Inf (a
            non-finite per-sample gradient).

    Example:
        >>> import torch
        >>> G = torch.tensor([[1.0, 0.0], [3.0, 2.0]], dtype=torch.float64)
        >>> s = statistics_from_moments(2, G.mean(0), G.var(0), lambda v: G @ v)
        >>> s.inner_product_variance  # <g_i, g_B> = 2, 8
        18.0
    """
    reduce: MomentReducer = reducer if reducer is not None else (lambda n, m, s: (n, m, s))
    n, mean, m2 = reduce(count, mean, m2)
    if n < 2:
        raise ValueError(f"the tests need at least 2 per-sample gradients, got {n}")
    # a NaN or Inf in any gradient makes the pooled mean or M2, hence this sum, non-finite
    if not math.isfinite(float(m2.sum(dtype=torch.float64) + mean.sum(dtype=torch.float64))):
        check_finite(m2, "per-sample gradient moments (M2)")
        check_finite(mean, "per-sample gradient moments (mean)")
        raise ValueError("per-sample gradient moments overflow float64")
    norm_sq = float(mean.square().sum())
    s = inner(mean)  # <g_i, g_B> with the pooled g_B
    _, _, ip_m2 = reduce(count, s.mean(0), (s - s.mean(0)).square().sum(0))
    variance = m2 / (n - 1)
    ip_var = float(ip_m2) / (n - 1)
    # o_i = P g_i with P = I - g_B g_B^T / ||g_B||^2, so sum_j Var(o_j) = tr(P S P)
    # = tr(S) - g_B^T S g_B / ||g_B||^2 for the sample covariance S (no n x d temporary)
    ortho_var = max(float(variance.sum()) - ip_var / norm_sq, 0.0) if norm_sq > 0.0 else 0.0
    return GradientStatistics(
        count=n,
        mean=mean,
        variance=variance,
        inner_product_variance=ip_var,
        orthogonality_variance=ortho_var,
    )


def _ratio(numerator: float, denominator: float) -> float:
    if numerator == 0.0:
        return 0.0
    return numerator / denominator if denominator > 0.0 else math.inf


def required_batch_size(
    stats: GradientStatistics,
    test: TestName = "norm",
    *,
    eta: float = 0.1,
    theta: float = 0.9,
    nu: float = 5.84,
) -> float:
    """The smallest batch size that passes ``test`` (a real number; the controller rounds up).

    Args:
        stats: from :func:`gradient_statistics`.
        test: ``"norm"``, ``"inner_product"``, ``"orthogonality"``, ``"augmented"`` (max of the
            inner-product and orthogonality tests) or ``"coordinate"``.
        eta: accuracy of the norm and coordinate-wise tests.
        theta: accuracy of the inner-product test.
        nu: accuracy of the orthogonality test.

    Returns:
        The required batch size (``inf`` if the batch gradient is zero but the samples disagree).

    Raises:
        ValueError: for an unknown test.

    Example:
        >>> import torch
        >>> G = torch.tensor([[1.0, 0.0], [3.0, 2.0]], dtype=torch.float64)
        >>> required_batch_size(gradient_statistics(G), "norm", eta=0.5)  # (2 + 2) / (0.25 * 5)
        3.2
    """
    norm_sq = stats.grad_norm_sq
    if test == "norm":
        return _ratio(float(stats.variance.sum()), eta**2 * norm_sq)
    if test == "inner_product":
        return _ratio(stats.inner_product_variance, theta**2 * norm_sq**2)
    if test == "orthogonality":
        return _ratio(stats.orthogonality_variance, nu**2 * norm_sq)
    if test == "augmented":
        return max(
            _ratio(stats.inner_product_variance, theta**2 * norm_sq**2),
            _ratio(stats.orthogonality_variance, nu**2 * norm_sq),
        )
    if test == "coordinate":
        var, sq = stats.variance, eta**2 * stats.mean.square()
        ratios = torch.where(var == 0, torch.zeros_like(var), var / sq)  # x / 0 = inf
        return float(ratios.max()) if ratios.numel() else 0.0
    raise ValueError(f"test must be one of {TESTS}, got {test!r}")
