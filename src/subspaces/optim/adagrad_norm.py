"""AdaGrad-Norm: one scalar step-size accumulator for the whole parameter vector (P21).

AdaGrad keeps one accumulator per coordinate; AdaGrad-Norm keeps a single scalar
``b_t^2 = b_{t-1}^2 + ||g_t||^2`` and steps ``x_{t+1} = x_t - lr * g_t / b_t`` (Ward, Wu and
Bottou's "AdaGrad stepsizes"; the update of AdAdaGrad-Norm in Lau, Liu and Kolar). Here
``||g_t||`` is the Euclidean norm of the gradient of *all* parameters of a parameter group
together, so a model in one group is one vector ``x`` as in the paper; each group has its own
accumulator.

Implementation: the accumulator is stored in every parameter's state (``"sum"``, a 0-dim tensor
in the parameter's dtype, like ``torch.optim.Adagrad``'s ``state_sum``) and every copy receives
the same increment, so the state stays per parameter (what ``torch.optim.Optimizer.state_dict``
serializes) and loads with ``torch.load(weights_only=True)``. ``eps`` is added to ``b_t`` (as
``torch.optim.Adagrad`` adds it to the root of its accumulator). The public reference code
(timlautk/AdAdaGrad ``adagradnorm.py``) keeps one accumulator per *row* of each weight; this
module follows the paper's scalar definition instead.

References:
    Lau, Liu & Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods",
    arXiv:2402.11215, 2024. Ward, Wu & Bottou, "AdaGrad stepsizes: sharp convergence over
    nonconvex landscapes", JMLR 2020 (arXiv:1806.01811).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .._checks import check_positive_float
from .subspace_adamw import NonFiniteGradientError

__all__ = ["AdaGradNorm", "adagrad_norm"]


def adagrad_norm(
    params: list[Tensor],
    grads: list[Tensor],
    sums: list[Tensor],
    *,
    lr: float,
    eps: float = 1e-10,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> Tensor:
    """One AdaGrad-Norm step on a list of tensors sharing one scalar accumulator (in place).

    Every entry of ``sums`` is a copy of the same accumulator ``b^2`` (one per parameter, in that
    parameter's dtype); each copy is increased by ``||g||^2``, the squared norm of all gradients
    together (computed in float64), then ``p -= lr * g / (sqrt(b^2) + eps)``.

    Args:
        params: the tensors to update.
        grads: their gradients (same shapes).
        sums: the accumulator copies, 0-dim tensors, one per parameter; updated in place.
        lr: the step size (``eta`` in the paper).
        eps: added to ``b`` before dividing.
        weight_decay: L2 penalty coefficient added to the gradient (``g + wd * p``), as in
            ``torch.optim.Adagrad``.
        maximize: ascend instead of descend.

    Returns:
        The squared gradient norm of this step (float64 0-dim tensor).

    Raises:
        ValueError: if the three lists differ in length.
        NonFiniteGradientError: if a gradient holds NaN or Inf (nothing is changed).

    Example:
        >>> import torch
        >>> p, s = torch.zeros(2, dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        >>> g = torch.tensor([3.0, 4.0], dtype=torch.float64)
        >>> float(adagrad_norm([p], [g], [s], lr=1.0, eps=0.0))  # ||g||^2
        25.0
        >>> p.tolist(), float(s)  # x - g / ||g||
        ([-0.6, -0.8], 25.0)
    """
    if not (len(params) == len(grads) == len(sums)):
        raise ValueError(
            f"params, grads and sums must have equal lengths, got {len(params)}, {len(grads)} and "
            f"{len(sums)}"
        )
    directions = []
    for p, g in zip(params, grads, strict=True):
        d = -g if maximize else g
        if weight_decay != 0.0:
            d = d.add(p, alpha=weight_decay)
        directions.append(d)
    total = torch.zeros((), dtype=torch.float64)
    for d in directions:
        total = total + torch.linalg.vector_norm(d, dtype=torch.float64).square().cpu()
    if not bool(torch.isfinite(total)):
        raise NonFiniteGradientError(
            f"squared gradient norm is {float(total)} (a gradient holds NaN or Inf); the "
            "parameters and the accumulator are unchanged"
        )
    for p, d, s in zip(params, directions, sums, strict=True):
        s.add_(total.to(device=s.device, dtype=s.dtype))
        p.addcdiv_(d, s.sqrt().add_(eps), value=-lr)
    return total


class AdaGradNorm(Optimizer):
    """AdaGrad-Norm as a ``torch.optim.Optimizer``: one scalar accumulator per parameter group.

    ``b_t^2 = b_{t-1}^2 + ||g_t||^2`` with ``||g_t||`` the norm of the gradient of all parameters
    of the group, then ``x_{t+1} = x_t - lr * g_t / (b_t + eps)``; ``b_0^2`` is
    ``initial_accumulator_value``. Combined with :class:`~subspaces.optim.BatchSizeController`
    it is the AdAdaGrad-Norm method of Lau, Liu and Kolar (arXiv:2402.11215).

    Args:
        params: parameters or parameter groups.
        lr: step size ``eta`` (> 0).
        initial_accumulator_value: ``b_0^2`` (>= 0).
        eps: added to ``b_t`` (>= 0).
        weight_decay: L2 penalty added to the gradient (>= 0).
        maximize: maximize the objective.

    Raises:
        ValueError: for a non-positive ``lr`` or a negative ``initial_accumulator_value``,
            ``eps`` or ``weight_decay``.
        NonFiniteGradientError: from :meth:`step`, if a gradient holds NaN or Inf (the state and
            parameters are left unchanged).

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
        >>> opt = AdaGradNorm([w], lr=0.5)
        >>> (0.5 * (w ** 2).sum()).backward(); opt.step()  # g = w, ||g|| = 5: w - 0.5 * w / 5
        >>> torch.allclose(w.detach(), torch.tensor([2.7, 3.6])), float(opt.state[w]["sum"])
        (True, 25.0)
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-1,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
    ) -> None:
        check_positive_float(lr, "lr")
        check_positive_float(
            initial_accumulator_value, "initial_accumulator_value", allow_zero=True
        )
        check_positive_float(eps, "eps", allow_zero=True)
        check_positive_float(weight_decay, "weight_decay", allow_zero=True)
        defaults = dict(
            lr=lr,
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
            weight_decay=weight_decay,
            maximize=maximize,
        )
        super().__init__(params, defaults)

    def _init_group(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        params, grads, sums = [], [], []
        for p in group["params"]:
            state = self.state[p]
            if not state:  # every parameter of the group holds the shared accumulator
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["sum"] = torch.full(
                    (), group["initial_accumulator_value"], dtype=p.dtype, device=p.device
                )
            if p.grad is not None:
                if p.grad.is_sparse:
                    raise TypeError("AdaGradNorm does not support sparse gradients")
                params.append(p)
                grads.append(p.grad)
                sums.append(state["sum"])
        return params, grads, sums

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Take one step for every parameter group.

        Args:
            closure: re-evaluates the model and returns the loss (optional).

        Returns:
            The closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, sums = self._init_group(group)
            if not params:
                continue
            # parameters of the group that got no gradient still share the accumulator
            others = [self.state[p]["sum"] for p in group["params"] if p.grad is None]
            total = adagrad_norm(
                params,
                grads,
                sums,
                lr=group["lr"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                maximize=group["maximize"],
            )
            for s in others:
                s.add_(total.to(device=s.device, dtype=s.dtype))
            for p in group["params"]:
                self.state[p]["step"] += 1
        return loss
