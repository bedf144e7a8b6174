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
factors. Times are medians of 3 runs (ours, interleaved with the numpy ALS), including the
grouping of the entries.

The library anchor is fancyimpute 0.7.0's ``SoftImpute(max_rank=10)`` (dense ``5000 x 5000``
input with NaN for the missing entries, its defaults otherwise: shrinkage = largest singular value
/ 50, ``randomized_svd`` with one power iteration, tolerance 1e-3, at most 100 iterations), run
once (about 2.5 minutes). fancyimpute 0.7.0 calls ``check_array(X, force_all_finite=False)``, a
keyword scikit-learn 1.8 removed; this script wraps ``sklearn.utils.check_array`` *before*
importing fancyimpute to pass it on as ``ensure_all_finite`` (the one-line fix). Installed with
``pip install --no-deps fancyimpute knnimpute`` plus ``six``, ``cvxpy`` and ``cvxopt`` (imported
at package import). Skip it with ``--no-fancyimpute``.

Writes ``benchmarks/results/recovery_completion.json`` (keys name, ours, anchor, ratio, unit,
params, rows).

``--rank-sweep`` (issue 18, P19) instead times the cost of one AltMin iteration of both solvers
against the rank ``k`` at a fixed ``1000 x 1000`` matrix with ``|Omega| = 500000`` revealed entries
(CPU time of this thread, medians of 3, ``k = 16, 32, 64, 128``; the exact solver's ``k = 128``
point takes about 10 s a repeat), fits the log-log slopes, and runs both solvers to convergence at
``k = 64``; writes ``benchmarks/results/recovery_completion_rank.json``. About 2-3 minutes.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import statistics
import sys
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

N, RANK, FRACTION, TOL, MAX_ITERS, REPEATS = 5000, 10, 0.05, 1e-7, 50, 3
OUT = Path(__file__).parent / "results" / "recovery_completion.json"
OUT_RANK = Path(__file__).parent / "results" / "recovery_completion_rank.json"
SWEEP_N, SWEEP_COUNT, SWEEP_KS, RACE_K = 1000, 500_000, (16, 32, 64, 128), 64


def rank_sweep(
    n: int = SWEEP_N,
    count: int = SWEEP_COUNT,
    ks: tuple[int, ...] = SWEEP_KS,
    race_k: int = RACE_K,
    repeats: int = REPEATS,
) -> dict[str, object]:
    """CPU seconds of one AltMin iteration of each solver against ``k``; a race at ``race_k``.

    Returns:
        ``{"per_iteration": {k: {solver: seconds}}, "slopes": {solver: slope}, "race": {...}}``.
    """
    from subspaces.experiments.P19_matrix_completion import _complete, _slope
    from subspaces.recovery.completion import _altmin_iteration, _group, _observed_error

    per_iteration: dict[int, dict[str, float]] = {}
    for k in ks:
        g = torch.Generator().manual_seed(k)
        obs = sample_entries(low_rank_matrix(n, n, k, generator=g), count=count, generator=g)
        rows_side = _group(obs.rows, obs.cols, obs.values, n, n)
        cols_side = _group(obs.cols, obs.rows, obs.values, n, n)
        norm = float(torch.linalg.vector_norm(obs.values))
        U0 = torch.linalg.qr(torch.randn(n, k, dtype=torch.float64, generator=g)).Q
        per_iteration[k] = {}
        for solver in ("exact", "sketched"):
            times = []
            U, V = U0, torch.zeros(n, k, dtype=torch.float64)
            for _ in range(repeats):
                start = time.process_time()
                U, V = _altmin_iteration(rows_side, cols_side, U, V, solver, 1e-10, 3)
                _observed_error(rows_side, U, V, norm)
                times.append(time.process_time() - start)
            per_iteration[k][solver] = statistics.median(times)
        print(f"k = {k:4d}: " + ", ".join(f"{s} {t:.3f} s" for s, t in per_iteration[k].items()))
    slopes = {
        solver: _slope(list(ks), [per_iteration[k][solver] for k in ks])
        for solver in ("exact", "sketched")
    }
    race = {solver: _complete(n, race_k, count, solver, 0) for solver in ("exact", "sketched")}
    for solver, r in race.items():
        print(
            f"race k = {race_k}, {solver}: {r['cpu_seconds']:.2f} s CPU, "
            f"{r['iterations']} iterations, error {r['relative_error']:.1e}"
        )
    print("log-log slopes of CPU time per iteration vs k: " + str(slopes))
    return {"per_iteration": per_iteration, "slopes": slopes, "race": race}


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


