"""Krylov solvers for symmetric systems: preconditioned CG (block of right-hand sides) and MINRES.

References:
    Hestenes, Stiefel. "Methods of conjugate gradients for solving linear systems." J. Res. Nat.
    Bur. Standards 49(6), 1952.

    Paige, Saunders. "Solution of sparse indefinite systems of linear equations." SIAM J. Numer.
    Anal. 12(4), 1975.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import (
    check_finite,
    check_float_tensor,
    check_positive_float,
    check_positive_int,
    default_tol,
)
from ..linops.base import LinearOperator, as_operator

__all__ = ["SolveResult", "cg", "minres"]


@dataclass(frozen=True, eq=False)
class SolveResult:
    """Output of :func:`cg` and :func:`minres`.

    Attributes:
        x: the solution, shaped like ``b`` (``(n,)`` or ``(n, r)``).
        converged: whether every column met its tolerance.
        iterations: iterations run (the largest over columns).
        residual_norm: the solver's residual norm per column (``()`` for a vector ``b``, ``(r,)``
            otherwise): the recursively updated residual for CG, the QR estimate ``phibar`` for
            MINRES. Both equal ``||b - A x||`` in exact arithmetic.
        num_matvecs: columns multiplied by ``A`` (preconditioner applications not included).
    """

    x: Tensor
    converged: bool
    iterations: int
    residual_norm: Tensor
    num_matvecs: int


def _validate_system(
    A: Tensor | LinearOperator, b: Tensor, x0: Tensor | None
) -> tuple[LinearOperator, Tensor, Tensor | None]:
    """Validate a linear system.

    Returns:
        ``(operator, b, x0)``.

    Raises:
        ValueError: unless ``A`` is square, ``b`` is finite ``(n,)`` or ``(n, r)`` and ``x0`` is
            finite and shaped like ``b``.
        TypeError: if ``b`` or ``x0`` is not a float tensor of ``A``'s dtype.
    """
    op = as_operator(A)
    n = op.shape[0]
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"A must be square, got shape {op.shape}")
    b = check_finite(check_float_tensor(b, "b", ndim=(1, 2)), "b")
    if b.shape[0] != n:
        raise ValueError(
            f"b must have {n} rows to match A of shape {op.shape}, got {tuple(b.shape)}"
        )
    if b.dtype != op.dtype:
        raise TypeError(f"b has dtype {b.dtype} but A has dtype {op.dtype}")
    if x0 is not None:
        x0 = check_finite(check_float_tensor(x0, "x0", ndim=b.ndim), "x0")
        if x0.shape != b.shape:
            raise ValueError(f"x0 must have the shape of b {tuple(b.shape)}, got {tuple(x0.shape)}")
        if x0.dtype != op.dtype:
            raise TypeError(f"x0 has dtype {x0.dtype} but A has dtype {op.dtype}")
    return op, b, x0


def _as_block(x: Tensor) -> Tensor:
    return x.unsqueeze(1) if x.ndim == 1 else x


def cg(
    A: Tensor | LinearOperator,
    b: Tensor,
    *,
    M: Tensor | LinearOperator | None = None,
    x0: Tensor | None = None,
    rtol: float | None = None,
    atol: float = 0.0,
    max_iters: int | None = None,
) -> SolveResult:
    """Solve ``A x = b`` for symmetric positive definite ``A`` by preconditioned CG.

    Several right-hand sides (``b`` of shape ``(n, r)``) are solved together: every iteration is
    one ``matmat`` with the still-unconverged columns, each with its own step sizes. Column ``j``
    stops when ``||b_j - A x_j|| <= max(rtol * ||b_j||, atol)`` (the recursively updated residual).
    A zero column of ``b`` gets ``x_j = 0``. In exact arithmetic the error after ``k`` iterations
    satisfies ``||e_k||_A <= 2 ((sqrt(kappa) - 1) / (sqrt(kappa) + 1))^k ||e_0||_A`` with
    ``kappa`` the condition number of the preconditioned matrix.

    Args:
        A: a symmetric positive definite ``(n, n)`` tensor or operator.
        b: right-hand side, ``(n,)`` or ``(n, r)``, in ``A``'s dtype.
        M: symmetric positive definite preconditioner applying an approximate inverse of ``A``
            (``z = M r``), a tensor or operator; identity when omitted.
        x0: initial guess shaped like ``b`` (not modified); zero when omitted.
        rtol: relative tolerance; default :func:`~subspaces._checks.default_tol` of the dtype
            (1e-8 in float64, 1e-5 otherwise).
        atol: absolute tolerance.
        max_iters: iteration limit; default ``10 * n``.

    Returns:
        A :class:`SolveResult` (``x``, ``converged``, ``iterations``, ``residual_norm``,
        ``num_matvecs``). Not converging within ``max_iters`` is reported, not raised.

    Raises:
        ValueError: if ``A`` is not square, ``b``/``x0``/``M`` has the wrong shape or non-finite
            entries, ``A`` or ``M`` turns out not to be positive definite (``p^T A p <= 0`` or
            ``r^T M r <= 0``), or the operator returns non-finite values.
        TypeError: if ``b``, ``x0`` or ``M`` has the wrong type or dtype.

    Example:
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> res = cg(A, b)
        >>> bool(torch.allclose(res.x, torch.linalg.solve(A, b))), res.converged, res.iterations
        (True, True, 2)

    References:
        Hestenes, Stiefel, J. Res. Nat. Bur. Standards 49(6), 1952.
    """
    op, b, x0 = _validate_system(A, b, x0)
    n = op.shape[0]
    Mop: LinearOperator | None = None
    if M is not None:
        Mop = as_operator(M)
        if Mop.shape != (n, n):
            raise ValueError(f"M must have shape ({n}, {n}), got {Mop.shape}")
        if Mop.dtype != op.dtype:
            raise TypeError(f"M has dtype {Mop.dtype} but A has dtype {op.dtype}")
    rtol = (
        default_tol(op.dtype)
        if rtol is None
        else check_positive_float(rtol, "rtol", allow_zero=True)
    )
    atol = check_positive_float(atol, "atol", allow_zero=True)
    max_iters = (
        10 * n if max_iters is None else check_positive_int(max_iters, "max_iters", minimum=0)
    )

    B = _as_block(b)
    r = B.shape[1]
    num_matvecs = 0
    bnorm = B.norm(dim=0)
    nonzero = bnorm > 0
    if x0 is None:
        X = torch.zeros_like(B)
        R = B.clone()
    else:
        X = _as_block(x0).clone()
        AX = op.matmat(X)
        num_matvecs += r
        if not bool(torch.isfinite(AX).all()):
            raise ValueError("operator returned non-finite values (A @ x0)")
        X = torch.where(nonzero, X, torch.zeros_like(X))
        R = torch.where(nonzero, B - AX, torch.zeros_like(B))

    def precondition(V: Tensor) -> Tensor:
        return V if Mop is None else Mop.matmat(V)

    Z = precondition(R)
    P = Z.clone()
    rz = (R * Z).sum(dim=0)
    res = R.norm(dim=0)
    thresh = torch.clamp(rtol * bnorm, min=atol)
    active = res > thresh
    bad_precond = ((rz <= 0) & active).any() | ~torch.isfinite(rz).all()
    bad_op = torch.zeros((), dtype=torch.bool, device=B.device)
    bad_curv = torch.zeros((), dtype=torch.bool, device=B.device)
    iterations = 0
    while True:
        # One host sync per iteration: the convergence test plus error flags.
        status = torch.cat([torch.stack([bad_op, bad_curv, bad_precond]), active]).tolist()
        if status[0]:
            raise ValueError(f"operator returned non-finite values at CG iteration {iterations}")
        if status[1]:
            raise ValueError(
                f"A is not positive definite: p^T A p <= 0 at CG iteration {iterations}; "
                "use minres for symmetric indefinite systems"
            )
        if status[2]:
            raise ValueError("the preconditioner M is not positive definite: r^T M r <= 0")
        cols = [j for j, a in enumerate(status[3:]) if a]
        if not cols or iterations >= max_iters:
            break
        if len(cols) == r:
            idx = None
            Pa, Ra, rza = P, R, rz
        else:
            idx = torch.tensor(cols, device=B.device)
            Pa, Ra, rza = P[:, idx], R[:, idx], rz[idx]
        APa = op.matmat(Pa)
        num_matvecs += len(cols)
        pAp = (Pa * APa).sum(dim=0)
        bad_op = ~torch.isfinite(APa).all()
        bad_curv = (pAp <= 0).any()
        alpha = rza / torch.where(pAp > 0, pAp, torch.ones_like(pAp))
        Ra = Ra - alpha * APa
        Za = precondition(Ra)
        rz_new = (Ra * Za).sum(dim=0)
        res_a = Ra.norm(dim=0)
        bad_precond = ((rz_new <= 0) & (res_a > 0)).any()
        beta = rz_new / rza
        if idx is None:
            X = X + alpha * Pa
            R, P, rz, res = Ra, Za + beta * Pa, rz_new, res_a
        else:
            X[:, idx] = X[:, idx] + alpha * Pa
            R[:, idx] = Ra
            P[:, idx] = Za + beta * Pa
            rz[idx] = rz_new
            res[idx] = res_a
        active = res > thresh
        iterations += 1
    converged = not bool(active.any())
    x = X.squeeze(1) if b.ndim == 1 else X
    return SolveResult(
        x=x,
        converged=converged,
        iterations=iterations,
        residual_norm=res.squeeze(0) if b.ndim == 1 else res,
        num_matvecs=num_matvecs,
    )


def _minres_vector(
    op: LinearOperator,
    b: Tensor,
    x0: Tensor | None,
    shift: float,
    rtol: float,
    max_iters: int,
) -> tuple[Tensor, bool, int, Tensor, int]:
    """MINRES for one right-hand side (Paige-Saunders; unpreconditioned form of SciPy's).

    Returns:
        ``(x, converged, iterations, residual estimate, num_matvecs)``.

    Raises:
        ValueError: if the operator returns non-finite values.
    """
    f64 = torch.float64

    def apply(v: Tensor) -> Tensor:
        out = op.matmat(v.unsqueeze(1)).squeeze(1)
        return out - shift * v if shift != 0.0 else out

    num_matvecs = 0
    bnorm = b.norm().to(f64)
    thresh = rtol * bnorm
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    if x0 is None:
        r1 = b.clone()
    else:
        Ax = apply(x0)
        num_matvecs += 1
        r1 = b - Ax
    beta1 = r1.norm().to(f64)
    finite, zero_b, done = torch.stack(
        [torch.isfinite(r1).all(), bnorm == 0, beta1 <= thresh]
    ).tolist()
    if not finite:
        raise ValueError("operator returned non-finite values (A @ x0)")
    if zero_b:
        return (
            torch.zeros_like(b),
            True,
            0,
            torch.zeros((), dtype=f64, device=b.device),
            num_matvecs,
        )
    if done:
        return x, True, 0, beta1, num_matvecs

    zero = torch.zeros((), dtype=f64, device=b.device)
    eps = torch.tensor(torch.finfo(b.dtype).eps, dtype=f64, device=b.device)
    oldb, beta, dbar, epsln, phibar, tnorm = zero, beta1, zero, zero, beta1, zero
    cs, sn = -torch.ones((), dtype=f64, device=b.device), zero
    w = torch.zeros_like(b)
    w2 = torch.zeros_like(b)
    r2, y = r1, r1
    converged = False
    iterations = 0
    for itn in range(1, max_iters + 1):
        v = y / beta
        y = apply(v)
        num_matvecs += 1
        if itn >= 2:
            y = y - (beta / oldb) * r1
        alfa = (v * y).sum().to(f64)
        y = y - (alfa / beta) * r2
        r1, r2 = r2, y
        oldb, beta = beta, y.norm().to(f64)
        tnorm = torch.maximum(tnorm, torch.maximum(alfa.abs(), torch.maximum(oldb, beta)))
        # Apply the previous rotation, then compute the next one (QR of the tridiagonal).
        oldeps = epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        epsln = sn * beta
        dbar = -cs * beta
        gamma_raw = torch.hypot(gbar, beta)
        # gamma ~ 0: the projected matrix is singular (A - shift I singular and b not in its
        # range); the step adds nothing, so keep x and phibar and stop.
        singular = gamma_raw <= eps * tnorm
        gamma = torch.maximum(gamma_raw, eps * tnorm)
        cs, sn = gbar / gamma, beta / gamma
        phi = torch.where(singular, zero, cs * phibar)
        phibar = torch.where(singular, phibar, sn * phibar)
        w1, w2 = w2, w
        w = (v - oldeps * w1 - delta * w2) / gamma
        x = x + phi * w
        iterations = itn
        # One host sync per iteration: finiteness, convergence, breakdown.
        finite, conv, stop = torch.stack(
            [torch.isfinite(y).all(), phibar <= thresh, singular | (beta <= eps * tnorm)]
        ).tolist()
        if not finite:
            raise ValueError(f"operator returned non-finite values at MINRES iteration {itn}")
        if conv:
            converged = True
            break
        if stop:  # invariant Krylov space, residual not small: b is not in the range
            break
    return x, converged, iterations, phibar, num_matvecs


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
    residual decreases monotonically. It stops when the QR residual estimate ``phibar`` drops to
    ``rtol * ||b||``. A right-hand side block ``(n, r)`` is solved column by column (a loop, one
    matvec per column and iteration).

    Args:
        A: a symmetric ``(n, n)`` tensor or operator.
        b: right-hand side, ``(n,)`` or ``(n, r)``, in ``A``'s dtype.
        shift: real ``sigma`` in ``(A - sigma I) x = b``.
        x0: initial guess shaped like ``b`` (not modified); zero when omitted.
        rtol: relative tolerance; default :func:`~subspaces._checks.default_tol` of the dtype.
        max_iters: iteration limit per column; default ``10 * n``.

    Returns:
        A :class:`SolveResult` (``x``, ``converged``, ``iterations``, ``residual_norm``,
        ``num_matvecs``).

    Raises:
        ValueError: if ``A`` is not square, ``b``/``x0`` has the wrong shape or non-finite
            entries, ``shift`` is not finite, or the operator returns non-finite values.
        TypeError: if ``b`` or ``x0`` has the wrong type or dtype.

    Example:
        >>> A = torch.diag(torch.tensor([3.0, -2.0, 1.0], dtype=torch.float64))
        >>> b = torch.ones(3, dtype=torch.float64)
        >>> res = minres(A, b, shift=0.5)
        >>> bool(torch.allclose(res.x, b / torch.tensor([2.5, -2.5, 0.5], dtype=torch.float64)))
        True
        >>> res.converged, res.iterations  # three distinct eigenvalues: exact after 3 steps
        (True, 3)

    References:
        Paige, Saunders, SIAM J. Numer. Anal. 12(4), 1975.
    """
    op, b, x0 = _validate_system(A, b, x0)
    n = op.shape[0]
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift):
        raise ValueError(f"shift must be a finite real number, got {shift!r}")
    rtol = (
        default_tol(op.dtype)
        if rtol is None
        else check_positive_float(rtol, "rtol", allow_zero=True)
    )
    max_iters = (
        10 * n if max_iters is None else check_positive_int(max_iters, "max_iters", minimum=0)
    )
    B = _as_block(b)
    X0 = None if x0 is None else _as_block(x0)
    xs, norms = [], []
    converged, iterations, num_matvecs = True, 0, 0
    for j in range(B.shape[1]):
        xj, cj, itj, rj, mj = _minres_vector(
            op, B[:, j], None if X0 is None else X0[:, j], float(shift), rtol, max_iters
        )
        xs.append(xj)
        norms.append(rj)
        converged = converged and cj
        iterations = max(iterations, itj)
        num_matvecs += mj
    X = torch.stack(xs, dim=1)
    res = torch.stack(norms)
    return SolveResult(
        x=X.squeeze(1) if b.ndim == 1 else X,
        converged=converged,
        iterations=iterations,
        residual_norm=res.squeeze(0) if b.ndim == 1 else res,
        num_matvecs=num_matvecs,
    )
