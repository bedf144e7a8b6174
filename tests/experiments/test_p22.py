"""P22: stability thresholds of GD and SGD (Wu & Su 2023) and the reproduction's fast run."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from subspaces.experiments import get
from subspaces.experiments.P22_stability_trace import (
    _sgd_step,
    _stacked,
    half_mse,
    hessian_trace_exact,
    make_model,
    sgd_trace_threshold,
    stability_quantities,
    stability_ratios,
)
from subspaces.testing import dense_hessian

DT = torch.float64


def test_thresholds_and_ratios() -> None:
    assert sgd_trace_threshold(0.1) == pytest.approx(20.0)
    assert sgd_trace_threshold(0.1, batch_size=8) == pytest.approx(160.0)
    r = stability_ratios(0.05, lambda_max=30.0, trace=50.0)
    assert r["gd"] == pytest.approx(0.75) and r["sgd"] == pytest.approx(1.25)
    assert stability_ratios(0.05, 30.0, 50.0, batch_size=2)["sgd"] == pytest.approx(0.625)
    with pytest.raises(ValueError):
        sgd_trace_threshold(0.0)
    with pytest.raises(ValueError):
        sgd_trace_threshold(0.1, batch_size=0)


def test_linear_model_closed_form() -> None:
    # f = w^T x, loss (1/2n) sum (f - y)^2: H = X^T X / n exactly, per-sample gradient x_i
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 6, generator=g, dtype=DT)
    y = torch.randn(30, generator=g, dtype=DT)
    model = nn.Linear(6, 1, bias=False).double()
    H = X.T @ X / 30
    q = stability_quantities(model, X, y, generator=torch.Generator().manual_seed(1))
    assert q["lambda_max"] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-9)
    assert q["trace_ggn"] == pytest.approx(float(H.trace()), rel=1e-12)
    assert q["grad_norm4_mean"] == pytest.approx(float((X.pow(2).sum(1) ** 2).mean()), rel=1e-12)
    assert hessian_trace_exact(model, X, y, block=4) == pytest.approx(float(H.trace()), rel=1e-12)
    assert q["loss"] == pytest.approx(float(half_mse(model(X).detach(), y)), rel=1e-12)


def test_relu_trace_identity_off_minimum() -> None:
    # for a two-layer ReLU net diag(grad^2 f) = 0, so tr H = mean ||grad f_i||^2 at any theta
    g = torch.Generator().manual_seed(3)
    X = torch.randn(9, 3, generator=g, dtype=DT)
    y = torch.randn(9, generator=g, dtype=DT)
    model = make_model(5, seed=4, d=3)
    H = dense_hessian(model, half_mse, [(X, y.reshape(-1, 1))], dtype=DT)
    q = stability_quantities(model, X, y, generator=torch.Generator().manual_seed(5))
    assert q["loss"] > 0.1  # far from a minimum: the residual term of H is not zero
    assert q["trace_ggn"] == pytest.approx(float(H.trace()), rel=1e-12)
    assert hessian_trace_exact(model, X, y, block=7) == pytest.approx(float(H.trace()), rel=1e-12)
    assert q["lambda_max"] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-8)


def test_manual_step_matches_autograd() -> None:
    g = torch.Generator().manual_seed(6)
    X = torch.randn(4, 3, generator=g, dtype=DT)
    y = torch.randn(4, generator=g, dtype=DT)
    model = make_model(7, seed=8, d=3)
    lrs = (0.1, 0.3)
    params = _stacked(model, len(lrs))
    residual = _sgd_step(params, X, y, torch.tensor(lrs, dtype=DT))
    loss = half_mse(model(X), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert torch.allclose(residual[0], model(X).detach().reshape(-1) - y)
    for e, lr in enumerate(lrs):
        expected = [
            (p.detach() - lr * gr).reshape(q[e].shape)
            for p, gr, q in zip(model.parameters(), grads, params, strict=True)
        ]
        for got, want in zip((q[e] for q in params), expected, strict=True):
            assert torch.allclose(got, want, atol=1e-14)


def test_mean_square_threshold_is_necessary() -> None:
    # the derivation: SGD(B=1) on H_i = x_i x_i^T is mean-square stable iff the spectral radius of
    # T = E[(I - eta H_i) (x) (I - eta H_i)] is <= 1; stability must imply eta tr H <= 2 and the
    # sharper eta E||x_i||^4 <= 2 tr H
    g = torch.Generator().manual_seed(9)
    X = torch.randn(6, 4, generator=g, dtype=DT) * torch.tensor([3.0, 1.0, 0.5, 0.2], dtype=DT)
    n, p = X.shape
    eye = torch.eye(p, dtype=DT)

    def radius(eta: float) -> float:
        T = sum(torch.kron(eye - eta * torch.outer(x, x), eye - eta * torch.outer(x, x)) for x in X)
        assert isinstance(T, torch.Tensor)
        return float(torch.linalg.eigvals(T / n).abs().max())

    lo, hi = 1e-6, 10.0
    for _ in range(60):  # the largest stable eta (radius is <= 1 below it)
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if radius(mid) <= 1 + 1e-12 else (lo, mid)
    eta_crit = lo
    tr = float((X**2).sum() / n)
    fourth = float((X.pow(2).sum(1) ** 2).mean())
    assert eta_crit <= sgd_trace_threshold(1.0) / tr * (1 + 1e-9)
    assert eta_crit * fourth / (2 * tr) <= 1 + 1e-9
    assert eta_crit <= 2 / float(torch.linalg.eigvalsh(X.T @ X / n)[-1])  # GD's bound too
    assert radius(1.01 * 2 / tr) > 1


def test_p22_fast_run() -> None:
    exp = get("P22")
    result = exp.run(True, 0)
    m = result.measured
    assert set(m["repeats"][0]) >= {"gd", "sgd", "trace_identity", "passed", "init"}
    rep = m["repeats"][0]
    assert [r["eta"] for r in rep["gd"]] == m["etas"] == [r["eta"] for r in rep["sgd"]]
    for opt in ("gd", "sgd"):
        for r in rep[opt]:
            assert r["status"] == "converged" and r["loss"] <= m["loss_tol"]
            assert math.isfinite(r["lambda_max"]) and r["trace"] > r["lambda_max"] > 0
            assert r["ratio_sgd_bound"] == pytest.approx(r["eta"] * r["trace"] / 2)
            assert r["ratio_gd_bound"] == pytest.approx(r["eta"] * r["lambda_max"] / 2)
    assert m["trace_identity"]["relative_error"] < 1e-8
    assert result.passed, result.summary
    assert all(r["ratio_sgd_bound"] <= 1.05 for r in rep["sgd"])
    assert any(r["ratio_sgd_bound"] > 1.05 for r in rep["gd"])
    assert result.figures["stability"].startswith(b"\x89PNG")
    assert "eta*tr/2" in result.summary
