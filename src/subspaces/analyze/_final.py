"""The final phase: top eigenpairs, trace and SLQ density of the Hessian over batches."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._progress import Progress
from ..curvature import HessianOperator, bulk_outliers, density, top_eigen, trace
from ._costs import _cost_line, _measure_product_seconds


@dataclass
class _Final:
    top: Any
    split: Any
    tr: Any
    dens: Any
    seconds: float
    k: int
    top_batches: int | None


def _final_spectrum(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    *,
    final_k: int,
    density_runs: int,
    density_steps: int,
    generator: torch.Generator,
    quiet: bool,
    log: Callable[[str], None],
    what: str,
    dtype: torch.dtype | None = None,
    trace_budget: int = 600,
) -> _Final:
    """Top eigenpairs, trace and SLQ density of the Hessian on ``data`` (summed over its batches).

    The predicted cost (products x measured seconds per product) is logged before it starts, and
    each part's progress while it runs.

    Returns:
        The results and the seconds they took.
    """
    t0 = time.perf_counter()
    H = HessianOperator(model, loss_fn, data, mode_policy="eval", dtype=dtype)
    k_final = min(final_k, H.shape[0])
    steps = min(density_steps, H.shape[0])
    if not quiet:
        per = _measure_product_seconds(H, torch.Generator().manual_seed(0))
        batches = H.num_batches or 1
        log(
            _cost_line(
                f"final spectrum on {what} ({batches} batch{'es' if batches > 1 else ''})",
                [
                    (f"top-{k_final} eigenpairs", 3 * (k_final + 2) + 10),
                    (f"trace (at most {trace_budget})", trace_budget),
                    (f"density {density_runs}x{steps}", density_runs * steps),
                ],
                per,
            )
        )
    progress = Progress(3, "final spectrum", quiet=quiet)
    progress.note = "top eigenpairs"
    top = top_eigen(H, k_final, rtol=1e-4, generator=generator)
    progress.update()
    split = bulk_outliers(top) if int((top.eigenvalues > 0).sum()) >= 2 else None
    progress.note = "trace"
    tr = trace(H, rtol=0.03, max_matvecs=trace_budget, generator=generator)
    progress.update()
    progress.note = "density"
    dens = density(H, density_runs, steps, generator=generator)
    progress.update()
    progress.close()
    return _Final(top, split, tr, dens, time.perf_counter() - t0, k_final, H.num_batches)
