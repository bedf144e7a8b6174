"""Hessian products of an FSDP2 (``fully_shard``) model vs the replicated data-parallel path.

Run: ``.venv/bin/python benchmarks/distributed_fsdp_curvature.py [--procs 1,2] [--repeats 5]``

An MLP 64-128-128-10 (26k parameters, float32) on the 1797 digits, split over ``P`` gloo
processes (one intra-op thread each, batches of 256). On every rank, in one process and on the
same data shard:

* **replicated**: the plain model, ``HessianOperator(model, ..., distributed=True)``;
* **FSDP2**: the same model with ``fully_shard`` on each ``Linear`` and on the root (``Shard(0)``
  ``DTensor`` parameters), ``HessianOperator(sharded, ..., distributed=True)``.

Measured: building the operator (FSDP2: includes gathering the full parameters), the time of a
block product ``H @ V`` (8 columns; median over repeats, the two paths alternating), the bytes
each rank puts into ``all_reduce`` per product (counted by wrapping
``torch.distributed.all_reduce``), the bytes of the one-time parameter gather (the parameters'
size), and the largest difference between the two paths' products (they must agree to rounding).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from subspaces.curvature import HessianOperator  # noqa: E402
from subspaces.testing import free_port, init_gloo  # noqa: E402

WIDTHS = (64, 128, 128, 10)
COLUMNS = 8


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return torch.tensor(X, dtype=torch.float32) / 16.0, torch.tensor(y)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(WIDTHS):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def _sharded() -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    model = _mlp()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def _timed_product(H: HessianOperator, V: torch.Tensor, counts: dict) -> tuple[float, int]:
    before = counts["bytes"]
    dist.barrier()
    start = time.perf_counter()
    out = H @ V
    seconds = time.perf_counter() - start
    counts["last"] = out
    return seconds, counts["bytes"] - before


def _worker(rank: int, world: int, port: int, folder: str, repeats: int) -> None:
    init_gloo(rank, world, port, timeout_s=1800)
    try:
        X, y = _digits()
        idx = torch.arange(rank, len(y), world)
        data = [(X[idx][i : i + 256], y[idx][i : i + 256]) for i in range(0, len(idx), 256)]
        counts: dict = {"bytes": 0}
        original = dist.all_reduce

        def counting(tensor: torch.Tensor, *args: object, **kwargs: object) -> object:
            counts["bytes"] += tensor.numel() * tensor.element_size()
            return original(tensor, *args, **kwargs)

        dist.all_reduce = counting  # type: ignore[assignment]
        build: dict[str, list[float]] = {"replicated": [], "fsdp": []}
        times: dict[str, list[float]] = {"replicated": [], "fsdp": []}
        nbytes: dict[str, int] = {}
        diffs = []
        plain, sharded = _mlp(), _sharded()
        n = sum(p.numel() for p in plain.parameters())
        gen = torch.Generator().manual_seed(0)
        for _ in range(repeats):
            V = torch.randn(n, COLUMNS, generator=gen)
            outs = {}
            for name, model in (("replicated", plain), ("fsdp", sharded)):
                dist.barrier()
                start = time.perf_counter()
                H = HessianOperator(model, "cross_entropy", data, distributed=True)
                build[name].append(time.perf_counter() - start)
                H @ V[:, :1]  # warm-up (torch.func tracing, first deterministic check)
                seconds, sent = _timed_product(H, V, counts)
                times[name].append(seconds)
                nbytes[name] = sent
                outs[name] = counts["last"]
            diffs.append(float((outs["fsdp"] - outs["replicated"]).abs().max()))
        dist.all_reduce = original  # type: ignore[assignment]
        result = {
            "num_params": n,
            "param_bytes": sum(p.numel() * p.element_size() for p in plain.parameters()),
            "build": {k: statistics.median(v) for k, v in build.items()},
            "product": {k: statistics.median(v) for k, v in times.items()},
            "bytes_per_product": nbytes,
            "max_diff": max(diffs),
        }
        torch.save(result, os.path.join(folder, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"uptime: {os.popen('uptime').read().strip()}")
    for world in (int(p) for p in args.procs.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            mp.spawn(
                _worker, args=(world, free_port(), folder, args.repeats), nprocs=world, join=True
            )
            r = torch.load(Path(folder) / "rank0.pt", weights_only=True)
        rep, fsdp = r["product"]["replicated"], r["product"]["fsdp"]
        print(
            f"P={world}: {r['num_params']} params; H @ V ({COLUMNS} columns): replicated "
            f"{rep * 1e3:.1f} ms, FSDP2 {fsdp * 1e3:.1f} ms (ratio FSDP2/replicated "
            f"{fsdp / rep:.2f}); all_reduce bytes per product: replicated "
            f"{r['bytes_per_product']['replicated']}, FSDP2 {r['bytes_per_product']['fsdp']}; "
            f"operator build: replicated {r['build']['replicated'] * 1e3:.1f} ms, FSDP2 "
            f"{r['build']['fsdp'] * 1e3:.1f} ms (gathers {r['param_bytes']} parameter bytes); "
            f"max |FSDP2 - replicated| = {r['max_diff']:.2e}"
        )
    print(f"uptime: {os.popen('uptime').read().strip()}")


if __name__ == "__main__":
    main()
