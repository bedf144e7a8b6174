"""Decomposed diffusion sampling (DDS): DDIM steps with conjugate-gradient data consistency.

Per reverse step ``t -> t_prev`` of a variance-preserving diffusion (``a = alpha_bar_t``):

1. one denoiser evaluation and Tweedie's formula, ``x0_hat = (x_t - sqrt(1 - a) eps_hat) /
   sqrt(a)``;
2. ``M`` conjugate-gradient steps started at ``x0_hat`` on the data-consistency system, either
   the noiseless normal equations ``A^T A x = A^T y`` or, with ``gamma``, the noisy / proximal
   system ``(I + gamma A^T A) x = x0_hat + gamma A^T y`` (the minimiser of ``gamma / 2 ||y - A
   x||^2 + 1 / 2 ||x - x0_hat||^2``); the result is ``x0_hat'``;
3. the DDIM re-noising ``x_{t_prev} = sqrt(a_prev) x0_hat' + sqrt(1 - a_prev) (eta z +
   sqrt(1 - eta^2) eps_hat)`` with fresh noise ``z`` (``eta = 0``: deterministic); the last step
   returns ``x0_hat'``.

Because the CG iterates stay in ``x0_hat + K_M(A^T A, A^T (y - A x0_hat))``, they remain on the
tangent space of the clean-data manifold at ``x0_hat`` when that Krylov space lies in it, so no
gradient through the network (no manifold-constrained gradient, unlike DPS) is needed: one
network evaluation and no backward pass per step.

References:
    Chung, Lee, Ye. "Decomposed Diffusion Sampler for Accelerating Large-Scale Inverse Problems."
    ICLR 2024 (arXiv:2303.05754).

    Song, Meng, Ermon. "Denoising Diffusion Implicit Models." ICLR 2021 (arXiv:2010.02502).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor, check_positive_float, check_positive_int
from ..linalg.solvers import cg
from ..linops.base import LinearOperator, as_operator
from ..linops.structured import MatmatOperator
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

__all__ = ["data_consistency", "dds"]


def _gram(op: LinearOperator, gamma: float | None) -> LinearOperator:
    """``A^T A`` or ``I + gamma A^T A`` as a symmetric operator.

    Returns:
        The operator.
    """
    adj = op.T

    def apply(X: Tensor) -> Tensor:
        AtAX = adj.matmat(op.matmat(X))
        return AtAX if gamma is None else X + gamma * AtAX

    n = op.shape[1]
    return MatmatOperator(apply, (n, n), op.dtype, op.device, symmetric=True)


def data_consistency(
    A: Tensor | LinearOperator,
    y: Tensor,
    x0_hat: Tensor,
    num_cg_steps: int,
    *,
    gamma: float | None = None,
    rtol: float | None = None,
) -> tuple[Tensor, int]:
    """``M`` CG steps on the data-consistency system started at ``x0_hat`` (one DDS step).

    Args:
        A: ``(m, n)`` measurement operator or matrix.
        y: ``(b, m)`` measurements.
        x0_hat: ``(b, n)`` denoised estimates (the CG start).
        num_cg_steps: ``M >= 0`` (0 returns ``x0_hat``).
        gamma: ``None`` for the noiseless system ``A^T A x = A^T y``; a positive number for
            ``(I + gamma A^T A) x = x0_hat + gamma A^T y``.
        rtol: CG stops a column earlier once its residual is below ``rtol`` times its right-hand
            side; default ``10 eps`` of the dtype (so in practice exactly ``M`` steps).

    Returns:
        ``(x0_hat' (b, n), products with A or A^T)``.

    Raises:
        ValueError: for ``M < 0``, non-positive ``gamma``, shapes that do not match ``A``,
            non-finite ``y`` or ``x0_hat``; as :func:`subspaces.linalg.cg`.
        TypeError: for non-float tensors or a dtype other than ``A``'s.

    Example:
        >>> A = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
        >>> y = torch.tensor([[1.0, 4.0]], dtype=torch.float64)
        >>> x, _ = data_consistency(A, y, torch.ones(1, 3, dtype=torch.float64), 2)
        >>> x.tolist()  # measured coordinates fixed, the unmeasured one kept from the start
        [[1.0, 2.0, 1.0]]
    """
    op = as_operator(A)
    m, n = op.shape
    for name, value, width in (("y", y, m), ("x0_hat", x0_hat, n)):
        check_finite(check_float_tensor(value, name, ndim=2), name)
        if value.shape[1] != width:
            raise ValueError(
                f"{name} must have shape (b, {width}) to match A of shape {op.shape}, got "
                f"{tuple(value.shape)}"
            )
        if value.dtype != op.dtype:
            raise TypeError(f"{name} has dtype {value.dtype} but A has dtype {op.dtype}")
    if y.shape[0] != x0_hat.shape[0]:
        raise ValueError(
            f"y and x0_hat must have as many rows, got {y.shape[0]} and {x0_hat.shape[0]}"
        )
    num_cg_steps = check_positive_int(num_cg_steps, "num_cg_steps", minimum=0)
    if gamma is not None:
        gamma = check_positive_float(gamma, "gamma")
    if num_cg_steps == 0:
        return x0_hat, 0
    Aty = op.T.matmat(y.T)
    rhs = Aty if gamma is None else x0_hat.T + gamma * Aty
    tol = 10 * torch.finfo(op.dtype).eps if rtol is None else rtol
    res = cg(_gram(op, gamma), rhs, x0=x0_hat.T, rtol=tol, max_iters=num_cg_steps)
    return res.x.T, y.shape[0] + 2 * res.num_matvecs


def dds(
    denoiser: Denoiser,
    A: Tensor | LinearOperator,
    y: Tensor,
    alphas_bar: Tensor,
    *,
    num_steps: int = 50,
    num_cg_steps: int = 5,
    gamma: float | None = None,
    eta: float = 0.0,
    prediction: Prediction = "epsilon",
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> SamplerResult:
    """Decomposed diffusion sampler: DDIM + Tweedie + ``M`` CG steps per step, no backprop.

    Args:
        denoiser: ``denoiser(x_t (b, n), t (b,)) -> (b, n)`` returning ``eps`` or ``x0``
            (see ``prediction``); e.g. :meth:`LowRankGaussianPrior.denoiser
            <subspaces.solvers.LowRankGaussianPrior.denoiser>` or a wrapped network.
        A: ``(m, n)`` measurement operator or matrix.
        y: ``(m,)`` measurements (one problem), or ``(b, m)`` (one sample per row).
        alphas_bar: ``(T,)`` training schedule (:func:`~subspaces.solvers.alphas_bar`).
        num_steps: sampling steps, evenly spaced over the ``T`` training steps (``1..T``).
        num_cg_steps: ``M >= 0`` CG steps per sampling step (0: unconditional DDIM).
        gamma: ``None`` for the noiseless system ``A^T A x = A^T y``; ``gamma > 0`` for the
            noisy system ``(I + gamma A^T A) x = x0_hat + gamma A^T y``.
        eta: stochasticity of the re-noising, in ``[0, 1]`` (0: deterministic DDIM; the paper
            uses 0.85 for CT).
        prediction: what the denoiser returns, ``"epsilon"`` or ``"x0"``.
        num_samples: samples per measurement vector ``y (m,)``; default 1 (and a vector result).
        generator: random generator for the initial noise and the re-noising.
        callback: called after each step's data consistency as ``callback(i, t, x0_hat,
            x0_hat_prime)`` (e.g. to measure the update ``x0_hat' - x0_hat``).

    Returns:
        :class:`~subspaces.solvers.SamplerResult` with ``x``, ``num_denoiser_evals =
        num_steps``, ``num_backward = 0``, the products with ``A`` / ``A^T`` and the recomputed
        relative measurement residual.

    Raises:
        ValueError: for mismatched shapes, non-finite ``y``, ``num_steps < 1``,
            ``num_cg_steps < 0``, ``eta`` outside ``[0, 1]``, non-positive ``gamma``, or a
            denoiser that returns the wrong shape or non-finite values.
        TypeError: for wrong types or dtypes.

    Example:
        >>> from subspaces.solvers import (
        ...     LowRankGaussianPrior, SubsampledFourier, alphas_bar, betas, fourier_mask)
        >>> g = torch.Generator().manual_seed(0)
        >>> prior = LowRankGaussianPrior.smooth((16, 16), 5, length_scale=3.0, generator=g)
        >>> mask = fourier_mask((16, 16), fraction=0.3, center_fraction=0.4, generator=g)
        >>> A = SubsampledFourier(mask)
        >>> x_true = prior.sample(1, generator=g)[0]
        >>> abar = alphas_bar(betas(1000))
        >>> out = dds(prior.denoiser(abar), A, A @ x_true, abar, generator=g)
        >>> bool((out.x - x_true).norm() < 1e-3 * x_true.norm()), out.num_backward
        (True, 0)

    References:
        Chung, Lee, Ye, ICLR 2024 (arXiv:2303.05754), Algorithm 1 (VP, DDIM).
    """
    op, Y, abar, num_steps, squeeze = validate_problem(
        A, y, alphas_bar, num_steps, prediction, num_samples
    )
    num_cg_steps = check_positive_int(num_cg_steps, "num_cg_steps", minimum=0)
    eta = check_positive_float(eta, "eta", allow_zero=True)
    if eta > 1:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if gamma is not None:
        gamma = check_positive_float(gamma, "gamma")
    b, n = Y.shape[0], op.shape[1]
    ts = timesteps(abar.shape[0], num_steps).tolist()
    x = torch.randn(b, n, generator=generator, dtype=torch.float64).to(op.dtype)
    num_matvecs = 0
    x0 = x
    for i, t in enumerate(ts):
        a = abar[t]
        x0_hat, eps_hat = tweedie(denoiser, x, t, a, prediction)
        x0, mv = data_consistency(op, Y, x0_hat, num_cg_steps, gamma=gamma)
        num_matvecs += mv
        if callback is not None:
            callback(i, t, x0_hat, x0)
        if i + 1 == len(ts):
            break
        a_prev = abar[ts[i + 1]]
        noise = eps_hat
        if eta > 0:
            z = torch.randn(b, n, generator=generator, dtype=torch.float64).to(op.dtype)
            noise = eta * z + math.sqrt(1 - eta**2) * eps_hat
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * noise
    residual = relative_residual(op, x0, Y)
    return SamplerResult(
        x=x0.squeeze(0) if squeeze else x0,
        num_denoiser_evals=len(ts),
        num_backward=0,
        num_matvecs=num_matvecs + b,
        measurement_residual=residual.squeeze(0) if squeeze else residual,
    )
