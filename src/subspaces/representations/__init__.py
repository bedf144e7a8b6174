"""Comparing representations: similarity measures between activations of the same inputs.

Every measure is a pure function of an ``(N, p)`` and an ``(N, q)`` tensor: CKA (linear, RBF,
biased or unbiased, and an exact streaming estimator), SVCCA, PWCCA, Procrustes distance,
principal angles between principal subspaces, and bootstrap confidence intervals. Activations
are captured from named modules inside a context manager that removes its hooks; convergent
learning (Li et al. 2016) matches units across networks one-to-one, one-to-many and many-to-many.

Example:
    >>> import torch
    >>> from subspaces.representations import linear_cka
    >>> X = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    >>> round(linear_cka(X, 2.0 * X), 6)
    1.0
"""

from .attention_path import (
    AttentionPathResult,
    attention_excess_loss,
    attention_regularization_path,
)
from .attention_svm import (
    AttentionGDResult,
    AttentionSVMResult,
    attention_gd,
    attention_svm,
    directional_correlation,
    is_locally_optimal,
    make_attention_data,
    token_scores,
)
from .bootstrap import BootstrapResult, bootstrap_ci
from .capture import capture_activations, collect_activations, layer_similarity_matrix
from .cca import CCAResult, pwcca, svcca
from .cka import StreamingLinearCKA, linear_cka, rbf_cka
from .cka_pairs import StreamingCKAMatrix, cka_matrix
from .convergent import (
    SparsePredictionResult,
    UnitClusters,
    UnitMatching,
    cluster_units,
    match_units,
    sparse_prediction,
    unit_correlation,
)
from .principal_subspace import SubspaceSimilarityResult, subspace_similarity
from .procrustes import procrustes_distance

__all__ = [
    "AttentionGDResult",
    "AttentionPathResult",
    "AttentionSVMResult",
    "BootstrapResult",
    "CCAResult",
    "SparsePredictionResult",
    "StreamingCKAMatrix",
    "StreamingLinearCKA",
    "SubspaceSimilarityResult",
    "UnitClusters",
    "UnitMatching",
    "attention_excess_loss",
    "attention_gd",
    "attention_regularization_path",
    "attention_svm",
    "bootstrap_ci",
    "capture_activations",
    "cka_matrix",
    "cluster_units",
    "collect_activations",
    "directional_correlation",
    "is_locally_optimal",
    "layer_similarity_matrix",
    "linear_cka",
    "make_attention_data",
    "match_units",
    "procrustes_distance",
    "pwcca",
    "rbf_cka",
    "sparse_prediction",
    "subspace_similarity",
    "svcca",
    "token_scores",
    "unit_correlation",
]
