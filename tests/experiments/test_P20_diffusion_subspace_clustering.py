"""P20: diffusion models learn low-dimensional distributions via subspace clustering."""

from __future__ import annotations

import pytest

from subspaces.experiments import get
from subspaces.experiments.P20_diffusion_subspace_clustering import (
    DIM,
    THRESHOLD,
    recovery_trials,
    transition_point,
)


def test_recovery_trials_fail_below_and_succeed_above_the_dimension() -> None:
    # d = 2 in R^8: one sample per subspace cannot span it, six samples do.
    low = recovery_trials(1, 2, seed=0, ambient_dim=8, subspace_dim=2, steps=60)
    high = recovery_trials(6, 2, seed=1, ambient_dim=8, subspace_dim=2, steps=250)
    assert all(e > 0.5 for e in low)
    assert all(e < THRESHOLD for e in high)


def test_transition_point() -> None:
    assert transition_point([1, 2, 4], [0.0, 0.6, 1.0]) == 2
    assert transition_point([1, 2], [0.0, 0.4]) is None


@pytest.mark.slow
def test_p20_fast_run() -> None:
    result = get("P20").run(True, 0)
    m = result.measured
    assert m["predicted_transition"] == DIM and m["trials"] == 5
    assert set(m["recovered"]) == {str(n) for n in m["samples_per_subspace"]}
    assert "transition" in result.figures
