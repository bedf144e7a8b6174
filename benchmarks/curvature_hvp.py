"""Cost of one Hessian-vector product: ours (vmap / cached double backward, single and batched)
vs curvlinops, PyHessian and hessian-eigenthings.

Run: ``.venv/bin/python benchmarks/curvature_hvp.py [--quick]`` after
``bash benchmarks/setup_anchors.sh`` (full: under a minute on 2 shared CPU cores; ``--quick``:
5 rounds instead of 15).

Per-vector wall time of one product on the same model and batch (``benchmarks/_anchors.py``: the
85k-parameter MLP and the 14k-parameter CNN), in milliseconds, for:

* ``gradient``: one forward + backward (the unit of cost);
* ours ``vmap`` engine (forward-over-reverse, ``torch.func``): one vector ``H @ v`` and one block
  of 16 (``H @ V``, one vmapped pass), divided by 16;
* ours cached double backward (``method="double_backward"``; the graph is built once, outside the
  timing, as PyHessian's is): one vector and a block of 16 (``is_grads_batched``);
* curvlinops ``HessianLinearOperator``: ``op @ v`` and ``op @ V`` with 16 columns;
* PyHessian: ``pyhessian.utils.hessian_vector_product`` on the graph its constructor caches;
* hessian-eigenthings ``HessianOperator.matvec`` (recomputes forward and gradient per product).

Every round times every method once, in a rotating order, so all see the same machine load; the
table gives the median over rounds. Each product is checked against our float64 product of the
same vector (``rel diff``). ``torch.set_num_threads(1)`` for every method: on this shared 2-core
machine multi-threading adds contention noise rather than speed.

Target (``shared/research/curvature.md`` section 6): our batched path at least 1.7x cheaper per
vector than our unbatched one (vmap engine, B=16).

Writes ``benchmarks/results/curvature_hvp.json`` atomically.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

import _anchors as A
from subspaces._io import write_json

B = 16
SPEEDUP_TARGET = 1.7
RESULTS = os.path.join(A.RESULTS_DIR, "curvature_hvp.json")


def _methods(p: A.Problem, v: torch.Tensor, V: torch.Tensor) -> dict[str, Any]:
    """key -> (label, columns, status, product function returning flat (n,) or (n, b))."""
    out: dict[str, Any] = {}
    grad = p.gradient_fn()
    out["gradient"] = ("gradient (forward + backward)", 1, None, grad)

    Hv = p.ours(method="vmap")
    Hd = p.ours(method="double_backward")
    Hd @ v  # build and cache the graph outside the timing
    out["ours_vmap_1"] = ("ours vmap, 1 vector", 1, None, lambda: Hv @ v)
    out["ours_vmap_16"] = (f"ours vmap, block of {B}", B, None, lambda: Hv @ V)
    out["ours_db_1"] = ("ours cached double backward, 1", 1, None, lambda: Hd @ v)
    out["ours_db_16"] = (f"ours cached double backward, {B}", B, None, lambda: Hd @ V)

    st = A.anchor_status("curvlinops")
    if st is None:
        op = A.curvlinops_hessian(p)
        out["curvlinops_1"] = ("curvlinops matvec", 1, None, lambda: op @ v)
        out["curvlinops_16"] = (f"curvlinops matmat {B}", B, None, lambda: op @ V)
    else:
        out["curvlinops_1"] = ("curvlinops matvec", 1, st, None)
        out["curvlinops_16"] = (f"curvlinops matmat {B}", B, st, None)

    st = A.anchor_status("pyhessian")
    if st is None:
        from pyhessian.utils import hessian_vector_product

        ph = A.pyhessian_hessian(p)
        vl = [
            t.reshape(q.shape)
            for t, q in zip(v.split([q.numel() for q in p.params]), p.params, strict=True)
        ]

        def pyh() -> torch.Tensor:
            return torch.cat(
                [h.reshape(-1) for h in hessian_vector_product(ph.gradsH, ph.params, vl)]
            )

        out["pyhessian"] = ("PyHessian HVP (cached graph)", 1, None, pyh)
    else:
        out["pyhessian"] = ("PyHessian HVP (cached graph)", 1, st, None)

    st = A.anchor_status("eigenthings")
    if st is None:
        eop = A.eigenthings_hessian(p)
        out["eigenthings"] = ("eigenthings matvec (autograd)", 1, None, lambda: eop.matvec(v))
    else:
        out["eigenthings"] = ("eigenthings matvec (autograd)", 1, st, None)
    return out


def _time(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds instead of 15")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    A.set_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    rounds = 5 if args.quick else args.rounds

    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for pname in ("mlp", "cnn"):
        p = A.PROBLEMS[pname]()
        n = p.num_params
        print(f"\n== {p.description}")
        g = torch.Generator().manual_seed(0)
        v = torch.randn(n, generator=g)
        V = torch.randn(n, B, generator=g)
        methods = _methods(p, v, V)

        # Correctness: every product against our float64 product of the same vector(s).
        H64 = p.ours(method="vmap", dtype=torch.float64)
        ref1, ref16 = H64 @ v.double(), H64 @ V.double()
        check: dict[str, float] = {}
        for key, (_, cols, st, fn) in methods.items():
            if st is None and key != "gradient":
                ref = ref16 if cols == B else ref1
                out = fn().double()
                check[key] = float((out - ref).norm() / ref.norm())

        live = [k for k, (_, _, st, _) in methods.items() if st is None]
        for k in live:  # warm-up
            methods[k][3]()
        times: dict[str, list[float]] = {k: [] for k in live}
        for r in range(rounds):
            order = live[r % len(live) :] + live[: r % len(live)]
            for k in order:
                times[k].append(_time(methods[k][3]) / methods[k][1])
        p.clear_grads()

        grad_ms = 1e3 * A.median(times["gradient"])
        prow: list[dict[str, Any]] = []
        for key, (label, cols, st, _) in methods.items():
            row: dict[str, Any] = {"problem": pname, "method": key, "label": label, "columns": cols}
            if st is not None:
                row["status"] = st
            else:
                ms = 1e3 * A.median(times[key])
                row.update(
                    status="ok",
                    ms_per_vector=ms,
                    x_gradient=ms / grad_ms,
                    ms_per_round=[1e3 * t for t in times[key]],
                    rel_diff_vs_fp64=check.get(key),
                )
            prow.append(row)
        rows += prow
        print(
            A.table(
                prow,
                [
                    ("label", "method", "s", 36),
                    ("ms_per_vector", "ms/vector", ".1f", 11),
                    ("x_gradient", "x gradient", ".2f", 12),
                    ("rel_diff_vs_fp64", "rel diff", ".1e", 10),
                    ("status", "status", "", 15),
                ],
            )
        )

        def ms(key: str, prow: list[dict[str, Any]] = prow) -> float | None:
            return next((r.get("ms_per_vector") for r in prow if r["method"] == key), None)

        s = {
            "vmap_unbatched_over_batched": ms("ours_vmap_1") / ms("ours_vmap_16"),
            "double_backward_1_over_16": ms("ours_db_1") / ms("ours_db_16"),
            "best_ours_ms_per_vector": min(
                ms(k) for k in ("ours_vmap_1", "ours_vmap_16", "ours_db_1", "ours_db_16")
            ),
        }
        s["meets_batched_speedup_1.7"] = s["vmap_unbatched_over_batched"] >= SPEEDUP_TARGET
        for k in ("pyhessian", "curvlinops_1", "curvlinops_16", "eigenthings"):
            if ms(k) is not None:
                s[f"{k}_over_ours_vmap_16"] = ms(k) / ms("ours_vmap_16")
                s[f"{k}_over_ours_db_1"] = ms(k) / ms("ours_db_1")
        summary[pname] = s
        print(
            f"{pname}: ours vmap unbatched / batched(B={B}) = "
            f"{s['vmap_unbatched_over_batched']:.2f}x (target >= {SPEEDUP_TARGET}: "
            f"{s['meets_batched_speedup_1.7']}); double backward 1 / {B} = "
            f"{s['double_backward_1_over_16']:.2f}x"
        )
        print(
            f"{pname}: "
            + ", ".join(f"{k} {v:.2f}x" for k, v in s.items() if k.endswith(("_16", "_db_1")))
        )

    mlp = summary["mlp"]
    py = next(
        (
            r.get("ms_per_vector")
            for r in rows
            if r["problem"] == "mlp" and r["method"] == "pyhessian"
        ),
        None,
    )
    ours = next(
        r["ms_per_vector"] for r in rows if r["problem"] == "mlp" and r["method"] == "ours_vmap_16"
    )
    write_json(
        RESULTS,
        {
            "name": "curvature_hvp",
            "ours": ours,
            "anchor": py,
            "ratio": None if py is None else py / ours,
            "unit": (
                f"ms per Hessian-vector product on the 85k-param MLP, batch 512, 1 thread; ours: "
                f"vmap engine, block of {B}; anchor: PyHessian's HVP on its cached graph; "
                f"ratio = anchor / ours. Batched speed-up of ours (unbatched / batched, target "
                f">= {SPEEDUP_TARGET}): {mlp['vmap_unbatched_over_batched']:.2f}"
            ),
            "params": {
                "block": B,
                "rounds": rounds,
                "quick": args.quick,
                "torch_threads": args.threads,
                "problems": {pn: A.PROBLEMS[pn]().description for pn in ("mlp", "cnn")},
                "versions": A.versions(),
                "load_average_at_end": A.load_average(),
            },
            "summary": summary,
            "rows": rows,
            "date": A.today(),
            "machine": A.machine(),
        },
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
