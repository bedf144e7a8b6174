"""Kendall tau-b against scipy; top-k regret by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kendalltau

from subspaces.nas.metrics import kendall_tau, top_k_regret


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kendall_tau_matches_scipy_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, 80).astype(float)  # many ties, as accuracies of 359 samples have
    b = a + rng.normal(0, 2, 80).round()
    assert kendall_tau(a, b) == pytest.approx(kendalltau(a, b).statistic, abs=1e-12)
    c = rng.normal(size=50)
    assert kendall_tau(c, c) == pytest.approx(1.0)
    assert kendall_tau(c, -c) == pytest.approx(-1.0)


def test_kendall_tau_errors() -> None:
    with pytest.raises(ValueError, match="one length"):
        kendall_tau([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        kendall_tau([1], [1])
    with pytest.raises(ValueError, match="finite"):
        kendall_tau([1, np.nan], [1, 2])
    assert np.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))


def test_top_k_regret() -> None:
    truth = [0.90, 0.95, 0.80, 0.99]
    scores = [4, 3, 2, 1]  # ranks the true best last
    assert top_k_regret(scores, truth, 1) == pytest.approx(0.09)
    assert top_k_regret(scores, truth, 2) == pytest.approx(0.04)
    assert top_k_regret(scores, truth, 4) == 0.0
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 4\]"):
        top_k_regret(scores, truth, 5)
