"""Subspace clustering: coding rate and MCR², MLC, and the baselines it is compared with.

- :mod:`~subspaces.clustering.coding_rate`: coding rate ``R(Z, eps)``, the class-conditional rate
  (hard or soft memberships), the MCR² rate reduction, its closed-form gradient and loss (P04).
- :mod:`~subspaces.clustering.sinkhorn`: log-domain Sinkhorn iterations for doubly stochastic
  memberships.
- :mod:`~subspaces.clustering.metrics`: clustering accuracy (Hungarian matching), NMI, ARI.
- :class:`MLC`: manifold linearizing and clustering (P04), a network trained with the rate
  reduction and a Sinkhorn membership; learned cluster subspaces as ``Subspace`` objects.
- Baselines: :class:`KSubspaces`, :class:`EnSC` (elastic-net self-expression by accelerated
  proximal gradient, then spectral clustering), :func:`spectral_clustering` on an affinity, and
  scikit-learn's k-means and spectral clustering as :class:`KMeans`, :class:`SpectralClustering`.
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

from .base import ClusterEstimator, mean_principal_cosines, pairwise_principal_angles
from .coding_rate import (
    class_conditional_rate,
    coding_rate,
    mcr2_loss,
    rate_reduction,
    rate_reduction_grad,
)
from .ensc import EnSC, elastic_net_self_expression, ensc_affinity
from .ksubspaces import KSubspaces
from .metrics import (
    adjusted_rand_index,
    clustering_accuracy,
    contingency_matrix,
    match_labels,
    normalized_mutual_info,
)
from .mlc import MLC, MLCNetwork, mlc_loss
from .sinkhorn import sinkhorn, sinkhorn_log
from .spectral import KMeans, SpectralClustering, kmeans, spectral_clustering, spectral_embedding

__all__ = [
    "MLC",
    "ClusterEstimator",
    "EnSC",
    "KMeans",
    "KSubspaces",
    "MLCNetwork",
    "SpectralClustering",
    "adjusted_rand_index",
    "class_conditional_rate",
    "clustering_accuracy",
    "coding_rate",
    "contingency_matrix",
    "elastic_net_self_expression",
    "ensc_affinity",
    "kmeans",
    "match_labels",
    "mcr2_loss",
    "mean_principal_cosines",
    "mlc_loss",
    "normalized_mutual_info",
    "pairwise_principal_angles",
    "rate_reduction",
    "rate_reduction_grad",
    "sinkhorn",
    "sinkhorn_log",
    "spectral_clustering",
    "spectral_embedding",
]

# Diffusion models as subspace clustering (P20) and supervised dictionary learning (P25).
from .denoiser import (
    DiffusionSubspaceClustering,
    LowRankDenoiser,
    clustering_loss_prediction,
    denoising_loss,
    recover_subspaces,
    subspace_clustering_objective,
    subspace_recovery_error,
    train_denoiser,
    train_denoiser_batch,
)
from .dictionary import SupervisedDictionary, sdl_objective
from .mixtures import LowRankGaussianMixture, equiangular_bases

__all__ += [
    "DiffusionSubspaceClustering",
    "LowRankDenoiser",
    "LowRankGaussianMixture",
    "SupervisedDictionary",
    "clustering_loss_prediction",
    "denoising_loss",
    "equiangular_bases",
    "recover_subspaces",
    "sdl_objective",
    "subspace_clustering_objective",
    "subspace_recovery_error",
    "train_denoiser",
    "train_denoiser_batch",
]
