"""Gradient-regularized Newton (P09) vs scipy L-BFGS-B and Newton-CG on the same problems.

Problems: the P09 logistic (digits 3 vs 8, two logits) and softmax (digits 0-4) regressions on
PCA-whitened digits with 10% random labels, float64, ``--n`` training samples, the same
initialization for every method. Each method runs until the gradient norm at an iterate is at
most ``1e-6 ||g_0||`` (L-BFGS-B and Newton-CG are stopped by a callback; ``ftol``/``gtol``/
``xtol`` are set so they do not stop earlier; scipy's Newton-CG may still stop on its own
criterion, which the output marks), ``--rounds`` alternating repeats, median wall
time. Ours: :func:`subspaces.optim.newton_gr` with the GGN (the Hessian of a linear model), CG
to 1e-6, twice: ``ours`` is the default (the curvature materialized once per iteration,
``dense=True`` below 2048 parameters) and ``ours-mf`` the matrix-free path (``dense=False``, one
pass of the curvature operator per CG iteration; skipped with ``--no-matrix-free``). Newton-CG
gets exact Hessian-vector products of the same loss by autograd on a flat vector (no operator
overhead), L-BFGS-B gradients of it.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/optim_newton.py``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import numpy as np
import scipy.optimize
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _anchors import load_average, machine, today
from subspaces.experiments.P09_gradient_regularized_newton import (
    PROBLEMS,
    _flat,
    _flat_loss,
    _start,
    make_problem,
)
from subspaces.optim import newton_gr

REL_TOL = 1e-6


def _scipy(method: str, f: Any, X: torch.Tensor, y: torch.Tensor, k: int, w0: torch.Tensor,
           target: float) -> tuple[int, float]:  # fmt: skip
    d = X.shape[1]
    norms: list[float] = []

    def fun(v: np.ndarray) -> tuple[float, np.ndarray]:
        loss, g = f(torch.from_numpy(v))
        return loss, g.numpy()

    def hessp(v: np.ndarray, p: np.ndarray) -> np.ndarray:
        w = torch.from_numpy(v).requires_grad_(True)
        loss = nn.functional.cross_entropy(X @ w[: k * d].reshape(k, d).T + w[k * d :], y)
        (g,) = torch.autograd.grad(loss, w, create_graph=True)
        (hp,) = torch.autograd.grad(g, w, torch.from_numpy(p))
        return hp.numpy()

    def callback(xk: np.ndarray) -> None:
        norms.append(float(f(torch.from_numpy(xk))[1].norm()))
        if norms[-1] <= target:
            raise StopIteration

    opts: dict[str, Any] = {"maxiter": 5000}
    if method == "L-BFGS-B":
        opts.update(maxcor=10, ftol=0.0, gtol=0.0)
        scipy.optimize.minimize(fun, w0.numpy(), jac=True, method=method, callback=callback,
                                options=opts)  # fmt: skip
    else:
        opts.update(xtol=1e-30)
        scipy.optimize.minimize(fun, w0.numpy(), jac=True, hessp=hessp, method=method,
                                callback=callback, options=opts)  # fmt: skip
    return len(norms), norms[-1] if norms else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-matrix-free", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{today()}  {machine()}  load average {load_average()}  n={args.n}")
    for name, classes in PROBLEMS.items():
        X, y = make_problem(classes, 0, args.n)
        k = len(classes)
        f = _flat_loss(X, y, k)
        w0 = _flat(_start(X, k, 0))
        target = REL_TOL * float(f(w0)[1].norm())
        ours = {"ours": True} if args.no_matrix_free else {"ours": True, "ours-mf": False}
        times: dict[str, list[float]] = {m: [] for m in (*ours, "L-BFGS-B", "Newton-CG")}
        its: dict[str, int] = {}
        final: dict[str, float] = {}
        for _ in range(args.rounds):
            for label, dense in ours.items():
                model = _start(X, k, 0)
                t = time.perf_counter()
                res = newton_gr(model, "cross_entropy", (X, y), curvature="ggn", gtol=target,
                                cg_rtol=1e-6, cg_max_iters=200, dense=dense)  # fmt: skip
                times[label].append(time.perf_counter() - t)
                its[label], final[label] = res.iterations, res.grad_norm
            for method in ("L-BFGS-B", "Newton-CG"):
                t = time.perf_counter()
                n_it, last = _scipy(method, f, X, y, k, w0, target)
                times[method].append(time.perf_counter() - t)
                its[method], final[method] = n_it, last
        med = {m: statistics.median(v) for m, v in times.items()}
        print(f"{name} ({k} classes, {X.shape[0]} samples, {w0.numel()} parameters), "
              f"target ||g|| <= {target:.2e}")  # fmt: skip
        for m in times:
            reached = "reached" if final[m] <= target else "STOPPED EARLY"
            ratio = med["ours"] / med[m]
            print(f"  {m:10s} iterations {its[m]:5d}   final ||g|| {final[m]:.1e} ({reached})   "
                  f"median {med[m]:8.3f} s   time ratio ours/{m} {ratio:7.2f}")  # fmt: skip
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
