"""Fast leverage scores and l_1 Lewis weights: ours vs a scipy CountSketch + QR pipeline.

Run: ``.venv/bin/python benchmarks/sketch_leverage.py`` (about a minute, 1 thread).

``A`` is ``200000 x 50`` float64, Gaussian rows scaled by Student-t(2) magnitudes (very
non-uniform leverage). Exact leverage scores come from a thin QR. Approximate scores (Drineas,
Magdon-Ismail, Mahoney & Woodruff 2012): ours is
``leverage_scores(A, method="sketched")`` (CountSketch of ``max(20 d, d^2 / 2)`` rows, QR, then
``A R^{-1}`` since ``d = 50`` is below the default JL width 64) and the same with a ``k = 40``
JL matrix; the anchor is what a user would write with scipy:
``scipy.linalg.clarkson_woodruff_transform(A, 20 d)``, ``numpy.linalg.qr`` and
``A (R^{-1} G)`` with a ``(d, 40)`` Gaussian ``G``. Accuracy is the fraction of rows with
``approx / exact`` in ``[0.6, 1.7]``; times are best of 3, interleaved. Also times l_1 Lewis
weights to a ``1e-6`` relative change.

Writes ``benchmarks/results/sketch_leverage.json`` (keys name, ours, anchor, ratio, unit,
params, rows).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from subspaces._io import write_json
from subspaces.linalg.sketch import leverage_scores, lewis_weights

N, D, K, REPEATS = 200_000, 50, 40, 3
OUT = Path(__file__).parent / "results" / "sketch_leverage.json"


def make_matrix(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, D)) * np.abs(rng.standard_t(2.0, size=(N, 1)))


def anchor_scores(A: np.ndarray, seed: int) -> np.ndarray:
    SA = scipy.linalg.clarkson_woodruff_transform(A, 20 * D, seed=seed)
    R = np.linalg.qr(SA, mode="r")
    G = np.random.default_rng(seed).standard_normal((D, K))
    Z = scipy.linalg.solve_triangular(R, G)
    return np.square(A @ Z).sum(axis=1) / K


def within(approx: np.ndarray, exact: np.ndarray) -> float:
    r = approx / exact
    return float(np.mean((r >= 0.6) & (r <= 1.7)))


def main() -> None:
    torch.set_num_threads(1)
    A_np = make_matrix(0)
    A = torch.from_numpy(A_np)
    t0 = time.perf_counter()
    exact = leverage_scores(A).numpy()
    exact_s = time.perf_counter() - t0

    methods = {
        "ours (CountSketch + A R^-1)": lambda s: leverage_scores(
            A, method="sketched", generator=torch.Generator().manual_seed(s)
        ).numpy(),
        f"ours (CountSketch + JL k={K})": lambda s: leverage_scores(
            A,
            method="sketched",
            sketch_size=20 * D,
            jl_dim=K,
            generator=torch.Generator().manual_seed(s),
        ).numpy(),
        f"anchor (scipy CW + QR + JL k={K})": lambda s: anchor_scores(A_np, s),
    }
    times: dict[str, list[float]] = {k: [] for k in methods}
    acc: dict[str, list[float]] = {k: [] for k in methods}
    for rep in range(REPEATS):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            approx = fn(rep)
            times[name].append(time.perf_counter() - t0)
            acc[name].append(within(approx, exact))
    t0 = time.perf_counter()
    lw = lewis_weights(A, 1.0, tol=1e-6)
    lewis_s = time.perf_counter() - t0

    rows = [
        {
            "method": name,
            "seconds_best": min(times[name]),
            "fraction_within_0.6_1.7_min": min(acc[name]),
        }
        for name in methods
    ]
    rows.append({"method": "exact leverage (thin QR)", "seconds_best": exact_s})
    rows.append(
        {
            "method": "l1 Lewis weights (ours, tol 1e-6)",
            "seconds_best": lewis_s,
            "iterations": lw.num_iters,
            "converged": lw.converged,
            "sum_weights": float(lw.weights.sum()),
        }
    )
    ours_default, ours_jl, anchor_name = methods
    ours_t, anchor_t = min(times[ours_jl]), min(times[anchor_name])
    for r in rows:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    print(f"anchor / ours (JL k={K}) time ratio: {anchor_t / ours_t:.2f}")
    write_json(
        OUT,
        {
            "name": "sketch_leverage",
            "ours": ours_t,
            "anchor": anchor_t,
            "ratio": anchor_t / ours_t,
            "unit": "seconds (best of 3, 1 thread), sketched leverage scores with JL k=40 "
            "(ratio = anchor / ours)",
            "ours_default_seconds": min(times[ours_default]),
            "params": {"n": N, "d": D, "jl_dim": K, "sketch_rows": 20 * D, "repeats": REPEATS},
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
