"""`subspaces analyze` under torchrun: 2 gloo ranks equal one process with the same global batch.

The test spawns 2 processes and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT`` as ``torchrun`` does; ``run_analyze`` finds them and runs data-parallel.
90 training samples in global batches of 25 (25, 25, 25, 15) give the ranks unequal slices
(13/12 and 8/7), so a wrong loss scaling (a mean of the ranks' means) would show.

Tolerance: float64 throughout. The two runs do the same arithmetic except that sums over
samples are split in two and added in another order (DDP's gradient all-reduce, the curvature
operators' all-reduce), a relative rounding difference of a few ``eps = 2.2e-16`` per
product or step. Six SGD steps and Lanczos/Hutchinson with the same seeded start blocks and
probes amplify it by at most the conditioning of the few tracked eigenvalues (well separated
here): the largest relative difference observed is 1.2e-15, so ``1e-12`` relative leaves a
factor of about 1e3 of margin; a mean of the ranks' mean losses (the wrong scaling for unequal
slices) changes the numbers by about 1e-3 and fails.
"""

from __future__ import annotations

import gc
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import subspaces.analyze._train as analyze_train
import subspaces.report
from subspaces.analyze import AnalyzeConfig, run_analyze
from subspaces.analyze._ddp import (
    _broadcast_state,
    _check_shards,
    _dist_context,
    _DistContext,
    _sum_gradients,
    launched_by_torchrun,
)
from subspaces.testing import free_port, gloo_worker_threads

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or not dist.is_available(), reason="gloo over TCP on localhost"
)

HERE = Path(__file__).resolve()
RTOL = 1e-12


def tiny_data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(120, 6, generator=g)
    W = torch.randn(6, 3, generator=g)
    y = (X @ W).argmax(1)
    return X[:90], y[:90], X[90:], y[90:]


def tiny_model(in_dim, out_dim):
    return torch.nn.Sequential(
        torch.nn.Linear(in_dim, 8), torch.nn.Tanh(), torch.nn.Linear(8, out_dim)
    )


def config(**kw):
    base = dict(
        data=f"{HERE}:tiny_data",
        model=f"{HERE}:tiny_model",
        epochs=2,
        batch_size=25,
        every=4,
        k=2,
        final_k=4,
        density_runs=2,
        density_steps=8,
        lr=0.3,
        dtype="float64",
        trace_rtol=0.3,
    )
    base.update(kw)
    return AnalyzeConfig(**base)


def _numbers(summary):
    """The numbers that must agree: losses, tracked and final curvature."""
    curv = summary["curvature"]
    final = summary["final"]
    return {
        "train_loss": summary["history"]["train_loss"],
        "test_loss": summary["history"]["test_loss"],
        "eigenvalues": [v for row in curv["eigenvalues"] for v in row],
        "trace": curv["trace"],
        "grad_fraction": curv["grad_fraction"],
        # the tracker's mini-batch sharpness: of the global batch (the union of the slices)
        "batch_lambda_max": curv["batch_lambda_max"],
        "num_samples": [curv["num_samples"], final["num_samples"]],
        "final_eigenvalues": final["eigenvalues"],
        "final_trace": [final["trace"]],
        "density_nodes": torch.tensor(final["density"]["nodes"]).flatten().tolist(),
    }


def _as_torchrun(rank: int, world: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )


def _summary_only(summary, out_dir):
    """``write_report`` without the figures and HTML (they are tested elsewhere; they cost
    seconds of matplotlib): what matters here is who writes."""
    path = Path(out_dir) / "summary.json"
    path.write_text(json.dumps(summary, default=str))
    return {"summary": path}


