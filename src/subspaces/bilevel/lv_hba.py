r"""LV-HBA: the single-loop Hessian-free solver for bilevel problems with coupled constraints.

Yao, Yu, Zeng & Zhang, "Constrained Bi-Level Optimization: Proximal Lagrangian Value function
Approach and Hessian-free Algorithm", ICLR 2024 (arXiv:2401.16164), Algorithm 1.

The problem is ``min_{x in X, y in Y} F(x, y)`` s.t. ``y`` solves the lower level
``min_{theta in Y} {f(x, theta) : g(x, theta) <= 0}`` whose constraints ``g`` couple both levels.
With the proximal Lagrangian value function

    v_gamma(x, y, z) = min_{theta in Y} max_{lam >= 0} f(x, theta) + lam^T g(x, theta)
                       + ||theta - y||^2 / (2 gamma1) - ||lam - z||^2 / (2 gamma2),

the problem is equivalent to ``min F(x, y)`` s.t. ``f(x, y) - v_gamma(x, y, z) <= 0``,
``(x, y) in C = {x in X, y in Y, g(x, y) <= 0}``, ``z in Z``. One iteration ``k`` (with
``c_k = c_lower (k + 1)^p``):

    d_theta = grad_y f(x, theta) + grad_y g(x, theta)^T lam + (theta - y) / gamma1
    d_lam   = -g(x, theta) + (lam - z) / gamma2
    (theta, lam) <- Proj_{Y x R_+}((theta, lam) - eta (d_theta, d_lam))
    d_x = grad_x F(x, y) / c_k + grad_x f(x, y) - grad_x f(x, theta) - grad_x g(x, theta)^T lam
    d_y = grad_y F(x, y) / c_k + grad_y f(x, y) - (y - theta) / gamma1
    d_z = (z - lam) / gamma2
    (x, y) <- Proj_C((x, y) - alpha (d_x, d_y));   z <- Proj_[0, z_max]^p(z - beta d_z)

Only gradients are evaluated (three backward passes per iteration): no Hessian, no inverse.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor, check_positive_float, check_positive_int
from .projections import ConvexSet, Polyhedron, Reals, split_projector  # noqa: F401 (doctest)
from .result import BilevelResult, History, check_finite_step

__all__ = ["lv_hba"]

Objective = Callable[[Tensor, Tensor], Tensor]
Projector = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def _scalar(value: Tensor, name: str, k: int) -> Tensor:
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise ValueError(f"{name} must return a scalar tensor, got {type(value).__name__}")
    check_finite_step(value.detach(), f"{name}(x, y)", k)
    return value.reshape(())


def _grads(fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    xr, yr = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
    with torch.enable_grad():
        out = fn(xr, yr)
        gx, gy = torch.autograd.grad(out, (xr, yr), allow_unused=True)
    gx = torch.zeros_like(x) if gx is None else gx
    gy = torch.zeros_like(y) if gy is None else gy
    return gx, gy


def _penalized(F: Objective, f: Objective, ck: float) -> Objective:
    def fn(a: Tensor, b: Tensor) -> Tensor:
        return F(a, b) / ck + f(a, b)

    return fn


def lv_hba(
    F: Objective,
    f: Objective,
    x0: Tensor,
    y0: Tensor,
    *,
    g: Callable[[Tensor, Tensor], Tensor] | None = None,
    upper_set: ConvexSet | None = None,
    lower_set: ConvexSet | None = None,
    project_xy: Projector | None = None,
    iters: int = 1000,
    alpha: float = 0.01,
    beta: float = 0.01,
    eta: float = 0.01,
    gamma1: float = 1.0,
    gamma2: float = 1.0,
    c_lower: float = 1.0,
    p: float = 0.3,
    z_max: float = 1e3,
    lam0: Tensor | None = None,
    z0: Tensor | None = None,
    record_every: int = 1,
    evaluate: Callable[[Tensor, Tensor], float] | None = None,
    max_seconds: float | None = None,
) -> BilevelResult:
    """Run LV-HBA (Algorithm 1 of Yao, Yu, Zeng & Zhang, arXiv:2401.16164).

    Args:
        F: upper-level objective ``F(x, y)`` (scalar tensor, differentiable by autograd).
        f: lower-level objective ``f(x, y)``.
        x0: initial upper-level variable, 1-D float tensor.
        y0: initial lower-level variable, 1-D float tensor of ``x0``'s dtype.
        g: lower-level constraints ``g(x, y) <= 0`` as a 1-D tensor (``p`` constraints), or None.
        upper_set: the set ``X`` of ``x`` (default the whole space).
        lower_set: the set ``Y`` of ``y`` and ``theta`` (default the whole space).
        project_xy: projection onto ``C = {x in X, y in Y, g(x, y) <= 0}`` as
            ``(x, y) -> (x', y')``; default ``(Proj_X x, Proj_Y y)`` (exact when ``g`` does not
            constrain ``(x, y)`` beyond ``X x Y``, e.g. when it is inactive).
        iters: iterations.
        alpha: step size of ``(x, y)``.
        beta: step size of ``z``.
        eta: step size of ``(theta, lam)``.
        gamma1: proximal parameter of ``theta`` (``> 0``).
        gamma2: proximal parameter of ``lam`` (``> 0``).
        c_lower: ``c_k = c_lower (k + 1)^p``; ``F`` enters with weight ``1 / c_k``.
        p: exponent, ``0 <= p <= 1/2`` (the paper's analysis needs ``0 < p < 1/2``).
        z_max: ``Z = [0, z_max]^p``.
        lam0: initial multipliers (default zeros).
        z0: initial ``z`` (default zeros).
        record_every: record the history every this many iterations (and at the end).
        evaluate: ``(x, y) -> float`` recorded as ``upper`` instead of ``F`` (e.g. a validation
            loss); its time is excluded from ``history.time``.
        max_seconds: stop once the solver time exceeds this (history time, evaluation excluded).

    Returns:
        A :class:`~subspaces.bilevel.BilevelResult`; ``state`` holds ``theta``, ``lam``, ``z``.

    Raises:
        TypeError: for non-tensor or non-float inputs, or mismatched dtypes.
        ValueError: for non-finite starts, step sizes or proximal parameters ``<= 0``,
            ``p`` outside ``[0, 1/2]``, or objectives/constraints that become non-finite.

    Example:
        >>> # min (x-2)^2/2 + (y-1)^2/2  s.t.  y = argmin {(t-x)^2/2 : t - x/2 <= 0}: x*=2, y*=1
        >>> F = lambda x, y: 0.5 * ((x - 2) ** 2).sum() + 0.5 * ((y - 1) ** 2).sum()
        >>> f = lambda x, y: 0.5 * ((y - x) ** 2).sum()
        >>> g = lambda x, y: y - x / 2
        >>> z = torch.zeros(1, dtype=torch.float64)
        >>> C = split_projector(Polyhedron(torch.tensor([[-0.5, 1.0]], dtype=torch.float64), z), 1)
        >>> r = lv_hba(F, f, z, z, g=g, project_xy=C, iters=300, alpha=0.2, eta=0.5, beta=0.5)
        >>> bool(abs(r.x - 2) < 1e-3 and abs(r.y - 1) < 1e-3)
        True
    """
    x = check_finite(check_float_tensor(x0, "x0", ndim=1), "x0").detach().clone()
    y = check_finite(check_float_tensor(y0, "y0", ndim=1), "y0").detach().clone()
    if y.dtype != x.dtype:
        raise TypeError(f"y0 has dtype {y.dtype} but x0 has dtype {x.dtype}")
    for name, fn in (("F", F), ("f", f)):
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    iters = check_positive_int(iters, "iters")
    record_every = check_positive_int(record_every, "record_every")
    alpha = check_positive_float(alpha, "alpha")
    beta = check_positive_float(beta, "beta")
    eta = check_positive_float(eta, "eta")
    gamma1 = check_positive_float(gamma1, "gamma1")
    gamma2 = check_positive_float(gamma2, "gamma2")
    c_lower = check_positive_float(c_lower, "c_lower")
    z_max = check_positive_float(z_max, "z_max")
    if not (isinstance(p, (int, float)) and 0.0 <= float(p) <= 0.5):
        raise ValueError(f"p must be in [0, 1/2] (c_k = c_lower (k+1)^p), got {p!r}")
    X = upper_set if upper_set is not None else Reals()
    Y = lower_set if lower_set is not None else Reals()
    for name, s in (("upper_set", X), ("lower_set", Y)):
        if not isinstance(s, ConvexSet):
            raise TypeError(f"{name} must be a ConvexSet, got {type(s).__name__}")

    def proj_c(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        if project_xy is not None:
            return project_xy(a, b)
        return X.project(a), Y.project(b)

    def constraints(a: Tensor, b: Tensor) -> Tensor:
        if g is None:
            return torch.zeros(0, dtype=x.dtype)
        out = g(a, b)
        if not isinstance(out, Tensor) or out.ndim != 1:
            raise ValueError(f"g must return a 1-D tensor of constraint values, got {out!r}")
        return out

    x, y = proj_c(x, y)
    theta = Y.project(y)
    n_con = int(constraints(x, y).numel())
    lam = torch.zeros(n_con, dtype=x.dtype) if lam0 is None else lam0.detach().clone().to(x)
    z = torch.zeros(n_con, dtype=x.dtype) if z0 is None else z0.detach().clone().to(x)
    if lam.shape != (n_con,) or z.shape != (n_con,):
        raise ValueError(f"lam0 and z0 must have shape ({n_con},) (one per constraint of g)")

    def lagrangian(lam_: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        def fn(a: Tensor, b: Tensor) -> Tensor:
            val = f(a, b)
            return val + (lam_ * constraints(a, b)).sum() if n_con else val

        return fn

    history = History()
    elapsed = 0.0
    dx_norm = float("nan")

    def record(k: int) -> None:
        with torch.no_grad():
            upper = evaluate(x, y) if evaluate is not None else float(F(x, y))
            cons = constraints(x, y)
            viol = float(cons.clamp_min(0).max()) if n_con else 0.0
        history.append(k, elapsed, upper, viol, dx_norm)

    record(0)
    k = 0
    for k in range(1, iters + 1):
        t0 = time.perf_counter()
        ck = c_lower * math.pow(k, p)  # c_k = c_lower (k + 1)^p with k counted from 0
        # (theta, lam) step on the proximal Lagrangian
        _, gt = _grads(lagrangian(lam), x, theta)
        d_theta = gt + (theta - y) / gamma1
        check_finite_step(d_theta, "d_theta", k)
        if n_con:
            d_lam = -constraints(x, theta).detach() + (lam - z) / gamma2
            lam = (lam - eta * d_lam).clamp_min(0)
        theta = Y.project(theta - eta * d_theta)
        # (x, y, z) step on F / c_k + f - v_gamma
        gxF, gyF = _grads(_penalized(F, f, ck), x, y)
        gxv, _ = _grads(lagrangian(lam), x, theta)
        d_x = gxF - gxv
        d_y = gyF - (y - theta) / gamma1
        check_finite_step(d_x, "d_x", k)
        check_finite_step(d_y, "d_y", k)
        x, y = proj_c(x - alpha * d_x, y - alpha * d_y)
        if n_con:
            z = (z - beta * (z - lam) / gamma2).clamp(0.0, z_max)
        dx_norm = float(d_x.norm())
        elapsed += time.perf_counter() - t0
        done = max_seconds is not None and elapsed >= max_seconds
        if k % record_every == 0 or k == iters or done:
            record(k)
        if done:
            break
    return BilevelResult(
        x=x, y=y, history=history, state={"theta": theta, "lam": lam, "z": z}, iterations=k
    )
