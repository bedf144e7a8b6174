"""Deep conjugate direction method (DCDM): a learned search direction for conjugate directions.

A network ``f`` maps the normalised residual ``r_k / ||r_k||`` to a search direction (an
approximation of ``A^{-1} r_k`` up to scale). The direction is A-orthogonalised against the
last two directions and followed with an exact line search:

``q = f(r_k / ||r_k||)``, ``p_k = q - sum_{i=k-2}^{k-1} (q^T A p_i / p_i^T A p_i) p_i``,
``alpha_k = p_k^T r_k / p_k^T A p_k``, ``x_{k+1} = x_k + alpha_k p_k``.

With ``f`` the identity this is exactly CG, with ``f`` a fixed SPD preconditioner exactly PCG,
and with the oracle ``f(r) = A^{-1} r`` it converges in one iteration; a trained network lies
in between and, being non-linear, is a conjugate *direction* method, not a Krylov method.
Training (self-supervised, on right-hand sides from Ritz vectors) lives in
:func:`train_direction_net`.

Reference:
    Kaneda, Akar, Chen, Kala, Hyde, Teran. "A Deep Conjugate Direction Method for Iteratively
    Solving Linear Systems." ICML 2023, arXiv:2205.10763.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .._checks import check_positive_int
from ..linalg._systems import SolveResult, _validate_system
from ..linops.base import LinearOperator
from ._cycles import solve_by_columns
from ._dcdm_training import TrainResult, dcdm_loss, ritz_rhs, train_direction_net
from .grids import GridDiffusion

__all__ = [
    "DirectionNet",
    "TrainResult",
    "dcdm",
    "dcdm_loss",
    "ritz_rhs",
    "train_direction_net",
]

Direction = Callable[[Tensor], Tensor]


class _ResBlock(nn.Module):
    def __init__(self, channels: int, bias: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)

    def forward(self, u: Tensor) -> Tensor:
        return torch.relu(u + self.conv2(torch.relu(self.conv1(u))))


class DirectionNet(nn.Module):
    """The DCDM direction network, a small residual CNN on the grid (paper's Fig. 3, in 2-D).

    A 3x3 convolution lifts the residual to ``channels`` feature maps; ``blocks`` residual
    blocks (two 3x3 convolutions each, ReLU) run at full resolution, then at each of ``levels``
    coarser resolutions (2x2 average pooling) with the coarse result upsampled and added back;
    ``blocks`` more residual blocks and a 3x3 convolution return one channel. It works at any
    grid size (fully convolutional). Unlike the published network it has no biases by default,
    so ``f(c r) = c f(r)`` for ``c > 0``: the direction then does not depend on how the
    residual is normalised, which matters when a network trained on one grid is applied to a
    finer one (where unit-norm residuals have smaller entries).

    Args:
        channels: feature maps.
        blocks: residual blocks per stage.
        levels: coarse levels (2x2 average pooling each).
        bias: use biases.

    Example:
        >>> net = DirectionNet(channels=4, blocks=1, levels=1)
        >>> r = torch.randn(2, 1, 12, 10)
        >>> out = net(r)
        >>> out.shape, bool(torch.allclose(net(3 * r), 3 * out, atol=1e-5))
        (torch.Size([2, 1, 12, 10]), True)

    References:
        Kaneda et al., ICML 2023, arXiv:2205.10763.
    """

    def __init__(self, channels: int = 16, blocks: int = 2, levels: int = 2, bias: bool = False):
        super().__init__()
        check_positive_int(channels, "channels")
        check_positive_int(blocks, "blocks")
        check_positive_int(levels, "levels", minimum=0)
        self.lift = nn.Conv2d(1, channels, 3, padding=1, bias=bias)
        self.fine = nn.Sequential(*[_ResBlock(channels, bias) for _ in range(blocks)])
        self.coarse = nn.ModuleList(
            nn.Sequential(*[_ResBlock(channels, bias) for _ in range(blocks)])
            for _ in range(levels)
        )
        self.post = nn.Sequential(*[_ResBlock(channels, bias) for _ in range(blocks)])
        self.project = nn.Conv2d(channels, 1, 3, padding=1, bias=bias)

    def forward(self, r: Tensor) -> Tensor:
        """Map residual grids ``(b, 1, ny, nx)`` to direction grids of the same shape."""
        if r.ndim != 4 or r.shape[1] != 1:
            raise ValueError(
                f"expected residual grids of shape (b, 1, ny, nx), got {tuple(r.shape)}"
            )
        u = self.fine(self.lift(r))
        skips = []
        for stage in self.coarse:
            skips.append(u)
            u = stage(nn.functional.avg_pool2d(u, 2, ceil_mode=True))
        for skip in reversed(skips):
            u = skip + nn.functional.interpolate(u, size=skip.shape[-2:], mode="nearest")
        return self.project(self.post(u))


def _direction_fn(model: nn.Module | Direction, op: LinearOperator) -> Direction:
    """Wrap ``model`` as a map on flat residuals ``(n,) -> (n,)`` in the operator's dtype.

    Returns:
        The callable.

    Raises:
        TypeError: if ``model`` is a module but ``op`` is not a grid operator, or ``model`` is
            not callable.
    """
    if isinstance(model, nn.Module):
        if not isinstance(op, GridDiffusion):
            raise TypeError(
                "a network direction model needs a grid operator (GridDiffusion) to map "
                f"residuals to grids, got {type(op).__name__}; pass a callable on vectors instead"
            )
        param = next(model.parameters(), None)
        mdtype = param.dtype if param is not None else op.dtype

        def apply(r: Tensor) -> Tensor:
            with torch.no_grad():
                grid = op.to_grid(r).to(mdtype)[None, None]
                out = model(grid)[0, 0]
            return op.from_grid(out.to(op.dtype))

        return apply
    if callable(model):
        return model
    raise TypeError(f"model must be an nn.Module or a callable, got {type(model).__name__}")


def dcdm(
    A: Tensor | LinearOperator,
    b: Tensor,
    model: nn.Module | Direction,
    *,
    x0: Tensor | None = None,
    rtol: float | None = None,
    atol: float = 0.0,
    max_iters: int | None = None,
) -> SolveResult:
    """Solve SPD ``A x = b`` by the deep conjugate direction method.

    Stops when the recursive residual meets ``max(rtol ||b||, atol)`` (scipy's definition);
    the true residual ``b - A x`` is then recomputed and alone decides ``converged``; a miss
    restarts from it while restarts at least halve it (``status="stagnated"`` otherwise). If
    the network returns a direction with no component left after A-orthogonalisation, or one
    orthogonal to the residual, the residual itself is used for that step (so the method never
    stalls on a degenerate direction). A block ``b`` of shape ``(n, r)`` is solved column by
    column.

    Args:
        A: symmetric positive definite ``(n, n)`` tensor or operator; a
            :class:`~subspaces.solvers.GridDiffusion` when ``model`` is a network.
        b: right-hand side ``(n,)`` or ``(n, r)``, float32 or float64.
        model: a :class:`DirectionNet` (or any module on grids ``(1, 1, ny, nx)``), evaluated
            without gradients in its own dtype, or a callable mapping a unit-norm residual
            ``(n,)`` to a direction ``(n,)``.
        x0: initial guess shaped like ``b``; zero if omitted.
        rtol: relative tolerance (default :func:`~subspaces._checks.default_tol`).
        atol: absolute tolerance.
        max_iters: iteration limit per column (default ``10 n``).

    Returns:
        A :class:`~subspaces.linalg.SolveResult` (the result type of
        :func:`~subspaces.linalg.cg`) with ``residual_history``.

    Raises:
        ValueError: on mismatched shapes, non-finite input, a direction of the wrong shape or
            with non-finite values, non-positive curvature ``p^T A p <= 0`` (``A`` not SPD), or
            non-finite operator products.
        TypeError: on wrong types or dtypes.

    Example:
        >>> from subspaces.solvers import poisson_2d
        >>> A = poisson_2d(8)
        >>> b = torch.ones(A.n, dtype=torch.float64)
        >>> dense = A.to_dense()
        >>> oracle = dcdm(A, b, lambda r: torch.linalg.solve(dense, r))
        >>> oracle.iterations, oracle.converged
        (1, True)

    References:
        Kaneda, Akar, Chen, Kala, Hyde, Teran, "A Deep Conjugate Direction Method for
        Iteratively Solving Linear Systems", ICML 2023, arXiv:2205.10763.
    """
    op, b, x0 = _validate_system(A, b, x0)
    if b.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dcdm works in float32 or float64, got {b.dtype}")
    direction = _direction_fn(model, op)

    def cycle(
        x: Tensor, r: Tensor, thresh: float, budget: int, done: int, history: list[float]
    ) -> tuple[Tensor, Tensor, int, int]:
        return _cycle(op, direction, x, r, thresh, budget, done, history)

    return solve_by_columns(op, b, x0, rtol, atol, max_iters, cycle)


def _cycle(
    op: LinearOperator,
    direction: Direction,
    x: Tensor,
    r: Tensor,
    thresh: float,
    max_iters: int,
    offset: int,
    history: list[float],
) -> tuple[Tensor, Tensor, int, int]:
    """DCDM iterations from ``(x, r)`` until the recursive residual meets ``thresh``.

    Returns:
        ``(x, recursive residual, iterations, num_matvecs)``; appends to ``history``.

    Raises:
        ValueError: on a bad direction, non-positive curvature or non-finite products.
    """
    previous: list[tuple[Tensor, Tensor, float]] = []  # (p, A p, p^T A p), last two
    its, matvecs = 0, 0
    res = float(r.norm())
    while res > thresh and its < max_iters:
        k = offset + its
        q = direction(r / res)
        if not isinstance(q, Tensor) or q.shape != r.shape:
            got = tuple(q.shape) if isinstance(q, Tensor) else type(q).__name__
            raise ValueError(f"the direction model returned {got}; expected shape {tuple(r.shape)}")
        q = q.to(r.dtype)
        if not bool(torch.isfinite(q).all()):
            raise ValueError(f"the direction model returned non-finite values at iteration {k}")
        p, Ap = _conjugate(op, q, previous)
        matvecs += 1
        if p is None or float(p @ r) == 0.0:  # degenerate learned direction: use the residual
            p, Ap = _conjugate(op, r.clone(), previous)
            matvecs += 1
            if p is None:
                raise ValueError(
                    f"the residual is A-dependent on the last directions at iteration {k}"
                )
        pAp = float(p @ Ap)
        if pAp <= 0:
            raise ValueError(
                f"A is not positive definite: p^T A p = {pAp:.3e} <= 0 at iteration {k}; "
                "use subspaces.linalg.minres for symmetric indefinite systems"
            )
        alpha = float(p @ r) / pAp
        x = x + alpha * p
        r = r - alpha * Ap
        previous = [*previous[-1:], (p, Ap, pAp)]
        its += 1
        res = float(r.norm())
        history.append(res)
    return x, r, its, matvecs


def _conjugate(
    op: LinearOperator, q: Tensor, previous: list[tuple[Tensor, Tensor, float]]
) -> tuple[Tensor | None, Tensor]:
    """A-orthogonalise ``q`` against the previous directions (modified Gram-Schmidt in A).

    Returns:
        ``(p, A p)``, with ``p = None`` if nothing of ``q`` is left.

    Raises:
        ValueError: if the product is not finite.
    """
    Aq = op.matvec(q)
    if not bool(torch.isfinite(Aq).all()):
        raise ValueError("operator returned non-finite values (A @ direction)")
    qnorm = float(q.norm())
    for p, Ap, pAp in previous:
        c = float(q @ Ap) / pAp
        q = q - c * p
        Aq = Aq - c * Ap
    if qnorm == 0.0 or float(q.norm()) <= 1e3 * torch.finfo(q.dtype).eps * qnorm:
        return None, Aq
    return q, Aq
