"""Tests of the exact linear student-teacher dynamics and their random-matrix limit (P32)."""

import itertools
import math

import pytest
import torch
from scipy import integrate

from subspaces.dynamics import (
    ErrorCurves,
    MarchenkoPastur,
    StudentTeacher,
    asymptotic_test_error,
    closed_form_weights,
    decay_factors,
    error_curves,
    frozen_subspace_basis,
    frozen_subspace_drift,
    run_gradient_descent,
    student_teacher,
    theory_error_curves,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----- closed form == explicit gradient descent ---------------------------------------------------
@pytest.mark.parametrize(
    ("p_count", "n", "lr"),
    [
        (40, 80, 0.2),  # alpha = 0.5: a frozen subspace of dimension 40
        (120, 60, 0.3),  # alpha = 2, eta * lambda_max ~ 0.9
        (60, 60, 0.1),  # alpha = 1: tiny eigenvalues
        (150, 50, 0.5),  # eta * lambda_max > 1: the top modes oscillate in sign
    ],
)
def test_closed_form_matches_explicit_gradient_descent(p_count, n, lr):
    p = student_teacher(p_count, n, noise_std=0.5, init_std=1.0, generator=gen(p_count + n))
    steps, w_gd = run_gradient_descent(p, lr, 600, record_every=7)
    w_exact = closed_form_weights(p, steps, learning_rate=lr)
    assert steps[-1] == 600
    assert (w_gd - w_exact).abs().max() <= 1e-10
    curves = error_curves(p, steps, learning_rate=lr)
    assert torch.allclose(curves.test, p.test_error(w_gd), rtol=0, atol=1e-10)
    assert torch.allclose(curves.train, p.train_error(w_gd), rtol=0, atol=1e-10)


def test_gradient_flow_limits():
    p = student_teacher(30, 70, noise_std=0.3, init_std=2.0, generator=gen(1))
    w = closed_form_weights(p, [0.0, math.inf])
    assert torch.equal(w[0], p.init)
    # converged flow = the solution of X w = y closest to w_0
    expected = p.init + torch.linalg.pinv(p.inputs) @ (p.targets - p.inputs @ p.init)
    assert torch.allclose(w[1], expected, atol=1e-12)
    assert p.train_error(w[1]) < 1e-25  # P < N: interpolation
    # the flow solves dw/dt = -grad L: compare with a central difference
    t, h = 0.7, 1e-5
    wt = closed_form_weights(p, [t - h, t, t + h])
    grad = p.inputs.mT @ (p.inputs @ wt[1] - p.targets) / p.num_samples
    assert torch.allclose((wt[2] - wt[0]) / (2 * h), -grad, atol=1e-8)


def test_gradient_descent_with_small_steps_approaches_the_flow():
    p = student_teacher(80, 40, generator=gen(2))
    lr = 1e-3
    flow = error_curves(p, [0.5, 2.0]).test
    gd = error_curves(p, [500, 2000], learning_rate=lr).test
    assert torch.allclose(flow, gd, rtol=5e-3)


def test_error_curves_match_errors_of_the_weights():
    p = student_teacher(90, 45, noise_std=0.7, init_std=0.5, generator=gen(3))
    times = torch.tensor([0.0, 0.1, 1.0, 10.0, math.inf], dtype=torch.float64)
    curves = error_curves(p, times)
    w = closed_form_weights(p, times)
    assert torch.allclose(curves.test, p.test_error(w), rtol=1e-12)
    assert torch.allclose(curves.train, p.train_error(w), rtol=1e-10)
    assert curves.train[-1] < curves.train[0]


def test_decay_factors_values():
    lam = torch.tensor([0.0, 0.5, 1.5, 3.0], dtype=torch.float64)
    g = decay_factors(lam, [0.0, 2.0, math.inf])
    expected = torch.exp(-lam * 2.0)
    assert torch.equal(g[0], torch.ones(4, dtype=torch.float64))
    assert torch.allclose(g[1], expected)
    assert torch.equal(g[2], torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    g_gd = decay_factors(lam, [3, math.inf], learning_rate=0.5)
    assert torch.allclose(g_gd[0], (1 - 0.5 * lam) ** 3)
    assert torch.equal(g_gd[1], torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64))


# ----- Marchenko-Pastur ---------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.25, 0.5, 1.0, 2.0, 4.0])
def test_marchenko_pastur_integrates_to_one(alpha):
    mp = MarchenkoPastur(alpha)
    assert mp.point_mass == max(0.0, 1 - alpha)
    mass, _ = integrate.quad(
        lambda x: float(mp.pdf(torch.tensor(x, dtype=torch.float64))),
        mp.lower,
        mp.upper,
        limit=200,
    )
    assert abs(mass + mp.point_mass - 1.0) < 1e-8
    nodes, weights = mp.quadrature(2048)
    assert abs(float(weights.sum()) + mp.point_mass - 1.0) < 1e-12
    assert abs(float((weights * nodes).sum()) - 1.0) < 1e-12  # E[lambda] = tr(X^T X / P) / N = 1
    assert bool((nodes > mp.lower).all()) and bool((nodes < mp.upper).all())
    if alpha != 1.0:
        assert abs(float((weights / nodes).sum()) - mp.mean_inverse()) < 1e-9
    assert math.isinf(MarchenkoPastur(1.0).mean_inverse())


@pytest.mark.parametrize(("n", "alpha"), [(1200, 0.5), (600, 2.0)])
def test_marchenko_pastur_matches_a_large_wishart_matrix(n, alpha):
    p_count = round(alpha * n)
    X = torch.randn(p_count, n, dtype=torch.float64, generator=gen(4))
    s = torch.linalg.svdvals(X)
    eig = torch.cat([s.square() / p_count, torch.zeros(n - s.numel(), dtype=torch.float64)])
    mp = MarchenkoPastur(alpha)
    zero_fraction = float((eig < 1e-10).float().mean())
    assert abs(zero_fraction - mp.point_mass) < 1e-12
    edges = torch.linspace(mp.lower, mp.upper, 21, dtype=torch.float64)
    empirical = torch.histogram(eig[eig >= 1e-10], bins=edges).hist / n
    predicted = torch.tensor(
        [
            integrate.quad(lambda x: float(mp.pdf(torch.tensor(x, dtype=torch.float64))), a, b)[0]
            for a, b in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)
        ]
    )
    assert (empirical - predicted).abs().max() < 0.01
    assert abs(float(eig.max()) - mp.upper) < 0.15  # the edge, up to N^(-2/3) fluctuations


