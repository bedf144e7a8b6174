r"""P06: decomposed diffusion sampling: Krylov data consistency instead of network gradients.

Chung, Lee & Ye, "Decomposed Diffusion Sampler for Accelerating Large-Scale Inverse Problems"
(ICLR 2024, arXiv:2303.05754): if the tangent space of the clean-data manifold at Tweedie's
denoised sample is a Krylov subspace, a few conjugate-gradient steps on the data-consistency
system started at the denoised sample stay on that tangent space, so no manifold-constrained
gradient (backpropagation through the network, as in DPS) is needed; with about 50 network
evaluations DDS matches or beats samplers that need 1000 evaluations and backward passes.

Protocol (float64, :mod:`subspaces.solvers`): per seed a fresh problem: the prior
:meth:`~subspaces.solvers.LowRankGaussianPrior.smooth` on ``32 x 32`` images, rank ``k = 20``,
length scale 4 pixels, ``s0 = 0`` (data exactly on a 20-dimensional subspace, the tangent space
``span(U)``); the operator :class:`~subspaces.solvers.SubsampledFourier` with a
:func:`~subspaces.solvers.fourier_mask` ``"random"`` mask sampling 25% of k-space (4x
acceleration) with a fully sampled ``9 x 9`` low-frequency square (``center_fraction=0.25``), as
MRI masks do; noiseless ``y = A x_true``; the linear schedule with ``T = 1000`` training steps.
The prior's exact denoiser (:class:`~subspaces.solvers.ClosedFormDenoiser`, epsilon
parameterisation) replaces the network, so the exact posterior mean
(:meth:`~subspaces.solvers.LowRankGaussianPrior.posterior_mean`) is known. DDS: deterministic
(``eta = 0``), noiseless CG variant. DPS: Algorithm 1 of Chung et al. 2023 (arXiv:2209.14687)
with the same denoiser, step size ``zeta`` from the grid ``{0.03, 0.1, 0.3}`` (fast: ``{0.1}``),
the best per seed and step count (which favours DPS).

Measured per seed (5 seeds; fast: 3):

* ``dds_error``: ``||x_DDS - x_pm|| / ||x_pm||`` for DDS with ``T = 50`` steps and ``M = 5`` CG
  steps.
* ``off_tangent``: for ``M`` in ``{1, 2, 5, 10}`` (``T = 50``), the fraction of the CG updates
  ``dx = x0_hat' - x0_hat`` off the tangent space, ``sum_steps ||(I - U U^T) dx|| / sum_steps
  ||dx||``. Diagnostic without a criterion: the same for a uniformly random mask without the
  fully sampled centre, where the Krylov space is not close to ``span(U)``.
* Equal error at the target ``1e-2``: DDS's network evaluations ``NFE_DDS`` = the smallest ``T``
  in ``{5, 10, 20, 50}`` (``M = 5``) with error ``<= 1e-2``; DPS's ``NFE_DPS`` = the smallest
  ``T`` in ``{100, 250, 500, 1000}`` (fast: ``{250, 1000}``) whose best-``zeta`` error is ``<=
  1e-2``, or ``> 1000`` if none (then 1000 is used in the ratio, a lower bound). Backward passes
  through the denoiser are counted for both; wall times are reported, not judged.

Passed iff on every seed: ``dds_error <= 1e-2``; ``off_tangent < 0.05`` for ``M = 1`` and ``M =
2``; ``NFE_DPS / NFE_DDS >= 10``; DDS made 0 backward passes and DPS one per evaluation.

Criterion fixed before the first full run.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from ..solvers import (
    LowRankGaussianPrior,
    SubsampledFourier,
    alphas_bar,
    betas,
    dds,
    dps,
    fourier_mask,
)
from ._common import checks_text, figure_png, single_thread
from ._stats import seed_summary
from .registry import ExperimentResult, register

SHAPE = (32, 32)
RANK = 20
LENGTH_SCALE = 4.0
FRACTION = 0.25
CENTER = 0.25
TARGET = 1e-2
DDS_STEPS = (5, 10, 20, 50)
CG_STEPS = (1, 2, 5, 10)
DPS_STEPS, FAST_DPS_STEPS = (100, 250, 500, 1000), (250, 1000)
ZETAS, FAST_ZETAS = (0.03, 0.1, 0.3), (0.1,)
SEEDS, FAST_SEEDS = 5, 3
ABAR = alphas_bar(betas(1000))  # the linear schedule, T = 1000 training steps


def make_problem(
    seed: int, *, center_fraction: float = CENTER
) -> tuple[LowRankGaussianPrior, SubsampledFourier, torch.Tensor, torch.Tensor]:
    """The seed's prior, operator, measurements and exact posterior mean.

    Args:
        seed: seed of the prior's fields, the mask and the true image.
        center_fraction: side of the fully sampled k-space centre (fraction of the image side).

    Returns:
        ``(prior, A, y, posterior_mean)``.
    """
    g = torch.Generator().manual_seed(seed)
    prior = LowRankGaussianPrior.smooth(SHAPE, RANK, length_scale=LENGTH_SCALE, generator=g)
    mask = fourier_mask(
        SHAPE, "random", fraction=FRACTION, center_fraction=center_fraction, generator=g
    )
    A = SubsampledFourier(mask)
    x_true = prior.sample(1, generator=g)[0]
    y = A @ x_true
    return prior, A, y, prior.posterior_mean(A, y)


def off_tangent_fraction(
    prior: LowRankGaussianPrior,
    A: SubsampledFourier,
    y: torch.Tensor,
    pm: torch.Tensor,
    num_cg_steps: int,
    *,
    num_steps: int = 50,
    seed: int = 0,
) -> tuple[float, float]:
    """Run DDS and measure how much of its CG updates leaves the prior's tangent space.

    Args:
        prior: the low-rank prior (tangent space ``span(prior.basis)``).
        A: measurement operator.
        y: measurements.
        pm: exact posterior mean.
        num_cg_steps: ``M``.
        num_steps: DDS steps.
        seed: seed of the sampler's initial noise.

    Returns:
        ``(sum ||(I - U U^T) dx|| / sum ||dx||, relative error to pm)``.
    """
    U = prior.basis
    off, total = [0.0], [0.0]

    def record(i: int, t: int, x0_hat: torch.Tensor, x0_dc: torch.Tensor) -> None:
        dx = x0_dc - x0_hat
        off[0] += float((dx - (dx @ U) @ U.T).norm())
        total[0] += float(dx.norm())

    out = dds(
        prior.denoiser(ABAR),
        A,
        y,
        ABAR,
        num_steps=num_steps,
        num_cg_steps=num_cg_steps,
        generator=torch.Generator().manual_seed(seed),
        callback=record,
    )
    return off[0] / max(total[0], 1e-300), float((out.x - pm).norm() / pm.norm())


def _first_below(steps: list[int], errors: list[float]) -> int | None:
    return next((s for s, e in zip(steps, errors, strict=True) if e <= TARGET), None)


def run_seed(seed: int, *, fast: bool) -> dict[str, Any]:
    """All measurements of one seed.

    Args:
        seed: problem and sampler seed.
        fast: use the fast DPS grid.

    Returns:
        The seed's numbers.

    Raises:
        RuntimeError: if DPS does not report one backward pass per step.
    """
    prior, A, y, pm = make_problem(seed)
    den = prior.denoiser(ABAR)
    rec: dict[str, Any] = {"pm_measurement_residual": float((A @ pm - y).norm() / y.norm())}
    dds_err, dds_time = [], []
    for T in DDS_STEPS:
        start = time.perf_counter()
        out = dds(den, A, y, ABAR, num_steps=T, num_cg_steps=5,
                  generator=torch.Generator().manual_seed(seed))  # fmt: skip
        dds_time.append(time.perf_counter() - start)
        dds_err.append(float((out.x - pm).norm() / pm.norm()))
        rec["dds_backward"] = out.num_backward
    rec["dds_error_by_steps"] = dict(zip(map(str, DDS_STEPS), dds_err, strict=True))
    rec["dds_error"] = dds_err[DDS_STEPS.index(50)]
    rec["off_tangent"] = {
        str(M): off_tangent_fraction(prior, A, y, pm, M, seed=seed)[0] for M in CG_STEPS
    }
    uniform = make_problem(seed, center_fraction=0.0)
    rec["uniform_mask_off_tangent_and_error"] = {
        str(M): off_tangent_fraction(*uniform, M, seed=seed) for M in (1, 5)
    }
    steps = list(FAST_DPS_STEPS if fast else DPS_STEPS)
    zetas = FAST_ZETAS if fast else ZETAS
    dps_err: dict[str, dict[str, float]] = {}
    dps_time: dict[str, float] = {}
    for T in steps:
        dps_err[str(T)] = {}
        for z in zetas:
            start = time.perf_counter()
            out = dps(den, A, y, ABAR, num_steps=T, step_size=z,
                      generator=torch.Generator().manual_seed(seed))  # fmt: skip
            dps_time[f"{T}/{z}"] = time.perf_counter() - start
            dps_err[str(T)][str(z)] = float((out.x - pm).norm() / pm.norm())
            if out.num_backward != T:
                raise RuntimeError(f"DPS reported {out.num_backward} backward passes for {T} steps")
    best = [min(dps_err[str(T)].values()) for T in steps]
    rec["dps_error"] = dps_err
    rec["dps_best_error_by_steps"] = dict(zip(map(str, steps), best, strict=True))
    nfe_dds = _first_below(list(DDS_STEPS), dds_err)
    nfe_dps = _first_below(steps, best)
    rec["nfe_dds"], rec["nfe_dps"] = nfe_dds, nfe_dps
    rec["nfe_ratio"] = (nfe_dps if nfe_dps is not None else steps[-1]) / nfe_dds if nfe_dds else 0.0
    rec["nfe_ratio_is_lower_bound"] = nfe_dps is None
    rec["dds_seconds_by_steps"] = dict(zip(map(str, DDS_STEPS), dds_time, strict=True))
    rec["dps_seconds"] = dps_time
    return rec


def _plot(per_seed: list[dict[str, Any]], dps_steps: list[int]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.5))
    for i, rec in enumerate(per_seed):
        ax.loglog(DDS_STEPS, list(rec["dds_error_by_steps"].values()), "o-", color="C0",
                  alpha=0.7, label="DDS (M = 5, no backprop)" if i == 0 else None)  # fmt: skip
        ax.loglog(dps_steps, list(rec["dps_best_error_by_steps"].values()), "s--", color="C3",
                  alpha=0.7, label="DPS (best zeta, backprop)" if i == 0 else None)  # fmt: skip
    ax.axhline(TARGET, color="k", lw=1, ls=":", label="target 1e-2")
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_ylabel("relative error to exact posterior mean")
    ax.legend(fontsize=7)
    ax.set_title("DDS vs DPS, exact low-rank denoiser, 4x Fourier")
    fig.tight_layout()
    return figure_png(fig)


@register(
    "P06",
    title="Decomposed diffusion sampler: CG data consistency on the tangent space",
    paper="Chung, Lee & Ye 2024, Decomposed Diffusion Sampler for Accelerating Large-Scale "
    "Inverse Problems (ICLR 2024, arXiv:2303.05754)",
    claim=(
        "CG steps on the data-consistency system started at Tweedie's denoised sample stay "
        "(nearly) on the tangent space of the data manifold, so DDS needs ~50 network "
        "evaluations and no backpropagation where a gradient-guided sampler (DPS) needs many "
        "more evaluations, each with a backward pass"
    ),
    criterion=(
        "32x32 images, rank-20 smooth Gaussian prior (exact denoiser), 4x random Fourier mask "
        "with 9x9 centre, noiseless; every seed (5; fast 3): DDS (T=50, M=5) error to the exact "
        "posterior mean <= 1e-2; off-tangent fraction of the CG updates < 5% for M = 1, 2; NFE "
        "to reach error 1e-2: DPS (best zeta) >= 10x DDS; DDS 0 backward passes"
    ),
)
def run(fast: bool, seed: int) -> ExperimentResult:
    """Measure DDS's accuracy, its CG updates' tangency and its cost against DPS.

    Args:
        fast: 3 seeds and a smaller DPS grid if true, else 5 seeds.
        seed: base seed.

    Returns:
        Per-seed numbers, seed summaries, the verdict and a figure.
    """
    start = time.perf_counter()
    n = FAST_SEEDS if fast else SEEDS
    with single_thread():
        per_seed = [run_seed(seed * 100 + i, fast=fast) for i in range(n)]
    dps_steps = list(FAST_DPS_STEPS if fast else DPS_STEPS)
    checks = {
        "dds_error_le_1e-2": all(r["dds_error"] <= TARGET for r in per_seed),
        "off_tangent_lt_5pct_m1_m2": all(
            r["off_tangent"]["1"] < 0.05 and r["off_tangent"]["2"] < 0.05 for r in per_seed
        ),
        "nfe_ratio_ge_10": all(r["nfe_ratio"] >= 10 for r in per_seed),
        "dds_no_backprop": all(r["dds_backward"] == 0 for r in per_seed),
    }
    passed = all(checks.values())
    measured: dict[str, Any] = {
        "per_seed": per_seed,
        "dds_error": seed_summary([r["dds_error"] for r in per_seed]),
        "off_tangent_m1": seed_summary([r["off_tangent"]["1"] for r in per_seed]),
        "off_tangent_m10": seed_summary([r["off_tangent"]["10"] for r in per_seed]),
        "log10_nfe_ratio": seed_summary([math.log10(r["nfe_ratio"]) for r in per_seed]),
        "checks": checks,
        "seconds": time.perf_counter() - start,
    }
    worst_dds = max(r["dds_error"] for r in per_seed)
    lower = any(r["nfe_ratio_is_lower_bound"] for r in per_seed)
    summary = (
        f"{n} seeds: DDS (T=50, M=5) error to the exact posterior mean <= {worst_dds:.1e}; "
        f"off-tangent fraction M=1 {measured['off_tangent_m1']['mean']:.3f}, M=10 "
        f"{measured['off_tangent_m10']['mean']:.3f}; NFE to 1e-2: DDS "
        f"{[r['nfe_dds'] for r in per_seed]} vs DPS {[r['nfe_dps'] for r in per_seed]} "
        f"(None: not reached in {dps_steps[-1]}{', ratio a lower bound' if lower else ''}); "
        + checks_text(checks)
    )
    return ExperimentResult(
        measured,
        passed,
        summary,
        {"error_vs_nfe": _plot(per_seed, dps_steps)},
        headline=("dds_error", "off_tangent_m1", "log10_nfe_ratio"),
    )
