"""P27: LV-HBA against the AID baseline on SVM hyperparameter learning."""

from __future__ import annotations

import pytest
import torch

from subspaces.experiments import get
from subspaces.experiments.P27_lv_hba import VIOLATION_TOL, make_problem, run_aid, run_lv_hba


def test_both_methods_lower_the_validation_loss_and_lv_hba_stays_feasible() -> None:
    P, c0, u0 = make_problem(1)
    lv = run_lv_hba(P, c0, u0, 0.4)
    aid = run_aid(P, c0, u0, 0.4)
    for r in (lv, aid):
        assert r.iterations >= 2 and min(r.history.upper) < r.history.upper[0]
        assert r.history.time[-1] >= 0.4
    assert max(lv.history.violation) < VIOLATION_TOL
    # recomputed from the returned y: feasible up to the rounding of its terms, whose size grows
    # with the iterations the time budget allows (|y| reaches 1e6): a dot product of d terms is
    # exact to d * eps * sum |terms| (Higham's gamma_d)
    w, b, xi = P.split(lv.y)
    terms = 1.0 + xi.abs() + P.Z_train.abs() @ w.abs() + b.abs()
    eps = torch.finfo(lv.y.dtype).eps
    tol = (P.Z_train.shape[1] + 3) * eps * float(terms.max())
    assert float(P.constraints(lv.x, lv.y).max()) <= tol
    lo, hi = P.c_bounds
    assert bool(((lv.x >= lo) & (lv.x <= hi)).all() and ((aid.x >= lo) & (aid.x <= hi)).all())


@pytest.mark.slow
def test_p27_fast_run() -> None:
    result = get("P27").run(True, 0)
    m = result.measured
    assert m["seeds"] == 3 and len(m["per_seed"]["lv_hba"]["val_end"]) == 3
    assert set(m["checks"]) == {"better_validation_loss", "violation_below_1e-4"}
    assert m["val_end_lv_hba_minus_aid"]["n"] == 3
    assert "validation" in result.figures
