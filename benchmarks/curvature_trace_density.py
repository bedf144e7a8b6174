"""Hessian trace at equal budget and spectral density: ours vs PyHessian, curvlinops,
hessian-eigenthings.

Run: ``.venv/bin/python benchmarks/curvature_trace_density.py [--quick]`` after
``bash benchmarks/setup_anchors.sh`` (full: 3.5-5 minutes on 2 shared CPU cores; ``--quick``:
the MLP only, 2 seeds, a 4 x 20 density).

Same model, batch and float32 weights for every tool (``benchmarks/_anchors.py``).

**Trace**, about 100 HVPs each, over 5 seeds (tools that take a seed get it; PyHessian and
curvlinops draw from the global generator, seeded with ``torch.manual_seed``):

* ours: ``hutchinson_trace(H, 100)``, ``hutchpp_trace(H, 99)``, ``xtrace(H, 100)`` (fixed
  budgets, ``subspaces.linalg``), each with a standard error;
* PyHessian 0.1 ``trace()`` (defaults maxIter=100, tol=1e-3): Hutchinson that stops when the
  running mean changes by less than 0.1 % -- no error bar, and an early stop that says nothing
  about accuracy; the estimate is the mean of the samples it returns;
* curvlinops 3.0.1 ``hutchinson_trace(op, 100)``, ``hutchpp_trace(op, 99)``, ``xtrace(op, 100)``
  (estimates only);
* hessian-eigenthings 1.0.0a5 ``trace(op, num_matvecs=99)`` (Hutch++, with a standard error).

Ground truth: the exact trace, the sum of the float64 Hessian diagonal from BackPACK's
``DiagHessian`` (an anchor dependency), with 8 random diagonal entries checked against
``e_i^T H e_i`` from our float64 operator. The table gives the RMS relative error over seeds, the
median relative standard error where a tool reports one, and ``|err| <= 2 se``: how often the
truth was within two standard errors.

**Density**: ours ``density(H, 10, 80)`` (lock-step SLQ: one block product of 10 vectors per
step), on the cached-double-backward and on the vmap engine, vs PyHessian ``density()`` (its
defaults, ``iter=100, n_v=1``; 0.1 from PyPI calls the removed ``torch.eig`` after spending all
its HVPs -- the crash is caught and reported) and eigenthings ``spectral_density(op,
num_runs=10, lanczos_steps=80)`` (10 sequential Lanczos runs). Reported: HVPs, wall time, the
largest node vs the float64 lambda_1 and the SLQ trace ``n * E[weights . nodes]`` vs the exact
trace.

``torch.set_num_threads(1)`` for every tool (shared 2-core machine: threads add contention
noise). Writes ``benchmarks/results/curvature_trace_density.json`` atomically.
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings
from typing import Any

import torch

import _anchors as A
from subspaces._io import write_json
from subspaces.curvature import density
from subspaces.linalg import hutchinson_trace, hutchpp_trace, xtrace

BUDGET = 100
RESULTS = os.path.join(A.RESULTS_DIR, "curvature_trace_density.json")


# ----- trace -----------------------------------------------------------------------------------
def _ours_trace(fn: Any, budget: int) -> Any:
    def run(p: A.Problem, seed: int) -> dict[str, Any]:
        t = time.perf_counter()
        H = p.ours()
        c = A.count_ours(H)
        r = fn(H, budget, generator=torch.Generator().manual_seed(seed))
        wall = time.perf_counter() - t
        return {"estimate": r.estimate, "stderr": r.stderr, "hvps": c.count, "seconds": wall}

    return run


def _pyhessian_trace(p: A.Problem, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    with A.count_pyhessian() as c:
        t = time.perf_counter()
        ph = A.pyhessian_hessian(p)
        samples = ph.trace()
        wall = time.perf_counter() - t
    del ph
    p.clear_grads()
    return {
        "estimate": sum(samples) / len(samples),
        "stderr": None,
        "hvps": c.count,
        "seconds": wall,
    }


def _curvlinops_trace(name: str, budget: int) -> Any:
    def run(p: A.Problem, seed: int) -> dict[str, Any]:
        import curvlinops

        torch.manual_seed(seed)
        t = time.perf_counter()
        op = A.curvlinops_hessian(p)
        c = A.count_curvlinops(op)
        est = float(getattr(curvlinops, name)(op, num_matvecs=budget))
        wall = time.perf_counter() - t
        return {"estimate": est, "stderr": None, "hvps": c.count, "seconds": wall}

    return run


def _eigenthings_trace(p: A.Problem, seed: int) -> dict[str, Any]:
    import hessian_eigenthings as he

    t = time.perf_counter()
    op = A.eigenthings_hessian(p)
    c = A.count_eigenthings(op)
    r = he.trace(op, num_matvecs=BUDGET - 1, seed=seed)
    wall = time.perf_counter() - t
    return {"estimate": r.estimate, "stderr": r.stderr, "hvps": c.count, "seconds": wall}


TRACE_METHODS: dict[str, tuple[str, str | None, Any]] = {
    "ours_hutchinson": ("ours hutchinson_trace 100", None, _ours_trace(hutchinson_trace, BUDGET)),
    "ours_hutchpp": ("ours hutchpp_trace 99", None, _ours_trace(hutchpp_trace, BUDGET - 1)),
    "ours_xtrace": ("ours xtrace 100", None, _ours_trace(xtrace, BUDGET)),
    "pyhessian": ("PyHessian trace() default", "pyhessian", _pyhessian_trace),
    "curvlinops_hutchinson": (
        "curvlinops hutchinson_trace 100",
        "curvlinops",
        _curvlinops_trace("hutchinson_trace", BUDGET),
    ),
    "curvlinops_hutchpp": (
        "curvlinops hutchpp_trace 99",
        "curvlinops",
        _curvlinops_trace("hutchpp_trace", BUDGET - 1),
    ),
    "curvlinops_xtrace": (
        "curvlinops xtrace 100",
        "curvlinops",
        _curvlinops_trace("xtrace", BUDGET),
    ),
    "eigenthings": ("eigenthings trace (hutch++) 99", "eigenthings", _eigenthings_trace),
}


# ----- density ---------------------------------------------------------------------------------
def _ours_density(method: str) -> Any:
    def run(p: A.Problem, runs: int, steps: int, seed: int) -> dict[str, Any]:
        t = time.perf_counter()
        H = p.ours(method=method)
        c = A.count_ours(H)
        d = density(H, runs, steps, generator=torch.Generator().manual_seed(seed))
        wall = time.perf_counter() - t
        return {
            "status": "ok",
            "hvps": c.count,
            "seconds": wall,
            "top_node": d.spectral_range[1],
            "slq_trace": float(d.trace()),
        }

    return run


def _pyhessian_density(p: A.Problem, runs: int, steps: int, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    with A.count_pyhessian() as c:
        t = time.perf_counter()
        try:
            ph = A.pyhessian_hessian(p)
            if runs == 10 and steps == 80:  # full run: PyHessian's own defaults
                eigs, weights = ph.density()
            else:
                eigs, weights = ph.density(iter=steps, n_v=1)
            status = "ok"
        except Exception as err:  # PyPI 0.1 calls torch.eig, removed in torch 1.9+
            status = f"crashed: {type(err).__name__}: {str(err).splitlines()[0]}"[:160]
            eigs = weights = None
        wall = time.perf_counter() - t
    p.clear_grads()
    out: dict[str, Any] = {"status": status, "hvps": c.count, "seconds": wall}
    if eigs is not None:
        n = p.num_params
        out["top_node"] = max(max(e) for e in eigs)
        out["slq_trace"] = (
            n
            * sum(
                sum(w * e for w, e in zip(ws, es, strict=True))
                for ws, es in zip(weights, eigs, strict=True)
            )
            / len(eigs)
        )
    return out


def _eigenthings_density(p: A.Problem, runs: int, steps: int, seed: int) -> dict[str, Any]:
    import hessian_eigenthings as he

    t = time.perf_counter()
    op = A.eigenthings_hessian(p)
    c = A.count_eigenthings(op)
    d = he.spectral_density(op, num_runs=runs, lanczos_steps=steps, seed=seed)
    wall = time.perf_counter() - t
    nodes = torch.nan_to_num(d.raw_eigenvalues.double(), nan=0.0)
    w = d.raw_weights.double()
    return {
        "status": "ok",
        "hvps": c.count,
        "seconds": wall,
        "top_node": float(torch.nan_to_num(d.raw_eigenvalues, nan=-math.inf).max()),
        "slq_trace": p.num_params * float((w * nodes).sum(1).mean()),
    }


DENSITY_METHODS: dict[str, tuple[str, str | None, Any]] = {
    "ours": ("ours density (auto: cached graph)", None, _ours_density("auto")),
    "ours_vmap": ("ours density (vmap)", None, _ours_density("vmap")),
    "pyhessian": ("PyHessian density()", "pyhessian", _pyhessian_density),
    "eigenthings": ("eigenthings spectral_density", "eigenthings", _eigenthings_density),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MLP only, 2 seeds, 4x20 density")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    A.set_threads(args.threads)
    warnings.filterwarnings("ignore")  # anchors' deprecation noise; budget warnings expected
    seeds = list(range(2 if args.quick else args.seeds))
    problems = ["mlp"] if args.quick else ["mlp", "cnn"]
    runs, steps = (4, 20) if args.quick else (10, 80)

    trace_rows: list[dict[str, Any]] = []
    density_rows: list[dict[str, Any]] = []
    trace_runs: list[dict[str, Any]] = []
    references: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for pname in problems:
        p = A.PROBLEMS[pname]()
        print(f"\n== {p.description}")
        exact, tinfo = A.reference_trace(p)
        lam, _ = A.reference_eigenvalues(p, k=2)
        references[pname] = {"trace": exact, "trace_info": tinfo, "lambda_1": float(lam[0])}
        if exact is None:  # BackPACK missing: a long float64 Hutchinson instead
            H64 = p.ours(method="vmap", dtype=torch.float64)
            r = hutchinson_trace(H64, 400, generator=torch.Generator().manual_seed(99))
            exact = r.estimate
            references[pname]["trace_info"] = {
                "method": f"float64 Hutchinson, 400 probes (stderr {r.stderr:.3g})",
                "backpack": tinfo,
            }
        print(
            f"exact trace {exact:.6f} ({references[pname]['trace_info']['method']}); "
            f"lambda_1 {float(lam[0]):.6f}"
        )

        # --- trace, seeds interleaved
        status = {k: (A.anchor_status(a) if a else None) for k, (_, a, _) in TRACE_METHODS.items()}
        live = [k for k in TRACE_METHODS if status[k] is None]
        per: dict[str, list[dict[str, Any]]] = {k: [] for k in live}
        for i, seed in enumerate(seeds):
            for k in live[i % len(live) :] + live[: i % len(live)]:
                run = TRACE_METHODS[k][2](p, seed)
                run["rel_error"] = (run["estimate"] - exact) / abs(exact)
                se = run["stderr"]
                run["z"] = None if not se else (run["estimate"] - exact) / se
                run.update(problem=pname, method=k, seed=seed)
                per[k].append(run)
                trace_runs.append(run)
        prow = []
        for k, (label, _, _) in TRACE_METHODS.items():
            if status[k] is not None:
                prow.append({"problem": pname, "method": k, "label": label, "status": status[k]})
                continue
            rs = per[k]
            ses = [r["stderr"] for r in rs if r["stderr"]]
            zs = [r["z"] for r in rs if r["z"] is not None]
            prow.append(
                {
                    "problem": pname,
                    "method": k,
                    "label": label,
                    "status": "ok",
                    "hvps": A.median([r["hvps"] for r in rs]),
                    "hvps_per_seed": [r["hvps"] for r in rs],
                    "seconds": A.median([r["seconds"] for r in rs]),
                    "rms_rel_error": math.sqrt(sum(r["rel_error"] ** 2 for r in rs) / len(rs)),
                    "max_abs_rel_error": max(abs(r["rel_error"]) for r in rs),
                    "rel_errors": [r["rel_error"] for r in rs],
                    "median_rel_stderr": A.median([s / abs(exact) for s in ses]) if ses else None,
                    "within_2se": f"{sum(abs(z) <= 2 for z in zs)}/{len(zs)}" if zs else "no se",
                }
            )
        trace_rows += prow
        print(f"\ntrace at ~{BUDGET} HVPs, {len(seeds)} seeds (exact {exact:.4f})")
        print(
            A.table(
                prow,
                [
                    ("label", "method", "s", 34),
                    ("hvps", "HVPs", ".0f", 6),
                    ("seconds", "wall s", ".3f", 9),
                    ("rms_rel_error", "RMS rel err", ".3f", 13),
                    ("max_abs_rel_error", "max |rel err|", ".3f", 15),
                    ("median_rel_stderr", "rel se", ".3f", 9),
                    ("within_2se", "|err|<=2se", "", 12),
                    ("status", "status", "", 15),
                ],
            )
        )

        # --- density, one seed
        dstatus = {
            k: (A.anchor_status(a) if a else None) for k, (_, a, _) in DENSITY_METHODS.items()
        }
        drow = []
        for k, (label, _, fn) in DENSITY_METHODS.items():
            row: dict[str, Any] = {"problem": pname, "method": k, "label": label}
            if dstatus[k] is not None:
                row["status"] = dstatus[k]
            else:
                row.update(fn(p, runs, steps, 0))
                if "top_node" in row:
                    row["top_node_rel_error"] = abs(row["top_node"] - float(lam[0])) / float(lam[0])
                    row["slq_trace_rel_error"] = (row["slq_trace"] - exact) / abs(exact)
            drow.append(row)
        density_rows += drow
        print(f"\ndensity: ours/eigenthings {runs} runs x {steps} steps; PyHessian its defaults")
        print(
            A.table(
                [{**r, "short": str(r.get("status", "")).split(":")[0]} for r in drow],
                [
                    ("label", "method", "s", 36),
                    ("hvps", "HVPs", ".0f", 6),
                    ("seconds", "wall s", ".2f", 9),
                    ("top_node_rel_error", "top node err", ".1e", 14),
                    ("slq_trace_rel_error", "SLQ tr err", ".3f", 12),
                    ("short", "status", "", 15),
                ],
            )
        )
        for r in drow:
            if str(r.get("status", "")).startswith("crashed"):
                print(
                    f"  {r['label']}: {r['status']} (after {r['hvps']} HVPs, {r['seconds']:.2f} s)"
                )

        def tget(k: str, key: str, prow: list[dict[str, Any]] = prow) -> Any:
            return next(r.get(key) for r in prow if r["method"] == k)

        def dget(k: str, key: str, drow: list[dict[str, Any]] = drow) -> Any:
            return next(r.get(key) for r in drow if r["method"] == k)

        s: dict[str, Any] = {
            "ours_hutchinson_rms_rel_error": tget("ours_hutchinson", "rms_rel_error"),
            "ours_xtrace_rms_rel_error": tget("ours_xtrace", "rms_rel_error"),
            "ours_density_seconds": dget("ours", "seconds"),
            "ours_density_hvps": dget("ours", "hvps"),
        }
        if tget("pyhessian", "status") == "ok":
            s["pyhessian_trace_rms_rel_error"] = tget("pyhessian", "rms_rel_error")
            s["pyhessian_over_ours_hutchinson_rms_error"] = tget(
                "pyhessian", "rms_rel_error"
            ) / tget("ours_hutchinson", "rms_rel_error")
        if dget("eigenthings", "status") == "ok":
            s["eigenthings_density_over_ours_time"] = dget("eigenthings", "seconds") / dget(
                "ours", "seconds"
            )
        s["pyhessian_density_status"] = dget("pyhessian", "status")
        summary[pname] = s

    mlp = summary["mlp"]
    write_json(
        RESULTS,
        {
            "name": "curvature_trace_density",
            "ours": mlp["ours_hutchinson_rms_rel_error"],
            "anchor": mlp.get("pyhessian_trace_rms_rel_error"),
            "ratio": mlp.get("pyhessian_over_ours_hutchinson_rms_error"),
            "unit": (
                f"RMS relative error of the Hessian trace over {len(seeds)} seeds on the "
                f"85k-param MLP; ours: hutchinson_trace at {BUDGET} HVPs (with a standard "
                "error); anchor: PyHessian trace() with its defaults (early stop, no error bar); "
                "ratio = anchor / ours. Density rows: seconds and HVPs of SLQ."
            ),
            "params": {
                "budget": BUDGET,
                "seeds": seeds,
                "density_runs": runs,
                "density_steps": steps,
                "quick": args.quick,
                "torch_threads": args.threads,
                "problems": {pn: A.PROBLEMS[pn]().description for pn in problems},
                "versions": A.versions(),
                "load_average_at_end": A.load_average(),
            },
            "references": references,
            "summary": summary,
            "rows": trace_rows + density_rows,
            "trace_rows": trace_rows,
            "density_rows": density_rows,
            "trace_runs": trace_runs,
            "date": A.today(),
            "machine": A.machine(),
        },
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
