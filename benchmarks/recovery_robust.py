"""Robust matrix sensing (P29): l1 sub-gradient method (ours) vs l2 GD and scipy's robust loss.

Run: ``.venv/bin/python benchmarks/recovery_robust.py`` (about a minute, 1 thread).

``M* = X* X*^T`` is ``40 x 40`` of rank 2, observed through ``m = 8 n r^2 = 1280`` symmetric
Gaussian measurements of which 20% carry gross outliers (10x the rms measurement;
:func:`subspaces.recovery.outlier_measurements`). Ma and Fattahi (JMLR 2023): the l1 sub-gradient
method from a small initialization with geometrically decaying steps recovers ``M*`` exactly even
over-parameterized (``k = n``), while least squares fits the outliers. Compared (error
``||U U^T - M*||_F / ||M*||_F``):

* ours: ``subgradient_method(k=40)`` (defaults: 1200 steps, ``eta_0 = 0.3``, decay 0.985,
  initialization 1e-6);
* baseline a user writes: plain l2 GD in numpy on ``1/4 ||A(U U^T) - y||^2``, ``k = 40``, 1200
  steps of 0.2 from a 1e-3 initialization;
* ``scipy.optimize.least_squares(loss="soft_l1")`` (a robust loss, trust-region reflective, analytic
  Jacobian) on the exact-rank factor ``U`` (``k = 2``, which a user rarely knows) from a random
  start, with ``f_scale = 0.1 rms(y)`` (a typical choice; the soft-l1 loss is quadratic below
  ``f_scale`` so the answer is biased by about ``f_scale``) and with ``f_scale = 1e-6 rms(y)``
  (close to l1, what a user chasing an exact answer would set).

Times are medians of 3 (interleaved). Writes ``benchmarks/results/recovery_robust.json``.
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
import scipy.optimize
import torch

from subspaces._io import write_json
from subspaces.recovery import (
    gaussian_measurements,
    outlier_measurements,
    psd_target,
    subgradient_method,
)

N, R, FRACTION, STEPS, REPEATS = 40, 2, 0.2, 1200, 3
M_MEAS = 8 * N * R * R
OUT = Path(__file__).parent / "results" / "recovery_robust.json"


def numpy_l2_gd(A: np.ndarray, y: np.ndarray, M: np.ndarray, seed: int) -> float:
    """Plain GD on ``1/4 ||A vec(U U^T) - y||^2`` (``A`` already divided by ``sqrt(m)``).

    Returns:
        The final relative error.
    """
    rng = np.random.default_rng(seed)
    U = 1e-3 * rng.standard_normal((N, N)) / np.sqrt(N)
    for _ in range(STEPS):
        S = (A.T @ (A @ (U @ U.T).ravel() - y)).reshape(N, N)
        U = U - 0.2 * (S + S.T) / 2 @ U
    return float(np.linalg.norm(U @ U.T - M) / np.linalg.norm(M))


def scipy_soft_l1(A3: np.ndarray, y: np.ndarray, M: np.ndarray, seed: int, rel: float) -> float:
    """``scipy.optimize.least_squares`` with the soft-l1 robust loss on a rank-``R`` factor.

    Returns:
        The final relative error.
    """
    m = A3.shape[0]
    scale = 1 / np.sqrt(m)

    def residual(u: np.ndarray) -> np.ndarray:
        U = u.reshape(N, R)
        return np.einsum("mij,ij->m", A3, U @ U.T) * scale - y

    def jacobian(u: np.ndarray) -> np.ndarray:
        U = u.reshape(N, R)
        return (2 * scale * np.einsum("mij,jk->mik", A3, U)).reshape(m, N * R)

    u0 = np.random.default_rng(seed).standard_normal(N * R) / np.sqrt(N)
    f_scale = rel * float(np.sqrt(np.mean(y**2)))
    sol = scipy.optimize.least_squares(
        residual,
        u0,
        jac=jacobian,
        loss="soft_l1",
        f_scale=f_scale,
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
        max_nfev=2000,
    )
    U = sol.x.reshape(N, R)
    return float(np.linalg.norm(U @ U.T - M) / np.linalg.norm(M))


def main() -> None:
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    g = torch.Generator().manual_seed(0)
    Xs = psd_target(N, R, generator=g)
    M = Xs @ Xs.T
    meas = gaussian_measurements(M_MEAS, N, generator=g)
    y, corrupted = outlier_measurements(meas, M, FRACTION, generator=g)
    A3 = meas.matrices.numpy()
    A = A3.reshape(M_MEAS, -1) / np.sqrt(M_MEAS)
    y_np, M_np = y.numpy(), M.numpy()

    methods: dict[str, Callable[[], float]] = {
        f"ours: subgradient_method (l1, k={N}, {STEPS} steps)": lambda: float(
            subgradient_method(
                meas, y, N, target=M, generator=torch.Generator().manual_seed(1)
            ).errors[-1]
        ),
        f"baseline: numpy l2 GD (k={N}, {STEPS} steps)": lambda: numpy_l2_gd(A, y_np, M_np, 1),
        f"baseline: scipy least_squares(soft_l1, f_scale=0.1 rms), rank k={R}": lambda: (
            scipy_soft_l1(A3, y_np, M_np, 1, 0.1)
        ),
        f"baseline: scipy least_squares(soft_l1, f_scale=1e-6 rms), rank k={R}": lambda: (
            scipy_soft_l1(A3, y_np, M_np, 1, 1e-6)
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in methods}
    errors: dict[str, float] = {}
    for _ in range(REPEATS):
        for name, fn in methods.items():
            start = time.perf_counter()
            errors[name] = fn()
            times[name].append(time.perf_counter() - start)
    rows = [
        {
            "method": name,
            "seconds_median": statistics.median(times[name]),
            "final_relative_error": errors[name],
        }
        for name in methods
    ]
    for r in rows:
        print(
            f"{r['method']:<66} {r['seconds_median']:7.3f} s  "
            f"final err {r['final_relative_error']:.1e}"
        )
    ours, base = rows[0], rows[1]
    ratio = base["seconds_median"] / ours["seconds_median"]
    print(
        f"time ratio numpy l2 GD / ours: {ratio:.2f}x; final error "
        f"{base['final_relative_error']:.1e} vs {ours['final_relative_error']:.1e}"
    )
    write_json(
        OUT,
        {
            "name": "recovery_robust",
            "ours": ours["seconds_median"],
            "anchor": base["seconds_median"],
            "ratio": ratio,
            "unit": f"seconds (1 thread, median of {REPEATS}); anchor = numpy l2 GD; compare "
            "final errors",
            "ours_error": ours["final_relative_error"],
            "anchor_error": base["final_relative_error"],
            "params": {
                "n": N,
                "rank": R,
                "measurements": M_MEAS,
                "outlier_fraction": FRACTION,
                "outliers": int(corrupted.sum()),
                "steps": STEPS,
                "threads": 1,
            },
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d"),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
