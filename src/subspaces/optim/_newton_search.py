"""The adaptive gradient-regularized Newton step shared by ``newton_gr`` and ``NewtonGR``.

One iteration solves ``(H + lambda I) d = g`` by CG on a matrix-free ``H`` and tries
``x - d``; the regularization ``lambda`` comes from a constant ``c`` and the gradient norm:

* ``rule="gns"``: ``lambda = c ||g||`` (Algorithm 1 of Semenov, Jaggi, Doikov: ``c = 1 / gamma``
  with ``gamma`` the estimate of the gradient-normalized smoothness radius);
* ``rule="sqrt"``: ``lambda = sqrt(c ||g||)`` (gradient regularization of Mishchenko 2023 and
  Doikov & Nesterov 2024, ``c`` an estimate of the Hessian's Lipschitz constant).

A trial is accepted when ``f(x) - f(x+) >= ||g(x+)||^2 / (8 lambda)`` (the paper's test). On
acceptance ``lambda`` is halved for the next iteration, on failure doubled and the step retried
(``c`` divided or multiplied by 2 for ``"gns"``, by 4 for ``"sqrt"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from .._checks import check_choice, check_positive_float, check_positive_int
from ..linalg.solvers import cg
from ..linops import LinearOperator
from ..linops.structured import Dense, Identity

Rule = Literal["gns", "sqrt"]
RULES: tuple[str, ...] = ("gns", "sqrt")
C_MIN, C_MAX = 2.0**-60, 2.0**60
Evaluate = Callable[[Tensor], tuple[float, Tensor]]


def regularization(rule: str, c: float, grad_norm: float) -> float:
    """The shift ``lambda`` of the Newton system for constant ``c`` and gradient norm.

    Returns:
        ``c * grad_norm`` (``"gns"``) or ``sqrt(c * grad_norm)`` (``"sqrt"``).
    """
    return c * grad_norm if rule == "gns" else math.sqrt(c * grad_norm)


def c_factor(rule: str) -> float:
    """The factor on ``c`` that doubles (or halves) ``lambda`` at a fixed gradient norm.

    Returns:
        2 for ``"gns"``, 4 for ``"sqrt"``.
    """
    return 2.0 if rule == "gns" else 4.0


def solve_shifted(
    H: LinearOperator, g: Tensor, lam: float, rtol: float | None, max_iters: int | None
) -> tuple[Tensor | None, int]:
    """Solve ``(H + lam I) d = g`` by CG.

    A :class:`~subspaces.linops.structured.Dense` ``H`` (a materialized curvature) is shifted
    in a dense copy, so every CG product is one small matrix product.

    Returns:
        ``(d, iterations)``; ``d`` is ``None`` when ``H + lam I`` is found not to be positive
        definite (an indefinite Hessian with too small a shift), which the search treats as a
        failed trial.

    Raises:
        ValueError: if a product is not finite (other errors of :func:`~subspaces.linalg.cg`).
    """
    shifted: LinearOperator
    if isinstance(H, Dense) and H.SELF_ADJOINT:
        M = H.matrix.clone()
        M.diagonal().add_(lam)  # stays exactly symmetric
        shifted = Dense(M, symmetric=True)
    else:
        shifted = H + lam * Identity(H.shape[0], dtype=H.dtype, device=H.device)
    try:
        res = cg(shifted, g, rtol=rtol, max_iters=max_iters)
    except ValueError as err:
        if "not positive definite" in str(err):
            return None, 0
        raise
    return res.x, res.iterations


@dataclass
class Trial:
    """The outcome of one iteration's search."""

    accepted: bool
    x: Tensor
    loss: float
    grad: Tensor
    lam: float
    c_next: float
    cg_iterations: int
    trials: int


def search(
    H: LinearOperator,
    x: Tensor,
    loss: float,
    grad: Tensor,
    evaluate: Evaluate,
    *,
    rule: str,
    c: float,
    adaptive: bool,
    max_trials: int,
    lr: float = 1.0,
    cg_rtol: float | None = None,
    cg_max_iters: int | None = None,
    refresh: Callable[[], LinearOperator] | None = None,
) -> Trial:
    """One iteration: shift, solve, try, and adapt ``c`` until a trial is accepted.

    Args:
        H: the curvature at ``x`` (symmetric, matrix-free).
        x: the current point, flat.
        loss: ``f(x)``.
        grad: ``grad f(x)``, flat.
        evaluate: ``x -> (f(x), grad f(x))``.
        rule: ``"gns"`` or ``"sqrt"``.
        c: the regularization constant for this iteration.
        adaptive: search for ``c`` (otherwise the first trial is taken as is).
        max_trials: trials before giving up (the point is then left unchanged).
        lr: step scale (``x - lr * d``). The damped step is the regularized Newton step of the
            curvature ``H / lr`` with shift ``lambda / lr``, so the test uses ``lambda / lr``.
        cg_rtol: CG relative tolerance (default of :func:`~subspaces.linalg.cg`).
        cg_max_iters: CG iteration limit.
        refresh: called after a rejected trial to rebuild ``H`` at ``x`` (when evaluating a
            trial invalidates it, as it does an autograd graph whose parameters were changed
            in place); ``None`` keeps ``H``.

    Returns:
        A :class:`Trial`; ``accepted=False`` means no trial passed and ``x`` is unchanged.

    Raises:
        ValueError: if ``adaptive=False`` and ``H + lambda I`` is not positive definite.
    """
    gnorm = float(grad.norm())
    factor = c_factor(rule)
    cg_total = 0
    for trial in range(1, max_trials + 1):
        lam = regularization(rule, c, gnorm)
        d, its = solve_shifted(H, grad, lam, cg_rtol, cg_max_iters)
        cg_total += its
        if d is None:
            if not adaptive:
                raise ValueError(
                    f"H + lambda I is not positive definite at lambda = {lam:.3g} (c = {c:.3g}); "
                    "use adaptive=True, a larger c, or a positive semidefinite curvature "
                    "('ggn', 'fisher')"
                )
            c = min(c * factor, C_MAX)
            continue
        x_new = x - lr * d
        f_new, g_new = evaluate(x_new)
        if not adaptive:
            return Trial(True, x_new, f_new, g_new, lam, c, cg_total, trial)
        if loss - f_new >= lr * float(g_new.norm()) ** 2 / (8.0 * lam):
            return Trial(True, x_new, f_new, g_new, lam, max(c / factor, C_MIN), cg_total, trial)
        c = min(c * factor, C_MAX)
        if refresh is not None and trial < max_trials:
            H = refresh()
    return Trial(False, x, loss, grad, float("nan"), c, cg_total, max_trials)


def check_common(c: float, rule: str, max_trials: int) -> tuple[float, str, int]:
    """Validate the hyperparameters shared by ``newton_gr`` and ``NewtonGR``.

    Returns:
        ``(c, rule, max_trials)``.

    Raises:
        ValueError: for ``c <= 0``, an unknown rule or ``max_trials < 1``.
        TypeError: for values of the wrong type.
    """
    c = check_positive_float(c, "c")
    rule = check_choice(rule, "rule", RULES)
    max_trials = check_positive_int(max_trials, "max_trials")
    return c, rule, max_trials
