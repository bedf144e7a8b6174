"""BSVRB vs implicit differentiation on a many-block bilevel problem (16 ridge tasks).

Side by side in one process on the same problem (float64, one thread):

1. wall-clock seconds and iterations to bring the exact hypergradient norm below 0.1 x its
   initial value: BSVRB (HVP variant, MSVR, P28's settings) with (I, B) = (4, 8) and (16, 32)
   vs the full-batch AID baseline (``subspaces.bilevel.aid_solve``: all blocks stacked into one
   lower level, 10 inner gradient steps, CG on Hessian-vector products); the first run includes
   first-call costs;
2. one full-batch hypergradient at the lower-level solution: ours
   (``implicit_hypergradient``) vs torchopt's ``custom_root`` + ``solve_cg`` (if torchopt
   imports), same CG iteration count, and their agreement with the closed form.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bilevel_bsvrb.py``.
"""

from __future__ import annotations

import statistics
import time

import torch

from subspaces.bilevel import MultiTaskRidge, aid_solve, bsvrb, implicit_hypergradient, msvr_gamma

M, D, N = 16, 5, 64
SETTINGS = {"lr": 0.5, "beta": 0.5, "beta_x": 0.5}  # P28's protocol
TAU = 0.3  # lower-level and s steps TAU / (1 + gamma), as in P28


def main() -> None:
    torch.set_num_threads(1)
    prob = MultiTaskRidge.random(
        M, D, N, upper_reg=0.01, generator=torch.Generator().manual_seed(0)
    )
    x0 = torch.zeros(D, dtype=torch.float64)
    target = 0.1 * float(prob.hypergradient(x0).norm())
    full = torch.arange(N).expand(M, N)
    blocks = torch.arange(M)

    def F(x, y):
        return prob.upper(x, y.reshape(M, D), blocks, full) / M

    def g(x, y):
        return prob.lower(x, y.reshape(M, D), blocks, full)

    def evaluate(x, Y):
        return prob.objective(x), float(prob.hypergradient(x).norm())

    print(f"{M} blocks, d={D}, {N} samples per block; target hypergradient norm {target:.4f}")
    for I, B in [(4, 8), (16, 32)]:
        r = bsvrb(
            prob,
            x0,
            torch.zeros(M, D, dtype=torch.float64),
            iters=2000,
            blocks_per_iter=I,
            batch_size=B,
            evaluate=evaluate,
            stop_below=target,
            record_every=10,
            generator=torch.Generator().manual_seed(0),
            lr_lower=TAU / (1 + msvr_gamma(M, I, SETTINGS["beta"])),
            lr_s=TAU / (1 + msvr_gamma(M, I, SETTINGS["beta"])),
            **SETTINGS,
        )
        print(
            f"  BSVRB I={I:2d} B={B:2d}: {r.iterations:5d} iterations, {r.history.time[-1]:.2f} s"
        )
    r = aid_solve(
        F,
        g,
        x0,
        torch.zeros(M * D, dtype=torch.float64),
        outer_iters=2000,
        lr=0.5,
        inner_steps=10,
        inner_lr=0.1,
        cg_iters=10,
        record_every=1,
        evaluate=lambda x, y: float(prob.hypergradient(x).norm()),
    )
    pairs = zip(r.history.iteration, r.history.upper, strict=True)
    k = next((i for i, v in pairs if v < target), None)
    t = r.history.time[r.history.iteration.index(k)] if k is not None else float("nan")
    print(f"  AID (full batch, ours):  {k} outer iterations, {t:.2f} s")

    # one hypergradient at the exact lower-level solution, 20 CG iterations
    x = torch.full((D,), -0.5, dtype=torch.float64)
    y = prob.lower_solution(x).reshape(-1)
    exact = prob.hypergradient(x)

    def ours():
        return implicit_hypergradient(F, g, x, y, rtol=1e-30, max_iters=20)[0]

    try:
        import torchopt

        def optimality(yy, xx):  # torchopt differentiates it with torch.func transforms
            return torch.func.grad(g, argnums=1)(xx, yy)

        @torchopt.diff.implicit.custom_root(
            optimality, argnums=1, solve=torchopt.linear_solve.solve_cg(maxiter=20, rtol=1e-30)
        )
        def solver(yy, xx):
            return y.clone()

        def theirs():
            xx = x.clone().requires_grad_(True)
            yy = solver(y.clone().requires_grad_(True), xx)
            (h,) = torch.autograd.grad(F(xx, yy), xx)
            return h

        theirs()
    except Exception as exc:  # pragma: no cover - reported, not hidden
        print(f"torchopt unavailable ({type(exc).__name__}: {exc}); timing ours only")
        theirs = None
    t1, t2 = [], []
    for _ in range(15):
        t0 = time.perf_counter()
        h1 = ours()
        t1.append(time.perf_counter() - t0)
        if theirs is not None:
            t0 = time.perf_counter()
            h2 = theirs()
            t2.append(time.perf_counter() - t0)
    print(f"full-batch hypergradient (20 CG iterations, {M * D} lower-level unknowns):")
    print(
        f"  ours: {1e3 * statistics.median(t1):.2f} ms, error vs closed form "
        f"{float((h1 - exact).abs().max()):.1e}"
    )
    if theirs is not None:
        print(
            f"  torchopt: {1e3 * statistics.median(t2):.2f} ms, error vs closed form "
            f"{float((h2 - exact).abs().max()):.1e}; ratio torchopt / ours "
            f"{statistics.median(t2) / statistics.median(t1):.2f}x"
        )


if __name__ == "__main__":
    main()