def fancyimpute_softimpute(obs: Observations, truth: np.ndarray) -> dict[str, object]:
    """fancyimpute's SoftImpute(max_rank=10) on the dense matrix with NaN holes.

    Returns:
        A result row (seconds, iterations, error over all entries).
    """
    import sklearn.utils

    original = sklearn.utils.check_array

    def check_array(*args: object, force_all_finite: object = None, **kwargs: object) -> object:
        if force_all_finite is not None:  # removed in scikit-learn 1.8; renamed
            kwargs.setdefault("ensure_all_finite", force_all_finite)
        return original(*args, **kwargs)

    sklearn.utils.check_array = check_array
    import fancyimpute

    X = np.full(obs.shape, np.nan)
    X[obs.rows.numpy(), obs.cols.numpy()] = obs.values.numpy()
    solver = fancyimpute.SoftImpute(max_rank=RANK, verbose=False)
    iterations = {"n": 0}
    step = solver._svd_step

    def counted(*args: object, **kwargs: object) -> object:
        iterations["n"] += 1
        return step(*args, **kwargs)

    solver._svd_step = counted
    start = time.perf_counter()
    filled = solver.fit_transform(X)
    seconds = time.perf_counter() - start
    err = float(np.linalg.norm(filled - truth) / np.linalg.norm(truth))
    return {
        "method": f"anchor: fancyimpute {fancyimpute.__version__} SoftImpute(max_rank=10), "
        "defaults (max 100 iterations, tol 1e-3)",
        "seconds_median": seconds,
        "runs": 1,
        "iterations": iterations["n"],
        "relative_error_all_entries": err,
    }


def main() -> None:
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    if "--rank-sweep" in sys.argv:
        sweep = rank_sweep()
        write_json(
            OUT_RANK,
            {
                "name": "recovery_completion_rank",
                "unit": "CPU seconds of one AltMin iteration (1 thread, median of 3)",
                "loadavg_start": load_start,
                "loadavg_end": os.getloadavg(),
                "date": time.strftime("%Y-%m-%d"),
                "params": {"n": SWEEP_N, "observed": SWEEP_COUNT, "ks": list(SWEEP_KS)},
                **sweep,
            },
        )
        return
    g = torch.Generator().manual_seed(0)
    M = low_rank_matrix(N, N, RANK, generator=g)
    obs = sample_entries(M, FRACTION, generator=g)

    ours_ts: list[float] = []
    anchor_ts: list[float] = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        res = altmin_complete(obs, RANK, tol=TOL, generator=torch.Generator().manual_seed(1))
        ours_ts.append(time.perf_counter() - start)
        start = time.perf_counter()
        U, V, anchor_iters = numpy_als(obs, RANK)
        anchor_ts.append(time.perf_counter() - start)
    ours_t, anchor_t = statistics.median(ours_ts), statistics.median(anchor_ts)
    ours_err = M.relative_error(res.U, res.V)
    anchor_err = M.relative_error(torch.tensor(U), torch.tensor(V))

    start = time.perf_counter()
    sk = altmin_complete(
        obs, RANK, tol=TOL, solver="sketched", generator=torch.Generator().manual_seed(1)
    )
    sk_t = time.perf_counter() - start
    sk_err = M.relative_error(sk.U, sk.V)

    fancy = None
    if "--no-fancyimpute" not in sys.argv:
        fancy = fancyimpute_softimpute(obs, M.to_dense().numpy())
    rows = [
        {
            "method": "ours: altmin_complete(solver='exact')",
            "seconds_median": ours_t,
            "seconds_all": ours_ts,
            "iterations": res.iterations,
            "relative_error_all_entries": ours_err,
        },
        {
            "method": "ours: altmin_complete(solver='sketched', cg_steps=3)",
            "seconds_median": sk_t,
            "runs": 1,
            "iterations": sk.iterations,
            "relative_error_all_entries": sk_err,
        },
        {
            "method": "anchor: numpy ALS, svds init, Python loop of np.linalg.solve per row",
            "seconds_median": anchor_t,
            "seconds_all": anchor_ts,
            "iterations": anchor_iters,
            "relative_error_all_entries": anchor_err,
        },
    ]
    if fancy is not None:
        rows.append(fancy)
    for r in rows:
        print(
            f"{r['method']:<72} {r['seconds_median']:8.2f} s  {r['iterations']:3d} it  "
            f"err {r['relative_error_all_entries']:.1e}"
        )
    print(f"ratio numpy ALS / ours: {anchor_t / ours_t:.1f}x")
    if fancy is not None:
        fancy_seconds = float(fancy["seconds_median"])  # type: ignore[arg-type]
        print(f"ratio fancyimpute SoftImpute / ours: {fancy_seconds / ours_t:.0f}x")
    load_end = os.getloadavg()
    write_json(
        OUT,
        {
            "name": "recovery_completion",
            "ours": ours_t,
            "anchor": anchor_t,
            "ratio": anchor_t / ours_t,
            "unit": "seconds to relative error <= 1e-6 over all entries (1 thread, median of 3); "
            "anchor = numpy ALS with a row loop",
            "fancyimpute_seconds": None if fancy is None else fancy["seconds_median"],
            "fancyimpute_error": None if fancy is None else fancy["relative_error_all_entries"],
            "loadavg_start": load_start,
            "loadavg_end": load_end,
            "date": time.strftime("%Y-%m-%d"),
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
