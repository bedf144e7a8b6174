"""Shared parts of the diffusion samplers (DDS, DPS).

:func:`~subspaces.solvers.dds` and :func:`~subspaces.solvers.dps` share the :class:`Denoiser`
protocol, the result object, input validation and Tweedie's formula.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from .._checks import check_choice, check_finite, check_float_tensor, check_positive_int
from ..linops.base import LinearOperator, as_operator

Prediction = Literal["epsilon", "x0"]
Callback = Callable[[int, int, Tensor, Tensor], None]


class Denoiser(Protocol):
    """Anything called like a diffusion network: ``denoiser(x_t, t) -> Tensor``.

    ``x_t`` is a ``(b, n)`` batch of flattened noisy samples and ``t`` a ``(b,)`` long tensor of
    training time steps; the output, shaped like ``x_t``, is the noise prediction
    ``eps_theta(x_t, t)`` (``prediction="epsilon"``) or the clean-data prediction
    ``x0_theta(x_t, t)`` (``prediction="x0"``). Wrap an image network with a reshape.
    """

    def __call__(self, x: Tensor, t: Tensor) -> Tensor: ...


@dataclass(frozen=True, eq=False)
class SamplerResult:
    """Output of :func:`~subspaces.solvers.dds` and :func:`~subspaces.solvers.dps`.

    Attributes:
        x: the reconstruction(s), ``(b, n)`` (or ``(n,)`` for one sample of one ``y``).
        num_denoiser_evals: denoiser calls (each on the whole batch), i.e. network function
            evaluations (NFE) per sample.
        num_backward: backward passes through the denoiser (0 for DDS).
        num_matvecs: products with ``A`` or ``A^T`` (columns; one Gram product ``A^T A v`` counts
            2).
        measurement_residual: ``||y - A x|| / ||y||`` per sample, recomputed from ``x``.
    """

    x: Tensor
    num_denoiser_evals: int
    num_backward: int
    num_matvecs: int
    measurement_residual: Tensor


def validate_problem(
    A: Tensor | LinearOperator,
    y: Tensor,
    alphas_bar: Tensor,
    num_steps: int,
    prediction: str,
    num_samples: int | None,
) -> tuple[LinearOperator, Tensor, Tensor, int, bool]:
    """Check the operator, the measurements and the schedule.

    Returns:
        ``(op, Y (b, m), alphas_bar, num_steps, squeeze)`` where ``squeeze`` says to return a
        vector.

    Raises:
        ValueError: for mismatched shapes, non-finite measurements or schedule, a schedule
            outside ``(0, 1)``, ``num_steps`` outside ``[1, T]`` or a bad ``prediction``.
        TypeError: for wrong types or dtypes.
    """
    op = as_operator(A)
    y = check_finite(check_float_tensor(y, "y", ndim=(1, 2)), "y")
    if y.shape[-1] != op.shape[0]:
        raise ValueError(
            f"y must have {op.shape[0]} entries per row to match A of shape {op.shape}, got "
            f"shape {tuple(y.shape)}"
        )
    if y.dtype != op.dtype:
        raise TypeError(f"y has dtype {y.dtype} but A has dtype {op.dtype}")
    abar = check_finite(check_float_tensor(alphas_bar, "alphas_bar", ndim=1), "alphas_bar")
    if not bool(((abar > 0) & (abar < 1)).all()):
        raise ValueError("alphas_bar must hold values in (0, 1)")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int):
        raise TypeError(f"num_steps must be an int, got {type(num_steps).__name__}")
    if not 1 <= num_steps <= abar.shape[0]:
        raise ValueError(
            f"num_steps must be in [1, {abar.shape[0]}] (the schedule length), got {num_steps}"
        )
    check_choice(prediction, "prediction", ("epsilon", "x0"))
    squeeze = y.ndim == 1 and num_samples is None
    Y = y.unsqueeze(0) if y.ndim == 1 else y
    if num_samples is not None:
        num_samples = check_positive_int(num_samples, "num_samples")
        if y.ndim == 2 and num_samples != y.shape[0]:
            raise ValueError(
                f"num_samples={num_samples} but y holds {y.shape[0]} measurement vectors"
            )
        Y = Y.expand(num_samples, -1)
    return op, Y, abar.to(op.dtype), num_steps, squeeze


def tweedie(
    denoiser: Denoiser, x: Tensor, t: int, a: Tensor, prediction: str
) -> tuple[Tensor, Tensor]:
    """Evaluate the denoiser once and return ``(x0_hat, eps_hat)``.

    Returns:
        Both predictions, from the one the denoiser makes: ``x0 = (x - sqrt(1 - a) eps) /
        sqrt(a)`` (Tweedie) or ``eps = (x - sqrt(a) x0) / sqrt(1 - a)``.

    Raises:
        ValueError: if the denoiser returns a tensor of the wrong shape or non-finite values.
        TypeError: if it returns something other than a tensor.
    """
    steps = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    out = denoiser(x, steps)
    if not isinstance(out, Tensor):
        raise TypeError(f"the denoiser must return a Tensor, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(
            f"the denoiser returned shape {tuple(out.shape)}, expected {tuple(x.shape)} "
            f"(like x_t) at time step {t}"
        )
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"the denoiser returned non-finite values at time step {t}")
    if prediction == "epsilon":
        return (x - (1 - a).sqrt() * out) / a.sqrt(), out
    return out, (x - a.sqrt() * out) / (1 - a).sqrt()


def relative_residual(op: LinearOperator, X: Tensor, Y: Tensor) -> Tensor:
    """``||y - A x|| / ||y||`` per row (``||y - A x||`` where ``y = 0``).

    Returns:
        ``(b,)`` tensor.
    """
    r = (Y - op.matmat(X.T).T).norm(dim=1)
    ynorm = Y.norm(dim=1)
    return torch.where(ynorm > 0, r / torch.where(ynorm > 0, ynorm, 1), r)
