r"""P15: a learned search direction cuts conjugate-direction iterations on Poisson problems.

Kaneda, Akar, Chen, Kala, Hyde, Teran, "A Deep Conjugate Direction Method for Iteratively Solving
Linear Systems" (ICML 2023, arXiv:2205.10763): a convolutional network trained self-supervised
(residual after one exact line search, on right-hand sides built from Ritz vectors biased to low
frequencies) maps the normalised residual to a search direction; A-orthogonalised against the last
two directions and followed by an exact line search, it needs far fewer iterations than CG on the
pressure Poisson systems of smoke simulations with obstacles, and transfers to finer grids than
it was trained on.

Protocol (:mod:`subspaces.solvers`): per seed, a geometry of 4 random disk obstacles
(:func:`~subspaces.solvers.random_obstacles`, unit-square coordinates, so the same geometry exists
at every resolution); the 5-point Poisson operator with Dirichlet walls and obstacles
(:func:`~subspaces.solvers.poisson_2d`) on the training grid ``N x N`` (full: 32, fast: 16); a
fresh :class:`~subspaces.solvers.DirectionNet` (16 channels, 2 residual blocks per stage, 2
pooling levels, no biases, float32) trained with :func:`~subspaces.solvers.train_direction_net`
(Adam, lr 1e-3 (fast: 3e-3), batch 32, 300 steps (fast: 80)) on 1000 right-hand sides from
:func:`~subspaces.solvers.ritz_rhs` (all eigenvectors, weight 9 on the lowest n/2 + n/20). Test:
4 standard-normal right-hand sides per seed (not from the training distribution) on the training
grid and, zero-shot (same geometry, same network, no retraining), on the ``2N x 2N`` grid; every
system is solved by :func:`~subspaces.linalg.cg` and :func:`~subspaces.solvers.dcdm` to a relative
residual of 1e-6 (true residual, recomputed); Jacobi- and IC(0)-preconditioned CG and wall-clock
times are recorded for context.

Passed iff (full: 5 seeds; fast: 3 seeds) every DCDM solve converges (certified true residual);
on every seed the DCDM / CG ratio of mean iterations on the training grid is <= 0.5; on the
``2N`` grid DCDM needs fewer iterations than CG for every seed and right-hand side (and the
95% interval of the paired per-seed difference is below 0); and each network trains in <= 300
CPU seconds.

Criterion fixed before the first full run.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..linalg.solvers import cg
from ..solvers import (
    DirectionNet,
    IncompleteCholesky,
    dcdm,
    flexible_cg,
    jacobi,
    poisson_2d,
    random_obstacles,
    ritz_rhs,
    train_direction_net,
)
from ._common import checks_text, figure_png, single_thread
from ._stats import paired_summary, seed_summary
from .registry import ExperimentResult, register

RTOL = 1e-6
NUM_OBSTACLES = 4
NUM_TRAIN_RHS = 1000
NUM_TEST_RHS = 4
SEEDS, FAST_SEEDS = 5, 3
GRID, FAST_GRID = 32, 16
STEPS, FAST_STEPS = 300, 80
LR, FAST_LR = 1e-3, 3e-3
MAX_TRAIN_CPU = 300.0


def geometry(size: int, seed: int) -> torch.Tensor:
    """The obstacle mask of seed ``seed`` on a ``size x size`` grid (same disks at every size).

    Returns:
        Boolean ``(size, size)`` mask.

    Example:
        >>> m16, m32 = geometry(16, 0), geometry(32, 0)
        >>> abs(float(m16.float().mean()) - float(m32.float().mean())) < 0.05
        True
    """
    g = torch.Generator().manual_seed(10_000 + seed)
    return random_obstacles((size, size), NUM_OBSTACLES, generator=g)


def solve_all(A: Any, B: torch.Tensor, model: Any) -> dict[str, Any]:
    """Solve every column of ``B`` with CG, Jacobi-PCG, IC(0)-PCG and DCDM.

    Returns:
        Per method the iterations per right-hand side, plus CPU seconds, convergence flags and
        the residual histories of the first right-hand side.

    Example:
        >>> A = poisson_2d(8)
        >>> B = torch.randn(A.n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> out = solve_all(A, B, lambda r: r)  # identity direction: DCDM is CG
        >>> all(abs(a - b) <= 1 for a, b in zip(out["cg"], out["dcdm"]))
        True
    """
    ic, jac = IncompleteCholesky(A), jacobi(A)
    out: dict[str, Any] = {k: [] for k in ("cg", "jacobi", "ic0", "dcdm", "dcdm_converged")}
    out["seconds"] = {"cg": 0.0, "dcdm": 0.0}
    for j in range(B.shape[1]):
        b = B[:, j]
        t = time.process_time()
        plain = cg(A, b, rtol=RTOL)
        out["seconds"]["cg"] += time.process_time() - t
        t = time.process_time()
        learned = dcdm(A, b, model, rtol=RTOL)
        out["seconds"]["dcdm"] += time.process_time() - t
        true = float((b - A @ learned.x).norm()) / float(b.norm())
        out["cg"].append(plain.iterations)
        out["jacobi"].append(cg(A, b, M=jac, rtol=RTOL).iterations)
        out["ic0"].append(cg(A, b, M=ic, rtol=RTOL).iterations)
        out["dcdm"].append(learned.iterations)
        out["dcdm_converged"].append(bool(learned.converged and true <= RTOL and plain.converged))
        if j == 0:  # residual histories of the first right-hand side, for the figure
            reference = flexible_cg(A, b, rtol=RTOL, beta="fletcher_reeves")
            for name, res in (("cg", reference), ("dcdm", learned)):
                hist = res.residual_history
                out[f"history_{name}"] = [] if hist is None else (hist / b.norm()).tolist()
    return out


def run_seed(seed: int, size: int, steps: int, lr: float) -> dict[str, Any]:
    """Train a direction network on seed ``seed``'s geometry and compare solvers at two sizes.

    Returns:
        Training loss and CPU time, and :func:`solve_all` at ``size`` and ``2 size``.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    A = poisson_2d(size, obstacle=geometry(size, seed))
    t = time.process_time()
    rhs = ritz_rhs(A, NUM_TRAIN_RHS, generator=g)
    net = DirectionNet(16, 2, 2)
    trained = train_direction_net(A, net, rhs, steps=steps, batch_size=32, lr=lr, generator=g)
    train_cpu = time.process_time() - t
    out: dict[str, Any] = {
        "train_cpu_seconds": train_cpu,
        "loss_first": trained.losses[0],
        "loss_last20": sum(trained.losses[-20:]) / min(20, len(trained.losses)),
    }
    for n, key in ((size, "train_grid"), (2 * size, "double_grid")):
        An = poisson_2d(n, obstacle=geometry(n, seed))
        gt = torch.Generator().manual_seed(50_000 + seed)
        B = torch.randn(An.n, NUM_TEST_RHS, generator=gt, dtype=torch.float64)
        out[key] = solve_all(An, B, net)
        out[key]["n"] = An.n
    return out


def _mean(values: list[int] | list[float]) -> float:
    return sum(values) / len(values)


def _plot(first: dict[str, Any], size: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.2), sharey=True)
    for ax, key, n in ((axes[0], "train_grid", size), (axes[1], "double_grid", 2 * size)):
        ax.semilogy(first[key]["history_cg"], label="CG")
        ax.semilogy(first[key]["history_dcdm"], label="DCDM")
        ax.axhline(RTOL, color="k", lw=0.8, ls="--")
        ax.set_title(f"{n} x {n}" + (" (zero-shot)" if key == "double_grid" else " (trained)"))
        ax.set_xlabel("iteration")
    axes[0].set_ylabel("relative residual")
    axes[0].legend()
    fig.tight_layout()
    return figure_png(fig)


