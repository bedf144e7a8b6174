"""P13: l_1 row sampling with planted heavy rows (Woodruff & Yasuda 2023, "Sharper bounds").

A tall ``(n, d)`` matrix has Gaussian bulk rows and a few planted heavy rows ``C e_j`` (one per
coordinate ``j < h``) that carry about half of ``||A e_j||_1``. Uniform row sampling almost never
sees a planted row (and overweights it when it does), so it cannot preserve ``||A x||_1``; root
leverage scores ``sqrt(tau_i)`` and l_1 Lewis weights give the planted rows score ~1, so
sensitivity sampling keeps them and preserves l_1 norms with ``m = O(d)`` rows. The distortion
``||S A x||_1 / ||A x||_1`` is measured over random ``x`` and the coordinate vectors for
``m in {2, 5, 10, 20} d`` and several seeds.
"""

from __future__ import annotations

import time

import torch

from .registry import ExperimentResult, register

D = 50
HEAVY = 5
MULTIPLES_FAST = (5, 20)
MULTIPLES_FULL = (2, 5, 10, 20)
EPS = 0.08
UNIFORM_FAIL = 0.25
SCHEMES = ("uniform", "root_leverage", "lewis")


def _planted_matrix(n: int, seed: int) -> torch.Tensor:
    from ..linalg._random import random_matrix

    g = torch.Generator().manual_seed(seed)
    A = random_matrix(n, D, dtype=torch.float64, generator=g)
    bulk_l1 = A[:, :HEAVY].abs().sum(0)
    A[:HEAVY] = 0
    A[torch.arange(HEAVY), torch.arange(HEAVY)] = bulk_l1  # planted rows carry ~half the mass
    perm = torch.randperm(n, generator=g)
    return A[perm]


@register(
    "P13",
    title="l_1 sensitivity sampling: uniform vs root leverage vs Lewis weights",
    paper="Woodruff & Yasuda 2023, Sharper bounds for l_p sensitivity sampling (ICML); "
    "Cohen & Peng 2015, l_p row sampling by Lewis weights",
    claim=(
        "With planted heavy rows, uniform row sampling fails to preserve l1 norms while "
        "root-leverage and Lewis-weight sampling succeed with m ~ O(d) rows; l1 distortion "
        "within 1 +- 0.08 at 20d rows"
    ),
    criterion=(
        "at m = 20d, for every seed, all ratios ||SAx||_1/||Ax||_1 (200 random x and the d "
        "coordinate vectors) lie in [0.92, 1.08] for root-leverage and Lewis sampling, while "
        "uniform sampling's worst ratio is off by more than 0.25 for every seed"
    ),
)
def run(fast: bool, seed: int) -> ExperimentResult:
    """Sample rows of a planted matrix by three schemes and measure the l_1 distortion.

    Args:
        fast: ``n = 10000``, 2 seeds, ``m in {5, 20} d`` if true, else 5 seeds and
            ``m in {2, 5, 10, 20} d``.
        seed: base seed of the matrices and samples.

    Returns:
        Per-scheme, per-``m`` worst distortions (min and max ratio over seeds), Lewis iteration
        counts, runtimes and the verdict.
    """
    from ..linalg.sketch import distortion, lewis_weights, root_leverage_scores, sensitivity_sample

    n = 10000
    seeds = [seed + k for k in range(2 if fast else 5)]
    multiples = MULTIPLES_FAST if fast else MULTIPLES_FULL
    num_x = 200
    table: dict[str, dict[str, list[list[float]]]] = {s: {} for s in SCHEMES}
    lewis_iters: list[int] = []
    seconds: dict[str, float] = {s: 0.0 for s in SCHEMES}
    for sd in seeds:
        A = _planted_matrix(n, sd)
        start = time.perf_counter()
        scores = {"uniform": torch.ones(n, dtype=torch.float64)}
        seconds["uniform"] += time.perf_counter() - start
        start = time.perf_counter()
        scores["root_leverage"] = root_leverage_scores(A, 1.0)
        seconds["root_leverage"] += time.perf_counter() - start
        start = time.perf_counter()
        lw = lewis_weights(A, 1.0)
        seconds["lewis"] += time.perf_counter() - start
        scores["lewis"] = lw.weights
        lewis_iters.append(lw.num_iters)
        for scheme in SCHEMES:
            for mult in multiples:
                gen = torch.Generator().manual_seed(1000 * sd + mult)
                sample = sensitivity_sample(A, scores[scheme], mult * D, gen, p=1.0)
                res = distortion(A, sample.indices, sample.weights, 1.0, num_x=num_x, generator=gen)
                table[scheme].setdefault(f"{mult}d", []).append([res.low, res.high])

    def worst(scheme: str, key: str) -> tuple[float, float]:
        pairs = table[scheme][key]
        return min(lo for lo, _ in pairs), max(hi for _, hi in pairs)

    top = f"{multiples[-1]}d"
    good = {
        s: all(lo >= 1 - EPS and hi <= 1 + EPS for lo, hi in table[s][top])
        for s in ("root_leverage", "lewis")
    }
    uniform_fails = all(max(1 - lo, hi - 1) > UNIFORM_FAIL for lo, hi in table["uniform"][top])
    passed = good["root_leverage"] and good["lewis"] and uniform_fails
    measured = {
        "n": n,
        "d": D,
        "heavy_rows": HEAVY,
        "seeds": seeds,
        "num_x": num_x,
        "eps": EPS,
        "distortion": table,
        "worst": {s: {k: list(worst(s, k)) for k in table[s]} for s in SCHEMES},
        "smallest_good_multiple": {
            s: next(
                (
                    k
                    for k in table[s]
                    if all(lo >= 1 - EPS and hi <= 1 + EPS for lo, hi in table[s][k])
                ),
                None,
            )
            for s in SCHEMES
        },
        "lewis_iterations": lewis_iters,
        "score_seconds": seconds,
        "root_leverage_ok": good["root_leverage"],
        "lewis_ok": good["lewis"],
        "uniform_fails": uniform_fails,
    }
    parts = [f"{s} [{worst(s, top)[0]:.3f}, {worst(s, top)[1]:.3f}]" for s in SCHEMES]
    summary = (
        f"n={n}, d={D}, {HEAVY} planted rows, m={top}, worst l1 distortion over "
        f"{len(seeds)} seeds: " + "; ".join(parts)
    )
    return ExperimentResult(measured=measured, passed=passed, summary=summary)
