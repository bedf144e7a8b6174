"""Matrix sensing (P23): ours vs plain numpy gradient descent and a least-squares solve.

Run: ``.venv/bin/python benchmarks/recovery_sensing.py`` (about a minute, 1 thread).

``M* = X* X*^T`` is ``60 x 60`` of rank 2, observed through ``m = 1200`` Gaussian
measurements (fewer than the ``1830`` free entries of a symmetric matrix, so a plain
least-squares solve cannot recover it).
Xiong, Ding and Du (ICLR 2024, arXiv:2310.01769): over-parameterized (``k = 4 > r``) symmetric GD
is sublinear, asymmetric ``F G^T`` GD is linear but slow for a small initialization, and one
re-balancing step restores a fast linear rate. Compared, all for ``T = 1500`` steps with step 0.2
and initialization scale 1e-3 (error ``||F G^T - M*||_F / ||M*||_F``):

* ours: ``asymmetric_gd(k=4, rebalance_at=300)``; also ``symmetric_gd(k=2)`` (exact rank, which a
  user rarely knows);
* baseline a user writes: the same factored GD in numpy (``A(M) = A_flat @ vec(M)``), symmetric
  ``k = 4`` and asymmetric ``k = 4`` without the re-balancing step;
* ``numpy.linalg.lstsq`` on ``vec(M)`` (the minimum-norm solution, one solve).

Times are medians of 3 (interleaved). Writes ``benchmarks/results/recovery_sensing.json``.
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
import torch

from subspaces._io import write_json
from subspaces.recovery import asymmetric_gd, gaussian_measurements, psd_target, symmetric_gd

N, R, K, M_MEAS, STEPS, LR, ALPHA, T1, REPEATS = 60, 2, 4, 1200, 1500, 0.2, 1e-3, 300, 3
OUT = Path(__file__).parent / "results" / "recovery_sensing.json"


def numpy_gd(
    A: np.ndarray, y: np.ndarray, M: np.ndarray, *, symmetric: bool, seed: int
) -> np.ndarray:
    """Plain factored GD in numpy; ``A`` is ``(m, n*n)`` already divided by ``sqrt(m)``.

    Returns:
        The relative error after each step.
    """
    rng = np.random.default_rng(seed)
    F = ALPHA * rng.standard_normal((N, K)) / np.sqrt(N)
    G = F if symmetric else ALPHA * rng.standard_normal((N, K)) / np.sqrt(N)
    norm = np.linalg.norm(M)
    errs = np.empty(STEPS + 1)
    errs[0] = np.linalg.norm(F @ G.T - M) / norm
    for t in range(STEPS):
        Rm = (A.T @ (A @ (F @ G.T).ravel() - y)).reshape(N, N)
        if symmetric:
            S = (Rm + Rm.T) / 2
            F = G = F - LR * S @ F
        else:
            F, G = F - LR * Rm @ G, G - LR * Rm.T @ F
        errs[t + 1] = np.linalg.norm(F @ G.T - M) / norm
    return errs


def first_below(errors: np.ndarray, level: float) -> int | None:
    hits = np.nonzero(errors <= level)[0]
    return int(hits[0]) if hits.size else None


def main() -> None:
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    g = torch.Generator().manual_seed(0)
    Xs = psd_target(N, R, generator=g)
    M = Xs @ Xs.T
    sym = gaussian_measurements(M_MEAS, N, generator=g)
    gen = gaussian_measurements(M_MEAS, N, symmetric=False, generator=g)
    y_sym, y_gen = sym.apply(M), gen.apply(M)
    A_sym = sym.matrices.reshape(M_MEAS, -1).numpy() / np.sqrt(M_MEAS)
    A_gen = gen.matrices.reshape(M_MEAS, -1).numpy() / np.sqrt(M_MEAS)
    M_np = M.numpy()

    methods: dict[str, Callable[[], np.ndarray]] = {
        f"ours: asymmetric_gd(k={K}, rebalance_at={T1})": lambda: asymmetric_gd(  # noqa: PLW0108
            gen,
            y_gen,
            K,
            lr=LR,
            steps=STEPS,
            init_scale=ALPHA,
            rebalance_at=T1,
            target=M,
            generator=torch.Generator().manual_seed(1),
        ).errors.numpy(),
        f"ours: symmetric_gd(k={R}) (exact rank)": lambda: symmetric_gd(  # noqa: PLW0108
            sym,
            y_sym,
            R,
            lr=LR,
            steps=STEPS,
            init_scale=ALPHA,
            target=M,
            generator=torch.Generator().manual_seed(1),
        ).errors.numpy(),
        f"baseline: numpy symmetric GD (k={K})": lambda: numpy_gd(
            A_sym, y_sym.numpy(), M_np, symmetric=True, seed=1
        ),
        f"baseline: numpy asymmetric GD (k={K}, no re-balancing)": lambda: numpy_gd(
            A_gen, y_gen.numpy(), M_np, symmetric=False, seed=1
        ),
        "baseline: numpy.linalg.lstsq on vec(M) (min-norm)": lambda: np.array(
            [
                np.linalg.norm(
                    np.linalg.lstsq(A_sym, y_sym.numpy(), rcond=None)[0].reshape(N, N) - M_np
                )
                / np.linalg.norm(M_np)
            ]
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in methods}
    errors: dict[str, np.ndarray] = {}
    for _ in range(REPEATS):
        for name, fn in methods.items():
            start = time.perf_counter()
            errors[name] = fn()
            times[name].append(time.perf_counter() - start)
    rows = []
    for name in methods:
        err = errors[name]
        sec = statistics.median(times[name])
        hit = first_below(err, 1e-6)
        rows.append(
            {
                "method": name,
                "seconds_median": sec,
                "steps": len(err) - 1,
                "final_relative_error": float(err[-1]),
                "steps_to_1e-6": hit,
                "seconds_to_1e-6": None if hit is None else sec * hit / max(len(err) - 1, 1),
            }
        )
    for r in rows:
        to = r["seconds_to_1e-6"]
        print(
            f"{r['method']:<58} {r['seconds_median']:7.3f} s  final err "
            f"{r['final_relative_error']:.1e}  to 1e-6: "
            + ("never" if to is None else f"{r['steps_to_1e-6']} steps, {to:.3f} s")
        )
    ours, base = rows[0], rows[3]
    ratio = base["seconds_median"] / ours["seconds_median"]
    print(
        f"time ratio numpy asymmetric GD / ours at {STEPS} steps: {ratio:.2f}x; final error "
        f"{base['final_relative_error']:.1e} vs {ours['final_relative_error']:.1e}"
    )
    write_json(
        OUT,
        {
            "name": "recovery_sensing",
            "ours": ours["seconds_median"],
            "anchor": base["seconds_median"],
            "ratio": ratio,
            "unit": f"seconds for {STEPS} GD steps (1 thread, median of {REPEATS}); "
            "anchor = numpy asymmetric GD without re-balancing; compare final errors",
            "ours_error": ours["final_relative_error"],
            "anchor_error": base["final_relative_error"],
            "params": {
                "n": N,
                "rank": R,
                "k": K,
                "measurements": M_MEAS,
                "steps": STEPS,
                "lr": LR,
                "init_scale": ALPHA,
                "rebalance_at": T1,
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
