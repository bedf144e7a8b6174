"""Strong scaling on one machine: Hessian top-5 and SubspaceAdamW steps on 1, 2 and 4 processes.

Run: ``.venv/bin/python benchmarks/distributed_scaling.py [--procs 1,2,4] [--repeats 3]``

Both problems are fixed in size and split over ``P`` gloo processes (one intra-op thread each):

* **Hessian top-5**: an MLP 64-128-128-10 (26k parameters) on the 1797 digits; each rank holds
  ``1797 / P`` samples in batches of 256 and builds ``HessianOperator(..., distributed=True)``;
  ``top_eigen(H, 5, rtol=1e-3)`` from the same seeded generator on every rank. The single-process
  reference (``P = 1`` without ``distributed``) gives the eigenvalues every run must reproduce.
  Communication is measured by wrapping ``torch.distributed.all_reduce``: calls and bytes per
  Hessian-vector product.
* **SubspaceAdamW step**: an MLP 64-512-512-10 (300k parameters) under
  ``DistributedDataParallel``, global batch 512 split over the ranks, ``SubspaceAdamW`` with rank
  64 on the two 512-wide matrices (randomized SVD projector, refresh every 200 steps); 30 steps
  after 5 warm-up steps. Bytes per step are counted by a DDP communication hook around the
  default all-reduce.

Speed-up is ``time(P = 1) / time(P)``. This machine has 2 cores shared with other work: ``P = 4``
oversubscribes them, so expect at most ~2x. The numbers go to
``benchmarks/results/distributed_scaling.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
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

from subspaces.curvature import HessianOperator, top_eigen  # noqa: E402
from subspaces.optim import SubspaceAdamW  # noqa: E402
from subspaces.testing import free_port, init_gloo  # noqa: E402


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32) / 16.0
    return X, torch.tensor(y)


def _mlp(widths: tuple[int, ...]) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def _shard(X: torch.Tensor, y: torch.Tensor, rank: int, world: int, batch: int) -> list:
    idx = torch.arange(rank, len(y), world)
    Xs, ys = X[idx], y[idx]
    return [(Xs[i : i + batch], ys[i : i + batch]) for i in range(0, len(ys), batch)]


def _hessian(rank: int, world: int, distributed: bool) -> dict:
    X, y = _digits()
    model = _mlp((64, 128, 128, 10))
    data = _shard(X, y, rank, world, 256)
    H = HessianOperator(model, "cross_entropy", data, distributed=distributed)
    counts = {"calls": 0, "bytes": 0}
    original = dist.all_reduce

    def counting(tensor: torch.Tensor, *args: object, **kwargs: object) -> object:
        counts["calls"] += 1
        counts["bytes"] += tensor.numel() * tensor.element_size()
        return original(tensor, *args, **kwargs)

    dist.all_reduce = counting  # type: ignore[assignment]
    try:
        if distributed:
            dist.barrier()
        start = time.perf_counter()
        eig = top_eigen(H, 5, rtol=1e-3, generator=torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - start
    finally:
        dist.all_reduce = original  # type: ignore[assignment]
    return {
        "seconds": seconds,
        "matvecs": eig.num_matvecs,
        "eigenvalues": eig.eigenvalues.tolist(),
        "allreduce_calls": counts["calls"],
        "allreduce_bytes": counts["bytes"],
        "num_params": H.shape[0],
    }


def _step(rank: int, world: int, steps: int = 30, warmup: int = 5) -> dict:
    X, y = _digits()
    model = _mlp((64, 512, 512, 10))
    ddp = nn.parallel.DistributedDataParallel(model)
    counts = {"bytes": 0}

    def hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP checks unannotated or real types
        buffer = bucket.buffer()
        counts["bytes"] += buffer.numel() * buffer.element_size()
        buffer.div_(world)
        return dist.all_reduce(buffer, async_op=True).get_future().then(lambda f: f.value()[0])

    ddp.register_comm_hook(None, hook)
    mats = [model[2].weight, model[4].weight]
    rest = [p for p in model.parameters() if all(p is not m for m in mats)]
    opt = SubspaceAdamW(
        [{"params": rest}, {"params": mats, "rank": 64, "update_proj_gap": 200}], lr=1e-3
    )
    per_rank = 512 // world
    g = torch.Generator().manual_seed(1)
    times = []
    for i in range(warmup + steps):
        idx = torch.randint(0, len(y), (512,), generator=g)[rank * per_rank : (rank + 1) * per_rank]
        dist.barrier()
        start = time.perf_counter()
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(X[idx]), y[idx]).backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    steps_bytes = counts["bytes"] / (warmup + steps)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return {
        "step_seconds": statistics.median(times),
        "bytes_per_step": steps_bytes,
        "checksum": float(flat.double().sum()),
    }


def _worker(rank: int, world: int, port: int, folder: str, repeats: int) -> None:
    init_gloo(rank, world, port, timeout_s=1800)
    try:
        runs = [_hessian(rank, world, True) for _ in range(repeats)]
        step = _step(rank, world)
        torch.save({"hessian": runs, "step": step}, os.path.join(folder, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    procs = [int(p) for p in args.procs.split(",")]
    torch.set_num_threads(1)
    # the single-process reference: no process group at all
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(free_port())
    dist.init_process_group("gloo", rank=0, world_size=1)
    reference = _hessian(0, 1, distributed=False)
    dist.destroy_process_group()
    print(f"uptime: {os.popen('uptime').read().strip()}")
    print(
        f"reference (1 process, no process group): {reference['seconds']:.2f} s, "
        f"{reference['matvecs']} products, {reference['num_params']} parameters"
    )
    rows = []
    for world in procs:
        with tempfile.TemporaryDirectory() as folder:
            mp.spawn(
                _worker, args=(world, free_port(), folder, args.repeats), nprocs=world, join=True
            )
            ranks = [
                torch.load(Path(folder) / f"rank{r}.pt", weights_only=True) for r in range(world)
            ]
        h = ranks[0]["hessian"]
        seconds = statistics.median(r["seconds"] for r in h)
        err = max(
            abs(a - b) / abs(b)
            for a, b in zip(h[0]["eigenvalues"], reference["eigenvalues"], strict=True)
        )
        same = all(rk["hessian"][0]["eigenvalues"] == h[0]["eigenvalues"] for rk in ranks)
        step = ranks[0]["step"]
        same_params = all(rk["step"]["checksum"] == step["checksum"] for rk in ranks)
        per_product = h[0]["allreduce_bytes"] / max(h[0]["matvecs"], 1)
        rows.append(
            {
                "procs": world,
                "hessian_top5_seconds": seconds,
                "matvecs": h[0]["matvecs"],
                "allreduce_calls": h[0]["allreduce_calls"],
                "bytes_per_product": per_product,
                "max_rel_eig_error_vs_reference": err,
                "ranks_identical": same,
                "step_seconds": step["step_seconds"],
                "bytes_per_step": step["bytes_per_step"],
                "ranks_identical_after_steps": same_params,
            }
        )
    base_h, base_s = rows[0]["hessian_top5_seconds"], rows[0]["step_seconds"]
    print(
        f"{'P':>2}  {'top-5 s':>8}  {'speed-up':>8}  {'products':>8}  {'all-reduces':>11}  "
        f"{'KB/product':>10}  {'eig err':>8}  {'step ms':>8}  {'speed-up':>8}  {'MB/step':>8}"
    )
    for r in rows:
        r["hessian_speedup"] = base_h / r["hessian_top5_seconds"]
        r["step_speedup"] = base_s / r["step_seconds"]
        print(
            f"{r['procs']:>2}  {r['hessian_top5_seconds']:>8.2f}  {r['hessian_speedup']:>7.2f}x  "
            f"{r['matvecs']:>8}  {r['allreduce_calls']:>11}  {r['bytes_per_product'] / 1e3:>10.1f}"
            f"  {r['max_rel_eig_error_vs_reference']:>8.1e}  {1e3 * r['step_seconds']:>8.1f}  "
            f"{r['step_speedup']:>7.2f}x  {r['bytes_per_step'] / 1e6:>8.2f}"
        )
    out = ROOT / "results" / "distributed_scaling.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"reference": reference, "rows": rows}, indent=1))
    print(f"results in {out}")


if __name__ == "__main__":
    main()
