r"""Implicit-differentiation hypergradients by conjugate gradients, and the AID baseline solver.

For ``min_x F(x, y*(x))`` with ``y*(x) = argmin_y g(x, y)`` and ``g`` strongly convex in ``y``, the
implicit function theorem gives the hypergradient

    dF/dx = grad_x F - grad_xy^2 g  v,    grad_yy^2 g  v = grad_y F,

with both second-order terms applied as Hessian-vector products (double backward), and the linear
system solved by :func:`subspaces.linalg.cg` on a matrix-free operator: no Hessian is formed or
inverted (Pedregosa, "Hyperparameter optimization with approximate gradient", ICML 2016,
arXiv:1602.02355; Ghadimi & Wang, "Approximation methods for bilevel programming",
arXiv:1802.02246). :func:`aid_solve` is the resulting approximate-implicit-differentiation
baseline: warm-started inner gradient steps, a CG solve and a projected hypergradient step per
outer iteration. It is the baseline LV-HBA (Yao et al., arXiv:2401.16164) and BSVRB (Hu et al.,
arXiv:2305.18730) are compared against.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor, check_positive_float, check_positive_int
from ..linalg.solvers import SolveResult, cg
from ..linops.structured import MatmatOperator
from .projections import ConvexSet, Reals
from .result import BilevelResult, History, check_finite_step

__all__ = ["aid_solve", "implicit_hypergradient"]

Objective = Callable[[Tensor, Tensor], Tensor]


def implicit_hypergradient(
    F: Objective,
    g: Objective,
    x: Tensor,
    y: Tensor,
    *,
    rtol: float | None = None,
    max_iters: int | None = None,
    v0: Tensor | None = None,
) -> tuple[Tensor, SolveResult]:
    """The implicit-differentiation hypergradient at ``(x, y)``, ``y`` the lower-level solution.

    Args:
        F: upper-level objective ``F(x, y)``.
        g: lower-level objective ``g(x, y)``, twice differentiable, strongly convex in ``y``.
        x: upper-level variable, 1-D float tensor.
        y: (approximate) lower-level solution, 1-D float tensor of ``x``'s dtype.
        rtol: CG relative tolerance (default of :func:`~subspaces.linalg.cg` for the dtype).
        max_iters: CG iteration limit (default ``10 * len(y)``).
        v0: warm start for the CG solution ``v`` (e.g. the previous outer iteration's).

    Returns:
        ``(hypergradient, solve)``; ``solve.x`` is ``v`` and ``solve.converged`` /
        ``solve.residual_norm`` report the recomputed residual of ``grad_yy^2 g v = grad_y F``.

    Raises:
        TypeError: for non-float or mismatched inputs.
        ValueError: for non-finite inputs, objectives or products, or a lower-level Hessian
            that is not positive definite along the CG directions.

    Example:
        >>> # g = (y - A x)^2 / 2 gives y*(x) = A x; F = |y - b|^2 / 2: dF/dx = A^T (A x - b)
        >>> A = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, -1.0], dtype=torch.float64)
        >>> x = torch.tensor([0.5, 0.25], dtype=torch.float64)
        >>> F = lambda x, y: 0.5 * ((y - b) ** 2).sum()
        >>> g = lambda x, y: 0.5 * ((y - A @ x) ** 2).sum()
        >>> h, solve = implicit_hypergradient(F, g, x, A @ x)
        >>> bool(torch.allclose(h, A.T @ (A @ x - b))), solve.converged
        (True, True)
    """
    x = check_finite(check_float_tensor(x, "x", ndim=1), "x").detach()
    y = check_finite(check_float_tensor(y, "y", ndim=1), "y").detach()
    if y.dtype != x.dtype:
        raise TypeError(f"y has dtype {y.dtype} but x has dtype {x.dtype}")
    xr, yr = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    with torch.enable_grad():
        upper = F(xr, yr)
        lower = g(xr, yr)
        for name, val in (("F", upper), ("g", lower)):
            if not isinstance(val, Tensor) or val.numel() != 1:
                raise ValueError(f"{name} must return a scalar tensor")
            if not bool(torch.isfinite(val)):
                raise ValueError(f"{name}(x, y) is non-finite ({float(val.detach())})")
        Fx, Fy = torch.autograd.grad(upper, (xr, yr), allow_unused=True)
        Fx = torch.zeros_like(x) if Fx is None else Fx
        Fy = torch.zeros_like(y) if Fy is None else Fy
        (gy,) = torch.autograd.grad(lower, yr, create_graph=True)

    def hvp(V: Tensor) -> Tensor:
        cols = [
            torch.autograd.grad(gy, yr, V[:, j], retain_graph=True)[0] for j in range(V.shape[1])
        ]
        out = torch.stack(cols, dim=1)
        if not bool(torch.isfinite(out).all()):
            raise ValueError("the lower-level Hessian-vector product is non-finite")
        return out

    H = MatmatOperator(hvp, (y.numel(), y.numel()), y.dtype, symmetric=True)
    solve = cg(H, Fy.detach(), rtol=rtol, max_iters=max_iters, x0=v0)
    (mixed,) = torch.autograd.grad(gy, xr, solve.x, retain_graph=False, allow_unused=True)
    mixed = torch.zeros_like(x) if mixed is None else mixed
    return (Fx - mixed).detach(), solve


def aid_solve(
    F: Objective,
    g: Objective,
    x0: Tensor,
    y0: Tensor,
    *,
    upper_set: ConvexSet | None = None,
    outer_iters: int = 100,
    lr: float = 0.1,
    inner_steps: int = 10,
    inner_lr: float | Callable[[Tensor], float] = 0.1,
    cg_iters: int = 20,
    cg_rtol: float = 1e-6,
    record_every: int = 1,
    evaluate: Callable[[Tensor, Tensor], float] | None = None,
    max_seconds: float | None = None,
) -> BilevelResult:
    """Approximate implicit differentiation (AID): the implicit-hypergradient baseline solver.

    Each outer iteration runs ``inner_steps`` gradient steps on ``g(x, .)`` from the previous
    ``y`` (warm start), solves ``grad_yy^2 g v = grad_y F`` by CG (at most ``cg_iters``
    iterations, warm-started from the previous ``v``) and takes the projected step
    ``x <- Proj_X(x - lr * hypergradient)``.

    Args:
        F: upper-level objective ``F(x, y)``.
        g: lower-level objective, strongly convex in ``y``.
        x0: initial upper-level variable (1-D).
        y0: initial lower-level variable (1-D, ``x0``'s dtype).
        upper_set: the set ``X`` (default the whole space).
        outer_iters: outer iterations.
        lr: upper-level step size.
        inner_steps: lower-level gradient steps per outer iteration.
        inner_lr: lower-level step size, or a function of ``x`` returning it (e.g. ``1 / L(x)``
            with ``L(x)`` a bound on the Lipschitz constant of ``grad_y g(x, .)``).
        cg_iters: CG iteration limit per outer iteration.
        cg_rtol: CG relative tolerance.
        record_every: record every this many outer iterations (and at the end).
        evaluate: ``(x, y) -> float`` recorded as ``upper`` instead of ``F`` (time excluded).
        max_seconds: stop once the solver time exceeds this.

    Returns:
        A :class:`~subspaces.bilevel.BilevelResult` (``grad_norm`` is the hypergradient norm).

    Raises:
        TypeError: for non-float inputs or mismatched dtypes.
        ValueError: for non-finite starts, step sizes ``<= 0`` or values that become non-finite.

    Example:
        >>> A = torch.eye(2, dtype=torch.float64)
        >>> F = lambda x, y: 0.5 * ((y - 1.0) ** 2).sum()
        >>> g = lambda x, y: 0.5 * ((y - x) ** 2).sum()
        >>> z = torch.zeros(2, dtype=torch.float64)
        >>> r = aid_solve(F, g, z, z, outer_iters=60, lr=0.5, inner_steps=5, inner_lr=0.5)
        >>> bool(torch.allclose(r.x, torch.ones(2, dtype=torch.float64), atol=1e-6))
        True
    """
    x = check_finite(check_float_tensor(x0, "x0", ndim=1), "x0").detach().clone()
    y = check_finite(check_float_tensor(y0, "y0", ndim=1), "y0").detach().clone()
    if y.dtype != x.dtype:
        raise TypeError(f"y0 has dtype {y.dtype} but x0 has dtype {x.dtype}")
    outer_iters = check_positive_int(outer_iters, "outer_iters")
    inner_steps = check_positive_int(inner_steps, "inner_steps", minimum=0)
    cg_iters = check_positive_int(cg_iters, "cg_iters")
    record_every = check_positive_int(record_every, "record_every")
    lr = check_positive_float(lr, "lr")
    if not callable(inner_lr):
        inner_lr = check_positive_float(inner_lr, "inner_lr")
    cg_rtol = check_positive_float(cg_rtol, "cg_rtol")
    X = upper_set if upper_set is not None else Reals()
    x = X.project(x)
    history = History()
    elapsed, hnorm = 0.0, float("nan")
    v: Tensor | None = None

    def record(k: int) -> None:
        with torch.no_grad():
            upper = evaluate(x, y) if evaluate is not None else float(F(x, y))
        history.append(k, elapsed, upper, 0.0, hnorm)

    record(0)
    k = 0
    for k in range(1, outer_iters + 1):
        t0 = time.perf_counter()
        step = check_positive_float(inner_lr(x) if callable(inner_lr) else inner_lr, "inner_lr")
        for _ in range(inner_steps):
            yr = y.clone().requires_grad_(True)
            with torch.enable_grad():
                (gy,) = torch.autograd.grad(g(x, yr), yr)
            check_finite_step(gy, "grad_y g", k)
            y = y - step * gy
        h, solve = implicit_hypergradient(F, g, x, y, rtol=cg_rtol, max_iters=cg_iters, v0=v)
        v = solve.x
        check_finite_step(h, "hypergradient", k)
        x = X.project(x - lr * h)
        hnorm = float(h.norm())
        elapsed += time.perf_counter() - t0
        done = max_seconds is not None and elapsed >= max_seconds
        if k % record_every == 0 or k == outer_iters or done:
            record(k)
        if done:
            break
    state = {} if v is None else {"v": v}
    return BilevelResult(x=x, y=y, history=history, state=state, iterations=k)
