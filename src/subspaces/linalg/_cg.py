"""Preconditioned conjugate gradients for a block of right-hand sides (``cg``).

The block path runs the CG recurrence on every column at once; a single right-hand side on the
CPU runs a vector version of the same recurrence (in-place NumPy updates on buffers shared with
the tensors, the same floating-point operations, bit-identical results). Convergence is
certified on the true residual recomputed at exit, with one restart from it when the recursive
estimate drifted.

References:
    Hestenes, Stiefel. "Methods of conjugate gradients for solving linear systems." J. Res. Nat.
    Bur. Standards 49(6), 1952.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from .._checks import check_positive_float, check_positive_int, default_tol
from ..linops.base import LinearOperator, as_operator
from ._precision import in_working_precision
from ._systems import SolveResult, _as_block, _working_system

__all__ = ["cg"]


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
    iterates until its recursively updated residual meets ``max(rtol * ||b_j||, atol)``; then the
    true residual ``b_j - A x_j`` is recomputed (one product) and only it decides ``converged``.
    In finite precision the two drift apart (by about ``eps * cond(A)``): a column whose true
    residual misses the tolerance restarts from it while restarts at least halve it, and is
    reported ``status="stagnated"`` otherwise. The returned ``x_j`` is the iterate with the
    smallest true residual (never worse than ``x0``). A zero column of ``b`` gets ``x_j = 0``.
    Half precision systems are solved in float32 with products in the operator's dtype. In exact
    arithmetic the error after ``k`` iterations satisfies ``||e_k||_A <= 2 ((sqrt(kappa) - 1) /
    (sqrt(kappa) + 1))^k ||e_0||_A`` with ``kappa`` the condition number of the preconditioned
    matrix.

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
        ``num_matvecs``, ``status``). Not converging is reported, not raised.

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
    op, b, x0, out_dtype = _working_system(A, b, x0)
    n = op.shape[0]
    Mop: LinearOperator | None = None
    if M is not None:
        Mop = as_operator(M)
        if Mop.shape != (n, n):
            raise ValueError(f"M must have shape ({n}, {n}), got {Mop.shape}")
        if Mop.dtype != out_dtype:
            raise TypeError(f"M has dtype {Mop.dtype} but A has dtype {out_dtype}")
        Mop = in_working_precision(Mop)
    rtol = (
        default_tol(out_dtype)
        if rtol is None
        else check_positive_float(rtol, "rtol", allow_zero=True)
    )
    atol = check_positive_float(atol, "atol", allow_zero=True)
    max_iters = (
        10 * n if max_iters is None else check_positive_int(max_iters, "max_iters", minimum=0)
    )

    B = _as_block(b)
    r = B.shape[1]
    bnorm = B.norm(dim=0)
    nonzero = bnorm > 0
    thresh = torch.clamp(rtol * bnorm, min=atol)
    if x0 is None:
        X = torch.zeros_like(B)
        R = B.clone()
        num_matvecs = 0
    else:
        X = torch.where(nonzero, _as_block(x0), torch.zeros_like(B))
        R, num_matvecs = _true_residual(op, B, X), r

    # Shapes and dtypes are checked once above; the iterations call the products directly.
    product = _unchecked_matmat(op)
    apply_m = None if Mop is None else _unchecked_matmat(Mop)

    # CG runs in cycles. A cycle iterates on the recursively updated residual until it meets the
    # tolerance; then the true residual b - A x is recomputed (one product per column). A column
    # whose true residual misses the tolerance is restarted from it (residual replacement), as
    # long as each cycle at least halves the true residual; otherwise it has stagnated at the
    # precision the dtype delivers for this conditioning, and is reported unconverged.
    res = R.norm(dim=0)
    start_res = res.clone()
    # The best iterate per column by true residual (CG minimizes the A-norm of the error, not
    # the residual, and rounding can make late iterates worse than the start).
    best_X, best_res = X.clone(), res.clone()
    frozen = torch.zeros(r, dtype=torch.bool, device=B.device)
    iterations = 0
    # One right-hand side on the CPU runs on vectors with in-place updates (same arithmetic,
    # less overhead).
    cycle = _cg_cycle_vector if r == 1 and B.device.type == "cpu" else _cg_cycle
    while True:
        X, R, its, mv = cycle(
            product, apply_m, X, R, thresh, frozen, max_iters - iterations, iterations
        )
        iterations += its
        num_matvecs += mv
        if its > 0:  # certify on the true residual (one product per column)
            R = _true_residual(op, B, X)
            num_matvecs += r
        res = R.norm(dim=0)
        better = res < best_res
        best_X = torch.where(better, X, best_X)
        best_res = torch.where(better, res, best_res)
        missed = (res > thresh) & ~frozen
        if not bool(missed.any()) or iterations >= max_iters:
            break
        # Columns that did not halve their true residual over the cycle have stagnated.
        frozen = frozen | (missed & (res > 0.5 * start_res))
        start_res = torch.where(missed, res, start_res)
        if bool(frozen[missed].all()):
            break
    res = best_res
    conv = res <= thresh
    status = _status(conv, frozen, "max_iters")
    x = best_X.to(out_dtype)
    return SolveResult(
        x=x.squeeze(1) if b.ndim == 1 else x,
        converged=bool(conv.all()),
        iterations=iterations,
        residual_norm=res.squeeze(0) if b.ndim == 1 else res,
        num_matvecs=num_matvecs,
        status=status,
    )


def _true_residual(op: LinearOperator, B: Tensor, X: Tensor) -> Tensor:
    """``B - A X`` from one product.

    Returns:
        The residual block.

    Raises:
        ValueError: if the product is not finite.
    """
    AX = op.matmat(X)
    # A finite sum implies finite entries (an inf or NaN entry makes the sum inf or NaN); the
    # entrywise scan, ~20x the cost of the sum, only runs to rule out an overflowed sum.
    if not bool(torch.isfinite(AX.sum())) and not bool(torch.isfinite(AX).all()):
        raise ValueError("operator returned non-finite values (A @ x)")
    return B - AX


def _status(conv: Tensor, stalled: Tensor, otherwise: str, extra: Tensor | None = None) -> str:
    """Summarise per-column outcomes into :attr:`SolveResult.status`.

    Returns:
        ``"converged"`` or the reasons of the unconverged columns, joined by ``", "``.
    """
    reasons = set()
    for j, ok in enumerate(conv.tolist()):
        if ok:
            continue
        if extra is not None and bool(extra[j]):
            reasons.add("least_squares")
        elif bool(stalled[j]):
            reasons.add("stagnated")
        else:
            reasons.add(otherwise)
    return ", ".join(sorted(reasons)) if reasons else "converged"


def _cg_cycle(
    product: Callable[[Tensor], Tensor],
    apply_m: Callable[[Tensor], Tensor] | None,
    X: Tensor,
    R: Tensor,
    thresh: Tensor,
    frozen: Tensor,
    max_iters: int,
    offset: int,
) -> tuple[Tensor, Tensor, int, int]:
    """One CG cycle from ``(X, R)`` until every unfrozen column's recursive residual is small.

    ``product`` applies ``A`` and ``apply_m`` the preconditioner (``None``: the identity) to a
    block, both without input checks (:func:`_unchecked_matmat`).

    Returns:
        ``(X, R, iterations, num_matvecs)`` with ``R`` the recursively updated residual.

    Raises:
        ValueError: if ``A`` or the preconditioner is not positive definite or a product is not
            finite.
    """
    X, R = X.clone(), R.clone()
    Z = R if apply_m is None else apply_m(R)
    P = Z.clone()
    rz = (R * Z).sum(dim=0)
    res = R.norm(dim=0)
    # r^T M r < 0: M is not positive definite. r^T M r = 0 with r != 0 is underflow (r at the
    # bottom of the dtype's range): that column cannot move any more and stops.
    active = (res > thresh) & ~frozen & (rz > 0)
    bad_precond = (rz < 0).any() | ~torch.isfinite(rz).all()
    bad_op = torch.zeros((), dtype=torch.bool, device=X.device)
    bad_curv = torch.zeros((), dtype=torch.bool, device=X.device)
    iterations, num_matvecs, r = 0, 0, X.shape[1]
    APa = X  # only read after a product has been taken
    while True:
        # One host sync per iteration: the convergence test plus error flags.
        status = torch.cat([torch.stack([bad_op, bad_curv, bad_precond]), active]).tolist()
        if status[0]:
            _raise_non_finite(APa, offset + iterations)
        if status[1]:
            raise ValueError(
                f"A is not positive definite: p^T A p <= 0 at CG iteration "
                f"{offset + iterations}; use minres for symmetric indefinite systems"
            )
        if status[2]:
            raise ValueError("the preconditioner M is not positive definite: r^T M r < 0")
        cols = [j for j, a in enumerate(status[3:]) if a]
        if not cols or iterations >= max_iters:
            break
        if len(cols) == r:
            idx = None
            Pa, Ra, rza = P, R, rz
        else:
            idx = torch.tensor(cols, device=X.device)
            Pa, Ra, rza = P[:, idx], R[:, idx], rz[idx]
        APa = product(Pa)
        num_matvecs += len(cols)
        pAp = (Pa * APa).sum(dim=0)
        # A non-finite entry of A p makes p^T A p non-finite (0 * inf is NaN), so testing the
        # r sums is exact and far cheaper than scanning A p; a finite A p whose p^T A p
        # overflowed is reported as such.
        bad_op = ~torch.isfinite(pAp).all()
        bad_curv = (pAp <= 0).any()
        alpha = rza / torch.where(pAp > 0, pAp, torch.ones_like(pAp))
        Ra = Ra - alpha * APa
        Za = Ra if apply_m is None else apply_m(Ra)
        rz_new = (Ra * Za).sum(dim=0)
        res_a = Ra.norm(dim=0)
        bad_precond = (rz_new < 0).any()
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
        active = (res > thresh) & ~frozen & (rz > 0)
        iterations += 1
    return X, R, iterations, num_matvecs


def _raise_non_finite(Ap: Tensor, iteration: int) -> None:
    """Raise for a non-finite ``p^T A p``: a non-finite product, else an overflow.

    Raises:
        ValueError: always.
    """
    if not bool(torch.isfinite(Ap).all()):
        raise ValueError(f"operator returned non-finite values at CG iteration {iteration}")
    raise ValueError(
        f"p^T A p overflowed at CG iteration {iteration}: rescale A or b (the products are "
        "finite but their inner product is not)"
    )


def _cg_cycle_vector(
    product: Callable[[Tensor], Tensor],
    apply_m: Callable[[Tensor], Tensor] | None,
    X: Tensor,
    R: Tensor,
    thresh: Tensor,
    frozen: Tensor,
    max_iters: int,
    offset: int,
) -> tuple[Tensor, Tensor, int, int]:
    """:func:`_cg_cycle` for one column on the CPU: the same recurrence on vectors, in place.

    The vectors live in NumPy arrays shared with tensors (no copies): the element-wise updates
    run in NumPy (a third of torch's per-call overhead at these sizes), the two inner products
    as a NumPy product then a torch ``sum`` and the residual norm by torch's ``vector_norm``.
    Every operation rounds like the block version's: element-wise products, sums and the
    scalar divisions are single IEEE operations in either library (no fused multiply-adds),
    ``x + alpha p`` is a product then a sum, ``p <- z + beta p``, and the reductions are
    torch's with the block path's summation order (not a BLAS dot). So the iterates, iteration
    counts and results are bit for bit those of the block path (checked in the tests).

    Returns:
        ``(X, R, iterations, num_matvecs)`` as ``(n, 1)`` blocks.

    Raises:
        ValueError: as :func:`_cg_cycle`.
    """
    x_t, r_t = X[:, 0].clone(), R[:, 0].clone()
    thresh_f = float(thresh[0])
    if bool(frozen[0]):
        return x_t.unsqueeze(1), r_t.unsqueeze(1), 0, 0
    r_col = r_t.unsqueeze(1)  # a view: in-place updates of r show through
    z_t = r_t if apply_m is None else apply_m(r_col)[:, 0]
    p_t = z_t.clone()
    p_col = p_t.unsqueeze(1)
    tmp_t = torch.empty_like(x_t)
    x, r, z, p, tmp = (_numpy(t) for t in (x_t, r_t, z_t, p_t, tmp_t))
    scalar = x.dtype.type  # exact: a sum's ``item`` is its value in double precision
    np.multiply(r, z, out=tmp)
    rz = scalar(tmp_t.sum().item())
    rz_f, res_f = float(rz), torch.linalg.vector_norm(r_t).item()
    if not (rz_f >= 0 and math.isfinite(rz_f)):
        raise ValueError("the preconditioner M is not positive definite: r^T M r < 0")
    iterations = 0
    with np.errstate(all="ignore"):  # every non-finite value is checked below
        # r^T M r = 0 with r != 0 is underflow: that column cannot move any more and stops.
        while res_f > thresh_f and rz_f > 0 and iterations < max_iters:
            Ap_t = product(p_col)
            Ap = _numpy(Ap_t)[:, 0]
            np.multiply(p, Ap, out=tmp)
            pAp = scalar(tmp_t.sum().item())
            pAp_f = float(pAp)
            iterations += 1
            if not math.isfinite(pAp_f):
                _raise_non_finite(Ap_t, offset + iterations)
            if pAp_f <= 0:
                raise ValueError(
                    f"A is not positive definite: p^T A p <= 0 at CG iteration "
                    f"{offset + iterations}; use minres for symmetric indefinite systems"
                )
            alpha = rz / pAp
            x += np.multiply(p, alpha, out=tmp)
            r -= np.multiply(Ap, alpha, out=tmp)
            if apply_m is not None:
                z = _numpy(apply_m(r_col))[:, 0]
            np.multiply(r, z, out=tmp)
            rz_new = scalar(tmp_t.sum().item())
            rz_new_f, res_f = float(rz_new), torch.linalg.vector_norm(r_t).item()
            if rz_new_f < 0:
                raise ValueError("the preconditioner M is not positive definite: r^T M r < 0")
            beta = rz_new / rz
            np.add(np.multiply(p, beta, out=p), z, out=p)  # z + beta p (addition commutes)
            rz, rz_f = rz_new, rz_new_f
    return x_t.unsqueeze(1), r_t.unsqueeze(1), iterations, iterations


def _numpy(t: Tensor) -> np.ndarray:
    """A CPU tensor's values as a NumPy array sharing its memory (a 0-d array for a scalar).

    Returns:
        The array.
    """
    return (t.detach() if t.requires_grad else t).resolve_neg().numpy()


def _unchecked_matmat(op: LinearOperator) -> Callable[[Tensor], Tensor]:
    """``op``'s product without :meth:`LinearOperator.matmat`'s input checks.

    The solver checks shapes and dtypes once; inside the iterations the checks only cost time.
    An operator that overrides ``matmat`` itself keeps it.

    Returns:
        A function ``X -> op @ X`` for ``(n, b)`` blocks with ``b >= 1``.
    """
    if type(op).matmat is LinearOperator.matmat:
        return op._matmat
    return op.matmat
