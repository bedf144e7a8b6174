"""Diffusion posterior sampling (DPS): ancestral steps guided by a gradient through the denoiser.

Per reverse step ``t -> t_prev`` (``a = alpha_bar_t``, ``a_prev = alpha_bar_{t_prev}``, ``beta =
1 - a / a_prev``): one denoiser evaluation with autograd enabled, Tweedie's ``x0_hat(x_t)``, the
DDPM posterior step ``x' = sqrt(a_prev) beta / (1 - a) x0_hat + sqrt(1 - beta) (1 - a_prev) / (1
- a) x_t + sigma_t z`` with ``sigma_t^2 = (1 - a_prev) / (1 - a) beta``, and the measurement
guidance ``x_{t_prev} = x' - zeta grad_{x_t} ||y - A x0_hat(x_t)||``: one backward pass through
the denoiser per step (the manifold-constrained gradient). The paper writes the step as
``zeta_t grad ||y - A x0_hat||^2`` with ``zeta_t = zeta' / ||y - A x0_hat||``, the same update
with ``zeta = 2 zeta'``. Steps on a sub-sequence of the training steps (``num_steps < T``) use
the strided ``beta`` above.

References:
    Chung, Kim, Mccann, Klasky, Ye. "Diffusion Posterior Sampling for General Noisy Inverse
    Problems." ICLR 2023 (arXiv:2209.14687), Algorithm 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_positive_float
from ..linops.base import LinearOperator
from ._diffusion import (
    Callback,
    Denoiser,
    Prediction,
    SamplerResult,
    relative_residual,
    tweedie,
    validate_problem,
)
from .schedules import timesteps

__all__ = ["dps"]


def dps(
    denoiser: Denoiser,
    A: Tensor | LinearOperator,
    y: Tensor,
    alphas_bar: Tensor,
    *,
    num_steps: int = 1000,
    step_size: float = 1.0,
    prediction: Prediction = "epsilon",
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> SamplerResult:
    """Diffusion posterior sampling: DDPM ancestral steps plus ``-zeta grad ||y - A x0_hat||``.

    Args:
        denoiser: ``denoiser(x_t (b, n), t (b,)) -> (b, n)`` (``eps`` or ``x0``); it must be
            differentiable in ``x_t`` by autograd and act on each row independently.
        A: ``(m, n)`` measurement operator or matrix (differentiable products).
        y: ``(m,)`` or ``(b, m)`` measurements.
        alphas_bar: ``(T,)`` training schedule.
        num_steps: sampling steps (the paper uses all ``T = 1000``).
        step_size: ``zeta > 0``, the guidance step on the (unsquared) residual norm.
        prediction: ``"epsilon"`` or ``"x0"``.
        num_samples: samples per measurement vector ``y (m,)``; default 1.
        generator: random generator.
        callback: ``callback(i, t, x0_hat, x_prev)`` after each step.

    Returns:
        :class:`~subspaces.solvers.SamplerResult`; ``x`` is the last step's output (there
        ``a_prev = 1``, so ``x = x0_hat - zeta grad``), ``num_denoiser_evals = num_backward =
        num_steps``.

    Raises:
        ValueError: for mismatched shapes, non-finite ``y``, ``num_steps`` outside ``[1, T]``,
            a non-positive ``step_size``, a denoiser output of the wrong shape, or a non-finite
            guidance gradient.
        TypeError: for wrong types or dtypes.

    Example:
        >>> from subspaces.solvers import LowRankGaussianPrior, alphas_bar, betas
        >>> g = torch.Generator().manual_seed(0)
        >>> prior = LowRankGaussianPrior.smooth((4, 4), 2, generator=g)
        >>> A = torch.randn(6, 16, generator=g, dtype=torch.float64)
        >>> x_true = prior.sample(1, generator=g)[0]
        >>> abar = alphas_bar(betas(1000))
        >>> out = dps(prior.denoiser(abar), A, A @ x_true, abar, num_steps=200,
        ...           step_size=0.03, generator=g)
        >>> out.num_denoiser_evals, out.num_backward, bool(out.measurement_residual < 0.1)
        (200, 200, True)

    References:
        Chung, Kim, Mccann, Klasky, Ye, ICLR 2023 (arXiv:2209.14687), Algorithm 1.
    """
    op, Y, abar, num_steps, squeeze = validate_problem(
        A, y, alphas_bar, num_steps, prediction, num_samples
    )
    zeta = check_positive_float(step_size, "step_size")
    b, n = Y.shape[0], op.shape[1]
    ts = timesteps(abar.shape[0], num_steps).tolist()
    x = torch.randn(b, n, generator=generator, dtype=torch.float64).to(op.dtype)
    x0_hat = x
    num_matvecs = 0
    one = torch.ones((), dtype=op.dtype, device=x.device)
    for i, t in enumerate(ts):
        a = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else one
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            x0_hat, _ = tweedie(denoiser, x_in, t, a, prediction)
            misfit = (Y - op.matmat(x0_hat.T).T).norm(dim=1)
            (grad,) = torch.autograd.grad(misfit.sum(), x_in)
        num_matvecs += 2 * b
        if not bool(torch.isfinite(grad).all()):
            raise ValueError(f"the DPS guidance gradient is not finite at time step {t}")
        x0_hat = x0_hat.detach()
        beta = 1 - a / a_prev
        mean = (a_prev.sqrt() * beta / (1 - a)) * x0_hat + (
            (1 - beta).sqrt() * (1 - a_prev) / (1 - a)
        ) * x
        if i + 1 < len(ts):
            sigma = ((1 - a_prev) / (1 - a) * beta).sqrt()
            z = torch.randn(b, n, generator=generator, dtype=torch.float64).to(op.dtype)
            mean = mean + sigma * z
        x = mean - zeta * grad
        if callback is not None:
            callback(i, t, x0_hat, x)
    residual = relative_residual(op, x, Y)
    return SamplerResult(
        x=x.squeeze(0) if squeeze else x,
        num_denoiser_evals=len(ts),
        num_backward=len(ts),
        num_matvecs=num_matvecs + b,
        measurement_residual=residual.squeeze(0) if squeeze else residual,
    )
