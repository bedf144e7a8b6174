"""Bilevel optimization: LV-HBA (P27), BSVRB (P28) and implicit-differentiation hypergradients.

Constrained bilevel problems with coupled lower-level constraints (LV-HBA), many-block stochastic
bilevel problems (BSVRB), and the implicit-differentiation hypergradient by conjugate gradients
both are compared against.

Example:
    >>> from subspaces.bilevel import Box
    >>> Box(0.0, 1.0).project(torch.tensor([2.0])).tolist()
    [1.0]
"""

import torch  # noqa: F401  (used by the doctest)

from .bsvrb import MultiBlockProblem, bsvrb, msvr_gamma, msvr_update
from .implicit import aid_solve, implicit_hypergradient
from .lv_hba import lv_hba
from .problems import MultiTaskRidge, SVMHyperparameters
from .projections import (
    Box,
    ConvexSet,
    L1Ball,
    L2Ball,
    NonNegative,
    Polyhedron,
    Product,
    Reals,
    Simplex,
    split_projector,
)
from .result import BilevelResult, History

__all__ = [  # noqa: RUF022 (grouped by kind)
    # solvers
    "aid_solve",
    "bsvrb",
    "implicit_hypergradient",
    "lv_hba",
    # estimators
    "msvr_gamma",
    "msvr_update",
    # results
    "BilevelResult",
    "History",
    # problems
    "MultiBlockProblem",
    "MultiTaskRidge",
    "SVMHyperparameters",
    # sets
    "Box",
    "ConvexSet",
    "L1Ball",
    "L2Ball",
    "NonNegative",
    "Polyhedron",
    "Product",
    "Reals",
    "Simplex",
    "split_projector",
]
