r"""SPD matrices: Bures-Wasserstein, generalized Bures-Wasserstein and affine-invariant metrics.

All functions take tensors of shape ``(..., n, n)`` (batched over leading dimensions) and compute
matrix functions through a symmetric eigendecomposition, with a backward pass by the
Daleckii-Krein formula (divided differences, with ``f'`` on (near-)equal eigenvalues), so that
gradients stay finite when eigenvalues repeat (after :class:`~subspaces.geometry.ReEig`, say).
Use float64 for the accuracies the tests certify.

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

Generalized BW (GBW) with power deformation ``theta`` (Wang, Jin, Chen, Luo & Wu, CVPR 2025,
"Learning to normalize on the SPD manifold under Bures-Wasserstein geometry", arXiv:2504.00660):
the deformation ``phi_theta(S) = S^theta`` and its inverse ``S -> S^{1/theta}``; the metric is
the pull-back ``d_theta(A, B) = d_BW(A^theta, B^theta) / |theta|``, its barycenter
``(bary_BW(X_i^theta))^{1/theta}``, and ``theta = 1`` gives BW. (The paper's second parameter, a
congruence by an SPD matrix ``M``, is not implemented.)

Affine-invariant (AI) metric (Pennec, Fillard & Ayache 2006; Bhatia 2007):
``d(A, B) = ||log(A^{-1/2} B A^{-1/2})||_F``,
``Log_S(X) = S^{1/2} log(S^{-1/2} X S^{-1/2}) S^{1/2}``,
``Exp_S(V) = S^{1/2} exp(S^{-1/2} V S^{-1/2}) S^{1/2}``, parallel transport from ``S`` to ``P``
``V -> E V E^T`` with ``E = (P S^{-1})^{1/2}``, and the Karcher mean by Riemannian gradient descent.

Example:
    >>> import torch
    >>> A = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))
    >>> B = torch.eye(2, dtype=torch.float64)
    >>> round(float(bw_distance(A, B)), 6)  # sqrt((1-1)^2 + (2-1)^2)
    1.0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor, check_positive_float, check_positive_int

__all__ = [
    "ai_distance",
    "ai_exp",
    "ai_karcher_mean",
    "ai_log",
    "ai_transport",
    "bw_barycenter",
    "bw_distance",
    "bw_exp",
    "bw_log",
    "bw_transport",
    "gbw_barycenter",
    "gbw_deform",
    "gbw_distance",
    "gbw_undeform",
    "is_spd",
    "lyapunov",
    "spd_exp",
    "spd_log",
    "spd_power",
    "spd_sqrt",
    "sym",
]

# --------------------------------------------------------------------------- spectral functions

_Fn = Callable[[Tensor, float], Tensor]


def _f_pow(w: Tensor, p: float) -> Tensor:
    return w.clamp_min(torch.finfo(w.dtype).tiny) ** p


def _df_pow(w: Tensor, p: float) -> Tensor:
    return p * w.clamp_min(torch.finfo(w.dtype).tiny) ** (p - 1)


def _f_log(w: Tensor, p: float) -> Tensor:
    return torch.log(w.clamp_min(torch.finfo(w.dtype).tiny))


def _df_log(w: Tensor, p: float) -> Tensor:
    return 1.0 / w.clamp_min(torch.finfo(w.dtype).tiny)


def _f_exp(w: Tensor, p: float) -> Tensor:
    return torch.exp(w)


def _f_clamp(w: Tensor, p: float) -> Tensor:
    return w.clamp_min(p)


def _df_clamp(w: Tensor, p: float) -> Tensor:
    return (w > p).to(w.dtype)


_FUNCTIONS: dict[str, tuple[_Fn, _Fn]] = {
    "pow": (_f_pow, _df_pow),
    "log": (_f_log, _df_log),
    "exp": (_f_exp, _f_exp),
    "clamp": (_f_clamp, _df_clamp),
}


class _Spectral(torch.autograd.Function):
    """``U f(Λ) U^T`` with the Daleckii-Krein backward (finite for repeated eigenvalues)."""

    @staticmethod
    def forward(ctx: Any, X: Tensor, name: str, p: float) -> Tensor:
        f, _ = _FUNCTIONS[name]
        w, U = torch.linalg.eigh(X)
        fw = f(w, p)
        ctx.save_for_backward(w, U, fw)
        ctx.name, ctx.p = name, p
        return (U * fw.unsqueeze(-2)) @ U.mT

    @staticmethod
    def backward(ctx: Any, G: Tensor) -> tuple[Tensor, None, None]:
        w, U, fw = ctx.saved_tensors
        _, df = _FUNCTIONS[ctx.name]
        diff = w.unsqueeze(-1) - w.unsqueeze(-2)
        fdiff = fw.unsqueeze(-1) - fw.unsqueeze(-2)
        scale = w.abs().amax(-1, keepdim=True).unsqueeze(-1).clamp_min(1e-300)
        close = diff.abs() <= 1e3 * torch.finfo(w.dtype).eps * scale
        mid = df((w.unsqueeze(-1) + w.unsqueeze(-2)) / 2, ctx.p)
        K = torch.where(close, mid, fdiff / torch.where(close, torch.ones_like(diff), diff))
        Gs = U.mT @ sym(G) @ U
        return U @ (K * Gs) @ U.mT, None, None


def _spectral(X: Tensor, name: str, p: float = 0.0) -> Tensor:
    out = _Spectral.apply(X, name, p)
    assert isinstance(out, Tensor)
    return out


def _check_square(X: Any, name: str) -> Tensor:
    X = check_float_tensor(X, name)
    if X.ndim < 2 or X.shape[-1] != X.shape[-2]:
        raise ValueError(
            f"{name} must have shape (..., n, n) (square matrices), got {tuple(X.shape)}"
        )
    return check_finite(X, name)


def _check_spd(X: Any, name: str) -> Tensor:
    X = _check_square(X, name)
    if not bool(is_spd(X).all()):
        smallest = float(torch.linalg.eigvalsh(sym(X)).min())
        raise ValueError(
            f"{name} must be symmetric positive definite; got a matrix that is not symmetric or "
            f"has an eigenvalue <= 0 (smallest eigenvalue {smallest:.3g})"
        )
    return X


def sym(X: Tensor) -> Tensor:
    """Symmetric part ``(X + X^T) / 2`` of a batch of square matrices.

    Args:
        X: ``(..., n, n)``.

    Returns:
        The symmetric part.

    Raises:
        ValueError: if ``X`` is not a batch of square matrices.

    Example:
        >>> sym(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
        tensor([[1., 1.],
                [1., 1.]])
    """
    if X.ndim < 2 or X.shape[-1] != X.shape[-2]:
        raise ValueError(f"X must have shape (..., n, n), got {tuple(X.shape)}")
    return (X + X.mT) / 2


def is_spd(X: Tensor, rtol: float | None = None) -> Tensor:
    """Whether each matrix of a batch is symmetric positive definite.

    Args:
        X: ``(..., n, n)`` real floating tensor.
        rtol: relative tolerance for the symmetry check (default ``1e3`` machine epsilons).

    Returns:
        Boolean tensor of shape ``X.shape[:-2]``: symmetric (relative to the largest entry) with
        smallest eigenvalue ``> 0``; ``False`` for matrices with NaN or Inf.

    Raises:
        ValueError: if ``X`` is not a batch of square matrices.
        TypeError: if ``X`` is not a floating tensor.

    Example:
        >>> is_spd(torch.eye(3)).item(), is_spd(-torch.eye(3)).item()
        (True, False)
    """
    X = check_float_tensor(X, "X")
    if X.ndim < 2 or X.shape[-1] != X.shape[-2]:
        raise ValueError(f"X must have shape (..., n, n), got {tuple(X.shape)}")
    tol = 1e3 * torch.finfo(X.dtype).eps if rtol is None else rtol
    finite = torch.isfinite(X).all(-1).all(-1)
    Xf = torch.where(
        finite[..., None, None], X, torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
    )
    scale = Xf.abs().amax((-2, -1)).clamp_min(torch.finfo(X.dtype).tiny)
    symmetric = (Xf - Xf.mT).abs().amax((-2, -1)) <= tol * scale
    positive = torch.linalg.eigvalsh(sym(Xf))[..., 0] > 0
    return finite & symmetric & positive


def spd_power(X: Tensor, p: float) -> Tensor:
    """Matrix power ``X^p`` of SPD matrices (eigenvalues raised to ``p``).

    Args:
        X: ``(..., n, n)`` SPD.
        p: the exponent.

    Returns:
        ``X^p``.

    Example:
        >>> spd_power(torch.diag(torch.tensor([4.0, 9.0])), 0.5)
        tensor([[2., 0.],
                [0., 3.]])
    """
    return _spectral(sym(X), "pow", float(p))


def spd_sqrt(X: Tensor) -> Tensor:
    """Principal square root ``X^{1/2}`` of SPD matrices.

    Args:
        X: ``(..., n, n)`` SPD.

    Returns:
        ``X^{1/2}``.

    Example:
        >>> spd_sqrt(4 * torch.eye(2))
        tensor([[2., 0.],
                [0., 2.]])
    """
    return spd_power(X, 0.5)


def spd_log(X: Tensor) -> Tensor:
    """Principal matrix logarithm of SPD matrices.

    Args:
        X: ``(..., n, n)`` SPD.

    Returns:
        ``log X`` (symmetric).

    Example:
        >>> spd_log(torch.eye(2))
        tensor([[0., 0.],
                [0., 0.]])
    """
    return _spectral(sym(X), "log")


def spd_exp(X: Tensor) -> Tensor:
    """Matrix exponential of symmetric matrices.

    Args:
        X: ``(..., n, n)`` symmetric.

    Returns:
        ``exp X`` (SPD).

    Example:
        >>> spd_exp(torch.zeros(2, 2))
        tensor([[1., 0.],
                [0., 1.]])
    """
    return _spectral(sym(X), "exp")


def _clamp_eig(X: Tensor, eps: float) -> Tensor:
    return _spectral(sym(X), "clamp", float(eps))


def lyapunov(S: Tensor, V: Tensor) -> Tensor:
    """Solve the Lyapunov equation ``S L + L S = V`` for SPD ``S`` and symmetric ``V``.

    Args:
        S: ``(..., n, n)`` SPD.
        V: ``(..., n, n)`` symmetric.

    Returns:
        ``L`` (symmetric), computed in the eigenbasis of ``S``: ``L_ij = V_ij / (s_i + s_j)``.

    Example:
        >>> S = torch.diag(torch.tensor([1.0, 3.0]))
        >>> lyapunov(S, torch.ones(2, 2))
        tensor([[0.5000, 0.2500],
                [0.2500, 0.1667]])
    """
    w, U = torch.linalg.eigh(sym(S))
    Vt = U.mT @ sym(V) @ U
    return U @ (Vt / (w.unsqueeze(-1) + w.unsqueeze(-2))) @ U.mT


# --------------------------------------------------------------------------- Bures-Wasserstein


def _transport_map(S: Tensor, X: Tensor) -> Tensor:
    """OT map ``T = S^{-1/2} (S^{1/2} X S^{1/2})^{1/2} S^{-1/2}``: ``N(0, S) -> N(0, X)``."""
    Sh = spd_sqrt(S)
    Sih = spd_power(S, -0.5)
    return sym(Sih @ spd_sqrt(Sh @ X @ Sh) @ Sih)


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
    return _bw_distance(A, B)


def _bw_distance(A: Tensor, B: Tensor) -> Tensor:
    Ah = spd_sqrt(A)
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
    T = _transport_map(S, X)
    return sym(T @ S + S @ T - 2 * S)


def bw_exp(S: Tensor, V: Tensor) -> Tensor:
    """Bures-Wasserstein exponential ``Exp_S(V) = S + V + L S L`` with ``S L + L S = V``.

    Equivalently ``(I + L) S (I + L)``; it is SPD when ``I + L`` is nonsingular and inverts
    :func:`bw_log` when ``I + L`` is positive definite (inside the injectivity domain).

    Args:
        S: ``(..., n, n)`` SPD base point.
        V: ``(..., n, n)`` symmetric tangent vector.

    Returns:
        The point ``Exp_S(V)``.

    Raises:
        ValueError: if ``S`` is not SPD or ``V`` not square and finite.

    Example:
        >>> S = torch.eye(2, dtype=torch.float64)
        >>> bw_exp(S, 2 * S)
        tensor([[4., 0.],
                [0., 4.]], dtype=torch.float64)
    """
    S = _check_spd(S, "S")
    V = _check_square(V, "V")
    L = lyapunov(S, V)
    return sym(S + V + L @ S @ L)


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
        ValueError: if ``S`` or ``P`` is not SPD.

    Example:
        >>> I = torch.eye(2, dtype=torch.float64)
        >>> bw_transport(2 * I, I, 4 * I)  # L = I, so L I + I L = 2 I
        tensor([[2., 0.],
                [0., 2.]], dtype=torch.float64)
    """
    S = _check_spd(S, "S")
    P = _check_spd(P, "P")
    V = _check_square(V, "V")
    L = lyapunov(S, V)
    return sym(L @ P + P @ L)


def _bw_barycenter(X: Tensor, weights: Tensor | None, max_iter: int, tol: float) -> Tensor:
    n_pts = X.shape[-3]
    w = (
        torch.full((n_pts,), 1.0 / n_pts, dtype=X.dtype, device=X.device)
        if weights is None
        else weights / weights.sum()
    )
    S = spd_power(torch.einsum("k,...kij->...ij", w, spd_sqrt(X)), 2.0)  # exact if commuting
    for _ in range(max_iter):
        Sh = spd_sqrt(S)
        Sih = spd_power(S, -0.5)
        R = torch.einsum("k,...kij->...ij", w, spd_sqrt(Sh.unsqueeze(-3) @ X @ Sh.unsqueeze(-3)))
        S_new = sym(Sih @ spd_power(R, 2.0) @ Sih)
        change = (S_new - S).norm(dim=(-2, -1)).amax() / S.norm(dim=(-2, -1)).amax()
        S = S_new
        if float(change.detach()) <= tol:
            break
    return S


def bw_barycenter(
    X: Tensor,
    weights: Tensor | None = None,
    *,
    max_iter: int = 50,
    tol: float | None = None,
) -> Tensor:
    """Bures-Wasserstein barycenter by the fixed-point iteration of Álvarez-Esteban et al. (2016).

    ``S <- S^{-1/2} (sum_i w_i (S^{1/2} X_i S^{1/2})^{1/2})^2 S^{-1/2}``, started at
    ``(sum_i w_i X_i^{1/2})^2`` (the exact barycenter when the ``X_i`` commute).

    Args:
        X: ``(..., k, n, n)``: ``k`` SPD matrices per batch entry.
        weights: optional ``(k,)`` nonnegative weights (normalized to sum 1); uniform if ``None``.
        max_iter: iteration cap.
        tol: stop when the relative Frobenius change is ``<= tol`` (default ``1e-12`` in float64,
            ``1e-6`` otherwise).

    Returns:
        ``(..., n, n)`` barycenter.

    Raises:
        ValueError: if ``X`` is not a batch of SPD matrices or ``weights`` has the wrong shape.

    Example:
        >>> X = torch.stack([torch.eye(2), 9 * torch.eye(2)]).double()
        >>> bw_barycenter(X)  # ((1 + 3) / 2)^2 = 4
        tensor([[4., 0.],
                [0., 4.]], dtype=torch.float64)
    """
    X = _check_spd(X, "X")
    if X.ndim < 3:
        raise ValueError(f"X must have shape (..., k, n, n), got {tuple(X.shape)}")
    if weights is not None:
        weights = check_float_tensor(weights, "weights", ndim=1).to(X.dtype)
        if (
            weights.shape[0] != X.shape[-3]
            or bool((weights < 0).any())
            or float(weights.sum()) <= 0
        ):
            raise ValueError(
                f"weights must be {X.shape[-3]} nonnegative numbers with a positive sum, "
                f"got {weights.tolist()}"
            )
    check_positive_int(max_iter, "max_iter")
    tol_ = (1e-12 if X.dtype == torch.float64 else 1e-6) if tol is None else tol
    check_positive_float(tol_, "tol", allow_zero=True)
    return _bw_barycenter(X, weights, max_iter, tol_)


# --------------------------------------------------------------------------- generalized BW


def gbw_deform(X: Tensor, theta: float) -> Tensor:
    """Power deformation ``phi_theta(X) = X^theta`` of the generalized BW metric.

    Args:
        X: ``(..., n, n)`` SPD.
        theta: nonzero power.

    Returns:
        ``X^theta``.

    Raises:
        ValueError: if ``theta == 0``.

    Example:
        >>> gbw_deform(4 * torch.eye(1), 0.5)
        tensor([[2.]])
    """
    if float(theta) == 0.0:
        raise ValueError("theta must be nonzero")
    return spd_power(X, float(theta))


def gbw_undeform(Y: Tensor, theta: float) -> Tensor:
    """Inverse deformation ``phi_theta^{-1}(Y) = Y^{1/theta}``.

    Args:
        Y: ``(..., n, n)`` SPD.
        theta: nonzero power.

    Returns:
        ``Y^{1/theta}``.

    Raises:
        ValueError: if ``theta == 0``.

    Example:
        >>> gbw_undeform(2 * torch.eye(1), 0.5)
        tensor([[4.]])
    """
    if float(theta) == 0.0:
        raise ValueError("theta must be nonzero")
    return spd_power(Y, 1.0 / float(theta))


def gbw_distance(A: Tensor, B: Tensor, theta: float = 1.0) -> Tensor:
    """Power-deformed BW distance ``d_BW(A^theta, B^theta) / |theta|`` (equals BW at ``theta=1``).

    Args:
        A: ``(..., n, n)`` SPD.
        B: ``(..., n, n)`` SPD.
        theta: nonzero power.

    Returns:
        The distances.

    Raises:
        ValueError: if an input is not SPD or ``theta == 0``.

    Example:
        >>> float(gbw_distance(torch.eye(2), 4 * torch.eye(2), theta=0.5))  # 2 * d_BW(I, 2I)
        1.1715...
    """
    A = _check_spd(A, "A")
    B = _check_spd(B, "B")
    return _bw_distance(gbw_deform(A, theta), gbw_deform(B, theta)) / abs(float(theta))


def gbw_barycenter(
    X: Tensor,
    theta: float = 1.0,
    weights: Tensor | None = None,
    *,
    max_iter: int = 50,
    tol: float | None = None,
) -> Tensor:
    """Generalized BW barycenter ``(bary_BW(X_i^theta))^{1/theta}``.

    Args:
        X: ``(..., k, n, n)`` SPD.
        theta: nonzero power.
        weights: optional ``(k,)`` weights.
        max_iter: iteration cap of :func:`bw_barycenter`.
        tol: tolerance of :func:`bw_barycenter`.

    Returns:
        ``(..., n, n)`` barycenter.

    Example:
        >>> X = torch.stack([torch.eye(1), 16 * torch.eye(1)]).double()
        >>> float(gbw_barycenter(X, theta=0.5))  # (((1 + 2) / 2)^2)^2
        5.0625
    """
    X = _check_spd(X, "X")
    return gbw_undeform(
        bw_barycenter(gbw_deform(X, theta), weights, max_iter=max_iter, tol=tol), theta
    )


# --------------------------------------------------------------------------- affine-invariant


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
    Aih = spd_power(A, -0.5)
    return torch.linalg.eigvalsh(sym(Aih @ B @ Aih)).log().pow(2).sum(-1).sqrt()


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
    Sh, Sih = spd_sqrt(S), spd_power(S, -0.5)
    return sym(Sh @ spd_log(Sih @ X @ Sih) @ Sh)


def ai_exp(S: Tensor, V: Tensor) -> Tensor:
    """Affine-invariant exponential ``S^{1/2} exp(S^{-1/2} V S^{-1/2}) S^{1/2}``.

    Args:
        S: ``(..., n, n)`` SPD base point.
        V: ``(..., n, n)`` symmetric tangent vector.

    Returns:
        ``Exp_S(V)`` (SPD).

    Raises:
        ValueError: if ``S`` is not SPD or ``V`` not square and finite.

    Example:
        >>> ai_exp(torch.eye(1), torch.zeros(1, 1))
        tensor([[1.]])
    """
    S = _check_spd(S, "S")
    V = _check_square(V, "V")
    Sh, Sih = spd_sqrt(S), spd_power(S, -0.5)
    return sym(Sh @ spd_exp(Sih @ V @ Sih) @ Sh)


def ai_transport(S: Tensor, P: Tensor, V: Tensor) -> Tensor:
    """Affine-invariant parallel transport along the geodesic ``S -> P``: ``E V E^T``.

    ``E = (P S^{-1})^{1/2} = S^{1/2} (S^{-1/2} P S^{-1/2})^{1/2} S^{-1/2}`` (Sra & Hosseini 2015).

    Args:
        S: ``(..., n, n)`` SPD source.
        P: ``(..., n, n)`` SPD target.
        V: ``(..., n, n)`` tangent vector at ``S``.

    Returns:
        The transported vector at ``P``.

    Raises:
        ValueError: if ``S`` or ``P`` is not SPD.

    Example:
        >>> I = torch.eye(2)
        >>> ai_transport(I, 4 * I, I)  # E = 2 I
        tensor([[4., 0.],
                [0., 4.]])
    """
    S = _check_spd(S, "S")
    P = _check_spd(P, "P")
    V = _check_square(V, "V")
    Sh, Sih = spd_sqrt(S), spd_power(S, -0.5)
    E = Sh @ spd_sqrt(Sih @ P @ Sih) @ Sih
    return sym(E @ V @ E.mT)


def ai_karcher_mean(
    X: Tensor,
    weights: Tensor | None = None,
    *,
    max_iter: int = 50,
    tol: float | None = None,
) -> Tensor:
    """Affine-invariant Karcher (Fréchet) mean by Riemannian gradient descent.

    ``M <- M^{1/2} exp(t sum_i w_i log(M^{-1/2} X_i M^{-1/2})) M^{1/2}``, started at the
    log-Euclidean mean (Pennec et al. 2006; Moakher 2005), with step ``t = 1`` halved whenever
    the gradient norm grows.

    Args:
        X: ``(..., k, n, n)`` SPD.
        weights: optional ``(k,)`` nonnegative weights.
        max_iter: iteration cap.
        tol: stop when the Riemannian gradient norm is ``<= tol`` (default ``1e-12`` in float64,
            ``1e-6`` otherwise).

    Returns:
        ``(..., n, n)`` mean.

    Raises:
        ValueError: for non-SPD input or bad weights.

    Example:
        >>> X = torch.stack([torch.eye(1), 4 * torch.eye(1)]).double()
        >>> float(ai_karcher_mean(X))  # geometric mean
        2.0
    """
    X = _check_spd(X, "X")
    if X.ndim < 3:
        raise ValueError(f"X must have shape (..., k, n, n), got {tuple(X.shape)}")
    k = X.shape[-3]
    if weights is None:
        w = torch.full((k,), 1.0 / k, dtype=X.dtype, device=X.device)
    else:
        w = check_float_tensor(weights, "weights", ndim=1).to(X.dtype)
        if w.shape[0] != k or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be {k} nonnegative numbers with a positive sum")
        w = w / w.sum()
    check_positive_int(max_iter, "max_iter")
    tol_ = (1e-12 if X.dtype == torch.float64 else 1e-6) if tol is None else tol
    return _ai_mean(X, w, max_iter, tol_)


def _ai_mean(X: Tensor, w: Tensor, max_iter: int, tol: float) -> Tensor:
    M = spd_exp(torch.einsum("k,...kij->...ij", w, spd_log(X)))
    step, prev = 1.0, float("inf")
    for _ in range(max_iter):
        Mh, Mih = spd_sqrt(M), spd_power(M, -0.5)
        G = torch.einsum("k,...kij->...ij", w, spd_log(Mih.unsqueeze(-3) @ X @ Mih.unsqueeze(-3)))
        gnorm = float(G.detach().norm(dim=(-2, -1)).amax())
        if gnorm <= tol:
            break
        if gnorm > prev:  # unit steps can oscillate for widely spread data: damp them
            step *= 0.5
        prev = gnorm
        M = sym(Mh @ spd_exp(step * G) @ Mh)
    return M