def test_theory_matches_simulation_and_its_own_limits():
    times = torch.logspace(-2, 3, 26, dtype=torch.float64)
    n, alpha, seeds = 150, 2.0, 8
    sims = [
        error_curves(student_teacher(round(alpha * n), n, generator=gen(10 + r)), times).test
        for r in range(seeds)
    ]
    theory = theory_error_curves(alpha, times, noise_std=0.5)
    rel = (torch.stack(sims).mean(0) - theory.test).abs() / theory.test
    assert rel.max() < 0.08
    # t = 0: the error of w_0 = 0; t -> inf: the exact limit
    start = theory_error_curves(0.5, [0.0, 1e7, math.inf], noise_std=0.5, init_std=1.0)
    assert abs(float(start.test[0]) - (1.0 + 1.0 + 0.25)) < 1e-12
    assert abs(float(start.train[0]) - (1.0 + 1.0 + 0.25)) < 1e-12
    assert abs(float(start.test[1]) - float(start.test[2])) < 1e-6
    assert float(start.test[2]) == asymptotic_test_error(0.5, noise_std=0.5, init_std=1.0)
    # discrete-time theory approaches the flow for small steps
    flow = theory_error_curves(1.0, [1.0, 5.0]).test
    gd = theory_error_curves(1.0, [1000, 5000], learning_rate=1e-3).test
    assert torch.allclose(flow, gd, rtol=2e-3)


