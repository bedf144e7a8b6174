r"""Grassmann class representation (GCR) and Riemannian SGD on Grassmann manifolds.

A point of the Grassmann manifold ``Gr(n, k)`` (a ``k``-dimensional subspace of ``R^n``) is stored
as an ``n x k`` matrix ``U`` with orthonormal columns; ``U`` and ``U R`` (``R`` orthogonal
``k x k``) are the same point. For a loss ``f`` with Euclidean gradient ``G`` at ``U``:

* tangent space at ``U``: matrices ``V`` with ``U^T V = 0``; projection ``P_U(V) = V - U U^T V``;
* Riemannian gradient ``grad f(U) = P_U(G) = (I - U U^T) G`` (Edelman, Arias & Smith 1998);
* retractions ``R_U(V)``: ``"qr"`` (the Q factor of ``U + V`` with the signs of ``diag(R)`` made
  positive, so the map is continuous and ``R_U(0) = U``), ``"polar"``
  (``(U + V)(I + V^T V)^{-1/2}``, the orthonormal polar factor) or ``"exp"`` (the geodesic
  ``U B cos(S) B^T + A sin(S) B^T`` for the thin SVD ``V = A S B^T``);
* vector transport of a tangent vector to the new point by projection, ``V -> P_{U'}(V)``.

:class:`GrassmannLinear` is the GCR classification head (Wang, Li & Zhang, "Get the Best of Both
Worlds: Improving Accuracy and Transferability by Grassmann Class Representation", ICCV 2023,
arXiv:2308.01547): class ``c`` is a subspace with orthonormal basis ``U_c`` and its logit is
``scale * ||U_c^T x / ||x||| |``, the norm of the projection of the L2-normalized feature.
:class:`RiemannianSGD` trains such bases (momentum kept in the tangent space and transported by
projection, retraction, re-orthonormalization every ``reorth_every`` steps); train every other
parameter with any torch optimizer (:func:`split_grassmann_parameters`).

Example:
    >>> import torch
    >>> head = GrassmannLinear(6, 3, subspace_dim=2, generator=torch.Generator().manual_seed(0))
    >>> opt = RiemannianSGD(head.parameters(), lr=0.1, momentum=0.9)
    >>> x, y = torch.randn(8, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    >>> for _ in range(20):
    ...     opt.zero_grad()
    ...     torch.nn.functional.cross_entropy(head(x), y).backward()
    ...     opt.step()
    >>> orthonormality_error(head.weight) < 1e-5
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import (
    check_choice,
    check_finite,
    check_float_tensor,
    check_positive_float,
    check_positive_int,
)

__all__ = [
    "GrassmannLinear",
    "RiemannianSGD",
    "grassmann_retract",
    "orthonormality_error",
    "orthonormalize",
    "project_tangent",
    "split_grassmann_parameters",
]

RETRACTIONS = ("qr", "polar", "exp")


def _check_stiefel_shape(U: Any, name: str) -> Tensor:
    U = check_float_tensor(U, name)
    if U.ndim < 2 or U.shape[-1] < 1 or U.shape[-2] < U.shape[-1]:
        raise ValueError(
            f"{name} must have shape (..., n, k) with 1 <= k <= n, got {tuple(U.shape)}"
        )
    return U


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """QR / SVD run in at least float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _check_same_dtype(V: Tensor, U: Tensor, name: str = "V") -> None:
    if V.dtype != U.dtype:
        raise TypeError(f"{name} has dtype {V.dtype} but U has dtype {U.dtype}; cast one of them")


def orthonormality_error(U: Tensor) -> float:
    """Largest ``||U^T U - I||_F`` over the batch of bases ``U`` (``(..., n, k)``).

    Args:
        U: bases with (supposedly) orthonormal columns.

    Returns:
        The largest Frobenius-norm deviation from orthonormality, as a float.

    Raises:
        ValueError: if ``U`` is not ``(..., n, k)`` with ``k <= n``.
        TypeError: if ``U`` is not a floating tensor.

    Example:
        >>> orthonormality_error(torch.eye(3)[:, :2])
        0.0
    """
    U = _check_stiefel_shape(U, "U").detach()
    U = U.to(_work_dtype(U.dtype))
    eye = torch.eye(U.shape[-1], dtype=U.dtype, device=U.device)
    err = torch.linalg.matrix_norm(U.mT @ U - eye)
    return float(err.max())


