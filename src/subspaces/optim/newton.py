"""Gradient-regularized Newton with approximate Hessians (P09).

The step ``x+ = x - (H + lambda I)^{-1} grad f(x)`` with ``H`` the exact Hessian, the
generalized Gauss-Newton matrix, the (Monte-Carlo) true Fisher, the empirical Fisher or the
diagonal of the GGN, solved matrix-free by CG, and ``lambda`` from an adaptively estimated
constant (see :mod:`subspaces.optim._newton_search` for the two rules). Two entry points:

* :func:`newton_gr`: a full-batch solver on ``(model, loss_fn, data)`` like the curvature
  operators of :mod:`subspaces.curvature`, which it builds at every iterate (for small models
  it materializes the curvature once per iteration when CG needs many products, see
  :mod:`._newton_dense`, and runs the same CG on the dense matrix);
* :class:`NewtonGR`: a ``torch.optim.Optimizer`` for mini-batches whose closure returns the
  loss (or ``(loss, outputs)``), differentiated twice on its autograd graph.

Reference:
    Andrei Semenov, Martin Jaggi, Nikita Doikov, "Gradient-Normalized Smoothness for
    Optimization with Approximate Hessians", arXiv:2506.13710 (2025), Algorithm 1.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_positive_float, check_positive_int
from .._tensorlist import ParamLayout
from ..curvature import FisherOperator, GGNOperator, HessianOperator
from ..curvature._model import LossFn, ModePolicy, ParamSpec, select_params
from ..linops import LinearOperator
from ._newton_dense import DENSE_BLOCK, materialize
from ._newton_diag import DiagonalGGN
from ._newton_optimizer import NewtonGR
from ._newton_search import Rule, check_common, search

Curvature = Literal["hessian", "ggn", "fisher", "empirical_fisher", "diag_ggn"]
CURVATURES: tuple[str, ...] = ("hessian", "ggn", "fisher", "empirical_fisher", "diag_ggn")

__all__ = [
    "CURVATURES",
    "DENSE_CG_PER_BLOCK",
    "DENSE_MAX_PARAMS",
    "NewtonGR",
    "NewtonResult",
    "newton_gr",
]

DENSE_MAX_PARAMS = 2048
"""Parameter count up to which ``newton_gr(dense=None)`` may materialize the curvature."""
DENSE_CG_PER_BLOCK = 4
"""``dense=None`` materializes once the previous iteration took at least this many CG
iterations per block of 64 parameters: building the matrix costs one batched product per block,
1 to 6 times a single product (measured on P09's linear models and MLP, 108 to 1077
parameters), so from there on the dense path is the cheaper one."""


@dataclass(frozen=True, eq=False)
class NewtonResult:
    """Output of :func:`newton_gr`.

    Attributes:
        params: the final parameters (detached copies, by name); the model holds them too.
        loss: the final loss.
        grad_norm: the gradient norm recomputed at the final parameters after the last step.
        converged: ``grad_norm <= gtol``, judged on that recomputed gradient.
        status: ``"converged"``, ``"max_iters"`` or ``"search_failed"`` (no trial of an
            iteration passed the acceptance test within ``max_trials``).
        iterations: accepted Newton steps.
        losses: loss at each iterate (``iterations + 1`` values).
        grad_norms: gradient norm at each iterate.
        c_history: the constant ``c`` each iteration's search started from.
        lambdas: the shift ``lambda`` of each accepted step.
        cg_iterations: CG iterations per iteration (all trials).
        trials: trials per iteration (1 = the first shift was accepted).
        num_evaluations: loss-and-gradient passes over the data.
        dense: per iteration (as ``cg_iterations``), whether the curvature was materialized
            (see ``dense`` of :func:`newton_gr`).

    Example:
        >>> import torch
        >>> from subspaces.optim import newton_gr
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(100, 5, generator=g, dtype=torch.float64)
        >>> noise = torch.randn(100, generator=g, dtype=torch.float64)
        >>> y = (X[:, 0] - X[:, 1] + noise > 0).long()
        >>> model = torch.nn.Linear(5, 2).double()
        >>> res = newton_gr(model, "cross_entropy", (X, y), curvature="ggn", gtol=1e-9)
        >>> res.status, len(res.losses) == res.iterations + 1, res.losses[-1] == res.loss
        ('converged', True, True)
        >>> res.grad_norm <= 1e-9, torch.equal(res.params["weight"], model.weight.detach())
        (True, True)
        >>> all(b < a for a, b in zip(res.lambdas, res.lambdas[1:]))  # the shift shrinks
        True
    """

    params: dict[str, Tensor]
    loss: float
    grad_norm: float
    converged: bool
    status: str
    iterations: int
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    c_history: list[float] = field(default_factory=list)
    lambdas: list[float] = field(default_factory=list)
    cg_iterations: list[int] = field(default_factory=list)
    trials: list[int] = field(default_factory=list)
    num_evaluations: int = 0
    dense: list[bool] = field(default_factory=list)


def _operator(
    curvature: str,
    model: nn.Module,
    loss_fn: str | LossFn,
    data: Any,
    selected: dict[str, Tensor],
    mode_policy: ModePolicy,
    fisher_samples: int,
    generator: torch.Generator | None,
) -> GGNOperator | HessianOperator:
    kw: dict[str, Any] = {"mode_policy": mode_policy}
    if curvature == "hessian":
        return HessianOperator(model, loss_fn, data, selected, **kw)
    if curvature == "ggn":
        return GGNOperator(model, loss_fn, data, selected, **kw)
    if curvature == "diag_ggn":
        return DiagonalGGN(model, loss_fn, data, selected, **kw)
    kind: Literal["mc", "empirical"] = "mc" if curvature == "fisher" else "empirical"
    return FisherOperator(
        model,
        loss_fn,
        data,
        selected,
        kind=kind,
        mc_samples=fisher_samples,
        generator=generator,
        **kw,
    )


def newton_gr(
    model: nn.Module,
    loss_fn: str | LossFn,
    data: Any,
    *,
    curvature: Curvature = "ggn",
    params: ParamSpec = None,
    c: float = 1.0,
    rule: Rule = "gns",
    adaptive: bool = True,
    max_iters: int = 100,
    gtol: float = 1e-6,
    max_trials: int = 40,
    cg_rtol: float | None = None,
    cg_max_iters: int | None = None,
    fisher_samples: int = 1,
    generator: torch.Generator | None = None,
    mode_policy: ModePolicy = "error",
    dense: bool | None = None,
    callback: Callable[[int, float, float], None] | None = None,
) -> NewtonResult:
    """Minimize ``loss_fn(model(X), y)`` over ``data`` by gradient-regularized Newton steps.

    Each iteration builds the curvature operator at the current parameters, solves
    ``(H + lambda I) d = g`` by CG (matrix-free: Hessian-, GGN- or Fisher-vector products, or a
    diagonal) and accepts ``x - d`` when ``f(x) - f(x - d) >= ||g(x - d)||^2 / (8 lambda)``;
    otherwise ``lambda`` doubles and the step is retried (Algorithm 1 of the paper). The
    model's selected parameters are updated in place to the final iterate, like an optimizer
    would (pass a copy of the model to keep the original).

    Args:
        model: the model; BatchNorm/Dropout in training mode follow ``mode_policy``.
        loss_fn: a loss as for :class:`~subspaces.curvature.CurvatureOperator` (``"cross_entropy"``,
            ``"mse"``, a loss module or a callable ``loss(outputs, targets)``).
        data: a batch ``(X, y)`` or an iterable of batches (the loss is their sample mean).
        curvature: ``"hessian"``, ``"ggn"``, ``"fisher"`` (true Fisher, Monte-Carlo labels),
            ``"empirical_fisher"`` or ``"diag_ggn"`` (the exact diagonal of the GGN).
        params: which parameters (as for the curvature operators; default all trainable).
        c: the starting regularization constant (> 0).
        rule: ``"gns"`` (``lambda = c ||g||``, the paper's Algorithm 1 with ``c = 1 / gamma``) or
            ``"sqrt"`` (``lambda = sqrt(c ||g||)``, classical gradient regularization).
        adaptive: adapt ``c`` (halve ``lambda`` after an accepted step, double it after a
            failed trial); ``False`` takes every first trial with a fixed ``c``.
        max_iters: Newton iterations at most.
        gtol: stop when the gradient norm is at most this.
        max_trials: trials per iteration before stopping with ``status="search_failed"``.
        cg_rtol: CG relative tolerance (default 1e-8 in float64, 1e-5 in float32).
        cg_max_iters: CG iteration limit per solve.
        fisher_samples: Monte-Carlo labels per sample (``curvature="fisher"``).
        generator: randomness of the Monte-Carlo labels.
        mode_policy: as for the curvature operators.
        dense: materialize the curvature at each iterate as a dense matrix (for the GGN and
            Fisher ``J^T (H_L J)`` from batched Jacobian-vector products, for the Hessian
            products with identity columns; once per iteration instead of one pass over the
            data per CG iteration) and run the same CG on it; the steps agree with the matrix-free
            ones to rounding. ``None`` (default): when the selected parameters number ``P`` at
            most :data:`DENSE_MAX_PARAMS` (``P^2`` entries, 32 MiB in float64) and the previous
            iteration took at least ``DENSE_CG_PER_BLOCK * ceil(P / 64)`` CG iterations (the
            first iteration is matrix-free). Not used for ``"diag_ggn"``, whose operator is
            already a diagonal.
        callback: called as ``callback(iteration, loss, grad_norm)`` after each accepted step.

    Returns:
        A :class:`NewtonResult`; ``converged`` is decided on a gradient recomputed at the final
        parameters.

    Raises:
        ValueError: bad ``curvature``/``rule``/``c``/``gtol``, a model without (trainable)
            parameters, a non-finite loss or gradient, or (``adaptive=False``) a shifted
            curvature that is not positive definite.
        TypeError: bad argument types.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(100, 5, generator=g, dtype=torch.float64)
        >>> noise = torch.randn(100, generator=g, dtype=torch.float64)
        >>> y = (X[:, 0] - X[:, 1] + noise > 0).long()  # not separable: a minimizer exists
        >>> model = torch.nn.Linear(5, 2).double()
        >>> res = newton_gr(model, "cross_entropy", (X, y), curvature="ggn", gtol=1e-9)
        >>> res.converged, res.grad_norm <= 1e-9, res.iterations < 15
        (True, True, True)

    References:
        Semenov, Jaggi, Doikov, "Gradient-Normalized Smoothness for Optimization with
        Approximate Hessians", arXiv:2506.13710; Mishchenko, "Regularized Newton method with
        global O(1/k^2) convergence", SIAM J. Optim. 2023 (arXiv:2112.02089).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_choice(curvature, "curvature", CURVATURES)
    c, rule_name, max_trials = check_common(c, rule, max_trials)
    max_iters = check_positive_int(max_iters, "max_iters", minimum=0)
    gtol = check_positive_float(gtol, "gtol", allow_zero=True)
    fisher_samples = check_positive_int(fisher_samples, "fisher_samples")
    if dense is not None and not isinstance(dense, bool):
        raise TypeError(f"dense must be a bool or None, got {type(dense).__name__}")
    selected = select_params(model, params)
    layout = ParamLayout.from_params(selected)
    if curvature == "diag_ggn" or (dense is None and layout.numel > DENSE_MAX_PARAMS):
        dense = False
    # Trial points live in a copy of the model: the operator built at the current point reads
    # its model's parameters, which must stay put while trials are evaluated.
    shadow = copy.deepcopy(model)
    shadow_params = dict(shadow.named_parameters())
    holders: list[tuple[nn.Module, dict[str, Tensor]]] = [
        (model, selected),
        (shadow, {n: shadow_params[n] for n in selected}),
    ]

    def load(x: Tensor, slot: int) -> None:
        with torch.no_grad():
            for name, value in layout.unflatten(x).items():
                holders[slot][1][name].copy_(value)

    evaluations = 0
    slot = 0  # the holder of the current point; trials go to the other one
    built: dict[int, LinearOperator] = {}

    def evaluate_in(x: Tensor, where: int) -> tuple[float, Tensor]:
        nonlocal evaluations
        load(x, where)
        m, sel = holders[where]
        op = _operator(curvature, m, loss_fn, data, sel, mode_policy, fisher_samples, generator)
        loss, grad = op.loss_and_gradient()
        evaluations += 1
        built[where] = op
        return loss, grad

    def evaluate(x: Tensor) -> tuple[float, Tensor]:
        return evaluate_in(x, 1 - slot)

    with torch.no_grad():
        x = layout.flatten({n: p.detach() for n, p in selected.items()}).clone()
    loss, grad = evaluate_in(x, slot)
    gnorm = float(grad.norm())
    losses, gnorms = [loss], [gnorm]
    c_hist: list[float] = []
    lambdas: list[float] = []
    cg_its: list[int] = []
    trials: list[int] = []
    materialized: list[bool] = []
    cutoff = DENSE_CG_PER_BLOCK * math.ceil(layout.numel / DENSE_BLOCK)
    status = "max_iters"
    for it in range(max_iters):
        if gnorm <= gtol:
            break
        # auto: materialize once the last solve took enough products to pay for the build
        now = dense if dense is not None else bool(cg_its) and cg_its[-1] >= cutoff
        H = materialize(built[slot]) if now else built[slot]
        materialized.append(now)
        c_hist.append(c)
        out = search(
            H, x, loss, grad, evaluate, rule=rule_name, c=c, adaptive=adaptive,
            max_trials=max_trials, cg_rtol=cg_rtol, cg_max_iters=cg_max_iters,
        )  # fmt: skip
        cg_its.append(out.cg_iterations)
        trials.append(out.trials)
        c = out.c_next
        if not out.accepted:
            status = "search_failed"
            break
        slot = 1 - slot  # the accepted trial's holder now holds the current point
        x, loss, grad, gnorm = out.x, out.loss, out.grad, float(out.grad.norm())
        losses.append(loss)
        gnorms.append(gnorm)
        lambdas.append(out.lam)
        if callback is not None:
            callback(it + 1, loss, gnorm)
    # certify on a gradient recomputed at the parameters the model now holds
    load(x, 0)
    final_loss, final_grad = evaluate_in(x, 0)
    final_norm = float(final_grad.norm())
    converged = final_norm <= gtol
    if converged:
        status = "converged"
    return NewtonResult(
        params={n: p.detach().clone() for n, p in selected.items()},
        loss=final_loss,
        grad_norm=final_norm,
        converged=converged,
        status=status,
        iterations=len(lambdas),
        losses=losses,
        grad_norms=gnorms,
        c_history=c_hist,
        lambdas=lambdas,
        cg_iterations=cg_its,
        trials=trials,
        num_evaluations=evaluations,
        dense=materialized,
    )
