"""Curvature of an FSDP2 (``fully_shard``) model over 2 gloo processes equals one process.

Each rank holds a ``Shard(0)`` ``DTensor`` slice of every parameter of a float64 MLP and its own
shard of the data, of a different size (rank 0: two batches, 7 + 6 samples; rank 1: one batch
of 9, so the Hessian's vector products take the cached-graph path there). Products, top
eigenpairs, trace, density, outliers and a ``CurvatureTracker`` record must equal those of a
single process on the concatenated data with an unsharded copy of the model to 1e-10 (float64:
the two computations differ only in the order of a few sums), identically on both ranks. A rank
that fails must make both raise. The model's parameters must come back as the same sharded
``DTensor`` objects, bit for bit, with FSDP's hooks in place, and a training step afterwards
must give FSDP's usual gradient (the mean over ranks of each rank's gradient).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from cases import rank_shard, shard_data
from torch import nn

from subspaces.curvature import (
    FisherOperator,
    GGNOperator,
    HessianOperator,
    bulk_outliers,
    density,
    top_eigen,
)
from subspaces.curvature import trace as curvature_trace
from subspaces.curvature._fsdp import fsdp_functional_model, fsdp_hooks_bypassed
from subspaces.dynamics import CurvatureTracker
from subspaces.testing import free_port, init_gloo

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or not dist.is_available(), reason="gloo over TCP on localhost"
)

NUM_PARAMS = 4 * 6 + 6 + 6 * 3 + 3  # 6 rows: Shard(0) splits them 3 + 3 over 2 ranks
LR = 0.1


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _sharded(**kwargs: object) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    model = _model()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, **kwargs)  # type: ignore[arg-type]
    fully_shard(model, **kwargs)  # type: ignore[arg-type]
    return model


def _operators(model: nn.Module, data: object, distributed: bool) -> dict[str, object]:
    return {
        "hessian": HessianOperator(model, "cross_entropy", data, distributed=distributed),
        "hessian_sum": HessianOperator(
            model, nn.CrossEntropyLoss(reduction="sum"), data, distributed=distributed
        ),
        "ggn": GGNOperator(model, "cross_entropy", data, distributed=distributed),
        "fisher_emp": FisherOperator(
            model, "cross_entropy", data, kind="empirical", distributed=distributed
        ),
        "fisher_mc": FisherOperator(
            model,
            "cross_entropy",
            data,
            distributed=distributed,
            generator=torch.Generator().manual_seed(5),
        ),
    }


def _measure(model: nn.Module, data: object, batch: object, distributed: bool) -> dict:
    V = torch.randn(NUM_PARAMS, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out: dict[str, torch.Tensor] = {}
    for name, op in _operators(model, data, distributed).items():
        out[f"{name}/block"] = op @ V  # type: ignore[operator]
        out[f"{name}/vector"] = op @ V[:, 0]  # type: ignore[operator]
        out[f"{name}/samples"] = torch.tensor(op.num_samples)  # type: ignore[attr-defined]
    hessian = HessianOperator(model, "cross_entropy", data, distributed=distributed)
    eig = top_eigen(hessian, 3, rtol=1e-10, generator=torch.Generator().manual_seed(3))
    out["eigenvalues"] = eig.eigenvalues
    out["trace"] = torch.tensor(
        curvature_trace(hessian, generator=torch.Generator().manual_seed(4)).estimate
    )
    dens = density(hessian, num_runs=2, steps=8, generator=torch.Generator().manual_seed(6))
    out["density/nodes"], out["density/weights"] = dens.nodes, dens.weights
    split = bulk_outliers(top_eigen(hessian, 8, generator=torch.Generator().manual_seed(7)))
    out["outliers"] = split.outliers
    loss, grad = hessian.loss_and_gradient()
    out["loss"], out["gradient"] = torch.tensor(loss), grad
    tracker = CurvatureTracker(
        model,
        "cross_entropy",
        data,
        lr=LR,
        k=2,
        trace_rtol=None,
        generator=torch.Generator().manual_seed(0),
        distributed=distributed,
    )
    record = tracker.measure(0, batch=batch)  # the union of the ranks' mini-batches
    for key in ("eigenvalues", "loss", "grad_norm", "grad_fraction", "batch_lambda_max"):
        out[f"tracker/{key}"] = torch.tensor(record[key])
    return out


def _hooks(model: nn.Module) -> list[list[tuple[str, int, object]]]:
    """Every module's forward hook dictionaries: (which, id, hook), in order."""
    names = (
        "_forward_pre_hooks",
        "_forward_pre_hooks_with_kwargs",
        "_forward_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called",
    )
    return [
        [(name, key, hook) for name in names for key, hook in getattr(m, name).items()]
        for m in model.modules()
    ]