def orthonormalize(U: Tensor) -> Tensor:
    """Orthonormal basis of the span of ``U``'s columns by QR with the sign fix ``diag(R) > 0``.

    The sign fix makes the map continuous and the identity on matrices that already have
    orthonormal columns, so periodic re-orthonormalization does not jump to another basis.

    Args:
        U: ``(..., n, k)`` with ``k <= n`` and full column rank.

    Returns:
        ``(..., n, k)`` with orthonormal columns, in ``U``'s dtype.

    Raises:
        ValueError: if ``U`` is not ``(..., n, k)`` with ``k <= n``, holds NaN/Inf, or is
            numerically rank deficient (a diagonal entry of ``R`` at most ``n eps`` of the
            largest: its span has fewer than ``k`` dimensions, and no basis of it has ``k``
            columns).
        TypeError: if ``U`` is not a floating tensor.

    Example:
        >>> Q = orthonormalize(torch.tensor([[2.0, 1.0], [0.0, 1.0], [0.0, 0.0]]))
        >>> Q.tolist()
        [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    """
    U = check_finite(_check_stiefel_shape(U, "U"), "U")
    W = U.to(_work_dtype(U.dtype))
    Q, R = torch.linalg.qr(W)
    d = torch.diagonal(R, dim1=-2, dim2=-1)
    size = d.abs().amax(-1, keepdim=True)
    tol = U.shape[-2] * torch.finfo(W.dtype).eps
    if U.numel() and bool((d.abs() <= tol * size).any()):
        raise ValueError(
            f"U must have full column rank {U.shape[-1]} (a diagonal entry of its R factor is "
            f"<= {tol:.1e} of the largest): its columns span fewer than {U.shape[-1]} dimensions"
        )
    sign = torch.where(d < 0, -torch.ones_like(d), torch.ones_like(d))
    return (Q * sign.unsqueeze(-2)).to(U.dtype)


def project_tangent(U: Tensor, V: Tensor) -> Tensor:
    """Project ``V`` onto the tangent space of the Grassmann manifold at ``U``: ``V - U U^T V``.

    Applied to a Euclidean gradient this gives the Riemannian gradient ``(I - U U^T) G``; applied
    to a tangent vector at another point it is the projection vector transport.

    Args:
        U: ``(..., n, k)`` orthonormal basis.
        V: ``(..., n, k)`` matrix of the same shape.

    Returns:
        The tangent vector ``V - U (U^T V)`` (so ``U^T`` of it is zero).

    Raises:
        ValueError: if the shapes differ or are not ``(..., n, k)`` with ``k <= n``.
        TypeError: for non-floating tensors or different dtypes.

    Example:
        >>> U = torch.eye(3)[:, :1]
        >>> project_tangent(U, torch.ones(3, 1)).flatten().tolist()
        [0.0, 1.0, 1.0]
    """
    U = _check_stiefel_shape(U, "U")
    V = check_float_tensor(V, "V")
    _check_same_dtype(V, U)
    if V.shape != U.shape:
        raise ValueError(f"V must have U's shape {tuple(U.shape)}, got {tuple(V.shape)}")
    return V - U @ (U.mT @ V)


