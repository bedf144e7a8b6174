"""LV-HBA and implicit-differentiation hypergradients on SVM hyperparameter learning (digits).

Side by side in one process on the same inputs (float64, one thread, medians of alternating
repeats):

1. one hypergradient by implicit differentiation at the lower-level solution with K CG iterations:
   ours (``subspaces.bilevel.implicit_hypergradient``: CG of ``subspaces.linalg`` on double-backward
   Hessian-vector products) vs torchopt's ``torchopt.diff.implicit.custom_root`` with
   ``torchopt.linear_solve.solve_cg`` (if torchopt imports; run this script from a venv that has
   it, see BENCHMARKS.md), and the agreement of the two hypergradients;
2. the cost of one LV-HBA iteration (three gradients, two projections) vs one AID outer iteration
   (10 inner gradient steps + CG), both ours.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bilevel_lv_hba.py``.
"""

from __future__ import annotations

import statistics
import time

import torch

from subspaces.bilevel import implicit_hypergradient
from subspaces.experiments.P27_lv_hba import make_problem, run_aid, run_lv_hba

K = 20
REPEATS = 15


def lower_solution(P, c, u0):
    from scipy.optimize import minimize

    def fun(u):
        ut = torch.tensor(u, dtype=torch.float64, requires_grad=True)
        val = P.squared_hinge_objective(c, ut)
        (g,) = torch.autograd.grad(val, ut)
        return float(val.detach()), g.numpy()

    res = minimize(
        fun, u0.numpy(), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "maxiter": 5000}
    )
    return torch.tensor(res.x, dtype=torch.float64)


def main() -> None:
    torch.set_num_threads(1)
    P, c0, u0 = make_problem(0)
    c = c0 + 3.0  # costs where the SVM is not trivially regularized
    u = lower_solution(P, c, u0)

    def F(cc, uu):
        return P.validation_loss(cc, P.lift(uu))

    def ours():
        return implicit_hypergradient(F, P.squared_hinge_objective, c, u, rtol=1e-30, max_iters=K)[
            0
        ]

    try:
        import torchopt

        def optimality(uu, cc):  # torchopt differentiates it with torch.func transforms
            return torch.func.grad(P.squared_hinge_objective, argnums=1)(cc, uu)

        @torchopt.diff.implicit.custom_root(
            optimality, argnums=1, solve=torchopt.linear_solve.solve_cg(maxiter=K, rtol=1e-30)
        )
        def solver(uu, cc):
            return u.clone()

        def theirs():
            cc = c.clone().requires_grad_(True)
            uu = solver(u.clone().requires_grad_(True), cc)
            (h,) = torch.autograd.grad(F(cc, uu), cc)
            return h

        theirs()
    except Exception as exc:  # pragma: no cover - reported, not hidden
        print(f"torchopt unavailable ({type(exc).__name__}: {exc}); timing ours only")
        theirs = None

    t_ours, t_theirs = [], []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        h1 = ours()
        t_ours.append(time.perf_counter() - t0)
        if theirs is not None:
            t0 = time.perf_counter()
            h2 = theirs()
            t_theirs.append(time.perf_counter() - t0)
    print(f"hypergradient, {K} CG iterations, n={P.n} costs, {P.d + 1} lower-level unknowns")
    print(f"  ours (subspaces.linalg.cg on HVPs): {1e3 * statistics.median(t_ours):8.2f} ms")
    if theirs is not None:
        rel = float((h1 - h2).norm() / h2.norm())
        print(f"  torchopt custom_root + solve_cg:    {1e3 * statistics.median(t_theirs):8.2f} ms")
        print(
            f"  ratio torchopt / ours: "
            f"{statistics.median(t_theirs) / statistics.median(t_ours):.2f}x; "
            f"relative difference {rel:.1e}"
        )

    lv = run_lv_hba(P, c0, u0, 1.0)
    aid = run_aid(P, c0, u0, 1.0)
    per_lv = lv.history.time[-1] / lv.iterations
    per_aid = aid.history.time[-1] / aid.iterations
    print(
        f"one LV-HBA iteration: {1e3 * per_lv:.2f} ms; "
        f"one AID outer iteration: {1e3 * per_aid:.2f} ms "
        f"(ratio {per_aid / per_lv:.1f}x)"
    )


if __name__ == "__main__":
    main()
