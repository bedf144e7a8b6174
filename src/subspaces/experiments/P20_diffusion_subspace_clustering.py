r"""P20: diffusion models learn low-dimensional distributions via subspace clustering.

Wang, Zhang, Zhang, Chen, Ma & Qu, "Diffusion models learn low-dimensional distributions via
subspace clustering" (arXiv:2409.02426, 2024): for data from a mixture of low-rank Gaussians and a
denoiser parameterized like that mixture's optimal denoiser, training the denoiser is subspace
clustering of the training samples, and the number of samples needed to learn the distribution
scales linearly with the intrinsic dimension ``d`` (a phase transition near ``d`` samples per
subspace), not with the ambient dimension.

Protocol (:mod:`subspaces.clustering.mixtures`, :mod:`subspaces.clustering.denoiser`, float64):
``K = 2`` orthogonal subspaces of dimension ``d = 5`` in ``R^30``
(:meth:`~subspaces.clustering.mixtures.LowRankGaussianMixture.random`, a fresh pair per trial);
``N_k`` samples drawn from each subspace, ``N_k`` in ``{1, 2, 3, 4, 5, 6, 8, 10, 15}`` (fast:
``{1, 2, 4, 6, 8, 10, 15}``); a :class:`~subspaces.clustering.denoiser.LowRankDenoiser` trained
on them with the diffusion loss over the 8 noise levels of
:data:`~subspaces.clustering.denoiser.DEFAULT_SIGMAS` (Adam, lr 0.05 with cosine decay, 300
steps, 2 noise draws per sample and level per step) from 2 seeded initializations, keeping the
lower final training loss (:func:`~subspaces.clustering.denoiser.train_denoiser_batch`).

A trial **recovers** the subspaces iff, after matching learned to true subspaces (Hungarian),
the sine of the largest principal angle of every pair is below ``0.25`` (about 14 degrees; two
random 5-dimensional subspaces of ``R^30`` have a sine near 1).

The prediction is ``N_k = d``: with fewer samples than ``d`` a subspace is not determined by its
samples, so the optimal denoiser of the training loss cannot recover it. The transition point is
the smallest ``N_k`` of the grid at which at least half of the trials recover.

Passed iff (20 trials per ``N_k``; fast: 5 trials per ``N_k``) no trial recovers at any ``N_k <=
d / 2`` (``N_k`` = 1, 2), every trial recovers at ``N_k = 3 d = 15``, and the transition point is
within a factor 2 of the prediction: ``d / 2 <= N_50 <= 2 d``.

Criterion fixed before the first full run.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..clustering.denoiser import subspace_recovery_error, train_denoiser_batch
from ..clustering.mixtures import LowRankGaussianMixture
from ..linalg.subspace import Subspace
from ._common import checks_text, figure_png, single_thread
from .registry import ExperimentResult, register

AMBIENT = 30
DIM = 5
K = 2
GRID = (1, 2, 3, 4, 5, 6, 8, 10, 15)
FAST_GRID = (1, 2, 4, 6, 8, 10, 15)
TRIALS, FAST_TRIALS = 20, 5
STEPS = 300
N_INIT = 2
NOISE_DRAWS = 2
THRESHOLD = 0.25


def recovery_trials(
    n_per_subspace: int,
    trials: int,
    *,
    seed: int,
    ambient_dim: int = AMBIENT,
    subspace_dim: int = DIM,
    n_subspaces: int = K,
    steps: int = STEPS,
    n_init: int = N_INIT,
) -> list[float]:
    """Train one denoiser per trial (all trials in one batch) and return their recovery errors.

    Args:
        n_per_subspace: samples drawn from each subspace.
        trials: independent mixtures (and sample sets).
        seed: seed of the mixtures, samples, initializations and noise.
        ambient_dim: ``n``.
        subspace_dim: ``d``.
        n_subspaces: ``K`` (orthogonal subspaces).
        steps: Adam steps.
        n_init: initializations per trial (the lowest final training loss is kept).

    Returns:
        Per trial, the largest sine of the principal angles between matched learned and true
        subspaces (a trial recovers iff it is below :data:`THRESHOLD`).

    Example:
        >>> errs = recovery_trials(1, 2, seed=0, ambient_dim=6, subspace_dim=2, steps=20)
        >>> len(errs), all(e > THRESHOLD for e in errs)  # 1 sample cannot span a plane
        (2, True)
    """
    gen = torch.Generator().manual_seed(seed)
    mixes, data = [], []
    labels = torch.arange(n_subspaces).repeat_interleave(n_per_subspace)
    for _ in range(trials):
        mix = LowRankGaussianMixture.random(
            ambient_dim, subspace_dim, n_subspaces, generator=gen, dtype=torch.float64
        )
        X = mix.sample_components(labels, generator=gen)
        mixes.append(mix)
        data.extend([X] * n_init)
    U, final, _ = train_denoiser_batch(
        torch.stack(data),
        n_subspaces,
        subspace_dim,
        steps=steps,
        noise_draws=NOISE_DRAWS,
        generator=gen,
    )
    errors = []
    for t, mix in enumerate(mixes):
        best = t * n_init + int(final[t * n_init : (t + 1) * n_init].argmin())
        learned = [Subspace(u) for u in U[best]]
        errors.append(max(subspace_recovery_error(learned, mix.subspaces())))
    return errors


def transition_point(grid: list[int], rates: list[float]) -> int | None:
    """The smallest grid value whose success rate is at least 1/2 (``None`` if there is none).

    Args:
        grid: samples per subspace, ascending.
        rates: success rate at each.

    Returns:
        The transition point.

    Example:
        >>> transition_point([1, 2, 4, 8], [0.0, 0.2, 0.5, 1.0])
        4
    """
    for n, r in zip(grid, rates, strict=True):
        if r >= 0.5:
            return n
    return None


def _plot(grid: list[int], rates: list[float], d: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    ax.plot(grid, rates, "o-", color="C3")
    ax.axvline(d, color="k", ls="--", lw=1, label=f"prediction N_k = d = {d}")
    ax.axvspan(d / 2, 2 * d, color="0.9", label="factor-2 window")
    ax.set_xlabel("training samples per subspace N_k")
    ax.set_ylabel("fraction of trials recovered")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("low-rank denoiser on a mixture of low-rank Gaussians")
    fig.tight_layout()
    return figure_png(fig)


@register(
    "P20",
    title="Diffusion models learn low-dimensional distributions via subspace clustering",
    paper="Wang, Zhang, Zhang, Chen, Ma & Qu 2024, Diffusion models learn low-dimensional "
    "distributions via subspace clustering (arXiv:2409.02426)",
    slow=True,
    claim=(
        "Training a low-rank-parameterized denoiser on samples of a mixture of low-rank Gaussians "
        "is subspace clustering, and the subspaces are learned once each has about d (intrinsic "
        "dimension) samples: the recovery probability shows a phase transition near N_k ~ d"
    ),
    criterion=(
        "K=2 orthogonal 5-dim subspaces of R^30, N_k samples each, low-rank denoiser trained with "
        "the diffusion loss (8 noise levels, Adam, 300 steps, best of 2 seeded inits); recovered "
        "iff every matched pair has sin(max principal angle) < 0.25; 20 trials per N_k (fast: "
        "5): 0 recoveries at N_k <= d/2, all at N_k = 3d, and the smallest N_k with >= 50% "
        "recoveries within [d/2, 2d]"
    ),
)
def run(fast: bool, seed: int) -> ExperimentResult:
    """Measure the recovery rate of a trained low-rank denoiser against samples per subspace.

    Args:
        fast: 5 trials on a 7-point grid if true, else 20 trials on a 9-point grid.
        seed: base seed.

    Returns:
        The result: per ``N_k`` the recovery count and the trials' errors, the transition point,
        the verdict and a figure.
    """
    start = time.perf_counter()
    grid = list(FAST_GRID if fast else GRID)
    trials = FAST_TRIALS if fast else TRIALS
    errors: dict[int, list[float]] = {}
    with single_thread():
        for i, n_k in enumerate(grid):
            errors[n_k] = recovery_trials(n_k, trials, seed=seed * 1000 + 17 * i + n_k)
    recovered = {n: int(sum(e < THRESHOLD for e in errs)) for n, errs in errors.items()}
    rates = [recovered[n] / trials for n in grid]
    n50 = transition_point(grid, rates)
    checks = {
        "none_below_half_d": all(recovered[n] == 0 for n in grid if n <= DIM / 2),
        "all_at_3d": recovered[3 * DIM] == trials,
        "transition_within_factor_2": n50 is not None and DIM / 2 <= n50 <= 2 * DIM,
    }
    passed = all(checks.values())
    measured: dict[str, Any] = {
        "ambient_dim": AMBIENT,
        "subspace_dim": DIM,
        "n_subspaces": K,
        "trials": trials,
        "threshold_sin": THRESHOLD,
        "samples_per_subspace": grid,
        "recovered": {str(n): recovered[n] for n in grid},
        "recovery_rate": {str(n): r for n, r in zip(grid, rates, strict=True)},
        "median_error": {str(n): float(torch.tensor(errors[n]).median()) for n in grid},
        "errors": {str(n): errors[n] for n in grid},
        "transition": n50,
        "predicted_transition": DIM,
        "checks": checks,
        "seconds": time.perf_counter() - start,
    }
    summary = (
        f"recovered / {trials} trials at N_k = "
        + ", ".join(f"{n}: {recovered[n]}" for n in grid)
        + f"; transition (>= 50%) at N_k = {n50} vs predicted d = {DIM}; "
        + checks_text(checks)
    )
    return ExperimentResult(measured, passed, summary, {"transition": _plot(grid, rates, DIM)})