@contextmanager
def _counting(counts: dict[str, int]) -> Iterator[None]:
    """Count calls of the collectives FSDP2 (all-gather, reduce-scatter) and we (all-reduce) use."""
    names = ("all_gather_single", "reduce_scatter_single", "all_reduce")
    originals = {name: getattr(dist, name) for name in names}

    def counted(name: str) -> object:
        def call(*args: object, **kwargs: object) -> object:
            counts[name] = counts.get(name, 0) + 1
            return originals[name](*args, **kwargs)

        return call

    try:
        for name in names:
            setattr(dist, name, counted(name))
        yield
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)


def _refusals(rank: int) -> dict[str, str]:
    """Each unsupported setting's error as ``"ExceptionType: message"``."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    seen: dict[str, str] = {}

    def attempt(key: str, make: object) -> None:
        try:
            HessianOperator(make(), "cross_entropy", rank_shard(rank), distributed=True)  # type: ignore[operator]
        except Exception as err:
            seen[key] = f"{type(err).__name__}: {err}"

    attempt("mixed", lambda: _sharded(mp_policy=MixedPrecisionPolicy(param_dtype=torch.float32)))

    def offloaded() -> nn.Module:
        # fully_shard(offload_policy=CPUOffloadPolicy()) needs an accelerator; on a CPU-only
        # machine the policy is set on the sharded model's parameter group after the fact
        model = _sharded()
        model[0]._get_fsdp_state()._fsdp_param_group.offload_policy = CPUOffloadPolicy()
        return model

    attempt("offload", offloaded)

    def grouped() -> nn.Module:
        model = _model()
        fully_shard([model[0], model[2]])
        return model

    attempt("grouped", grouped)

    def tensor_parallel() -> nn.Module:
        model = _model()
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        w = model[0].weight
        model[0].weight = nn.Parameter(distribute_tensor(w.detach(), mesh, [Shard(0)]))
        return model

    attempt("tensor_parallel", tensor_parallel)
    try:
        HessianOperator(_sharded(), "cross_entropy", rank_shard(rank))
    except Exception as err:
        seen["not_distributed"] = f"{type(err).__name__}: {err}"
    return seen


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    init_gloo(rank, world, port)
    try:
        result: dict[str, object] = {}
        try:
            shard = rank_shard(rank)
            model = _sharded()
            params = dict(model.named_parameters())
            before = {n: p.to_local().clone() for n, p in params.items()}
            hooks = _hooks(model)
            result["measured"] = _measure(model, shard, shard[0], distributed=True)
            # a failure on one rank only: a NaN in rank 1's shard
            bad = shard
            if rank == 1:
                X = shard[0][0].clone()
                X[0, 0] = float("nan")
                bad = [(X, shard[0][1])]
            try:
                HessianOperator(model, "cross_entropy", bad, distributed=True) @ torch.ones(
                    NUM_PARAMS, 2, dtype=torch.float64
                )
            except Exception as err:
                result["nan"] = f"{type(err).__name__}: {err}"
            # an exception inside the bypass puts FSDP's hooks back as well
            try:
                with fsdp_hooks_bypassed(model):
                    result["hooks_inside"] = torch.tensor(len(model._forward_pre_hooks))
                    raise KeyError("inside")
            except KeyError:
                pass
            after = dict(model.named_parameters())
            result["same_objects"] = torch.tensor(
                all(after[n] is params[n] for n in params) and list(after) == list(params)
            )
            result["dtensors"] = torch.tensor(
                all(type(p).__name__ == "DTensor" for p in after.values())
            )
            result["bit_identical"] = torch.tensor(
                all(torch.equal(after[n].to_local(), before[n]) for n in params)
            )
            result["hooks_restored"] = torch.tensor(_hooks(model) == hooks)
            # a model FSDP holds unsharded now: its parameters are copied, not aliased (the
            # next reshard frees FSDP's all-gather buffer under them)
            V = torch.ones(NUM_PARAMS, 2, dtype=torch.float64)
            expected = HessianOperator(model, "cross_entropy", shard, distributed=True) @ V
            layers = [model[0], model[2]]
            for layer in layers:
                layer.unshard()
            unsharded = [type(p).__name__ for p in model.parameters()]
            op = HessianOperator(model, "cross_entropy", shard, distributed=True)
            for layer in layers:
                layer.reshard()
            result["unsharded_kinds"] = torch.tensor([k == "DTensor" for k in unsharded])
            result["unsharded_product"] = (op @ V) - expected
            # products run one all-reduce each and none of FSDP's collectives
            product_counts: dict[str, int] = {}
            ops = [
                HessianOperator(model, "cross_entropy", shard, distributed=True),
                GGNOperator(model, "cross_entropy", shard, distributed=True),
            ]
            with _counting(product_counts):
                for op in ops:
                    op @ V
                    op @ V[:, 0]
            result["product_counts"] = product_counts
            # a normal FSDP2 training step afterwards
            full = {n: p.full_tensor().clone() for n, p in after.items()}
            optimizer = torch.optim.SGD(model.parameters(), lr=LR)
            X, y = shard[0]
            step_counts: dict[str, int] = {}
            with _counting(step_counts):
                nn.functional.cross_entropy(model(X), y).backward()
            result["step_counts"] = step_counts
            result["grad"] = {n: p.grad.full_tensor() for n, p in after.items()}
            optimizer.step()
            result["step"] = {n: full[n] - p.full_tensor() for n, p in after.items()}
            result["refusals"] = _refusals(rank)
            if rank == 0:  # the single-process reference (here, where torch.func is warm)
                X, y = shard_data()
                first = torch.cat([torch.arange(7), 13 + torch.arange(9)])  # first batches
                result["reference"] = _measure(
                    _model(), [(X, y)], (X[first], y[first]), distributed=False
                )
        except Exception:
            result["error"] = traceback.format_exc()
        torch.save(result, os.path.join(folder, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    folder = tmp_path_factory.mktemp("curvature_fsdp")
    port = free_port()
    # fork: the workers inherit the imports (spawn would import torch and subspaces again in
    # each, most of this test's CPU time); they run one intra-op thread and no OpenMP region
    # before set_num_threads(1)
    context = "fork" if sys.platform == "linux" else "spawn"
    mp.start_processes(
        _worker, args=(2, port, str(folder)), nprocs=2, join=True, start_method=context
    )
    results = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for r, res in enumerate(results):
        assert "error" not in res, f"rank {r}:\n{res.get('error')}"
    return results


def test_sharded_curvature_equals_one_process_on_all_data(ranks) -> None:
    reference = ranks[0]["reference"]  # an unsharded model, one process, all the data
    for r, res in enumerate(ranks):
        measured = res["measured"]
        assert sorted(measured) == sorted(reference)
        for key, ref in reference.items():
            got = measured[key]
            scale = max(1.0, float(ref.abs().max()))
            assert got.shape == ref.shape, (r, key)
            assert torch.allclose(got, ref, rtol=0, atol=1e-10 * scale), (r, key, got, ref)
    for key in reference:  # one all-reduce gives every rank the same bits
        assert torch.equal(ranks[0]["measured"][key], ranks[1]["measured"][key]), key
    assert int(ranks[0]["measured"]["hessian/samples"]) == len(shard_data()[1])


def test_a_failing_rank_makes_every_rank_raise(ranks) -> None:
    assert ranks[1]["nan"].startswith("ValueError"), ranks[1]["nan"]
    assert ranks[0]["nan"].startswith("RankFailedError: rank(s) [1] of 2 failed"), ranks[0]["nan"]


def test_parameters_and_hooks_are_left_as_they_were(ranks) -> None:
    for res in ranks:
        assert bool(res["same_objects"]) and bool(res["dtensors"])
        assert bool(res["bit_identical"]) and bool(res["hooks_restored"])
        assert int(res["hooks_inside"]) == 0  # FSDP's pre-forward hook was the only one


def test_a_model_held_unsharded_gives_the_same_products(ranks) -> None:
    for res in ranks:
        assert not bool(res["unsharded_kinds"].any())  # plain tensors while unsharded
        assert bool((res["unsharded_product"] == 0).all())


def test_products_run_one_all_reduce_and_no_fsdp_collective(ranks) -> None:
    for res in ranks:
        assert res["product_counts"] == {"all_reduce": 4}, res["product_counts"]
        # the counter sees FSDP's collectives where they do run: the training step
        step = res["step_counts"]
        assert step.get("all_gather_single", 0) > 0 and step.get("reduce_scatter_single", 0) > 0


def test_a_training_step_afterwards_is_the_usual_fsdp_step(ranks) -> None:
    # FSDP2 averages the ranks' gradients: the mean of each rank's first-batch mean-loss gradient
    model = _model()
    grads = []
    for rank in range(2):
        model.zero_grad()
        X, y = rank_shard(rank)[0]
        nn.functional.cross_entropy(model(X), y).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for res in ranks:
        for name, g0 in grads[0].items():
            expected = (g0 + grads[1][name]) / 2
            assert torch.allclose(res["grad"][name], expected, rtol=0, atol=1e-12), name
            assert torch.allclose(res["step"][name], LR * expected, rtol=0, atol=1e-12), name


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("mixed", "mixed precision policy"),
        ("offload", "CPUOffloadPolicy"),
        ("grouped", "group of 2 modules"),
        ("tensor_parallel", "no fully_shard manages"),
        ("not_distributed", "distributed=False"),
    ],
)
def test_unsupported_settings_are_refused(ranks, key: str, words: str) -> None:
    for res in ranks:
        message = res["refusals"][key]
        assert message.startswith("ValueError") and words in message, message


def test_a_model_without_fsdp_is_left_to_the_plain_path() -> None:
    model = _model()
    assert fsdp_functional_model(model, dict(model.named_parameters()), None, None) is None
    model.register_forward_pre_hook(lambda module, args: None)
    model[0].register_forward_hook(lambda module, args, out: None, always_call=True)
    expected = _hooks(model)
    with fsdp_hooks_bypassed(model):  # no FSDP module: nothing is taken off
        assert _hooks(model) == expected
    assert _hooks(model) == expected