@register(
    "P15",
    title="Deep conjugate direction method",
    paper="Kaneda, Akar, Chen, Kala, Hyde & Teran 2023, A Deep Conjugate Direction Method for "
    "Iteratively Solving Linear Systems (ICML 2023, arXiv:2205.10763)",
    slow=True,
    claim=(
        "A CNN trained self-supervised to map the normalised residual to a search direction, "
        "A-orthogonalised against the last two directions with an exact line search, needs far "
        "fewer iterations than CG on Poisson systems with obstacles and transfers to finer grids"
    ),
    criterion=(
        "2-D Poisson with 4 random disk obstacles, per seed a fresh network trained on the N x N "
        "grid (full N=32, 300 steps, 5 seeds; fast N=16, 80 steps, 3 seeds); 4 Gaussian test RHS "
        "to relative residual 1e-6: every DCDM solve certified converged, DCDM/CG mean "
        "iterations <= 0.5 on every seed at N, fewer iterations than CG for every seed and RHS "
        "zero-shot at 2N (paired 95% interval below 0), training <= 300 CPU s per network"
    ),
)
def run(fast: bool, seed: int) -> ExperimentResult:
    """Train DCDM networks and compare iterations with CG at the training size and twice it.

    Args:
        fast: 16 x 16 training grid, 80 steps, 3 seeds if true; else 32 x 32, 300 steps, 5 seeds.
        seed: base seed.

    Returns:
        The result: per-seed iterations of CG, Jacobi-PCG, IC(0)-PCG and DCDM at both sizes,
        ratios with intervals, training CPU times, the verdict and a residual-history figure.
    """
    start = time.perf_counter()
    size = FAST_GRID if fast else GRID
    steps = FAST_STEPS if fast else STEPS
    lr = FAST_LR if fast else LR
    seeds = [seed + i for i in range(FAST_SEEDS if fast else SEEDS)]
    with single_thread():
        runs = [run_seed(s, size, steps, lr) for s in seeds]
    ratio = [_mean(r["train_grid"]["dcdm"]) / _mean(r["train_grid"]["cg"]) for r in runs]
    ratio2 = [_mean(r["double_grid"]["dcdm"]) / _mean(r["double_grid"]["cg"]) for r in runs]
    d2 = [_mean(r["double_grid"]["dcdm"]) for r in runs]
    c2 = [_mean(r["double_grid"]["cg"]) for r in runs]
    zero_shot = paired_summary(d2, c2)
    every_rhs_fewer = all(
        a < b
        for r in runs
        for a, b in zip(r["double_grid"]["dcdm"], r["double_grid"]["cg"], strict=True)
    )
    checks = {
        "all_dcdm_converged": all(
            all(r[k]["dcdm_converged"]) for r in runs for k in ("train_grid", "double_grid")
        ),
        "ratio_le_half_every_seed": all(x <= 0.5 for x in ratio),
        "zero_shot_fewer_every_rhs": every_rhs_fewer,
        "zero_shot_interval_below_0": zero_shot["ci95"][1] < 0,
        "training_cpu_le_300s": all(r["train_cpu_seconds"] <= MAX_TRAIN_CPU for r in runs),
    }
    passed = all(checks.values())

    def per_seed(key: str, method: str) -> list[float]:
        return [_mean(r[key][method]) for r in runs]

    measured: dict[str, Any] = {
        "grid": size,
        "zero_shot_grid": 2 * size,
        "seeds": seeds,
        "steps": steps,
        "rtol": RTOL,
        "ratio_dcdm_cg": seed_summary(ratio),
        "ratio_dcdm_cg_zero_shot": seed_summary(ratio2),
        "dcdm_minus_cg_zero_shot": zero_shot,
        "iterations": {
            key: {m: per_seed(key, m) for m in ("cg", "jacobi", "ic0", "dcdm")}
            for key in ("train_grid", "double_grid")
        },
        "iterations_per_rhs": [
            {k: {m: r[k][m] for m in ("cg", "dcdm")} for k in ("train_grid", "double_grid")}
            for r in runs
        ],
        "solve_cpu_seconds": [
            {k: r[k]["seconds"] for k in ("train_grid", "double_grid")} for r in runs
        ],
        "train_cpu_seconds": [r["train_cpu_seconds"] for r in runs],
        "loss_first": [r["loss_first"] for r in runs],
        "loss_last20": [r["loss_last20"] for r in runs],
        "unknowns": {
            "train_grid": runs[0]["train_grid"]["n"],
            "double_grid": runs[0]["double_grid"]["n"],
        },
        "checks": checks,
        "seconds": time.perf_counter() - start,
    }
    its = measured["iterations"]
    summary = (
        f"{size}x{size}: DCDM {_mean(its['train_grid']['dcdm']):.1f} vs CG "
        f"{_mean(its['train_grid']['cg']):.1f} iterations (IC0-PCG "
        f"{_mean(its['train_grid']['ic0']):.1f}), ratio {seed_summary(ratio)['mean']:.2f}; "
        f"{2 * size}x{2 * size} zero-shot: DCDM {_mean(d2):.1f} vs CG {_mean(c2):.1f} "
        f"(IC0-PCG {_mean(its['double_grid']['ic0']):.1f}); training "
        f"{max(measured['train_cpu_seconds']):.0f} CPU s max; " + checks_text(checks)
    )
    return ExperimentResult(
        measured,
        passed,
        summary,
        {"residuals": _plot(runs[0], size)},
        headline=("ratio_dcdm_cg", "dcdm_minus_cg_zero_shot"),
    )
