"""P26: parameter selection and timing parts, and the fast run (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from subspaces.distributed.coding import GradientCodingScheme, simulate
from subspaces.experiments import get
from subspaces.experiments.P26_sequential_gradient_coding import (
    LATENCY,
    grid,
    make,
    select,
    total_time,
)


def test_grids_respect_the_schemes_constraints() -> None:
    assert all((W - 1) % B == 0 and W > B for B, W, _ in grid("SR-SGC"))
    assert all(W > B for B, W, _ in grid("M-SGC"))
    assert {p[0] for p in grid("GC")} == {1, 2, 3, 4}  # s >= 1: the paper's GC baseline
    assert make("SR-SGC", (1, 3, 2), 8, 5).T == 1 and make("GC", (2,), 8, 5).load == 3 / 8


def test_select_picks_the_fastest_and_total_time_is_the_simulated_time() -> None:
    n, jobs = 8, 12
    S = np.ones((n, jobs + 10))
    S[0, 3] = S[5, 7] = 6.0  # single stragglers: s = 1 suffices, larger s only costs load
    assert select("GC", n, jobs, S) == (1,)
    # no wait with s = 1: 12 rounds of 1 + 8 * (2 / 8) = 3, two of them stretched to 2 * 3
    assert total_time(GradientCodingScheme(n, 1, jobs), S) == pytest.approx(14 * 3.0)
    res = simulate(GradientCodingScheme(n, 1, jobs), S, latency=LATENCY)
    assert res.waits == 0 and res.stragglers.sum() == 2


@pytest.mark.slow
def test_p26_fast_run() -> None:
    result = get("P26").run(True, 0)
    m = result.measured
    assert m["n"] >= 16 and m["seeds"] == 3
    assert set(m["chosen_parameters"]) == {"GC", "SR-SGC", "M-SGC", "uncoded"}
    assert m["chosen_parameters"]["GC"][0] >= 1
    assert set(m["checks"]) == {"msgc_faster_than_gc", "msgc_lower_load", "runner_decodes_exactly"}
    assert len(m["total_time"]["GC"]["per_seed"]) == 3
    assert "runtime_load" in result.figures
