"""Similarity measures between two representations of the same ``N`` inputs (compatibility path).

The measures live in one module per concept: CKA of one pair (:mod:`.cka`), CKA between every
pair of many representations (:mod:`.cka_pairs`), SVCCA and PWCCA (:mod:`.cca`), the Procrustes
distance (:mod:`.procrustes`), principal angles between principal subspaces
(:mod:`.principal_subspace`) and row-bootstrap intervals (:mod:`.bootstrap`). This module
re-exports their public names so that ``from subspaces.representations.similarity import ...``
keeps working; new code imports from :mod:`subspaces.representations`.

Example:
    >>> import torch
    >>> from subspaces.representations.similarity import linear_cka
    >>> X = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    >>> round(linear_cka(X, 2.0 * X), 6)
    1.0
"""

from __future__ import annotations

from .bootstrap import BootstrapResult, bootstrap_ci
from .cca import CCAResult, pwcca, svcca
from .cka import StreamingLinearCKA, linear_cka, rbf_cka
from .cka_pairs import StreamingCKAMatrix, cka_matrix
from .principal_subspace import SubspaceSimilarityResult, subspace_similarity
from .procrustes import procrustes_distance

__all__ = [
    "BootstrapResult",
    "CCAResult",
    "StreamingCKAMatrix",
    "StreamingLinearCKA",
    "SubspaceSimilarityResult",
    "bootstrap_ci",
    "cka_matrix",
    "linear_cka",
    "procrustes_distance",
    "pwcca",
    "rbf_cka",
    "subspace_similarity",
    "svcca",
]
