"""Data-parallel curvature (``distributed=True``) over 2 gloo processes equals one process.

Each rank holds a shard of the data of a different size (rank 0: two batches, 7 + 6 samples;
rank 1: one batch of 9, so the Hessian takes its cached-graph path there and the batched path on
rank 0). Products, top eigenpairs and traces must equal those of a single process on the
concatenated data to 1e-10 in float64, identically on both ranks. Failures must reach every rank
instead of hanging: a NaN in one rank's shard, and blocks drawn from unseeded generators.
"""

from __future__ import annotations

import os
import sys
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from cases import rank_shard, shard_data
from torch import nn

from subspaces.curvature import FisherOperator, GGNOperator, HessianOperator, top_eigen
from subspaces.curvature import trace as curvature_trace
from subspaces.dynamics import CurvatureTracker
from subspaces.testing import free_port, init_gloo

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or not dist.is_available(), reason="gloo over TCP on localhost"
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _operators(data: object, distributed: bool) -> dict[str, object]:
    model = _model()
    return {
        "hessian": HessianOperator(model, "cross_entropy", data, distributed=distributed),
        "hessian_sum": HessianOperator(
            model, nn.CrossEntropyLoss(reduction="sum"), data, distributed=distributed
        ),
        "ggn": GGNOperator(model, "cross_entropy", data, distributed=distributed),
        "fisher_emp": FisherOperator(
            model, "cross_entropy", data, kind="empirical", distributed=distributed
        ),
        "fisher_mc": FisherOperator(model, "cross_entropy", data, distributed=distributed),
    }


NUM_PARAMS = 4 * 5 + 5 + 5 * 3 + 3


def _measure(data: object, batch: object, distributed: bool) -> dict[str, torch.Tensor]:
    V = torch.randn(NUM_PARAMS, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out: dict[str, torch.Tensor] = {}
    for name, op in _operators(data, distributed).items():
        out[f"{name}/block"] = op @ V  # type: ignore[operator]
        out[f"{name}/vector"] = op @ V[:, 0]  # type: ignore[operator]
        out[f"{name}/vector_again"] = op @ V[:, 1]  # type: ignore[operator]  # counts stay put
        out[f"{name}/samples"] = torch.tensor(op.num_samples)  # type: ignore[attr-defined]
    hessian = HessianOperator(_model(), "cross_entropy", data, distributed=distributed)
    eig = top_eigen(hessian, 3, rtol=1e-10, generator=torch.Generator().manual_seed(3))
    out["eigenvalues"] = eig.eigenvalues
    out["trace"] = torch.tensor(
        curvature_trace(hessian, generator=torch.Generator().manual_seed(4)).estimate
    )
    for name in ("ggn", "fisher_emp"):  # rank_bound sums over ranks: the same sketch everywhere
        op = _operators(data, distributed)[name]
        out[f"{name}/rank_bound"] = torch.tensor(op.rank_bound())  # type: ignore[attr-defined]
        estimate = curvature_trace(op, generator=torch.Generator().manual_seed(4)).estimate
        out[f"{name}/trace"] = torch.tensor(estimate)
    loss, grad = hessian.loss_and_gradient()
    out["loss"], out["gradient"] = torch.tensor(loss), grad
    # distributed: the tracker's default generator, manual_seed(0), the same on every rank
    gen = None if distributed else torch.Generator().manual_seed(0)
    tracker = CurvatureTracker(
        _model(),
        "cross_entropy",
        data,
        lr=0.1,
        k=2,
        trace_rtol=None,
        generator=gen,
        distributed=distributed,
    )
    record = tracker.measure(0, batch=batch)  # the union of the ranks' mini-batches
    for key in ("eigenvalues", "loss", "grad_norm", "grad_fraction", "batch_lambda_max"):
        out[f"tracker/{key}"] = torch.tensor(record[key])
    return out


def _failures(rank: int) -> dict[str, str]:
    """Each failure as ``"ExceptionType: message"`` on this rank."""
    seen: dict[str, str] = {}
    shard = rank_shard(rank)
    if rank == 1:  # a NaN in one rank's shard only
        X, y = shard[0]
        X = X.clone()
        X[0, 0] = float("nan")
        shard = [(X, y)]
    op = HessianOperator(_model(), "cross_entropy", shard, distributed=True)
    try:
        op @ torch.ones(NUM_PARAMS, 2, dtype=torch.float64)
    except Exception as err:
        seen["nan"] = f"{type(err).__name__}: {err}"
    op = HessianOperator(_model(), "cross_entropy", rank_shard(rank), distributed=True)
    torch.manual_seed(100 + rank)  # a different global RNG on every rank
    try:
        top_eigen(op, 2)  # no generator: each rank draws its own start block
    except Exception as err:
        seen["unseeded"] = f"{type(err).__name__}: {err}"
    return seen


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    init_gloo(rank, world, port)
    try:
        result: dict[str, object] = {}
        try:
            shard = rank_shard(rank)
            result["measured"] = _measure(shard, shard[0], distributed=True)
            result["failures"] = _failures(rank)
        except Exception:
            result["error"] = traceback.format_exc()
        torch.save(result, os.path.join(folder, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    folder = tmp_path_factory.mktemp("curvature_ddp")
    port = free_port()
    mp.spawn(_worker, args=(2, port, str(folder)), nprocs=2, join=True)
    results = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for r, res in enumerate(results):
        assert "error" not in res, f"rank {r}:\n{res.get('error')}"
    return results


def test_products_spectra_and_gradients_equal_one_process_on_all_data(ranks) -> None:
    X, y = shard_data()
    first = torch.cat([torch.arange(7), 13 + torch.arange(9)])  # each rank's first batch
    reference = _measure([(X, y)], (X[first], y[first]), distributed=False)
    for r, res in enumerate(ranks):
        measured = res["measured"]
        assert sorted(measured) == sorted(reference)
        for key, ref in reference.items():
            got = measured[key]
            scale = max(1.0, float(ref.abs().max()))
            assert torch.allclose(got, ref, rtol=0, atol=1e-10 * scale), (r, key, got, ref)
    # every rank returns the same bits (one all-reduce gives all ranks one result)
    for key in reference:
        assert torch.equal(ranks[0]["measured"][key], ranks[1]["measured"][key]), key
    assert int(ranks[0]["measured"]["hessian/samples"]) == len(y)


def test_a_failing_rank_makes_every_rank_raise(ranks) -> None:
    assert ranks[1]["failures"]["nan"].startswith("ValueError")
    assert ranks[0]["failures"]["nan"].startswith("RankFailedError: rank(s) [1] of 2 failed")


def test_different_random_blocks_are_refused_on_every_rank(ranks) -> None:
    for res in ranks:
        message = res["failures"]["unseeded"]
        assert message.startswith("ValueError: the ranks multiplied different blocks"), message
        assert "generator" in message


def test_distributed_without_a_process_group_is_an_error() -> None:
    if dist.is_initialized():
        pytest.skip("a process group is initialized in this process")
    with pytest.raises(ValueError, match=r"initialized torch\.distributed process group"):
        HessianOperator(_model(), "cross_entropy", rank_shard(0), distributed=True)
