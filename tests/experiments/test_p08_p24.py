"""P08 (Hessian outliers) and P24 (batch size vs learning rate), and their shared helpers."""

from __future__ import annotations

import math

import pytest
import torch

from subspaces.experiments import ExperimentResult, get
from subspaces.experiments._common import (
    accuracy,
    load_digits_tensors,
    loglog_fit,
    mlp,
    single_thread,
    train,
)
from subspaces.experiments._stats import paired_summary, seed_summary
from subspaces.experiments.P08_hessian_outliers import (
    gaussian_mixture,
    separation_verdict,
    train_and_measure,
)
from subspaces.experiments.P24_batch_size_learning_rate import (
    batch_lambda_max,
    is_stable,
    lr_slope_criterion,
    max_stable_lr,
)


# ----- _common ----------------------------------------------------------------------------------
def test_load_digits_standardized_and_stratified() -> None:
    Xtr, ytr, Xte, yte = load_digits_tensors()
    assert Xtr.dtype == torch.float64 and ytr.dtype == torch.long
    assert Xtr.shape[0] + Xte.shape[0] == 1797 and Xtr.shape[1] == 64
    assert torch.allclose(Xtr.mean(0), torch.zeros(64, dtype=torch.float64), atol=1e-10)
    std = Xtr.std(0)
    assert torch.all(((std - 1).abs() < 1e-10) | (std < 1e-12))  # constant pixels stay 0
    assert ytr.bincount().min() > 100  # stratified: every class well represented
    assert ytr.unique().numel() == 10 and yte.unique().numel() == 10


def test_load_digits_classes_relabelled_whitened_and_seeded() -> None:
    Xtr, ytr, Xte, _ = load_digits_tensors([3, 8], whiten=True, seed=1)
    assert sorted(ytr.unique().tolist()) == [0, 1]
    cov = Xtr.T @ Xtr / (Xtr.shape[0] - 1)
    assert torch.allclose(cov, torch.eye(Xtr.shape[1], dtype=torch.float64), atol=1e-8)
    assert Xte.shape[1] == Xtr.shape[1] < 64
    again = load_digits_tensors([3, 8], whiten=True, seed=1)[0]
    other = load_digits_tensors([3, 8], whiten=True, seed=2)[0]
    assert torch.equal(Xtr, again) and not torch.equal(Xtr, other)
    with pytest.raises(ValueError):
        load_digits_tensors([3, 3])
    with pytest.raises(ValueError):
        load_digits_tensors(test_fraction=1.0)


