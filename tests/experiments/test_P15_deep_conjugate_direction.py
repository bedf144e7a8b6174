"""P15: deep conjugate direction method on 2-D Poisson with obstacles."""

from __future__ import annotations

import pytest
import torch

from subspaces.experiments import get
from subspaces.experiments.P15_deep_conjugate_direction import RTOL, geometry, solve_all
from subspaces.solvers import poisson_2d


def test_geometry_is_the_same_domain_at_every_resolution() -> None:
    coarse, fine = geometry(16, 3), geometry(32, 3)
    assert coarse.any() and fine.any()
    assert abs(float(coarse.float().mean()) - float(fine.float().mean())) < 0.05
    assert not torch.equal(geometry(16, 3), geometry(16, 4))


def test_solve_all_compares_solvers_on_the_same_systems() -> None:
    A = poisson_2d(10, obstacle=geometry(10, 0))
    B = torch.randn(A.n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dense = A.to_dense()
    oracle = solve_all(A, B, lambda r: torch.linalg.solve(dense, r))
    assert oracle["dcdm"] == [1, 1] and all(oracle["dcdm_converged"])
    identity = solve_all(A, B, lambda r: r)  # DCDM with the identity direction is CG
    assert all(abs(a - b) <= 1 for a, b in zip(identity["dcdm"], identity["cg"], strict=True))
    assert all(i <= c for i, c in zip(identity["ic0"], identity["cg"], strict=True))
    assert identity["history_cg"][0] == pytest.approx(1.0)
    assert identity["history_cg"][-1] <= RTOL


@pytest.mark.slow
def test_p15_fast_run() -> None:
    result = get("P15").run(True, 0)
    m = result.measured
    assert m["grid"] == 16 and m["zero_shot_grid"] == 32 and len(m["seeds"]) == 3
    assert set(m["checks"]) == {
        "all_dcdm_converged",
        "ratio_le_half_every_seed",
        "zero_shot_fewer_every_rhs",
        "zero_shot_interval_below_0",
        "training_cpu_le_300s",
    }
    assert result.passed == all(m["checks"].values())
    assert "residuals" in result.figures
