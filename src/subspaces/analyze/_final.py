"""The final phase: top eigenpairs, trace and SLQ density of the Hessian over batches."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._progress import Progress
from ..curvature import HessianOperator, bulk_outliers, density, top_eigen, trace
from ._costs import _cost_line, _measure_product_seconds


class _CountedHessian(HessianOperator):
    """A Hessian that reports the columns of every product to ``on_products`` (live progress)."""

    on_products: Callable[[int], None] | None = None

    def _matmat(self, X: Tensor) -> Tensor:
        out = super()._matmat(X)
        if self.on_products is not None:
            self.on_products(int(X.shape[1]))
        return out


class _PhaseProgress:
    """Progress through parts with a product budget each, counted in products as they run.

    The bar starts at the predicted number of products (the sum of the budgets: the count the
    cost line printed before the phase). The count is the products done; the total is that plus
    what is left of the running part's budget plus the budgets of the parts to come, so a part
    that ends early (a trace accurate enough) lowers the total and one that runs over its
    estimate raises it. The ETA is then the remaining products at the measured seconds per
    product, whichever part they are in.
    """

    def __init__(self, parts: list[tuple[str, int]], desc: str, quiet: bool) -> None:
        self.budgets = dict(parts)
        self.later = sum(self.budgets.values())  # budgets of the parts not begun yet
        self.progress = Progress(self.later, desc, quiet=quiet)
        self.used, self.part = 0, ""

    def begin(self, part: str) -> None:
        self.part, self.used = part, 0
        self.later -= self.budgets[part]
        self.progress.note = part

    def products(self, columns: int) -> None:
        self.used += columns
        left = max(self.budgets[self.part] - self.used, 1)  # running: at least one more
        self.progress.total = self.progress.count + columns + left + self.later
        self.progress.update(columns)

    def end(self) -> None:
        self.progress.total = self.progress.count + self.later
        self.progress.update(0)

    def close(self) -> None:
        self.progress.close()


def _quiet(message: str) -> None:
    """Drop ``message`` (the log of ranks other than 0)."""


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
    distributed: bool = False,
    show: bool = True,
) -> _Final:
    """Top eigenpairs, trace and SLQ density of the Hessian on ``data`` (summed over its batches).

    The predicted cost (products x measured seconds per product) is logged before it starts, and
    the progress in products while it runs (:class:`_PhaseProgress`: an ETA from the products
    done and the time they took).

    With ``distributed``, ``data`` is this rank's shard and every product is summed over the
    ranks (the same results on every rank); ``quiet`` must then be the same on every rank (it
    decides whether the cost is measured, one product), and ``show=False`` hides the output of
    ranks other than 0.

    Returns:
        The results and the seconds they took.
    """
    t0 = time.perf_counter()
    H = _CountedHessian(
        model, loss_fn, data, mode_policy="eval", dtype=dtype, distributed=distributed
    )
    k_final = min(final_k, H.shape[0])
    steps = min(density_steps, H.shape[0])
    parts = [
        (f"top-{k_final} eigenpairs", 3 * (k_final + 2) + 10),
        (f"trace (at most {trace_budget})", trace_budget),
        (f"density {density_runs}x{steps}", density_runs * steps),
    ]
    if not quiet:
        per = _measure_product_seconds(H, torch.Generator().manual_seed(0))
        batches = H.num_batches or 1
        (log if show else _quiet)(
            _cost_line(
                f"final spectrum on {what} ({batches} batch{'es' if batches > 1 else ''})",
                parts,
                per,
            )
        )
    progress = _PhaseProgress(parts, "final spectrum (products)", quiet or not show)
    H.on_products = progress.products
    progress.begin(parts[0][0])
    top = top_eigen(H, k_final, rtol=1e-4, generator=generator)
    progress.end()
    split = bulk_outliers(top) if int((top.eigenvalues > 0).sum()) >= 2 else None
    progress.begin(parts[1][0])
    tr = trace(H, rtol=0.03, max_matvecs=trace_budget, generator=generator)
    progress.end()
    progress.begin(parts[2][0])
    dens = density(H, density_runs, steps, generator=generator)
    progress.end()
    progress.close()
    H.on_products = None
    return _Final(top, split, tr, dens, time.perf_counter() - t0, k_final, H.num_batches)
