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

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor, check_positive_float, check_positive_int
from ..linalg._precision import to_working_dtype, working_dtype

__all__ = [
    "SPDMeanResult",
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
    "gbw_geodesic",
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
    """``U f(Λ) U^T`` with the Daleckii-Krein backward (finite for repeated eigenvalues).

    With ``check = (name, eps)`` the eigenvalues are validated in the forward pass (no second
    decomposition): positive for ``log`` and powers ``p <= 0``, and at least ``-n eps |λ|_max``
    (rounding of a positive semidefinite matrix, then clamped) for powers ``p > 0``.
    """

    @staticmethod
    def forward(
        ctx: Any, X: Tensor, name: str, p: float, check: tuple[str, float] | None
    ) -> Tensor:
        f, _ = _FUNCTIONS[name]
        w, U = torch.linalg.eigh(X)
        if check is not None and w.numel():
            _check_eigenvalues(w, name, p, *check)
        fw = f(w, p)
        ctx.save_for_backward(w, U, fw)
        ctx.name, ctx.p = name, p
        return (U * fw.unsqueeze(-2)) @ U.mT

    @staticmethod
    def backward(ctx: Any, G: Tensor) -> tuple[Tensor, None, None, None]:
        w, U, fw = ctx.saved_tensors
        _, df = _FUNCTIONS[ctx.name]
        diff = w.unsqueeze(-1) - w.unsqueeze(-2)
        fdiff = fw.unsqueeze(-1) - fw.unsqueeze(-2)
        scale = w.abs().amax(-1, keepdim=True).unsqueeze(-1).clamp_min(1e-300)
        close = diff.abs() <= 1e3 * torch.finfo(w.dtype).eps * scale
        mid = df((w.unsqueeze(-1) + w.unsqueeze(-2)) / 2, ctx.p)
        K = torch.where(close, mid, fdiff / torch.where(close, torch.ones_like(diff), diff))
        Gs = U.mT @ sym(G) @ U
        return U @ (K * Gs) @ U.mT, None, None, None


def _check_eigenvalues(w: Tensor, fn: str, p: float, name: str, eps: float) -> None:
    """Raise unless the eigenvalues ``w`` (ascending, batched) suit the matrix function."""
    lo, hi = w[..., 0], w.abs().amax(-1)
    if fn == "log" or (fn == "pow" and p <= 0):
        bad = lo <= 0
        need = "positive definite"
    elif fn == "pow":
        bad = lo < -w.shape[-1] * eps * hi
        need = f"positive semidefinite (eigenvalues >= -n eps |lambda|_max = -{w.shape[-1]} eps)"
    else:
        return
    if bool(bad.any()):
        i = int(torch.argmax((-lo / hi.clamp_min(torch.finfo(w.dtype).tiny)).flatten()))
        what = "log" if fn == "log" else f"power {p:g}"
        raise ValueError(
            f"{name} must be symmetric {need} for the matrix {what}; got smallest eigenvalue "
            f"{float(lo.flatten()[i]):.3g} (largest magnitude {float(hi.flatten()[i]):.3g})"
        )


def _spectral(
    X: Tensor, name: str, p: float = 0.0, check: tuple[str, float] | None = None
) -> Tensor:
    out = _Spectral.apply(X, name, p, check)
    assert isinstance(out, Tensor)
    return out


# --------------------------------------------------------------------------- validation


def _sym_tol(dtype: torch.dtype) -> float:
    """Default symmetry tolerance relative to the largest entry: ``min(1e3 eps, 1/16)``.

    Returns:
        ``1e3 eps`` for float32/float64 (rounding of products that should be symmetric) and
        ``1/16`` for float16/bfloat16, where ``1e3 eps`` would exceed 1.
    """
    return min(1e3 * torch.finfo(dtype).eps, 2.0**-4)


def _rel_asymmetry(X: Tensor) -> Tensor:
    """``max |X - X^T| / max |X|`` of each matrix of a batch, in at least float32.

    Returns:
        A tensor of shape ``X.shape[:-2]``.
    """
    Xw = to_working_dtype(X)
    scale = Xw.abs().amax((-2, -1)).clamp_min(torch.finfo(Xw.dtype).tiny)
    return (Xw - Xw.mT).abs().amax((-2, -1)) / scale


def _check_square(X: Any, name: str) -> Tensor:
    X = check_float_tensor(X, name)
    if X.ndim < 2 or X.shape[-1] != X.shape[-2]:
        raise ValueError(
            f"{name} must have shape (..., n, n) (square matrices), got {tuple(X.shape)}"
        )
    if X.shape[-1] == 0:
        raise ValueError(f"{name} must hold matrices of size n >= 1, got shape {tuple(X.shape)}")
    return check_finite(X, name)


def _check_symmetric(X: Any, name: str) -> Tensor:
    """Square, finite and symmetric up to :func:`_sym_tol` (rounding is symmetrized later).

    Returns:
        ``X``.

    Raises:
        ValueError: naming the largest relative asymmetry when it exceeds the tolerance.
    """
    X = _check_square(X, name)
    if X.numel():
        asym, tol = _rel_asymmetry(X), _sym_tol(X.dtype)
        if bool((asym > tol).any()):
            raise ValueError(
                f"{name} must be symmetric: max |X - X^T| / max |X| = {float(asym.max()):.3e} > "
                f"{tol:.1e} (the tolerance for {X.dtype}); pass sym({name}) if the asymmetry is "
                "meant to be dropped"
            )
    return X


def _check_spd(X: Any, name: str) -> Tensor:
    X = _check_square(X, name)
    if X.numel() and not bool(is_spd(X).all()):
        asym = float(_rel_asymmetry(X).max())
        smallest = float(torch.linalg.eigvalsh(sym(to_working_dtype(X))).min())
        raise ValueError(
            f"{name} must be symmetric positive definite; got a matrix with relative asymmetry "
            f"{asym:.3g} (tolerance {_sym_tol(X.dtype):.1e}) or an eigenvalue <= 0 (smallest "
            f"eigenvalue {smallest:.3g})"
        )
    return X


def _common(*tensors: Tensor) -> tuple[torch.dtype, list[Tensor]]:
    """The promoted dtype of ``tensors`` and the tensors in its working dtype.

    Returns:
        ``(dtype, [tensors in float32 if dtype is half, else in dtype])``.
    """
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    work = working_dtype(dtype)
    return dtype, [t.to(work) for t in tensors]


# --------------------------------------------------------------------------- matrix functions


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
        X: ``(..., n, n)`` real floating tensor, ``n >= 1`` (float16/bfloat16 are checked in
            float32).
        rtol: tolerance of the symmetry check, relative to the largest entry; default
            ``min(1e3 eps, 1/16)`` (``1e3`` machine epsilons of ``X``'s dtype, capped at 1/16
            for half precision, where ``1e3 eps`` exceeds 1).

    Returns:
        Boolean tensor of shape ``X.shape[:-2]``: symmetric (relative to the largest entry) with
        smallest eigenvalue ``> 0``; ``False`` for matrices with NaN or Inf.

    Raises:
        ValueError: if ``X`` is not a batch of square matrices of size ``n >= 1``, lives on the
            meta device, or ``rtol`` is negative.
        TypeError: if ``X`` is not a floating tensor.

    Example:
        >>> is_spd(torch.eye(3)).item(), is_spd(-torch.eye(3)).item()
        (True, False)
        >>> is_spd(torch.tensor([[2.0, 1.0], [1.2, 2.0]], dtype=torch.bfloat16)).item()
        False
    """
    X = check_float_tensor(X, "X")
    if X.ndim < 2 or X.shape[-1] != X.shape[-2] or X.shape[-1] == 0:
        raise ValueError(f"X must have shape (..., n, n) with n >= 1, got {tuple(X.shape)}")
    tol = _sym_tol(X.dtype) if rtol is None else check_positive_float(rtol, "rtol", allow_zero=True)
    finite = torch.isfinite(X).all(-1).all(-1)
    Xf = torch.where(
        finite[..., None, None], X, torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
    )
    Xf = to_working_dtype(Xf)
    scale = Xf.abs().amax((-2, -1)).clamp_min(torch.finfo(Xf.dtype).tiny)
    symmetric = (Xf - Xf.mT).abs().amax((-2, -1)) <= tol * scale
    positive = torch.linalg.eigvalsh(sym(Xf))[..., 0] > 0
    return finite & symmetric & positive


def _pow(X: Tensor, p: float) -> Tensor:
    """``X^p`` of (near-)symmetric ``X`` without validation (eigenvalues clamped at ``tiny``)."""
    return _spectral(sym(X), "pow", float(p))


def _sqrt(X: Tensor) -> Tensor:
    return _pow(X, 0.5)


def _log(X: Tensor) -> Tensor:
    return _spectral(sym(X), "log")


def _exp(X: Tensor) -> Tensor:
    return _spectral(sym(X), "exp")


def _checked_function(X: Any, fn: str, p: float, name: str = "X") -> Tensor:
    """A validated matrix function, computed in at least float32, returned in ``X``'s dtype."""
    X = _check_symmetric(X, name)
    out = _spectral(sym(to_working_dtype(X)), fn, p, (name, torch.finfo(X.dtype).eps))
    return out.to(X.dtype)


def spd_power(X: Tensor, p: float) -> Tensor:
    """Matrix power ``X^p`` of SPD matrices (eigenvalues raised to ``p``).

    ``X`` must be symmetric up to rounding (``max |X - X^T| <= min(1e3 eps, 1/16) max |X|``;
    the rounding is symmetrized) and positive definite for ``p <= 0``; for ``p > 0`` a
    positive semidefinite ``X`` is accepted, eigenvalues down to ``-n eps |lambda|_max``
    (rounding) being treated as 0. float16/bfloat16 are computed in float32 and returned in
    their dtype.

    Args:
        X: ``(..., n, n)`` SPD.
        p: the exponent.

    Returns:
        ``X^p``.

    Raises:
        ValueError: if ``X`` is not square, not finite, not symmetric, or not positive
            (semi)definite as above (naming the smallest eigenvalue).

    Example:
        >>> spd_power(torch.diag(torch.tensor([4.0, 9.0])), 0.5)
        tensor([[2., 0.],
                [0., 3.]])
    """
    return _checked_function(X, "pow", float(p))


def spd_sqrt(X: Tensor) -> Tensor:
    """Principal square root ``X^{1/2}`` of SPD (or positive semidefinite) matrices.

    Validated as :func:`spd_power` with ``p = 1/2``.

    Args:
        X: ``(..., n, n)`` SPD.

    Returns:
        ``X^{1/2}``.

    Raises:
        ValueError: for the inputs :func:`spd_power` rejects.

    Example:
        >>> spd_sqrt(4 * torch.eye(2))
        tensor([[2., 0.],
                [0., 2.]])
    """
    return _checked_function(X, "pow", 0.5)


def spd_log(X: Tensor) -> Tensor:
    """Principal matrix logarithm of SPD matrices.

    Validated as :func:`spd_power` with ``p <= 0``: symmetric up to rounding and positive
    definite.

    Args:
        X: ``(..., n, n)`` SPD.

    Returns:
        ``log X`` (symmetric).

    Raises:
        ValueError: if ``X`` is not square, not finite, not symmetric or not positive definite.

    Example:
        >>> spd_log(torch.eye(2))
        tensor([[0., 0.],
                [0., 0.]])
    """
    return _checked_function(X, "log", 0.0)


def spd_exp(X: Tensor) -> Tensor:
    """Matrix exponential of symmetric matrices.

    Args:
        X: ``(..., n, n)`` symmetric up to rounding (as in :func:`spd_power`).

    Returns:
        ``exp X`` (SPD).

    Raises:
        ValueError: if ``X`` is not square, not finite or not symmetric.

    Example:
        >>> spd_exp(torch.zeros(2, 2))
        tensor([[1., 0.],
                [0., 1.]])
    """
    return _checked_function(X, "exp", 0.0)


def _clamp_eig(X: Tensor, eps: float) -> Tensor:
    return _spectral(sym(X), "clamp", float(eps))


def _lyapunov(S: Tensor, V: Tensor) -> Tensor:
    w, U = torch.linalg.eigh(sym(S))
    Vt = U.mT @ sym(V) @ U
    return U @ (Vt / (w.unsqueeze(-1) + w.unsqueeze(-2))) @ U.mT


def lyapunov(S: Tensor, V: Tensor) -> Tensor:
    """Solve the Lyapunov equation ``S L + L S = V`` for SPD ``S`` and symmetric ``V``.

    Args:
        S: ``(..., n, n)`` SPD.
        V: ``(..., n, n)`` symmetric (up to rounding, as in :func:`spd_power`).

    Returns:
        ``L`` (symmetric), computed in the eigenbasis of ``S``: ``L_ij = V_ij / (s_i + s_j)``.

    Raises:
        ValueError: if ``S`` is not SPD or ``V`` not square, finite and symmetric.

    Example:
        >>> S = torch.diag(torch.tensor([1.0, 3.0]))
        >>> lyapunov(S, torch.ones(2, 2))
        tensor([[0.5000, 0.2500],
                [0.2500, 0.1667]])
    """
    S = _check_spd(S, "S")
    V = _check_symmetric(V, "V")
    dtype, (Sw, Vw) = _common(S, V)
    return _lyapunov(Sw, Vw).to(dtype)


# --------------------------------------------------------------------------- Bures-Wasserstein


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


# --------------------------------------------------------------------------- means


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


# --------------------------------------------------------------------------- generalized BW


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


def _bw_geodesic(A: Tensor, B: Tensor, t: float | Tensor) -> Tensor:
    """BW geodesic ``((1 - t) I + t T) A ((1 - t) I + t T)``, ``T`` the OT map ``A -> B``."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    G = (1 - t) * eye + t * _transport_map(A, B)
    return sym(G @ A @ G)


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
