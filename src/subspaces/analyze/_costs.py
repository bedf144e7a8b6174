"""Predicted cost of a phase: curvature products x measured seconds per product."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from .._progress import format_seconds
from ..dynamics import CurvatureTracker


def _measure_product_seconds(op: Any, generator: torch.Generator) -> float:
    """Seconds of one curvature product (measured on a random vector)."""
    v = torch.randn(op.shape[0], generator=generator, dtype=torch.float64)
    v = v.to(device=op.device, dtype=op.dtype)
    op @ v  # the first product builds and checks what later ones reuse
    t0 = time.perf_counter()
    op @ v
    return time.perf_counter() - t0


def _log_tracking_cost(
    log: Callable[[str], None], tracker: CurvatureTracker, data: Any, checks: int, steps: int
) -> None:
    """Print the predicted cost of tracking: checkpoints x products x measured time per product."""
    per = _measure_product_seconds(tracker._op(data), torch.Generator())
    products = tracker.products_per_measure()
    log(
        _cost_line("tracking", [(f"{checks} checkpoints x {products} =", checks * products)], per)
        + f", plus {steps} training steps"
    )


def _cost_line(phase: str, parts: list[tuple[str, int]], seconds_per_product: float) -> str:
    """``phase: up to N products (parts) x T ms per product (measured) = up to S``.

    The counts are budgets and estimates (a trace stops early when accurate enough, Lanczos when
    converged), so the time is an upper estimate.

    Returns:
        The line.
    """
    total = sum(p for _, p in parts)
    detail = ", ".join(f"{name} {p}" for name, p in parts)
    return (
        f"{phase}: up to {total} products ({detail}) x {seconds_per_product * 1e3:.3g} ms "
        f"per product (measured) = up to {format_seconds(total * seconds_per_product)}"
    )


class _TrainingEta:
    """ETA of training with curvature checkpoints: each kind of work at its own measured pace.

    A checkpoint can cost as much as hundreds of steps, so the average pace of the steps (what
    a plain progress bar divides by) swings with where the checkpoints fall. Here the seconds
    left are the remaining steps times the measured seconds per plain step plus the remaining
    checkpoints (the final one at the last step included) times the measured seconds per
    checkpoint, both measured since this phase started (after a resume: since the resume).

    Args:
        checkpoints: curvature checkpoints still to come in this phase.

    Example:
        >>> eta = _TrainingEta(checkpoints=3)
        >>> eta.checkpoint(2.0); eta.steps = 10; eta.t0 -= 2.0 + 10 * 0.1  # 10 steps of 0.1 s
        >>> round(eta(20), 1)  # 20 steps x 0.1 s + 2 checkpoints x 2 s
        6.0
    """

    def __init__(self, checkpoints: int) -> None:
        self.t0 = time.monotonic()
        self.remaining = checkpoints
        self.curvature_seconds = 0.0
        self.checks = 0
        self.steps = 0

    def checkpoint(self, seconds: float) -> None:
        """Count one checkpoint that took ``seconds``."""
        self.curvature_seconds += seconds
        self.checks += 1
        self.remaining = max(self.remaining - 1, 0)

    def __call__(self, steps_left: int) -> float | None:
        if self.steps == 0:
            return None
        elapsed = time.monotonic() - self.t0
        per_step = max(elapsed - self.curvature_seconds, 0.0) / self.steps
        per_check = self.curvature_seconds / self.checks if self.checks else 0.0
        return steps_left * per_step + self.remaining * per_check
