"""Matrix completion: batched AltMin (ours) vs a plain numpy ALS with a Python loop over rows.

Run: ``.venv/bin/python benchmarks/recovery_completion.py`` (about a minute, 1 thread).

``M = A B^T / sqrt(10)`` is ``5000 x 5000`` of rank 10 with Gaussian factors; 5% of its entries
(1.25 million) are revealed uniformly without replacement. Both methods use a spectral
initialization (ours: randomized SVD of the rescaled sparse matrix; anchor:
``scipy.sparse.linalg.svds``) and then alternate exact least-squares updates of all rows and all
columns: ours with :func:`subspaces.recovery.altmin_complete` (CSR products and one batched
Cholesky per half-step), the anchor with one ``numpy.linalg.solve`` per row in a Python loop,
what a user writes from the textbook. Both stop when the relative error on the revealed entries
is ``<= 1e-7``; the reported error is over *all* entries (target ``<= 1e-6``), from the known
factors. Times are best of 2 (ours) and one run (anchor), including the grouping of the entries.
fancyimpute's SoftImpute is not run here (it is dense, needs a patched scikit-learn, and stalls at
a ~5% error; see ``shared/research/structure.md`` section 3.4: 144.9 s to 5.1e-2 on this problem).

Writes ``benchmarks/results/recovery_completion.json`` (keys name, ours, anchor, ratio, unit,
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
import scipy.sparse
import scipy.sparse.linalg
import torch

from subspaces._io import write_json
from subspaces.recovery import (
    Observations,
    altmin_complete,
    low_rank_matrix,
    sample_entries,
)

N, RANK, FRACTION, TOL, MAX_ITERS, REPEATS = 5000, 10, 0.05, 1e-7, 50, 2
OUT = Path(__file__).parent / "results" / "recovery_completion.json"


def numpy_als(obs: Observations, rank: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Textbook ALS: spectral init by ``svds``, then one ``np.linalg.solve`` per row.

    Returns:
        ``(U, V, iterations)``.
    """
    rows, cols = obs.rows.numpy(), obs.cols.numpy()
    vals = obs.values.numpy()
    m, n = obs.shape
    order_r = np.argsort(rows, kind="stable")
    order_c = np.argsort(cols, kind="stable")
    split_r = np.split(order_r, np.cumsum(np.bincount(rows, minlength=m))[:-1])
    split_c = np.split(order_c, np.cumsum(np.bincount(cols, minlength=n))[:-1])
    by_row, by_col = split_r, split_c
    Y = scipy.sparse.csr_matrix((vals / obs.fraction, (rows, cols)), shape=(m, n))
    U = np.ascontiguousarray(scipy.sparse.linalg.svds(Y, k=rank, random_state=0)[0])
    V = np.zeros((n, rank))
    norm = np.linalg.norm(vals)
    for it in range(1, MAX_ITERS + 1):
        for j, idx in enumerate(by_col):
            F = U[rows[idx]]
            V[j] = np.linalg.solve(F.T @ F + 1e-12 * np.eye(rank), F.T @ vals[idx])
        for i, idx in enumerate(by_row):
            F = V[cols[idx]]
            U[i] = np.linalg.solve(F.T @ F + 1e-12 * np.eye(rank), F.T @ vals[idx])
        fit = np.einsum("ij,ij->i", U[rows], V[cols])
        if np.linalg.norm(fit - vals) <= TOL * norm:
            return U, V, it
    return U, V, MAX_ITERS


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    M = low_rank_matrix(N, N, RANK, generator=g)
    obs = sample_entries(M, FRACTION, generator=g)

    ours_t = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        res = altmin_complete(obs, RANK, tol=TOL, generator=torch.Generator().manual_seed(1))
        ours_t = min(ours_t, time.perf_counter() - start)
    ours_err = M.relative_error(res.U, res.V)

    start = time.perf_counter()
    sk = altmin_complete(
        obs, RANK, tol=TOL, solver="sketched", generator=torch.Generator().manual_seed(1)
    )
    sk_t = time.perf_counter() - start
    sk_err = M.relative_error(sk.U, sk.V)

    start = time.perf_counter()
    U, V, anchor_iters = numpy_als(obs, RANK)
    anchor_t = time.perf_counter() - start
    anchor_err = M.relative_error(torch.tensor(U), torch.tensor(V))

    rows = [
        {
            "method": "ours: altmin_complete(solver='exact')",
            "seconds_best": ours_t,
            "iterations": res.iterations,
            "relative_error_all_entries": ours_err,
        },
        {
            "method": "ours: altmin_complete(solver='sketched', cg_steps=3)",
            "seconds_best": sk_t,
            "iterations": sk.iterations,
            "relative_error_all_entries": sk_err,
        },
        {
            "method": "anchor: numpy ALS, svds init, Python loop of np.linalg.solve per row",
            "seconds_best": anchor_t,
            "iterations": anchor_iters,
            "relative_error_all_entries": anchor_err,
        },
    ]
    for r in rows:
        print(
            f"{r['method']:<72} {r['seconds_best']:8.2f} s  {r['iterations']:3d} it  "
            f"err {r['relative_error_all_entries']:.1e}"
        )
    print(f"ratio anchor / ours: {anchor_t / ours_t:.1f}x")
    write_json(
        OUT,
        {
            "name": "recovery_completion",
            "ours": ours_t,
            "anchor": anchor_t,
            "ratio": anchor_t / ours_t,
            "unit": "seconds to relative error <= 1e-6 over all entries (1 thread)",
            "params": {
                "m": N,
                "n": N,
                "rank": RANK,
                "fraction": FRACTION,
                "observed": obs.num_observed,
                "observed_tol": TOL,
                "threads": 1,
            },
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
