"""Low-rank matrix recovery: matrix completion by alternating minimization, and its baselines.

- Problems with a known answer: :func:`low_rank_matrix`, :func:`sample_entries`,
  :class:`Observations`, :class:`LowRankMatrix`.
- Solvers: :func:`altmin_complete` (batched exact or sketched/approximate alternating least
  squares; Jain et al. 2013, Gu et al. 2023) and :func:`soft_impute` (Mazumder et al. 2010).
"""

from .completion import CompletionResult, altmin_complete, soft_impute
from .problems import LowRankMatrix, Observations, low_rank_matrix, sample_entries

__all__ = [
    "CompletionResult",
    "LowRankMatrix",
    "Observations",
    "altmin_complete",
    "low_rank_matrix",
    "sample_entries",
    "soft_impute",
]
