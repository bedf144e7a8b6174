"""Dense curvature references built with ``torch.func.hessian`` / ``jacrev`` (small models only).

They share the library's batch conventions (sample-weighted averages over batches) but not its
product engines, so they are an independent check of :mod:`subspaces.curvature` — and a way for
users to check their own operators.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._tensorlist import ParamLayout
from ..curvature._model import (
    FunctionalModel,
    LossFn,
    ParamSpec,
    _math_attention,
    iterate_batches,
    resolve_loss,
    select_params,
    split_batch,
)


def _setup(
    model: nn.Module, loss_fn: str | LossFn, params: ParamSpec, dtype: torch.dtype | None
) -> tuple[FunctionalModel, LossFn, ParamLayout]:
    chosen = select_params(model, params)
    fm = FunctionalModel(model, chosen, dtype)
    return fm, resolve_loss(loss_fn)[0], ParamLayout.from_params(chosen)


def dense_hessian(
    model: nn.Module,
    loss_fn: str | LossFn,
    data: Any,
    params: ParamSpec = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The full Hessian of the sample-weighted mean loss, by ``torch.func.hessian``.

    Args:
        model: the model (its mode is used as is).
        loss_fn: as for :class:`~subspaces.curvature.HessianOperator`.
        data: batches.
        params: parameter selection.
        dtype: compute dtype.

    Returns:
        The ``(P, P)`` Hessian.

    Example:
        >>> import torch
        >>> X, y = torch.randn(10, 2, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
        >>> model = torch.nn.Linear(2, 1, bias=False).double()
        >>> torch.allclose(dense_hessian(model, "mse", [(X, y)]), 2 * X.T @ X / 10)
        True
    """
    fm, loss, layout = _setup(model, loss_fn, params, dtype)
    flat0 = layout.flatten(fm.params)
    total, count = torch.zeros(flat0.numel(), flat0.numel(), dtype=flat0.dtype), 0
    for raw in iterate_batches(data):
        batch = split_batch(raw, fm.device, dtype)

        def f(flat: Tensor, batch: Any = batch) -> Tensor:
            return loss(fm(layout.unflatten(flat), batch), batch.targets)

        with _math_attention():
            total = total + torch.func.hessian(f)(flat0) * batch.size
        count += batch.size
    return total / count


def dense_ggn(
    model: nn.Module,
    loss_fn: str | LossFn,
    data: Any,
    params: ParamSpec = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The full generalized Gauss-Newton matrix ``sum_b (n_b/N) J_b^T H_L J_b``, by ``jacrev``.

    Args:
        model: the model.
        loss_fn: the loss.
        data: batches.
        params: parameter selection.
        dtype: compute dtype.

    Returns:
        The ``(P, P)`` GGN.

    Example:
        >>> import torch
        >>> X, y = torch.randn(10, 2, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
        >>> model = torch.nn.Linear(2, 1, bias=False).double()
        >>> torch.allclose(dense_ggn(model, "mse", [(X, y)]), 2 * X.T @ X / 10)
        True
    """
    fm, loss, layout = _setup(model, loss_fn, params, dtype)
    flat0 = layout.flatten(fm.params)
    P = flat0.numel()
    total, count = torch.zeros(P, P, dtype=flat0.dtype), 0
    for raw in iterate_batches(data):
        batch = split_batch(raw, fm.device, dtype)
        with _math_attention():
            out = fm(fm.params, batch).detach()
            J = torch.func.jacrev(lambda flat, batch=batch: fm(layout.unflatten(flat), batch))(
                flat0
            )
            J = J.reshape(-1, P)
            HL = torch.func.hessian(lambda o, batch=batch: loss(o, batch.targets))(out)
        HL = HL.reshape(J.shape[0], J.shape[0])
        total = total + (J.T @ HL @ J) * batch.size
        count += batch.size
    return total / count
