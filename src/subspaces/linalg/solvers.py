"""Krylov solvers for symmetric systems: preconditioned CG (block of right-hand sides) and MINRES.

The solvers live in ``_cg.py`` and ``_minres.py`` and share :class:`SolveResult` and the
system checks of ``_systems.py``; this module is their public home
(``subspaces.linalg.solvers.cg``, also exported as ``subspaces.linalg.cg``).

References:
    Hestenes, Stiefel. "Methods of conjugate gradients for solving linear systems." J. Res. Nat.
    Bur. Standards 49(6), 1952.

    Paige, Saunders. "Solution of sparse indefinite systems of linear equations." SIAM J. Numer.
    Anal. 12(4), 1975.
"""

from __future__ import annotations

from ._cg import cg
from ._minres import minres
from ._systems import SolveResult

__all__ = ["SolveResult", "cg", "minres"]
