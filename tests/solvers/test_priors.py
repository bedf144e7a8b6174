"""Closed-form Tweedie denoisers and posterior means (P06) vs dense formulas and Monte Carlo."""

from __future__ import annotations

import math

import pytest
import torch

from subspaces.solvers import (
    GaussianMixturePrior,
    LowRankGaussianPrior,
    alphas_bar,
    betas,
    timesteps,
)

F64 = torch.float64


def random_prior(n: int, k: int, s0: float, seed: int = 0) -> LowRankGaussianPrior:
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=F64)).Q
    lam = torch.rand(k, generator=g, dtype=F64) * 3 + 0.5
    mu = torch.randn(n, generator=g, dtype=F64)
    return LowRankGaussianPrior(mu, U, lam, noise_std=s0)


def wiener(mu: torch.Tensor, cov: torch.Tensor, x: torch.Tensor, a: float) -> torch.Tensor:
    """E[x0 | x_t = x] for x0 ~ N(mu, cov), the Wiener filter, by a dense inverse."""
    n = mu.shape[0]
    gain = math.sqrt(a) * cov @ torch.linalg.inv(a * cov + (1 - a) * torch.eye(n, dtype=F64))
    return mu + (x - math.sqrt(a) * mu) @ gain.T


@pytest.mark.parametrize("s0", [0.0, 0.3])
def test_low_rank_denoiser_matches_dense_wiener_filter(s0: float) -> None:
    prior = random_prior(7, 3, s0)
    x = torch.randn(4, 7, generator=torch.Generator().manual_seed(1), dtype=F64)
    for a in (0.01, 0.5, 0.999):
        expected = wiener(prior.mean, prior.covariance(), x, a)
        torch.testing.assert_close(prior.denoise(x, a), expected, rtol=1e-10, atol=1e-10)
    # one alpha_bar per row
    a = torch.tensor([0.1, 0.2, 0.7, 0.9], dtype=F64)
    rows = torch.stack(
        [wiener(prior.mean, prior.covariance(), x[i], float(a[i])) for i in range(4)]
    )
    torch.testing.assert_close(prior.denoise(x, a), rows, rtol=1e-10, atol=1e-10)
    if s0 == 0:  # the denoised sample lies on mu + span(U)
        d = prior.denoise(x, 0.3) - prior.mean
        off = d - d @ prior.basis @ prior.basis.T
        assert float(off.abs().max()) < 1e-12


def test_posterior_mean_matches_dense_formula() -> None:
    prior = random_prior(8, 3, 0.2)
    g = torch.Generator().manual_seed(2)
    A = torch.randn(5, 8, generator=g, dtype=F64)
    y = torch.randn(5, generator=g, dtype=F64)
    sigma = 0.1
    S = prior.covariance()
    expected = prior.mean + S @ A.T @ torch.linalg.solve(
        A @ S @ A.T + sigma**2 * torch.eye(5, dtype=F64), y - A @ prior.mean
    )
    torch.testing.assert_close(prior.posterior_mean(A, y, sigma), expected, rtol=1e-10, atol=1e-10)
    # information form gives the same: (S^-1 + A^T A / sigma^2)^-1 (S^-1 mu + A^T y / sigma^2)
    P = torch.linalg.inv(S) + A.T @ A / sigma**2
    info = torch.linalg.solve(P, torch.linalg.solve(S, prior.mean) + A.T @ y / sigma**2)
    torch.testing.assert_close(prior.posterior_mean(A, y, sigma), info, rtol=1e-9, atol=1e-9)
    # several right-hand sides at once
    Y = torch.stack([y, 2 * y], dim=1)
    out = prior.posterior_mean(A, Y, sigma)
    torch.testing.assert_close(out[:, 0], expected, rtol=1e-10, atol=1e-10)


def test_noiseless_posterior_mean_on_a_subspace_recovers_the_truth() -> None:
    # s0 = 0, sigma = 0 and A U of full column rank: the posterior is a point mass at the truth,
    # mu + U (A U)^+ (y - A mu).
    prior = random_prior(10, 3, 0.0, seed=3)
    g = torch.Generator().manual_seed(4)
    A = torch.randn(5, 10, generator=g, dtype=F64)
    x = prior.sample(1, generator=g)[0]
    pm = prior.posterior_mean(A, A @ x)
    torch.testing.assert_close(pm, x, rtol=1e-9, atol=1e-9)
    lstsq = prior.mean + prior.basis @ torch.linalg.pinv(A @ prior.basis) @ (A @ x - A @ prior.mean)
    torch.testing.assert_close(pm, lstsq, rtol=1e-9, atol=1e-9)


