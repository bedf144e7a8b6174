"""GPM gradient projection: step time with and without projection, and the memory update time.

Run: ``.venv/bin/python benchmarks/continual_gpm.py`` (about a minute on a shared 2-core CPU).

Two settings, one intra-op thread, float32, SGD (lr 0.1):

* ``mlp_p03``: the P03 network (MLP 576-100-100-10, no biases), batch 32, with the memory as
  full as at the end of P03's permuted run (layer 0: 390 of 576 directions, layer 2: 99 of 100,
  layer 4: 93 of 100);
* ``conv``: a small CNN (conv 3->32 3x3, conv 32->64 3x3 stride 2, global average pooling,
  linear 64 -> 10) on 16x16 images, batch 64, every layer's memory half full.

Times are CPU seconds of this process (``time.process_time``) with one intra-op thread, so the
load of a shared machine inflates them much less than wall-clock times (which are recorded
too).

For each, in interleaved rounds (so the machine's load falls on both alike): a bare step
(``zero_grad``, forward, backward, ``SGD.step``) and a projected step (the same through
:class:`subspaces.continual.ProjectedOptimizer`); medians over rounds. ``overhead`` = projected /
bare - 1. Also timed: the projection alone (``project_``), and the memory update of one task
(:func:`collect_representations` on 300 samples (MLP) or 125 images (CNN) plus
:meth:`GPMMemory.update`).

Anchor: Avalanche (``avalanche-lib`` 0.6.0) has no GPM-like strategy (no GPM, TRGP, CUBER, OGD or
Adam-NSCL; see ``shared/research/structure.md`` 2.4); if it imports, the script times its
``Naive`` strategy's training loop on the same MLP and data (one epoch of the same number of
steps) next to our bare loop, which says what its framework costs around the same SGD steps.
On the machine of 2026-12-07 it installs into a scratch venv (``/tmp/av``, torch from the
project's venv) but does not import: PyPI's torchvision 0.28 is built for the CUDA torch and
fails with torch 2.13.0+cpu (``operator torchvision::nms does not exist``); the script then
records the reason.

Writes ``benchmarks/results/continual_gpm.json`` (atomically).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from subspaces._io import write_json
from subspaces.continual import GPMMemory, ProjectedOptimizer, collect_representations

ROUNDS = int(os.environ.get("CONTINUAL_BENCH_ROUNDS", "300"))
OUT = Path(__file__).parent / "results" / "continual_gpm.json"


def _orth(d: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, k, generator=g)).Q


def _memory(layers: dict[str, tuple[int, int]]) -> GPMMemory:
    memory = GPMMemory(0.99)
    memory.bases_ = {name: _orth(d, k, i) for i, (name, (d, k)) in enumerate(layers.items())}
    memory.task_bases_ = [dict(memory.bases_)]
    memory.history_ = [{name: (k, d) for name, (d, k) in layers.items()}]
    memory.version += 1
    return memory


def _settings() -> dict[str, dict[str, Any]]:
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Linear(576, 100, bias=False),
        nn.ReLU(),
        nn.Linear(100, 100, bias=False),
        nn.ReLU(),
        nn.Linear(100, 10, bias=False),
    )
    cnn = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, stride=2, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10, bias=False),
    )
    return {
        "mlp_p03": {
            "model": mlp,
            "x": torch.randn(32, 576),
            "y": torch.randint(0, 10, (32,)),
            "memory": _memory({"0": (576, 390), "2": (100, 99), "4": (100, 93)}),
            "rep_x": torch.randn(300, 576),
            "layers": ["0", "2", "4"],
        },
        "conv": {
            "model": cnn,
            "x": torch.randn(64, 3, 16, 16),
            "y": torch.randint(0, 10, (64,)),
            "memory": _memory({"0": (27, 13), "2": (288, 144), "6": (64, 32)}),
            "rep_x": torch.randn(125, 3, 16, 16),
            "layers": ["0", "2", "6"],
        },
    }


def _step(model: nn.Module, opt: Any, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def bench(setting: dict[str, Any]) -> dict[str, float]:
    model, x, y, memory = setting["model"], setting["x"], setting["y"], setting["memory"]
    bare = torch.optim.SGD(model.parameters(), lr=0.1)
    wrapped = ProjectedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, memory)
    for _ in range(10):  # warm-up (also builds the complement bases once)
        _step(model, bare, x, y)
        _step(model, wrapped, x, y)
    t_bare, t_proj, t_only, wall_bare, wall_proj = [], [], [], [], []
    clock = time.process_time
    for _ in range(ROUNDS):
        w0, t0 = time.perf_counter(), clock()
        _step(model, bare, x, y)
        w1, t1 = time.perf_counter(), clock()
        _step(model, wrapped, x, y)
        w2, t2 = time.perf_counter(), clock()
        wrapped.project_()  # gradients are still there: the projection alone
        t3 = clock()
        t_bare.append(t1 - t0)
        t_proj.append(t2 - t1)
        t_only.append(t3 - t2)
        wall_bare.append(w1 - w0)
        wall_proj.append(w2 - w1)
    updates = []
    for i in range(5):
        fresh = GPMMemory(0.99)
        t0 = clock()
        fresh.update(collect_representations(model, setting["rep_x"], setting["layers"]))
        fresh.update(collect_representations(model, setting["rep_x"] + i, setting["layers"]))
        updates.append((clock() - t0) / 2)
    b, p, o = (statistics.median(t) for t in (t_bare, t_proj, t_only))
    return {
        "wall_bare_step_ms": 1e3 * statistics.median(wall_bare),
        "wall_projected_step_ms": 1e3 * statistics.median(wall_proj),
        "bare_step_ms": 1e3 * b,
        "projected_step_ms": 1e3 * p,
        "projection_only_ms": 1e3 * o,
        "overhead": p / b - 1.0,
        "projection_share_of_bare_step": o / b,
        "memory_update_ms": 1e3 * statistics.median(updates),
    }


def avalanche_naive(setting: dict[str, Any], steps: int = 100) -> dict[str, Any]:
    try:
        from avalanche.benchmarks.utils import as_classification_dataset  # noqa: F401
        from avalanche.training.supervised import Naive
    except Exception as err:  # not installed, or it does not import with this torch
        return {"available": False, "reason": f"{type(err).__name__}: {err}"[:300]}
    from avalanche.benchmarks import benchmark_from_datasets
    from torch.utils.data import TensorDataset

    model, x, y = setting["model"], setting["x"], setting["y"]
    n = x.shape[0] * steps
    X = x.repeat(steps, 1)
    Y = y.repeat(steps)
    try:
        from avalanche.benchmarks.utils import AvalancheDataset  # noqa: F401
        from avalanche.benchmarks.utils.classification_dataset import (
            make_classification_dataset,
        )

        ds = make_classification_dataset(TensorDataset(X, Y), targets=Y)
        bm = benchmark_from_datasets(train=[ds], test=[ds])
        strategy = Naive(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            train_mb_size=x.shape[0],
            train_epochs=1,
            evaluator=None,
        )
        t0 = time.process_time()
        strategy.train(bm.train_stream[0])
        seconds = time.process_time() - t0
    except Exception as err:
        return {"available": False, "reason": f"{type(err).__name__}: {err}"[:300]}
    return {"available": True, "naive_step_ms": 1e3 * seconds / steps, "samples": n}


def main() -> None:
    torch.set_num_threads(1)
    results: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "machine": platform.machine(),
        "load_before": os.getloadavg(),
        "rounds": ROUNDS,
    }
    settings = _settings()
    for name, setting in settings.items():
        results[name] = bench(setting)
        r = results[name]
        print(
            f"{name}: bare {r['bare_step_ms']:.3f} ms, projected {r['projected_step_ms']:.3f} ms "
            f"(overhead {100 * r['overhead']:.0f}%; projection alone "
            f"{100 * r['projection_share_of_bare_step']:.0f}% of a bare step), memory update "
            f"{r['memory_update_ms']:.1f} ms"
        )
    results["avalanche_naive_mlp"] = avalanche_naive(settings["mlp_p03"])
    print("avalanche:", results["avalanche_naive_mlp"])
    results["load_after"] = os.getloadavg()
    write_json(OUT, results)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
