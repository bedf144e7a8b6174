"""P02 (subspace rerouting vs output-loss token search): the fast reproduction run."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")


@pytest.mark.slow
def test_p02_fast_run() -> None:
    from subspaces.experiments import get

    result = get("P02").run(True, 0)
    m = result.measured
    assert m["model_label_accuracy"] > 0.9  # the toy refusal rule was learned
    assert 0 <= m["targeted_layer"] < m["num_layers"]
    assert len(m["trials"]) == 4
    for t in m["trials"]:
        assert t["initial_probe_refuse"]  # every trial starts in the refusal subspace
        for method in ("ssr", "output"):
            r = t[method]
            assert 0 <= r["steps"] <= m["max_steps"] and r["seconds"] >= 0
            assert set(r["final_tokens"]) <= set("abcdefghijklmnopqrstuvwxyz")
    s, o = m["stats"]["ssr"], m["stats"]["output"]
    expected = (
        s["success_rate"] >= o["success_rate"]
        and s["median_steps"] <= o["median_steps"]
        and s["median_seconds"] < o["median_seconds"]
    )
    assert result.passed == expected
    # the forward pass of rerouting stops at the targeted layer: each step is cheaper
    if m["targeted_layer"] < m["num_layers"] - 1:
        assert s["median_seconds_per_step"] < o["median_seconds_per_step"]
