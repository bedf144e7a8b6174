"""CurvatureTracker: exact values on a quadratic model, warm start, records, checkpoints."""

import io

import pytest
import torch
from torch import nn

from subspaces.curvature import HessianOperator, top_eigen
from subspaces.dynamics import CurvatureTracker

F64 = torch.float64


def gen(s):
    return torch.Generator().manual_seed(s)


def digits_like(n=256, d=16, c=4, seed=0):
    X = torch.randn(n, d, generator=gen(seed), dtype=F64)
    W = torch.randn(d, c, generator=gen(seed + 1), dtype=F64)
    y = (X @ W).argmax(1)
    return X, y


def test_linear_regression_values_are_exact():
    X = torch.randn(50, 3, generator=gen(0), dtype=F64)
    y = torch.randn(50, 1, generator=gen(1), dtype=F64)
    model = nn.Linear(3, 1).double()
    tr = CurvatureTracker(
        model,
        "mse",
        [(X[:20], y[:20]), (X[20:], y[20:])],
        lr=0.5,
        every=1,
        k=2,
        trace_rtol=1e-3,
        trace_max_matvecs=4000,
        generator=gen(2),
    )
    rec = tr.step(0, batch=(X[:10], y[:10]))
    Xa = torch.cat([X, torch.ones(50, 1, dtype=F64)], 1)
    H = 2 * Xa.T @ Xa / 50
    lam = torch.linalg.eigvalsh(H)
    assert rec["lambda_max"] == pytest.approx(float(lam[-1]), rel=1e-6)
    assert rec["eta_lambda_over_2"] == pytest.approx(0.5 * float(lam[-1]) / 2, rel=1e-6)
    assert rec["trace"] == pytest.approx(float(H.trace()), abs=4 * rec["trace_stderr"] + 1e-9)
    Xb = torch.cat([X[:10], torch.ones(10, 1, dtype=F64)], 1)
    assert rec["batch_lambda_max"] == pytest.approx(
        float(torch.linalg.eigvalsh(2 * Xb.T @ Xb / 10)[-1]), rel=1e-6
    )
    # the gradient fraction in the top-2 eigenspace, computed independently
    model.zero_grad()
    nn.functional.mse_loss(model(X), y).backward()
    g = torch.cat([model.weight.grad.flatten(), model.bias.grad])
    V = torch.linalg.eigh(H)[1][:, -2:]
    assert rec["grad_fraction"] == pytest.approx(
        float((V.T @ g).norm() ** 2 / g.norm() ** 2), rel=1e-5
    )
    assert rec["num_samples"] == 50 and rec["overlap_prev"] is None


def train_steps(model, X, y, steps, lr=0.1, seed=0):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = gen(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (32,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
        opt.step()


def test_warm_start_uses_fewer_matvecs_than_cold_at_equal_accuracy():
    X, y = digits_like()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 24), nn.Tanh(), nn.Linear(24, 4)).double()
    train_steps(model, X, y, 200)
    data = [(X, y)]
    tracker = CurvatureTracker(
        model,
        "cross_entropy",
        data,
        lr=0.1,
        every=1,
        k=3,
        eig_rtol=1e-4,
        trace_rtol=None,
        generator=gen(5),
    )
    tracker.measure(0)
    warm_mv, cold_mv = [], []
    for step in range(1, 4):
        train_steps(model, X, y, 20, seed=step)
        rec = tracker.measure(step)
        assert rec["warm_start"] and rec["converged"]
        # the tracker's own solver (top_eigen, same guards), started cold
        cold = top_eigen(
            HessianOperator(model, "cross_entropy", data), 3, rtol=1e-4, generator=gen(10 + step)
        )
        assert cold.all_converged
        torch.testing.assert_close(
            torch.tensor(rec["eigenvalues"], dtype=F64),
            cold.eigenvalues,
            rtol=0,
            atol=2e-4 * float(cold.eigenvalues[0]),
        )
        warm_mv.append(rec["eig_matvecs"])
        cold_mv.append(cold.num_matvecs)
        assert 0.0 <= rec["overlap_prev"] <= 1.0 + 1e-12
    assert sum(warm_mv) < sum(cold_mv), (warm_mv, cold_mv)


