r"""Doubly stochastic matrices by entropy-regularized Sinkhorn iterations, in the log domain.

:func:`sinkhorn` solves

.. math:: \max_{\Pi \ge 0,\ \Pi 1 = r,\ \Pi^T 1 = c}\ \langle \Pi, S\rangle - \eta \sum_{ij}
          \Pi_{ij} (\log \Pi_{ij} - 1)

for scores ``S (..., n, m)``: its solution is ``Pi = diag(e^u) exp(S / eta) diag(e^v)``, found by
alternately matching the row and column sums. Everything is done on logarithms (``logsumexp``),
so scores of any size and small ``eta`` neither overflow nor underflow. When the spread of the
scores allows (``(max - min) / eta`` at most 300 in float64, 30 in float32) the same iterates are
computed as matrix scalings of the shifted kernel ``exp((S - max S) / eta)``, two matrix-vector
products per sweep instead of two ``logsumexp`` passes. The iterations are plain differentiable
torch operations (MLC backpropagates through them). For a square ``S`` the default
marginals give a doubly stochastic matrix (rows and columns sum to 1); for ``n x m`` scores rows
sum to 1 and columns to ``n / m`` (a balanced assignment).

Reference: Cuturi, "Sinkhorn distances", NeurIPS 2013; Ding et al., "Unsupervised manifold
linearizing and clustering", ICCV 2023 (the doubly stochastic membership of MLC).

Example:
    >>> import torch
    >>> P = sinkhorn(torch.randn(5, 5, dtype=torch.float64), eta=0.5)
    >>> bool(torch.allclose(P.sum(0), torch.ones(5, dtype=torch.float64), atol=1e-8))
    True
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor, check_positive_float, check_positive_int

__all__ = ["sinkhorn", "sinkhorn_log"]


def sinkhorn_log(
    scores: Tensor,
    eta: float = 1.0,
    *,
    max_iter: int = 1000,
    tol: float | None = None,
    check_every: int = 10,
) -> Tensor:
    """The logarithm of :func:`sinkhorn`'s matrix (finite where the matrix underflows to 0).

    Args:
        scores: ``(..., n, m)`` real scores (larger = more likely paired).
        eta: entropy weight ``> 0`` (smaller: closer to a permutation-like matrix).
        max_iter: the most row+column normalization sweeps.
        tol: stop when every row sum is within ``tol`` of its target (column sums are exact
            after each sweep); checked every ``check_every`` sweeps. ``None``: ``1e-10`` in
            float64, ``1e-5`` in float32. ``0`` runs exactly ``max_iter`` sweeps (no check, no
            host synchronization: what a training loop wants). A ``RuntimeWarning`` says when
            ``max_iter`` sweeps did not reach ``tol``.
        check_every: sweeps between convergence checks.

    Returns:
        ``log Pi``, the shape of ``scores``.

    Raises:
        TypeError: if ``scores`` is not a floating tensor.
        ValueError: for non-finite scores, fewer than 2 dimensions, ``eta <= 0``, or bad counts.

    Example:
        >>> import torch
        >>> logP = sinkhorn_log(torch.tensor([[100.0, 0.0], [0.0, 100.0]]), eta=0.01)
        >>> bool(torch.isfinite(logP).all())
        True
    """
    S = check_float_tensor(scores, "scores")
    if S.ndim < 2:
        raise ValueError(f"scores must have shape (..., n, m), got {tuple(S.shape)}")
    check_finite(S.detach(), "scores")
    eta = check_positive_float(eta, "eta")
    max_iter = check_positive_int(max_iter, "max_iter")
    check_every = check_positive_int(check_every, "check_every")
    if tol is None:
        tol = 1e-10 if S.dtype == torch.float64 else 1e-5
    tol = check_positive_float(tol, "tol", allow_zero=True)
    n, m = S.shape[-2], S.shape[-1]
    if n == 0 or m == 0:
        raise ValueError(f"scores must be non-empty, got shape {tuple(S.shape)}")
    work = S if S.dtype in (torch.float32, torch.float64) else S.float()
    span = float((work.detach().amax() - work.detach().amin()) / eta)
    if span <= KERNEL_SPAN[work.dtype]:
        log_p, converged = _sinkhorn_kernel(work, eta, max_iter, tol, check_every)
    else:
        log_p, converged = _sinkhorn_logsumexp(work, eta, max_iter, tol, check_every)
    if not converged:
        warnings.warn(
            f"sinkhorn did not reach tol={tol:g} in max_iter={max_iter} sweeps (eta={eta:g} is "
            "small for the spread of the scores): raise max_iter or eta",
            RuntimeWarning,
            stacklevel=2,
        )
    return log_p.to(S.dtype)


#: Largest spread ``(max - min) / eta`` of the scores for which the scaled kernel
#: ``exp((S - max S) / eta)`` and its scalings stay far inside the dtype's range (``e^-300`` and
#: ``e^-30`` against the smallest normal numbers ``2e-308`` and ``1e-38``).
KERNEL_SPAN = {torch.float64: 300.0, torch.float32: 30.0}


def _sinkhorn_kernel(
    S: Tensor, eta: float, max_iter: int, tol: float, check_every: int
) -> tuple[Tensor, bool]:
    """Matrix-scaling iterations ``u = r / (K v)``, ``v = c / (K^T u)`` on the scaled kernel.

    Mathematically the same iterates as the log-domain sweeps, at the cost of two matrix-vector
    products per sweep instead of two ``logsumexp`` passes.

    Returns:
        ``(log Pi, converged)``.
    """
    n, m = S.shape[-2], S.shape[-1]
    shifted = (S - S.amax(dim=(-2, -1), keepdim=True)) / eta
    K = shifted.exp()
    c = n / m
    v = torch.ones((*S.shape[:-2], m, 1), dtype=S.dtype, device=S.device)
    u = v.new_ones((*S.shape[:-2], n, 1))
    converged = tol == 0
    for it in range(max_iter):
        u = 1.0 / (K @ v)
        v = c / (K.mT @ u)
        if tol > 0 and (it + 1) % check_every == 0:
            with torch.no_grad():
                rows = u * (K @ v)
                if float(rows.sub(1.0).abs().max()) <= tol:
                    converged = True
                    break
    return u.log() + shifted + v.log().mT, converged


def _sinkhorn_logsumexp(
    S: Tensor, eta: float, max_iter: int, tol: float, check_every: int
) -> tuple[Tensor, bool]:
    """Log-domain sweeps (``logsumexp``), for scores too spread for the scaled kernel.

    Returns:
        ``(log Pi, converged)``.
    """
    n, m = S.shape[-2], S.shape[-1]
    log_k = S / eta
    log_c = math.log(n / m)  # columns sum to n / m, rows to 1
    v = torch.zeros((*S.shape[:-2], m), dtype=S.dtype, device=S.device)
    u = torch.zeros((*S.shape[:-2], n), dtype=S.dtype, device=S.device)
    converged = tol == 0
    for it in range(max_iter):
        u = -torch.logsumexp(log_k + v.unsqueeze(-2), dim=-1)
        v = log_c - torch.logsumexp(log_k + u.unsqueeze(-1), dim=-2)
        if tol > 0 and (it + 1) % check_every == 0:
            with torch.no_grad():
                rows = torch.logsumexp(log_k + u.unsqueeze(-1) + v.unsqueeze(-2), dim=-1)
                if float(rows.exp().sub(1.0).abs().max()) <= tol:
                    converged = True
                    break
    return log_k + u.unsqueeze(-1) + v.unsqueeze(-2), converged


def sinkhorn(
    scores: Tensor,
    eta: float = 1.0,
    *,
    max_iter: int = 1000,
    tol: float | None = None,
    check_every: int = 10,
) -> Tensor:
    """Entropy-regularized doubly stochastic matrix ``Pi = diag(a) exp(scores / eta) diag(b)``.

    Args:
        scores: ``(..., n, m)`` real scores.
        eta: entropy weight ``> 0``.
        max_iter: the most normalization sweeps.
        tol: row-sum tolerance (see :func:`sinkhorn_log`); ``0`` for a fixed ``max_iter``.
        check_every: sweeps between convergence checks.

    Returns:
        ``Pi``, the shape of ``scores``: non-negative, columns summing to ``n / m`` and rows to
        1 within ``tol``.

    Example:
        >>> import torch
        >>> P = sinkhorn(torch.zeros(2, 3))  # uniform: every row 1/3 each, columns 2/3
        >>> [round(x, 4) for x in P[0].tolist()]
        [0.3333, 0.3333, 0.3333]
    """
    return sinkhorn_log(scores, eta, max_iter=max_iter, tol=tol, check_every=check_every).exp()
