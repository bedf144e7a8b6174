"""SubspaceAdamW under FSDP2 (``fully_shard``) vs DDP: step time and bytes communicated.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distributed_fsdp_subspace_adamw.py
[--procs 1,2] [--steps 40]``

An MLP 256-512-512-256 (0.5M parameters; its weights are 512 x 256 and 512 x 512, compressed on
their unsharded columns, and 256 x 512, compressed on its sharded rows) trains on a global batch
of 128 random samples split over ``P`` gloo processes (one thread each), ``SubspaceAdamW`` with
rank 64 on the three weights, refresh every 10 steps, for each projector (``svd`` and ``rsvd``
under ``moment_transfer`` ``none`` and ``rotate``, ``dct``, ``random``). After one warm-up
step, ``--steps`` steps are timed; the optimizer step is timed separately at refresh steps and
at the others (median over steps).

Bytes are the sizes of the tensors handed to the collectives (``all_reduce``,
``all_gather_into_tensor``, ``reduce_scatter_tensor``, counted by wrapping the
``torch.distributed`` functions; DDP's bucket all-reduces by a communication hook), not wire
bytes (a ring all-reduce moves about ``2 (P-1)/P`` times its size per rank). Columns:
``opt B/step`` and ``opt B/refresh`` are what the optimizer step communicates (DDP's optimizer
needs nothing: every rank holds the averaged gradient), ``fwd+bwd B`` what the framework moves
per iteration (FSDP2: parameter all-gathers and gradient reduce-scatters; DDP: the gradient
all-reduce). Ratios are FSDP2 / DDP at the same ``P``.
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

from subspaces.optim import SubspaceAdamW  # noqa: E402
from subspaces.testing import free_port, init_gloo  # noqa: E402

WIDTHS = (256, 512, 512, 256)
BATCH = 128
GAP = 10
#: (projector, moment_transfer): svd/rsvd under "none" gather the gradient at a refresh (signs
#: as in one process), under "rotate" they all-reduce an n x n Gram matrix / n x l blocks
CONFIGS = (
    ("svd", "none"),
    ("svd", "rotate"),
    ("rsvd", "none"),
    ("rsvd", "rotate"),
    ("dct", "none"),
    ("random", "none"),
)


class _Counter:
    """Bytes of the full tensor of each torch.distributed collective (patched functions).

    All-reduce: the reduced tensor; all-gather: the gathered output; reduce-scatter: the input
    that is reduced (FSDP2 calls ``all_gather_single`` and ``reduce_scatter_single``).
    """

    def __init__(self) -> None:
        self.bytes = 0
        full = {  # function name -> (position, keyword) of the full tensor
            "all_reduce": (0, "tensor"),
            "all_gather_into_tensor": (0, "output_tensor"),
            "all_gather_single": (0, "output_tensor"),
            "reduce_scatter_tensor": (1, "input"),
            "reduce_scatter_single": (1, "input"),
        }
        for name, where in full.items():
            if hasattr(dist, name):
                setattr(dist, name, self._wrap(getattr(dist, name), *where))

    def _wrap(self, fn, pos, keyword):
        def wrapped(*args, **kwargs):
            t = args[pos] if len(args) > pos else kwargs[keyword]
            self.bytes += t.numel() * t.element_size()
            return fn(*args, **kwargs)

        return wrapped


def _model() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(WIDTHS):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def _optimizer(model: nn.Module, projector: str, transfer: str) -> SubspaceAdamW:
    mats = [p for p in model.parameters() if p.ndim == 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": rest},
        {
            "params": mats,
            "rank": 64,
            "update_proj_gap": GAP,
            "projector": projector,
            "moment_transfer": transfer,
        },
    ]
    return SubspaceAdamW(groups, lr=1e-3)


def _run(setup: str, config, rank: int, world: int, steps: int, counter: _Counter):
    model = _model()
    frame = {"bytes": 0}
    if setup == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        net = model
    else:
        net = nn.parallel.DistributedDataParallel(model)

        def hook(state, bucket):
            frame["bytes"] += bucket.buffer().numel() * bucket.buffer().element_size()
            fut = dist.all_reduce(bucket.buffer().div_(world), async_op=True).get_future()
            return fut.then(lambda f: f.value()[0])

        net.register_comm_hook(None, hook)
    opt = _optimizer(model, *config)
    g = torch.Generator().manual_seed(1)
    per = BATCH // world
    times = {"refresh": [], "plain": [], "iter": []}
    opt_bytes = {"refresh": [], "plain": []}
    fwd_bytes = []
    for i in range(steps + 1):
        x = torch.randn(BATCH, WIDTHS[0], generator=g)[rank * per : (rank + 1) * per]
        y = torch.randn(BATCH, WIDTHS[-1], generator=g)[rank * per : (rank + 1) * per]
        dist.barrier()
        t0 = time.perf_counter()
        c0, f0 = counter.bytes, frame["bytes"]
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        t1 = time.perf_counter()
        c1 = counter.bytes
        opt.step()
        t2 = time.perf_counter()
        if i == 0:
            continue  # warm-up (and the first refresh)
        kind = "refresh" if i % GAP == 0 else "plain"
        times[kind].append(t2 - t1)
        times["iter"].append(t2 - t0)
        opt_bytes[kind].append(counter.bytes - c1)
        fwd_bytes.append(c1 - c0 + frame["bytes"] - f0)
    return {
        "step_ms": 1e3 * statistics.median(times["plain"]),
        "refresh_ms": 1e3 * statistics.median(times["refresh"]),
        "iter_ms": 1e3 * statistics.median(times["iter"]),
        "opt_B_step": statistics.median(opt_bytes["plain"]),
        "opt_B_refresh": statistics.median(opt_bytes["refresh"]),
        "fwd_bwd_B": statistics.median(fwd_bytes),
    }


def _worker(rank: int, world: int, port: int, steps: int, out: str) -> None:
    init_gloo(rank, world, port, timeout_s=1800)
    counter = _Counter()
    rows = {}
    for config in CONFIGS:
        for setup in ("ddp", "fsdp"):
            rows[(config, setup)] = _run(setup, config, rank, world, steps, counter)
    if rank == 0:
        torch.save(rows, out)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    print(f"uptime: {os.popen('uptime').read().strip()}")
    header = (
        f"{'projector':11} {'P':>2} {'setup':5} {'step ms':>8} {'refresh ms':>10} {'iter ms':>8} "
        f"{'opt B/step':>10} {'opt B/refresh':>13} {'fwd+bwd B':>10}  FSDP2/DDP (step, iter, bytes)"
    )
    print(header)
    for world in [int(p) for p in args.procs.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            out = str(Path(tmp) / "rows.pt")
            mp.spawn(_worker, args=(world, free_port(), args.steps, out), nprocs=world)
            rows = torch.load(out, weights_only=False)
        for config in CONFIGS:
            ddp, fsdp = rows[(config, "ddp")], rows[(config, "fsdp")]
            projector = "/".join(config)
            for setup, r in (("ddp", ddp), ("fsdp", fsdp)):
                ratio = ""
                if setup == "fsdp":
                    total_f = fsdp["fwd_bwd_B"] + fsdp["opt_B_step"]
                    total_d = ddp["fwd_bwd_B"] + ddp["opt_B_step"]
                    ratio = (
                        f"  {fsdp['step_ms'] / ddp['step_ms']:.2f}x, "
                        f"{fsdp['iter_ms'] / ddp['iter_ms']:.2f}x, "
                        f"{total_f / total_d if total_d else float('nan'):.2f}x"
                    )
                print(
                    f"{projector:11} {world:>2} {setup:5} {r['step_ms']:8.2f} "
                    f"{r['refresh_ms']:10.2f} {r['iter_ms']:8.2f} {r['opt_B_step']:10.0f} "
                    f"{r['opt_B_refresh']:13.0f} {r['fwd_bwd_B']:10.0f}{ratio}"
                )
    print(f"uptime: {os.popen('uptime').read().strip()}")


if __name__ == "__main__":
    main()
