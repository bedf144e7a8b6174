"""Low-rank diffusion denoisers (Wang et al. 2024): training is subspace clustering."""

from __future__ import annotations

import math

import pytest
import torch

from subspaces.clustering.denoiser import (
    DiffusionSubspaceClustering,
    LowRankDenoiser,
    clustering_loss_prediction,
    denoising_loss,
    recover_subspaces,
    subspace_clustering_objective,
    subspace_recovery_error,
    train_denoiser,
)
from subspaces.clustering.metrics import clustering_accuracy
from subspaces.clustering.mixtures import LowRankGaussianMixture, equiangular_bases
from subspaces.linalg.subspace import Subspace

EPS64 = torch.finfo(torch.float64).eps


def _mixture(n: int = 10, d: int = 2, K: int = 2, angle: float = math.pi / 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mix = LowRankGaussianMixture.random(n, d, K, angle=angle, generator=g, dtype=torch.float64)
    return mix, g


def test_low_rank_denoiser_with_true_bases_is_the_exact_optimal_denoiser() -> None:
    mix, g = _mixture(angle=math.pi / 3)
    D = LowRankDenoiser.from_bases(mix.bases)
    x = torch.randn(20, 10, generator=g, dtype=torch.float64)
    for sigma in (0.05, 0.5, 2.0):
        with torch.no_grad():
            out = D(x, sigma)
        assert torch.allclose(out, mix.denoise(x, sigma), atol=100 * EPS64 * float(x.abs().max()))


@pytest.mark.parametrize("angle", [math.pi / 2, math.pi / 3])
def test_recover_subspaces_from_the_exact_optimal_denoiser(angle: float) -> None:
    mix, g = _mixture(n=12, d=3, K=3, angle=angle, seed=1)
    X, labels = mix.sample(60, generator=g)
    found, groups = recover_subspaces(mix.denoise, X, 3, 3, sigma=0.02)
    # At sigma = 0.02 the weights are saturated at the samples, so the Jacobian is
    # U_k U_k^T / (1 + sigma^2) up to exponentially small terms: exact recovery.
    assert max(subspace_recovery_error(found, mix.subspaces())) < 1e-8
    assert clustering_accuracy(labels, groups) == 1.0


def test_denoising_loss_equals_the_clustering_prediction_for_one_subspace() -> None:
    # K = 1: E_eps ||c U U^T (x + sigma eps) - x||^2 = ||x||^2 - (2c - c^2)||U^T x||^2 + s^2 c^2 d.
    mix, g = _mixture(n=6, d=2, K=1)
    X, _ = mix.sample(5, generator=g)
    X = X + 0.3 * torch.randn(X.shape, generator=g, dtype=torch.float64)  # off the subspace too
    U = equiangular_bases(6, 2, 1, generator=g, dtype=torch.float64)  # any candidate basis
    draws = 20000
    D = LowRankDenoiser.from_bases(U)
    with torch.no_grad():
        per = torch.stack(
            [denoising_loss(D, X, [0.4], noise_draws=1, generator=g) for _ in range(draws // 100)]
        )
    se = float(per.std() / math.sqrt(per.numel()))
    pred = float(clustering_loss_prediction(U, X, 0.4))
    assert abs(float(per.mean()) - pred) <= 5 * se
    assert se < 0.02 * pred


def test_small_noise_loss_ranks_candidates_like_the_clustering_objective() -> None:
    # The equivalence: at small sigma the denoising loss of any candidate bases is the affine
    # prediction from the k-subspaces objective, so both order the candidates the same way.
    mix, g = _mixture(n=8, d=2, K=2, seed=3)
    X, _ = mix.sample(40, generator=g)
    truth = mix.bases
    half = torch.stack([torch.linalg.qr(truth[0] + 0.5 * truth[1])[0], truth[1]])
    rand = equiangular_bases(8, 2, 2, generator=g, dtype=torch.float64)
    sigma = 0.03
    losses, preds, objs = [], [], []
    for bases in (truth, half, rand):
        with torch.no_grad():
            loss = denoising_loss(
                LowRankDenoiser.from_bases(bases), X, [sigma], noise_draws=200, generator=g
            )
        losses.append(float(loss))
        preds.append(float(clustering_loss_prediction(bases, X, sigma)))
        objs.append(float(subspace_clustering_objective(bases, X)[0]))
    scale = float(X.pow(2).sum(1).mean())
    for loss, pred in zip(losses, preds, strict=True):
        assert abs(loss - pred) <= 0.01 * scale
    assert sorted(range(3), key=losses.__getitem__) == sorted(range(3), key=lambda i: -objs[i])
    assert losses[0] < losses[1] < losses[2]


def test_training_recovers_subspaces_with_enough_samples_only() -> None:
    mix, g = _mixture(n=10, d=2, K=2, seed=4)
    labels = torch.arange(2).repeat_interleave(8)  # 4 d samples per subspace
    X = mix.sample_components(labels, generator=g)
    fit = train_denoiser(X, 2, 2, steps=250, n_init=2, generator=0)
    assert max(subspace_recovery_error(fit.denoiser.subspaces(), mix.subspaces())) < 0.1
    assert fit.final_loss == min(fit.final_losses) and len(fit.loss_history) == 250
    assert clustering_accuracy(labels, fit.denoiser.assign(X)) == 1.0
    # One sample per 2-dimensional subspace cannot determine it.
    X1 = mix.sample_components(torch.tensor([0, 1]), generator=g)
    fit1 = train_denoiser(X1, 2, 2, steps=100, generator=0)
    assert max(subspace_recovery_error(fit1.denoiser.subspaces(), mix.subspaces())) > 0.5
    # The subspaces found by the Jacobians of the trained denoiser agree with its parameters.
    found, _ = recover_subspaces(fit.denoiser, X, 2, 2, sigma=0.02)
    assert max(subspace_recovery_error(found, fit.denoiser.subspaces())) < 1e-6


def test_diffusion_subspace_clustering_estimator() -> None:
    mix, g = _mixture(n=10, d=2, K=2, angle=math.pi / 3, seed=5)
    X, y = mix.sample(40, generator=g)
    est = DiffusionSubspaceClustering(2, 2, steps=250, n_init=2, random_state=0)
    labels = est.fit_predict(X)
    assert clustering_accuracy(y, labels) == 1.0
    assert torch.equal(est.predict(X), labels)
    assert all(isinstance(S, Subspace) and S.dim == 2 for S in est.subspaces_)
    assert est.get_params()["subspace_dim"] == 2


def test_bad_input_names_the_value() -> None:
    X = torch.randn(6, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"X has 1 row\(s\) with NaN or Inf values \(rows \[2\]\)"):
        bad = X.clone()
        bad[2, 1] = float("nan")
        train_denoiser(bad, 2, 1)
    with pytest.raises(ValueError, match=r"X has 6 sample\(s\), fewer than n_clusters=7"):
        train_denoiser(X, 7, 1)
    with pytest.raises(ValueError, match="n_components must be >= 1, got 0"):
        train_denoiser(X, 0, 1)
    with pytest.raises(ValueError, match="subspace_dim=5 is above the ambient dimension 4"):
        train_denoiser(X, 2, 5)
    with pytest.raises(ValueError, match=r"sigmas\[i\] must be a finite number > 0, got -1\.0"):
        train_denoiser(X, 2, 1, sigmas=[0.1, -1.0])
    with pytest.raises(ValueError, match="n_components must be >= 1, got -1"):
        DiffusionSubspaceClustering(-1, 1).fit(X)
    with pytest.raises(ValueError, match="init must be one of"):
        from subspaces.clustering.denoiser import train_denoiser_batch

        train_denoiser_batch(X.unsqueeze(0), 2, 1, init="kmeans")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not fitted"):
        DiffusionSubspaceClustering(2, 1).predict(X)
    with pytest.raises(ValueError, match="need at least as many estimated subspaces"):
        subspace_recovery_error([], [Subspace(torch.eye(2, dtype=torch.float64)[:, :1])])
