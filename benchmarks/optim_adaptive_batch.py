"""Overhead of the adaptive batch-size controller (P21) as a fraction of a training step.

One training step = forward, backward and an AdaGrad-Norm step of an MLP (784-512-512-10,
~670k parameters, float32) on a batch of 256 random inputs. Modes, timed in blocks of
``--block`` steps, alternating, ``--rounds`` times, medians per step:

* ``base``: the step alone;
* ``ours``: plus ``BatchSizeController.observe`` (norm test every 10 steps on 64 samples; the
  model is all ``nn.Linear``, so the moments come from the layers' inputs and output gradients
  without forming per-sample gradients; the target is <= 10 % of a step);
* ``ours_every_step``: the same with a test at every step (for scale);
* ``ours_vmap``: every 10 steps, forcing the generic path (``vmap(grad)`` over
  ``functional_call`` on 64 samples, no model copy), what any non-linear-layer model gets;
* ``reference_style``: the AdAdaGrad reference code's approach re-implemented here (not its
  code): every 10 steps a ``copy.deepcopy`` of the model and per-sample gradients of the *whole*
  batch (the reference tests on the full micro-batch), then per-tensor variances reduced with one
  ``.item()`` per tensor. The reference itself needs Lightning Fabric, torchvision and litgpt,
  which are not installed here, so it is not run as is.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/optim_adaptive_batch.py``
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _anchors import RESULTS_DIR, load_average, machine, today
from subspaces._io import write_json
from subspaces.optim import AdaGradNorm, BatchSizeController

BATCH, INTERVAL, TEST_SAMPLES, ETA = 256, 10, 64, 0.1


def reference_style_test(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Deep copy, per-sample gradients of the whole batch, per-tensor norm-test sums."""
    frozen = copy.deepcopy(model)
    params = {k: v.detach() for k, v in frozen.named_parameters()}

    def loss_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(frozen, p, (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(out, yi.unsqueeze(0))

    grads = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    var_sum, norm_sq = 0.0, 0.0
    for g in grads.values():
        var_sum += torch.var(g, dim=0, correction=1).sum().item()
        norm_sq += g.mean(0).square().sum().item()
    return max(x.shape[0], math.ceil(var_sum / (ETA**2 * norm_sq)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--block", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU())
    model.append(nn.Linear(512, 10))
    opt = AdaGradNorm(model.parameters(), lr=0.1)
    x, y = torch.randn(BATCH, 784), torch.randint(0, 10, (BATCH,))
    loss_fn = nn.functional.cross_entropy

    def controller(interval: int, method: str = "auto") -> BatchSizeController:
        return BatchSizeController(
            model, loss_fn, initial_batch_size=BATCH, max_batch_size=10**9, eta=ETA,
            test_interval=interval, max_test_samples=TEST_SAMPLES, method=method,  # type: ignore[arg-type]
        )  # fmt: skip

    ctrls = {
        "ours": controller(INTERVAL),
        "ours_every_step": controller(1),
        "ours_vmap": controller(INTERVAL, "vmap"),
    }
    counter = {"reference_style": 0}

    def step(extra: Callable[[], object] | None) -> None:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        if extra is not None:
            extra()
        opt.step()

    def ref_extra() -> None:
        if counter["reference_style"] % INTERVAL == 0:
            reference_style_test(model, x, y)
        counter["reference_style"] += 1

    extras: dict[str, Callable[[], object] | None] = {
        "base": None,
        "ours": lambda: ctrls["ours"].observe(x, y),
        "ours_every_step": lambda: ctrls["ours_every_step"].observe(x, y),
        "ours_vmap": lambda: ctrls["ours_vmap"].observe(x, y),
        "reference_style": ref_extra,
    }
    for extra in extras.values():  # warm-up (first vmap traces, allocator)
        for _ in range(INTERVAL):
            step(extra)
    per_step: dict[str, list[float]] = {k: [] for k in extras}
    for _ in range(args.rounds):
        for name, extra in extras.items():
            t0 = time.perf_counter()
            for _ in range(args.block):
                step(extra)
            per_step[name].append((time.perf_counter() - t0) / args.block * 1e3)
    med = {k: statistics.median(v) for k, v in per_step.items()}
    base = med["base"]
    result = {
        "date": today(),
        "machine": machine(),
        "load_average": load_average(),
        "threads": args.threads,
        "batch": BATCH,
        "test_interval": INTERVAL,
        "test_samples": TEST_SAMPLES,
        "ms_per_step_median": med,
        "ms_per_step_all": per_step,
        "overhead_fraction": {k: (v - base) / base for k, v in med.items() if k != "base"},
    }
    print(f"load average {result['load_average']}, {args.threads} thread(s), batch {BATCH}")
    for name, ms in med.items():
        extra = "" if name == "base" else f"  overhead {100 * (ms - base) / base:+6.1f} %"
        print(f"{name:>16}: {ms:8.2f} ms/step{extra}")
    ratio = (med["reference_style"] - base) / max(med["ours"] - base, 1e-9)
    print(f"reference-style overhead / ours: {ratio:.1f}x")
    result["reference_over_ours_overhead"] = ratio
    write_json(os.path.join(RESULTS_DIR, "optim_adaptive_batch.json"), result)


if __name__ == "__main__":
    main()
