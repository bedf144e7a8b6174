"""SubspaceAdamW under DistributedDataParallel (gloo, 2 CPU processes): ranks stay identical.

DDP all-reduces gradients before ``step()``, so every rank runs the projector on the same
gradient. The randomized projectors draw from generators seeded by (seed, parameter index,
step), never from the global RNG, so the bases and therefore the parameters agree bit for bit
across ranks, even though each rank's global RNG is seeded differently on purpose. INT8 weights
(``Int8Linear``) are averaged too, and their stochastic rounding is seeded the same way.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from subspaces.optim import SubspaceAdamW, projected_param_groups
from subspaces.optim.quantization import Int8Linear, quantize_linear_layers
from subspaces.testing import free_port, init_gloo


def _train(projector: str, rank: int) -> torch.Tensor:
    torch.manual_seed(0)  # same initial model on every rank
    model = nn.Sequential(nn.Linear(12, 24), nn.Tanh(), nn.Linear(24, 5))
    ddp = nn.parallel.DistributedDataParallel(model)
    mats = [p for p in model.parameters() if p.ndim == 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": rest},
        {
            "params": mats,
            "rank": 3,
            "update_proj_gap": 2,
            "projector": projector,
            "moment_transfer": "rotate",
        },
    ]
    opt = SubspaceAdamW(groups, lr=1e-2)
    torch.manual_seed(100 + rank)  # different data and global RNG state per rank
    for _ in range(6):
        x, y = torch.randn(8, 12), torch.randn(8, 5)
        opt.zero_grad()
        nn.functional.mse_loss(ddp(x), y).backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _train_int8(rank: int) -> torch.Tensor:
    # INT8 weights carry their gradient in weight.grad (an Int8Weight), so DDP averages it like
    # any other; init_sync=False because DDP's initial broadcast cannot write into the
    # one-element weight Parameter (the model is built identically on every rank instead)
    torch.manual_seed(0)
    model = quantize_linear_layers(
        nn.Sequential(nn.Linear(12, 24), nn.Tanh(), nn.Linear(24, 5)), group_size=32
    )
    ddp = nn.parallel.DistributedDataParallel(model, init_sync=False)
    opt = SubspaceAdamW(projected_param_groups(model, rank=3, update_proj_gap=2), lr=1e-2)
    start = torch.cat([m.weight_codes.reshape(-1) for m in model if isinstance(m, Int8Linear)])
    torch.manual_seed(100 + rank)  # different data per rank
    for _ in range(6):
        x, y = torch.randn(8, 12), torch.randn(8, 5)
        opt.zero_grad()
        nn.functional.mse_loss(ddp(x), y).backward()
        opt.step()
    codes = torch.cat([m.weight_codes.reshape(-1) for m in model if isinstance(m, Int8Linear)])
    assert not torch.equal(codes, start)
    rest = torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.ndim < 2])
    return torch.cat([codes.to(torch.float32), rest])


def _worker(rank: int, world: int, port: int, out: str) -> None:
    init_gloo(rank, world, port)
    try:
        result = {}
        for projector in (*PROJECTORS, "int8"):
            flat = _train_int8(rank) if projector == "int8" else _train(projector, rank)
            gathered = [torch.zeros_like(flat) for _ in range(world)]
            dist.all_gather(gathered, flat)
            result[projector] = torch.stack(gathered)
        if rank == 0:
            torch.save(result, out)
        dist.barrier()  # nobody tears gloo down while the other rank still talks
    finally:
        dist.destroy_process_group()


PROJECTORS = ("rsvd", "random", "dct")


@pytest.mark.skipif(sys.platform == "win32", reason="gloo over TCP on localhost")
def test_ranks_stay_bitwise_identical_under_ddp(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    out = str(tmp_path / "params.pt")
    mp.spawn(_worker, args=(2, free_port(), out), nprocs=2, join=True)
    params = torch.load(out, weights_only=True)
    assert sorted(params) == sorted((*PROJECTORS, "int8"))
    for projector, both in params.items():
        assert torch.equal(both[0], both[1]), projector
