"""Dense curvature references for small models: autograd rows and finite differences.

They share the library's conventions (the loss as given, batches weighted by their mean's
denominator, train-mode BatchNorm with batch statistics and running statistics untouched) but not
its product engines, so they are an independent check of :mod:`subspaces.curvature` -- and a way
for users to check their own operators.

Why not ``torch.func.hessian``: in torch 2.13, ``torch.func.hessian`` and ``jacrev(jacrev(f))``
return a non-symmetric Hessian several percent off finite differences on models with
``nn.LayerNorm`` or batch-statistics BatchNorm (reverse-over-reverse through the native norm
kernels under ``vmap``). :func:`dense_hessian` therefore builds its rows by plain autograd double
backward, one row per backward pass, and refuses a result that is not symmetric;
:func:`finite_difference_hessian` gives a second, derivative-free opinion.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .._tensorlist import ParamLayout
from ..curvature._model import (
    Batch,
    FunctionalModel,
    LossFn,
    LossSpec,
    ParamSpec,
    Reduction,
    _math_attention,
    iterate_batches,
    mode_policy_applied,
    resolve_loss,
    select_params,
    split_batch,
)

__all__ = ["dense_ggn", "dense_hessian", "finite_difference_hessian"]


def _setup(
    model: nn.Module,
    loss_fn: str | LossFn,
    params: ParamSpec,
    dtype: torch.dtype | None,
    reduction: Reduction | None,
) -> tuple[FunctionalModel, LossSpec, ParamLayout]:
    chosen = select_params(model, params)
    fm = FunctionalModel(model, chosen, dtype)
    return fm, resolve_loss(loss_fn, reduction), ParamLayout.from_params(chosen)


@contextmanager
def _as_is(model: nn.Module) -> Iterator[None]:
    """The model's own modes (train-mode BatchNorm: batch statistics) and the MATH attention."""
    with _math_attention(), mode_policy_applied(model, "as_is"):
        yield


def _weighted_sum(
    model: nn.Module,
    data: Any,
    fm: FunctionalModel,
    spec: LossSpec,
    dtype: torch.dtype | None,
    per_batch: Callable[[Batch], Tensor],
) -> Tensor:
    """``sum_b c_b per_batch(b) / sum_b c_b`` (a plain sum for sum losses), like the operators."""
    total: Tensor | None = None
    weight = 0.0
    with _as_is(model):
        for raw in iterate_batches(data):
            batch = split_batch(raw, fm.device, dtype)
            c = spec.normalizer(batch.targets, batch.size)
            if c == 0.0:
                continue
            part = per_batch(batch) * c
            total = part if total is None else total + part
            weight += c
    if total is None:
        raise ValueError("data is empty, or the loss counts no sample in it")
    return total if spec.reduction == "sum" else total / weight


def _autograd_hessian(f: Callable[[Tensor], Tensor], x0: Tensor, what: str) -> Tensor:
    """Hessian of a scalar function by double backward, one row per backward pass.

    Returns:
        The symmetrized Hessian ``(H + H^T) / 2``.

    Raises:
        RuntimeError: if the rows are not symmetric to ``sqrt(eps)`` (relative Frobenius norm):
            then second derivatives of this function cannot be trusted.
    """
    x = x0.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        # the zero quadratic keeps a constant gradient (a linear function) differentiable
        (g,) = torch.autograd.grad(f(x) + 0 * (x * x).sum(), x, create_graph=True)
        eye = torch.eye(x.numel(), dtype=x.dtype, device=x.device)
        rows = []
        for e in eye:
            (row,) = torch.autograd.grad(g, x, e, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(x) if row is None else row.detach())
    H = torch.stack(rows)
    asym = float((H - H.T).norm())
    scale = float(H.norm())
    tol = torch.finfo(H.dtype).eps ** 0.5
    if asym > tol * scale:
        raise RuntimeError(
            f"{what}: the autograd Hessian is not symmetric (||H - H^T|| / ||H|| = "
            f"{asym / scale:.2e} > sqrt(eps) = {tol:.1e}); second derivatives through this model "
            "are unreliable, compare with finite_difference_hessian"
        )
    return (H + H.T) / 2


def dense_hessian(
    model: nn.Module,
    loss_fn: str | LossFn,
    data: Any,
    params: ParamSpec = None,
    dtype: torch.dtype | None = None,
    *,
    reduction: Reduction | None = None,
) -> Tensor:
    """The full Hessian of the data-set loss, row by row by autograd double backward.

    Args:
        model: the model (its modes are used as they are; train-mode BatchNorm uses batch
            statistics and its running statistics are not updated).
        loss_fn: as for :class:`~subspaces.curvature.HessianOperator` (loss modules honoured).
        data: batches.
        params: parameter selection.
        dtype: compute dtype.
        reduction: as for :class:`~subspaces.curvature.HessianOperator`.

    Returns:
        The ``(P, P)`` Hessian (symmetrized after the symmetry check).

    Raises:
        RuntimeError: if the autograd Hessian of a batch is not symmetric (see the module
            docstring).

    Example:
        >>> import torch
        >>> X, y = torch.randn(10, 2, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
        >>> model = torch.nn.Linear(2, 1, bias=False).double()
        >>> torch.allclose(dense_hessian(model, "mse", [(X, y)]), 2 * X.T @ X / 10)
        True
    """
    fm, spec, layout = _setup(model, loss_fn, params, dtype, reduction)
    flat0 = layout.flatten(fm.params)

    def per_batch(batch: Batch) -> Tensor:
        def f(flat: Tensor) -> Tensor:
            return spec.fn(fm(layout.unflatten(flat), batch), batch.targets)

        return _autograd_hessian(f, flat0, "dense_hessian")

    return _weighted_sum(model, data, fm, spec, dtype, per_batch)