def test_reads_lr_from_optimizer_and_state_dict_round_trip():
    X, y = digits_like(64)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    tr = CurvatureTracker(
        model,
        "cross_entropy",
        [(X, y)],
        optimizer=opt,
        every=5,
        k=2,
        trace_rtol=0.2,
        generator=gen(0),
    )
    assert tr.step(3) is None
    rec = tr.step(5)
    assert rec["lr"] == 0.3
    buf = io.BytesIO()
    torch.save(tr.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    tr2 = CurvatureTracker(model, "cross_entropy", [(X, y)], lr=0.3, k=2, generator=gen(0))
    tr2.load_state_dict(state)
    assert tr2.records == tr.records
    assert tr2.subspace.distance(tr.subspace) < 1e-12


def test_model_mode_is_restored_and_bad_arguments():
    X, y = digits_like(32)
    model = nn.Sequential(nn.Linear(16, 8), nn.Dropout(0.5), nn.Linear(8, 4)).double()
    model.train()
    tr = CurvatureTracker(model, "cross_entropy", [(X, y)], lr=0.1, every=1, k=2, trace_rtol=None)
    tr.step(0)
    assert model.training and model[1].training
    with pytest.raises(ValueError, match="lr="):
        CurvatureTracker(model, "cross_entropy", [(X, y)])
    with pytest.raises(ValueError, match="every"):
        CurvatureTracker(model, "cross_entropy", [(X, y)], lr=0.1, every=0)
    with pytest.raises(ValueError, match="operator"):
        CurvatureTracker(model, "cross_entropy", [(X, y)], lr=0.1, operator="fisher")


def test_log_history_and_products_per_measure():
    X, y = digits_like(64)
    model = nn.Sequential(nn.Linear(16, 6), nn.Tanh(), nn.Linear(6, 4)).double()
    tr = CurvatureTracker(
        model,
        "cross_entropy",
        [(X[:32], y[:32]), (X[32:], y[32:])],
        lr=0.1,
        every=2,
        k=2,
        trace_max_matvecs=40,
        generator=gen(0),
    )
    assert tr.products_per_measure() == 3 * (2 + 2) + 10 + 40 + 25  # the estimate before any
    rec = tr.step(0, batch=(X[:8], y[:8]))
    assert tr.products_per_measure() == rec["matvecs"]  # then the last measurement's count
    tr.log(0, train_loss=torch.tensor(1.5, dtype=F64), test_acc=0.25)
    tr.log(1, train_loss=1.25)
    assert tr.history == [
        {"step": 0, "train_loss": 1.5, "test_acc": 0.25},
        {"step": 1, "train_loss": 1.25},
    ]
    with pytest.raises(TypeError, match="train_loss must be a number"):
        tr.log(2, train_loss="low")
    buf = io.BytesIO()
    torch.save(tr.state_dict(), buf)
    buf.seek(0)
    other = CurvatureTracker(model, "cross_entropy", [(X, y)], lr=0.1, every=2, k=2)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other.history == tr.history and len(other.records) == 1


def test_finish_measures_at_the_last_step_once():
    """Every series ends at the last training step, not at the last multiple of ``every``."""
    X = torch.randn(40, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.randn(40, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    model = nn.Linear(3, 1).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tracker = CurvatureTracker(
        model, "mse", [(X, y)], optimizer=opt, every=4, k=2, generator=torch.Generator()
    )
    for step in range(10):
        tracker.step(step)
        opt.zero_grad()
        ((model(X) - y) ** 2).mean().backward()
        opt.step()
    assert [r["step"] for r in tracker.records] == [0, 4, 8]
    last = tracker.finish(10)
    assert last is not None and [r["step"] for r in tracker.records] == [0, 4, 8, 10]
    for key in ("grad_fraction", "overlap_prev", "lambda_max"):
        assert last[key] is not None and last[key] == last[key], key  # measured, not NaN
    assert tracker.finish(10) is None and tracker.finish(9) is None  # already there
    assert len(tracker.records) == 4
