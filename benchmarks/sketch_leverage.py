"""Fast leverage scores and l_1 Lewis weights: ours vs a scipy CountSketch + QR pipeline.

Run: ``.venv/bin/python benchmarks/sketch_leverage.py`` (about a minute, 1 thread).

``A`` is ``200000 x 50`` float64, Gaussian rows scaled by Student-t(2) magnitudes (very
non-uniform leverage). Exact leverage scores come from a thin QR. Approximate scores (Drineas,
Magdon-Ismail, Mahoney & Woodruff 2012): ours is
``leverage_scores(A, method="sketched")`` (CountSketch of ``max(20 d, d^2 / 2) = 1250`` rows by
default, QR, then the row norms of ``A R^{-1}``, since ``d = 50`` is below the default JL width
64, computed in cache-sized blocks of rows in float32) at several sketch sizes, and with a
``k = 40`` JL matrix; the anchor is what a user would write with scipy:
``scipy.linalg.clarkson_woodruff_transform(A, m)``, ``numpy.linalg.qr`` and the row norms of
``A R^{-1}`` (or ``A (R^{-1} G)`` with a ``(d, k)`` Gaussian ``G``, ``k = 40`` or ``64``).
Accuracy is the fraction of rows with ``approx / exact`` in ``[0.6, 1.7]`` (worst of the
repeats); the headline compares the fastest configuration of each side that keeps >= 98% of the
rows in the window (a JL width ``k = 40 < d`` cannot: ``chi^2_40 / 40`` alone leaves 2.5% of the
rows outside). Times are medians of 5, interleaved. Also times l_1 Lewis weights to a ``1e-6``
relative change and checks the fixed-point residual independently.

Issue 20 additions (same run):

* SRHT vs the exact QR it replaces, ``100000 x 40`` float64, 800 sketch rows (``20 d``): ours
  ``srht``; ``torch.linalg.qr`` (reduced, and R only); scipy ``clarkson_woodruff_transform``
  (CountSketch) of the same size; medians of 5.
* Bias and spread of sketched leverage scores at ``d = 20`` (``n = 20000``) and ``d = 100``
  (``n = 20000``, above the old fixed JL width 64): ``sum / d``, the mean and the maximum of
  ``approx / exact``, the largest estimate, and the fraction of rows more than 25% off, for ours
  (defaults; CountSketch and SRHT) and the scipy CountSketch pipeline (``A R^-1``, and with the
  old fixed JL width ``k = 64``).

Writes ``benchmarks/results/sketch_leverage.json`` (keys name, ours, anchor, ratio, unit,
params, rows).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from subspaces._io import write_json
from subspaces.linalg.sketch import leverage_scores, lewis_weights, srht

N, D, K, REPEATS = 200_000, 50, 40, 5
SIZES = (500, 1000, 1250)
OUT = Path(__file__).parent / "results" / "sketch_leverage.json"


def make_matrix(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, D)) * np.abs(rng.standard_t(2.0, size=(N, 1)))


def anchor_scores(A: np.ndarray, m: int, k: int | None, seed: int) -> np.ndarray:
    """scipy CountSketch + numpy QR, then ``A R^{-1}`` (``k=None``) or ``A R^{-1} G / sqrt(k)``.

    Returns:
        The approximate leverage scores.
    """
    SA = scipy.linalg.clarkson_woodruff_transform(A, m, seed=seed)
    R = np.linalg.qr(SA, mode="r")
    if k is None:
        Z = scipy.linalg.solve_triangular(R, np.eye(D))
        X = A @ Z
        return np.einsum("ij,ij->i", X, X)
    G = np.random.default_rng(seed).standard_normal((D, k))
    X = A @ scipy.linalg.solve_triangular(R, G)
    return np.einsum("ij,ij->i", X, X) / k


def within(approx: np.ndarray, exact: np.ndarray) -> float:
    r = approx / exact
    return float(np.mean((r >= 0.6) & (r <= 1.7)))


def srht_vs_qr() -> list[dict[str, object]]:
    """Time SRHT, exact QR and scipy's CountSketch on a ``100000 x 40`` matrix.

    Returns:
        One row per method.
    """
    rng = np.random.default_rng(1)
    A_np = rng.standard_normal((100_000, 40))
    A = torch.from_numpy(A_np)
    m = 800
    methods: dict[str, Callable[[int], object]] = {
        f"ours srht (m = {m})": lambda s: srht(A, m, torch.Generator().manual_seed(s)),
        "exact QR (torch, reduced Q and R)": lambda s: torch.linalg.qr(A),
        "exact QR (torch, R only)": lambda s: torch.linalg.qr(A, mode="r"),
        f"scipy clarkson_woodruff_transform (m = {m})": lambda s: (
            scipy.linalg.clarkson_woodruff_transform(A_np, m, seed=s)
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in methods}
    for rep in range(REPEATS):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn(rep)
            times[name].append(time.perf_counter() - t0)
    return [
        {"method": k, "shape": "100000 x 40", "seconds_median": statistics.median(v)}
        for k, v in times.items()
    ]


def leverage_bias() -> list[dict[str, object]]:
    """Bias and spread of sketched leverage scores against the exact ones (d = 20 and 100).

    Returns:
        One row per (d, method).
    """
    out: list[dict[str, object]] = []
    for d in (20, 100):
        rng = np.random.default_rng(2)
        A_np = rng.standard_normal((20_000, d)) * np.abs(rng.standard_t(2.0, size=(20_000, 1)))
        A = torch.from_numpy(A_np)
        exact = leverage_scores(A).numpy()
        m_cs = max(20 * d, d * d // 2)
        methods: dict[str, Callable[[int], np.ndarray]] = {
            "ours default (CountSketch)": lambda s, A=A: leverage_scores(
                A, method="sketched", generator=torch.Generator().manual_seed(s)
            ).numpy(),
            "ours default (SRHT)": lambda s, A=A: leverage_scores(
                A, method="sketched", sketch="srht", generator=torch.Generator().manual_seed(s)
            ).numpy(),
            f"scipy CW {m_cs} rows + QR, A R^-1": lambda s, A_np=A_np, m=m_cs: _anchor_d(
                A_np, m, None, s
            ),
            f"scipy CW {m_cs} rows + QR + JL k=64": lambda s, A_np=A_np, m=m_cs: _anchor_d(
                A_np, m, 64, s
            ),
        }
        for name, fn in methods.items():
            sums, means, maxr, top, off = [], [], [], [], []
            for rep in range(3):
                approx = fn(rep)
                r = approx / exact
                sums.append(float(approx.sum()) / d)
                means.append(float(r.mean()))
                maxr.append(float(r.max()))
                top.append(float(approx.max()))
                off.append(float(np.mean(np.abs(r - 1) > 0.25)))
            out.append(
                {
                    "method": name,
                    "d": d,
                    "n": 20_000,
                    "sum_over_d_mean": statistics.mean(sums),
                    "ratio_mean": statistics.mean(means),
                    "ratio_max": max(maxr),
                    "largest_estimate": max(top),
                    "fraction_off_by_25pct_worst": max(off),
                }
            )
    return out


def _anchor_d(A: np.ndarray, m: int, k: int | None, seed: int) -> np.ndarray:
    """The scipy pipeline of :func:`anchor_scores` for any ``d``.

    Returns:
        The approximate leverage scores.
    """
    d = A.shape[1]
    R = np.linalg.qr(scipy.linalg.clarkson_woodruff_transform(A, m, seed=seed), mode="r")
    if k is None or k >= d:
        X = A @ scipy.linalg.solve_triangular(R, np.eye(d))
        return np.einsum("ij,ij->i", X, X)
    G = np.random.default_rng(seed).standard_normal((d, k))
    X = A @ scipy.linalg.solve_triangular(R, G)
    return np.einsum("ij,ij->i", X, X) / k


def main() -> None:
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    A_np = make_matrix(0)
    A = torch.from_numpy(A_np)
    t0 = time.perf_counter()
    exact = leverage_scores(A).numpy()
    exact_s = time.perf_counter() - t0

    def ours(m: int | None, k: int | None) -> Callable[[int], np.ndarray]:
        return lambda s: leverage_scores(
            A,
            method="sketched",
            sketch_size=m,
            jl_dim=k,
            generator=torch.Generator().manual_seed(s),
        ).numpy()

    methods: dict[str, Callable[[int], np.ndarray]] = {
        "ours default (CountSketch 1250 rows, A R^-1)": ours(None, None),
    }
    for m in SIZES:
        methods[f"ours (CountSketch {m} rows, A R^-1)"] = ours(m, None)
    methods[f"ours (CountSketch 1000 rows, JL k={K})"] = ours(1000, K)
    for m in SIZES:
        methods[f"anchor (scipy CW {m} rows + QR, A R^-1)"] = lambda s, m=m: anchor_scores(
            A_np, m, None, s
        )
    methods[f"anchor (scipy CW 1000 rows + QR + JL k={K})"] = lambda s: anchor_scores(
        A_np, 1000, K, s
    )
    methods["anchor (scipy CW 1000 rows + QR + JL k=64)"] = lambda s: anchor_scores(
        A_np, 1000, 64, s
    )
    times: dict[str, list[float]] = {k: [] for k in methods}
    acc: dict[str, list[float]] = {k: [] for k in methods}
    for rep in range(REPEATS):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            approx = fn(rep)
            times[name].append(time.perf_counter() - t0)
            acc[name].append(within(approx, exact))
    lewis_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        lw = lewis_weights(A, 1.0, tol=1e-6)
        lewis_times.append(time.perf_counter() - t0)
    # the fixed point reached: one more plain Cohen-Peng map moves the weights by at most tol
    w = lw.weights.double()
    B = A * w.pow(0.5 - 1.0)[:, None]
    tau = leverage_scores(B)
    image = (tau * w.pow(2.0 - 1.0)).pow(0.5)
    residual = float(((image - w).abs() / w).max())

    rows: list[dict[str, object]] = [
        {
            "method": name,
            "seconds_median": statistics.median(times[name]),
            "seconds_min": min(times[name]),
            "fraction_within_0.6_1.7_min": min(acc[name]),
            "meets_98_percent": min(acc[name]) >= 0.98,
        }
        for name in methods
    ]
    rows.append({"method": "exact leverage (thin QR)", "seconds_median": exact_s})
    rows.append(
        {
            "method": "l1 Lewis weights (ours, tol 1e-6)",
            "seconds_median": statistics.median(lewis_times),
            "iterations": lw.num_iters,
            "converged": lw.converged,
            "sum_weights": float(lw.weights.sum()),
            "fixed_point_residual": residual,
        }
    )
    srht_rows = srht_vs_qr()
    bias_rows = leverage_bias()
    for r in rows + srht_rows + bias_rows:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    # The fastest configuration of each side that meets the accuracy window.
    ok = [r for r in rows if r.get("meets_98_percent")]
    best_ours = min(
        (r for r in ok if str(r["method"]).startswith("ours")),
        key=lambda r: float(r["seconds_median"]),  # type: ignore[arg-type]
    )
    best_anchor = min(
        (r for r in ok if str(r["method"]).startswith("anchor")),
        key=lambda r: float(r["seconds_median"]),  # type: ignore[arg-type]
    )
    ours_t = float(best_ours["seconds_median"])  # type: ignore[arg-type]
    anchor_t = float(best_anchor["seconds_median"])  # type: ignore[arg-type]
    print(
        f"fastest meeting 98% in [0.6, 1.7]: ours {best_ours['method']} {ours_t:.4f} s; "
        f"anchor {best_anchor['method']} {anchor_t:.4f} s; anchor / ours = "
        f"{anchor_t / ours_t:.2f}x"
    )
    write_json(
        OUT,
        {
            "name": "sketch_leverage",
            "ours": ours_t,
            "anchor": anchor_t,
            "ratio": anchor_t / ours_t,
            "unit": f"seconds (median of {REPEATS}, 1 thread), fastest configuration of each "
            "side with >= 98% of rows within [0.6, 1.7] of exact (ratio = anchor / ours)",
            "ours_method": best_ours["method"],
            "anchor_method": best_anchor["method"],
            "params": {"n": N, "d": D, "jl_dim": K, "sketch_rows": SIZES, "repeats": REPEATS},
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d"),
            "rows": rows,
            "srht_vs_qr": srht_rows,
            "leverage_bias": bias_rows,
        },
    )


if __name__ == "__main__":
    main()
