"""Tests for stochastic Lanczos quadrature (``subspaces.linalg.slq``)."""

import math

import pytest
import torch

from subspaces.linalg._random import random_matrix
from subspaces.linalg.slq import DensityResult, slq_density
from subspaces.linops import MatmatOperator
from subspaces.testing import (
    KnownSpectrumOperator,
    matrix_with_spectrum,
)

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rademacher(n: int, b: int, seed: int) -> torch.Tensor:
    return random_matrix(n, b, dtype=F64, generator=gen(seed), distribution="rademacher")


def wasserstein1(x1, w1, x2, w2) -> float:
    """W1 between two discrete probability measures on the line: integral of |F1 - F2|."""
    xs = torch.cat([x1, x2])
    order = torch.argsort(xs)
    cdf_gap = torch.cat([w1, -w2])[order].cumsum(0)
    return float((cdf_gap[:-1].abs() * xs[order].diff()).sum())


def test_moments_equal_hutchinson_and_are_unbiased():
    n, runs = 200, 30
    lam = torch.empty(n, dtype=F64).uniform_(-1.0, 3.0, generator=gen(0))
    A = matrix_with_spectrum(lam, generator=gen(1))
    Z = rademacher(n, runs, 2)
    res = slq_density(A, steps=10, probes=Z)
    # Gauss quadrature with k nodes is exact for degree <= 2k - 1, and |z|^2 = n for Rademacher
    # probes, so the first two moments equal Hutchinson's estimates on the same probes.
    hutch1 = ((Z * (A @ Z)).sum(0) / n).mean()
    hutch2 = ((A @ Z).pow(2).sum(0) / n).mean()
    assert torch.allclose(res.moments(1), hutch1, rtol=1e-12, atol=1e-12)
    assert torch.allclose(res.moments(2), hutch2, rtol=1e-12, atol=1e-12)
    assert torch.allclose(res.trace(), n * hutch1, rtol=1e-12)
    # Hutchinson with Rademacher probes: Var(z^T B z) = 2 (||B||_F^2 - sum_i B_ii^2), so the mean
    # of `runs` estimates of tr(B)/n has std sqrt(2 (...) / runs) / n. Tolerance: 4 std.
    for p, B in ((1, A), (2, A @ A)):
        var = 2 * (B.pow(2).sum() - torch.diagonal(B).pow(2).sum())
        std = math.sqrt(float(var) / runs) / n
        truth = float(torch.trace(B)) / n
        assert abs(float(res.moments(p)) - truth) <= 4 * std
    # The exactness holds for p = 0 and for the expectation/run_estimates helpers too.
    assert torch.allclose(res.moments(0), torch.tensor(1.0, dtype=F64))
    assert torch.allclose(res.run_estimates(lambda x: x).mean(), res.expectation(lambda x: x))


def test_internal_probes_match_explicit_probes():
    A = matrix_with_spectrum(torch.linspace(-1, 1, 40, dtype=F64), generator=gen(0))
    a = slq_density(A, 5, 12, generator=gen(3))
    b = slq_density(A, steps=12, probes=rademacher(40, 5, 3))
    assert torch.equal(a.nodes, b.nodes) and torch.equal(a.weights, b.weights)


def test_nodes_reproduce_exact_eigenvalues():
    distinct = torch.tensor([-2.0, -0.5, 1.0, 3.0, 7.5], dtype=F64)
    lam = distinct.repeat_interleave(12)  # n = 60, 5 distinct eigenvalues
    Qgen = gen(4)
    A = matrix_with_spectrum(lam, generator=Qgen)
    evals, evecs = torch.linalg.eigh(A)
    runs = 6
    Z = rademacher(60, runs, 5)
    res = slq_density(A, steps=20, probes=Z)
    # The Krylov space of every probe is 5-dimensional: all runs break down after 5 steps.
    assert res.nodes.shape == (runs, 5)
    assert res.num_steps.tolist() == [5] * runs
    assert res.num_matvecs == runs * 5
    assert torch.allclose(res.nodes, distinct.expand(runs, 5), atol=1e-10)
    # Weights are the probe's squared projections onto the eigenspaces.
    for i, mu in enumerate(distinct):
        P = evecs[:, (evals - mu).abs() < 1e-8]
        expected = (P.T @ Z).pow(2).sum(0) / Z.pow(2).sum(0)
        assert torch.allclose(res.weights[:, i], expected, atol=1e-10)