def test_asymptotic_error_is_classical_least_squares():
    # alpha > 1: sigma^2 alpha / (alpha - 1); alpha < 1: bias (1 - alpha) + sigma^2 / (1 - alpha)
    assert asymptotic_test_error(3.0, noise_std=1.0) == pytest.approx(1.5)
    assert asymptotic_test_error(0.5, noise_std=1.0) == pytest.approx(0.5 + 2.0)
    assert asymptotic_test_error(0.5, noise_std=0.0, init_std=2.0) == pytest.approx(2.5)
    assert math.isinf(asymptotic_test_error(1.0))
    assert asymptotic_test_error(1.0, noise_std=0.0) == 0.0  # noiseless: exact recovery


# ----- the frozen subspace ------------------------------------------------------------------------
def test_frozen_subspace_drift_is_at_machine_precision():
    p = student_teacher(50, 120, noise_std=0.5, init_std=3.0, generator=gen(5))
    B = frozen_subspace_basis(p.inputs)
    assert B.shape == (120, 70)
    assert torch.allclose(B.mT @ B, torch.eye(70, dtype=torch.float64), atol=1e-13)
    assert (p.inputs @ B).abs().max() < 1e-12
    _, w = run_gradient_descent(p, 0.3, 3000, record_every=100)
    drift = frozen_subspace_drift(p.inputs, p.init, w)
    assert drift.shape == (w.shape[0],)
    assert drift.max() < 1e-13
    assert (w[-1] - p.init).norm() > 0.5  # the weights did move, elsewhere
    flow = closed_form_weights(p, torch.logspace(-2, 6, 9, dtype=torch.float64))
    assert frozen_subspace_drift(p.inputs, p.init, flow).max() < 1e-13
    assert frozen_subspace_basis(torch.randn(80, 40, dtype=torch.float64)).shape == (40, 0)


def test_converged_error_grows_with_initial_variance_below_alpha_one():
    errors = []
    for s0 in (0.0, 1.0, 2.0, 4.0):
        runs = [
            float(
                error_curves(
                    student_teacher(60, 120, init_std=s0, generator=gen(20 + r)), [math.inf]
                ).test[0]
            )
            for r in range(6)
        ]
        errors.append(sum(runs) / len(runs))
    assert all(b > a for a, b in itertools.pairwise(errors))
    slope = (errors[-1] - errors[0]) / 16.0
    assert slope == pytest.approx(0.5, rel=0.15)  # theory: 1 - alpha
    # above alpha = 1 there is no frozen subspace: the init is forgotten
    above = [
        float(
            error_curves(
                student_teacher(180, 120, init_std=s0, generator=gen(30)), [math.inf]
            ).test[0]
        )
        for s0 in (0.0, 4.0)
    ]
    assert above[0] == pytest.approx(above[1], rel=1e-9)


# ----- the overtraining peak ----------------------------------------------------------------------
def test_converged_error_peaks_at_alpha_one_and_early_stopping_removes_it():
    n, seeds = 100, 5
    alphas = (0.5, 0.8, 0.9, 1.0, 1.1, 1.25, 2.0)
    times = torch.cat(
        [
            torch.logspace(-2, 3, 51, dtype=torch.float64),
            torch.tensor([math.inf], dtype=torch.float64),
        ]
    )
    converged, early = [], []
    for i, alpha in enumerate(alphas):
        curves = torch.stack(
            [
                error_curves(
                    student_teacher(round(alpha * n), n, generator=gen(100 * i + r)), times
                ).test
                for r in range(seeds)
            ]
        ).mean(0)
        converged.append(float(curves[-1]))
        early.append(float(curves[:-1].min()))
    peak = alphas[max(range(len(alphas)), key=lambda j: converged[j])]
    assert 0.8 <= peak <= 1.25
    assert peak == 1.0
    one = alphas.index(1.0)
    assert early[one] < 0.5 * converged[one]
    assert max(early[1:6]) <= early[1] * 1.02  # no peak once stopped early
    # and in theory
    th = [asymptotic_test_error(a) for a in (0.9, 0.99, 1.01, 1.1)]
    assert th[1] > th[0] and th[2] > th[3]
    curve = ErrorCurves(times, times, torch.tensor([2.0, 0.5, 1.0] + [3.0] * 49))
    assert curve.optimal_stopping() == (float(times[1]), 0.5)


