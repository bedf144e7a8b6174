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
