"""P31: PA&DA vs SPOS supernets (parts fast, the fast run marked slow)."""

from __future__ import annotations

import numpy as np
import pytest

from subspaces.experiments import get
from subspaces.experiments.P31_pada_sampling import supernet_ranking


def test_supernet_ranking_scores_every_cell() -> None:
    archs = [(3, 1, 2, 3), (2, 3, 3, 2), (0, 0, 0, 0), (3, 3, 3, 0)]
    r = supernet_ranking("spos", 0, archs, epochs=2)
    assert r["scores"].shape == (4,) and np.isfinite(r["grad_variance"]) and r["seconds"] > 0
    # Cells whose output edge is `none` predict a constant; live cells learn above chance.
    assert r["scores"][2] < 0.15 and r["scores"][3] < 0.15
    assert max(r["scores"][:2]) > 0.3


@pytest.mark.slow
def test_p31_fast_run() -> None:
    result = get("P31").run(True, 0)
    m = result.measured
    assert m["architectures"] == 200 and len(m["per_seed"]["pada"]["kendall_tau"]) == 3
    assert result.passed == all(m["checks"].values())
    assert -1 <= m["kendall_tau"]["spos"]["mean"] <= 1
