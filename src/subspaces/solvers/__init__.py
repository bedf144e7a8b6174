"""Krylov solvers with learned parts and diffusion inverse problems (P06, P15).

Linear systems on grids (Poisson / variable-coefficient diffusion on masked domains),
preconditioners, the deep conjugate direction method (P15) and the decomposed diffusion sampler
(P06), all on top of :mod:`subspaces.linalg` (``cg`` / ``minres``) and :mod:`subspaces.linops`.
"""

from .flexible_cg import Preconditioner, flexible_cg
from .grids import GridDiffusion, box_mask, disk_mask, poisson_2d, random_obstacles
from .preconditioners import IncompleteCholesky, jacobi

__all__: list[str] = [
    "GridDiffusion",
    "IncompleteCholesky",
    "Preconditioner",
    "box_mask",
    "disk_mask",
    "flexible_cg",
    "jacobi",
    "poisson_2d",
    "random_obstacles",
]
