r"""Riemannian means of SPD matrices: result type, input checks, convergence certificate."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor, check_positive_float, check_positive_int
from .spd_validation import _check_spd

__all__ = ["SPDMeanResult"]


@dataclass(frozen=True)
class SPDMeanResult:
    """A Riemannian mean of SPD matrices with its convergence certificate.

    Returned by :func:`bw_barycenter`, :func:`gbw_barycenter` and :func:`ai_karcher_mean` when
    called with ``return_info=True``.

    Attributes:
        mean: the ``(..., n, n)`` mean.
        converged: whether ``residual <= tol``; the residual is recomputed at the returned
            ``mean`` (not taken from the previous iterate), so the claim is about the result.
        iterations: updates performed (at most ``max_iter``).
        residual: the optimality residual at ``mean`` (evaluated in float64, before the mean is
            rounded to the input's dtype), the largest over the batch: the
            Riemannian gradient norm ``||sum_i w_i log(M^{-1/2} X_i M^{-1/2})||_F`` for the
            affine-invariant mean; ``||sum_i w_i T_i - I||_F`` (``T_i`` the optimal transport map
            from the mean to ``X_i``, whose weighted sum is ``I`` exactly at the barycenter) for
            the BW barycenter (of the deformed matrices, for GBW).
        tol: the tolerance it was compared with.

    Example:
        The affine-invariant mean of two matrices is their geometric mean ``M = A # B``, the
        SPD solution of ``M A^{-1} M = B``:

        >>> from subspaces.geometry.spd_ai import ai_karcher_mean
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> B = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> res = ai_karcher_mean(torch.stack([A, B]), return_info=True)
        >>> res.converged, res.residual <= res.tol, res.tol
        (True, True, 1e-12)
        >>> M = res.mean
        >>> bool(torch.allclose(M @ torch.linalg.solve(A, M), B, atol=1e-12))
        True
    """

    mean: Tensor
    converged: bool
    iterations: int
    residual: float
    tol: float


def _check_mean_inputs(
    X: Any, weights: Any, max_iter: Any, tol: Any
) -> tuple[Tensor, Tensor, int, float]:
    """Validate the inputs of a mean.

    Returns:
        ``(X, normalized float64 weights, max_iter, tol)``.

    Raises:
        ValueError: for a bad ``X``, ``weights``, ``max_iter`` or ``tol``.
    """
    X = _check_spd(X, "X")
    if X.ndim < 3:
        raise ValueError(f"X must have shape (..., k, n, n), got {tuple(X.shape)}")
    k = X.shape[-3]
    if k == 0:
        raise ValueError(f"X must hold k >= 1 matrices to average, got shape {tuple(X.shape)}")
    work = torch.float64  # the means iterate in float64 whatever the input dtype
    if weights is None:
        w = torch.full((k,), 1.0 / k, dtype=work, device=X.device)
    else:
        w = check_finite(check_float_tensor(weights, "weights", ndim=1), "weights").to(work)
        if w.shape[0] != k or bool((w < 0).any()) or not float(w.sum()) > 0:
            raise ValueError(
                f"weights must be {k} nonnegative numbers with a positive sum, got {w.tolist()}"
            )
        w = w / w.sum()
    check_positive_int(max_iter, "max_iter")
    tol_ = (1e-12 if X.dtype == torch.float64 else 1e-6) if tol is None else tol
    tol_ = check_positive_float(tol_, "tol", allow_zero=True)
    return X, w, max_iter, tol_


def _warn_unconverged(fn: str, res: SPDMeanResult, max_iter: int) -> None:
    warnings.warn(
        f"{fn} did not converge: residual {res.residual:.3g} > tol {res.tol:.1g} after "
        f"max_iter={max_iter} iterations; raise max_iter, or pass return_info=True to get the "
        "convergence certificate instead of this warning",
        RuntimeWarning,
        stacklevel=3,
    )


def _certified_mean(
    name: str,
    iterate: Callable[..., tuple[Tensor, int, float, bool]],
    X: Tensor,
    weights: Tensor | None,
    max_iter: int,
    tol: float | None,
    return_info: bool,
) -> Tensor | SPDMeanResult:
    """Validate, run ``iterate`` in float64, certify on its residual at the returned point.

    Returns:
        The mean (warning if not converged), or the :class:`SPDMeanResult` with ``return_info``.
    """
    X, w, max_iter, tol_ = _check_mean_inputs(X, weights, max_iter, tol)
    if X.numel() == 0:  # an empty batch: nothing to average
        res = SPDMeanResult(X.new_zeros(X.shape[:-3] + X.shape[-2:]), True, 0, 0.0, tol_)
    else:
        M, it, residual, _ = iterate(X.double(), w, max_iter, tol_)
        res = SPDMeanResult(M.to(X.dtype), residual <= tol_, it, residual, tol_)
    if return_info:
        return res
    if not res.converged:
        _warn_unconverged(name, res, max_iter)
    return res.mean
