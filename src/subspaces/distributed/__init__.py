"""Beyond one machine: sequential gradient coding for stragglers (P26).

Data-parallel curvature lives with the operators (``distributed=True`` of
:class:`~subspaces.curvature.CurvatureOperator`) and the reproduction gallery's process and Ray
backends in :mod:`subspaces.experiments.gallery`; this package holds what is distributed
computing in its own right: :mod:`subspaces.distributed.coding`.
"""
