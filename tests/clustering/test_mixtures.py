"""Mixture of low-rank Gaussians (Wang et al. 2024): sampling, likelihoods, exact denoiser."""

from __future__ import annotations

import math

import pytest
import torch

from subspaces.clustering.mixtures import LowRankGaussianMixture, equiangular_bases

EPS64 = torch.finfo(torch.float64).eps


def _mixture(angle: float = math.pi / 3, seed: int = 0) -> LowRankGaussianMixture:
    g = torch.Generator().manual_seed(seed)
    return LowRankGaussianMixture.random(6, 2, 2, angle=angle, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("angle", [math.pi / 2, math.pi / 3, 0.2])
def test_equiangular_bases_have_the_chosen_principal_angles(angle: float) -> None:
    U = equiangular_bases(
        12, 3, 3, angle=angle, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    eye = torch.eye(3, dtype=torch.float64)
    for k in range(3):
        assert torch.allclose(U[k].T @ U[k], eye, atol=50 * EPS64)
        for j in range(k + 1, 3):
            cos = torch.linalg.svdvals(U[k].T @ U[j])
            assert torch.allclose(
                cos, torch.full((3,), math.cos(angle), dtype=torch.float64), atol=50 * EPS64
            )


def test_samples_lie_on_their_subspace() -> None:
    mix = _mixture()
    X, labels = mix.sample(200, generator=torch.Generator().manual_seed(2))
    U = mix.bases[labels]
    resid = X - torch.einsum("mnd,md->mn", U, torch.einsum("mnd,mn->md", U, X))
    assert resid.norm() <= 100 * EPS64 * X.norm()
    assert set(labels.tolist()) == {0, 1}


def test_log_likelihood_matches_torch_distributions() -> None:
    mix = LowRankGaussianMixture(
        _mixture().bases, weights=torch.tensor([0.3, 0.7], dtype=torch.float64)
    )
    x = torch.randn(7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    sigma = 0.6
    comps = []
    for k in range(2):
        cov = mix.bases[k] @ mix.bases[k].T + sigma**2 * torch.eye(6, dtype=torch.float64)
        dist = torch.distributions.MultivariateNormal(torch.zeros(6, dtype=torch.float64), cov)
        comps.append(dist.log_prob(x) + math.log([0.3, 0.7][k]))
    ref = torch.logsumexp(torch.stack(comps, 1), 1)
    assert torch.allclose(mix.log_likelihood(x, sigma), ref, rtol=1e3 * EPS64, atol=1e3 * EPS64)


def test_score_is_the_gradient_of_the_log_likelihood() -> None:
    mix = _mixture(angle=math.pi / 4)
    x = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(mix.log_likelihood(x, 0.4).sum(), x)
    score = mix.score(x.detach(), 0.4)
    assert torch.allclose(g, score, rtol=1e4 * EPS64, atol=1e4 * EPS64 * float(score.abs().max()))


def test_exact_denoiser_matches_monte_carlo_posterior_mean() -> None:
    # Self-normalized importance sampling from the prior: E[x0 | xt] = E_p[x0 w] / E_p[w] with
    # w = exp(-||xt - x0||^2 / (2 sigma^2)), an estimator independent of the closed form; the
    # tolerance is 5 of its delta-method standard errors.
    mix = _mixture(angle=math.pi / 3)
    g = torch.Generator().manual_seed(5)
    sigma = 0.7
    x0, _ = mix.sample(4, generator=g)
    xt = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    prior, _ = mix.sample(400_000, generator=g)
    exact = mix.denoise(xt, sigma)
    for i in range(xt.shape[0]):
        logw = -((prior - xt[i]) ** 2).sum(1) / (2 * sigma**2)
        w = torch.exp(logw - logw.max())
        w = w / w.sum()
        mean = (w.unsqueeze(1) * prior).sum(0)
        se = ((w.unsqueeze(1) ** 2) * (prior - mean) ** 2).sum(0).sqrt()
        assert bool(((exact[i] - mean).abs() <= 5 * se + 1e-12).all()), (exact[i], mean, se)
        assert float(se.max()) < 0.05  # the check has power: the errors are small


def test_denoiser_keeps_clean_points_and_shrinks_by_one_plus_sigma_squared() -> None:
    mix = LowRankGaussianMixture(torch.eye(4, dtype=torch.float64)[:, :2].reshape(1, 4, 2))
    x = torch.tensor([[1.0, -2.0, 3.0, 0.5]], dtype=torch.float64)
    out = mix.denoise(x, 0.5)
    assert torch.allclose(out, torch.tensor([[1.0, -2.0, 0.0, 0.0]], dtype=torch.float64) / 1.25)
    post = mix.posterior(x, torch.tensor([0.5], dtype=torch.float64))
    assert post.shape == (1, 1) and float(post) == 1.0


def test_bad_input_names_the_value() -> None:
    with pytest.raises(ValueError, match="subspace_dim=5 is above the ambient dimension 4"):
        equiangular_bases(4, 5, 1)
    with pytest.raises(ValueError, match="n_subspaces must be >= 1, got 0"):
        equiangular_bases(4, 1, 0)
    with pytest.raises(ValueError, match="need ambient_dim >= 9"):
        equiangular_bases(8, 3, 2, angle=0.5)
    with pytest.raises(ValueError, match=r"angle must be in \(0, pi/2\]"):
        equiangular_bases(8, 1, 2, angle=2.0)
    with pytest.raises(ValueError, match=r"subspace dimension d \(bases.shape\[2\]\)=3 is above"):
        LowRankGaussianMixture(torch.zeros(1, 2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="orthonormal columns"):
        LowRankGaussianMixture(2 * torch.eye(3, dtype=torch.float64)[:, :1].reshape(1, 3, 1))
    mix = _mixture()
    with pytest.raises(ValueError, match="weights must have 2 entries"):
        LowRankGaussianMixture(mix.bases, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="weights must be finite and > 0"):
        LowRankGaussianMixture(mix.bases, torch.tensor([1.0, -1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"sigma must be a finite number > 0, got 0\.0"):
        mix.denoise(torch.zeros(2, 6, dtype=torch.float64), 0.0)
    with pytest.raises(ValueError, match=r"x has 1 row\(s\) with NaN or Inf values \(rows \[1\]\)"):
        mix.denoise(torch.tensor([[0.0] * 6, [float("nan")] * 6], dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match="x must have 6 columns"):
        mix.log_likelihood(torch.zeros(2, 4), 0.5)
    with pytest.raises(ValueError, match=r"labels must be a 1-D tensor of components in \[0, 2\)"):
        mix.sample_components(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="n_samples must be >= 1, got 0"):
        mix.sample(0)