def _worker(rank: int, world: int, ports: list[int], folder: str, resume: bool) -> None:
    torch.set_num_threads(1)
    subspaces.report.write_report = _summary_only
    results: dict[str, object] = {}
    root = Path(folder)
    quiet = dict(quiet=True, log=lambda m: None, threads=1, timeout_s=60)
    try:
        # 0. a check that fails on rank 1 only (its folder holds another run): every rank ends
        (root / f"busy{rank}").mkdir()
        if rank == 1:
            (root / "busy1" / "summary.json").write_text("{}")
        _as_torchrun(rank, world, ports[3])
        try:
            run_analyze(config(), root / f"busy{rank}", **quiet)
        except Exception as err:
            results["busy"] = [type(err).__name__, str(err)]
        results["busy_left"] = sorted(p.name for p in (root / "busy0").iterdir())
        gc.collect()  # the error's traceback held the failed run's frames (and its group)
        results["gloo_threads"] = [gloo_worker_threads()]
        # 1. a whole run; rank r writes into its own folder, so rank 1's must stay unmade
        _as_torchrun(rank, world, ports[0])
        s = run_analyze(config(), root / f"whole{rank}", **quiet)
        results["whole"] = _numbers(s)
        results["whole_files"] = sorted(s.get("files", {}))
        results["ranks"] = s["config"].get("ranks")
        results["initialized_after"] = dist.is_initialized()
        gc.collect()
        results["gloo_threads"].append(gloo_worker_threads())
        if not resume:
            results.update(_state_and_gradients(rank, world, ports[4]))
            return
        # 2. interrupted in epoch 2 (both ranks, after the epoch-1 checkpoint), then resumed
        real = analyze_train._evaluate
        calls = {"n": 0}

        def interrupt_in_epoch_2(*args, **kw):
            calls["n"] += 1
            if calls["n"] == 3:  # two evaluations per epoch: the 2nd epoch's first one
                raise KeyboardInterrupt
            return real(*args, **kw)

        analyze_train._evaluate = interrupt_in_epoch_2
        _as_torchrun(rank, world, ports[1])
        try:
            run_analyze(config(), root / "resumed", **quiet)
        except KeyboardInterrupt:
            results["interrupted"] = True
        finally:
            analyze_train._evaluate = real
        if dist.is_initialized():  # the run's finally destroys the group it made
            results["leaked_group"] = True
        _as_torchrun(rank, world, ports[2])
        s = run_analyze(config(), root / "resumed", resume=True, **quiet)
        results["resumed"] = _numbers(s)

    except BaseException:  # reported to the parent
        results["error"] = traceback.format_exc()
    finally:
        (root / f"rank{rank}.json").write_text(json.dumps(results))


def _state_and_gradients(rank: int, world: int, port: int) -> dict[str, object]:
    """Rank 0's parameters and buffers reach every rank; gradients are summed over the ranks."""
    _as_torchrun(rank, world, port)
    ctx, _ = _dist_context(True, "cpu", 60)
    try:
        torch.manual_seed(rank)  # different weights on every rank
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        model[1].running_mean += rank + 1.0
        _broadcast_state(ctx, model)
        state = {k: v.tolist() for k, v in model.state_dict().items()}
        model[1].running_var += rank + 1.0  # a forward on this rank changed its statistics
        _broadcast_state(ctx, model, buffers_only=True)
        running_var = model[1].running_var.tolist()
        for p in model.parameters():
            p.grad = torch.full_like(p, rank + 1.0)
        if rank == 1:
            model[0].bias.grad = None  # no gradient here: contributes zeros
        _sum_gradients(ctx, model, torch.device("cpu"))
        grads = {n: p.grad.tolist() for n, p in model.named_parameters()}
    finally:
        ctx.close()
    return {"state": state, "running_var": running_var, "grads": grads}


def _close(a: list[float | None], b: list[float | None]) -> bool:
    return len(a) == len(b) and all(
        (x is None and y is None)
        or (x is not None and y is not None and math.isclose(x, y, rel_tol=RTOL, abs_tol=RTOL))
        for x, y in zip(a, b, strict=True)
    )


