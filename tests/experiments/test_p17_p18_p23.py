"""Quick tests of the pieces of P17, P18 and P23 (their fast runs are tested where marked slow)."""

from __future__ import annotations

import math

import pytest

from subspaces.experiments._lm import lm_data, lm_setting
from subspaces.experiments.P18_qgalore import train_variant


def test_p18_bytes_after_one_step_qgalore_below_fp32_galore() -> None:
    cfg = lm_setting(True)
    data = lm_data(20_000, cfg.seq_len, seed=0)
    rank = cfg.hidden // 4
    q = train_variant("qgalore_lazy", cfg, data, rank=rank, gap=10, steps=0, seed=0)
    f = train_variant("galore_fp32", cfg, data, rank=rank, gap=10, steps=0, seed=0)
    assert math.isnan(q["eval_loss"]) and q["refreshes"] > 0
    assert q["weight_values"] == f["weight_values"] > 0
    assert 1.0 <= q["weight_bytes"] / q["weight_values"] <= 1.05  # INT8 codes + group scales
    assert f["weight_bytes"] == 4 * f["weight_values"]
    assert 8 * q["proj_bytes"] / q["proj_values"] <= 4.5
    assert 8 * f["proj_bytes"] / f["proj_values"] == 32.0
    assert q["moment_bytes"] == f["moment_bytes"]  # both keep float32 moments
    with pytest.raises(ValueError, match="name"):
        train_variant("adamw", cfg, data, rank=rank, gap=10, steps=0, seed=0)


def test_p23_seed_summary_counts_unfitted_rates() -> None:
    from subspaces.experiments.P23_overparameterized_sensing import _summary

    s = _summary([4.0, math.nan, 2.0])
    assert s["n"] == 2 and s["not_finite"] == 1 and s["mean"] == pytest.approx(3.0)
    assert math.isnan(s["per_seed"][1]) and s["ci95"][0] <= 3.0 <= s["ci95"][1]
    empty = _summary([math.nan])
    assert empty["n"] == 0 and math.isnan(empty["mean"])


@pytest.mark.slow
def test_p23_fast_run_checks_every_seed() -> None:
    from subspaces.experiments import get

    r = get("P23").run(True, 0)
    m = r.measured
    assert len(m["seeds"]) == 3 and m["asymmetric_rate_ratio"]["n"] == 3
    assert set(r.headline) == {"asymmetric_rate_ratio", "rebalanced_rate_ratio"}
    assert r.passed == all(m["checks_every_seed"].values())
    assert m["checks_every_seed"] == {
        k: all(s["checks"][k] for s in m["seeds"]) for k in m["checks_every_seed"]
    }
    assert "passed" in m["old_criterion"]
