r"""Generalized Bures-Wasserstein geometry: power deformation ``theta`` and metric ``M``.

Generalized BW (GBW) with power deformation ``theta`` and metric parameter ``M`` (Han, Mishra,
Jawanpuria & Gao 2023, "Learning with symmetric positive definite matrices via generalized
Bures-Wasserstein geometry"; Wang, Jin, Chen, Luo & Wu, CVPR 2025, "Learning to normalize on the
SPD manifold under Bures-Wasserstein geometry", arXiv:2504.00660): the chart
``phi(S) = M^{-1/2} S^theta M^{-1/2}`` (:func:`gbw_deform`; inverse :func:`gbw_undeform`) is an
isometry onto BW up to the factor ``theta^2``, so ``d(A, B) = d_BW(phi(A), phi(B)) / |theta|``
(:func:`gbw_distance`; with ``theta = 1`` Han et al.'s ``tr(M^{-1} A) + tr(M^{-1} B) -
2 tr((A^{1/2} M^{-1} B M^{-1} A^{1/2})^{1/2})`` under the root), geodesics and barycenters are
``phi^{-1}`` of the BW ones in the chart (:func:`gbw_geodesic`, :func:`gbw_barycenter`), and
``theta = 1``, ``M = I`` gives BW.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .spd_bw import _bw_distance, _bw_geodesic, bw_barycenter
from .spd_functions import _checked_function, _pow, _sqrt, spd_power
from .spd_mean import SPDMeanResult, _warn_unconverged
from .spd_validation import _check_spd, _check_square, _common, sym

__all__ = ["gbw_barycenter", "gbw_deform", "gbw_distance", "gbw_geodesic", "gbw_undeform"]


def _check_theta(theta: Any) -> float:
    if isinstance(theta, bool) or not isinstance(theta, (int, float)):
        raise TypeError(f"theta must be a number, got {type(theta).__name__} ({theta!r})")
    value = float(theta)
    if value == 0.0 or not math.isfinite(value):
        raise ValueError(f"theta must be a finite nonzero number, got {value}")
    return value


def _check_metric_param(M: Any, n: int) -> Tensor | None:
    """``None`` or an SPD ``(..., n, n)`` metric parameter (``ValueError`` naming ``M``)."""
    if M is None:
        return None
    M = _check_spd(M, "M")
    if M.shape[-1] != n:
        raise ValueError(f"M must have shape (..., {n}, {n}) like the points, got {tuple(M.shape)}")
    return M


def _gbw_chart(X: Tensor, theta: float, M: Tensor | None) -> Tensor:
    """``phi(X) = M^{-1/2} X^theta M^{-1/2}`` without validation (``M = None`` means ``I``)."""
    Y = X if theta == 1.0 else _pow(X, theta)
    if M is None:
        return Y
    Mih = _pow(M, -0.5)
    return sym(Mih @ Y @ Mih)


def _gbw_unchart(Y: Tensor, theta: float, M: Tensor | None) -> Tensor:
    """``phi^{-1}(Y) = (M^{1/2} Y M^{1/2})^{1/theta}`` without validation."""
    if M is not None:
        Mh = _sqrt(M)
        Y = sym(Mh @ Y @ Mh)
    return Y if theta == 1.0 else _pow(Y, 1.0 / theta)


def gbw_deform(X: Tensor, theta: float, M: Tensor | None = None) -> Tensor:
    """The GBW chart ``phi(X) = M^{-1/2} X^theta M^{-1/2}`` (power deformation, then congruence).

    ``phi`` is an isometry from the ``(theta, M)``-GBW metric scaled by ``theta^2`` onto the BW
    metric: ``d_{theta,M}(A, B) = d_BW(phi(A), phi(B)) / |theta|``.

    Args:
        X: ``(..., n, n)`` SPD.
        theta: nonzero power.
        M: optional ``(..., n, n)`` SPD metric parameter (``None``: the identity).

    Returns:
        ``M^{-1/2} X^theta M^{-1/2}``.

    Raises:
        ValueError: if ``theta == 0``, ``M`` is not SPD of ``X``'s size, or ``X`` is rejected by
            :func:`spd_power`.

    Example:
        >>> gbw_deform(4 * torch.eye(1), 0.5)
        tensor([[2.]])
        >>> gbw_deform(4 * torch.eye(1), 0.5, M=2 * torch.eye(1))
        tensor([[1.]])
    """
    t = _check_theta(theta)
    Y = spd_power(X, t)
    Mc = _check_metric_param(M, Y.shape[-1])
    if Mc is None:
        return Y
    dtype, (Yw, Mw) = _common(Y, Mc)
    return _gbw_chart(Yw, 1.0, Mw).to(dtype)


def gbw_undeform(Y: Tensor, theta: float, M: Tensor | None = None) -> Tensor:
    """Inverse chart ``phi^{-1}(Y) = (M^{1/2} Y M^{1/2})^{1/theta}``.

    Args:
        Y: ``(..., n, n)`` SPD.
        theta: nonzero power.
        M: optional ``(..., n, n)`` SPD metric parameter (``None``: the identity).

    Returns:
        ``(M^{1/2} Y M^{1/2})^{1/theta}``.

    Raises:
        ValueError: if ``theta == 0``, ``M`` is not SPD of ``Y``'s size, or ``Y`` is rejected by
            :func:`spd_power`.

    Example:
        >>> gbw_undeform(2 * torch.eye(1), 0.5)
        tensor([[4.]])
    """
    t = _check_theta(theta)
    Mc = _check_metric_param(M, _check_square(Y, "Y").shape[-1])
    if Mc is not None:
        Y = _check_spd(Y, "Y")
        dtype, (Yw, Mw) = _common(Y, Mc)
        return _gbw_unchart(Yw, t, Mw).to(dtype)
    return _checked_function(Y, "pow", 1.0 / t, "Y")


def gbw_distance(A: Tensor, B: Tensor, theta: float = 1.0, M: Tensor | None = None) -> Tensor:
    """Generalized BW distance with power deformation: ``d_BW(phi(A), phi(B)) / |theta|``.

    With ``phi(X) = M^{-1/2} X^theta M^{-1/2}``; for ``theta = 1`` this is the GBW distance of
    Han et al. (2023), ``tr(M^{-1} A) + tr(M^{-1} B) - 2 tr((A^{1/2} M^{-1} B M^{-1}
    A^{1/2})^{1/2})`` under the square root, and ``M = I`` gives BW.

    Args:
        A: ``(..., n, n)`` SPD.
        B: ``(..., n, n)`` SPD.
        theta: nonzero power.
        M: optional ``(..., n, n)`` SPD metric parameter (``None``: the identity).

    Returns:
        The distances.

    Raises:
        ValueError: if an input (or ``M``) is not SPD or ``theta == 0``.

    Example:
        >>> float(gbw_distance(torch.eye(2), 4 * torch.eye(2), theta=0.5))  # 2 * d_BW(I, 2I)
        1.1715...
        >>> float(gbw_distance(torch.eye(1), 4 * torch.eye(1), M=4 * torch.eye(1)))  # (2-1)/2
        0.5
    """
    A = _check_spd(A, "A")
    B = _check_spd(B, "B")
    t = _check_theta(theta)
    Mc = _check_metric_param(M, A.shape[-1])
    dtype, work = _common(A, B) if Mc is None else _common(A, B, Mc)
    Mw = None if Mc is None else work[2]
    d = _bw_distance(_gbw_chart(work[0], t, Mw), _gbw_chart(work[1], t, Mw))
    return (d / abs(t)).to(dtype)


def gbw_geodesic(
    A: Tensor, B: Tensor, t: float, theta: float = 1.0, M: Tensor | None = None
) -> Tensor:
    """Point at time ``t`` of the GBW geodesic from ``A`` (``t = 0``) to ``B`` (``t = 1``).

    ``phi^{-1}(((1 - t) I + t T) phi(A) ((1 - t) I + t T))`` with ``T`` the optimal transport map
    from ``phi(A)`` to ``phi(B)`` (the BW geodesic in the chart, Bhatia et al. 2019, Thm 6).

    Args:
        A: ``(..., n, n)`` SPD start.
        B: ``(..., n, n)`` SPD end.
        t: time, in ``[0, 1]``.
        theta: nonzero power.
        M: optional ``(..., n, n)`` SPD metric parameter (``None``: the identity).

    Returns:
        ``(..., n, n)`` SPD.

    Raises:
        ValueError: if an input is not SPD, ``theta == 0`` or ``t`` is outside ``[0, 1]``.

    Example:
        >>> A, B = torch.eye(1, dtype=torch.float64), 9 * torch.eye(1, dtype=torch.float64)
        >>> float(gbw_geodesic(A, B, 0.5))  # ((1 + 3) / 2)^2
        4.0
    """
    A = _check_spd(A, "A")
    B = _check_spd(B, "B")
    th = _check_theta(theta)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 1.0:
        raise ValueError(f"t must be a number in [0, 1], got {t!r}")
    Mc = _check_metric_param(M, A.shape[-1])
    dtype, work = _common(A, B) if Mc is None else _common(A, B, Mc)
    Mw = None if Mc is None else work[2]
    G = _bw_geodesic(_gbw_chart(work[0], th, Mw), _gbw_chart(work[1], th, Mw), float(t))
    return _gbw_unchart(G, th, Mw).to(dtype)


def gbw_barycenter(
    X: Tensor,
    theta: float = 1.0,
    weights: Tensor | None = None,
    *,
    M: Tensor | None = None,
    max_iter: int = 50,
    tol: float | None = None,
    return_info: bool = False,
) -> Tensor | SPDMeanResult:
    """Generalized BW barycenter ``phi^{-1}(bary_BW(phi(X_i)))``.

    ``phi(X) = M^{-1/2} X^theta M^{-1/2}`` is the chart of :func:`gbw_deform`.

    The Fréchet mean of the ``(theta, M)``-GBW metric, since ``phi`` is an isometry onto BW (up
    to the constant ``theta^2``).

    Args:
        X: ``(..., k, n, n)`` SPD.
        theta: nonzero power.
        weights: optional ``(k,)`` weights.
        M: optional ``(n, n)`` SPD metric parameter (``None``: the identity).
        max_iter: iteration cap of :func:`bw_barycenter`.
        tol: tolerance of :func:`bw_barycenter` (on the BW barycenter of the ``phi(X_i)``).
        return_info: return an :class:`SPDMeanResult` whose certificate is that of the BW
            barycenter in the chart (a ``RuntimeWarning`` without it if that did not converge).

    Returns:
        ``(..., n, n)`` barycenter, or an :class:`SPDMeanResult` with ``return_info=True``.

    Raises:
        ValueError: for the inputs :func:`bw_barycenter` rejects, ``theta == 0`` or a non-SPD
            ``M``.

    Example:
        >>> X = torch.stack([torch.eye(1), 16 * torch.eye(1)]).double()
        >>> float(gbw_barycenter(X, theta=0.5))  # (((1 + 2) / 2)^2)^2
        5.0625
    """
    X = _check_spd(X, "X")
    t = _check_theta(theta)
    Mc = _check_metric_param(M, X.shape[-1])
    Md = None if Mc is None else Mc.double()
    if tol is None:  # the default of the input's dtype (the deformed matrices are float64)
        tol = 1e-12 if X.dtype == torch.float64 else 1e-6
    Z = _gbw_chart(X.double(), t, None if Md is None else Md.unsqueeze(-3))
    res = bw_barycenter(Z, weights, max_iter=max_iter, tol=tol, return_info=True)
    assert isinstance(res, SPDMeanResult)
    mean = res.mean if res.mean.numel() == 0 else _gbw_unchart(res.mean, t, Md)
    res = SPDMeanResult(mean.to(X.dtype), res.converged, res.iterations, res.residual, res.tol)
    if return_info:
        return res
    if not res.converged:
        _warn_unconverged("gbw_barycenter", res, max_iter)
    return res.mean
