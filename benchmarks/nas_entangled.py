"""Weight entanglement vs output mixing: peak memory and time of one DARTS search step.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/nas_entangled.py`` (under a minute).

The macro space of P14 (2 convolutions, kernel {1, 3, 5} x width {8, 16, 32}, 9 candidates per
layer) on the 8x8 digits, one intra-op thread, float32. For each batch size, one first-order
DARTS step (an architecture gradient on one batch, a weight gradient on another) of
:class:`subspaces.nas.MacroSupernet` with ``mixing="entangled"`` (one convolution over the mixed
weight) and ``mixing="output"`` (DARTS: one convolution per candidate, outputs mixed):

* peak memory: the largest total of live tensor bytes allocated during the step, measured at
  every allocation by :class:`subspaces.nas.TensorMemoryTracker` (torch keeps no CPU allocator
  statistics and ``tracemalloc`` does not see torch's allocations), after a warm-up step;
* step time: CPU seconds (``time.process_time``) of the step, median over interleaved rounds.

The anchor is output mixing itself (what DARTS and the TangleNAS baselines do); no installable
package implements entangled mixing for this space (TangleNAS is a research repository).
Writes ``benchmarks/results/nas_entangled.json`` (atomically).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from subspaces._io import write_json
from subspaces.nas import MacroSpace, MacroSupernet, TensorMemoryTracker, digits_images
from subspaces.nas.entangled import relaxed_weights

ROUNDS = 15
BATCHES = (32, 64, 128)


def step(
    net: MacroSupernet, xa: torch.Tensor, ya: torch.Tensor, xw: torch.Tensor, yw: torch.Tensor
) -> None:
    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(xa, relaxed_weights(net.alphas, "darts")), ya).backward()
    F.cross_entropy(net(xw, relaxed_weights(net.alphas.detach(), "darts")), yw).backward()


def main() -> None:
    torch.set_num_threads(1)
    X, y, _, _ = digits_images()
    results = {}
    for batch in BATCHES:
        data = (X[:batch], y[:batch], X[batch : 2 * batch], y[batch : 2 * batch])
        torch.manual_seed(0)
        nets = {m: MacroSupernet(MacroSpace(), m) for m in ("entangled", "output")}
        row: dict[str, dict[str, float]] = {}
        for mixing, net in nets.items():
            step(net, *data)
            with TensorMemoryTracker() as mem:
                step(net, *data)
            row[mixing] = {"peak_bytes": float(mem.peak)}
        times: dict[str, list[float]] = {m: [] for m in nets}
        for _ in range(ROUNDS):
            for mixing, net in nets.items():
                t = time.process_time()
                step(net, *data)
                times[mixing].append(time.process_time() - t)
        for mixing in nets:
            row[mixing]["step_cpu_s"] = statistics.median(times[mixing])
        mem_ratio = row["entangled"]["peak_bytes"] / row["output"]["peak_bytes"]
        time_ratio = row["entangled"]["step_cpu_s"] / row["output"]["step_cpu_s"]
        results[str(batch)] = {**row, "memory_ratio": mem_ratio, "time_ratio": time_ratio}
        print(
            f"batch {batch:4d}: peak MiB entangled {row['entangled']['peak_bytes'] / 2**20:6.2f} "
            f"output {row['output']['peak_bytes'] / 2**20:6.2f} (ratio {mem_ratio:.2f}); step ms "
            f"entangled {1e3 * row['entangled']['step_cpu_s']:6.1f} output "
            f"{1e3 * row['output']['step_cpu_s']:6.1f} (ratio {time_ratio:.2f})"
        )
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    write_json(
        Path(__file__).parent / "results" / "nas_entangled.json",
        {
            "results": results,
            "loadavg": load,
            "torch": torch.__version__,
            "machine": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
    )


if __name__ == "__main__":
    main()