def grassmann_retract(U: Tensor, V: Tensor, method: str = "qr") -> Tensor:
    """Move from ``U`` along the tangent vector ``V`` and return an orthonormal basis.

    Args:
        U: ``(..., n, k)`` orthonormal basis.
        V: ``(..., n, k)`` tangent vector at ``U`` (``U^T V = 0``). ``"qr"`` and ``"polar"``
            accept any ``V`` with ``U + V`` of full rank; ``"exp"`` follows the geodesic along
            the tangent part ``V - U U^T V`` (the formula gives no orthonormal basis for a
            normal component, which does not move the subspace to first order).
        method: ``"qr"`` (sign-fixed QR of ``U + V``), ``"polar"`` (orthonormal polar factor of
            ``U + V``, i.e. ``(U + V)(I + V^T V)^{-1/2}`` for tangent ``V``) or ``"exp"`` (the
            Grassmann geodesic of Edelman, Arias & Smith 1998).

    Returns:
        The new ``(..., n, k)`` orthonormal basis, in ``U``'s dtype.

    Raises:
        ValueError: for an unknown method, mismatched shapes, NaN/Inf in ``U`` or ``V``, or a
            rank-deficient ``U + V`` (``"qr"``).
        TypeError: for non-floating tensors or different dtypes.

    Example:
        >>> U = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
        >>> V = torch.tensor([[0.0], [torch.pi / 2]], dtype=torch.float64)
        >>> grassmann_retract(U, V, "exp").flatten().round(decimals=12).abs().tolist()
        [0.0, 1.0]
    """
    U = check_finite(_check_stiefel_shape(U, "U"), "U")
    V = check_finite(check_float_tensor(V, "V"), "V")
    _check_same_dtype(V, U)
    check_choice(method, "method", RETRACTIONS)
    if V.shape != U.shape:
        raise ValueError(f"V must have U's shape {tuple(U.shape)}, got {tuple(V.shape)}")
    dtype = U.dtype
    Uw, Vw = U.to(_work_dtype(dtype)), V.to(_work_dtype(dtype))
    if method == "qr":
        return orthonormalize(Uw + Vw).to(dtype)
    if method == "polar":
        A, _, Bh = torch.linalg.svd(Uw + Vw, full_matrices=False)
        return (A @ Bh).to(dtype)
    # The geodesic formula needs U^T V = 0: the normal component U U^T V (rounding, for a
    # projected gradient) does not move the subspace to first order and is dropped.
    Vw = Vw - Uw @ (Uw.mT @ Vw)
    A, S, Bh = torch.linalg.svd(Vw, full_matrices=False)
    B = Bh.mT
    out = (Uw @ B) * torch.cos(S).unsqueeze(-2) @ Bh + A * torch.sin(S).unsqueeze(-2) @ Bh
    return out.to(dtype)


def _check_init_basis(weight: Tensor) -> None:
    # a basis rounded to a half-precision dtype is orthonormal only to its rounding
    # (about 3e-3 for a bfloat16 GrassmannLinear head)
    limit = max(1e-3, torch.finfo(weight.dtype).eps ** 0.5)
    err = orthonormality_error(weight)
    if not err < limit:
        raise ValueError(
            f"a Grassmann parameter must have orthonormal columns (||U^T U - I|| = {err:.3g}); "
            "initialize it with orthonormalize(...)"
        )


class GrassmannLinear(nn.Module):
    """Grassmann class representation head: one ``k``-dimensional subspace per class.

    ``logit_c(x) = scale * ||U_c^T x_hat||_2`` with ``x_hat = x / ||x||_2`` and ``U_c`` the
    orthonormal basis (``in_features x k``) of class ``c``'s subspace (Wang, Li & Zhang,
    "Get the Best of Both Worlds: Improving Accuracy and Transferability by Grassmann Class
    Representation", ICCV 2023). With ``k = 1`` it is a cosine classifier without sign. The logits
    depend only on the subspaces: ``U_c -> U_c R`` (``R`` orthogonal) leaves them unchanged. Train
    ``weight`` with :class:`RiemannianSGD` (a Euclidean optimizer would leave the manifold).

    Args:
        in_features: feature dimension ``n``.
        num_classes: number of classes ``C``.
        subspace_dim: dimension ``k`` of each class subspace (``1 <= k <= n``).
        scale: the logit scale ``gamma`` (the paper uses 25).
        eps: a feature with norm below ``eps`` is divided by ``eps`` instead of its norm (by the
            dtype's smallest normal number where ``eps`` is below it, as 1e-12 is in float16).
        generator: seeds the initialization (QR of a Gaussian matrix); ``None`` uses the global
            random state.
        dtype: parameter dtype (a real floating dtype); inputs must have the same dtype.

    Attributes:
        weight: the ``(C, n, k)`` bases, a parameter with orthonormal columns per class.

    Raises:
        ValueError: if ``k > in_features`` or a size or ``scale`` is not positive.
        TypeError: if a size is not an int or ``dtype`` is not a floating dtype.

    Example:
        >>> head = GrassmannLinear(5, 3, 2, scale=1.0, generator=torch.Generator().manual_seed(0))
        >>> x = torch.randn(4, 5)
        >>> R = torch.linalg.qr(torch.randn(2, 2))[0]  # change of basis
        >>> before = head(x)
        >>> with torch.no_grad():
        ...     _ = head.weight.copy_(head.weight @ R)
        >>> torch.allclose(before, head(x), atol=1e-6), bool((before <= 1.0 + 1e-6).all())
        (True, True)
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        subspace_dim: int,
        scale: float = 25.0,
        eps: float = 1e-12,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.subspace_dim = check_positive_int(subspace_dim, "subspace_dim")
        if self.subspace_dim > self.in_features:
            raise ValueError(
                f"subspace_dim must be <= in_features = {in_features}, got {subspace_dim}"
            )
        self.scale = check_positive_float(scale, "scale")
        self.eps = check_positive_float(eps, "eps")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a real floating torch.dtype, got {dtype!r}")
        G = torch.randn(num_classes, in_features, subspace_dim, generator=generator)
        self.weight = nn.Parameter(orthonormalize(G.double()).to(dtype))

    def projection_norms(self, x: Tensor) -> Tensor:
        """``||U_c^T x_hat||`` for every class (the logits divided by ``scale``), in ``[0, 1]``.

        Args:
            x: features ``(..., in_features)``.

        Returns:
            ``(..., num_classes)``.

        Raises:
            ValueError: for a wrong last dimension or non-finite features.
            TypeError: if ``x`` is not a floating tensor of the weight's dtype.
        """
        x = check_float_tensor(x, "x")
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape (..., {self.in_features}), got {tuple(x.shape)}")
        if x.dtype != self.weight.dtype:
            raise TypeError(
                f"x has dtype {x.dtype} but the head's weight has dtype {self.weight.dtype}; "
                "cast one of them"
            )
        check_finite(x, "x")
        # eps may be below the dtype's smallest normal number (1e-12 rounds to 0 in float16)
        floor = max(self.eps, torch.finfo(x.dtype).tiny)
        x_hat = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(floor)
        C, n, k = self.weight.shape
        flat = self.weight.permute(1, 0, 2).reshape(n, C * k)
        coords = (x_hat @ flat).unflatten(-1, (C, k))
        return torch.linalg.vector_norm(coords, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``scale * ||U_c^T x_hat||``.

        Args:
            x: features ``(..., in_features)``.

        Returns:
            Logits ``(..., num_classes)``.
        """
        return self.scale * self.projection_norms(x)

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, "
            f"subspace_dim={self.subspace_dim}, scale={self.scale}"
        )


