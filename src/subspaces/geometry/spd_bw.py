r"""Bures-Wasserstein geometry of SPD matrices: distance, Log, Exp, transport and barycenter.

Bures-Wasserstein (BW) geometry (Bhatia, Jain & Lim 2019, "On the Bures-Wasserstein distance
between positive definite matrices"; Malagò, Montrucchio & Pistone 2018):

* ``d(A, B)^2 = tr A + tr B - 2 tr (A^{1/2} B A^{1/2})^{1/2}``;
* ``Log_S(X) = (S X)^{1/2} + (X S)^{1/2} - 2 S = T S + S T - 2 S`` with the optimal transport map
  ``T = S^{-1/2} (S^{1/2} X S^{1/2})^{1/2} S^{-1/2}``;
* ``Exp_S(V) = S + V + L_S[V] S L_S[V]``, where ``L_S[V]`` solves the Lyapunov equation
  ``S L + L S = V``;
* barycenter by the fixed point ``S <- S^{-1/2} (sum_i w_i (S^{1/2} X_i S^{1/2})^{1/2})^2 S^{-1/2}``
  (Álvarez-Esteban, del Barrio, Cuesta-Albertos & Matrán 2016).

Transport used for batch-norm recentering (:func:`bw_transport`): a tangent vector ``V`` at ``S``
is the velocity field ``x -> L x`` with ``L = L_S[V]`` (Otto's calculus); the transport keeps the
velocity field and re-expresses it at ``P``: ``V -> L P + P L``. It is *not* the Levi-Civita
parallel transport (which has no simple closed form), but it has the property batch
normalization needs: with ``M`` the BW barycenter of ``X_i``, the points
``Exp_I(transport(Log_M X_i))`` ``= T_i^2`` have BW barycenter exactly ``I`` (because
``sum_i w_i T_i = I`` characterizes the barycenter).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .spd_functions import _lyapunov, _pow, _sqrt
from .spd_mean import SPDMeanResult, _certified_mean
from .spd_validation import _check_spd, _check_symmetric, _common, sym

__all__ = ["bw_barycenter", "bw_distance", "bw_exp", "bw_log", "bw_transport"]


def _transport_map(S: Tensor, X: Tensor) -> Tensor:
    """OT map ``T = S^{-1/2} (S^{1/2} X S^{1/2})^{1/2} S^{-1/2}``: ``N(0, S) -> N(0, X)``."""
    Sh = _sqrt(S)
    Sih = _pow(S, -0.5)
    return sym(Sih @ _sqrt(Sh @ X @ Sh) @ Sih)


def bw_distance(A: Tensor, B: Tensor) -> Tensor:
    """Bures-Wasserstein distance ``sqrt(tr A + tr B - 2 tr (A^{1/2} B A^{1/2})^{1/2})``.

    Args:
        A: ``(..., n, n)`` SPD.
        B: ``(..., n, n)`` SPD (broadcast against ``A``).

    Returns:
        Distances of shape of the broadcast batch (the 2-Wasserstein distance between
        ``N(0, A)`` and ``N(0, B)``).

    Raises:
        ValueError: if an input is not SPD, not square or not finite.

    Example:
        >>> float(bw_distance(torch.eye(2), torch.eye(2)))
        0.0
    """
    A = _check_spd(A, "A")
    B = _check_spd(B, "B")
    dtype, (Aw, Bw) = _common(A, B)
    return _bw_distance(Aw, Bw).to(dtype)


def _bw_distance(A: Tensor, B: Tensor) -> Tensor:
    Ah = _sqrt(A)
    cross = torch.linalg.eigvalsh(sym(Ah @ B @ Ah)).clamp_min(0).sqrt().sum(-1)
    d2 = A.diagonal(0, -2, -1).sum(-1) + B.diagonal(0, -2, -1).sum(-1) - 2 * cross
    return d2.clamp_min(0).sqrt()


def bw_log(S: Tensor, X: Tensor) -> Tensor:
    """Bures-Wasserstein logarithm ``Log_S(X) = T S + S T - 2 S`` (``T``: OT map ``S -> X``).

    Args:
        S: ``(..., n, n)`` SPD base point.
        X: ``(..., n, n)`` SPD.

    Returns:
        The tangent vector (symmetric) at ``S``.

    Raises:
        ValueError: if an input is not SPD.

    Example:
        >>> S = torch.eye(2, dtype=torch.float64)
        >>> bw_log(S, 4 * S)  # T = 2 I, so 2 + 2 - 2 = 2
        tensor([[2., 0.],
                [0., 2.]], dtype=torch.float64)
    """
    S = _check_spd(S, "S")
    X = _check_spd(X, "X")
    dtype, (Sw, Xw) = _common(S, X)
    T = _transport_map(Sw, Xw)
    return sym(T @ Sw + Sw @ T - 2 * Sw).to(dtype)


def bw_exp(S: Tensor, V: Tensor) -> Tensor:
    """Bures-Wasserstein exponential ``Exp_S(V) = S + V + L S L`` with ``S L + L S = V``.

    Equivalently ``(I + L) S (I + L)``; it is SPD when ``I + L`` is nonsingular and inverts
    :func:`bw_log` when ``I + L`` is positive definite (inside the injectivity domain).

    Args:
        S: ``(..., n, n)`` SPD base point.
        V: ``(..., n, n)`` symmetric tangent vector (up to rounding, as in :func:`spd_power`).

    Returns:
        The point ``Exp_S(V)``.

    Raises:
        ValueError: if ``S`` is not SPD or ``V`` not square, finite and symmetric.

    Example:
        >>> S = torch.eye(2, dtype=torch.float64)
        >>> bw_exp(S, 2 * S)
        tensor([[4., 0.],
                [0., 4.]], dtype=torch.float64)
    """
    S = _check_spd(S, "S")
    V = _check_symmetric(V, "V")
    dtype, (Sw, Vw) = _common(S, V)
    L = _lyapunov(Sw, Vw)
    return sym(Sw + Vw + L @ Sw @ L).to(dtype)


def bw_transport(S: Tensor, P: Tensor, V: Tensor) -> Tensor:
    """Transport a BW tangent vector ``V`` at ``S`` to ``P`` by keeping its velocity field.

    ``V = L S + S L`` (``L = L_S[V]``) is the linear velocity field ``x -> L x``; the result is
    ``L P + P L``. This is the recentering transport of :class:`~subspaces.geometry.SPDBatchNorm`
    (not the Levi-Civita parallel transport); see the module docstring for why it recenters the
    BW barycenter exactly to the identity.

    Args:
        S: ``(..., n, n)`` SPD source point.
        P: ``(..., n, n)`` SPD target point.
        V: ``(..., n, n)`` symmetric tangent vector at ``S``.

    Returns:
        The tangent vector at ``P``.

    Raises:
        ValueError: if ``S`` or ``P`` is not SPD, or ``V`` is not symmetric.

    Example:
        >>> I = torch.eye(2, dtype=torch.float64)
        >>> bw_transport(2 * I, I, 4 * I)  # L = I, so L I + I L = 2 I
        tensor([[2., 0.],
                [0., 2.]], dtype=torch.float64)
    """
    S = _check_spd(S, "S")
    P = _check_spd(P, "P")
    V = _check_symmetric(V, "V")
    dtype, (Sw, Pw, Vw) = _common(S, P, V)
    L = _lyapunov(Sw, Vw)
    return sym(L @ Pw + Pw @ L).to(dtype)


def _bw_barycenter_info(
    X: Tensor, w: Tensor, max_iter: int, tol: float, certify: bool = True
) -> tuple[Tensor, int, float, bool]:
    """The BW fixed-point iteration.

    Each step computes ``R = sum_i w_i (S^{1/2} X_i S^{1/2})^{1/2}`` at the current ``S``; the
    mean transport map there is ``T = S^{-1/2} R S^{-1/2}`` and the update is ``T S T``. The
    residual ``||T - I||_F`` is thus known at every iterate before it is updated, so the
    returned ``S`` is the one whose residual is reported. With ``certify`` and no convergence
    within ``max_iter`` updates, the residual at the last iterate costs one more evaluation.

    Returns:
        ``(S, iterations, residual, whether the residual was evaluated at S)``.
    """
    eye = torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
    S = _pow(torch.einsum("k,...kij->...ij", w, _sqrt(X)), 2.0)  # exact if commuting
    residual, it = float("nan"), 0
    while True:
        if it == max_iter and not certify:
            return S, it, residual, False
        Sh, Sih = _sqrt(S), _pow(S, -0.5)
        R = torch.einsum("k,...kij->...ij", w, _sqrt(Sh.unsqueeze(-3) @ X @ Sh.unsqueeze(-3)))
        T = sym(Sih @ R @ Sih)
        residual = float((T - eye).detach().norm(dim=(-2, -1)).amax())
        if residual <= tol or it == max_iter:
            return S, it, residual, True
        S = sym(Sih @ _pow(R, 2.0) @ Sih)
        it += 1


def _bw_barycenter(X: Tensor, weights: Tensor | None, max_iter: int, tol: float) -> Tensor:
    """BW barycenter without validation or certificate (for the layers): ``max_iter`` updates.

    Returns:
        The barycenter.
    """
    k = X.shape[-3]
    w = (
        torch.full((k,), 1.0 / k, dtype=X.dtype, device=X.device)
        if weights is None
        else weights / weights.sum()
    )
    return _bw_barycenter_info(X, w, max_iter, tol, certify=False)[0]


def bw_barycenter(
    X: Tensor,
    weights: Tensor | None = None,
    *,
    max_iter: int = 50,
    tol: float | None = None,
    return_info: bool = False,
) -> Tensor | SPDMeanResult:
    """Bures-Wasserstein barycenter by the fixed-point iteration of Álvarez-Esteban et al. (2016).

    ``S <- S^{-1/2} (sum_i w_i (S^{1/2} X_i S^{1/2})^{1/2})^2 S^{-1/2}``, started at
    ``(sum_i w_i X_i^{1/2})^2`` (the exact barycenter when the ``X_i`` commute). At the
    barycenter the weighted mean of the optimal transport maps ``T_i`` from ``S`` to ``X_i`` is
    the identity (the Riemannian gradient ``-sum_i w_i Log_S(X_i)`` vanishes); the iteration
    stops when ``||sum_i w_i T_i - I||_F <= tol``, evaluated at the point it returns.

    Args:
        X: ``(..., k, n, n)``: ``k >= 1`` SPD matrices per batch entry. The iteration runs in
            float64 whatever their dtype (so the tolerance is attainable) and the mean is
            returned in their dtype; the residual is that of the float64 mean.
        weights: optional ``(k,)`` nonnegative weights (normalized to sum 1); uniform if ``None``.
        max_iter: iteration cap.
        tol: stop when ``||sum_i w_i T_i - I||_F <= tol`` (the largest over the batch); default
            ``1e-12`` for float64 input, ``1e-6`` otherwise.
        return_info: return an :class:`SPDMeanResult` (the mean with ``converged``,
            ``iterations`` and ``residual``) instead of the bare mean. Without it, a mean that
            did not converge within ``max_iter`` issues a ``RuntimeWarning``.

    Returns:
        ``(..., n, n)`` barycenter, or an :class:`SPDMeanResult` with ``return_info=True``.

    Raises:
        ValueError: if ``X`` is not a batch of SPD matrices, ``k = 0``, ``weights`` has the wrong
            shape or values, or an option is out of range.

    Example:
        >>> X = torch.stack([torch.eye(2), 9 * torch.eye(2)]).double()
        >>> bw_barycenter(X)  # ((1 + 3) / 2)^2 = 4
        tensor([[4., 0.],
                [0., 4.]], dtype=torch.float64)
        >>> res = bw_barycenter(X, return_info=True)
        >>> res.converged, res.iterations, res.residual <= res.tol
        (True, 0, True)
    """
    return _certified_mean(
        "bw_barycenter", _bw_barycenter_info, X, weights, max_iter, tol, return_info
    )


def _bw_geodesic(A: Tensor, B: Tensor, t: float | Tensor) -> Tensor:
    """BW geodesic ``((1 - t) I + t T) A ((1 - t) I + t T)``, ``T`` the OT map ``A -> B``."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    G = (1 - t) * eye + t * _transport_map(A, B)
    return sym(G @ A @ G)


