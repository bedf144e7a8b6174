"""P16: transformers as support vector machines (Tarzanagh et al. 2023): parts and the fast run."""

from __future__ import annotations

import pytest
import torch

from subspaces.experiments import get
from subspaces.experiments.P16_attention_svm import (
    _path_checks,
    _seeded,
    path_problem,
    top_score_gap,
)


def test_top_score_gap_is_the_smallest_margin_between_the_two_best_tokens():
    scores = torch.tensor([[0.3, 0.9, 0.1], [0.2, -0.5, 0.26]], dtype=torch.float64)
    assert top_score_gap(scores) == pytest.approx(0.06, abs=1e-15)


def test_path_problem_converges_towards_each_svm_and_the_checks_read_it():
    p = path_problem(_seeded(0, 100), 16)
    assert p["multiples"] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert max(p["fro_path_kkt"] + p["nuc_path_kkt"]) <= 1e-6
    assert p["nuclear_gap"] < 1e-7 and p["corr_fro_nuc"] < 0.9  # two distinguishable targets
    # each path moves towards its own SVM and ends closer to it than to the other one
    assert p["fro_path_corr_fro"][-1] > p["fro_path_corr_fro"][0]
    assert p["nuc_path_corr_nuc"][-1] > p["nuc_path_corr_nuc"][0]
    assert p["fro_path_corr_fro"][-1] > p["fro_path_corr_nuc"][-1]
    assert p["nuc_path_corr_nuc"][-1] > p["nuc_path_corr_fro"][-1]
    checks = _path_checks(p)
    assert checks["certified"] and checks["approaching"]
    swapped = dict(
        p, nuc_path_corr_nuc=p["nuc_path_corr_fro"], nuc_path_corr_fro=p["nuc_path_corr_nuc"]
    )
    assert not _path_checks(swapped)["nuc_path_to_nuc_svm"]


@pytest.mark.slow
def test_p16_fast_run() -> None:
    result = get("P16").run(True, 0)
    m = result.measured
    assert len(m["problems"]) == 3 and m["max_multiple"] == 32
    assert all(p["top_score_gap"] >= 0.05 for p in m["problems"])
    assert all(s["top_score_gap"] < 0.05 for s in m["skipped_near_ties"])
    assert result.passed == all(all(c.values()) for c in m["checks"])
    assert result.headline == ("kq_path_nuc_minus_fro", "w_path_fro_minus_nuc")
    old = m["old_criterion"]
    assert len(old["problems"]) == 3
    assert old["passed"] == (all(old["w_criterion_holds"]) and all(old["kq_nuclear_wins"]))
    assert result.figures["correlation"].startswith(b"\x89PNG")