def mixture(seed: int = 0, n: int = 2) -> GaussianMixturePrior:
    g = torch.Generator().manual_seed(seed)
    means = torch.tensor([[-1.5, 0.5], [1.0, -1.0], [0.5, 1.5]], dtype=F64)[:, :n]
    L = torch.randn(3, n, n, generator=g, dtype=F64) * 0.4
    covs = L @ L.transpose(1, 2) + 0.05 * torch.eye(n, dtype=F64)
    return GaussianMixturePrior(torch.tensor([0.5, 0.3, 0.2], dtype=F64), means, covs)


def test_mixture_denoiser_is_tweedie_of_its_marginal() -> None:
    # E[x0 | x_t] = (x_t + (1 - a) grad log p_t(x_t)) / sqrt(a), score by autograd.
    prior = mixture()
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    for a in (0.05, 0.5, 0.95):
        xr = x.clone().requires_grad_(True)
        (score,) = torch.autograd.grad(prior.log_marginal(xr, a).sum(), xr)
        tweedie = (x + (1 - a) * score) / math.sqrt(a)
        torch.testing.assert_close(prior.denoise(x, a), tweedie, rtol=1e-10, atol=1e-10)


def test_mixture_denoiser_against_monte_carlo() -> None:
    # Self-normalised importance sampling with prior samples: E[x0 | x_t] ~ sum w_i x0_i / sum
    # w_i, w_i = N(x_t; sqrt(a) x0_i, (1 - a) I). Its delta-method standard error is
    # sqrt(sum w_i^2 (x0_i - est)^2) / sum w_i; we allow 5 standard errors per coordinate.
    prior = mixture(1)
    g = torch.Generator().manual_seed(6)
    x0 = prior.sample(200_000, generator=g)
    a = 0.6
    for xt in ([0.3, -0.2], [-1.0, 0.8], [1.2, 1.0]):
        x = torch.tensor(xt, dtype=F64)
        logw = -((x - math.sqrt(a) * x0) ** 2).sum(1) / (2 * (1 - a))
        w = torch.exp(logw - logw.max())
        est = (w[:, None] * x0).sum(0) / w.sum()
        se = ((w[:, None] ** 2) * (x0 - est) ** 2).sum(0).sqrt() / w.sum()
        exact = prior.denoise(x, a)
        assert bool(((exact - est).abs() <= 5 * se).all()), (exact, est, se)
        assert float(se.max()) < 0.02  # the check is sharp enough to catch a wrong filter


def test_mixture_with_one_component_equals_gaussian() -> None:
    prior = random_prior(5, 2, 0.4, seed=7)
    gm = GaussianMixturePrior(torch.ones(1, dtype=F64), prior.mean[None], prior.covariance()[None])
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(8), dtype=F64)
    torch.testing.assert_close(gm.denoise(x, 0.3), prior.denoise(x, 0.3), rtol=1e-10, atol=1e-10)
    samples = gm.sample(20_000, generator=torch.Generator().manual_seed(9))
    cov = torch.cov(samples.T)
    # sample covariance: entry standard error <= sqrt(2 / N) * max variance
    assert float((cov - prior.covariance()).abs().max()) < 5 * math.sqrt(2 / 20_000) * 2.5


def test_denoiser_predictions_are_consistent() -> None:
    prior = random_prior(6, 2, 0.1)
    abar = alphas_bar(betas(100))
    eps_net, x0_net = prior.denoiser(abar, "epsilon"), prior.denoiser(abar, "x0")
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(10), dtype=F64)
    t = torch.tensor([0, 50, 99])
    a = abar[t][:, None]
    torch.testing.assert_close(x0_net(x, t), prior.denoise(x, abar[t]), rtol=0, atol=0)
    torch.testing.assert_close(
        eps_net(x, t), (x - a.sqrt() * x0_net(x, t)) / (1 - a).sqrt(), rtol=1e-12, atol=1e-12
    )
    with pytest.raises(ValueError, match="prediction"):
        prior.denoiser(abar, "score")  # type: ignore[arg-type]


