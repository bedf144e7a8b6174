r"""SPD matrices: Bures-Wasserstein, generalized Bures-Wasserstein and affine-invariant metrics.

All functions take tensors of shape ``(..., n, n)`` (batched over leading dimensions) and compute
matrix functions through a symmetric eigendecomposition, with a backward pass by the
Daleckii-Krein formula (divided differences, with ``f'`` on (near-)equal eigenvalues), so that
gradients stay finite when eigenvalues repeat (after :class:`~subspaces.geometry.ReEig`, say).
Use float64 for the accuracies the tests certify.

Bures-Wasserstein (BW) geometry (Bhatia, Jain & Lim 2019, "On the Bures-Wasserstein distance
between positive definite matrices"; Malagò, Montrucchio & Pistone 2018):

* ``d(A, B)^2 = tr A + tr B - 2 tr (A^{1/2} B A^{1/2})^{1/2}``;
* ``Log_S(X) = (S X)^{1/2} + (X S)^{1/2} - 2 S = T S + S T - 2 S`` with the optimal transport map
  ``T = S^{-1/2} (S^{1/2} X S^{1/2})^{1/2} S^{-1/2}``;
* ``Exp_S(V) = S + V + L_S[V] S L_S[V]``, where ``L_S[V]`` solves the Lyapunov equation
  ``S L + L S = V``;
* barycenter by the fixed point ``S <- S^{-1/2} (sum_i w_i (S^{1/2} X_i S^{1/2})^{1/2})^2 S^{-1/2}``
  (Álvarez-Esteban, del Barrio, Cuesta-Albertos & Matrán 2016).

Transport used for batch-norm recentering (:func:`bw_transport`): a tangent vector ``V`` at ``S``
is the velocity field ``x -> L x`` with ``L = L_S[V]`` (Otto's calculus); the transport keeps the
velocity field and re-expresses it at ``P``: ``V -> L P + P L``. It is *not* the Levi-Civita
parallel transport (which has no simple closed form), but it has the property batch
normalization needs: with ``M`` the BW barycenter of ``X_i``, the points
``Exp_I(transport(Log_M X_i))`` ``= T_i^2`` have BW barycenter exactly ``I`` (because
``sum_i w_i T_i = I`` characterizes the barycenter).

Generalized BW (GBW) with power deformation ``theta`` and metric parameter ``M`` (Han, Mishra,
Jawanpuria & Gao 2023, "Learning with symmetric positive definite matrices via generalized
Bures-Wasserstein geometry"; Wang, Jin, Chen, Luo & Wu, CVPR 2025, "Learning to normalize on the
SPD manifold under Bures-Wasserstein geometry", arXiv:2504.00660): the chart
``phi(S) = M^{-1/2} S^theta M^{-1/2}`` (:func:`gbw_deform`; inverse :func:`gbw_undeform`) is an
isometry onto BW up to the factor ``theta^2``, so ``d(A, B) = d_BW(phi(A), phi(B)) / |theta|``
(:func:`gbw_distance`; with ``theta = 1`` Han et al.'s ``tr(M^{-1} A) + tr(M^{-1} B) -
2 tr((A^{1/2} M^{-1} B M^{-1} A^{1/2})^{1/2})`` under the root), geodesics and barycenters are
``phi^{-1}`` of the BW ones in the chart (:func:`gbw_geodesic`, :func:`gbw_barycenter`), and
``theta = 1``, ``M = I`` gives BW.

Affine-invariant (AI) metric (Pennec, Fillard & Ayache 2006; Bhatia 2007):
``d(A, B) = ||log(A^{-1/2} B A^{-1/2})||_F``,
``Log_S(X) = S^{1/2} log(S^{-1/2} X S^{-1/2}) S^{1/2}``,
``Exp_S(V) = S^{1/2} exp(S^{-1/2} V S^{-1/2}) S^{1/2}``, parallel transport from ``S`` to ``P``
``V -> E V E^T`` with ``E = (P S^{-1})^{1/2}``, and the Karcher mean by Riemannian gradient descent.

The code lives in one module per concept: symmetric/SPD checks (:mod:`.spd_validation`), matrix
functions and the Lyapunov solve (:mod:`.spd_functions`), the mean result and certificate
(:mod:`.spd_mean`), and one module per metric (:mod:`.spd_bw`, :mod:`.spd_gbw`,
:mod:`.spd_ai`). This module re-exports their public names so that
``from subspaces.geometry.spd import ...`` keeps working; new code imports from
:mod:`subspaces.geometry`.

Example:
    >>> import torch
    >>> A = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))
    >>> B = torch.eye(2, dtype=torch.float64)
    >>> round(float(bw_distance(A, B)), 6)  # sqrt((1-1)^2 + (2-1)^2)
    1.0
"""

from __future__ import annotations

from .spd_ai import ai_distance, ai_exp, ai_karcher_mean, ai_log, ai_transport
from .spd_bw import (
    _pair_kernel,  # noqa: F401  (private; tests import it from this path)
    bw_barycenter,
    bw_distance,
    bw_exp,
    bw_log,
    bw_transport,
)
from .spd_functions import lyapunov, spd_exp, spd_log, spd_power, spd_sqrt
from .spd_gbw import gbw_barycenter, gbw_deform, gbw_distance, gbw_geodesic, gbw_undeform
from .spd_mean import SPDMeanResult
from .spd_validation import is_spd, sym

__all__ = [
    "SPDMeanResult",
    "ai_distance",
    "ai_exp",
    "ai_karcher_mean",
    "ai_log",
    "ai_transport",
    "bw_barycenter",
    "bw_distance",
    "bw_exp",
    "bw_log",
    "bw_transport",
    "gbw_barycenter",
    "gbw_deform",
    "gbw_distance",
    "gbw_geodesic",
    "gbw_undeform",
    "is_spd",
    "lyapunov",
    "spd_exp",
    "spd_log",
    "spd_power",
    "spd_sqrt",
    "sym",
]