def finite_difference_hessian(
    model: nn.Module,
    loss_fn: str | LossFn,
    data: Any,
    params: ParamSpec = None,
    dtype: torch.dtype | None = torch.float64,
    *,
    reduction: Reduction | None = None,
    rel_step: float | None = None,
) -> Tensor:
    """The Hessian by central differences of the gradient, column by column (not symmetrized).

    Column ``j`` is ``(g(theta + h e_j) - g(theta - h e_j)) / (2 h)`` with ``g`` the autograd
    gradient of the data-set loss and ``h = rel_step * max(1, max|theta|)``. Its error is
    ``O(h^2)`` (third derivatives) plus ``O(eps / h)`` (rounding), about ``eps^(2/3)`` at the
    default ``rel_step = eps^(1/3)`` -- use float64 (the default ``dtype``). Invalid across kinks:
    for ReLU-type networks a step can cross a kink and the column is noise.

    Args:
        model: the model (modes as for :func:`dense_hessian`).
        loss_fn: the loss (loss modules honoured).
        data: batches.
        params: parameter selection.
        dtype: compute dtype (default float64).
        reduction: as for :func:`dense_hessian`.
        rel_step: relative step; default ``eps ** (1/3)`` of ``dtype``.

    Returns:
        The ``(P, P)`` matrix (its asymmetry is a measure of its own error).

    Example:
        >>> import torch
        >>> X, y = torch.randn(10, 2, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(),
        ...                             torch.nn.Linear(3, 1)).double()
        >>> H = finite_difference_hessian(model, "mse", [(X, y)])
        >>> bool((H - dense_hessian(model, "mse", [(X, y)])).abs().max() < 1e-8)
        True
    """
    fm, spec, layout = _setup(model, loss_fn, params, dtype, reduction)
    flat0 = layout.flatten(fm.params)
    eps = torch.finfo(flat0.dtype).eps
    step = (eps ** (1 / 3) if rel_step is None else float(rel_step)) * max(
        1.0, float(flat0.abs().max())
    )

    def per_batch(batch: Batch) -> Tensor:
        def grad(flat: Tensor) -> Tensor:
            x = flat.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                loss = spec.fn(fm(layout.unflatten(x), batch), batch.targets)
                (g,) = torch.autograd.grad(loss, x, allow_unused=True)
            return torch.zeros_like(x) if g is None else g

        eye = torch.eye(flat0.numel(), dtype=flat0.dtype, device=flat0.device)
        cols = [(grad(flat0 + step * e) - grad(flat0 - step * e)) / (2 * step) for e in eye]
        return torch.stack(cols, 1)

    return _weighted_sum(model, data, fm, spec, dtype, per_batch)


def dense_ggn(
    model: nn.Module,
    loss_fn: str | LossFn,
    data: Any,
    params: ParamSpec = None,
    dtype: torch.dtype | None = None,
    *,
    reduction: Reduction | None = None,
) -> Tensor:
    """The full generalized Gauss-Newton matrix ``sum_b c_b J_b^T H_L J_b / sum_b c_b``.

    ``J_b`` by ``torch.func.jacrev`` (first derivatives only, which are right on every model),
    ``H_L`` (the output-space Hessian of the loss) by autograd double backward.

    Args:
        model: the model.
        loss_fn: the loss (loss modules honoured).
        data: batches.
        params: parameter selection.
        dtype: compute dtype.
        reduction: as for :class:`~subspaces.curvature.GGNOperator`.

    Returns:
        The ``(P, P)`` GGN.

    Example:
        >>> import torch
        >>> X, y = torch.randn(10, 2, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
        >>> model = torch.nn.Linear(2, 1, bias=False).double()
        >>> torch.allclose(dense_ggn(model, "mse", [(X, y)]), 2 * X.T @ X / 10)
        True
    """
    fm, spec, layout = _setup(model, loss_fn, params, dtype, reduction)
    flat0 = layout.flatten(fm.params)
    P = flat0.numel()

    def per_batch(batch: Batch) -> Tensor:
        out = fm(fm.params, batch).detach()
        J = torch.func.jacrev(lambda flat: fm(layout.unflatten(flat), batch))(flat0)
        J = J.reshape(-1, P)
        HL = _autograd_hessian(
            lambda o: spec.fn(o.reshape(out.shape), batch.targets),
            out.flatten(),
            "dense_ggn (output Hessian of the loss)",
        )
        return J.T @ HL @ J

    return _weighted_sum(model, data, fm, spec, dtype, per_batch)
