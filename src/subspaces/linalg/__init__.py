"""Matrix-free linear algebra.

Krylov eigensolvers, trace and diagonal estimation, spectral density, randomized
factorizations, iterative solvers and subspace geometry.

Every function takes a ``torch.Tensor`` or a :class:`~subspaces.linops.LinearOperator` and returns a
small result dataclass that says how many matrix-vector products (``num_matvecs``) it spent.
"""

from .eigen import EigenResult
from .lanczos import lanczos
from .power import power_iteration
from .randomized import (
    EighResult,
    RangeResult,
    SVDResult,
    nystrom,
    randomized_eigh,
    randomized_range_finder,
    randomized_svd,
)
from .sketch import (
    DistortionResult,
    LewisResult,
    LpRegressionResult,
    SampleResult,
    countsketch,
    distortion,
    gaussian_sketch,
    leverage_scores,
    lewis_weights,
    lp_regression,
    root_leverage_scores,
    sensitivity_sample,
    srht,
)
from .slq import DensityResult, slq_density
from .solvers import SolveResult, cg, minres
from .subspace import Subspace
from .trace import DiagonalResult, TraceResult, diagonal, hutchinson_trace, hutchpp_trace, xtrace

__all__ = [
    "DensityResult",
    "DiagonalResult",
    "DistortionResult",
    "EigenResult",
    "EighResult",
    "LewisResult",
    "LpRegressionResult",
    "RangeResult",
    "SVDResult",
    "SampleResult",
    "SolveResult",
    "Subspace",
    "TraceResult",
    "cg",
    "countsketch",
    "diagonal",
    "distortion",
    "gaussian_sketch",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos",
    "leverage_scores",
    "lewis_weights",
    "lp_regression",
    "minres",
    "nystrom",
    "power_iteration",
    "randomized_eigh",
    "randomized_range_finder",
    "randomized_svd",
    "root_leverage_scores",
    "sensitivity_sample",
    "slq_density",
    "srht",
    "xtrace",
]
