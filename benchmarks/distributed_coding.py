"""Sequential gradient coding: simulator throughput and the runner's per-round overhead.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distributed_coding.py [--repeats 3]``

* **Simulator**: rounds per second of :func:`subspaces.distributed.coding.simulate` for GC
  (``s = 2``) and M-SGC (``B = 1, W = 3, lambda = 4``) with Gilbert-Elliott stragglers, ``n`` =
  16, 64 and 256 workers, 100 jobs (median of ``--repeats``).
* **Runner**: seconds per round at the master of
  :func:`subspaces.distributed.coding.runner.run_local` (3 worker processes + master, gloo,
  digits, MLP 64-16-10, no injected delay, no stragglers, no reference check) for the uncoded
  code (GC ``s = 0``), GC ``s = 1`` and M-SGC, against a plain data-parallel round of the same
  processes: every worker computes the gradient of its third of the data and one
  ``all_reduce`` sums them (the master contributes zeros). Same processes, same data, one run;
  the ratio is coded / plain. A warm-up run in the same process group goes first (gloo
  connects pairs lazily) and is not measured. Under the master-worker protocol each result
  goes to the master with ``send``/``recv`` and the master broadcasts who counted, so some
  overhead over one all-reduce is expected; on 2 shared cores both are dominated by Python and
  process switching.

Results go to ``benchmarks/results/distributed_coding.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from subspaces.distributed.coding import (  # noqa: E402
    GilbertElliott,
    GradientCodingScheme,
    MultiplexedSGC,
    simulate,
)
from subspaces.distributed.coding.runner import job_gradient, run_local  # noqa: E402

JOBS = 100
MODEL = GilbertElliott(p_good_to_bad=0.01, p_bad_to_good=0.3, slowdown=6.0)


def simulator_throughput(repeats: int) -> dict[str, float]:
    out = {}
    for n in (16, 64, 256):
        for name, make in (
            ("GC", lambda n=n: GradientCodingScheme(n, 2, JOBS)),
            ("M-SGC", lambda n=n: MultiplexedSGC(n, 1, 3, 4, JOBS)),
        ):
            S = MODEL.sample(n, JOBS + 5, seed=n)
            times = []
            for _ in range(repeats):
                scheme = make()
                t = time.perf_counter()
                simulate(scheme, S)
                times.append(time.perf_counter() - t)
            out[f"{name}_n{n}_rounds_per_s"] = scheme.rounds / statistics.median(times)
    return out


def _plain(
    index: int, init: str, world: int, X: torch.Tensor, y: torch.Tensor, jobs: int, queue: Any
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=init, rank=index, world_size=world, timeout=timedelta(seconds=120)
    )
    n = world - 1
    bounds = np.round(np.linspace(0, X.shape[0], n + 1)).astype(int)
    size = job_gradient(X[:1], y[:1], 10, 0).numel()
    start = time.perf_counter()
    for job in range(jobs):
        if index == 0:
            g = torch.zeros(size, dtype=torch.float64)
        else:
            lo, hi = bounds[index - 1], bounds[index]
            g = job_gradient(X[lo:hi], y[lo:hi], 10, job)
        dist.all_reduce(g)
    if index == 0:
        queue.put((time.perf_counter() - start) / jobs)
    dist.destroy_process_group()


def plain_round_seconds(X: torch.Tensor, y: torch.Tensor, n: int, jobs: int) -> float:
    fd, path = tempfile.mkstemp(prefix="subspaces_bench_")
    os.close(fd)
    os.unlink(path)
    queue = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(
        _plain,
        args=(f"file://{path}", n + 1, X, y, jobs, queue),
        nprocs=n + 1,
        join=True,
        start_method="spawn",
    )
    if os.path.exists(path):
        os.unlink(path)
    return float(queue.get())


def runner_overhead(repeats: int, jobs: int = 30, n: int = 3) -> dict[str, Any]:
    from sklearn.datasets import load_digits

    data = load_digits()
    X, y = torch.tensor(data.data / 16.0), torch.tensor(data.target)
    coded: dict[str, list[float]] = {"uncoded": [], "GC_s1": [], "M-SGC": []}
    plain: list[float] = []
    for _ in range(repeats):  # alternate: coded runs, then the plain all-reduce
        schemes = {
            "uncoded": GradientCodingScheme(n, 0, jobs),
            "GC_s1": GradientCodingScheme(n, 1, jobs),
            "M-SGC": MultiplexedSGC(n, 1, 2, 1, jobs),
        }
        warmup = GradientCodingScheme(n, 0, 3)  # gloo connects lazily: pay it here, unmeasured
        runs = [(s, np.ones((n, s.rounds))) for s in (warmup, *schemes.values())]
        res = run_local(runs, X, y, time_scale=0.0, check=False, timeout=300.0)[1:]
        for key, r, s in zip(schemes, res, schemes.values(), strict=True):
            coded[key].append(r.wall_time / s.rounds)
        plain.append(plain_round_seconds(X, y, n, jobs))
    out: dict[str, Any] = {"plain_allreduce_s_per_round": statistics.median(plain)}
    out["per_repeat"] = {"plain": plain, **coded}
    for key, values in coded.items():
        out[f"{key}_s_per_round"] = statistics.median(values)
        ratios = [c / p for c, p in zip(values, plain, strict=True)]  # paired by repeat
        out[f"{key}_over_plain_median"] = statistics.median(ratios)
        out[f"{key}_over_plain_range"] = [min(ratios), max(ratios)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": os.getloadavg(),
    }
    result["simulator"] = simulator_throughput(args.repeats)
    print(json.dumps(result["simulator"], indent=1))
    result["runner"] = runner_overhead(args.repeats)
    result["load_after"] = os.getloadavg()
    print(json.dumps(result["runner"], indent=1))
    out = ROOT / "results" / "distributed_coding.json"
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)


if __name__ == "__main__":
    main()
