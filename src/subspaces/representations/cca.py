r"""Canonical correlation measures: SVCCA and PWCCA."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_positive_float
from ._reps import _center, _check_pair, _unit_scale

__all__ = ["CCAResult", "pwcca", "svcca"]


@dataclass(frozen=True)
class CCAResult:
    """Result of :func:`svcca` or :func:`pwcca`.

    Attributes:
        mean: the summary similarity (mean, or PWCCA-weighted mean, canonical correlation).
        correlations: the canonical correlations, descending, in ``[0, 1]``.
        weights: the PWCCA weights of each correlation (summing to 1), or ``None`` for SVCCA.
        dims: the number of directions kept for ``X`` and ``Y``.

    Example:
        ``Y`` holds two mixtures of ``X``'s first two units and two unrelated units: two
        canonical correlations are 1.

        >>> import torch
        >>> from subspaces.representations import pwcca, svcca
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(200, 4, generator=g, dtype=torch.float64)
        >>> mix = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64)
        >>> Y = torch.cat([X[:, :2] @ mix, torch.randn(200, 2, generator=g).double()], 1)
        >>> res = svcca(X, Y, keep=1.0)
        >>> res.dims, [round(c, 6) for c in res.correlations[:2].tolist()], res.weights
        ((4, 4), [1.0, 1.0], None)
        >>> float(res) == res.mean == float(res.correlations.mean())
        True
        >>> w = pwcca(X, Y).weights
        >>> abs(float(w.sum()) - 1) < 1e-12
        True
    """

    mean: float
    correlations: Tensor
    weights: Tensor | None
    dims: tuple[int, int]

    def __float__(self) -> float:
        return self.mean


def _column_basis(Xc: Tensor, keep: float | None) -> Tensor:
    """Orthonormal basis of the top singular directions of ``Xc`` (``(N, r)``, in ``R^N``)."""
    U, s, _ = torch.linalg.svd(Xc, full_matrices=False)
    tol = max(Xc.shape) * torch.finfo(s.dtype).eps * float(s[0])
    rank = int((s > tol).sum())
    if rank == 0:
        raise ValueError("a representation is constant across rows; CCA is undefined")
    r = rank
    if keep is not None and keep < 1.0:
        energy = torch.cumsum(s[:rank] ** 2, 0) / (s[:rank] ** 2).sum()
        r = min(rank, int((energy < keep).sum()) + 1)
    return U[:, :r]


def svcca(X: Tensor, Y: Tensor, *, keep: float = 0.99) -> CCAResult:
    r"""Singular vector canonical correlation analysis.

    Raghu, Gilmer, Yosinski & Sohl-Dickstein, "SVCCA: Singular Vector Canonical Correlation
    Analysis for Deep Learning Dynamics and Interpretability" (NeurIPS 2017): center each side,
    keep the fewest top singular directions holding a fraction ``keep`` of its variance, then
    run CCA between the two reduced representations. The canonical correlations are the
    cosines of the principal angles between the two reduced column spaces in ``R^N``. When a
    kept dimension reaches ``N - 1`` every correlation is trivially 1: use ``N >> p, q``.

    Args:
        X: ``(N, p)`` representation.
        Y: ``(N, q)`` representation of the same ``N`` inputs.
        keep: fraction of variance to keep, in ``(0, 1]``; 1 keeps the numerical rank.

    Returns:
        A :class:`CCAResult` whose ``mean`` is the mean canonical correlation (``float()`` of it
        gives the same).

    Raises:
        TypeError: if ``X`` or ``Y`` is not a floating tensor.
        ValueError: if they are not 2-D, hold NaN/Inf, have different numbers of rows or fewer
            than 2, ``keep`` is outside ``(0, 1]``, or a side is constant.

    Example:
        >>> import torch
        >>> X = torch.randn(100, 5, generator=torch.Generator().manual_seed(0))
        >>> A = torch.randn(5, 5, generator=torch.Generator().manual_seed(1))
        >>> round(svcca(X, X @ A, keep=1.0).mean, 6)
        1.0
    """
    Xd, Yd = _check_pair(X, Y, min_rows=2)
    keep = check_positive_float(keep, "keep")
    if keep > 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    Xd, Yd = _unit_scale(Xd), _unit_scale(Yd)  # scale invariant: no over/underflow
    Ux, Uy = _column_basis(_center(Xd), keep), _column_basis(_center(Yd), keep)
    rho = torch.linalg.svdvals(Ux.T @ Uy).clamp(0.0, 1.0)
    return CCAResult(float(rho.mean()), rho, None, (Ux.shape[1], Uy.shape[1]))


def pwcca(X: Tensor, Y: Tensor) -> CCAResult:
    r"""Projection-weighted CCA.

    Morcos, Raghu & Bengio, "Insights on representational similarity in neural networks with
    canonical correlation" (NeurIPS 2018): the canonical correlations :math:`\rho_i` between the
    centered representations, averaged with weights :math:`\alpha_i \propto \sum_j |\langle h_i,
    x_j\rangle|`, how much of ``X``'s columns each (unit-norm) canonical variate :math:`h_i` of
    ``X`` accounts for. It is asymmetric: ``X`` provides the weights.

    Args:
        X: ``(N, p)`` representation (the one weighting the correlations).
        Y: ``(N, q)`` representation of the same ``N`` inputs.

    Returns:
        A :class:`CCAResult` whose ``mean`` is the weighted mean canonical correlation.

    Raises:
        TypeError: if ``X`` or ``Y`` is not a floating tensor.
        ValueError: if they are not 2-D, hold NaN/Inf, have different numbers of rows or fewer
            than 2, or a side is constant.

    Example:
        >>> import torch
        >>> X = torch.randn(100, 5, generator=torch.Generator().manual_seed(0))
        >>> A = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
        >>> round(pwcca(X, X @ A).mean, 6)
        1.0
    """
    Xd, Yd = _check_pair(X, Y, min_rows=2)
    Xd, Yd = _unit_scale(Xd), _unit_scale(Yd)  # scale invariant: no over/underflow
    Xc = _center(Xd)
    Ux, Uy = _column_basis(Xc, None), _column_basis(_center(Yd), None)
    A, rho, _ = torch.linalg.svd(Ux.T @ Uy, full_matrices=False)
    rho = rho.clamp(0.0, 1.0)
    H = Ux @ A  # orthonormal canonical variates of X, (N, min(rx, ry))
    alpha = (H.T @ Xc).abs().sum(dim=1)
    alpha = alpha / alpha.sum()
    return CCAResult(float(alpha @ rho), rho, alpha, (Ux.shape[1], Uy.shape[1]))