def split_grassmann_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split a model's trainable parameters into Grassmann bases and all the others.

    The Grassmann ones are the ``weight`` of every :class:`GrassmannLinear` inside ``model``;
    give them to :class:`RiemannianSGD` and the rest to any torch optimizer.

    Args:
        model: any module.

    Returns:
        ``(grassmann, other)`` lists of parameters (each parameter once, in module order).

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), GrassmannLinear(3, 2, 1))
        >>> g, o = split_grassmann_parameters(net)
        >>> [p.shape for p in g], len(o)
        ([torch.Size([2, 3, 1])], 2)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    grassmann_ids = {id(m.weight) for m in model.modules() if isinstance(m, GrassmannLinear)}
    grassmann: list[nn.Parameter] = []
    other: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (grassmann if id(p) in grassmann_ids else other).append(p)
    return grassmann, other


def _grassmann_sgd_kernel(
    U: Tensor,
    grad: Tensor,
    buf: Tensor | None,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    retraction: str,
    reorth: bool,
) -> tuple[Tensor, Tensor]:
    """One Riemannian SGD step; returns ``(new U, new momentum buffer at new U)`` (pure)."""
    g = project_tangent(U, grad)  # Riemannian gradient
    if momentum != 0.0:
        buf = g.clone() if buf is None else momentum * buf + (1.0 - dampening) * g
        direction = g + momentum * buf if nesterov else buf
    else:
        direction = g
    U_new = grassmann_retract(U, -lr * direction, retraction)
    if reorth:
        U_new = orthonormalize(U_new)
    # transport the momentum to the new point (projection onto its tangent space)
    new_buf = project_tangent(U_new, buf) if buf is not None else torch.zeros_like(U)
    return U_new, new_buf


