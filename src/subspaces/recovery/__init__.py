"""Low-rank matrix recovery: matrix completion by alternating minimization, and its baselines.

- Problems with a known answer: :func:`low_rank_matrix`, :func:`sample_entries`,
  :class:`Observations`, :class:`LowRankMatrix`.
- Solvers: :func:`altmin_complete` (batched exact or sketched/approximate alternating least
  squares; Jain et al. 2013, Gu et al. 2023) and :func:`soft_impute` (Mazumder et al. 2010).
- Matrix sensing (P23): :func:`gaussian_measurements`, :func:`symmetric_gd`, :func:`asymmetric_gd`
  with the one-step rebalancing that removes the dependence on the initialization scale.
- Robust recovery (P29): :func:`subgradient_method` (l1 loss, small initialization, geometric
  steps) against :func:`l2_gradient_descent`, on :func:`outlier_measurements`.
"""

from .completion import CompletionResult, altmin_complete, soft_impute
from .problems import LowRankMatrix, Observations, low_rank_matrix, sample_entries
from .robust import l2_gradient_descent, outlier_measurements, subgradient_method
from .sensing import (
    FactoredResult,
    Measurements,
    asymmetric_gd,
    gaussian_measurements,
    psd_target,
    symmetric_gd,
)

__all__ = [
    "CompletionResult",
    "FactoredResult",
    "LowRankMatrix",
    "Measurements",
    "Observations",
    "altmin_complete",
    "asymmetric_gd",
    "gaussian_measurements",
    "l2_gradient_descent",
    "low_rank_matrix",
    "outlier_measurements",
    "psd_target",
    "sample_entries",
    "soft_impute",
    "subgradient_method",
    "symmetric_gd",
]
