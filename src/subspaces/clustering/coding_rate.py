r"""Coding rate, class-conditional coding rate and the MCR² rate reduction (Yu et al. 2020).

For features ``Z`` with one sample per row, ``(n, d)``, the *coding rate* is the number of nats
needed to code the samples up to a distortion ``eps``,

.. math:: R(Z, \epsilon) = \tfrac12 \log\det\big(I_d + \tfrac{d}{n\epsilon^2} Z^T Z\big),

and for a membership ``Pi (n, k)`` (hard labels become one-hot columns; soft memberships are
non-negative weights, e.g. class probabilities or a doubly stochastic ``n x n`` matrix as in MLC)
the *class-conditional* rate is

.. math:: R_c(Z, \Pi, \epsilon) = \sum_{j=1}^k \frac{\operatorname{tr}\Pi_j}{2n}
          \log\det\Big(I_d + \frac{d}{\operatorname{tr}(\Pi_j)\,\epsilon^2}
          Z^T \operatorname{diag}(\Pi_{:,j}) Z\Big).

The *rate reduction* ``Delta R = R - gamma * R_c`` is what MCR² maximizes: features of the whole
set span a large volume while each class is compressed, which makes class subspaces
near-orthogonal. Every function here is a differentiable torch function (batched over leading
dimensions, float32/float64) usable as a training loss; log-determinants come from a Cholesky
factor of ``I + alpha G`` (positive definite with eigenvalues >= 1), the smaller of the ``d x d``
and ``n x n`` Gram forms is used, and no inverse is ever formed.

References:
    Yu, Chan, You, Song & Ma, "Learning diverse and discriminative representations via the
    principle of maximal coding rate reduction", NeurIPS 2020. Ding, Tong, Chan, Li, Ma & Haeffele,
    "Unsupervised manifold linearizing and clustering", ICCV 2023 (the doubly stochastic
    membership).

Example:
    >>> import torch
    >>> Z = torch.eye(4, dtype=torch.float64)[:, :2].repeat(2, 1)  # two orthogonal classes
    >>> labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    >>> bool(rate_reduction(Z, labels) > 0)
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor, check_positive_float

__all__ = [
    "class_conditional_rate",
    "coding_rate",
    "mcr2_loss",
    "membership_matrix",
    "rate_reduction",
    "rate_reduction_grad",
]


def _check_features(Z: Any) -> Tensor:
    Z = check_float_tensor(Z, "Z")
    if Z.ndim < 2:
        raise ValueError(f"Z must have shape (..., n_samples, dim), got shape {tuple(Z.shape)}")
    if Z.shape[-2] == 0 or Z.shape[-1] == 0:
        raise ValueError(f"Z must have at least one sample and one feature, got {tuple(Z.shape)}")
    if Z.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"Z must be float32 or float64, got {Z.dtype}")
    return check_finite(Z.detach(), "Z") if not Z.requires_grad else _finite_keep(Z)


def _finite_keep(Z: Tensor) -> Tensor:
    check_finite(Z.detach(), "Z")
    return Z


def _logdet_i_plus(A: Tensor) -> Tensor:
    """``logdet(I + A)`` for symmetric positive semidefinite ``A (..., m, m)`` via Cholesky."""
    m = A.shape[-1]
    M = A + torch.eye(m, dtype=A.dtype, device=A.device)
    L, info = torch.linalg.cholesky_ex(M)
    if bool((info != 0).any()):  # not reachable for PSD A up to rounding; be explicit if it is
        raise ValueError(
            "I + alpha * Z^T Z is not positive definite: the features are not finite or too large"
        )
    return 2.0 * torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)


def coding_rate(Z: Tensor, eps: float = 0.5) -> Tensor:
    r"""The coding rate ``R(Z, eps) = 1/2 logdet(I + d / (n eps^2) Z^T Z)``.

    Args:
        Z: features ``(..., n, d)``, one sample per row (float32 or float64).
        eps: distortion ``epsilon > 0`` (``eps^2`` is the noise variance per dimension).

    Returns:
        The rate in nats, shape ``Z.shape[:-2]``, differentiable.

    Raises:
        TypeError: if ``Z`` is not a float32/float64 tensor.
        ValueError: if ``Z`` is not at least 2-D, is empty or not finite, or ``eps <= 0``.

    Example:
        >>> import torch
        >>> Z = torch.eye(3, dtype=torch.float64)  # 3 orthonormal samples in R^3
        >>> r = coding_rate(Z, eps=1.0)  # 1/2 * 3 * log(1 + 3 / 3 * 1)
        >>> bool(torch.isclose(r, torch.tensor(1.5 * torch.log(torch.tensor(2.0)).item(),
        ...                                    dtype=torch.float64)))
        True
    """
    Z = _check_features(Z)
    eps = check_positive_float(eps, "eps")
    n, d = Z.shape[-2], Z.shape[-1]
    alpha = d / (n * eps * eps)
    G = Z.mT @ Z if d <= n else Z @ Z.mT  # logdet(I + a Z^T Z) = logdet(I + a Z Z^T)
    return 0.5 * _logdet_i_plus(alpha * G)


def membership_matrix(
    membership: Tensor, n_samples: int, num_classes: int | None = None, *, dtype: torch.dtype
) -> Tensor:
    """Hard labels ``(..., n)`` to one-hot ``(..., n, k)``; a soft membership is checked.

    Args:
        membership: integer labels in ``[0, k)`` or non-negative weights ``(..., n, k)``.
        n_samples: ``n``.
        num_classes: ``k`` for labels (default: the largest label + 1).
        dtype: floating dtype of the result.

    Returns:
        ``(..., n, k)`` non-negative weights.

    Raises:
        TypeError: if ``membership`` is not a tensor.
        ValueError: for a wrong shape, a label outside ``[0, num_classes)``, or negative or
            non-finite weights.

    Example:
        >>> import torch
        >>> membership_matrix(torch.tensor([1, 0]), 2, dtype=torch.float64).tolist()
        [[0.0, 1.0], [1.0, 0.0]]
    """
    if not isinstance(membership, Tensor):
        raise TypeError(f"membership must be a torch.Tensor, got {type(membership).__name__}")
    if not membership.is_floating_point():
        labels = membership.long()
        if labels.shape[-1:] != (n_samples,):
            raise ValueError(
                f"labels must have shape (..., {n_samples}) to match Z, got {tuple(labels.shape)}"
            )
        lo = int(labels.min()) if labels.numel() else 0
        k = int(labels.max()) + 1 if num_classes is None else int(num_classes)
        if lo < 0 or (labels.numel() and int(labels.max()) >= k):
            raise ValueError(
                f"labels must lie in [0, {k}), got values in [{lo}, {int(labels.max())}]"
            )
        return torch.nn.functional.one_hot(labels, k).to(dtype)
    W = membership
    if W.ndim < 2 or W.shape[-2] != n_samples:
        raise ValueError(
            f"a soft membership must have shape (..., {n_samples}, k) to match Z, got "
            f"{tuple(W.shape)}"
        )
    check_finite(W.detach(), "membership")
    if bool((W.detach() < 0).any()):
        raise ValueError(
            f"membership weights must be >= 0, got a minimum of {float(W.detach().min()):.3g}"
        )
    return W.to(dtype)


def class_conditional_rate(
    Z: Tensor, membership: Tensor, eps: float = 0.5, *, num_classes: int | None = None
) -> Tensor:
    r"""The class-conditional coding rate ``R_c(Z, Pi, eps)`` (sum over the membership's columns).

    Each column ``j`` of the membership weights the samples of one group; a group of total
    weight ``t_j = sum_i Pi_ij`` contributes ``t_j / (2n) logdet(I + d / (t_j eps^2) Z^T
    diag(Pi_:j) Z)``. Empty groups contribute 0. With hard labels this is the MCR² compression
    term; with a doubly stochastic ``n x n`` matrix it is MLC's (each sample's row is the soft
    group around it).

    Args:
        Z: features ``(..., n, d)``.
        membership: integer labels ``(..., n)`` or non-negative weights ``(..., n, k)``.
        eps: distortion ``> 0``.
        num_classes: number of classes for hard labels (default: largest label + 1).

    Returns:
        The rate, shape ``Z.shape[:-2]``, differentiable in ``Z`` and soft memberships.

    Raises:
        TypeError: for non-tensor or non-floating input.
        ValueError: for mismatched shapes, labels out of range, negative weights, ``eps <= 0``.

    Example:
        >>> import torch
        >>> Z = torch.randn(6, 3, dtype=torch.float64)
        >>> one = torch.zeros(6, dtype=torch.long)  # one class: R_c == R
        >>> bool(torch.isclose(class_conditional_rate(Z, one), coding_rate(Z)))
        True
    """
    Z = _check_features(Z)
    eps = check_positive_float(eps, "eps")
    n, d = Z.shape[-2], Z.shape[-1]
    W = membership_matrix(membership, n, num_classes, dtype=Z.dtype)  # (..., n, k)
    t = W.sum(-2)  # (..., k)
    safe = torch.where(t > 0, t, torch.ones_like(t))  # an empty group: G = 0 and weight 0
    alpha = d / (safe * eps * eps)  # (..., k)
    Wt = W.mT.unsqueeze(-1)  # (..., k, n, 1)
    if d <= n:
        Zb = Z.unsqueeze(-3)  # (..., 1, n, d)
        G = (Zb * Wt).mT @ Zb  # (..., k, d, d)
    else:
        root = Wt.sqrt()
        Zw = Z.unsqueeze(-3) * root  # (..., k, n, d)
        G = Zw @ Zw.mT  # (..., k, n, n)
    logdet = _logdet_i_plus(alpha[..., None, None] * G)  # (..., k)
    return (t / (2.0 * n) * logdet).sum(-1)


def rate_reduction(
    Z: Tensor,
    membership: Tensor,
    eps: float = 0.5,
    *,
    gamma: float = 1.0,
    num_classes: int | None = None,
) -> Tensor:
    r"""The MCR² objective ``Delta R = R(Z, eps) - gamma * R_c(Z, Pi, eps)`` (to maximize).

    Args:
        Z: features ``(..., n, d)``; MCR² normalizes each row to unit length beforehand.
        membership: integer labels ``(..., n)`` or non-negative weights ``(..., n, k)``.
        eps: distortion ``> 0``.
        gamma: weight of the compression term (1 in the MCR² paper).
        num_classes: number of classes for hard labels.

    Returns:
        ``Delta R``, shape ``Z.shape[:-2]``, differentiable.

    Raises:
        TypeError: for non-tensor or non-floating input.
        ValueError: for invalid shapes or values (see :func:`class_conditional_rate`).

    Example:
        >>> import torch
        >>> e = torch.eye(4, dtype=torch.float64)
        >>> aligned = e[[0, 0, 1, 1]]       # classes on orthogonal lines
        >>> mixed = e[[0, 1, 0, 1]]         # each class spans both lines
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> bool(rate_reduction(aligned, y) > rate_reduction(mixed, y))
        True
    """
    gamma = check_positive_float(gamma, "gamma", allow_zero=True)
    return coding_rate(Z, eps) - gamma * class_conditional_rate(
        Z, membership, eps, num_classes=num_classes
    )


def mcr2_loss(
    Z: Tensor,
    membership: Tensor,
    eps: float = 0.5,
    *,
    gamma: float = 1.0,
    num_classes: int | None = None,
    normalize: bool = True,
) -> Tensor:
    """``-Delta R`` of the row-normalized features: the MCR² training loss (to minimize).

    Args:
        Z: features ``(..., n, d)``.
        membership: integer labels ``(..., n)`` or non-negative weights ``(..., n, k)``.
        eps: distortion ``> 0``.
        gamma: weight of the compression term.
        num_classes: number of classes for hard labels.
        normalize: project each feature onto the unit sphere first (as MCR² does).

    Returns:
        The loss, shape ``Z.shape[:-2]`` (sum or mean it over a batch of problems yourself).

    Example:
        >>> import torch
        >>> Z = torch.randn(32, 8, requires_grad=True)
        >>> loss = mcr2_loss(Z, torch.arange(32) % 4)
        >>> loss.backward()
        >>> Z.grad.shape
        torch.Size([32, 8])
    """
    Z = _check_features(Z)
    if normalize:
        Z = torch.nn.functional.normalize(Z, dim=-1)
    return -rate_reduction(Z, membership, eps, gamma=gamma, num_classes=num_classes)


def _rate_grad(Z: Tensor, alpha: Tensor | float) -> Tensor:
    """``d/dZ 1/2 logdet(I + alpha Z^T Z) = alpha Z (I + alpha Z^T Z)^{-1}`` by Cholesky solves."""
    d = Z.shape[-1]
    a = torch.as_tensor(alpha, dtype=Z.dtype, device=Z.device)
    M = a[..., None, None] * (Z.mT @ Z) + torch.eye(d, dtype=Z.dtype, device=Z.device)
    L = torch.linalg.cholesky(M)
    # (I + a Z^T Z) X^T = Z^T  =>  X = Z (I + a Z^T Z)^{-1}  (M symmetric)
    return a[..., None, None] * torch.cholesky_solve(Z.mT, L).mT


@torch.no_grad()
def rate_reduction_grad(
    Z: Tensor,
    membership: Tensor,
    eps: float = 0.5,
    *,
    gamma: float = 1.0,
    num_classes: int | None = None,
) -> Tensor:
    r"""Closed-form gradient of :func:`rate_reduction` with respect to ``Z`` (no autograd).

    .. math:: \nabla_Z \Delta R = \alpha Z (I + \alpha Z^TZ)^{-1}
        - \gamma \sum_j \frac{t_j}{n} \alpha_j D_j Z (I + \alpha_j Z^T D_j Z)^{-1},

    with ``alpha = d / (n eps^2)``, ``D_j = diag(Pi_:j)``, ``t_j = tr D_j``,
    ``alpha_j = d / (t_j eps^2)``; linear systems are solved with Cholesky factors.

    Args:
        Z: features ``(..., n, d)``.
        membership: integer labels ``(..., n)`` or non-negative weights ``(..., n, k)``.
        eps: distortion ``> 0``.
        gamma: weight of the compression term.
        num_classes: number of classes for hard labels.

    Returns:
        The gradient, the shape of ``Z``.

    Example:
        >>> import torch
        >>> Z = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
        >>> y = torch.arange(10) % 2
        >>> rate_reduction(Z, y).backward()
        >>> torch.allclose(rate_reduction_grad(Z, y), Z.grad)
        True
    """
    Z = _check_features(Z).detach()
    eps = check_positive_float(eps, "eps")
    gamma = check_positive_float(gamma, "gamma", allow_zero=True)
    n, d = Z.shape[-2], Z.shape[-1]
    W = membership_matrix(membership, n, num_classes, dtype=Z.dtype)
    grad = _rate_grad(Z, d / (n * eps * eps))
    t = W.sum(-2)  # (..., k)
    alpha = d / (torch.where(t > 0, t, torch.ones_like(t)) * eps * eps)
    DZ = W.mT.unsqueeze(-1) * Z.unsqueeze(-3)  # (..., k, n, d) = D_j Z
    M = alpha[..., None, None] * (Z.unsqueeze(-3).mT @ DZ) + torch.eye(
        d, dtype=Z.dtype, device=Z.device
    )
    L = torch.linalg.cholesky(M)
    per_class = torch.cholesky_solve(DZ.mT, L).mT  # D_j Z M_j^{-1}
    weight = (t / n * alpha)[..., None, None]
    return grad - gamma * (weight * per_class).sum(-3)
