"""P06 reproduction: its parts (fast) and the fast run (slow)."""

from __future__ import annotations

import pytest
import torch

from subspaces.experiments import get
from subspaces.experiments.P06_decomposed_diffusion import (
    _first_below,
    make_problem,
    off_tangent_fraction,
)


def test_problem_and_off_tangent_fraction() -> None:
    prior, A, y, pm = make_problem(0)
    assert A.shape == (2 * int(A.mask.sum()), 32 * 32) and prior.rank == 20
    # noiseless, s0 = 0: the posterior mean reproduces the measurements
    assert float((A @ pm - y).norm() / y.norm()) < 1e-10
    frac, err = off_tangent_fraction(prior, A, y, pm, 1, num_steps=10)
    assert 0.0 < frac < 0.05  # measured 0.016 at T = 50 for this seed
    assert err < 1e-2
    # without the fully sampled centre the Krylov directions leave span(U) (measured ~0.7)
    frac_uniform, _ = off_tangent_fraction(*make_problem(0, center_fraction=0.0), 1, num_steps=10)
    assert frac_uniform > 0.2


def test_first_below() -> None:
    assert _first_below([5, 10, 20], [0.5, 5e-3, 1e-4]) == 10
    assert _first_below([5, 10], [0.5, 0.2]) is None


@pytest.mark.slow
def test_p06_fast_run_passes() -> None:
    result = get("P06").run(fast=True, seed=0)
    assert result.passed, result.summary
    per_seed = result.measured["per_seed"]
    assert len(per_seed) == 3
    assert all(r["dds_backward"] == 0 for r in per_seed)
    assert torch.isfinite(torch.tensor([r["dds_error"] for r in per_seed])).all()
