"""SubspaceAdamW on FSDP2 (``fully_shard``) DTensor shards, 2 gloo CPU processes.

* the sharded run equals the single-process run on the same global batch (1e-6, float32) for the
  ``svd``, ``rsvd``, ``dct`` and ``random`` projectors, with one weight whose compressed side is
  unsharded (24 x 8) and one whose compressed side is the sharded rows (5 x 24, uneven shards);
* every rank holds the same basis, bit for bit;
* a checkpoint written with ``torch.distributed.checkpoint`` on 2 ranks resumes bit for bit
  (10 steps, save, load, 10 steps == 20 steps) into a fresh model and optimizer, and (slow
  test) in 2 new processes;
* a rank whose step raises makes the other rank raise ``RankFailedError``, a NaN on one rank
  makes both raise ``NonFiniteGradientError``: nothing hangs (gloo timeout 60 s).
"""

from __future__ import annotations

import sys
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from subspaces._distributed import RankFailedError
from subspaces.optim import SubspaceAdamW
from subspaces.optim._sharded import row_range
from subspaces.optim.projectors import SVDProjector
from subspaces.optim.subspace_adamw import NonFiniteGradientError
from subspaces.testing import free_port, init_gloo

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or not dist.is_available(), reason="gloo over TCP on localhost"
)

PROJECTORS = ("svd", "rsvd", "dct", "random")
#: svd and rsvd with moment_transfer="rotate" take the Gram / n x l path (signs by convention),
#: with "none" (GaLore's default) the gathered-gradient path (signs as in one process)
CASES = (*PROJECTORS, "svd+none", "rsvd+none", "dct+feedback", "nystrom+none")
GLOBAL_BATCH = 8


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 24), nn.Tanh(), nn.Linear(24, 5))


