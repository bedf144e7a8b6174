r"""Affine-invariant geometry of SPD matrices: distance, Log, Exp, transport, Karcher mean.

Affine-invariant (AI) metric (Pennec, Fillard & Ayache 2006; Bhatia 2007):
``d(A, B) = ||log(A^{-1/2} B A^{-1/2})||_F``,
``Log_S(X) = S^{1/2} log(S^{-1/2} X S^{-1/2}) S^{1/2}``,
``Exp_S(V) = S^{1/2} exp(S^{-1/2} V S^{-1/2}) S^{1/2}``, parallel transport from ``S`` to ``P``
``V -> E V E^T`` with ``E = (P S^{-1})^{1/2}``, and the Karcher mean by Riemannian gradient descent.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .spd_functions import _exp, _log, _pow, _sqrt
from .spd_mean import SPDMeanResult, _certified_mean
from .spd_validation import _check_spd, _check_symmetric, _common, sym

__all__ = ["ai_distance", "ai_exp", "ai_karcher_mean", "ai_log", "ai_transport"]


def ai_distance(A: Tensor, B: Tensor) -> Tensor:
    """Affine-invariant distance ``||log(A^{-1/2} B A^{-1/2})||_F``.

    Args:
        A: ``(..., n, n)`` SPD.
        B: ``(..., n, n)`` SPD.

    Returns:
        The distances.

    Raises:
        ValueError: if an input is not SPD.

    Example:
        >>> round(float(ai_distance(torch.eye(1), torch.exp(torch.ones(1, 1)))), 6)
        1.0
    """
    A = _check_spd(A, "A")
    B = _check_spd(B, "B")
    dtype, (Aw, Bw) = _common(A, B)
    Aih = _pow(Aw, -0.5)
    lam = torch.linalg.eigvalsh(sym(Aih @ Bw @ Aih)).clamp_min(torch.finfo(Aw.dtype).tiny)
    return lam.log().pow(2).sum(-1).sqrt().to(dtype)


def ai_log(S: Tensor, X: Tensor) -> Tensor:
    """Affine-invariant logarithm ``S^{1/2} log(S^{-1/2} X S^{-1/2}) S^{1/2}``.

    Args:
        S: ``(..., n, n)`` SPD base point.
        X: ``(..., n, n)`` SPD.

    Returns:
        The tangent vector at ``S``.

    Raises:
        ValueError: if an input is not SPD.

    Example:
        >>> ai_log(torch.eye(1), torch.exp(torch.ones(1, 1)))
        tensor([[1.]])
    """
    S = _check_spd(S, "S")
    X = _check_spd(X, "X")
    dtype, (Sw, Xw) = _common(S, X)
    Sh, Sih = _sqrt(Sw), _pow(Sw, -0.5)
    return sym(Sh @ _log(Sih @ Xw @ Sih) @ Sh).to(dtype)


def ai_exp(S: Tensor, V: Tensor) -> Tensor:
    """Affine-invariant exponential ``S^{1/2} exp(S^{-1/2} V S^{-1/2}) S^{1/2}``.

    Args:
        S: ``(..., n, n)`` SPD base point.
        V: ``(..., n, n)`` symmetric tangent vector (up to rounding, as in :func:`spd_power`).

    Returns:
        ``Exp_S(V)`` (SPD).

    Raises:
        ValueError: if ``S`` is not SPD or ``V`` not square, finite and symmetric.

    Example:
        >>> ai_exp(torch.eye(1), torch.zeros(1, 1))
        tensor([[1.]])
    """
    S = _check_spd(S, "S")
    V = _check_symmetric(V, "V")
    dtype, (Sw, Vw) = _common(S, V)
    Sh, Sih = _sqrt(Sw), _pow(Sw, -0.5)
    return sym(Sh @ _exp(Sih @ Vw @ Sih) @ Sh).to(dtype)


def ai_transport(S: Tensor, P: Tensor, V: Tensor) -> Tensor:
    """Affine-invariant parallel transport along the geodesic ``S -> P``: ``E V E^T``.

    ``E = (P S^{-1})^{1/2} = S^{1/2} (S^{-1/2} P S^{-1/2})^{1/2} S^{-1/2}`` (Sra & Hosseini 2015).

    Args:
        S: ``(..., n, n)`` SPD source.
        P: ``(..., n, n)`` SPD target.
        V: ``(..., n, n)`` symmetric tangent vector at ``S``.

    Returns:
        The transported vector at ``P``.

    Raises:
        ValueError: if ``S`` or ``P`` is not SPD, or ``V`` is not symmetric.

    Example:
        >>> I = torch.eye(2)
        >>> ai_transport(I, 4 * I, I)  # E = 2 I
        tensor([[4., 0.],
                [0., 4.]])
    """
    S = _check_spd(S, "S")
    P = _check_spd(P, "P")
    V = _check_symmetric(V, "V")
    dtype, (Sw, Pw, Vw) = _common(S, P, V)
    Sh, Sih = _sqrt(Sw), _pow(Sw, -0.5)
    E = Sh @ _sqrt(Sih @ Pw @ Sih) @ Sih
    return sym(E @ Vw @ E.mT).to(dtype)


def ai_karcher_mean(
    X: Tensor,
    weights: Tensor | None = None,
    *,
    max_iter: int = 50,
    tol: float | None = None,
    return_info: bool = False,
) -> Tensor | SPDMeanResult:
    """Affine-invariant Karcher (Fréchet) mean by Riemannian gradient descent.

    ``M <- M^{1/2} exp(t sum_i w_i log(M^{-1/2} X_i M^{-1/2})) M^{1/2}``, started at the
    log-Euclidean mean (Pennec et al. 2006; Moakher 2005), with step ``t = 1`` halved whenever
    the gradient norm grows. The Riemannian gradient norm
    ``||sum_i w_i log(M^{-1/2} X_i M^{-1/2})||_F`` is evaluated at the point returned.

    Args:
        X: ``(..., k, n, n)``: ``k >= 1`` SPD matrices per batch entry. The iteration runs in
            float64 whatever their dtype (so the tolerance is attainable) and the mean is
            returned in their dtype; the residual is that of the float64 mean.
        weights: optional ``(k,)`` nonnegative weights.
        max_iter: iteration cap.
        tol: stop when the Riemannian gradient norm is ``<= tol`` (the largest over the batch;
            default ``1e-12`` for float64 input, ``1e-6`` otherwise).
        return_info: return an :class:`SPDMeanResult` (the mean with ``converged``,
            ``iterations`` and ``residual``, the gradient norm) instead of the bare mean.
            Without it, a mean that did not converge within ``max_iter`` issues a
            ``RuntimeWarning``.

    Returns:
        ``(..., n, n)`` mean, or an :class:`SPDMeanResult` with ``return_info=True``.

    Raises:
        ValueError: for non-SPD input, ``k = 0``, bad weights or an option out of range.

    Example:
        >>> X = torch.stack([torch.eye(1), 4 * torch.eye(1)]).double()
        >>> float(ai_karcher_mean(X))  # geometric mean
        2.0
        >>> ai_karcher_mean(X, return_info=True).converged
        True
    """
    return _certified_mean("ai_karcher_mean", _ai_mean_info, X, weights, max_iter, tol, return_info)


def _ai_mean_info(
    X: Tensor, w: Tensor, max_iter: int, tol: float, certify: bool = True
) -> tuple[Tensor, int, float, bool]:
    """Riemannian gradient descent; the gradient is evaluated at each iterate before updating.

    Returns:
        ``(M, iterations, gradient norm, whether the gradient norm was evaluated at M)``.
    """
    M = _exp(torch.einsum("k,...kij->...ij", w, _log(X)))
    step, prev, gnorm, it = 1.0, float("inf"), float("nan"), 0
    while True:
        if it == max_iter and not certify:
            return M, it, gnorm, False
        Mh, Mih = _sqrt(M), _pow(M, -0.5)
        G = torch.einsum("k,...kij->...ij", w, _log(Mih.unsqueeze(-3) @ X @ Mih.unsqueeze(-3)))
        gnorm = float(G.detach().norm(dim=(-2, -1)).amax())
        if gnorm <= tol or it == max_iter:
            return M, it, gnorm, True
        if gnorm > prev:  # unit steps can oscillate for widely spread data: damp them
            step *= 0.5
        prev = gnorm
        M = sym(Mh @ _exp(step * G) @ Mh)
        it += 1


def _ai_mean(X: Tensor, w: Tensor, max_iter: int, tol: float) -> Tensor:
    """AI mean without validation or certificate (for the layers): at most ``max_iter`` updates.

    Returns:
        The mean.
    """
    return _ai_mean_info(X, w, max_iter, tol, certify=False)[0]