class RiemannianSGD(torch.optim.Optimizer):
    """Riemannian SGD with momentum on Grassmann manifolds (for orthonormal bases only).

    Each parameter is a ``(..., n, k)`` tensor whose trailing ``n x k`` matrices have
    orthonormal columns (e.g. :attr:`GrassmannLinear.weight`). Per step: Riemannian gradient
    ``g = (I - U U^T) G``; momentum ``b <- momentum * b + (1 - dampening) * g`` (``b`` is kept in
    the tangent space and transported to each new point by projection); ``U <- R_U(-lr * b)`` with
    the chosen retraction; every ``reorth_every`` steps a sign-fixed QR re-orthonormalization
    removes rounding drift. This is the optimizer of GCR (Wang, Li & Zhang, ICCV 2023), which
    keeps the momentum of the Euclidean gradient and uses the exponential map; projecting the
    momentum is the standard vector transport (Absil, Mahony & Sepulchre 2008). No weight decay:
    it has no meaning for a subspace. The state holds tensors only, so ``state_dict()`` loads
    with ``torch.load(..., weights_only=True)``.

    Args:
        params: the Grassmann parameters (or param groups); use
            :func:`split_grassmann_parameters` to separate them from the others.
        lr: learning rate (> 0).
        momentum: momentum factor in ``[0, 1)``.
        dampening: dampening of the momentum in ``[0, 1)``.
        nesterov: Nesterov momentum.
        retraction: ``"qr"``, ``"polar"`` or ``"exp"`` (see :func:`grassmann_retract`).
        reorth_every: re-orthonormalize every this many steps (0: never).

    Raises:
        ValueError: for out-of-range hyperparameters, or (at ``step``) a parameter that is not
            ``(..., n, k)`` with orthonormal columns or has a non-finite gradient.

    Example:
        >>> U = torch.nn.Parameter(orthonormalize(torch.randn(2, 5, 2, dtype=torch.float64)))
        >>> target = orthonormalize(torch.randn(5, 2, dtype=torch.float64))
        >>> opt = RiemannianSGD([U], lr=0.2, momentum=0.5)
        >>> for _ in range(200):  # maximize the overlap with the target subspace
        ...     opt.zero_grad()
        ...     (-(target.T @ U).pow(2).sum()).backward()
        ...     opt.step()
        >>> overlap = (target.T @ U).pow(2).sum((-2, -1)) / 2
        >>> torch.allclose(overlap, torch.ones(2, dtype=torch.float64))
        True
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        retraction: str = "qr",
        reorth_every: int = 5,
    ) -> None:
        _validate_hparams(lr, momentum, dampening, nesterov, retraction, reorth_every)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "nesterov": nesterov,
            "retraction": retraction,
            "reorth_every": reorth_every,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Take one step for every parameter with a gradient.

        Args:
            closure: optional closure that re-evaluates the loss (called with grad enabled).

        Returns:
            The closure's loss, or ``None``.

        Raises:
            ValueError: for a parameter that is not ``(..., n, k)`` with orthonormal columns, or
                a non-finite gradient.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            _validate_hparams(
                group["lr"],
                group["momentum"],
                group["dampening"],
                group["nesterov"],
                group["retraction"],
                group["reorth_every"],
            )
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("RiemannianSGD does not support sparse gradients")
                _check_stiefel_shape(p, "Grassmann parameter")
                check_finite(p.grad, "gradient of a Grassmann parameter")
                state = self.state[p]
                if not state:
                    _check_init_basis(p)
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    if group["momentum"] != 0.0:
                        state["momentum_buffer"] = torch.zeros_like(p)
                state["step"] += 1
                step = int(state["step"])
                every = group["reorth_every"]
                buf = state.get("momentum_buffer")
                if buf is not None and step == 1:
                    buf = None  # first step: the buffer starts at the gradient, as in torch SGD
                U_new, new_buf = _grassmann_sgd_kernel(
                    p,
                    p.grad,
                    buf,
                    lr=group["lr"],
                    momentum=group["momentum"],
                    dampening=group["dampening"],
                    nesterov=group["nesterov"],
                    retraction=group["retraction"],
                    reorth=every > 0 and step % every == 0,
                )
                p.copy_(U_new)
                if group["momentum"] != 0.0:
                    state["momentum_buffer"] = new_buf
        return loss


def _validate_hparams(
    lr: Any, momentum: Any, dampening: Any, nesterov: Any, retraction: Any, reorth_every: Any
) -> None:
    check_positive_float(lr, "lr")
    for value, name in ((momentum, "momentum"), (dampening, "dampening")):
        v = check_positive_float(value, name, allow_zero=True)
        if v >= 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov must be a bool, got {type(nesterov).__name__}")
    if nesterov and momentum == 0.0:
        raise ValueError("nesterov momentum needs momentum > 0")
    check_choice(retraction, "retraction", RETRACTIONS)
    check_positive_int(reorth_every, "reorth_every", minimum=0)
