"""Krylov solvers with learned parts and diffusion inverse problems (P06, P15).

Linear systems on grids (Poisson / variable-coefficient diffusion on masked domains), preconditioners,
the deep conjugate direction method (P15) and the decomposed diffusion sampler (P06), all on top of
:mod:`subspaces.linalg` (``cg`` / ``minres``) and :mod:`subspaces.linops`.
"""

__all__: list[str] = []
