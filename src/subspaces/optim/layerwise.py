"""Per-layer stepping inside ``backward()``, with gradient accumulation done right.

GaLore's per-layer mode registers a ``post_accumulate_grad`` hook on every parameter that steps
that parameter's optimizer and frees its gradient as soon as it is computed, so only one layer's
full gradient is alive at a time. Its hook steps on *every* micro-batch, so with gradient
accumulation ``k`` it silently takes ``k`` optimizer steps instead of one (GaLore issue #78).

:class:`LayerwiseStepper` counts micro-batches per parameter and steps only at the accumulation
boundary, on the gradient summed over the ``k`` micro-batches, so per-layer training with
accumulation equals ordinary training on the summed gradient. There is one optimizer and one
learning-rate clock: call ``scheduler.step()`` once per boundary, as without per-layer mode.

Example:
    >>> import torch
    >>> from subspaces.optim import SubspaceAdamW
    >>> model = torch.nn.Linear(8, 4)
    >>> opt = SubspaceAdamW(model.parameters(), lr=0.1)
    >>> x = torch.randn(16, 8)
    >>> with LayerwiseStepper(opt, accumulation_steps=2) as stepper:
    ...     for micro in x.split(8):
    ...         model(micro).square().mean().backward()
    >>> stepper.boundaries, model.weight.grad is None
    (1, True)
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from .._checks import check_positive_int

__all__ = ["LayerwiseStepper"]


class _StepsOneParam(Protocol):
    param_groups: list[dict[str, Any]]

    def step_param(self, param: Tensor) -> None: ...


class LayerwiseStepper:
    """Context manager that steps each parameter inside ``backward()`` at accumulation boundaries.

    Args:
        optimizer: an optimizer with a ``step_param(param)`` method, such as
            :class:`~subspaces.optim.SubspaceAdamW`.
        accumulation_steps: number of micro-batches whose gradients are summed before a step.

    Raises:
        TypeError: if the optimizer cannot step a single parameter.
        ValueError: if ``accumulation_steps < 1``.

    Attributes:
        boundaries: number of completed accumulation boundaries (steps of the slowest parameter).
    """

    def __init__(self, optimizer: _StepsOneParam, accumulation_steps: int = 1) -> None:
        if not callable(getattr(optimizer, "step_param", None)):
            raise TypeError(
                f"{type(optimizer).__name__} has no step_param(param) method; per-layer stepping "
                "needs an optimizer that can step one parameter (e.g. SubspaceAdamW)"
            )
        self.optimizer = optimizer
        self.accumulation_steps = check_positive_int(accumulation_steps, "accumulation_steps")
        self._handles: list[RemovableHandle] = []
        self._counts: dict[int, int] = {}
        self._steps: dict[int, int] = {}

    @property
    def boundaries(self) -> int:
        """Completed boundaries: the number of steps every stepped parameter has taken."""
        return min(self._steps.values()) if self._steps else 0

    def _params(self) -> list[Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]

    def _hook(self, p: Tensor) -> None:
        key = id(p)
        self._counts[key] = self._counts.get(key, 0) + 1
        if self._counts[key] % self.accumulation_steps == 0:
            self.optimizer.step_param(p)
            p.grad = None
            self._steps[key] = self._steps.get(key, 0) + 1
            # Tell torch LR schedulers that the optimizer has stepped (no spurious warning).
            self.optimizer._opt_called = True  # type: ignore[attr-defined]

    def __enter__(self) -> LayerwiseStepper:
        if self._handles:
            raise RuntimeError("LayerwiseStepper is already active")
        int8 = [
            tuple(p.shape)
            for g in self.optimizer.param_groups
            for p in g["params"]
            if not p.is_floating_point()
        ]
        if int8:
            raise ValueError(
                f"per-layer stepping needs float parameters with .grad; the optimizer holds INT8 "
                f"weights of shapes {int8} (Int8Linear), whose gradients live outside autograd's "
                "hooks. Step them with optimizer.step() instead."
            )
        params = self._params()
        if not params:
            raise ValueError("the optimizer has no parameters that require gradients")
        for p in params:
            self._steps.setdefault(id(p), 0)
            self._handles.append(p.register_post_accumulate_grad_hook(self._hook))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @torch.no_grad()
    def flush(self) -> int:
        """Step every parameter that holds a partially accumulated gradient.

        Returns:
            The number of parameters stepped.
        """
        stepped = 0
        for p in self._params():
            key = id(p)
            if p.grad is not None and self._counts.get(key, 0) % self.accumulation_steps:
                self.optimizer.step_param(p)
                p.grad = None
                self._counts[key] = 0
                stepped += 1
        return stepped
