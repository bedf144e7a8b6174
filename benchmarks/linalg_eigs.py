"""Top-5 eigenpairs: ours (Lanczos) vs ARPACK (scipy.sparse.linalg.eigsh) vs power iteration.

Run: ``.venv/bin/python benchmarks/linalg_eigs.py [--quick]`` (about 1-3 minutes on 2 CPU cores).

Two symmetric operators with a known, hard spectrum (``gap_spectrum``: lambda_1 = 1, ratio 0.98
between the top six eigenvalues, then a bulk in [0, 0.45]):

* ``dense-4000``: a dense float64 ``Q diag(lam) Q^T`` of size 4000;
* ``matfree-1e5``: a matrix-free float64 operator of dimension 100,000 (Householder reflections,
  ``KnownSpectrumOperator``).

Every method is asked for the top 5 at a relative residual of 1e-6 and then checked the same way:
residuals ``||A x - theta x|| / ||A||`` recomputed here, eigenvalue errors against the known
spectrum. Products are counted by the same counting wrapper for every method; times are medians
over seeds, all methods interleaved so they see the same machine load. ARPACK's ``tol`` is
relative to each eigenvalue (``||r|| <= tol |theta|``), which for this spectrum (theta ~ 1) is
the same criterion.

Writes ``benchmarks/results/linalg_eigs.json`` atomically.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import scipy
import scipy.sparse.linalg as sla
import torch

from subspaces._io import write_json
from subspaces.linalg import lanczos, power_iteration
from subspaces.linops import Dense, LinearOperator
from subspaces.testing import KnownSpectrumOperator, gap_spectrum, matrix_with_spectrum

K, TOL = 5, 1e-6
RESULTS = Path(__file__).parent / "results" / "linalg_eigs.json"


class Counting(LinearOperator):
    """Counts every column multiplied."""

    SELF_ADJOINT = True

    def __init__(self, op: LinearOperator):
        super().__init__(op.shape, op.dtype, op.device)
        self.op, self.count = op, 0

    def _matmat(self, X):
        self.count += X.shape[1]
        return self.op.matmat(X)


def check(A, lam, vals, vecs):
    vals = torch.as_tensor(np.asarray(vals), dtype=torch.float64)
    vecs = torch.as_tensor(np.asarray(vecs), dtype=torch.float64)
    order = torch.argsort(vals, descending=True)
    vals, vecs = vals[order], vecs[:, order]
    rel_res = float((A.matmat(vecs) - vecs * vals).norm(dim=0).max()) / float(lam.abs().max())
    err = float((vals - lam[:K]).abs().max())
    return rel_res, err


def run_ours(A, lam, seed, block_size=1):
    C = Counting(A)
    t = time.perf_counter()
    r = lanczos(C, K, tol=TOL, block_size=block_size, generator=torch.Generator().manual_seed(seed))
    t = time.perf_counter() - t
    return C.count, t, *check(A, lam, r.eigenvalues, r.eigenvectors), r.all_converged


def run_power(A, lam, seed):
    C = Counting(A)
    t = time.perf_counter()
    r = power_iteration(C, K, tol=TOL, generator=torch.Generator().manual_seed(seed))
    t = time.perf_counter() - t
    return C.count, t, *check(A, lam, r.eigenvalues, r.eigenvectors), r.all_converged


def run_arpack(A, lam, seed):
    C = Counting(A)
    sp = C.to_scipy()
    v0 = np.random.default_rng(seed).standard_normal(A.shape[0])
    t = time.perf_counter()
    vals, vecs = sla.eigsh(sp, k=K, which="LA", tol=TOL, v0=v0)
    t = time.perf_counter() - t
    rel_res, err = check(A, lam, vals, vecs)
    return C.count, t, rel_res, err, rel_res <= TOL


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller operators, 2 seeds")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine multi-threaded small ops are "
        "dominated by thread contention, which would blur the comparison)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = range(2 if args.quick else args.seeds)
    gen = torch.Generator().manual_seed(0)
    n_dense, n_free = (1000, 20_000) if args.quick else (4000, 100_000)
    problems = {}
    lam_d = gap_spectrum(n_dense, K, 0.98)
    problems[f"dense-{n_dense}"] = (
        Dense(matrix_with_spectrum(lam_d, generator=gen), symmetric=True),
        lam_d,
    )
    lam_f = gap_spectrum(n_free, K, 0.98)
    problems[f"matfree-{n_free}"] = (KnownSpectrumOperator(lam_f, generator=gen), lam_f)

    methods = {
        "ours lanczos": run_ours,
        "ours block lanczos b=4": lambda A, lam, s: run_ours(A, lam, s, block_size=4),
        "arpack eigsh": run_arpack,
        "power iteration": run_power,
    }
    rows = []
    print(f"top-{K} eigenpairs to relative residual {TOL:g}; median over {len(seeds)} seeds")
    print(
        f"{'problem':<16}{'method':<26}{'matvecs':>9}{'time s':>9}"
        f"{'max rel res':>13}{'max |err|':>11}  ok"
    )
    for pname, (A, lam) in problems.items():
        per = {m: [] for m in methods}
        for seed in seeds:
            for m, fn in methods.items():
                per[m].append(fn(A, lam, seed))
        for m, runs in per.items():
            row = {
                "problem": pname,
                "method": m,
                "matvecs": statistics.median(r[0] for r in runs),
                "seconds": statistics.median(r[1] for r in runs),
                "max_rel_residual": max(r[2] for r in runs),
                "max_eigenvalue_error": max(r[3] for r in runs),
                "all_converged": all(bool(r[4]) for r in runs),
                "matvecs_per_seed": [r[0] for r in runs],
            }
            rows.append(row)
            print(
                f"{pname:<16}{m:<26}{row['matvecs']:>9.0f}{row['seconds']:>9.3f}"
                f"{row['max_rel_residual']:>13.1e}{row['max_eigenvalue_error']:>11.1e}"
                f"  {row['all_converged']}"
            )

    def get(p, m, key):
        return next(r[key] for r in rows if r["problem"] == p and r["method"] == m)

    summary = {}
    for pname in problems:
        ours = get(pname, "ours lanczos", "matvecs")
        summary[pname] = {
            "arpack_matvecs_over_ours": get(pname, "arpack eigsh", "matvecs") / ours,
            "power_matvecs_over_ours": get(pname, "power iteration", "matvecs") / ours,
            "arpack_time_over_ours": get(pname, "arpack eigsh", "seconds")
            / get(pname, "ours lanczos", "seconds"),
        }
        print(
            f"{pname}: ARPACK/ours matvecs {summary[pname]['arpack_matvecs_over_ours']:.2f}x, "
            f"power/ours {summary[pname]['power_matvecs_over_ours']:.1f}x, "
            f"ARPACK/ours time {summary[pname]['arpack_time_over_ours']:.2f}x"
        )
    free = f"matfree-{n_free}"
    write_json(
        RESULTS,
        {
            "name": "linalg_eigs",
            "ours": get(free, "ours lanczos", "matvecs"),
            "anchor": get(free, "arpack eigsh", "matvecs"),
            "ratio": summary[free]["arpack_matvecs_over_ours"],
            "unit": (
                "matvecs to top-5 at 1e-6 relative residual (anchor: ARPACK eigsh); "
                "ratio = anchor / ours"
            ),
            "params": {
                "k": K,
                "tol": TOL,
                "seeds": len(seeds),
                "problems": list(problems),
                "quick": args.quick,
                "torch_threads": args.threads,
            },
            "summary": summary,
            "rows": rows,
            "machine": (
                f"{platform.machine()} {platform.processor() or ''} "
                f"torch {torch.__version__} scipy {scipy.__version__}"
            ),
            "date": dt.date.today().isoformat(),
        },
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