def test_smooth_prior_is_low_frequency() -> None:
    prior = LowRankGaussianPrior.smooth((16, 16), 6, length_scale=3.0, generator=torch.Generator())
    U = prior.basis
    torch.testing.assert_close(U.T @ U, torch.eye(6, dtype=F64), rtol=0, atol=1e-12)
    assert float(prior.variances.mean()) == pytest.approx(1.0)
    spec = torch.fft.fft2(U.T.reshape(6, 16, 16), norm="ortho").abs() ** 2
    f = torch.fft.fftfreq(16, d=1 / 16).abs()
    low = (f[:, None] <= 3) & (f[None, :] <= 3)
    assert float(spec[:, low].sum() / spec.sum()) > 0.95


def test_schedules() -> None:
    b = betas(1000)
    assert float(b[0]) == pytest.approx(1e-4) and float(b[-1]) == pytest.approx(0.02)
    abar = alphas_bar(b)
    torch.testing.assert_close(abar, torch.cumprod(1 - b, 0))
    c = alphas_bar(betas(1000, "cosine"))
    t = torch.arange(1, 1001, dtype=F64) / 1000
    f = (
        torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    )
    torch.testing.assert_close(c[:900], f[:900], rtol=1e-9, atol=1e-12)  # before beta clipping
    assert timesteps(1000, 50).tolist()[:2] == [999, 979] and timesteps(10, 10).tolist()[-1] == 0
    with pytest.raises(ValueError, match="num_sampling_steps"):
        timesteps(10, 11)
    with pytest.raises(ValueError, match="num_steps"):
        betas(0)
    with pytest.raises(ValueError, match="kind"):
        betas(10, "quadratic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta_start"):
        betas(10, beta_start=0.1, beta_end=0.01)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        alphas_bar(torch.tensor([0.5, 1.5], dtype=F64))


def test_prior_bad_input() -> None:
    U = torch.eye(4, dtype=F64)[:, :2]
    mu, lam = torch.zeros(4, dtype=F64), torch.ones(2, dtype=F64)
    with pytest.raises(ValueError, match="orthonormal"):
        LowRankGaussianPrior(mu, 2 * U, lam)
    with pytest.raises(ValueError, match="positive"):
        LowRankGaussianPrior(mu, U, -lam)
    with pytest.raises(ValueError, match="entries"):
        LowRankGaussianPrior(torch.zeros(3, dtype=F64), U, lam)
    with pytest.raises(TypeError, match="dtype"):
        LowRankGaussianPrior(mu.float(), U, lam)
    with pytest.raises(ValueError, match="noise_std"):
        LowRankGaussianPrior(mu, U, lam, noise_std=-1.0)
    prior = LowRankGaussianPrior(mu, U, lam)
    with pytest.raises(ValueError, match=r"alpha_bar must be in \(0, 1\)"):
        prior.denoise(torch.zeros(4, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="4 entries"):
        prior.denoise(torch.zeros(5, dtype=F64), 0.5)
    with pytest.raises(ValueError, match="non-finite"):
        prior.denoise(torch.tensor([0.0, float("nan"), 0.0, 0.0], dtype=F64), 0.5)
    with pytest.raises(TypeError, match="dtype"):
        prior.denoise(torch.zeros(4), 0.5)
    with pytest.raises(ValueError, match="rows"):
        prior.posterior_mean(torch.eye(4, dtype=F64), torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="non-finite"):
        prior.posterior_mean(torch.eye(4, dtype=F64), torch.full((4,), float("inf"), dtype=F64))
    with pytest.raises(ValueError, match="columns"):
        prior.posterior_mean(torch.eye(5, dtype=F64), torch.zeros(5, dtype=F64))
    w, m = torch.ones(2, dtype=F64), torch.zeros(2, 3, dtype=F64)
    with pytest.raises(ValueError, match="semi-definite"):
        GaussianMixturePrior(w, m, -torch.eye(3, dtype=F64).expand(2, 3, 3))
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixturePrior(w, m, torch.triu(torch.ones(3, 3, dtype=F64)).expand(2, 3, 3))
    with pytest.raises(ValueError, match="weights must be positive"):
        GaussianMixturePrior(-w, m, torch.eye(3, dtype=F64).expand(2, 3, 3))
    with pytest.raises(ValueError, match="covariances"):
        GaussianMixturePrior(w, m, torch.eye(2, dtype=F64).expand(2, 2, 2))
