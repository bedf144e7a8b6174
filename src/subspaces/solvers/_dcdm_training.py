"""Self-supervised training of the DCDM direction network (Kaneda et al., ICML 2023).

Loss: the residual after one exact line search along the network's direction,
``L = mean_b || b - (q^T b / q^T A q) A q ||^2`` with ``q = f(b)`` and unit-norm ``b``: it is
zero exactly when ``q`` is parallel to ``A^{-1} b`` and does not depend on the scale of ``q``.
Training right-hand sides are random combinations of eigenvectors (Ritz vectors) of ``A``
weighted towards the low end of the spectrum, where CG's residuals linger.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_positive_float, check_positive_int
from .grids import GridDiffusion

__all__ = ["TrainResult", "dcdm_loss", "ritz_rhs", "train_direction_net"]


def _check_grid_operator(A: object) -> GridDiffusion:
    if not isinstance(A, GridDiffusion):
        raise TypeError(f"A must be a GridDiffusion operator, got {type(A).__name__}")
    return A


def ritz_rhs(
    A: GridDiffusion,
    num_rhs: int,
    *,
    num_vectors: int | None = None,
    theta: int | None = None,
    low_weight: float = 9.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Training right-hand sides from the eigenvectors of ``A``, biased to low frequencies.

    With ``v_1, ..., v_m`` the eigenvectors of the ``m`` smallest eigenvalues (ascending),
    ``b = sum_j c_j v_j / ||.||`` with ``c_j ~ low_weight * N(0, 1)`` for ``j <= m/2 + theta``
    and ``c_j ~ N(0, 1)`` otherwise, the paper's recipe. The paper takes the Ritz vectors of a
    long Lanczos run (``m = 10000`` for ``n = 64^3``); here ``m = n`` uses the exact
    eigenvectors (dense ``eigh``, the Ritz vectors of a full-length run) and ``m < n`` the
    ``m`` smallest eigenpairs from scipy's shift-invert ``eigsh``.

    Args:
        A: the grid operator.
        num_rhs: number of right-hand sides.
        num_vectors: ``m``, default ``n``.
        theta: offset of the heavily weighted block, default ``m // 20``.
        low_weight: weight of the low block (paper: 9).
        generator: random generator for the coefficients.

    Returns:
        ``(n, num_rhs)`` float64, unit-norm columns.

    Raises:
        ValueError: if ``num_rhs``/``num_vectors``/``theta`` is out of range.
        TypeError: if ``A`` is not a :class:`~subspaces.solvers.GridDiffusion`.

    Example:
        >>> from subspaces.solvers import poisson_2d
        >>> A = poisson_2d(6)
        >>> B = ritz_rhs(A, 5, generator=torch.Generator().manual_seed(0))
        >>> B.shape, bool(torch.allclose(B.norm(dim=0), torch.ones(5, dtype=torch.float64)))
        (torch.Size([36, 5]), True)

    References:
        Kaneda et al., ICML 2023, arXiv:2205.10763, section on training data.
    """
    A = _check_grid_operator(A)
    num_rhs = check_positive_int(num_rhs, "num_rhs")
    n = A.n
    m = n if num_vectors is None else check_positive_int(num_vectors, "num_vectors")
    if m > n:
        raise ValueError(f"num_vectors must be <= n = {n}, got {m}")
    theta = m // 20 if theta is None else check_positive_int(theta, "theta", minimum=0)
    low_weight = check_positive_float(low_weight, "low_weight")
    if m == n or n <= 2:
        V = torch.linalg.eigh(A.to_dense().double()).eigenvectors[:, :m]
    else:
        from scipy.sparse.linalg import eigsh

        vals, vecs = eigsh(A.to_scipy_sparse().tocsc(), k=m, sigma=0.0, which="LM")
        V = torch.as_tensor(vecs[:, np.argsort(vals)], dtype=torch.float64)
    cut = min(m, m // 2 + theta)
    C = torch.randn(m, num_rhs, generator=generator, dtype=torch.float64)
    C[:cut] *= low_weight
    B = V @ C
    return B / B.norm(dim=0)


def dcdm_loss(A: GridDiffusion, model: nn.Module, B: Tensor) -> Tensor:
    """DCDM's self-supervised loss on a batch of right-hand-side grids.

    ``mean_b || b - (q^T b / q^T A q) A q ||^2`` with ``q = model(b)`` (restricted to the fluid
    nodes): the squared residual after one exact line search along the network's direction.

    Args:
        A: grid operator in the model's dtype.
        model: maps grids ``(b, 1, ny, nx)`` to grids of the same shape.
        B: right-hand sides as grids ``(b, 1, ny, nx)`` (zero on obstacles).

    Returns:
        The scalar loss (differentiable in the model's parameters).

    Raises:
        ValueError: if ``B`` does not have shape ``(b, 1, ny, nx)`` for ``A``'s grid.

    Example:
        >>> from subspaces.solvers import poisson_2d
        >>> A = poisson_2d(5)
        >>> dense = A.to_dense()
        >>> class Oracle(nn.Module):
        ...     def forward(self, u):
        ...         x = torch.linalg.solve(dense, A.from_grid(u[:, 0]))
        ...         return A.to_grid(x)[:, None]
        >>> B = A.to_grid(torch.randn(A.n, 3, dtype=torch.float64))[:, None]
        >>> bool(dcdm_loss(A, Oracle(), B) < 1e-20)
        True
    """
    A = _check_grid_operator(A)
    if B.ndim != 4 or B.shape[1] != 1 or tuple(B.shape[-2:]) != A.grid_shape:
        raise ValueError(
            f"B must have shape (b, 1, {A.grid_shape[0]}, {A.grid_shape[1]}), got {tuple(B.shape)}"
        )
    fluid = A.fluid
    b = B[:, 0] * fluid
    q = model(B)[:, 0] * fluid
    Aq = A.apply_grid(q)
    qb = (q * b).sum(dim=(-2, -1))
    qAq = (q * Aq).sum(dim=(-2, -1))
    tiny = torch.finfo(qAq.dtype).tiny
    alpha = qb / torch.where(qAq.abs() > tiny, qAq, torch.full_like(qAq, tiny))
    res = b - alpha[:, None, None] * Aq
    return (res**2).sum(dim=(-2, -1)).mean()


@dataclass
class TrainResult:
    """Output of :func:`train_direction_net`.

    Attributes:
        model: the trained network (in eval mode).
        losses: training loss per step.
        steps: optimisation steps taken.
        seconds: wall-clock training time.
    """

    model: nn.Module
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


def train_direction_net(
    A: GridDiffusion,
    model: nn.Module,
    rhs: Tensor,
    *,
    steps: int = 1000,
    batch_size: int = 32,
    lr: float = 1e-3,
    max_seconds: float | None = None,
    generator: torch.Generator | None = None,
) -> TrainResult:
    """Train a direction network with :func:`dcdm_loss` (Adam, minibatches of ``rhs``).

    Args:
        A: the grid operator (any dtype; a copy in the model's dtype is used for the loss).
        model: the network (trained in place), e.g. :class:`~subspaces.solvers.DirectionNet`.
        rhs: training right-hand sides ``(n, N)``, e.g. from :func:`ritz_rhs`.
        steps: optimisation steps.
        batch_size: right-hand sides per step.
        lr: Adam learning rate.
        max_seconds: stop early after this much wall-clock time.
        generator: random generator for the minibatches.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: if ``rhs`` has the wrong shape or non-finite values, a hyperparameter is
            out of range, or the loss becomes non-finite.
        TypeError: if ``A`` is not a grid operator.

    Example:
        >>> from subspaces.solvers import DirectionNet, poisson_2d
        >>> A = poisson_2d(8)
        >>> g = torch.Generator().manual_seed(0)
        >>> _ = torch.manual_seed(0)
        >>> out = train_direction_net(A, DirectionNet(4, 1, 1), ritz_rhs(A, 64, generator=g),
        ...                           steps=30, generator=g)
        >>> out.steps, out.losses[-1] < out.losses[0]
        (30, True)
    """
    A = _check_grid_operator(A)
    if not isinstance(rhs, Tensor) or rhs.ndim != 2 or rhs.shape[0] != A.n or rhs.shape[1] == 0:
        got = tuple(rhs.shape) if isinstance(rhs, Tensor) else type(rhs).__name__
        raise ValueError(f"rhs must have shape ({A.n}, N) with N >= 1, got {got}")
    if not bool(torch.isfinite(rhs).all()):
        raise ValueError("rhs contains non-finite values")
    steps = check_positive_int(steps, "steps", minimum=0)
    batch_size = check_positive_int(batch_size, "batch_size")
    lr = check_positive_float(lr, "lr")
    if max_seconds is not None:
        max_seconds = check_positive_float(max_seconds, "max_seconds")
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    Aw = GridDiffusion(A.grid_shape, obstacle=~A.fluid, coefficient=A.coefficient.to(dtype))
    grids = Aw.to_grid(rhs.to(dtype))[:, None]  # (N, 1, ny, nx)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    result = TrainResult(model=model)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(grids.shape[0], (batch_size,), generator=generator)
        loss = dcdm_loss(Aw, model, grids[idx])
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ValueError(f"DCDM loss became non-finite ({value}) at step {step}; lower lr")
        opt.zero_grad()
        loss.backward()
        opt.step()
        result.losses.append(value)
        result.steps = step + 1
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    result.seconds = time.perf_counter() - start
    model.eval()
    return result
