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

Second part (``--loop``, or ``--loop-only``): a :class:`~subspaces.optim.NewtonGR` training loop,
a tanh MLP ``64 -> h -> 10`` on standardized digits (all 1797 samples, float64), mini-batches of
128 drawn by a seeded generator, ``--steps`` steps from the same initialization, CG to 1e-10,
the GGN and the Hessian. ``before`` is the matrix-free path (``dense=False``: one double-backward
pass of the closure's graph per CG iteration, the only path before the dense one existed),
``auto`` the default ``dense=None`` and ``dense`` forces ``dense=True`` (the mini-batch curvature
built once per step by batched backward passes). The ratio is ``before / auto``; the last column
is the largest parameter difference between the ``before`` and ``dense`` runs after all steps.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/optim_newton.py [--loop | --loop-only]``
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
from sklearn.datasets import load_digits
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
from subspaces.optim import NewtonGR, newton_gr

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


def _loop(
    dense: bool | None, curvature: str, hidden: int, steps: int
) -> tuple[float, torch.Tensor]:
    X_np, y_np = load_digits(return_X_y=True)
    X = torch.tensor(X_np, dtype=torch.float64)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    y = torch.tensor(y_np)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10)).double()
    opt = NewtonGR(model.parameters(), curvature=curvature, cg_rtol=1e-10, dense=dense)
    g = torch.Generator().manual_seed(1)
    t = time.perf_counter()
    for _ in range(steps):
        idx = torch.randperm(X.shape[0], generator=g)[:128]
        xb, yb = X[idx], y[idx]

        def closure(xb: torch.Tensor = xb, yb: torch.Tensor = yb) -> tuple[torch.Tensor, ...]:
            out = model(xb)
            return nn.functional.cross_entropy(out, yb), out

        opt.step(closure)
    elapsed = time.perf_counter() - t
    return elapsed, torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def loop_benchmark(rounds: int, steps: int) -> None:
    print(f"NewtonGR loop: digits MLP 64-h-10, batch 128, {steps} steps, median of {rounds}")
    paths = {"before": False, "auto": None, "dense": True}
    for curvature in ("ggn", "hessian"):
        for hidden in (2, 4, 8):
            times: dict[str, list[float]] = {k: [] for k in paths}
            final: dict[str, torch.Tensor] = {}
            for _ in range(rounds):
                for label, dense in paths.items():
                    t, final[label] = _loop(dense, curvature, hidden, steps)
                    times[label].append(t)
            med = {k: statistics.median(v) for k, v in times.items()}
            diff = float((final["before"] - final["dense"]).abs().max())
            params = 64 * hidden + hidden + hidden * 10 + 10
            cols = "  ".join(f"{k} {v:6.3f} s" for k, v in med.items())
            print(f"  {curvature:8s} P={params:4d}  {cols}   "
                  f"before/auto {med['before'] / med['auto']:5.2f}   "
                  f"before/dense {med['before'] / med['dense']:5.2f}   "
                  f"max |dx| {diff:.1e}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-matrix-free", action="store_true")
    parser.add_argument("--loop", action="store_true", help="also the NewtonGR training loop")
    parser.add_argument("--loop-only", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{today()}  {machine()}  load average {load_average()}  n={args.n}")
    if args.loop or args.loop_only:
        loop_benchmark(args.rounds, args.steps)
        if args.loop_only:
            print(f"load average after: {load_average()}")
            return
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