def test_mlp_shape_seed_and_errors() -> None:
    net = mlp(10, 7, 3, depth=3, activation="tanh", seed=5)
    assert net(torch.randn(4, 10)).shape == (4, 3)
    assert sum(isinstance(m, torch.nn.Linear) for m in net.modules()) == 4
    a, b = mlp(10, 7, 3, seed=5), mlp(10, 7, 3, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    state = torch.random.get_rng_state()
    mlp(10, 7, 3, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # a seeded build leaves the RNG alone
    with pytest.raises(ValueError):
        mlp(10, 7, 3, activation="swish")
    with pytest.raises(ValueError):
        mlp(10, 0, 3)


def test_train_history_and_divergence() -> None:
    X, y = gaussian_mixture(3, 300, 8, 5.0, seed=0)
    net = mlp(8, 16, 3, seed=0).double()
    h = train(net, X, y, optimizer="sgd", lr=0.1, epochs=4, batch_size=32, seed=0)
    assert len(h["loss"]) == 4 and len(h["batch_loss"]) == h["steps"] == 4 * (300 // 32)
    assert h["final_loss"] < h["initial_loss"] and not h["diverged"]
    assert accuracy(net, X, y) == pytest.approx(h["accuracy"][-1])
    blow = mlp(8, 16, 3, seed=0).double()
    h = train(
        blow,
        X * 100,
        y,
        optimizer="sgd",
        lr=50.0,
        epochs=5,
        batch_size=None,
        seed=0,
        divergence_factor=2.0,
    )
    assert h["diverged"] and h["steps"] < 5
    with pytest.raises(ValueError):
        train(net, X, y, optimizer="rmsprop", lr=0.1, epochs=1, batch_size=8, seed=0)


def test_loglog_fit_and_single_thread() -> None:
    slope, icept = loglog_fit([2.0, 4.0, 8.0], [3.0 * 2**0.5, 6.0, 6.0 * 2**0.5])
    assert slope == pytest.approx(0.5) and math.exp(icept) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        loglog_fit([1.0, 2.0], [1.0, -1.0])
    before = torch.get_num_threads()
    with single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


# ----- quick smoke tests of the measurement functions --------------------------------------------
def test_p08_outliers_on_a_small_mixture() -> None:
    X, y = gaussian_mixture(3, 600, 8, 5.0, seed=0)
    m, model = train_and_measure(X, y, 3, 32, seed=0)
    assert not model.training
    assert len(m["eigenvalues"]) == 3 + 8 and m["eigenvalues"] == sorted(m["eigenvalues"])[::-1]
    assert m["all_converged"] and m["classes"] == 3
    assert m["num_params"] == (8 + 1) * 32 + (32 + 1) * 32 + (32 + 1) * 3
    assert m["num_outliers"] == 2 and m["gap_after_c_minus_1"] >= 1.5
    assert m["bulk_edge"] == m["eigenvalues"][2]


def _p08_run(classes: int, outliers: float, edge: float) -> dict:
    lam = [outliers] * (classes - 1) + [edge] * 9
    return {
        "classes": classes,
        "eigenvalues": lam,
        "num_outliers": classes - 1,
        "gap_after_c_minus_1": outliers / edge,
        "bulk_edge": edge,
        "outlier_mean": outliers,
    }


def _p08_seeds(data_bulk_factor: float) -> list[dict]:
    # widening: bulk edge x0.4, outliers ~x0.95; separation: outliers x0.4, bulk edge as given
    return [
        {
            "widths": [_p08_run(10, 10.0, 1.0), _p08_run(10, 9.4 + 0.1 * i, 0.4 + 0.01 * i)],
            "subsets": [_p08_run(3, 5.0, 1.0), _p08_run(5, 6.0, 1.0)],
            "separations": [
                _p08_run(10, 10.0, 1.0),
                _p08_run(10, 4.0 + 0.1 * i, data_bulk_factor * (1 + 0.01 * i)),
            ],
        }
        for i in range(3)
    ]


def test_p08_separation_verdict_needs_the_data_change_to_spare_the_bulk() -> None:
    ok = separation_verdict(_p08_seeds(0.9))
    assert all(ok["checks"].values()), ok["checks"]
    assert ok["measured"]["runs"] == ok["measured"]["runs_with_c_minus_1"] == 18
    # the case: the separation moves the bulk edge as much as the outliers (x0.27 vs
    # x0.33); the old criterion passed it, the separation criterion must not
    moved = separation_verdict(_p08_seeds(0.27))
    assert not moved["checks"]["data_moves_outliers_more_than_bulk"]
    assert moved["checks"]["data_moves_outliers_by_1_25"]  # the old half-check still holds
    diff = moved["measured"]["data_outliers_minus_bulk"]
    assert diff["n"] == 3 and diff["ci95"][1] < 0
    # one run with a wrong count fails the count check
    seeds = _p08_seeds(0.9)
    seeds[1]["subsets"][0]["num_outliers"] = 1
    assert not separation_verdict(seeds)["checks"]["counts_c_minus_1_every_run"]


def test_p24_batch_lambda_max_tiny() -> None:
    X, y = gaussian_mixture(3, 400, 8, 3.0, seed=1)
    net = mlp(8, 16, 3, seed=0).double()
    train(net, X, y, optimizer="sgd", lr=0.1, epochs=5, batch_size=32, seed=0)
    net.eval()
    out = batch_lambda_max(net, X, y, [4, 32, 256], 6, seed=0)
    assert out["batch_sizes"] == [4, 32, 256] and out["num_samples"] == 400
    assert all(len(v) == 6 for v in out["lambda_max"])
    # lambda_max(H_B) >= v^T H_B v for every sub-batch (Rayleigh), so the CV excess is >= 0
    for lams, rqs in zip(out["lambda_max"], out["rayleigh"], strict=True):
        assert all(lam >= rq - 1e-8 * abs(lam) for lam, rq in zip(lams, rqs, strict=True))
    assert min(out["excess_cv"]) >= 0
    assert out["excess_cv"][0] > out["excess_cv"][-1]  # small batches overstate more
    assert out["full"] > 0 and out["num_matvecs"] > 0


def test_p24_stability_search() -> None:
    lr, runs = max_stable_lr(lambda lr: lr <= 0.7, 0.01, bisections=8)
    assert 0.7 / 2 ** (1 / 2**8) <= lr <= 0.7 and runs == 1 + 7 + 8
    lr, _ = max_stable_lr(lambda lr: lr <= 0.7, 100.0, bisections=8)
    assert 0.7 / 2 ** (1 / 2**8) <= lr <= 0.7
    X, y = gaussian_mixture(3, 200, 8, 4.0, seed=0)

    def make() -> torch.nn.Module:
        return mlp(8, 16, 3, seed=0).double()

    for opt in ("sgd", "adam"):
        assert is_stable(make, X, y, optimizer=opt, lr=1e-3, batch_size=8, steps=30, seed=0)
        assert not is_stable(make, X, y, optimizer=opt, lr=1e3, batch_size=8, steps=30, seed=0)
    with pytest.raises(ValueError):
        is_stable(make, X, y, optimizer="lbfgs", lr=1.0, batch_size=8)


def test_p24_slope_criterion_separates_linear_from_square_root() -> None:
    def verdict(sgd: list[float], adam: list[float]) -> dict[str, bool]:
        return lr_slope_criterion(seed_summary(sgd), seed_summary(adam), paired_summary(sgd, adam))

    assert all(verdict([1.0, 0.9, 1.1], [0.5, 0.45, 0.55]).values())
    # a slope of 0.7 for both: it would have passed the old windows for both optimizers
    same = verdict([0.7, 0.72, 0.68], [0.7, 0.69, 0.71])
    assert not same["differ"] and not same["sgd_above_midpoint"]
    assert not same["adam_brackets_half"] and not same["sgd_brackets_1"]
    # SGD above Adam on average but not on every seed: the paired interval reaches below 0
    assert not verdict([0.9, 1.0, 0.4], [0.5, 0.45, 0.6])["differ"]
    # consistently different, but Adam at ~1 and SGD at ~2: neither brackets its exponent
    far = verdict([2.0, 2.05, 1.95], [1.0, 1.02, 0.98])
    assert far["differ"] and not far["sgd_brackets_1"] and not far["adam_brackets_half"]


# ----- the reproductions (fast settings) ---------------------------------------------------------
def _check_result(result: ExperimentResult, figures: set[str]) -> None:
    assert isinstance(result, ExperimentResult)
    assert set(result.figures) == figures
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in result.figures.values())
    assert result.summary


@pytest.mark.slow
def test_p08_fast_reproduces() -> None:
    result = get("P08").run(True, 0)
    _check_result(result, {"top_eigenvalues", "density"})
    m = result.measured
    assert [w["width"] for w in m["widths"]] == [32, 64, 128]
    assert [s["classes"] for s in m["subsets"]] == [3, 5]
    assert len(m["seeds"]) == 3 and [w["width"] for w in m["seeds"][1]["widths"]] == [32, 128]
    assert set(result.headline) == {"width_bulk_minus_outliers", "data_outliers_minus_bulk"}
    assert all(m[k]["n"] == 3 for k in result.headline)
    assert "passed" in m["old_criterion"]
    assert result.passed == all(m["checks"].values())


@pytest.mark.slow
def test_p24_fast_reproduces() -> None:
    result = get("P24").run(True, 0)
    _check_result(result, {"excess_vs_batch", "max_lr_vs_batch"})
    m = result.measured
    assert -1.3 <= m["excess_slope"] <= -0.7
    assert m["mean_lambda_max_above_full_for_every_B"]
    # per-seed slopes, paired by seed; the verdict is the new criterion, the old one is kept
    sgd, adam = m["sgd_lr_slope_seeds"], m["adam_lr_slope_seeds"]
    assert sgd["n"] == adam["n"] == m["lr_slope_difference"]["n"] >= 3
    diffs = [a - b for a, b in zip(sgd["per_seed"], adam["per_seed"], strict=True)]
    assert m["lr_slope_difference"]["per_seed"] == pytest.approx(diffs)
    assert set(result.headline) == {
        "lr_slope_difference",
        "sgd_lr_slope_seeds",
        "adam_lr_slope_seeds",
    }
    assert {"passed", "sgd_median_slope", "adam_median_slope"} <= set(m["old_criterion"])
    assert result.passed == (
        m["mean_lambda_max_above_full_for_every_B"]
        and m["excess_ok"]
        and all(m["lr_criterion"].values())
    )
