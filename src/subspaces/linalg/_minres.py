"""MINRES for symmetric (possibly indefinite or singular) systems (``minres``).

References:
    Paige, Saunders. "Solution of sparse indefinite systems of linear equations." SIAM J. Numer.
    Anal. 12(4), 1975.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_positive_float, check_positive_int, default_tol
from ..linops.base import LinearOperator
from ._systems import SolveResult, _as_block, _working_system

__all__ = ["minres"]


def _minres_vector(
    op: LinearOperator,
    b: Tensor,
    x0: Tensor,
    r0: Tensor,
    shift: float,
    thresh: float,
    max_iters: int,
) -> tuple[Tensor, str, int, int]:
    """One MINRES run for one right-hand side from ``x0`` with residual ``r0 = b - A x0``.

    Paige-Saunders, unpreconditioned.

    Besides the QR residual estimate ``phibar`` it tracks ``||A r_{k-1}|| = phibar * ||(gbar,
    dbar)||`` of the current iterate *before* each update, so a singular system whose ``b`` is not
    in the range stops at a least-squares solution (``||A r|| <= sqrt(eps) ||A|| ||r||``) instead
    of taking the step through the singular projected matrix that sends ``x`` to infinity.

    Returns:
        ``(x, status, iterations, num_matvecs)`` with ``status`` one of ``"converged"`` (the
        estimate ``phibar`` met ``thresh``: to be confirmed on the true residual),
        ``"least_squares"``, ``"max_iters"`` or ``"invariant"`` (the Krylov space became
        invariant: the estimate is final).

    Raises:
        ValueError: if the operator returns non-finite values.
    """
    f64 = torch.float64

    def apply(v: Tensor) -> Tensor:
        out = op.matmat(v.unsqueeze(1)).squeeze(1)
        return out - shift * v if shift != 0.0 else out

    r1 = r0
    num_matvecs = 0
    beta1 = r1.norm().to(f64)
    if float(beta1) <= thresh:
        return x0, "converged", 0, num_matvecs

    x = x0.clone()
    zero = torch.zeros((), dtype=f64, device=b.device)
    eps = float(torch.finfo(b.dtype).eps)
    # ||A r|| / (||A|| ||r||) falls to rounding level (measured <= 1e-9 in float64, <= 2e-5 in
    # float32) only when b has a component outside the range of a (numerically) singular A; on
    # consistent systems up to cond 1e12 (float64) / 1e4 (float32) it stays >= 5e-7 / 6e-4.
    ls_tol = math.sqrt(eps)
    oldb, beta, dbar, epsln, phibar, tnorm2 = zero, beta1, zero, zero, beta1, zero
    cs, sn = -torch.ones((), dtype=f64, device=b.device), zero
    w = torch.zeros_like(b)
    w2 = torch.zeros_like(b)
    r2, y = r1, r1
    status, iterations = "max_iters", 0
    for itn in range(1, max_iters + 1):
        v = y / beta.to(b.dtype)
        y = apply(v)
        num_matvecs += 1
        if itn >= 2:
            y = y - (beta / oldb).to(b.dtype) * r1
        alfa = (v * y).sum().to(f64)
        y = y - (alfa / beta).to(b.dtype) * r2
        r1, r2 = r2, y
        oldb, beta = beta, y.norm().to(f64)
        tnorm2 = tnorm2 + alfa**2 + oldb**2 + beta**2
        anorm = tnorm2.sqrt()
        # Apply the previous rotation, then compute the next one (QR of the tridiagonal).
        oldeps = epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        epsln = sn * beta
        dbar = -cs * beta
        arnorm = phibar * torch.hypot(gbar, dbar)  # ||A r|| of the current x, before the update
        gamma = torch.hypot(gbar, beta)
        # One host sync per iteration: finiteness and the least-squares test.
        finite, least_squares = torch.stack(
            [torch.isfinite(y).all(), arnorm <= ls_tol * anorm * phibar]
        ).tolist()
        if not finite:
            raise ValueError(f"operator returned non-finite values at MINRES iteration {itn}")
        if least_squares:  # b is not in the range: x already minimizes ||b - A x||
            status = "least_squares"
            break
        gamma = torch.clamp(gamma, min=torch.finfo(f64).tiny)
        cs, sn = gbar / gamma, beta / gamma
        phi = cs * phibar
        phibar = sn * phibar
        w1, w2 = w2, w
        w = (v - oldeps.to(b.dtype) * w1 - delta.to(b.dtype) * w2) / gamma.to(b.dtype)
        x = x + phi.to(b.dtype) * w
        iterations = itn
        conv, invariant = torch.stack([phibar <= thresh, beta <= eps * anorm]).tolist()
        if conv:
            status = "converged"
            break
        if invariant:  # the Krylov space is invariant: x is final for this start
            status = "invariant"
            break
    return x, status, iterations, num_matvecs


def _minres_column(
    op: LinearOperator,
    b: Tensor,
    x0: Tensor | None,
    shift: float,
    rtol: float,
    max_iters: int,
) -> tuple[Tensor, Tensor, bool, str, int, int]:
    """MINRES for one column, certified on the true residual, restarted while that helps.

    Returns:
        ``(x, true residual norm, converged, status, iterations, num_matvecs)``.
    """
    bnorm = float(b.norm())
    thresh = rtol * bnorm
    if bnorm == 0.0:
        return torch.zeros_like(b), b.norm(), True, "converged", 0, 0

    def residual(x: Tensor) -> Tensor:
        Ax = op.matmat(x.unsqueeze(1)).squeeze(1)
        if not bool(torch.isfinite(Ax).all()):
            raise ValueError("operator returned non-finite values (A @ x)")
        return b - (Ax - shift * x if shift != 0.0 else Ax)

    if x0 is None:
        x, r, num_matvecs = torch.zeros_like(b), b, 0
    else:
        x, r, num_matvecs = x0, residual(x0), 1
    best_x, best_res = x, float(r.norm())
    iterations, status = 0, "max_iters"
    while True:
        if best_res <= thresh:
            status = "converged"
            break
        x, inner, its, mv = _minres_vector(op, b, x, r, shift, thresh, max_iters - iterations)
        iterations += its
        num_matvecs += mv
        if its > 0:  # certify on the true residual of the returned x (one product)
            r = residual(x)
            num_matvecs += 1
        res = float(r.norm())
        improved = res <= 0.5 * best_res
        if res < best_res:
            best_x, best_res = x, res
        if best_res <= thresh:
            status = "converged"
            break
        if inner == "least_squares":
            status = "least_squares"
            break
        if iterations >= max_iters:
            status = "max_iters"
            break
        if not improved:  # rounding limits this dtype at this conditioning
            status = "stagnated"
            break
    if x0 is None and best_res > bnorm:  # never return something worse than x = 0
        best_x, best_res = torch.zeros_like(b), bnorm
    res_t = torch.tensor(best_res, dtype=b.dtype, device=b.device)
    return best_x, res_t, status == "converged", status, iterations, num_matvecs


def minres(
    A: Tensor | LinearOperator,
    b: Tensor,
    *,
    shift: float = 0.0,
    x0: Tensor | None = None,
    rtol: float | None = None,
    max_iters: int | None = None,
) -> SolveResult:
    """Solve ``(A - shift I) x = b`` for symmetric, possibly indefinite ``A`` by MINRES.

    MINRES minimizes ``||b - (A - shift I) x||`` over the Krylov space with short recurrences
    (Lanczos plus a QR factorization of the tridiagonal matrix by Givens rotations), so the
    residual decreases monotonically in exact arithmetic. It iterates until the QR residual
    estimate ``phibar`` drops to ``rtol * ||b||``; then the true residual ``||b - (A - shift I)
    x||`` is recomputed (one product) and only it decides ``converged``. If rounding made the two
    differ, MINRES restarts from the true residual while restarts at least halve it
    (``status="stagnated"`` otherwise). A singular system whose ``b`` is not in the range stops
    at a least-squares solution (``status="least_squares"``, ``converged=False``) as soon as
    ``||A r|| <= sqrt(eps) ||A|| ||r||``, before the step through the singular projected matrix
    that would send ``x`` to infinity. The returned ``x`` is never worse than the start. A
    right-hand side block ``(n, r)`` is solved column by column (a loop, one matvec per column and
    iteration). Half precision systems are solved in float32 with products in half.

    Args:
        A: a symmetric ``(n, n)`` tensor or operator.
        b: right-hand side, ``(n,)`` or ``(n, r)``, in ``A``'s dtype.
        shift: real ``sigma`` in ``(A - sigma I) x = b``.
        x0: initial guess shaped like ``b`` (not modified); zero when omitted.
        rtol: relative tolerance; default :func:`~subspaces._checks.default_tol` of the dtype.
        max_iters: iteration limit per column; default ``10 * n``.

    Returns:
        A :class:`SolveResult` (``x``, ``converged``, ``iterations``, ``residual_norm``,
        ``num_matvecs``, ``status``).

    Raises:
        ValueError: if ``A`` is not square, ``b``/``x0`` has the wrong shape or non-finite
            entries, ``shift`` is not finite, the operator returns non-finite values, or ``A`` is
            on the meta device.
        TypeError: if ``b`` or ``x0`` has the wrong type or dtype.

    Example:
        >>> A = torch.diag(torch.tensor([3.0, -2.0, 1.0], dtype=torch.float64))
        >>> b = torch.ones(3, dtype=torch.float64)
        >>> res = minres(A, b, shift=0.5)
        >>> bool(torch.allclose(res.x, b / torch.tensor([2.5, -2.5, 0.5], dtype=torch.float64)))
        True
        >>> res.converged, res.iterations  # three distinct eigenvalues: exact after 3 steps
        (True, 3)
        >>> singular = torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64))
        >>> ls = minres(singular, torch.ones(2, dtype=torch.float64))  # b not in the range
        >>> ls.converged, ls.status, round(float(ls.residual_norm), 12)
        (False, 'least_squares', 1.0)

    References:
        Paige, Saunders, SIAM J. Numer. Anal. 12(4), 1975.
    """
    op, b, x0, out_dtype = _working_system(A, b, x0)
    n = op.shape[0]
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift):
        raise ValueError(f"shift must be a finite real number, got {shift!r}")
    rtol = (
        default_tol(out_dtype)
        if rtol is None
        else check_positive_float(rtol, "rtol", allow_zero=True)
    )
    max_iters = (
        10 * n if max_iters is None else check_positive_int(max_iters, "max_iters", minimum=0)
    )
    B = _as_block(b)
    X0 = None if x0 is None else _as_block(x0)
    xs, norms, statuses = [], [], []
    iterations, num_matvecs = 0, 0
    for j in range(B.shape[1]):
        xj, rj, _, sj, itj, mj = _minres_column(
            op, B[:, j], None if X0 is None else X0[:, j], float(shift), rtol, max_iters
        )
        xs.append(xj)
        norms.append(rj)
        statuses.append(sj)
        iterations = max(iterations, itj)
        num_matvecs += mj
    if not xs:  # no right-hand side: nothing to solve
        X, res = B.to(out_dtype), B.new_zeros(0)
    else:
        X, res = torch.stack(xs, dim=1).to(out_dtype), torch.stack(norms)
    reasons = sorted({s for s in statuses if s != "converged"})
    return SolveResult(
        x=X.squeeze(1) if b.ndim == 1 else X,
        converged=not reasons,
        iterations=iterations,
        residual_norm=res.squeeze(0) if b.ndim == 1 else res,
        num_matvecs=num_matvecs,
        status=", ".join(reasons) if reasons else "converged",
    )
