"""P09: the baselines and the rate check of the gradient-regularized Newton reproduction."""

from __future__ import annotations

import pytest
import torch

from subspaces.experiments import get
from subspaces.experiments.P09_gradient_regularized_newton import (
    _flat_loss,
    gradient_descent,
    iterations_to,
    lbfgs_iterations,
    linear_rate,
)

D = torch.float64


def _quadratic_like() -> tuple[object, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 3, generator=g, dtype=D)
    y = torch.randint(0, 2, (60,), generator=g)
    return _flat_loss(X, y, 2), torch.zeros(8, dtype=D)


def test_flat_loss_gradient_matches_finite_differences() -> None:
    f, w = _quadratic_like()
    w = w + 0.1
    _, g = f(w)  # type: ignore[operator]
    h = 1e-6
    for i in (0, 5, 7):
        e = torch.zeros_like(w)
        e[i] = h
        fd = (f(w + e)[0] - f(w - e)[0]) / (2 * h)  # type: ignore[operator]
        assert abs(fd - float(g[i])) < 1e-8


def test_baselines_reach_the_target_and_report_misses() -> None:
    f, w = _quadratic_like()
    target = 1e-6 * float(f(w)[1].norm())  # type: ignore[operator]
    gd = gradient_descent(f, w, target, 5000)
    lb = lbfgs_iterations(f, w, target, 500)
    assert 0 < lb < gd <= 5000  # L-BFGS needs fewer iterations than GD on a smooth problem
    assert gradient_descent(f, w, target, 3) == 4  # not reached: cap + 1
    assert lbfgs_iterations(f, w, 1e30, 10) == 0  # already there


def test_linear_rate_and_iterations_to() -> None:
    geometric = [0.5**k for k in range(30)]
    assert linear_rate(geometric, 29) and iterations_to(geometric, 0.5**20) == 20
    stalled = geometric[:10] + [geometric[9]] * 12 + geometric[10:]
    assert not linear_rate(stalled, len(stalled) - 1)
    assert iterations_to([1.0, 0.5], 0.1) == 1002


@pytest.mark.slow
def test_p09_fast_run() -> None:
    result = get("P09").run(True, 0)
    m = result.measured
    assert len(m["runs"]) == 3 and set(m["runs"][0]) == {"logistic", "softmax", "mlp"}
    assert isinstance(result.passed, bool) and "lbfgs" in result.summary