def _spawn(tmp_path, resume):
    ports = [free_port() for _ in range(5)]
    mp.spawn(_worker, args=(2, ports, str(tmp_path), resume), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, res in enumerate(ranks):
        assert "error" not in res, f"rank {r}: {res['error']}"
    return ranks


def test_two_ranks_equal_one_process_and_only_rank0_writes(tmp_path, monkeypatch):
    ranks = _spawn(tmp_path, resume=False)
    monkeypatch.setattr(subspaces.report, "write_report", _summary_only)
    single = run_analyze(config(), tmp_path / "single", quiet=True, log=lambda m: None, threads=1)
    ref = _numbers(single)
    assert len(ref["eigenvalues"]) == 6 and ref["num_samples"] == [90, 90]
    # a check failing on rank 1 ends both ranks before anything is written
    assert ranks[1]["busy"][0] == "ValueError" and "holds another run" in ranks[1]["busy"][1]
    assert ranks[0]["busy"][0] == "RankFailedError" and "[1]" in ranks[0]["busy"][1]
    assert ranks[0]["busy_left"] == []
    for r, res in enumerate(ranks):
        assert res["ranks"] == 2 and res["initialized_after"] is False
        # each run's group ended with it, gloo's threads too: nothing may release a collective's
        # tensors while the interpreter exits (that aborted the process, SIGABRT, in CI)
        assert all(n in (0, None) for n in res["gloo_threads"]), (r, res["gloo_threads"])
        for key, values in ref.items():
            assert _close(res["whole"][key], values), (r, key, res["whole"][key], values)
    # identical on every rank, bit for bit (the all-reduced sums are the same numbers)
    assert ranks[0]["whole"] == ranks[1]["whole"]
    # only rank 0 writes: its folder has the run, rank 1's was never made
    assert ranks[0]["whole_files"] and not ranks[1]["whole_files"]
    assert (tmp_path / "whole0" / "summary.json").exists()
    assert (tmp_path / "whole0" / "checkpoint.pt").exists()
    assert not (tmp_path / "whole1").exists()
    # the pieces of a training step: rank 0's state everywhere, gradients summed over ranks
    assert ranks[0]["state"] == ranks[1]["state"]
    assert ranks[0]["state"]["1.running_mean"] == [1.0] * 4  # rank 0's (+ 1), not rank 1's
    assert ranks[0]["running_var"] == ranks[1]["running_var"] == [2.0] * 4
    for name, grad in ranks[1]["grads"].items():
        assert grad == ranks[0]["grads"][name]
        assert torch.tensor(grad).eq(1.0 if name == "0.bias" else 3.0).all(), name


@pytest.mark.slow
def test_two_ranks_resume_an_interrupted_run_exactly(tmp_path):
    ranks = _spawn(tmp_path, resume=True)
    for r, res in enumerate(ranks):
        assert res["interrupted"] and "leaked_group" not in res
        # the resumed 2-rank run continues the interrupted one to the uninterrupted numbers
        assert res["resumed"] == ranks[0]["whole"], r


def _fail_worker(rank: int, port: int, folder: str) -> None:
    """Rank 1 raises outside any collective (in the evaluation after epoch 1)."""
    torch.set_num_threads(1)
    subspaces.report.write_report = _summary_only
    if rank == 1:

        def fail(*args, **kw):
            raise RuntimeError("rank 1 failed")

        analyze_train._evaluate = fail
    _as_torchrun(rank, 2, port)
    t0 = time.perf_counter()
    result: list[object] = []
    try:
        run_analyze(
            config(),
            Path(folder) / f"fail{rank}",
            quiet=True,
            log=lambda m: None,
            threads=1,
            timeout_s=20,
        )
    except Exception as err:
        result = [type(err).__name__, str(err), time.perf_counter() - t0]
    (Path(folder) / f"fail{rank}.json").write_text(json.dumps(result))


@pytest.mark.slow
def test_a_rank_failing_outside_a_collective_ends_every_rank(tmp_path):
    mp.spawn(_fail_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    fail = [json.loads((tmp_path / f"fail{r}.json").read_text()) for r in range(2)]
    # rank 1 its own error; rank 0 fails in its next collective (the peer is gone, or the
    # 20 s timeout) instead of hanging
    assert fail[1][:2] == ["RuntimeError", "rank 1 failed"]
    assert fail[0] and fail[0][0] == "RuntimeError" and fail[0][2] < 60, fail[0]


def test_torchrun_environment_detection(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert not launched_by_torchrun()
    ctx, device = _dist_context(None, "cpu")
    assert not ctx.active and ctx.world == 1 and device == "cpu"
    with pytest.raises(ValueError, match="torchrun"):
        _dist_context(True, "cpu")
    with pytest.raises(TypeError, match="distributed"):
        _dist_context("yes", "cpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_s"):
        _dist_context(None, "cpu", timeout_s=0)
    env = {"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    with pytest.raises(ValueError, match="RANK=2"):
        launched_by_torchrun(env)
    with pytest.raises(ValueError, match="integers"):
        launched_by_torchrun({**env, "RANK": "x"})


def test_shards_partition_and_every_rank_gets_samples():
    idx = torch.randperm(25, generator=torch.Generator().manual_seed(0))
    parts = [_DistContext(rank=r, world=3).shard(idx) for r in range(3)]
    assert torch.equal(torch.cat(parts), idx) and [len(p) for p in parts] == [9, 8, 8]
    _check_shards(_DistContext(rank=0, world=2), 90, 25, 90)  # batches 25, 25, 25, 15
    with pytest.raises(ValueError, match=r"batch_size .* 1 samples, fewer than the 2 ranks"):
        _check_shards(_DistContext(rank=0, world=2), 91, 30, 91)  # last batch: 1 sample
    with pytest.raises(ValueError, match=r"curvature_samples .* 1 is fewer than the 2"):
        _check_shards(_DistContext(rank=0, world=2), 90, 30, 1)
