"""P14: weight entanglement vs output mixing (parts fast, the fast run marked slow)."""

from __future__ import annotations

import pytest

from subspaces.experiments import get
from subspaces.experiments.P14_weight_entanglement import step_costs


def test_step_costs_measure_entangled_cheaper() -> None:
    c = step_costs(repeats=2)
    assert set(c) == {"entangled", "output"}
    # Output mixing keeps one output per candidate (9 per layer); entangled keeps one.
    assert c["entangled"]["peak_bytes"] < 0.5 * c["output"]["peak_bytes"]
    assert all(v["step_seconds"] > 0 for v in c.values())


@pytest.mark.slow
def test_p14_fast_run() -> None:
    result = get("P14").run(True, 0)
    m = result.measured
    assert m["memory_ratio"] < 1 and len(m["architectures"]["entangled_darts"]) == 3
    assert result.passed == all(m["checks"].values())
    assert "percentile_entangled_darts" in result.headline
