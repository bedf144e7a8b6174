"""Variance-preserving noise schedules for diffusion samplers (DDPM / DDIM).

The forward process is ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps`` with
``alpha_bar_t = prod_{s <= t} (1 - beta_s)``, ``t = 0, ..., T - 1``.

References:
    Ho, Jain, Abbeel. "Denoising Diffusion Probabilistic Models." NeurIPS 2020 (arXiv:2006.11239):
    the linear beta schedule.

    Nichol, Dhariwal. "Improved Denoising Diffusion Probabilistic Models." ICML 2021
    (arXiv:2102.09672): the cosine schedule.

    Song, Meng, Ermon. "Denoising Diffusion Implicit Models." ICLR 2021 (arXiv:2010.02502): sampling
    on a sub-sequence of the training time steps.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .._checks import check_choice, check_positive_float, check_positive_int

__all__ = ["alphas_bar", "betas", "timesteps"]

BetaSchedule = Literal["linear", "cosine"]


def betas(
    num_steps: int = 1000,
    kind: BetaSchedule = "linear",
    *,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    cosine_s: float = 8e-3,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """The per-step noise variances ``beta_t`` of a variance-preserving diffusion.

    Args:
        num_steps: number of training time steps ``T`` (>= 1).
        kind: ``"linear"`` (Ho et al.: ``beta_t`` evenly spaced from ``beta_start`` to
            ``beta_end``) or ``"cosine"`` (Nichol & Dhariwal: ``alpha_bar(t) = cos^2(((t / T) + s)
            / (1 + s) pi / 2)``, betas clipped at 0.999).
        beta_start: first beta of the linear schedule, in ``(0, 1)``.
        beta_end: last beta of the linear schedule, in ``[beta_start, 1)``.
        cosine_s: offset ``s`` of the cosine schedule (> 0).
        dtype: floating dtype of the result.

    Returns:
        ``(num_steps,)`` tensor of betas in ``(0, 1)``.

    Raises:
        ValueError: for a non-positive ``num_steps``, an unknown ``kind`` or betas outside
            ``(0, 1)``.
        TypeError: if ``num_steps`` is not an int.

    Example:
        >>> b = betas(1000)
        >>> round(float(b[0]), 6), round(float(b[-1]), 6)
        (0.0001, 0.02)
    """
    num_steps = check_positive_int(num_steps, "num_steps")
    kind = check_choice(kind, "kind", ("linear", "cosine"))  # type: ignore[assignment]
    if kind == "linear":
        beta_start = check_positive_float(beta_start, "beta_start")
        beta_end = check_positive_float(beta_end, "beta_end")
        if not beta_start <= beta_end < 1.0:
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, "
                f"beta_end={beta_end}"
            )
        return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64).to(dtype)
    cosine_s = check_positive_float(cosine_s, "cosine_s")
    grid = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((grid + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
    abar = f / f[0]
    return torch.clamp(1 - abar[1:] / abar[:-1], min=1e-12, max=0.999).to(dtype)


def alphas_bar(beta: Tensor) -> Tensor:
    """Cumulative products ``alpha_bar_t = prod_{s <= t} (1 - beta_s)``.

    Args:
        beta: ``(T,)`` betas in ``(0, 1)``.

    Returns:
        ``(T,)`` tensor, decreasing from ``1 - beta_0`` towards 0.

    Raises:
        ValueError: if ``beta`` is not a non-empty 1-D tensor of values in ``(0, 1)``.

    Example:
        >>> abar = alphas_bar(betas(1000))
        >>> bool((abar[1:] < abar[:-1]).all()), round(float(abar[-1]), 5)
        (True, 4e-05)
    """
    if not isinstance(beta, Tensor) or beta.ndim != 1 or beta.numel() == 0:
        raise ValueError(f"beta must be a non-empty 1-D tensor, got {beta!r}")
    if not bool(((beta > 0) & (beta < 1)).all()):
        raise ValueError("beta must hold values in (0, 1)")
    return torch.cumprod(1 - beta.to(torch.float64), dim=0).to(beta.dtype)


def timesteps(num_train_steps: int, num_sampling_steps: int) -> Tensor:
    """The evenly spaced sub-sequence of training steps a DDIM-style sampler visits.

    Args:
        num_train_steps: ``T`` of the schedule.
        num_sampling_steps: how many steps to take, ``1 <= num_sampling_steps <= T``.

    Returns:
        ``(num_sampling_steps,)`` long tensor, decreasing, from about ``T - 1`` down to 0.

    Raises:
        ValueError: if ``num_sampling_steps`` is outside ``[1, num_train_steps]``.
        TypeError: if an argument is not an int.

    Example:
        >>> timesteps(1000, 4).tolist()
        [999, 666, 333, 0]
    """
    num_train_steps = check_positive_int(num_train_steps, "num_train_steps")
    num_sampling_steps = check_positive_int(num_sampling_steps, "num_sampling_steps")
    if num_sampling_steps > num_train_steps:
        raise ValueError(
            f"num_sampling_steps must be <= num_train_steps ({num_train_steps}), got "
            f"{num_sampling_steps}"
        )
    grid = torch.linspace(num_train_steps - 1, 0, num_sampling_steps, dtype=torch.float64)
    return grid.round().long()
