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
        _cost_line("tracking", [(f"{checks} checkpoints x {products}", checks * products)], per)
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
