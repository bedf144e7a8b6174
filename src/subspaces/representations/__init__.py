"""Comparing representations: similarity measures between activations of the same inputs.

Every measure is a pure function of an ``(N, p)`` and an ``(N, q)`` tensor: CKA (linear, RBF,
biased or unbiased, and an exact streaming estimator), SVCCA, PWCCA, Procrustes distance,
principal angles between principal subspaces, and bootstrap confidence intervals.

Example:
    >>> import torch
    >>> from subspaces.representations import linear_cka
    >>> X = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    >>> round(linear_cka(X, 2.0 * X), 6)
    1.0
"""

from .similarity import (
    BootstrapResult,
    CCAResult,
    StreamingLinearCKA,
    SubspaceSimilarityResult,
    bootstrap_ci,
    linear_cka,
    procrustes_distance,
    pwcca,
    rbf_cka,
    subspace_similarity,
    svcca,
)

__all__ = [
    "BootstrapResult",
    "CCAResult",
    "StreamingLinearCKA",
    "SubspaceSimilarityResult",
    "bootstrap_ci",
    "linear_cka",
    "procrustes_distance",
    "pwcca",
    "rbf_cka",
    "subspace_similarity",
    "svcca",
]
