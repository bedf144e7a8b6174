"""Per-layer stepping inside ``backward()``, with gradient accumulation done right.

GaLore's per-layer mode registers a ``post_accumulate_grad`` hook on every parameter that steps
that parameter's optimizer and frees its gradient as soon as it is computed, so only one layer's
full gradient is alive at a time. Its hook steps on *every* micro-batch, so with gradient
accumulation ``k`` it silently takes ``k`` optimizer steps instead of one (GaLore issue #78).

:class:`LayerwiseStepper` counts micro-batches (backward passes) per parameter and steps only at
the accumulation boundary, on the gradient summed over the ``k`` micro-batches, so per-layer
training with accumulation equals ordinary training on the summed gradient. There is one
optimizer and one learning-rate clock: call ``scheduler.step()`` once per boundary, as without
per-layer mode.

A boundary backward is applied all or nothing. As each gradient completes, the hook checks it
for NaN/Inf and, for a projected weight of :class:`~subspaces.optim.SubspaceAdamW`, reduces it
to its ``a x r`` subspace coordinates and frees it (the full gradient of one layer at a time, as
in GaLore; the coordinates are the size of one Adam moment). The steps themselves are applied
when the whole backward has finished, so a NaN/Inf in any gradient leaves the model and the
optimizer state unchanged. A weight whose gradient arrives in several parts within one backward
(shared by segments of reentrant activation checkpointing, whose recomputation runs nested
backward passes) is stepped once, on its full gradient, at the end of the outermost backward.

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

import sys
from types import CodeType, TracebackType
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from .._checks import all_finite, check_positive_int

__all__ = ["LayerwiseStepper"]


class _StepsOneParam(Protocol):
    param_groups: list[dict[str, Any]]

    def step_param(self, param: Tensor) -> None: ...


def _code(obj: Any) -> CodeType | None:
    return getattr(obj, "__code__", None)


# A backward pass run from inside another one (reentrant activation checkpointing recomputes
# its segment and calls backward from the Python backward of CheckpointFunction) shows on the
# Python stack as the engine's entry point called below a Python autograd Function's backward.
_ENGINE_RUN = _code(getattr(torch.autograd.graph, "_engine_run_backward", None))
_PY_BACKWARD = _code(getattr(torch.autograd.function.BackwardCFunction, "apply", None))


def _in_nested_backward() -> bool:
    """Whether the current backward runs inside the backward of a Python autograd Function."""
    if _ENGINE_RUN is None or _PY_BACKWARD is None:
        return False
    frame = sys._getframe(1)
    seen_engine = False
    while frame is not None:
        if frame.f_code is _ENGINE_RUN:
            seen_engine = True
        elif seen_engine and frame.f_code is _PY_BACKWARD:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _graph_task_id() -> int:
    get = getattr(torch._C, "_current_graph_task_id", None)
    return int(get()) if get is not None else -1


def _enclosing_node() -> Any:
    """The autograd node whose execution encloses the current (nested) backward, or ``None``."""
    get = getattr(torch._C, "_current_autograd_node", None)
    return get() if get is not None else None


class LayerwiseStepper:
    """Context manager that steps each parameter inside ``backward()`` at accumulation boundaries.

    Inside the context every ``backward()`` counts as one micro-batch. At a parameter's
    ``accumulation_steps``-th micro-batch its summed gradient is checked for NaN/Inf and (for a
    projected weight of :class:`~subspaces.optim.SubspaceAdamW`) reduced to its subspace
    coordinates as soon as it is complete, and freed; every step is applied at the end of that
    backward, all or nothing. On a NaN/Inf gradient with the group's ``nonfinite="error"``
    (the default) :class:`~subspaces.optim.NonFiniteGradientError` is raised out of
    ``backward()``; with ``"skip"`` the window is skipped and counted in the optimizer's
    ``skipped_steps``. Either way the accumulation window is discarded: no parameter or
    optimizer state changes, every gradient of the optimizer's parameters is cleared and the
    next micro-batch starts a new window.

    Works with reentrant and non-reentrant activation checkpointing (a weight shared by several
    checkpointed segments steps once per boundary, on its full gradient) and with the INT8
    weights of :class:`~subspaces.optim.quantization.Int8Linear`. Not for
    ``DistributedDataParallel``, whose gradients are averaged after these hooks run.

    Args:
        optimizer: an optimizer with a ``step_param(param)`` method, such as
            :class:`~subspaces.optim.SubspaceAdamW`. An optimizer without SubspaceAdamW's
            two-phase interface keeps every boundary gradient until the end of the backward,
            then checks all of them and calls ``step_param`` for each.
        accumulation_steps: number of micro-batches whose gradients are summed before a step.

    Raises:
        TypeError: if the optimizer cannot step a single parameter.
        ValueError: if ``accumulation_steps < 1``.

    Attributes:
        boundaries: number of completed accumulation boundaries (steps of the slowest parameter).

    Example:
        Four micro-batches with ``accumulation_steps=2`` take the same two steps as ordinary
        training on the summed gradients (here with a rank-2 projected weight):

        >>> import copy
        >>> import torch
        >>> from subspaces.optim import LayerwiseStepper, SubspaceAdamW
        >>> torch.manual_seed(0) and None
        >>> a = torch.nn.Linear(8, 4)
        >>> b = copy.deepcopy(a)
        >>> opt_a = SubspaceAdamW(a.parameters(), lr=0.1, rank=2)
        >>> opt_b = SubspaceAdamW(b.parameters(), lr=0.1, rank=2)
        >>> x = torch.randn(16, 8)
        >>> with LayerwiseStepper(opt_a, accumulation_steps=2) as stepper:
        ...     for micro in x.split(4):
        ...         a(micro).square().mean().backward()
        >>> for pair in x.split(8):
        ...     for micro in pair.split(4):
        ...         b(micro).square().mean().backward()
        ...     opt_b.step()
        ...     opt_b.zero_grad()
        >>> stepper.boundaries, a.weight.grad is None, tuple(opt_a.state[a.weight]["exp_avg"].shape)
        (2, True, (8, 2))
        >>> torch.allclose(a.weight, b.weight, atol=1e-6), torch.allclose(a.bias, b.bias, atol=1e-6)
        (True, True)
    """

    def __init__(self, optimizer: _StepsOneParam, accumulation_steps: int = 1) -> None:
        if not callable(getattr(optimizer, "step_param", None)):
            raise TypeError(
                f"{type(optimizer).__name__} has no step_param(param) method; per-layer stepping "
                "needs an optimizer that can step one parameter (e.g. SubspaceAdamW)"
            )
        self.optimizer = optimizer
        self.accumulation_steps = check_positive_int(accumulation_steps, "accumulation_steps")
        self._two_phase = callable(getattr(optimizer, "_prepare_param", None))
        self._handles: list[RemovableHandle] = []
        self._window: dict[int, int] = {}  # micro-batches summed in .grad since the last step
        self._steps: dict[int, int] = {}
        self._reset_backward()

    def _reset_backward(self) -> None:
        """Forget the bookkeeping of the current backward pass."""
        self._seen: set[int] = set()  # parameters whose gradient arrived in this backward
        self._deferred: dict[int, Tensor] = {}  # may still receive gradient: prepare at the end
        self._pending: dict[int, tuple[Tensor, Any]] = {}  # prepared, applied at the end
        self._queued: set[int] = set()  # graph tasks holding our end-of-backward callback
        self._skipping = False

    @property
    def boundaries(self) -> int:
        """Completed boundaries: the number of steps every stepped parameter has taken."""
        return min(self._steps.values()) if self._steps else 0

    def _params(self) -> list[Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]

    # ------------------------------------------------------------------ end of backward

    def _ensure_end_callback(self) -> None:
        """Have ``_on_task_end`` run when the current graph task (backward pass) finishes."""
        task = _graph_task_id()
        if task in self._queued:
            return
        self._queued.add(task)
        torch.autograd.Variable._execution_engine.queue_callback(self._on_task_end)

    def _on_task_end(self) -> None:
        node = _enclosing_node()
        if node is None:  # the outermost backward has finished
            self._finish()
            return
        # A nested backward (reentrant checkpoint) ended inside the node ``node`` of the outer
        # one. Callbacks queued now would run with this nested task; the nodes that take
        # ``node``'s output run in the outer task, so the first of them queues the callback.
        handles: list[RemovableHandle] = []

        def prehook(grad_outputs: Any) -> None:
            for h in handles:
                h.remove()
            self._ensure_end_callback()

        for next_node, _ in node.next_functions:
            if next_node is not None:
                handles.append(next_node.register_prehook(prehook))
        if not handles:  # nothing runs after it: this backward ends with the node
            self._finish()

    # ------------------------------------------------------------------ hooks

    def _hook(self, p: Tensor) -> None:
        key = id(p)
        self._ensure_end_callback()
        if self._skipping:
            p.grad = None
            return
        if key not in self._seen:
            self._seen.add(key)
            self._window[key] = self._window.get(key, 0) + 1
        if self._window[key] < self.accumulation_steps:
            return  # keep summing micro-batches in .grad
        grad = p.grad
        if grad is None:
            return
        if not all_finite(grad):
            self._nonfinite(p, grad)
            return
        if not self._two_phase or key in self._deferred or _in_nested_backward():
            self._deferred[key] = p  # more of this gradient may come later in this backward
            return
        try:
            self._prepare(p)
        except BaseException:
            self._discard_window()  # nothing was applied; start the next window clean
            raise

    def _prepare(self, p: Tensor) -> None:
        key = id(p)
        earlier = self._pending.get(key)
        previous = earlier[1] if earlier is not None else None
        prepared = self.optimizer._prepare_param(p, previous)  # type: ignore[attr-defined]
        self._pending[key] = (p, prepared)
        if not prepared.keeps_grad:
            p.grad = None  # the coordinates are all the step needs: free the full gradient

    def _nonfinite(self, p: Tensor, grad: Tensor) -> None:
        bad = int((~torch.isfinite(grad)).sum())
        policy = "error"
        policy_of = getattr(self.optimizer, "_nonfinite_policy", None)
        if callable(policy_of):
            policy = policy_of(p)
        self._discard_window()
        if policy == "skip":
            self._skipping = True
            if hasattr(self.optimizer, "skipped_steps"):
                self.optimizer.skipped_steps += 1
            return
        from .subspace_adamw import NonFiniteGradientError

        name = getattr(self.optimizer, "_name", None)
        label = name(p) if callable(name) else f"a parameter of shape {tuple(p.shape)}"
        raise NonFiniteGradientError(
            f"gradient of {label} has {bad} non-finite value(s) (NaN or Inf) at an accumulation "
            "boundary; no parameter or optimizer state was changed, the gradients of this "
            "window were cleared. Use nonfinite='skip' to skip such windows."
        )

    def _discard_window(self) -> None:
        """Drop the current window: no step, gradients cleared, micro-batch counts reset."""
        for p in self._params():
            p.grad = None
            self._window[id(p)] = 0
        queued = self._queued
        self._reset_backward()
        self._queued = queued  # the callbacks already queued must not be queued twice

    def _finish(self) -> None:
        """End of the outermost backward: prepare what was deferred, then apply every step."""
        try:
            if self._skipping:
                self._discard_window()
                return
            try:
                for key, p in list(self._deferred.items()):
                    grad = p.grad
                    if grad is None:
                        continue
                    if not all_finite(grad):
                        self._nonfinite(p, grad)
                        return
                    if self._two_phase:
                        self._prepare(p)
                    else:
                        self._pending[key] = (p, None)
            except BaseException:
                self._discard_window()  # nothing was applied; start the next window clean
                raise
            for key, (p, prepared) in self._pending.items():
                if prepared is None:
                    self.optimizer.step_param(p)
                else:
                    self.optimizer._commit_param(p, prepared)  # type: ignore[attr-defined]
                p.grad = None
                self._window[key] = 0
                self._steps[key] = self._steps.get(key, 0) + 1
            if self._pending:
                # Tell torch LR schedulers that the optimizer has stepped (no spurious warning).
                self.optimizer._opt_called = True  # type: ignore[attr-defined]
        finally:
            self._reset_backward()

    # ------------------------------------------------------------------ context

    def __enter__(self) -> LayerwiseStepper:
        if self._handles:
            raise RuntimeError("LayerwiseStepper is already active")
        params = self._params()
        if not params:
            raise ValueError("the optimizer has no parameters that require gradients")
        self._reset_backward()
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

    def discard(self) -> None:
        """Drop the current accumulation window: step nothing, clear gradients and counts.

        For a micro-batch to be thrown away, or after a ``backward()`` interrupted by an error
        other than :class:`~subspaces.optim.NonFiniteGradientError` (whose handling already
        discards the window), so that no step prepared from a partial backward is applied later.
        """
        self._discard_window()
        self._reset_backward()

    @torch.no_grad()
    def flush(self) -> int:
        """Step every parameter that holds a partially accumulated gradient (all or nothing).

        Returns:
            The number of parameters stepped.

        Raises:
            NonFiniteGradientError: if one of those gradients holds NaN/Inf and its group's
                ``nonfinite`` is ``"error"`` (nothing is stepped; the window is discarded).
        """
        todo = [p for p in self._params() if p.grad is not None and self._window.get(id(p), 0) > 0]
        for p in todo:
            grad = p.grad
            if grad is not None and not all_finite(grad):
                self._nonfinite(p, grad)
                self._reset_backward()
                return 0
        for p in todo:
            self.optimizer.step_param(p)
            p.grad = None
            self._window[id(p)] = 0
        return len(todo)
