r"""The regularization path of one-layer attention (Tarzanagh, Li, Thrampoulidis & Oymak 2023).

"Transformers as Support Vector Machines" (NeurIPS 2023, arXiv:2308.16898), Theorems 2 and 5:
the solutions of the norm-constrained training problem

    ``W_R = argmin_{||W|| <= R} L(W)``

converge in direction, as ``R -> infinity``, to the attention SVM that separates the globally
optimal tokens, in the same norm. For ``W`` itself the norm is Frobenius; for the key-query
parameterization ``W = K Q^T`` with ``(||K||_F^2 + ||Q||_F^2) / 2 <= R`` (square ``K``, ``Q``),
the set of reachable ``W`` is exactly the nuclear-norm ball of radius ``R`` (because
``||W||_* = min_{W = K Q^T} (||K||_F^2 + ||Q||_F^2) / 2``), so the ``(K, Q)`` path is the
nuclear-norm path and its limit is the nuclear-norm SVM.

:func:`attention_regularization_path` computes ``W_R`` on a grid of radii by projected gradient
descent with backtracking, warm-started along the path. The loss is the logistic loss of
``f_i = v^T X_i^T softmax(X_i W z_i)``; since ``L(W)`` approaches its infimum exponentially fast
in ``R``, the function minimized is the *excess* loss over that infimum, evaluated without
cancellation: with ``gamma`` the token scores and ``alpha_i`` the top-scoring token,
``y_i f_i = gamma_{i,alpha_i} - delta_i`` where ``delta_i = sum_t s_{i,t} (gamma_{i,alpha_i} -
gamma_{i,t}) >= 0``, and ``l(gamma - delta) - l(gamma) = log1p(sigmoid(-gamma) expm1(delta))``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_choice, check_positive_float, check_positive_int
from .attention_svm import _check_problem, _einsum, token_scores

__all__ = ["AttentionPathResult", "attention_excess_loss", "attention_regularization_path"]


@dataclass(frozen=True)
class AttentionPathResult:
    """Solutions of the norm-constrained attention problem along a grid of radii.

    Attributes:
        radii: the radii ``R`` (increasing).
        solutions: ``(len(radii), d, d)`` the solutions ``W_R``.
        excess_loss: the excess logistic loss at each solution.
        iterations: projected-gradient iterations spent at each radius.
        converged: per radius, whether the KKT residual is at most ``tol``.
        kkt_residual: per radius, the first-order stationarity residual of the constrained
            problem at the returned solution, recomputed from its gradient ``g``:
            ``1 - <-g, W> / (R ||g||_dual)`` with the dual norm (Frobenius for ``"fro"``,
            spectral for ``"nuclear"``). It is 0 exactly when ``-g`` lies in the normal cone
            of the ball at ``W`` (``W`` on the sphere and ``-g`` attaining the dual norm).
        norm_type: ``"fro"`` or ``"nuclear"``.

    Example:
        Each solution lies on its sphere, at a certified stationary point, and a larger radius
        lowers the excess loss:

        >>> import torch
        >>> from subspaces.representations import (
        ...     attention_regularization_path, attention_svm, make_attention_data)
        >>> data = make_attention_data(2, 3, 6, generator=torch.Generator().manual_seed(0))
        >>> X, Z, y, v = data["X"], data["Z"], data["y"], data["v"]
        >>> R = attention_svm(X, Z, data["alpha"]).norm
        >>> path = attention_regularization_path(X, Z, y, v, [R, 20 * R])
        >>> [round(float(torch.linalg.matrix_norm(W)) / r, 6) for W, r in
        ...  zip(path.solutions, path.radii)]
        [1.0, 1.0]
        >>> all(path.converged), max(path.kkt_residual) < 1e-6, path.norm_type
        (True, True, 'fro')
        >>> path.excess_loss[1] < path.excess_loss[0]
        True
    """

    radii: list[float]
    solutions: Tensor
    excess_loss: list[float]
    iterations: list[int]
    converged: list[bool]
    kkt_residual: list[float]
    norm_type: str


def attention_excess_loss(W: Tensor, X: Tensor, Z: Tensor, y: Tensor, v: Tensor) -> Tensor:
    """Logistic loss of one-layer attention minus its infimum, computed without cancellation.

    ``(1/n) sum_i [l(y_i f_i) - l(gamma_{i,alpha_i})]`` with ``l = softplus(-.)``, ``f_i = v^T
    X_i^T softmax(X_i W z_i)`` and ``gamma_{i,alpha_i}`` the top token score of sequence ``i``
    (the value ``y_i f_i`` approaches when the attention selects that token). Differentiable in
    ``W``; accurate to relative rounding even when it is ``1e-200``.

    Args:
        W: ``(d, d)`` attention weights.
        X: ``(n, T, d)`` tokens.
        Z: ``(n, d)`` queries.
        y: ``(n,)`` labels.
        v: ``(d,)`` head.

    Returns:
        A scalar tensor ``>= 0``.

    Example:
        >>> X = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
        >>> Z, y = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.ones(1).double()
        >>> v = torch.tensor([1.0, 0.0], dtype=torch.float64)  # token 0 scores 1, token 1 0
        >>> W = 40.0 * torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
        >>> s1 = 1 / (1 + math.exp(40.0))  # attention on the worse token
        >>> dense = math.log1p(math.exp(-(1 - s1))) - math.log1p(math.exp(-1.0))
        >>> exact = math.log1p(math.expm1(s1) / (1 + math.e))  # sigmoid(-1) expm1(delta)
        >>> bool(abs(attention_excess_loss(W, X, Z, y, v).item() / exact - 1) < 1e-12)
        True
        >>> dense == 0.0  # the direct difference has cancelled completely
        True
    """
    scores = token_scores(X, v, y)
    return _excess_loss(W, X, Z, scores, scores.max(dim=1, keepdim=True).values)


def _excess_loss(W: Tensor, X: Tensor, Z: Tensor, scores: Tensor, top: Tensor) -> Tensor:
    """:func:`attention_excess_loss` given the token scores and their ``(n, 1)`` maxima."""
    logits = _einsum("ntd,de,ne->nt", X, W, Z)
    log_s = torch.log_softmax(logits, dim=-1)
    delta = (log_s.exp() * (top - scores)).sum(-1)
    return torch.log1p(torch.sigmoid(-top[:, 0]) * torch.expm1(delta)).mean()


def _project(W: Tensor, radius: float, norm: str) -> Tensor:
    """Euclidean projection onto the Frobenius or nuclear-norm ball of ``radius``."""
    if norm == "fro":
        n = float(W.norm())
        return W if n <= radius else W * (radius / n)
    U, s, Vh = torch.linalg.svd(W)
    if float(s.sum()) <= radius:
        return W
    # projection of the (non-negative) singular values onto the l1 ball (Duchi et al. 2008)
    u = torch.sort(s, descending=True).values
    css = torch.cumsum(u, 0)
    k = torch.arange(1, u.numel() + 1, dtype=s.dtype)
    rho = int(torch.nonzero(u - (css - radius) / k > 0)[-1])
    theta = (float(css[rho]) - radius) / (rho + 1)
    return (U * (s - theta).clamp(min=0.0)) @ Vh


def _kkt_residual(W: Tensor, g: Tensor, radius: float, norm: str) -> float:
    """``1 - <-g, W> / (R ||g||_dual)``: 0 iff ``-g`` is in the normal cone of the ball at ``W``."""
    dual = float(g.norm()) if norm == "fro" else float(torch.linalg.matrix_norm(g, ord=2))
    if dual == 0.0:
        return math.inf  # an interior stationary point or an underflowed gradient: not certified
    return 1.0 - float((-g * W).sum()) / (radius * dual)


def attention_regularization_path(
    X: Tensor,
    Z: Tensor,
    y: Tensor,
    v: Tensor,
    radii: list[float],
    *,
    norm: str = "fro",
    max_iter: int = 3000,
    tol: float = 1e-6,
) -> AttentionPathResult:
    """``W_R = argmin_{||W|| <= R} L(W)`` on a grid of radii (the regularization path).

    Projected gradient descent with backtracking (sufficient decrease of the excess loss, the
    step doubled after each accepted step), warm-started at each radius from the previous
    solution scaled by the ratio of radii, starting from ``W = 0``. The problem is non-convex,
    so each ``W_R`` is a stationary point reached continuously along the path, not a certified
    global minimizer. Theorems 2 and 5 of Tarzanagh, Li, Thrampoulidis & Oymak, "Transformers
    as Support Vector Machines" (NeurIPS 2023, arXiv:2308.16898) state that ``W_R / R`` tends
    to the direction of the Frobenius (``norm="fro"``, the ``W`` parameterization) or nuclear
    (``norm="nuclear"``, the ``(K, Q)`` parameterization) attention SVM.

    Args:
        X: ``(n, T, d)`` tokens.
        Z: ``(n, d)`` queries.
        y: ``(n,)`` labels.
        v: ``(d,)`` head.
        radii: increasing positive radii.
        norm: ``"fro"`` or ``"nuclear"``.
        max_iter: iteration cap per radius.
        tol: a radius counts as converged once the KKT residual (see
            :class:`AttentionPathResult`) is at most ``tol``.

    Returns:
        An :class:`AttentionPathResult`.

    Raises:
        ValueError: for bad shapes, non-increasing or non-positive radii, bad options, or a
            non-finite excess loss.
        TypeError: for non-floating tensors.

    Example:
        >>> from subspaces.representations import attention_svm, make_attention_data
        >>> from subspaces.representations import directional_correlation
        >>> data = make_attention_data(2, 3, 6, generator=torch.Generator().manual_seed(0))
        >>> X, Z, y, v = data["X"], data["Z"], data["y"], data["v"]
        >>> svm = attention_svm(X, Z, data["alpha"])
        >>> path = attention_regularization_path(X, Z, y, v, [svm.norm, 20 * svm.norm])
        >>> all(path.converged), directional_correlation(path.solutions[-1], svm.W) > 0.99
        (True, True)
    """
    X, Z, _ = _check_problem(X, Z)
    check_choice(norm, "norm", ("fro", "nuclear"))
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = check_positive_float(tol, "tol")
    if not radii or any(
        not (isinstance(r, (int, float)) and math.isfinite(r) and r > 0) for r in radii
    ):
        raise ValueError(f"radii must be positive finite numbers, got {radii!r}")
    if any(b <= a for a, b in itertools.pairwise(radii)):
        raise ValueError(f"radii must be increasing, got {radii!r}")
    Xd, Zd, yd, vd = (t.detach().double() for t in (X, Z, y, v))
    d = Xd.shape[2]
    scores = token_scores(Xd, vd, yd)  # fixed along the path: computed once
    top = scores.max(dim=1, keepdim=True).values

    def value_and_grad(W: Tensor) -> tuple[float, Tensor]:
        Wg = W.detach().requires_grad_(True)
        f = _excess_loss(Wg, Xd, Zd, scores, top)
        (g,) = torch.autograd.grad(f, Wg)
        value = float(f.detach())
        if not math.isfinite(value) or not bool(torch.isfinite(g).all()):
            raise ValueError(f"non-finite excess loss or gradient ({value}) on the path")
        return value, g

    W = torch.zeros(d, d, dtype=torch.float64)
    previous = None
    sols, losses, iters, conv, kkts = [], [], [], [], []
    step = 1.0
    for radius in radii:
        R = float(radius)
        if previous is not None:
            W = _project(W * (R / previous), R, norm)
        f, g = value_and_grad(W)
        kkt = _kkt_residual(W, g, R, norm)
        it = 0
        while kkt > tol and it < max_iter:
            it += 1
            while True:
                W_new = _project(W - step * g, R, norm)
                D = W_new - W
                f_new, g_new = value_and_grad(W_new)
                bound = f + float((g * D).sum()) + float(D.square().sum()) / (2 * step)
                if f_new <= bound or step < 1e-300:
                    break
                step /= 2
            W, f, g = W_new, f_new, g_new
            kkt = _kkt_residual(W, g, R, norm)
            step *= 2
        sols.append(W.clone())
        losses.append(f)
        iters.append(it)
        conv.append(kkt <= tol)
        kkts.append(kkt)
        previous = R
    return AttentionPathResult(
        radii=[float(r) for r in radii],
        solutions=torch.stack(sols),
        excess_loss=losses,
        iterations=iters,
        converged=conv,
        kkt_residual=kkts,
        norm_type=norm,
    )