def _optimizer(
    model: nn.Module, projector: object, transfer: str, feedback: bool = False
) -> SubspaceAdamW:
    mats = [p for p in model.parameters() if p.ndim == 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    if feedback:  # error feedback: only the columns-compressed 24 x 8 weight is projected
        rest, mats = [*rest, mats[1]], mats[:1]
    groups = [
        {"params": rest},
        {
            "params": mats,
            "rank": 3,
            "update_proj_gap": 5,
            "projector": projector,
            "moment_transfer": transfer,
            "error_feedback": feedback,
            "rsvd_oversample": 2,  # so that rsvd's n x l blocks are smaller than the gradient
        },
    ]
    return SubspaceAdamW(groups, lr=1e-2, weight_decay=0.1)


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(GLOBAL_BATCH, 8, generator=g), torch.randn(GLOBAL_BATCH, 5, generator=g)


def _train(model, opt, steps, start=0, rank=None, world=1):
    for t in range(start, start + steps):
        x, y = _batch(t)
        if rank is not None:
            half = GLOBAL_BATCH // world
            x, y = x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _sharded_model():
    from torch.distributed.fsdp import fully_shard

    model = _model()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def _full(model) -> torch.Tensor:
    return torch.cat([p.detach().full_tensor().reshape(-1) for p in model.parameters()])


def _bases(opt) -> list[torch.Tensor]:
    out = []
    for p in opt.param_groups[1]["params"]:
        for k, v in sorted(opt.state[p].items()):
            if k.startswith("proj."):
                out.append(v.to(torch.float64).reshape(-1))
    return out


class _FailingOnRank1(SVDProjector):
    """Raises inside the selection on rank 1 only (gathered-gradient path)."""

    name = "failing"

    def select(self, G, rank, *, generator=None):
        if dist.get_rank() == 1:
            raise RuntimeError("injected failure on rank 1")
        return super().select(G, rank, generator=generator)


def _setup(rank, world, port):
    init_gloo(rank, world, port)


def _error_name(fn) -> str:
    try:
        fn()
    except Exception as exc:  # the test reads the type
        return type(exc).__name__
    return "none"


def _worker_main(rank: int, world: int, port: int, out: str, ckpt: str) -> None:
    from torch.distributed.checkpoint import save
    from torch.distributed.checkpoint.state_dict import get_state_dict

    _setup(rank, world, port)
    result: dict[str, object] = {}
    try:
        for projector in CASES:
            transfer = "rotate" if projector in ("svd", "rsvd") else "none"
            name, feedback = projector.split("+")[0], projector.endswith("feedback")
            model = _sharded_model()
            opt = _optimizer(model, name, transfer, feedback)
            _train(model, opt, 20, rank=rank, world=world)
            result[f"{projector}/sharded"] = _full(model)
            if feedback:
                result["feedback/layout"] = type(opt.state[model[0].weight]["error"]).__name__
            if rank == 0:  # the single-process reference on the global batch
                ref = _model()
                _train(ref, _optimizer(ref, name, transfer, feedback), 20)
                flat = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
                result[f"{projector}/single"] = flat
            mine = torch.cat(_bases(opt))
            both = [torch.zeros_like(mine) for _ in range(world)]
            dist.all_gather(both, mine)
            result[f"{projector}/bases"] = torch.stack(both)
            result[f"{projector}/comm_bytes"] = torch.tensor(opt.comm_bytes)
        # checkpoint: 10 steps, save with DCP, 10 more (the uninterrupted reference)
        model = _sharded_model()
        opt = _optimizer(model, "rsvd", "none")
        _train(model, opt, 10, rank=rank, world=world)
        msd, osd = get_state_dict(model, opt)
        save({"model": msd, "optim": osd}, checkpoint_id=ckpt)
        _train(model, opt, 10, start=10, rank=rank, world=world)
        result["ckpt/uninterrupted"] = _full(model)
        w1, w2 = opt.param_groups[1]["params"]
        result["layout"] = [
            type(opt.state[w1]["exp_avg"]).__name__,
            tuple(opt.state[w1]["exp_avg"].to_local().shape),
            type(opt.state[w2]["exp_avg"]).__name__,
            tuple(opt.state[w2]["exp_avg"].shape),
        ]
        # load into a fresh model and optimizer in these processes (new processes: slow test)
        result["ckpt/reloaded"] = _resume(rank, world, ckpt)
        # failures: one rank raises inside step / has a NaN gradient
        model = _sharded_model()
        opt = _optimizer(model, _FailingOnRank1(), "none")
        result["fail/raise"] = _error_name(lambda: _train(model, opt, 1, rank=rank, world=world))
        model = _sharded_model()
        opt = _optimizer(model, "dct", "none")
        x, y = _batch(0)
        nn.functional.mse_loss(model(x), y).backward()
        if rank == 1:
            model[2].weight.grad.to_local()[0, 0] = float("nan")
        before = _full(model)
        result["fail/nan"] = _error_name(opt.step)
        result["fail/nan_unchanged"] = torch.equal(before, _full(model))
        result["bad"] = _bad_inputs(rank, world)
        result["mixed"] = _mixed(rank, world)
    except Exception:  # reported to the test
        result["crash"] = traceback.format_exc()
    if rank == 0:
        torch.save(result, out)
    else:
        torch.save(result, out + ".1")
    dist.destroy_process_group()


def _bad_inputs(rank: int, world: int) -> list[str]:
    """Error type and message of each unsupported sharded setting (raised on every rank)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))

    def param(shape, placement, dtype=torch.float32):
        p = nn.Parameter(distribute_tensor(torch.ones(shape, dtype=dtype), mesh, [placement]))
        p.grad = distribute_tensor(torch.ones(shape, dtype=dtype), mesh, [placement])
        return p

    cases = [
        (param((8, 4), Replicate()), "svd", {}),
        (param((8, 4), Shard(0), torch.bfloat16), "svd", {}),
        (param((4, 16), Shard(0)), "coordinate", {}),
        (param((4, 16), Shard(0)), "dct", {"error_feedback": True}),
    ]
    out = []
    for p, projector, extra in cases:
        opt = SubspaceAdamW([p], rank=1, projector=projector, **extra)
        try:
            opt.step()
            out.append("none")
        except Exception as exc:  # the test reads type and message
            out.append(f"{type(exc).__name__}: {exc}")
    other = init_device_mesh("cpu", (world,), mesh_dim_names=("other",))
    q = nn.Parameter(distribute_tensor(torch.ones(8, 4), other, [Shard(0)]))
    q.grad = distribute_tensor(torch.ones(8, 4), other, [Shard(0)])
    try:
        SubspaceAdamW([param((8, 4), Shard(0)), q], rank=1).step()
        out.append("none")
    except Exception as exc:  # the test reads type and message
        out.append(f"{type(exc).__name__}: {exc}")
    p = param((8, 4), Shard(0))
    try:
        SubspaceAdamW([p], rank=1).step_param(p)
        out.append("none")
    except Exception as exc:  # the test reads type and message
        out.append(f"{type(exc).__name__}: {exc}")
    return out


def _mixed(rank: int, world: int) -> list[torch.Tensor]:
    """A regular (non-DTensor) weight next to FSDP2 shards steps as in one process."""
    runs = []
    for sharded in (True, False):
        model = _sharded_model() if sharded else _model()
        extra = nn.Parameter(torch.linspace(-1, 1, 60).reshape(10, 6))
        params = [*model.parameters(), extra]
        opt = SubspaceAdamW(params, lr=1e-2, rank=2, update_proj_gap=3)
        for t in range(6):
            x, y = _batch(t)
            if sharded:
                half = GLOBAL_BATCH // world
                x, y = x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y) + (extra - 1).square().sum()
            loss.backward()
            opt.step()
        flat = _full(model) if sharded else torch.cat([p.detach().reshape(-1) for p in params[:-1]])
        runs += [flat, extra.detach().clone()]
    return runs


def _resume(rank: int, world: int, ckpt: str) -> torch.Tensor:
    from torch.distributed.checkpoint import load
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model = _sharded_model()
    opt = _optimizer(model, "rsvd", "none")
    msd, osd = get_state_dict(model, opt)  # initializes the state with a zero-lr step
    state = {"model": msd, "optim": osd}
    load(state, checkpoint_id=ckpt)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    _train(model, opt, 10, start=10, rank=rank, world=world)
    return _full(model)


def _worker_resume(rank: int, world: int, port: int, out: str, ckpt: str) -> None:
    _setup(rank, world, port)
    result: dict[str, object] = {}
    try:
        result["ckpt/resumed"] = _resume(rank, world, ckpt)
    except Exception:  # reported to the test
        result["crash"] = traceback.format_exc()
    if rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    out, ckpt = str(tmp / "main.pt"), str(tmp / "ckpt")
    mp.spawn(_worker_main, args=(2, free_port(), out, ckpt), nprocs=2, join=True)
    main = torch.load(out, weights_only=True)
    other = torch.load(out + ".1", weights_only=True)
    assert "crash" not in main, main.get("crash")
    assert "crash" not in other, other.get("crash")
    return main, other, ckpt


@pytest.mark.parametrize("projector", CASES)
def test_sharded_run_equals_single_process(runs, projector):
    main, _, _ = runs
    sharded, single = main[f"{projector}/sharded"], main[f"{projector}/single"]
    assert sharded.dtype == torch.float32
    moved = (single - _model_flat()).abs().max()
    assert moved > 1e-2  # the run trained: the comparison below is not vacuous
    assert torch.allclose(sharded, single, rtol=0, atol=1e-6), (sharded - single).abs().max()


def _model_flat() -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in _model().parameters()])


@pytest.mark.parametrize("projector", CASES)
def test_every_rank_holds_the_same_basis(runs, projector):
    main, _, _ = runs
    both = main[f"{projector}/bases"]
    assert both.numel() > 0
    assert torch.equal(both[0], both[1])


def test_communication_is_counted(runs):
    main, _, _ = runs
    # all gather the rows-compressed 5 x 24 gradient at a refresh and all-reduce its partial
    # products otherwise; for the 24 x 8 weight random needs nothing, svd one 8 x 8 float64
    # Gram matrix (plus 2 flags per rank) at each of its 4 refreshes
    extra = int(main["svd/comm_bytes"]) - int(main["random/comm_bytes"])
    assert extra == 4 * (8 * 8 + 2 * 2) * 8
    # rsvd (l = 3 + 2, one power iteration): two 8 x 5 float32 blocks, one 5 x 5 float64 Gram
    extra = int(main["rsvd/comm_bytes"]) - int(main["random/comm_bytes"])
    assert extra == 4 * (2 * (8 * 5 + 2 * 2) * 4 + (5 * 5 + 2 * 2) * 8)
    # nystrom, also under "none" (canonical signs): one 8 x 5 float32 sketch per refresh
    extra = int(main["nystrom+none/comm_bytes"]) - int(main["random/comm_bytes"])
    assert extra == 4 * (8 * 5 + 2 * 2) * 4
    # under moment_transfer="none" svd and rsvd gather the 24 x 8 gradient instead (float32)
    for name in ("svd+none", "rsvd+none"):
        extra = int(main[f"{name}/comm_bytes"]) - int(main["random/comm_bytes"])
        assert extra == 4 * (24 * 8 + 2 * 2) * 4


def test_dcp_checkpoint_reloads_bit_identically(runs):
    main, _, _ = runs
    assert not torch.equal(main["ckpt/reloaded"], _model_flat())
    assert torch.equal(main["ckpt/reloaded"], main["ckpt/uninterrupted"])


def test_moments_of_unsharded_side_are_row_shards(runs):
    main, other, _ = runs
    assert main["feedback/layout"] == other["feedback/layout"] == "DTensor"
    # 24 x 8 weight: columns compressed, moments are DTensor row shards (12 rows each);
    # 5 x 24 weight: rows compressed, 24 x 3 moments replicated as plain tensors
    assert main["layout"] == other["layout"] == ["DTensor", (12, 3), "Tensor", (24, 3)]


@pytest.mark.slow
def test_dcp_checkpoint_resumes_in_new_processes_bit_identically(runs, tmp_path):
    main, _, ckpt = runs
    out = str(tmp_path / "resume.pt")
    mp.spawn(_worker_resume, args=(2, free_port(), out, ckpt), nprocs=2, join=True)
    resumed = torch.load(out, weights_only=True)
    assert "crash" not in resumed, resumed.get("crash")
    assert torch.equal(resumed["ckpt/resumed"], main["ckpt/uninterrupted"])


def test_a_failing_rank_fails_the_other_one(runs):
    main, other, _ = runs
    assert main["fail/raise"] == RankFailedError.__name__
    assert other["fail/raise"] == "RuntimeError"
    assert main["fail/nan"] == other["fail/nan"] == NonFiniteGradientError.__name__
    assert main["fail/nan_unchanged"] and other["fail/nan_unchanged"]


def test_row_range_matches_torch_chunk():
    for m in range(1, 9):
        for world in (1, 2, 3, 4):
            chunks = torch.arange(m).chunk(world)
            for r in range(world):
                start, stop = row_range(m, world, r)
                want = chunks[r].tolist() if r < len(chunks) else []
                assert list(range(start, stop)) == want


def test_unsupported_sharded_settings_raise_on_every_rank(runs):
    main, other, _ = runs
    for bad in (main["bad"], other["bad"]):
        replicated, half, coordinate, feedback, meshes, step_param = bad
        assert meshes.startswith("ValueError") and "one mesh" in meshes
        assert replicated.startswith("ValueError") and "Shard(0)" in replicated
        assert half.startswith("TypeError") and "torch.bfloat16" in half
        assert coordinate.startswith("ValueError") and "'coordinate'" in coordinate
        assert feedback.startswith("ValueError") and "error_feedback=True" in feedback
        assert step_param.startswith("ValueError") and "step()" in step_param


def test_regular_weights_next_to_shards_step_as_in_one_process(runs):
    main, other, _ = runs
    for sharded, extra, single, extra_single in (main["mixed"], other["mixed"]):
        assert not torch.equal(extra, torch.linspace(-1, 1, 60).reshape(10, 6))
        assert torch.equal(extra, extra_single)
        assert torch.allclose(sharded, single, rtol=0, atol=1e-6)


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 4), nn.Tanh(), nn.Linear(4, 4))


def _worker_empty(rank: int, world: int, port: int, out: str) -> None:
    # 4-row weights on 3 ranks: rows 0:2, 2:4 and none on rank 2
    from torch.distributed.fsdp import fully_shard

    _setup(rank, world, port)
    result: dict[str, object] = {}
    try:
        for projector in ("svd", "dct"):
            runs = []
            for sharded in (True, False):
                model = _tiny_model()
                if sharded:
                    for layer in model:
                        if isinstance(layer, nn.Linear):
                            fully_shard(layer)
                    fully_shard(model)
                opt = SubspaceAdamW(
                    model.parameters(), lr=1e-2, rank=1, update_proj_gap=3, projector=projector
                )
                for t in range(8):
                    g = torch.Generator().manual_seed(t)
                    x, y = torch.randn(6, 16, generator=g), torch.randn(6, 4, generator=g)
                    if sharded:
                        x, y = x[2 * rank : 2 * rank + 2], y[2 * rank : 2 * rank + 2]
                    opt.zero_grad()
                    nn.functional.mse_loss(model(x), y).backward()
                    opt.step()
                if sharded:
                    result[f"{projector}/local_rows"] = model[0].weight.to_local().shape[0]
                    runs.append(_full(model))
                else:
                    runs.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
            result[projector] = runs
    except Exception:  # reported to the test
        result["crash"] = traceback.format_exc()
    torch.save(result, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_with_empty_row_shards(tmp_path):
    out = str(tmp_path / "empty")
    mp.spawn(_worker_empty, args=(3, free_port(), out), nprocs=3, join=True)
    for rank in range(3):
        result = torch.load(f"{out}.{rank}", weights_only=True)
        assert "crash" not in result, result.get("crash")
        for projector in ("svd", "dct"):
            assert result[f"{projector}/local_rows"] == (0 if rank == 2 else 2)
            sharded, single = result[projector]
            assert torch.allclose(sharded, single, rtol=0, atol=1e-6), projector
