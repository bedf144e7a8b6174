"""PA&DA's overhead per supernet epoch over SPOS (uniform sampling).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/nas_pada.py`` (about a minute).

The P31 setting: the 625-cell supernet (width 8) on the 1438 training digits, batch 64, one
intra-op thread, float32. One epoch of :func:`subspaces.nas.train_supernet` with
:class:`subspaces.nas.UniformSampler` (SPOS) and with :class:`subspaces.nas.PADASampler` (per
step: per-operation gradient norms and per-sample ``||softmax - onehot||``; per epoch: the
probability refresh and the next epoch's draw), on identical copies of one supernet, in
interleaved rounds; CPU seconds (``time.process_time``), medians. Both loops also record the
gradient variance (a flattened gradient per step), which is the same cost for both, so the
difference is PA&DA's own work. Writes ``benchmarks/results/nas_pada.json`` (atomically).
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from subspaces._io import write_json
from subspaces.nas import CellSupernet, PADASampler, UniformSampler, digits_images, train_supernet

ROUNDS = 7


def main() -> None:
    torch.set_num_threads(1)
    X, y, _, _ = digits_images()
    torch.manual_seed(0)
    base = CellSupernet()
    times: dict[str, list[float]] = {"spos": [], "pada": []}
    for r in range(ROUNDS):
        for name in times:
            net = copy.deepcopy(base)
            sampler = (
                PADASampler(len(y), tau=1.0, schedule="constant")
                if name == "pada"
                else (UniformSampler(len(y)))
            )
            gen = torch.Generator().manual_seed(r)
            t = time.process_time()
            train_supernet(net, X, y, sampler, epochs=1, generator=gen)
            times[name].append(time.process_time() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    overhead = med["pada"] / med["spos"] - 1
    load = os.getloadavg()
    print(
        f"epoch CPU s: SPOS {med['spos']:.3f}, PA&DA {med['pada']:.3f} "
        f"(overhead {100 * overhead:+.1f}%); load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    write_json(
        Path(__file__).parent / "results" / "nas_pada.json",
        {
            "epoch_cpu_s": times,
            "median": med,
            "overhead": overhead,
            "loadavg": load,
            "torch": torch.__version__,
            "machine": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
    )


if __name__ == "__main__":
    main()
