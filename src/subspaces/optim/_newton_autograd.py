"""Curvature products on a closure's autograd graph (the mini-batch path of ``NewtonGR``).

The curvature operators of :mod:`subspaces.curvature` need a model, a loss and data; an optimizer
only sees a closure. Here the closure's graph is differentiated twice (Pearlmutter's trick):

* Hessian: ``H v = d/dtheta <grad L, v>``;
* GGN: ``J^T H_L J v`` with ``J v`` by the double-vjp trick and ``H_L`` the Hessian of the loss
  in output space;
* empirical Fisher: ``(1/N) sum_i J_i^T s_i s_i^T J_i v`` with ``s_i = N dL/dz_i`` (the per-sample
  loss gradients of a mean over the ``N`` rows of the outputs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..linops.structured import MatmatOperator


def _flat(ts: Sequence[Tensor | None], like: Sequence[Tensor]) -> Tensor:
    return torch.cat(
        [
            (torch.zeros_like(p) if t is None else t).reshape(-1)
            for t, p in zip(ts, like, strict=True)
        ]
    )


def _split(v: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    out, start = [], 0
    for p in like:
        out.append(v[start : start + p.numel()].view_as(p))
        start += p.numel()
    return out


def closure_grads(
    kind: str,
    loss: Tensor,
    params: Sequence[Tensor],
    outputs: Tensor | None,
    create_graph: bool,
) -> tuple[Tensor | None, ...]:
    """The gradients of a closure's ``loss`` (``None`` for unused parameters), graph kept.

    The first step of both curvature builders (:func:`closure_curvature` and the dense
    ``closure_matrix``): the GGN and the Fisher need ``outputs``, and a closure that already
    called ``backward()`` has freed the graph.

    Args:
        kind: ``"hessian"``, ``"ggn"`` or ``"empirical_fisher"``.
        loss: a scalar with a graph to ``params``.
        params: the parameters.
        outputs: the model outputs (needed unless ``kind == "hessian"``).
        create_graph: differentiate the gradients again (the Hessian's rows).

    Returns:
        One gradient per parameter.

    Raises:
        ValueError: if ``outputs`` is needed and absent, or the graph is gone.

    Example:
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> [g.tolist() for g in closure_grads("hessian", (w**3).sum(), [w], None, True)]
        [[3.0, 12.0]]
        >>> loss = (w**3).sum()
        >>> loss.backward()  # a closure's mistake: the graph is freed
        >>> try:
        ...     closure_grads("hessian", loss, [w], None, True)
        ... except ValueError as err:
        ...     print(str(err)[:62])
        NewtonGR differentiates the closure's loss itself: the closure
    """
    if kind != "hessian" and outputs is None:
        raise ValueError(
            f"curvature={kind!r} needs the closure to return (loss, outputs), the model "
            "outputs the loss was computed from"
        )
    try:
        return torch.autograd.grad(
            loss, params, create_graph=create_graph, retain_graph=True, allow_unused=True
        )
    except RuntimeError as err:
        raise ValueError(
            "NewtonGR differentiates the closure's loss itself: the closure must return the "
            f"loss without calling backward() ({err})"
        ) from None


def closure_curvature(
    kind: str, loss: Tensor, params: Sequence[Tensor], outputs: Tensor | None
) -> tuple[Tensor, MatmatOperator]:
    """The flat gradient and a curvature operator of ``loss`` on its autograd graph.

    Args:
        kind: ``"hessian"``, ``"ggn"`` or ``"empirical_fisher"``.
        loss: a scalar with a graph to ``params`` (and through ``outputs`` for the GGN/Fisher).
        params: the parameters (in the optimizer's order).
        outputs: the model outputs the loss was computed from (GGN and Fisher only).

    Returns:
        ``(gradient, operator)``; the gradient is detached.

    Raises:
        ValueError: if the graph is missing (the closure called ``backward()``) or ``outputs``
            is needed and absent.
    """
    n = sum(p.numel() for p in params)
    dtype, device = params[0].dtype, params[0].device
    grads = closure_grads(kind, loss, params, outputs, create_graph=(kind == "hessian"))
    g = _flat([None if t is None else t.detach() for t in grads], params)

    if kind == "hessian":
        flat_grad = _flat(grads, params)

        def hvp(V: Tensor) -> Tensor:
            cols = [
                _flat(
                    torch.autograd.grad(
                        flat_grad, params, V[:, j], retain_graph=True, allow_unused=True
                    ),
                    params,
                )
                for j in range(V.shape[1])
            ]
            return torch.stack(cols, dim=1)

        return g, MatmatOperator(hvp, (n, n), dtype, device, symmetric=True)

    assert outputs is not None
    z = outputs
    dz = torch.autograd.grad(loss, z, create_graph=(kind == "ggn"), retain_graph=True)[0]
    u = torch.zeros_like(z, requires_grad=True)
    jt_u = torch.autograd.grad(z, params, u, create_graph=True, allow_unused=True)
    jt_u_used = [t for t in jt_u if t is not None]
    rows = z.shape[0] if z.ndim else 1

    def jvp(v: Tensor) -> Tensor:
        vs = [vi for vi, t in zip(_split(v, params), jt_u, strict=True) if t is not None]
        return torch.autograd.grad(jt_u_used, u, vs, retain_graph=True)[0]

    def vjp(w: Tensor) -> Tensor:
        return _flat(
            torch.autograd.grad(z, params, w, retain_graph=True, allow_unused=True), params
        )

    def output_matmat(jv: Tensor) -> Tensor:
        if kind == "ggn":
            return torch.autograd.grad(dz, z, jv, retain_graph=True)[0]
        s = dz.detach().reshape(rows, -1)
        coef = (s * jv.reshape(rows, -1)).sum(dim=1, keepdim=True)
        return (rows * s * coef).reshape(z.shape)

    def matmat(V: Tensor) -> Tensor:
        return torch.stack([vjp(output_matmat(jvp(V[:, j]))) for j in range(V.shape[1])], dim=1)

    return g, MatmatOperator(matmat, (n, n), dtype, device, symmetric=True)
