"""Flexible preconditioned conjugate gradients: the preconditioner may change every iteration.

With a fixed symmetric positive definite preconditioner, PCG's Fletcher-Reeves coefficient
``beta = z_{k+1}^T r_{k+1} / z_k^T r_k`` keeps the search directions A-conjugate. When the
preconditioner is non-linear or changes between iterations (an inner iterative solve, a neural
network), that conjugacy is lost and the Polak-Ribiere coefficient
``beta = z_{k+1}^T (r_{k+1} - r_k) / z_k^T r_k`` restores the local A-orthogonality of
consecutive directions, which keeps the method convergent (Golub & Ye 1999; Notay 2000).

References:
    Golub, Ye. "Inexact preconditioned conjugate gradient method with inner-outer iteration."
    SIAM J. Sci. Comput. 21(4), 1999.
    Notay. "Flexible conjugate gradients." SIAM J. Sci. Comput. 22(4), 2000.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from .._checks import check_choice
from ..linalg._systems import SolveResult, _validate_system
from ..linops.base import LinearOperator, as_operator
from ._cycles import solve_by_columns

__all__ = ["Preconditioner", "flexible_cg"]

Preconditioner = Tensor | LinearOperator | Callable[[Tensor, int], Tensor]
"""A fixed SPD matrix/operator ``M ~ A^{-1}``, or a callable ``z = M(r, iteration)``."""

Beta = Literal["polak_ribiere", "fletcher_reeves"]


def _preconditioner(
    M: Preconditioner | None, n: int, dtype: torch.dtype
) -> Callable[[Tensor, int], Tensor]:
    """Normalise ``M`` to a callable ``(r, k) -> z`` that validates its output.

    Returns:
        The callable.

    Raises:
        ValueError: if a matrix/operator ``M`` has the wrong shape.
        TypeError: if ``M`` has the wrong dtype or type.
    """
    if M is None:
        return lambda r, k: r
    if isinstance(M, (Tensor, LinearOperator)):
        op = as_operator(M)
        if op.shape != (n, n):
            raise ValueError(f"M must have shape ({n}, {n}), got {op.shape}")
        if op.dtype != dtype:
            raise TypeError(f"M has dtype {op.dtype} but A has dtype {dtype}")
        return lambda r, k: op.matvec(r)
    if callable(M):
        fn = M

        def apply(r: Tensor, k: int) -> Tensor:
            z = fn(r, k)
            if not isinstance(z, Tensor) or z.shape != r.shape:
                got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
                raise ValueError(
                    f"the preconditioner returned {got}; expected a tensor of shape "
                    f"{tuple(r.shape)}"
                )
            return z.to(r.dtype)

        return apply
    raise TypeError(
        f"M must be a tensor, a LinearOperator or a callable (r, k) -> z, got {type(M).__name__}"
    )


def flexible_cg(
    A: Tensor | LinearOperator,
    b: Tensor,
    *,
    M: Preconditioner | None = None,
    x0: Tensor | None = None,
    rtol: float | None = None,
    atol: float = 0.0,
    max_iters: int | None = None,
    beta: Beta = "polak_ribiere",
) -> SolveResult:
    """Solve SPD ``A x = b`` by flexible PCG with a possibly iteration-dependent preconditioner.

    Each iteration: ``z_k = M(r_k, k)``, ``p_k = z_k + beta_k p_{k-1}``, exact line search
    ``alpha_k = z_k^T r_k / p_k^T A p_k``. Stops when the recursive residual meets
    ``max(rtol ||b||, atol)`` (scipy's definition); the true residual ``b - A x`` is then
    recomputed and alone decides ``converged``; if it misses the tolerance, the iteration
    restarts from it while restarts at least halve it (``status="stagnated"`` otherwise). With
    ``M=None`` and ``beta="fletcher_reeves"`` this is textbook CG. A block ``b`` of shape
    ``(n, r)`` is solved column by column.

    Args:
        A: symmetric positive definite ``(n, n)`` tensor or operator.
        b: right-hand side ``(n,)`` or ``(n, r)`` in ``A``'s dtype (float32 or float64).
        M: a fixed SPD preconditioner (tensor or operator applying ``~A^{-1}``) or a callable
            ``z = M(r, iteration)`` that may be non-linear and change between iterations;
            identity if omitted.
        x0: initial guess shaped like ``b``; zero if omitted.
        rtol: relative tolerance (default :func:`~subspaces._checks.default_tol`).
        atol: absolute tolerance.
        max_iters: iteration limit per column (default ``10 n``).
        beta: ``"polak_ribiere"`` (flexible, default) or ``"fletcher_reeves"`` (classic PCG).

    Returns:
        A :class:`~subspaces.linalg.SolveResult` with ``residual_history``.

    Raises:
        ValueError: if shapes do not match, inputs are not finite, ``A`` is not positive
            definite (``p^T A p <= 0``), the preconditioner is not positive (``z^T r <= 0``) or
            returns non-finite values, or the operator returns non-finite values.
        TypeError: on wrong types or dtypes.

    Example:
        >>> from subspaces.solvers import poisson_2d, jacobi
        >>> A = poisson_2d(8)
        >>> b = torch.ones(A.n, dtype=torch.float64)
        >>> def M(r, k):  # a different (Jacobi-scaled) preconditioner every other step
        ...     return r / A.diagonal() if k % 2 else r
        >>> res = flexible_cg(A, b, M=M, rtol=1e-10)
        >>> res.converged, bool(torch.linalg.norm(b - A @ res.x) <= 1e-10 * b.norm())
        (True, True)

    References:
        Notay, "Flexible conjugate gradients", SIAM J. Sci. Comput. 22(4), 2000.
    """
    op, b, x0 = _validate_system(A, b, x0)
    if b.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"flexible_cg works in float32 or float64, got {b.dtype}")
    prec = _preconditioner(M, op.shape[0], b.dtype)
    beta = check_choice(beta, "beta", ("polak_ribiere", "fletcher_reeves"))  # type: ignore[assignment]

    def cycle(
        x: Tensor, r: Tensor, thresh: float, budget: int, done: int, history: list[float]
    ) -> tuple[Tensor, Tensor, int, int]:
        x, r, its = _cycle(op, prec, x, r, thresh, budget, done, beta, history)
        return x, r, its, its  # one product per iteration

    return solve_by_columns(op, b, x0, rtol, atol, max_iters, cycle)


def _cycle(
    op: LinearOperator,
    prec: Callable[[Tensor, int], Tensor],
    x: Tensor,
    r: Tensor,
    thresh: float,
    max_iters: int,
    offset: int,
    beta: str,
    history: list[float],
) -> tuple[Tensor, Tensor, int]:
    """Flexible PCG iterations from ``(x, r)`` until the recursive residual meets ``thresh``.

    Returns:
        ``(x, recursive residual, iterations)``; appends residual norms to ``history``.

    Raises:
        ValueError: on non-positive curvature, a non-positive preconditioner or non-finite
            products.
    """
    its = 0
    if float(r.norm()) <= thresh or max_iters <= 0:
        return x, r, 0
    z = _checked_prec(prec, r, offset)
    rz = float(r @ z)
    p = z
    while True:
        k = offset + its
        Ap = op.matvec(p)
        if not bool(torch.isfinite(Ap).all()):
            raise ValueError(f"operator returned non-finite values at iteration {k}")
        pAp = float(p @ Ap)
        if pAp <= 0:
            raise ValueError(
                f"A is not positive definite: p^T A p = {pAp:.3e} <= 0 at iteration {k}; "
                "use subspaces.linalg.minres for symmetric indefinite systems"
            )
        alpha = rz / pAp
        x = x + alpha * p
        r_new = r - alpha * Ap
        its += 1
        res = float(r_new.norm())
        history.append(res)
        if res <= thresh or its >= max_iters:
            return x, r_new, its
        z_new = _checked_prec(prec, r_new, k + 1)
        rz_new = float(r_new @ z_new)
        num = float(z_new @ (r_new - r)) if beta == "polak_ribiere" else rz_new
        p = z_new + (num / rz) * p
        r, rz = r_new, rz_new


def _checked_prec(prec: Callable[[Tensor, int], Tensor], r: Tensor, k: int) -> Tensor:
    """Apply the preconditioner and check ``z`` is finite and ``z^T r > 0``.

    Returns:
        ``z``.

    Raises:
        ValueError: if ``z`` is not finite or ``z^T r <= 0``.
    """
    z = prec(r, k)
    if not bool(torch.isfinite(z).all()):
        raise ValueError(f"the preconditioner returned non-finite values at iteration {k}")
    if float(r @ z) <= 0:
        raise ValueError(
            f"the preconditioner is not positive at iteration {k}: z^T r = {float(r @ z):.3e} <= 0"
        )
    return z