# ----- bad inputs ---------------------------------------------------------------------------------
def test_bad_inputs_raise():
    p = student_teacher(10, 5, generator=gen(0))
    with pytest.raises(ValueError, match="num_samples"):
        student_teacher(0, 5)
    with pytest.raises(TypeError, match="num_features"):
        student_teacher(10, 5.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise_std"):
        student_teacher(10, 5, noise_std=-1.0)
    with pytest.raises(ValueError, match="init_std"):
        student_teacher(10, 5, init_std=math.nan)
    with pytest.raises(TypeError, match="generator"):
        student_teacher(10, 5, generator=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="targets"):
        StudentTeacher(p.inputs, p.targets[:3], p.teacher, p.init, 0.5)
    with pytest.raises(TypeError, match="inputs"):
        StudentTeacher(p.inputs.long(), p.targets, p.teacher, p.init, 0.5)
    with pytest.raises(ValueError, match="init"):
        StudentTeacher(p.inputs, p.targets, p.teacher, p.init * math.inf, 0.5)
    with pytest.raises(ValueError, match="weights"):
        p.test_error(torch.zeros(4))
    with pytest.raises(TypeError, match="problem"):
        error_curves(p.inputs, [1.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="times"):
        error_curves(p, [-1.0])
    with pytest.raises(ValueError, match="whole numbers"):
        error_curves(p, [1.5], learning_rate=0.1)
    with pytest.raises(TypeError, match="times"):
        error_curves(p, "1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="times"):
        error_curves(p, [])
    with pytest.raises(ValueError, match="learning_rate"):
        closed_form_weights(p, [1], learning_rate=0.0)
    with pytest.raises(ValueError, match="learning_rate=100"):
        error_curves(p, [math.inf], learning_rate=100.0)
    with pytest.raises(ValueError, match="diverged"):
        run_gradient_descent(p, 1e3, 2000)
    with pytest.raises(ValueError, match="num_steps"):
        run_gradient_descent(p, 0.1, -1)
    with pytest.raises(ValueError, match="record_every"):
        run_gradient_descent(p, 0.1, 10, record_every=0)
    with pytest.raises(ValueError, match="eigenvalues"):
        decay_factors(torch.tensor([-1.0]), [1.0])
    with pytest.raises(ValueError, match="alpha"):
        MarchenkoPastur(0.0)
    with pytest.raises(TypeError, match="alpha"):
        theory_error_curves("2", [1.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_nodes"):
        MarchenkoPastur(2.0).quadrature(0)
    with pytest.raises(ValueError, match="init and weights"):
        frozen_subspace_drift(p.inputs, p.init, torch.zeros(3, dtype=torch.float64))


# ----- the registered reproduction ----------------------------------------------------------------
def test_p32_reproduction_fast_passes():
    from subspaces.experiments import get

    result = get("P32").run(True, 0)
    assert result.passed, result.summary
    m = result.measured
    assert m["curve_max_relative_deviation_checked"] < 0.10
    assert m["peak_alpha"] == 1.0
    assert m["frozen_drift_gradient_descent"] < 1e-10
    assert m["closed_form_vs_gd_max_weight_diff"] < 1e-10
    assert set(result.figures) == {"curves", "alpha"}
    assert all(png.startswith(b"\x89PNG") for png in result.figures.values())