def test_wasserstein_distance_small_on_large_matrix():
    n, runs, steps = 1000, 10, 80
    # Hessian-like: an arcsine-law bulk on [-1, 2] and ten outliers in [5, 20].
    bulk = 0.5 + 1.5 * torch.cos(torch.linspace(0, math.pi, n - 10, dtype=F64))
    lam = torch.cat([bulk, torch.linspace(5, 20, 10, dtype=F64)])
    A = KnownSpectrumOperator(lam, reflections=6, generator=gen(7))
    res = slq_density(A, runs, steps, generator=gen(8), distribution="sphere")
    W = wasserstein1(
        res.nodes.reshape(-1),
        res.weights.reshape(-1) / runs,
        lam,
        torch.full((n,), 1.0 / n, dtype=F64),
    )
    spread = float(lam.max() - lam.min())
    # Chen, Trogdon, Ubaru (ICML 2021, Thm 1): with ceil(12/t + 1/2) Lanczos steps and
    # ceil(4 (n+2)^-1 t^-2 ln(2n/eta)) sphere probes, W1 <= t (lambda_max - lambda_min) with
    # probability >= 1 - eta. With 80 steps t = 12/79.5; check that 10 probes suffice at eta=1e-3.
    t = 12 / (steps - 0.5)
    assert math.ceil(4 / (n + 2) / t**2 * math.log(2 * n / 1e-3)) <= runs
    assert t * spread * 0.1 > W  # an order of magnitude inside the guaranteed bound
    # The spectral interval: extreme Ritz values lie inside and converge quickly.
    lo, hi = res.spectral_range
    assert float(lam.min()) - 1e-10 <= lo < float(lam.min()) + 0.02 * spread
    assert float(lam.max()) - 0.01 * spread < hi <= float(lam.max()) + 1e-10


def test_density_integrates_to_one():
    lam = torch.cat([torch.linspace(0, 1, 150, dtype=F64), torch.tensor([5.0, 9.0], dtype=F64)])
    A = matrix_with_spectrum(lam, generator=gen(9))
    res = slq_density(A, 8, 30, generator=gen(10))
    assert isinstance(res, DensityResult)
    assert torch.allclose(res.weights.sum(1), torch.ones(8, dtype=F64), atol=1e-12)
    assert bool((res.density >= 0).all())
    lo, hi = res.spectral_range
    assert res.sigma == pytest.approx(0.01 * (hi - lo))
    assert float(res.grid[0]) == pytest.approx(lo - 3 * res.sigma)
    assert float(res.grid[-1]) == pytest.approx(hi + 3 * res.sigma)
    # On the default grid the only missing mass is the Gaussian tails beyond 3 sigma of the
    # extreme nodes: at most P(|N(0,1)| > 3) / 2 = 0.00135 per side.
    integral = float(torch.trapezoid(res.density, res.grid))
    assert 1 - 2 * 0.00135 - 1e-6 <= integral <= 1 + 1e-6
    # On a grid covering 10 sigma beyond every node, with step sigma / 10, it is 1 to 1e-10.
    sigma = 0.05
    grid = torch.arange(lo - 10 * sigma, hi + 10 * sigma, sigma / 10, dtype=F64)
    res2 = slq_density(A, 8, 30, generator=gen(10), grid=grid, sigma=sigma)
    assert abs(float(torch.trapezoid(res2.density, res2.grid)) - 1) < 1e-10
    assert torch.equal(res2.nodes, res.nodes)


