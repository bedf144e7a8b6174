"""Riemannian geometry: SPD matrices, SPD network layers and Grassmann class subspaces.

Bures-Wasserstein, generalized (power-deformed) Bures-Wasserstein and affine-invariant metrics
(:mod:`subspaces.geometry.spd`), the layers BiMap, ReEig, LogEig and SPD batch normalization
(:mod:`subspaces.geometry.spd_layers`), and the Grassmann class representation head
``GrassmannLinear`` with its optimizer ``RiemannianSGD`` (:mod:`subspaces.geometry.grassmann`).

Example:
    >>> import torch
    >>> from subspaces.geometry import bw_distance
    >>> float(bw_distance(torch.eye(2), torch.eye(2)))
    0.0
"""

from __future__ import annotations

from .grassmann import (
    GrassmannLinear,
    RiemannianSGD,
    grassmann_retract,
    orthonormality_error,
    orthonormalize,
    project_tangent,
    split_grassmann_parameters,
)
from .spd_ai import ai_distance, ai_exp, ai_karcher_mean, ai_log, ai_transport
from .spd_bw import bw_barycenter, bw_distance, bw_exp, bw_log, bw_transport
from .spd_functions import lyapunov, spd_exp, spd_log, spd_power, spd_sqrt
from .spd_gbw import gbw_barycenter, gbw_deform, gbw_distance, gbw_geodesic, gbw_undeform
from .spd_layers import BiMap, LogEig, ReEig, SPDBatchNorm
from .spd_mean import SPDMeanResult
from .spd_validation import is_spd, sym

__all__ = [
    "BiMap",
    "GrassmannLinear",
    "LogEig",
    "ReEig",
    "RiemannianSGD",
    "SPDBatchNorm",
    "SPDMeanResult",
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
    "gbw_geodesic",
    "gbw_undeform",
    "grassmann_retract",
    "is_spd",
    "lyapunov",
    "orthonormality_error",
    "orthonormalize",
    "project_tangent",
    "spd_exp",
    "spd_log",
    "spd_power",
    "spd_sqrt",
    "split_grassmann_parameters",
    "sym",
]
