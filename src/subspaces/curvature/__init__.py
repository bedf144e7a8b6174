"""Curvature of real models: Hessian, generalized Gauss-Newton and Fisher as matrix-free operators,
and their spectra (top eigenpairs, trace, density, outliers vs bulk).

Every operator is a :class:`~subspaces.linops.LinearOperator` over ``(model, loss_fn, data)``, so
every algorithm of :mod:`subspaces.linalg` applies to it.
"""

from .base import CurvatureOperator
from .fisher import FisherOperator
from .ggn import GGNOperator
from .hessian import HessianOperator
from .spectrum import BulkOutliers, bulk_outliers, density, top_eigen, trace

__all__ = [
    "BulkOutliers",
    "CurvatureOperator",
    "FisherOperator",
    "GGNOperator",
    "HessianOperator",
    "bulk_outliers",
    "density",
    "top_eigen",
    "trace",
]
