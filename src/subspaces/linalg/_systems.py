"""What the Krylov solvers share: the result type and the validation of a linear system."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor
from ..linops.base import LinearOperator, as_operator
from ._precision import in_working_precision

__all__ = ["SolveResult"]


@dataclass(frozen=True, eq=False)
class SolveResult:
    """Output of :func:`cg` and :func:`minres`.

    Attributes:
        x: the solution, shaped like ``b`` (``(n,)`` or ``(n, r)``), in ``b``'s dtype.
        converged: whether every column met its tolerance, judged on the true residual
            ``||b - A x||`` recomputed from the returned ``x`` (one product per column at exit),
            never on the solver's recursive estimate alone.
        iterations: iterations run (the largest over columns, restarts included).
        residual_norm: the true residual norm ``||b_j - A x_j||`` per column (``()`` for a
            vector ``b``, ``(r,)`` otherwise), recomputed from the returned ``x``.
        num_matvecs: columns multiplied by ``A`` (preconditioner applications not included;
            the products that recompute the true residual are included).
        status: why the solver stopped: ``"converged"``; ``"max_iters"``; ``"stagnated"`` (the
            recursive residual met the tolerance but the true one did not and a restart from the
            true residual stopped reducing it: the tolerance is below what the dtype delivers
            at this condition number, about ``eps * cond(A)``); ``"least_squares"`` (MINRES
            only: ``||A r|| <= sqrt(eps) ||A|| ||r||``, so ``b`` is not in the range of a
            (numerically) singular ``A`` and ``x`` is a least-squares solution, not necessarily
            the minimum-norm one).
            Several reasons are joined by ``", "`` for a block of right-hand sides.
        residual_history: the recursive residual norm before each iteration and after the
            last, ``(iterations + 1,)`` (``(iterations + 1, r)`` for a block), for solvers that
            record it (:func:`subspaces.solvers.flexible_cg`, :func:`subspaces.solvers.dcdm`);
            ``None`` otherwise.
    """

    x: Tensor
    converged: bool
    iterations: int
    residual_norm: Tensor
    num_matvecs: int
    status: str = "converged"
    residual_history: Tensor | None = None


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


def _working_system(
    A: Tensor | LinearOperator, b: Tensor, x0: Tensor | None
) -> tuple[LinearOperator, Tensor, Tensor | None, torch.dtype]:
    """:func:`_validate_system`, then the system in its working precision.

    Returns:
        ``(operator, b, x0, dtype of the caller's b)``: half-precision operators run in float32
        (:func:`~subspaces.linalg._precision.in_working_precision`), ``b`` and ``x0`` cast to
        match; the solver casts its solution back to the last dtype.
    """
    op, b, x0 = _validate_system(A, b, x0)
    out_dtype = b.dtype
    op = in_working_precision(op)
    return op, b.to(op.dtype), None if x0 is None else x0.to(op.dtype), out_dtype
