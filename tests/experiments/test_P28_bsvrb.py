"""P28: BSVRB iterations to a target hypergradient norm."""

from __future__ import annotations

import pytest
import torch

from subspaces.bilevel import MultiTaskRidge
from subspaces.experiments import get
from subspaces.experiments.P28_bsvrb import TARGET, iterations_to_target


def test_iterations_to_target_stops_at_the_target_or_the_cap() -> None:
    P = MultiTaskRidge.random(4, 3, 16, upper_reg=0.01, generator=torch.Generator().manual_seed(2))
    k, sec, its, norms, div = iterations_to_target(P, 4, 16, "msvr", seed=0, max_iters=300)
    assert its[-1] == k and sec > 0 and not div
    assert norms[-1] < TARGET * norms[0] and all(n >= TARGET * norms[0] for n in norms[:-1])
    k2, _, its2, _, div2 = iterations_to_target(P, 1, 1, "msvr", seed=0, max_iters=20)
    assert k2 == 20 and its2[-1] == 20 and not div2  # capped


@pytest.mark.slow
def test_p28_fast_run() -> None:
    result = get("P28").run(True, 0)
    m = result.measured
    assert set(m["iterations"]) == {"msvr_I2_B2", "msvr_I4_B8", "msvr_I16_B32", "plain_I2_B2"}
    assert m["iterations"]["msvr_I2_B2"]["n"] == 3
    assert set(m["checks"]) == {"monotone_in_I_B", "msvr_beats_plain"}
    assert set(m["diverged_runs"]) == set(m["iterations"])
    assert "hypergradient" in result.figures
