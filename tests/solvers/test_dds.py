"""DDS and DPS samplers (P06): convergence to the exact posterior mean, CG steps, counts, errors."""

from __future__ import annotations

import math

import pytest
import torch

from subspaces.solvers import (
    LowRankGaussianPrior,
    SubsampledFourier,
    alphas_bar,
    betas,
    data_consistency,
    dds,
    dps,
    fourier_mask,
)

F64 = torch.float64
ABAR = alphas_bar(betas(1000))


def mri_problem(seed: int) -> tuple[LowRankGaussianPrior, SubsampledFourier, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    prior = LowRankGaussianPrior.smooth((16, 16), 8, length_scale=2.0, generator=g)
    A = SubsampledFourier(fourier_mask((16, 16), fraction=0.3, center_fraction=0.25, generator=g))
    x = prior.sample(1, generator=g)[0]
    return prior, A, A @ x


@pytest.mark.parametrize("seed", [0, 1])
def test_dds_converges_to_the_posterior_mean_as_steps_grow(seed: int) -> None:
    prior, A, y = mri_problem(seed)
    pm = prior.posterior_mean(A, y)
    errors = []
    for T in (10, 50, 200):
        out = dds(
            prior.denoiser(ABAR),
            A,
            y,
            ABAR,
            num_steps=T,
            num_cg_steps=5,
            generator=torch.Generator().manual_seed(1),
        )
        errors.append(float((out.x - pm).norm() / pm.norm()))
        assert out.num_denoiser_evals == T and out.num_backward == 0
        # the last step ends with CG on A^T A x = A^T y: data consistent to rounding
        assert float(out.measurement_residual) < 1e-10
    # measured (seeds 0, 1): 1.4e-2 / 6.9e-3 at T = 10, 1.4e-3 / 5.9e-4 at 50, ~1e-4 at 200
    assert errors[1] <= 1e-2
    assert errors[2] <= errors[1] / 2 and errors[1] <= errors[0] / 2, errors


def test_dds_epsilon_and_x0_parameterisations_agree() -> None:
    prior, A, y = mri_problem(2)
    runs = [
        dds(prior.denoiser(ABAR, p), A, y, ABAR, num_steps=20, eta=0.5, prediction=p,
            generator=torch.Generator().manual_seed(3))
        for p in ("epsilon", "x0")
    ]  # fmt: skip
    torch.testing.assert_close(runs[0].x, runs[1].x, rtol=1e-9, atol=1e-9)


def test_data_consistency_noiseless_is_the_projection_onto_the_data_set() -> None:
    # With M >= the number of distinct nonzero eigenvalues of A^T A, CG from x0 reaches the
    # solution of A x = y closest to x0: x0 + A^+ (y - A x0).
    g = torch.Generator().manual_seed(4)
    A = torch.randn(4, 9, generator=g, dtype=F64)
    x0 = torch.randn(2, 9, generator=g, dtype=F64)
    y = torch.randn(2, 4, generator=g, dtype=F64)
    x, matvecs = data_consistency(A, y, x0, 4)
    expected = x0 + (y - x0 @ A.T) @ torch.linalg.pinv(A).T
    torch.testing.assert_close(x, expected, rtol=1e-8, atol=1e-8)
    assert matvecs > 0
    # M = 1: one exact line search along the gradient g = A^T (y - A x0)
    x1, _ = data_consistency(A, y[:1], x0[:1], 1)
    grad = (y[:1] - x0[:1] @ A.T) @ A
    step = (grad**2).sum() / ((grad @ A.T) ** 2).sum()
    torch.testing.assert_close(x1, x0[:1] + step * grad, rtol=1e-10, atol=1e-10)
    # M = 0 is the identity
    assert torch.equal(data_consistency(A, y, x0, 0)[0], x0)


def test_data_consistency_noisy_solves_the_proximal_system() -> None:
    g = torch.Generator().manual_seed(5)
    A = torch.randn(6, 8, generator=g, dtype=F64)
    x0 = torch.randn(3, 8, generator=g, dtype=F64)
    y = torch.randn(3, 6, generator=g, dtype=F64)
    gamma = 0.7
    x, _ = data_consistency(A, y, x0, 8, gamma=gamma)
    lhs = torch.eye(8, dtype=F64) + gamma * A.T @ A
    expected = torch.linalg.solve(lhs, (x0 + gamma * y @ A).T).T
    torch.testing.assert_close(x, expected, rtol=1e-8, atol=1e-8)
    # and the update x - x0 lies in the Krylov space K_M(A^T A, A^T (y - A x0)) for M = 2
    x2, _ = data_consistency(A, y[:1], x0[:1], 2, gamma=gamma)
    r = ((y[:1] - x0[:1] @ A.T) @ A).T
    K = torch.cat([r, A.T @ A @ r], dim=1)
    d = (x2 - x0[:1]).T
    coef = torch.linalg.lstsq(K, d).solution
    assert float((K @ coef - d).norm()) < 1e-10 * float(d.norm())


def test_dps_guidance_step_is_the_gradient_through_the_denoiser() -> None:
    # One step (t = 999 -> output): x = x0_hat + zeta J^T A^T r / ||r|| with r = y - A x0_hat,
    # J the denoiser's Jacobian, known in closed form for the low-rank prior (symmetric:
    # c_in in span(U), c_out = 0 outside when s0 = 0).
    prior, A, y = mri_problem(6)
    zeta = 0.3
    out = dps(prior.denoiser(ABAR), A, y, ABAR, num_steps=1, step_size=zeta,
              generator=torch.Generator().manual_seed(7))  # fmt: skip
    x_T = torch.randn(1, 256, generator=torch.Generator().manual_seed(7), dtype=F64)[0]
    a = ABAR[999]
    x0_hat = prior.denoise(x_T, a)
    r = y - A @ x0_hat
    c_in = a.sqrt() * prior.variances / (a * prior.variances + 1 - a)
    J = (prior.basis * c_in) @ prior.basis.T
    expected = x0_hat + zeta * J @ (A.T @ r) / r.norm()
    torch.testing.assert_close(out.x, expected, rtol=1e-10, atol=1e-10)
    assert out.num_denoiser_evals == 1 and out.num_backward == 1


def test_dps_reduces_the_measurement_misfit() -> None:
    prior, A, y = mri_problem(8)
    args = dict(num_steps=100, generator=torch.Generator().manual_seed(9))
    guided = dps(prior.denoiser(ABAR), A, y, ABAR, step_size=0.3, **args)  # type: ignore[arg-type]
    args["generator"] = torch.Generator().manual_seed(9)
    unguided = dps(prior.denoiser(ABAR), A, y, ABAR, step_size=1e-12, **args)  # type: ignore[arg-type]
    # an unconditional prior sample misses y by ~sqrt(2) ||y||; guidance must do much better
    assert float(unguided.measurement_residual) > 0.5
    assert float(guided.measurement_residual) < 0.1
    assert guided.num_backward == 100


def test_batched_samples_and_reproducibility() -> None:
    prior, A, y = mri_problem(10)
    kw = dict(num_steps=10, eta=0.85)
    a = dds(prior.denoiser(ABAR), A, y, ABAR, num_samples=3,
            generator=torch.Generator().manual_seed(1), **kw)  # type: ignore[arg-type]  # fmt: skip
    b = dds(prior.denoiser(ABAR), A, y, ABAR, num_samples=3,
            generator=torch.Generator().manual_seed(1), **kw)  # type: ignore[arg-type]  # fmt: skip
    assert a.x.shape == (3, 256) and a.measurement_residual.shape == (3,)
    assert torch.equal(a.x, b.x)
    assert float((a.x[0] - a.x[1]).norm()) > 0  # eta > 0: different samples
    Y = torch.stack([y, 2 * y])
    batch = dds(prior.denoiser(ABAR), A, Y, ABAR, num_steps=10)
    assert batch.x.shape == (2, 256)


def test_callback_sees_every_step() -> None:
    prior, A, y = mri_problem(11)
    seen: list[int] = []
    dds(prior.denoiser(ABAR), A, y, ABAR, num_steps=7,
        callback=lambda i, t, x0, x0p: seen.append(t))  # fmt: skip
    assert len(seen) == 7 and seen[0] == 999 and seen[-1] == 0


def test_sampler_bad_input() -> None:
    prior, A, y = mri_problem(12)
    den = prior.denoiser(ABAR)
    with pytest.raises(ValueError, match="entries per row to match A"):
        dds(den, A, y[:-1], ABAR)
    with pytest.raises(ValueError, match="non-finite"):
        dds(den, A, torch.full_like(y, math.nan), ABAR)
    with pytest.raises(ValueError, match="num_cg_steps must be >= 0"):
        dds(den, A, y, ABAR, num_cg_steps=-1)
    with pytest.raises(ValueError, match="num_steps must be in"):
        dds(den, A, y, ABAR, num_steps=0)
    with pytest.raises(ValueError, match="num_steps must be in"):
        dps(den, A, y, ABAR, num_steps=1001)
    with pytest.raises(ValueError, match="eta"):
        dds(den, A, y, ABAR, eta=1.5)
    with pytest.raises(ValueError, match="gamma"):
        dds(den, A, y, ABAR, gamma=0.0)
    with pytest.raises(ValueError, match="step_size"):
        dps(den, A, y, ABAR, step_size=-1.0)
    with pytest.raises(ValueError, match="prediction"):
        dds(den, A, y, ABAR, prediction="score")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dtype"):
        dds(den, A, y.float(), ABAR)
    with pytest.raises(ValueError, match="num_samples"):
        dds(den, A, torch.stack([y, y]), ABAR, num_samples=3)
    with pytest.raises(ValueError, match=r"alphas_bar must hold values in \(0, 1\)"):
        dds(den, A, y, torch.ones(10, dtype=F64))

    x0 = torch.zeros(1, 256, dtype=F64)
    with pytest.raises(ValueError, match="x0_hat must have shape"):
        data_consistency(A, y[None], x0[:, :-1], 2)
    with pytest.raises(ValueError, match="as many rows"):
        data_consistency(A, y[None], torch.zeros(2, 256, dtype=F64), 2)
    with pytest.raises(TypeError, match="dtype"):
        data_consistency(A, y[None], x0.float(), 2)
    with pytest.raises(ValueError, match="non-finite"):
        data_consistency(A, y[None], x0 * math.nan, 2)
    with pytest.raises(ValueError, match=r"time steps must be in \[0, 1000\)"):
        den(x0, torch.tensor([1000]))
    with pytest.raises(TypeError, match="integer"):
        den(x0, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="num must be >= 1"):
        prior.sample(0)

    def wrong_shape(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x[:, :-1]

    def not_finite(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x * math.inf

    for sampler in (dds, dps):
        with pytest.raises(ValueError, match="denoiser returned shape"):
            sampler(wrong_shape, A, y, ABAR, num_steps=3)
        with pytest.raises(ValueError, match="denoiser returned non-finite"):
            sampler(not_finite, A, y, ABAR, num_steps=3)
        with pytest.raises(TypeError, match="must return a Tensor"):
            sampler(lambda x, t: x.tolist(), A, y, ABAR, num_steps=3)  # type: ignore[arg-type, return-value]