def test_lockstep_equals_separate_runs():
    n, runs = 80, 4
    A = matrix_with_spectrum(torch.linspace(-3, 2, n, dtype=F64) ** 3, generator=gen(11))
    Z = rademacher(n, runs, 12)
    grid = torch.linspace(-30, 10, 101, dtype=F64)
    together = slq_density(A, steps=25, probes=Z, grid=grid, sigma=0.5)
    densities = []
    for j in range(runs):
        alone = slq_density(A, steps=25, probes=Z[:, j : j + 1], grid=grid, sigma=0.5)
        assert torch.allclose(alone.nodes[0], together.nodes[j], atol=1e-10)
        assert torch.allclose(alone.weights[0], together.weights[j], atol=1e-10)
        densities.append(alone.density)
    assert torch.allclose(torch.stack(densities).mean(0), together.density, atol=1e-10)


def test_one_matmat_per_step():
    n, runs, steps = 50, 7, 15
    M = matrix_with_spectrum(torch.linspace(0, 1, n, dtype=F64), generator=gen(13))
    calls = []

    def mm(X):
        calls.append(X.shape[1])
        return M @ X

    op = MatmatOperator(mm, (n, n), F64, symmetric=True)
    res = slq_density(op, runs, steps, generator=gen(14))
    assert calls == [runs] * steps
    assert res.num_matvecs == runs * steps == sum(calls)
    assert res.nodes.shape == (runs, steps)


def test_breakdown_low_rank_and_steps_above_n():
    # n = 10 < steps = 40 and rank 3: every Krylov space has dimension <= 4.
    B = torch.randn(10, 3, dtype=F64, generator=gen(15))
    A = B @ B.T
    evals = torch.linalg.eigvalsh(A)
    Z = rademacher(10, 5, 16)
    res = slq_density(A, steps=40, probes=Z)
    assert res.nodes.shape[1] <= 4
    assert bool((res.num_steps <= 4).all())
    assert res.num_matvecs == 5 * res.nodes.shape[1]
    assert torch.allclose(res.weights.sum(1), torch.ones(5, dtype=F64), atol=1e-12)
    # Every node with weight is (to roundoff) an eigenvalue of A: no spurious nodes.
    live = res.weights > 1e-12
    gaps = (res.nodes[live].unsqueeze(1) - evals.unsqueeze(0)).abs().min(1).values
    assert float(gaps.max()) < 1e-8
    assert torch.allclose(res.moments(1), ((Z * (A @ Z)).sum(0) / 10).mean(), rtol=1e-10)
    assert bool(torch.isfinite(res.density).all())


def test_breakdown_at_different_steps_pads_with_zero_weight():
    lam = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 4.0], dtype=F64)
    A = matrix_with_spectrum(lam, generator=gen(17))
    _, V = torch.linalg.eigh(A)
    Z = torch.cat([V[:, -1:], rademacher(10, 2, 18)], dim=1)  # run 0 starts on an eigenvector
    res = slq_density(A, steps=40, probes=Z)
    assert res.num_steps[0] == 1 and res.num_steps[1:].tolist() == [4, 4]
    assert res.nodes.shape == (3, 4)
    assert torch.allclose(res.nodes[0, 0], torch.tensor(4.0, dtype=F64))
    assert torch.equal(res.weights[0, 1:], torch.zeros(3, dtype=F64))  # exactly zero
    assert torch.equal(res.nodes[0, 1:], res.nodes[0, :1].expand(3))
    assert res.spectral_range == pytest.approx((0.0, 4.0), abs=1e-10)


