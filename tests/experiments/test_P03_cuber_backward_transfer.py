"""P03: CUBER backward transfer on permuted digits: the pieces, and the fast run (slow)."""

from __future__ import annotations

import math

import pytest
import torch

from subspaces.experiments import get
from subspaces.experiments._common import single_thread
from subspaces.experiments.P03_cuber_backward_transfer import (
    METHODS,
    VARIANTS,
    load_digits,
    make_net,
    run_sequence,
    task_permutations,
)


def test_task_permutations():
    full = task_permutations("permuted", 3, pixels=576)
    part = task_permutations("correlated", 3, pixels=576)
    assert len(full) == len(part) == 10
    for perms in (full, part):
        assert torch.equal(perms[0], torch.arange(576))
        for p in perms:
            assert torch.equal(p.sort().values, torch.arange(576))  # a permutation
    moved = [int((p != torch.arange(576)).sum()) for p in part[1:]]
    assert all(0 < m <= round(0.2 * 576) for m in moved)
    assert all(int((p != torch.arange(576)).sum()) > 500 for p in full[1:])
    assert torch.equal(task_permutations("permuted", 3, pixels=576)[4], full[4])  # seeded
    with pytest.raises(ValueError, match="variant"):
        task_permutations("rotated", 0)


def test_data_and_net():
    Xtr, _, Xte, _ = load_digits(24, seed=0)
    assert Xtr.shape == (1438, 576) and Xte.shape == (359, 576) and Xtr.dtype == torch.float32
    X8 = load_digits(8, seed=0)[0]
    # bilinear resizing keeps the per-image mean of the standardized pixels (area preserving)
    assert float((Xtr.mean(1) - X8.mean(1)).abs().max()) < 1e-5
    net = make_net(0, 100, 576)
    assert all(p.ndim == 2 for p in net.parameters())  # no biases
    assert net(Xtr[:2]).shape == (2, 10)


def test_gpm_with_near_complete_memory_keeps_old_accuracies():
    # Thresholds near 1 store every direction with energy: old tasks' outputs cannot move, so
    # their test accuracies stay what they were (up to a float32 argmax tie on one image).
    near_one = {"0": 1 - 1e-9, "2": 1 - 1e-9, "4": 1 - 1e-9}
    with single_thread():
        out = run_sequence(
            "gpm", "permuted", 5, epochs=1, num_tasks=3, side=8, width=32, thresholds=near_one
        )
        naive = run_sequence("naive", "permuted", 5, epochs=1, num_tasks=3, side=8, width=32)
    R = out["matrix"]
    for j in range(2):
        for i in range(j + 1, 3):
            assert abs(R[i][j] - R[j][j]) <= 1 / 359 + 1e-12
    assert out["dim_ratios"][0]["0"] <= 1.0
    assert naive["matrix"][0] == R[0]  # same seed: same first task, before any projection


def test_cuber_sequence_runs_and_reports():
    with single_thread():
        out = run_sequence("cuber", "correlated", 1, epochs=1, num_tasks=3, side=8, width=32)
    assert len(out["matrix"]) == 3 and all(math.isfinite(v) for r in out["matrix"] for v in r)
    assert out["released"] >= 0 and out["scaled"] >= out["released"]
    assert len(out["dim_ratios"]) == 3
    with pytest.raises(ValueError, match="method"):
        run_sequence("ewc", "permuted", 0)


@pytest.mark.slow
def test_p03_fast_run():
    result = get("P03").run(True, 0)
    m = result.measured
    assert m["n_seeds"] == 3
    for v in VARIANTS:
        for method in METHODS:
            assert len(m["stats"][v][method]["bwt"]["per_seed"]) == 3
    assert set(m["checks"]) == {
        "naive_forgets",
        "gpm_no_forgetting",
        "gpm_acc_gain",
        "cuber_bwt_ge_gpm_permuted",
        "cuber_bwt_ge_gpm_correlated",
        "cuber_bwt_positive_correlated",
    }
    assert result.passed == all(m["checks"].values())
    assert "task0" in result.figures
