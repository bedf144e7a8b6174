"""Restarted Krylov-type iterations certified on the true residual (shared by DCDM and flexible CG).

A *cycle* runs a recurrence (conjugate directions from a network, or flexible PCG) from ``(x, r)``
until its recursive residual meets the threshold, its budget ends, or it breaks down. Recursive
residuals drift from ``b - A x``; :func:`restarted_solve` therefore recomputes the true residual
after every cycle, keeps the best iterate, restarts from it, and stops when the true residual meets
the threshold, the iteration budget is spent, or a cycle fails to halve the residual
(``"stagnated"``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._checks import check_positive_float, check_positive_int, default_tol
from ..linalg.solvers import SolveResult
from ..linops.base import LinearOperator

# cycle(x, r, thresh, budget, iterations_so_far, history) -> (x, r, iterations, matvecs)
Cycle = Callable[[Tensor, Tensor, float, int, int, list[float]], tuple[Tensor, Tensor, int, int]]


def restarted_solve(
    op: LinearOperator,
    b: Tensor,
    x0: Tensor | None,
    thresh: float,
    max_iters: int,
    cycle: Cycle,
) -> tuple[Tensor, Tensor, Tensor, str, int, int]:
    """Run ``cycle`` from ``x0`` (or zero) with restarts on the true residual.

    Args:
        op: the operator ``A``.
        b: the right-hand side (one column).
        x0: the starting point, or ``None`` for zero.
        thresh: the absolute residual threshold.
        max_iters: the iteration budget over all cycles.
        cycle: one cycle (see the module docstring).

    Returns:
        ``(x, true residual norm, residual history, status, iterations, num_matvecs)``.

    Raises:
        ValueError: if ``A x`` is not finite.
    """

    def residual(x: Tensor) -> Tensor:
        Ax = op.matvec(x)
        if not bool(torch.isfinite(Ax).all()):
            raise ValueError("operator returned non-finite values (A @ x)")
        return b - Ax

    if x0 is None:
        x, r, num_matvecs = torch.zeros_like(b), b.clone(), 0
    else:
        x, num_matvecs = x0.clone(), 1
        r = residual(x)
    history = [float(r.norm())]
    best_x, best_res = x, history[0]
    iterations, status = 0, "max_iters"
    while best_res > thresh and iterations < max_iters:
        start = float(r.norm())
        x, r, its, mv = cycle(x, r, thresh, max_iters - iterations, iterations, history)
        iterations += its
        num_matvecs += mv
        if its == 0:
            break
        r = residual(x)
        num_matvecs += 1
        res = float(r.norm())
        if res < best_res:
            best_x, best_res = x, res
        if res > thresh and res > 0.5 * start:
            status = "stagnated"
            break
    if best_res <= thresh:
        status = "converged"
    hist = torch.tensor(history, dtype=b.dtype, device=b.device)
    return best_x, torch.tensor(best_res, dtype=b.dtype), hist, status, iterations, num_matvecs


def solve_by_columns(
    op: LinearOperator,
    b: Tensor,
    x0: Tensor | None,
    rtol: float | None,
    atol: float,
    max_iters: int | None,
    cycle: Cycle,
) -> SolveResult:
    """:func:`restarted_solve` on every column of ``b``, assembled into a :class:`SolveResult`.

    Args:
        op: the operator ``A`` (validated by the caller).
        b: ``(n,)`` or ``(n, k)`` right-hand sides.
        x0: starting points of ``b``'s shape, or ``None``.
        rtol: relative tolerance (``None``: the dtype's default).
        atol: absolute tolerance.
        max_iters: iteration budget per column (``None``: ``10 n``).
        cycle: one cycle (the same for every column).

    Returns:
        The result; histories of columns that stopped early are padded with their last value.

    Raises:
        ValueError: for negative tolerances or budgets, or a non-finite ``A x``.
    """
    n = op.shape[0]
    rtol = (
        default_tol(b.dtype)
        if rtol is None
        else check_positive_float(rtol, "rtol", allow_zero=True)
    )
    atol = check_positive_float(atol, "atol", allow_zero=True)
    budget = 10 * n if max_iters is None else check_positive_int(max_iters, "max_iters", minimum=0)
    B = b.unsqueeze(1) if b.ndim == 1 else b
    X0 = None if x0 is None else (x0.unsqueeze(1) if x0.ndim == 1 else x0)
    if B.shape[1] == 0:
        return SolveResult(B.clone(), True, 0, B.new_zeros(0), 0, "converged", B.new_zeros(1, 0))
    xs, norms, hists, statuses = [], [], [], []
    iterations, num_matvecs = 0, 0
    for j in range(B.shape[1]):
        thresh = max(rtol * float(B[:, j].norm()), atol)
        x0j = None if X0 is None else X0[:, j]
        xj, rj, hj, sj, itj, mj = restarted_solve(op, B[:, j], x0j, thresh, budget, cycle)
        xs.append(xj)
        norms.append(rj)
        hists.append(hj)
        statuses.append(sj)
        iterations = max(iterations, itj)
        num_matvecs += mj
    reasons = sorted({s for s in statuses if s != "converged"})
    length = max(h.numel() for h in hists)
    H = torch.stack([torch.cat([h, h[-1:].expand(length - h.numel())]) for h in hists], dim=1)
    X, res = torch.stack(xs, dim=1), torch.stack(norms)
    vec = b.ndim == 1
    return SolveResult(
        x=X.squeeze(1) if vec else X,
        converged=not reasons,
        iterations=iterations,
        residual_norm=res.squeeze(0) if vec else res,
        num_matvecs=num_matvecs,
        status=", ".join(reasons) if reasons else "converged",
        residual_history=H.squeeze(1) if vec else H,
    )
