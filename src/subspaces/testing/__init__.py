"""Tools to test operators and estimators: matrices of known spectrum and checking functions.

Exported so users can check their own operators the way the library checks its own; also the
set-up of local multi-process (gloo) tests: :func:`free_port`, :func:`init_gloo` and
:func:`gloo_worker_threads`.
"""

from .checks import assert_matches_dense, check_estimator_convergence
from .matrices import (
    KnownSpectrumOperator,
    clustered_spectrum,
    gap_spectrum,
    geometric_spectrum,
    marchenko_pastur_spectrum,
    matrix_with_spectrum,
    polynomial_spectrum,
    random_orthogonal,
)
from .processes import free_port, gloo_worker_threads, init_gloo
from .reference import dense_ggn, dense_hessian, finite_difference_hessian

__all__ = [
    "KnownSpectrumOperator",
    "assert_matches_dense",
    "check_estimator_convergence",
    "clustered_spectrum",
    "dense_ggn",
    "dense_hessian",
    "finite_difference_hessian",
    "free_port",
    "gap_spectrum",
    "geometric_spectrum",
    "gloo_worker_threads",
    "init_gloo",
    "marchenko_pastur_spectrum",
    "matrix_with_spectrum",
    "polynomial_spectrum",
    "random_orthogonal",
]
