"""P19: alternating minimization completes a low-rank matrix exactly, in nearly linear time.

Gu, Song, Yin and Zhang (2023) show that alternating minimization (Jain, Netrapalli, Sanghavi
2013) recovers an incoherent rank-``k`` matrix from ``O~(n k^c)`` uniformly revealed entries even
when every least-squares step is solved only approximately, and that approximate solves bring
the cost of an iteration from ``O(|Omega| k^2)`` (exact normal equations) down to nearly
``O(|Omega| k)``. Here: synthetic incoherent matrices, uniformly revealed entries,
:func:`~subspaces.recovery.altmin_complete` with exact (batched Cholesky on the ``k x k`` normal
equations) and approximate (3 warm-started CG steps per row with a shared preconditioner, products
applied matrix-free) least-squares solves, errors over *all* entries against the known factors,
and CPU time of this thread (``time.process_time``, one thread, medians of repeats) so that the
timings are not those of the other processes on a shared machine. Soft-Impute (Mazumder et al.
2010) is the biased baseline.

Criterion (fixed before the first run of this version; issue 18):

1. Recovery: rank 10, 5% of the entries of an ``n x n`` matrix revealed (``n = 1000`` fast,
   ``5000`` full): relative error over all entries ``<= 1e-6`` with exact and with approximate
   solves, on every seed.
2. Cost per iteration vs ``k`` at fixed ``n`` and ``|Omega|`` (one AltMin iteration: both
   half-steps, the QR and the error on the revealed entries): the seed-mean log-log slope of CPU
   time vs ``k`` is in ``[0.7, 1.4]`` for the approximate solver over ``k in {64, 128, 256}`` and
   ``>= 1.6`` for the exact solver over ``k in {32, 64, 128}``. The ranges differ on purpose:
   PyTorch's float64 sampled product (the residual at the warm start) costs about 25 ns per
   revealed entry whatever ``k``, which is 20-40% of the approximate solver's per-entry cost for
   ``k <= 128`` and would pull a linear cost to a slope near 0.6 there, while the exact solver's
   ``k^2`` work dominates from ``k = 32`` (its slope only grows with ``k``, so the lower range is
   the conservative one for a lower bound); the exact solver at ``k = 256`` would cost about
   8x its ``k = 128`` time.
3. The approximate solver wins for large ``k``: per iteration at ``k = 128`` it is faster on every
   seed, and run to convergence (tolerance ``1e-9`` on the revealed entries) at ``k = 32``
   (fast) / ``64`` (full) it reaches error ``<= 1e-6`` over all entries on every seed with a
   positive paired mean CPU-time saving (exact minus approximate).

Previous criterion (until issue 18): the conditions of 1 on one seed plus "log-log slope of
wall time vs ``|Omega|`` (``|Omega| = n r log n``, 4 sizes) ``<= 1.3``", measured for the exact
solver only; it did not test the paper's contribution (the cost in ``k``) and timed the solver
the paper improves on. It is still measured (CPU time, both solvers) and reported under
``old_criterion``, but no longer decides the verdict.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Literal

import torch

from ._common import single_thread
from ._stats import paired_summary, seed_summary
from .registry import ExperimentResult, register

RANK = 10
FRACTION = 0.05
MAX_ERROR = 1e-6
OBSERVED_TOL = 1e-9
SWEEP_K_EXACT = (32, 64, 128)
SWEEP_K_APPROX = (64, 128, 256)
APPROX_SLOPE = (0.7, 1.4)
MIN_EXACT_SLOPE = 1.6
OLD_MAX_SLOPE = 1.3
SOLVERS: tuple[Literal["exact", "sketched"], ...] = ("exact", "sketched")


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    x = torch.tensor([math.log(v) for v in xs], dtype=torch.float64)
    y = torch.tensor([math.log(v) for v in ys], dtype=torch.float64)
    return float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())


def _problem(n: int, rank: int, count: int, seed: int) -> tuple[Any, Any]:
    from ..recovery import low_rank_matrix, sample_entries

    g = torch.Generator().manual_seed(seed)
    M = low_rank_matrix(n, n, rank, generator=g)
    return M, sample_entries(M, count=count, generator=g)


def _complete(n: int, rank: int, count: int, solver: str, seed: int) -> dict[str, Any]:
    """Run AltMin to convergence; CPU seconds (grouping and initialization included)."""
    from ..recovery import altmin_complete

    M, obs = _problem(n, rank, count, seed)
    start = time.process_time()
    res = altmin_complete(
        obs,
        rank,
        iters=200,
        tol=OBSERVED_TOL,
        solver=solver,  # type: ignore[arg-type]
        generator=torch.Generator().manual_seed(seed + 1),
    )
    seconds = time.process_time() - start
    return {
        "n": n,
        "rank": rank,
        "observed": obs.num_observed,
        "solver": solver,
        "cpu_seconds": seconds,
        "iterations": res.iterations,
        "converged": res.converged,
        "relative_error": M.relative_error(res.U, res.V),
    }


def _iteration_seconds(n: int, count: int, k: int, seed: int, repeats: int) -> dict[str, float]:
    """Median CPU seconds of one AltMin iteration (the loop body), per solver, at rank ``k``."""
    from ..recovery.completion import _altmin_iteration, _group, _observed_error

    _, obs = _problem(n, k, count, seed)
    rows_side = _group(obs.rows, obs.cols, obs.values, n, n)
    cols_side = _group(obs.cols, obs.rows, obs.values, n, n)
    norm = float(torch.linalg.vector_norm(obs.values))
    g = torch.Generator().manual_seed(seed + 1)
    U0 = torch.linalg.qr(torch.randn(n, k, dtype=torch.float64, generator=g)).Q
    out: dict[str, float] = {}
    for solver in SOLVERS if k in SWEEP_K_EXACT else SOLVERS[1:]:  # approximate: every k
        U, V = U0, torch.zeros(n, k, dtype=torch.float64)  # the cost does not depend on them
        times = []
        for _ in range(repeats):
            start = time.process_time()
            U, V = _altmin_iteration(rows_side, cols_side, U, V, solver, 1e-10, 3)
            _observed_error(rows_side, U, V, norm)
            times.append(time.process_time() - start)
        out[solver] = statistics.median(times)
    return out


@register(
    "P19",
    title="Matrix completion by alternating minimization",
    paper="Gu, Song, Yin, Zhang 2023, Low rank matrix completion via robust alternating "
    "minimization in nearly linear time (ICLR 2024); Jain, Netrapalli, Sanghavi 2013",
    claim=(
        "Alternating minimization recovers an incoherent low-rank matrix exactly from a few "
        "percent of its entries and tolerates approximate least-squares solves, which make an "
        "iteration cost nearly linear in |Omega| k instead of |Omega| k^2"
    ),
    criterion=(
        "rank 10, 5% revealed: error over all entries <= 1e-6 with exact and approximate solves "
        "on every seed; CPU time per iteration vs k at fixed n and |Omega|: seed-mean log-log "
        "slope in [0.7, 1.4] for approximate solves (k = 64, 128, 256) and >= 1.6 for exact "
        "solves (k = 32, 64, 128); approximate faster per iteration at k = 128 on every seed and "
        "faster to error <= 1e-6 at k = 32 (fast) / 64 (full), paired mean saving > 0"
    ),
)
def run(fast: bool, seed: int) -> ExperimentResult:
    """Recover rank-10 matrices; sweep k for the cost per iteration; race the solvers at large k.

    Args:
        fast: 3 seeds, recovery at ``1000 x 1000``, the ``k`` sweep at ``n = 500`` with
            ``|Omega| = 150000`` and one timing per point, if true; else 5 seeds, ``5000 x 5000``,
            ``n = 1000`` with ``|Omega| = 500000`` and medians of 3 timings.
        seed: the first seed; seeds ``seed, seed + 1, ...`` seed the matrices, the revealed sets
            and the initializations, the same for both solvers (paired).

    Returns:
        Per-seed errors, CPU times, slopes and their seed summaries, the old criterion's size
        sweep, and the verdict.
    """
    with single_thread():  # single-threaded timings: stable on shared, loaded machines
        return _run(fast, seed)


def _run(fast: bool, seed: int) -> ExperimentResult:
    from ..recovery import soft_impute

    seeds = [seed + i for i in range(3 if fast else 5)]
    n_rec = 1000 if fast else 5000
    count_rec = round(FRACTION * n_rec * n_rec)
    n_sw, count_sw, repeats = (500, 150_000, 1) if fast else (1000, 500_000, 3)
    k_race = 32 if fast else 64

    recovery = {s: {sv: _complete(n_rec, RANK, count_rec, sv, s) for sv in SOLVERS} for s in seeds}
    ks = sorted(set(SWEEP_K_EXACT) | set(SWEEP_K_APPROX))
    sweep = {
        s: {k: _iteration_seconds(n_sw, count_sw, k, 100 + s, repeats) for k in ks} for s in seeds
    }
    race = {
        s: {sv: _complete(n_sw, k_race, count_sw, sv, 200 + s) for sv in SOLVERS} for s in seeds
    }

    slope_exact = [
        _slope(list(SWEEP_K_EXACT), [sweep[s][k]["exact"] for k in SWEEP_K_EXACT]) for s in seeds
    ]
    slope_approx = [
        _slope(list(SWEEP_K_APPROX), [sweep[s][k]["sketched"] for k in SWEEP_K_APPROX])
        for s in seeds
    ]
    exact_128 = [sweep[s][128]["exact"] for s in seeds]
    approx_128 = [sweep[s][128]["sketched"] for s in seeds]
    race_exact = [race[s]["exact"]["cpu_seconds"] for s in seeds]
    race_approx = [race[s]["sketched"]["cpu_seconds"] for s in seeds]

    rec_errors = {sv: [recovery[s][sv]["relative_error"] for s in seeds] for sv in SOLVERS}
    race_errors = {sv: [race[s][sv]["relative_error"] for s in seeds] for sv in SOLVERS}
    s_exact, s_approx = seed_summary(slope_exact), seed_summary(slope_approx)
    saving = paired_summary(race_exact, race_approx)
    checks = {
        "recovered": all(e <= MAX_ERROR for sv in SOLVERS for e in rec_errors[sv]),
        "approx_slope_in_range": APPROX_SLOPE[0] <= s_approx["mean"] <= APPROX_SLOPE[1],
        "exact_slope_at_least": s_exact["mean"] >= MIN_EXACT_SLOPE,
        "approx_faster_per_iteration_k128": all(
            a < e for a, e in zip(approx_128, exact_128, strict=True)
        ),
        "race_recovered": all(e <= MAX_ERROR for sv in SOLVERS for e in race_errors[sv]),
        "race_saving_positive": saving["mean"] > 0,
    }
    passed = all(checks.values())

    # the old criterion (not deciding): time vs |Omega| with |Omega| = n r log n, 4 sizes
    old_sizes = [500, 1000, 2000, 4000] if fast else [1000, 2000, 4000, 8000]
    old = {
        sv: [
            _complete(s, RANK, round(s * RANK * math.log(s)), sv, seed + 10 + i)
            for i, s in enumerate(old_sizes)
        ]
        for sv in SOLVERS
    }
    old_slopes = {
        sv: _slope([r["observed"] for r in old[sv]], [r["cpu_seconds"] for r in old[sv]])
        for sv in SOLVERS
    }
    old_ok = all(r["relative_error"] <= MAX_ERROR for sv in SOLVERS for r in old[sv])

    M, obs = _problem(n_rec, RANK, count_rec, seeds[0])
    start = time.process_time()
    si = soft_impute(obs, RANK, iters=100, generator=torch.Generator().manual_seed(seed + 2))
    si_seconds = time.process_time() - start
    si_error = M.relative_error(si.U, si.V)

    measured: dict[str, Any] = {
        "seeds": seeds,
        "recovery": {"n": n_rec, "rank": RANK, "observed": count_rec, "per_seed": recovery},
        "recovery_error_exact": seed_summary(rec_errors["exact"]),
        "recovery_error_sketched": seed_summary(rec_errors["sketched"]),
        "sweep": {
            "n": n_sw,
            "observed": count_sw,
            "repeats": repeats,
            "k_exact": list(SWEEP_K_EXACT),
            "k_approx": list(SWEEP_K_APPROX),
            "iteration_cpu_seconds": sweep,
        },
        "slope_exact": s_exact,
        "slope_approx": s_approx,
        "per_iteration_speedup_k128": seed_summary(
            [e / a for e, a in zip(exact_128, approx_128, strict=True)]
        ),
        "race": {"n": n_sw, "k": k_race, "observed": count_sw, "per_seed": race},
        "race_saving_cpu_seconds": saving,
        "race_speedup": seed_summary([e / a for e, a in zip(race_exact, race_approx, strict=True)]),
        "checks": checks,
        "soft_impute_relative_error": si_error,
        "soft_impute_cpu_seconds": si_seconds,
        "soft_impute_iterations": si.iterations,
        "old_criterion": {
            "sizes": old_sizes,
            "runs": old,
            "time_vs_observed_slope": old_slopes,
            "all_recovered": old_ok,
            "max_slope": OLD_MAX_SLOPE,
            "passed": old_ok and old_slopes["exact"] <= OLD_MAX_SLOPE,
        },
        "criterion": {
            "max_error": MAX_ERROR,
            "approx_slope": list(APPROX_SLOPE),
            "min_exact_slope": MIN_EXACT_SLOPE,
        },
        "torch_threads": 1,
        "clock": "time.process_time (CPU time of this process)",
    }
    failed = [name for name, ok in checks.items() if not ok]
    summary = (
        f"rank {RANK}, {FRACTION:.0%} of {n_rec}x{n_rec}: max error exact "
        f"{max(rec_errors['exact']):.1e}, approximate {max(rec_errors['sketched']):.1e} "
        f"({len(seeds)} seeds); CPU time per iteration vs k: slope approximate "
        f"{s_approx['mean']:.2f} [{s_approx['ci95'][0]:.2f}, {s_approx['ci95'][1]:.2f}] "
        f"(k {SWEEP_K_APPROX[0]}-{SWEEP_K_APPROX[-1]}), exact {s_exact['mean']:.2f} "
        f"[{s_exact['ci95'][0]:.2f}, {s_exact['ci95'][1]:.2f}] "
        f"(k {SWEEP_K_EXACT[0]}-{SWEEP_K_EXACT[-1]}); approximate "
        f"{measured['per_iteration_speedup_k128']['mean']:.1f}x faster per iteration at k=128, "
        f"{measured['race_speedup']['mean']:.1f}x faster to 1e-6 at k={k_race}; Soft-Impute "
        f"{si_error:.1e}" + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return ExperimentResult(
        measured=measured,
        passed=passed,
        summary=summary,
        headline=("slope_approx", "slope_exact", "race_speedup"),
    )
