"""The torch.distributed runner: coded gradients from worker processes decode exactly; faults."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from subspaces.distributed.coding import GradientCodingScheme, MultiplexedSGC, simulate
from subspaces.distributed.coding.runner import run_local


def digits(m: int = 240) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    return torch.tensor(data.data[:m] / 16.0), torch.tensor(data.target[:m])


def test_gc_and_msgc_decode_the_uncoded_gradient_on_worker_processes() -> None:
    X, y = digits()
    n, jobs = 3, 4
    S = np.ones((n, jobs + 2))
    S[1, 1] = 8.0  # one straggler in round 1 (tolerated by both schemes)
    S[2, 3] = 8.0  # another, later, by another worker
    gc = GradientCodingScheme(n, 1, jobs=jobs, seed=3)
    ms = MultiplexedSGC(n, B=1, W=2, lam=1, jobs=jobs, seed=3)
    out = run_local([(gc, S), (ms, S)], X, y, mu=1.0, time_scale=1e-3, timeout=60.0)
    assert [r.scheme for r in out] == ["GC", "M-SGC"]
    for res in out:
        assert res.errors.shape == (jobs,) and np.all(np.isfinite(res.errors))
        assert res.errors.max() <= 1e-10, res  # float64 decoding: rounding level
        assert res.dropped > 0 and res.waits == 0  # stragglers' results were really dropped
    assert out[0].dropped == 2  # GC: one task per straggler
    for res, fresh in zip(
        out,
        (GradientCodingScheme(n, 1, jobs=jobs), MultiplexedSGC(n, B=1, W=2, lam=1, jobs=jobs)),
        strict=True,
    ):  # the master's decisions are the simulator's on the same slowdowns
        assert res.model_time == pytest.approx(simulate(fresh, S, mu=1.0).total_time, rel=1e-12)
    assert out[1].model_time < out[0].model_time  # M-SGC's lower load shows in the rounds


def test_a_rank_that_raises_stops_every_rank() -> None:
    X, y = digits(60)
    S = np.ones((2, 3))
    with pytest.raises(
        RuntimeError, match="rank 2: RuntimeError: injected failure on rank 2 in round 1"
    ) as info:
        run_local([(GradientCodingScheme(2, 1, jobs=3), S)], X, y, timeout=20.0, fail_at=(2, 1))
    assert "rank(s) failed" in str(info.value)


def test_bad_runner_input() -> None:
    X, y = digits(20)
    with pytest.raises(ValueError, match="runs is empty"):
        run_local([], X, y)
    runs = [(GradientCodingScheme(2, 1, jobs=1), np.ones((2, 1)))]
    with pytest.raises(ValueError, match="same n"):
        run_local([*runs, (GradientCodingScheme(3, 1, jobs=1), np.ones((3, 1)))], X, y)
    with pytest.raises(ValueError, match="float64"):
        run_local(runs, X.float(), y)
