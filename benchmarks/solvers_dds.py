"""DDS vs DPS (P06): wall time, network evaluations and backward passes at equal error.

Run: ``.venv/bin/python benchmarks/solvers_dds.py`` (about a minute, 1 thread).

The problem of the P06 reproduction (:mod:`subspaces.experiments.P06_decomposed_diffusion`): 32 x
32 images from a rank-20 smooth Gaussian prior, 4x random Fourier mask with a fully sampled 9 x 9
centre, noiseless, the prior's exact denoiser in place of a network, so the error to the exact
posterior mean is known. Per seed (3):

* DPS (Chung et al. 2023): ``T = 1000`` steps with the best step size of ``{0.03, 0.1, 0.3}``;
  its error sets the target.
* DDS (Chung, Lee & Ye 2024): ``M = 5`` CG steps, the smallest ``T`` in ``{2, 3, 5, 10, 20, 50}``
  whose error is at most DPS's.

Both are timed on the same inputs (median of 3 repeats, interleaved) and the ratios DPS / DDS of
wall time and of network evaluations are printed. With the closed-form denoiser a network
evaluation costs about as much as a few FFTs, so the wall-time ratio understates what a U-Net
would show (there each DPS step also pays a backward pass, about twice a forward).
Writes ``benchmarks/results/solvers_dds.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from subspaces._io import write_json
from subspaces.experiments.P06_decomposed_diffusion import ABAR, make_problem
from subspaces.solvers import SamplerResult, dds, dps

OUT = Path(__file__).parent / "results" / "solvers_dds.json"
SEEDS, REPEATS = (0, 1, 2), 3
ZETAS = (0.03, 0.1, 0.3)
DDS_STEPS = (2, 3, 5, 10, 20, 50)


def timed(fn: Callable[[Any], SamplerResult], arg: Any) -> tuple[SamplerResult, float]:
    start = time.perf_counter()
    out = fn(arg)
    return out, time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    for seed in SEEDS:
        prior, A, y, pm = make_problem(seed)
        den = prior.denoiser(ABAR)

        def err(out: SamplerResult, pm: torch.Tensor = pm) -> float:
            return float((out.x - pm).norm() / pm.norm())

        def run_dps(
            z: float, den: Any = den, A: Any = A, y: Any = y, s: int = seed
        ) -> SamplerResult:
            g = torch.Generator().manual_seed(s)
            return dps(den, A, y, ABAR, num_steps=1000, step_size=z, generator=g)

        best_z = min(ZETAS, key=lambda z: err(run_dps(z)))
        dps_out = run_dps(best_z)
        target = err(dps_out)

        def run_dds(T: int, den: Any = den, A: Any = A, y: Any = y, s: int = seed) -> SamplerResult:
            g = torch.Generator().manual_seed(s)
            return dds(den, A, y, ABAR, num_steps=T, num_cg_steps=5, generator=g)

        T_dds = next((T for T in DDS_STEPS if err(run_dds(T)) <= target), DDS_STEPS[-1])
        dds_out = run_dds(T_dds)
        t_dps, t_dds = [], []
        for _ in range(REPEATS):  # interleaved
            t_dps.append(timed(run_dps, best_z)[1])
            t_dds.append(timed(run_dds, T_dds)[1])
        row: dict[str, Any] = {
            "seed": seed,
            "dps": {"zeta": best_z, "error": target, "nfe": dps_out.num_denoiser_evals,
                    "backward": dps_out.num_backward, "seconds": statistics.median(t_dps)},
            "dds": {"steps": T_dds, "error": err(dds_out), "nfe": dds_out.num_denoiser_evals,
                    "backward": dds_out.num_backward, "matvecs": dds_out.num_matvecs,
                    "seconds": statistics.median(t_dds)},
        }  # fmt: skip
        row["time_ratio"] = row["dps"]["seconds"] / row["dds"]["seconds"]
        row["nfe_ratio"] = row["dps"]["nfe"] / row["dds"]["nfe"]
        rows.append(row)
        print(
            f"seed {seed}: DPS 1000 NFE (zeta {best_z}) error {target:.2e} in "
            f"{row['dps']['seconds']:.2f} s, 1000 backward | DDS {T_dds} NFE error "
            f"{row['dds']['error']:.2e} in {row['dds']['seconds']:.3f} s, 0 backward | "
            f"ratio time {row['time_ratio']:.0f}x, NFE {row['nfe_ratio']:.0f}x"
        )
    summary = {
        "median_time_ratio": statistics.median(r["time_ratio"] for r in rows),
        "median_nfe_ratio": statistics.median(r["nfe_ratio"] for r in rows),
        "load_average_end": os.getloadavg()[0],
    }
    print(
        f"median DPS/DDS at equal error: wall time {summary['median_time_ratio']:.0f}x, "
        f"network evaluations {summary['median_nfe_ratio']:.0f}x "
        f"(load {summary['load_average_end']:.2f})"
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_json(OUT, {"rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
