"""The reproduction gallery's wall time: serial vs local processes vs a local Ray cluster.

Run (Ray is optional; without it the Ray row is skipped):
``OMP_NUM_THREADS=1 python benchmarks/distributed_gallery.py [--workers 2] [--ids C01 P13 ...]``

Each backend runs the same fast reproductions with the same seed into its own fresh folder
(:func:`subspaces.experiments.gallery.run_gallery`, one intra-op thread per reproduction). The
Ray row starts a local cluster with ``--workers`` CPUs first (``ray.init(num_cpus=...)``) and
reports that start-up separately from the gallery's time. Every backend must give the same
verdicts as the serial run (the runs are seeded); the script says so or names the reproduction
that differs, and names those whose ``measured`` values other than timings differ (keys that
name a time are left out of that comparison).
The default ids are the shorter fast reproductions, so one run takes a few minutes on 2 cores.

Results go to ``benchmarks/results/distributed_gallery.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from subspaces.experiments.gallery import run_gallery

DEFAULT_IDS = ["C01", "P04", "P06", "P10", "P13", "P15", "P22", "P26", "P28", "P29", "P32"]


def _timed(ids: list[str], backend: str, workers: int) -> tuple[float, list[dict[str, Any]]]:
    folder = tempfile.mkdtemp(prefix=f"gallery_{backend}_")
    start = time.perf_counter()
    records = run_gallery(ids, folder, fast=True, seed=0, backend=backend, workers=workers)
    return time.perf_counter() - start, records


_TIMING_WORDS = ("second", "time", "wall", "cpu", "speed", "per_s")


def _untimed(value: Any) -> Any:
    """``value`` without the dictionary entries whose key names a timing (they vary by run)."""
    if isinstance(value, dict):
        return {
            k: _untimed(v)
            for k, v in value.items()
            if not any(word in str(k).lower() for word in _TIMING_WORDS)
        }
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _same(reference: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[str]:
    """Ids whose verdict differs from the reference run, and (marked ``~``) whose measured
    values other than timings differ."""
    out = []
    for a, b in zip(reference, records, strict=True):
        if a.get("status") != b.get("status"):
            out.append(a["id"])
        elif _untimed(a.get("measured")) != _untimed(b.get("measured")):
            out.append("~" + a["id"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ids", nargs="+", default=DEFAULT_IDS)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []

    serial_s, reference = _timed(args.ids, "serial", 1)
    rows.append({"backend": "serial", "workers": 1, "seconds": serial_s, "differs": []})
    cpu = sum(float(r.get("cpu_seconds") or 0.0) for r in reference)

    process_s, records = _timed(args.ids, "process", args.workers)
    rows.append(
        {
            "backend": "process",
            "workers": args.workers,
            "seconds": process_s,
            "differs": _same(reference, records),
        }
    )

    if importlib.util.find_spec("ray") is not None:
        import ray

        start = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - start
        try:
            ray_s, records = _timed(args.ids, "ray", args.workers)
        finally:
            ray.shutdown()
        rows.append(
            {
                "backend": "ray",
                "workers": args.workers,
                "seconds": ray_s,
                "ray_startup_seconds": startup,
                "differs": _same(reference, records),
            }
        )
    else:
        print("Ray is not installed: the Ray row is skipped (pip install ray)")

    load = os.getloadavg()[0]
    print(
        f"{len(args.ids)} fast reproductions ({' '.join(args.ids)}), "
        f"serial CPU {cpu:.1f} s, load {load:.2f} at the end"
    )
    print(f"{'backend':<8} {'workers':>7} {'wall s':>8} {'speed-up':>9}  same verdicts")
    for row in rows:
        extra = (
            f"  (+ {row['ray_startup_seconds']:.1f} s Ray start-up)"
            if "ray_startup_seconds" in row
            else ""
        )
        verdicts = [d for d in row["differs"] if not d.startswith("~")]
        same = "yes" if not verdicts else f"NO: {', '.join(verdicts)}"
        numbers = [d[1:] for d in row["differs"] if d.startswith("~")]
        if numbers:
            same += f" (numbers differ: {', '.join(numbers)})"
        print(
            f"{row['backend']:<8} {row['workers']:>7} {row['seconds']:>8.1f} "
            f"{serial_s / row['seconds']:>8.2f}x  {same}{extra}"
        )
    out = Path(__file__).parent / "results" / "distributed_gallery.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"ids": args.ids, "serial_cpu_seconds": cpu, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
