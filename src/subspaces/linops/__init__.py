"""Matrix-free linear operators.

``LinearOperator`` is the one abstraction every algorithm in :mod:`subspaces.linalg` accepts
(alongside plain tensors); curvature matrices, projectors and low-rank factorizations are
subclasses.
"""

from .base import LinearOperator, as_operator
from .structured import Dense, Diagonal, Identity, LowRank, MatmatOperator, Projection

__all__ = [
    "Dense",
    "Diagonal",
    "Identity",
    "LinearOperator",
    "LowRank",
    "MatmatOperator",
    "Projection",
    "as_operator",
]
