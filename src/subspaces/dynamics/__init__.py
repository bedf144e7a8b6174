"""Learning dynamics: how training moves the weights, and where it cannot.

Curvature tracked along training (``CurvatureTracker``), and the exact dynamics of linear
student-teacher learning with its frozen subspace (:mod:`subspaces.dynamics.linear_theory`).

References:
    Advani, Saxe, Sompolinsky. "High-dimensional dynamics of generalization error in neural
    networks." Neural Networks 132, 2020. arXiv:1710.03667.
"""

from .linear_theory import (
    ErrorCurves,
    MarchenkoPastur,
    StudentTeacher,
    asymptotic_test_error,
    closed_form_weights,
    decay_factors,
    error_curves,
    frozen_subspace_basis,
    frozen_subspace_drift,
    run_gradient_descent,
    student_teacher,
    theory_error_curves,
)
from .tracker import CurvatureTracker

__all__ = [
    "CurvatureTracker",
    "ErrorCurves",
    "MarchenkoPastur",
    "StudentTeacher",
    "asymptotic_test_error",
    "closed_form_weights",
    "decay_factors",
    "error_curves",
    "frozen_subspace_basis",
    "frozen_subspace_drift",
    "run_gradient_descent",
    "student_teacher",
    "theory_error_curves",
]
