"""Matrix-free linear algebra: Krylov eigensolvers, trace and diagonal estimation, spectral
density, randomized factorizations, iterative solvers and subspace geometry.

Every function takes a ``torch.Tensor`` or a :class:`~subspaces.linops.LinearOperator` and returns a
small result dataclass that says how many matrix-vector products (``num_matvecs``) it spent.
"""

__all__: list[str] = []