class _PairKernel(torch.autograd.Function):
    """``U (K ∘ U^T V U) U^T`` with ``K_ij = ((s_i + s_j) / 2)^p`` in the eigenbasis of ``S``.

    The map the isometric BW transports between ``S`` and ``I`` are made of (see
    :class:`~subspaces.geometry.SPDBatchNorm`). The backward pass uses divided differences of
    the kernel (its derivative on (near-)equal eigenvalues), so it is finite when eigenvalues of
    ``S`` repeat (for instance ``S = I``), where differentiating ``eigh`` would divide by zero.
    """

    @staticmethod
    def forward(ctx: Any, S: Tensor, V: Tensor, p: float) -> Tensor:
        s, U = torch.linalg.eigh(sym(S))
        K = ((s.unsqueeze(-1) + s.unsqueeze(-2)) / 2) ** p
        Vh = U.mT @ sym(V) @ U
        ctx.save_for_backward(s, U, Vh, K)
        ctx.p = p
        return U @ (K * Vh) @ U.mT

    @staticmethod
    def backward(ctx: Any, G: Tensor) -> tuple[Tensor, Tensor, None]:
        s, U, Vh, K = ctx.saved_tensors
        p = ctx.p
        Gh = U.mT @ sym(G) @ U
        grad_V = U @ (K * Gh) @ U.mT
        # D[a, b, c] = (K[a, c] - K[b, c]) / (s_a - s_b), the derivative of K in its first
        # argument where s_a and s_b (nearly) coincide.
        sa, sb, sc = s[..., :, None, None], s[..., None, :, None], s[..., None, None, :]
        diff = sa - sb
        scale = s.abs().amax(-1)[..., None, None, None].clamp_min(torch.finfo(s.dtype).tiny)
        close = diff.abs() <= 1e3 * torch.finfo(s.dtype).eps * scale
        deriv = (p / 2) * (((sa + sb) / 2 + sc) / 2) ** (p - 1)
        Kac, Kbc = K[..., :, None, :], K[..., None, :, :]
        D = torch.where(close, deriv, (Kac - Kbc) / torch.where(close, torch.ones_like(diff), diff))
        # dF^_ij = sum_k S'_ik V^_kj D[k, i, j] + sum_k V^_ik S'_kj D[k, j, i]
        A = torch.einsum("...ij,...kj,...kij->...ik", Gh, Vh, D)
        B = torch.einsum("...ij,...ik,...kji->...kj", Gh, Vh, D)
        grad_S = U @ sym(A + B) @ U.mT
        return grad_S, grad_V, None


def _pair_kernel(S: Tensor, V: Tensor, p: float) -> Tensor:
    out = _PairKernel.apply(S, V, p)
    assert isinstance(out, Tensor)
    return out
