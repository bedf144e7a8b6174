"""Curvature of real models: matrix-free curvature operators and their spectra.

The Hessian, generalized Gauss-Newton and Fisher are matrix-free operators; their spectra are
summarized by top eigenpairs, trace, density, and outliers vs bulk.

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
