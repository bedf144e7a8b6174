"""Riemannian geometry of SPD matrices and SPD network layers.

Bures-Wasserstein, generalized (power-deformed) Bures-Wasserstein and affine-invariant metrics
(:mod:`subspaces.geometry.spd`) and the layers BiMap, ReEig, LogEig and SPD batch normalization
(:mod:`subspaces.geometry.spd_layers`).

Example:
    >>> import torch
    >>> from subspaces.geometry import bw_distance
    >>> float(bw_distance(torch.eye(2), torch.eye(2)))
    0.0
"""

from __future__ import annotations

from .spd import (
    ai_distance,
    ai_exp,
    ai_karcher_mean,
    ai_log,
    ai_transport,
    bw_barycenter,
    bw_distance,
    bw_exp,
    bw_log,
    bw_transport,
    gbw_barycenter,
    gbw_deform,
    gbw_distance,
    gbw_undeform,
    is_spd,
    lyapunov,
    spd_exp,
    spd_log,
    spd_power,
    spd_sqrt,
    sym,
)
from .spd_layers import BiMap, LogEig, ReEig, SPDBatchNorm

__all__ = [
    "BiMap",
    "LogEig",
    "ReEig",
    "SPDBatchNorm",
    "ai_distance",
    "ai_exp",
    "ai_karcher_mean",
    "ai_log",
    "ai_transport",
    "bw_barycenter",
    "bw_distance",
    "bw_exp",
    "bw_log",
    "bw_transport",
    "gbw_barycenter",
    "gbw_deform",
    "gbw_distance",
    "gbw_undeform",
    "is_spd",
    "lyapunov",
    "spd_exp",
    "spd_log",
    "spd_power",
    "spd_sqrt",
    "sym",
]