def test_full_rank_with_steps_capped_at_n():
    lam = torch.tensor([-1.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0], dtype=F64)
    A = matrix_with_spectrum(lam, generator=gen(19))
    res = slq_density(A, 3, 40, generator=gen(20))
    assert res.nodes.shape == (3, 10) and res.num_matvecs == 30
    assert torch.allclose(res.nodes, lam.expand(3, 10), atol=1e-9)


def test_float32_operator():
    lam = torch.linspace(0.0, 2.0, 100, dtype=torch.float32)
    A = matrix_with_spectrum(lam, generator=gen(21))
    res = slq_density(A, 4, 30, generator=gen(22))
    assert res.nodes.dtype == F64 and res.density.dtype == F64
    Z = rademacher(100, 4, 22).float()
    hutch = ((Z * (A @ Z)).sum(0) / 100).mean()
    assert abs(float(res.moments(1)) - float(hutch)) < 1e-5


def test_zero_and_identity_operators():
    res = slq_density(torch.zeros(5, 5, dtype=F64), 2, 10, generator=gen(23))
    assert res.nodes.shape == (2, 1) and torch.equal(res.nodes, torch.zeros(2, 1, dtype=F64))
    assert res.sigma == pytest.approx(0.01)
    res = slq_density(3 * torch.eye(6, dtype=F64), 2, 10, generator=gen(24))
    assert torch.allclose(res.nodes, torch.full((2, 1), 3.0, dtype=F64))
    assert res.sigma == pytest.approx(0.03)


def test_errors():
    A = torch.eye(4, dtype=F64)
    with pytest.raises(ValueError, match="square"):
        slq_density(torch.ones(3, 4, dtype=F64))
    with pytest.raises(ValueError, match="num_runs"):
        slq_density(A, num_runs=0)
    with pytest.raises(TypeError, match="steps"):
        slq_density(A, steps=2.5)
    with pytest.raises(ValueError, match="distribution"):
        slq_density(A, distribution="uniform")
    with pytest.raises(ValueError, match="sigma"):
        slq_density(A, sigma=-1.0)
    with pytest.raises(ValueError, match="probes"):
        slq_density(A, probes=torch.ones(3, 2, dtype=F64))
    with pytest.raises(ValueError, match="zero column"):
        slq_density(A, probes=torch.zeros(4, 1, dtype=F64))
    with pytest.raises(ValueError, match="grid"):
        slq_density(A, grid=torch.ones(2, 2, dtype=F64))
    with pytest.raises(ValueError, match="non-finite"):
        bad = MatmatOperator(lambda X: X * float("nan"), (4, 4), F64, symmetric=True)
        slq_density(bad, 2, 3)
    with pytest.raises(TypeError):
        slq_density([[1.0]])


def test_inputs_not_modified():
    A = matrix_with_spectrum(torch.linspace(0, 1, 20, dtype=F64), generator=gen(25))
    Z = rademacher(20, 3, 26)
    A0, Z0 = A.clone(), Z.clone()
    slq_density(A, steps=8, probes=Z)
    assert torch.equal(A, A0) and torch.equal(Z, Z0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_operator_runs_full_lanczos(dtype):
    # Regression: the breakdown tolerance 1e3 * eps(half) was >= 1, so every run "broke down"
    # after one step and the density was a single node per run.
    lam = torch.linspace(0.0, 2.0, 100, dtype=F64)
    A = matrix_with_spectrum(lam, generator=gen(23)).to(dtype)
    res = slq_density(A, 4, 30, generator=gen(24))
    assert bool((res.num_steps == 30).all())
    # the quadrature's first two moments match those of the half matrix's spectrum
    true = torch.linalg.eigvalsh(A.double())
    assert abs(float(res.moments(1)) - float(true.mean())) < 0.1
    assert float(res.nodes.min()) >= float(true.min()) - 0.05
    assert float(res.nodes.max()) <= float(true.max()) + 0.05


def test_meta_operator_is_rejected():
    with pytest.raises(ValueError, match="meta"):
        slq_density(torch.eye(5, device="meta"), 2, 3)
