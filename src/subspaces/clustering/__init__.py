"""Subspace clustering: coding rate and MCR², MLC, and the baselines it is compared with.

- :mod:`~subspaces.clustering.coding_rate`: coding rate ``R(Z, eps)``, the class-conditional rate
  (hard or soft memberships), the MCR² rate reduction, its closed-form gradient and loss (P04).
- :mod:`~subspaces.clustering.sinkhorn`: log-domain Sinkhorn iterations for doubly stochastic
  memberships.
- :mod:`~subspaces.clustering.metrics`: clustering accuracy (Hungarian matching), NMI, ARI.
- Estimators with the scikit-learn API (``fit``, ``predict``, ``fit_predict``, ``labels_``,
  ``random_state``); input validation shared through :mod:`~subspaces.clustering._checks`.

Example:
    >>> import torch
    >>> from subspaces.clustering import clustering_accuracy, coding_rate
    >>> clustering_accuracy([0, 0, 1], [1, 1, 0])
    1.0
    >>> float(coding_rate(torch.zeros(4, 2)))
    0.0
"""

from __future__ import annotations

from .base import ClusterEstimator
from .coding_rate import (
    class_conditional_rate,
    coding_rate,
    mcr2_loss,
    rate_reduction,
    rate_reduction_grad,
)
from .metrics import (
    adjusted_rand_index,
    clustering_accuracy,
    contingency_matrix,
    match_labels,
    normalized_mutual_info,
)
from .sinkhorn import sinkhorn, sinkhorn_log

__all__ = [
    "ClusterEstimator",
    "adjusted_rand_index",
    "class_conditional_rate",
    "clustering_accuracy",
    "coding_rate",
    "contingency_matrix",
    "match_labels",
    "mcr2_loss",
    "normalized_mutual_info",
    "rate_reduction",
    "rate_reduction_grad",
    "sinkhorn",
    "sinkhorn_log",
]
