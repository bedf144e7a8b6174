"""P21: AdAdaGrad adaptive batch sizes (the parts on a slice of digits; the fast run is slow)."""

from __future__ import annotations

import pytest
import torch

from subspaces.experiments import get
from subspaces.experiments._common import load_digits_tensors
from subspaces.experiments.P21_adaptive_batch_sizes import (
    LARGE,
    SMALL,
    Trace,
    compare,
    train_run,
)


def _slice(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    X, y, _, _ = load_digits_tensors(dtype=torch.float32, seed=0)
    return X[:n], y[:n]


def test_first_reaching() -> None:
    t = Trace(samples=[8, 16, 24], losses=[1.0, 0.5, 0.4], batch_sizes=[8, 8, 8])
    assert t.first_reaching(0.5) == 1 and t.first_reaching(0.1) is None


def test_runs_respect_budget_target_and_batch_rule() -> None:
    X, y = _slice()
    const = train_run(X, y, optimizer="adagrad", batch=SMALL, seed=0, budget=200)
    assert const.samples[-1] == 200 and set(const.batch_sizes) == {SMALL}
    adaptive = train_run(X, y, optimizer="adagrad_norm", batch=None, seed=0, budget=768)
    sizes, ends = adaptive.batch_sizes, adaptive.samples[1:]
    assert sizes[0] == SMALL and SMALL < adaptive.controller_batch <= LARGE
    # the batch never shrinks, except for the truncated last batch of an epoch of 256 samples
    assert all(b2 >= b1 for b1, b2, e in zip(sizes[:-1], sizes[1:], ends, strict=True) if e % 256)
    assert adaptive.test_gradients >= len(sizes)  # a test at every step, >= 2 samples each
    stopped = train_run(X, y, optimizer="adagrad", batch=SMALL, seed=0, budget=10**6, target=1.5)
    assert stopped.losses[-1] <= 1.5 < min(stopped.losses[:-1], default=2.0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        train_run(X, y, optimizer="sgd", batch=8, seed=0, budget=8)


def test_compare_targets_the_large_batch_loss() -> None:
    X, y = _slice(128)
    r = compare(X, y, optimizer="adagrad", seed=1, budget=1024, other_etas=(0.5,))
    assert r["target"] == r["large"]["trace"].losses[-1]
    assert r["large"]["samples"] <= 1024 and r["small"]["steps"] is not None
    assert r["small"]["trace"].losses[-1] <= r["target"]
    assert set(r["eta=0.5"]) == {"steps", "samples", "final_batch"}


@pytest.mark.slow
def test_p21_fast_run() -> None:
    result = get("P21").run(True, 0)
    m = result.measured
    assert len(m["seeds"]) == 3 and m["eta"] == 0.9
    for opt in ("adagrad_norm", "adagrad"):
        assert len(m[opt]["final_batch"]) == 3
        assert set(m["checks"]) >= {f"{opt}_batch_grows", f"{opt}_fewer_steps_than_small"}
    assert m["adagrad_log_adaptive_last_loss_over_target"]["n"] == 3
    assert "adaptive_batch" in result.figures
