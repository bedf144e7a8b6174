"""P24's learning-rate x batch-size grid: serial vs local processes vs a local Ray cluster.

Run (Ray is optional; without it the Ray row is skipped):
``OMP_NUM_THREADS=1 python benchmarks/distributed_ray_grids.py [--workers 2] [--fast]``

The grid is part 2 of the P24 reproduction (Granziol, Zohren & Roberts, arXiv:2006.09092) in its
full setting: the largest stable learning rate of SGD and Adam for ``B`` in 4..64 and 7 seeds,
7 bisections, i.e. 70 grid points, each one task of :func:`subspaces._parallel.map_tasks`
(``--fast``: the fast setting, 30 points, 5 bisections). The same grid runs in one process on
every backend, one after the other: ``serial``, ``process`` (``--workers`` spawned processes)
and ``ray`` (``ray.init(num_cpus=--workers)`` started first and timed apart from the grid). Each
backend's learning rates must equal the serial ones bit for bit; the script says so. The load
average at the start and the end is printed next to the times.

Results go to ``benchmarks/results/distributed_ray_grids.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

from subspaces.experiments._common import load_digits_tensors
from subspaces.experiments.P24_batch_size_learning_rate import (
    BISECTIONS_FAST,
    BISECTIONS_FULL,
    LR_BATCHES,
    LR_SEEDS_FAST,
    LR_SEEDS_FULL,
    stable_lr_grid,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fast", action="store_true", help="the fast grid (30 points)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    seeds = LR_SEEDS_FAST if args.fast else LR_SEEDS_FULL
    bisections = BISECTIONS_FAST if args.fast else BISECTIONS_FULL
    X, y, _, _ = load_digits_tensors(None, seed=args.seed)
    points = 2 * len(LR_BATCHES) * seeds
    load_start = os.getloadavg()
    print(
        f"P24 grid: {points} points (SGD/Adam x B={list(LR_BATCHES)} x {seeds} seeds), "
        f"{bisections} bisections; load {load_start[0]:.2f} {load_start[1]:.2f} at the start"
    )

    rows: list[dict[str, Any]] = []
    reference: dict[str, Any] | None = None

    def measure(backend: str, workers: int, extra: dict[str, Any]) -> None:
        nonlocal reference
        t0, c0 = time.perf_counter(), time.process_time()
        grid = stable_lr_grid(X, y, args.seed, seeds, bisections, backend=backend, workers=workers)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if reference is None:
            reference = grid
        row = {"backend": backend, "workers": workers, "seconds": wall, "driver_cpu_seconds": cpu}
        row.update(extra, identical_to_serial=grid == reference, load=os.getloadavg()[0])
        rows.append(row)
        print(f"  {backend:<8} done in {wall:.1f} s (load {row['load']:.2f})", flush=True)

    measure("serial", 1, {})
    measure("process", args.workers, {})
    if importlib.util.find_spec("ray") is not None:
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False)
        startup = time.perf_counter() - t0
        try:
            measure("ray", args.workers, {"ray_startup_seconds": startup})
        finally:
            ray.shutdown()
    else:
        print("Ray is not installed: the Ray row is skipped (pip install ray)")

    serial_s = rows[0]["seconds"]
    print(f"{'backend':<8} {'workers':>7} {'wall s':>8} {'speed-up':>9}  identical to serial")
    for row in rows:
        extra = (
            f"  (+ {row['ray_startup_seconds']:.1f} s Ray start-up)"
            if "ray_startup_seconds" in row
            else ""
        )
        same = "yes" if row["identical_to_serial"] else "NO"
        print(
            f"{row['backend']:<8} {row['workers']:>7} {row['seconds']:>8.1f} "
            f"{serial_s / row['seconds']:>8.2f}x  {same}{extra}"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (2 cores, shared)")
    out = Path(__file__).parent / "results" / "distributed_ray_grids.json"
    out.parent.mkdir(exist_ok=True)
    result = {"points": points, "bisections": bisections, "load_start": load_start, "rows": rows}
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
