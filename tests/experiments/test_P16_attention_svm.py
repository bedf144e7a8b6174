"""P16: transformers as support vector machines (Tarzanagh et al. 2023): the fast run."""

from __future__ import annotations

from subspaces.experiments import get


def test_p16_fast_run() -> None:
    result = get("P16").run(True, 0)
    m = result.measured
    assert len(m["problems"]) == 3 and m["steps_w"] == 400 and m["steps_kq"] == 1000
    for p in m["problems"]:
        assert p["nuclear_gap"] < 1e-7 and abs(p["fro_gap"]) < 1e-12
        assert p["alpha_locally_optimal"]
        # the two SVM solutions are distinguishable, so the comparison means something
        assert p["corr_fro_nuc"] < 0.9
        # the correlation of W-GD with the Frobenius SVM grows along the run
        assert p["curve_w_fro"][-1] > p["curve_w_fro"][0]
        assert p["nuclear_rank"] <= p["fro_rank"]
    assert m["min_corr_w_fro"] >= 0.99
    assert m["mean"]["corr_kq_nuc"] > m["mean"]["corr_kq_fro"]
    assert m["all_selected_optimal"]
    assert result.passed, result.summary
    assert result.figures["correlation"].startswith(b"\x89PNG")
