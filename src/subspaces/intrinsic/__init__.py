"""Intrinsic dimension: training in random subspaces ``theta0 + P z`` (Li et al., ICLR 2018).

Li, Farkhoor, Liu and Yosinski, "Measuring the intrinsic dimension of objective landscapes"
(ICLR 2018, arXiv:1804.08838): train only ``z`` in ``theta = theta0 + P z`` with a fixed random
projection ``P`` (dense, sparse or Fastfood); ``d_int90`` is the smallest ``d`` reaching 90 % of
the fully trained model's accuracy, and ``(seed, z)`` is a compressed form of the network.

Example:
    >>> from subspaces.intrinsic import FastfoodProjection
    >>> FastfoodProjection(100, 200_000).memory_bytes < 200_000 * 32
    True
"""

from .parallel import BACKENDS, PointTask, run_point
from .projections import (
    DenseProjection,
    FastfoodProjection,
    IdentityProjection,
    Projection,
    SparseProjection,
    fwht,
    make_projection,
)
from .subspace_training import (
    IntrinsicDimensionResult,
    SubspaceTrainingResult,
    d_int90_search,
    evaluate,
    export_compressed,
    load_compressed,
    subspace_parameters,
    train_in_subspace,
)

__all__ = [
    "BACKENDS",
    "DenseProjection",
    "FastfoodProjection",
    "IdentityProjection",
    "IntrinsicDimensionResult",
    "PointTask",
    "Projection",
    "SparseProjection",
    "SubspaceTrainingResult",
    "d_int90_search",
    "evaluate",
    "export_compressed",
    "fwht",
    "load_compressed",
    "make_projection",
    "run_point",
    "subspace_parameters",
    "train_in_subspace",
]
