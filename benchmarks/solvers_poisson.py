"""CG and PCG on 2-D Poisson: ours (matrix-free torch) beside scipy ``cg`` and pyamg.

Run (pyamg is optional; without it those rows are skipped)::

    OMP_NUM_THREADS=1 python benchmarks/solvers_poisson.py [--sizes 64 128 256] [--repeats 5]

For each ``N x N`` grid (5-point Laplacian, Dirichlet walls, one disk obstacle) and one
standard-normal right-hand side, every solver runs to a relative residual of 1e-8 (scipy's
definition ``||r|| <= rtol ||b||``); the table gives iterations, the median solve time over
``--repeats`` runs (methods alternated within each repeat), the set-up time of the
preconditioner, and the time ratio ours / scipy for the same method. Every returned solution is
checked against its true residual before it is reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from subspaces.linalg import cg
from subspaces.solvers import IncompleteCholesky, disk_mask, jacobi, poisson_2d

RTOL = 1e-8


def _scipy_cg(S: Any, b: np.ndarray, M: Any = None) -> tuple[np.ndarray, int]:
    count = [0]

    def cb(_x: np.ndarray) -> None:
        count[0] += 1

    x, info = spla.cg(S, b, rtol=RTOL, atol=0.0, M=M, maxiter=20 * S.shape[0], callback=cb)
    if info != 0:
        raise RuntimeError(f"scipy cg did not converge (info={info})")
    return x, count[0]


def _methods(N: int) -> tuple[dict[str, Callable[[], tuple[Any, int]]], dict[str, float], Any, Any]:
    A = poisson_2d(N, obstacle=disk_mask((N, N), (0.5, 0.5), 0.2))
    S = A.to_scipy_sparse()
    b = torch.randn(A.n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bn = b.numpy()
    setup: dict[str, float] = {}
    t = time.perf_counter()
    ic = IncompleteCholesky(A)
    setup["ours IC(0)"] = time.perf_counter() - t
    jac = jacobi(A)
    dinv = sp.diags(1.0 / S.diagonal())
    methods: dict[str, Callable[[], tuple[Any, int]]] = {
        "ours CG": lambda: _ours(cg(A, b, rtol=RTOL)),
        "scipy CG": lambda: _scipy_cg(S, bn),
        "ours Jacobi-PCG": lambda: _ours(cg(A, b, M=jac, rtol=RTOL)),
        "scipy Jacobi-PCG": lambda: _scipy_cg(S, bn, M=dinv),
        "ours IC(0)-PCG": lambda: _ours(cg(A, b, M=ic, rtol=RTOL)),
    }
    try:
        import pyamg
    except ImportError:
        print("pyamg not installed: its rows are skipped")
    else:
        t = time.perf_counter()
        ml = pyamg.smoothed_aggregation_solver(S.tocsr())
        setup["pyamg SA"] = time.perf_counter() - t

        def amg() -> tuple[np.ndarray, int]:
            residuals: list[float] = []
            x = ml.solve(bn, tol=RTOL, accel="cg", residuals=residuals, maxiter=500)
            return x, len(residuals) - 1

        methods["pyamg SA-PCG"] = amg
    return methods, setup, S, bn


def _ours(res: Any) -> tuple[np.ndarray, int]:
    if not res.converged:
        raise RuntimeError(f"ours did not converge ({res.status})")
    return res.x.numpy(), res.iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"rtol {RTOL}, median of {args.repeats} repeats, torch {torch.__version__}, load {load}")
    print(
        f"{'N':>5} {'method':<18} {'iters':>6} {'solve ms':>9} {'setup ms':>9} {'ours/scipy':>10}"
    )
    for N in args.sizes:
        methods, setup, S, bn = _methods(N)
        times: dict[str, list[float]] = {k: [] for k in methods}
        iters: dict[str, int] = {}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                t = time.perf_counter()
                x, its = fn()
                times[name].append(time.perf_counter() - t)
                rel = np.linalg.norm(bn - S @ x) / np.linalg.norm(bn)
                if rel > 1.01 * RTOL:
                    raise RuntimeError(f"{name}: true relative residual {rel:.2e} > {RTOL}")
                iters[name] = its
        med = {k: statistics.median(v) for k, v in times.items()}
        for name in methods:
            ratio = ""
            if name.startswith("ours") and name.replace("ours", "scipy") in med:
                ratio = f"{med[name] / med[name.replace('ours', 'scipy')]:.2f}"
            st = (
                f"{1e3 * setup[name.replace('-PCG', '')]:.1f}"
                if name.replace("-PCG", "") in setup
                else ""
            )
            print(f"{N:>5} {name:<18} {iters[name]:>6} {1e3 * med[name]:>9.2f} {st:>9} {ratio:>10}")


if __name__ == "__main__":
    main()
