"""Stochastic Lanczos quadrature (SLQ): the spectral density of a symmetric operator.

Each of ``num_runs`` random probes ``v`` starts a Lanczos recurrence; the eigendecomposition of its
tridiagonal matrix ``T = S diag(theta) S^T`` gives a Gauss quadrature rule (nodes ``theta``,
weights ``S[0, :]**2``) for the probe's weighted spectral measure
``sum_i (v^T u_i)^2 / |v|^2 delta(x - lambda_i)``. Averaging the runs estimates the empirical
spectral measure ``(1/n) sum_i delta(x - lambda_i)``; smoothing it with Gaussians gives a density.

The runs advance in lock-step: every Lanczos step is one ``matmat`` with a block of ``num_runs``
columns (one per run), and the full reorthogonalization of every run against its own basis is one
batched product.

References:
    Ubaru, Chen, Saad. "Fast estimation of tr(f(A)) via stochastic Lanczos quadrature."
    SIAM J. Matrix Anal. Appl. 38(4), 2017.

    Ghorbani, Krishnan, Xiao. "An investigation into neural net optimization via Hessian
    eigenvalue density." ICML 2019.

    Chen, Trogdon, Ubaru. "Analysis of stochastic Lanczos quadrature for spectrum
    approximation." ICML 2021.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import (
    check_choice,
    check_finite,
    check_float_tensor,
    check_positive_float,
    check_positive_int,
)
from ..linops.base import LinearOperator, as_operator
from ._precision import in_working_precision
from ._random import DISTRIBUTIONS, Distribution, random_matrix

__all__ = ["DensityResult", "slq_density"]

#: Default Gaussian width as a fraction of the spread of the quadrature nodes.
SIGMA_FRACTION = 0.01


@dataclass(frozen=True, eq=False)
class DensityResult:
    """Output of :func:`slq_density`.

    Attributes:
        nodes: ``(runs, k)`` float64 quadrature nodes (Ritz values), ascending within each run;
            ``k <= steps`` is the number of Lanczos steps taken.
        weights: ``(runs, k)`` float64 quadrature weights; each row sums to 1. Positions at or
            after ``num_steps[r]`` are padding for a run that broke down early: their weight is
            exactly 0 and their node repeats the run's largest node.
        grid: ``(num_points,)`` float64 points where the density is evaluated.
        density: ``(num_points,)`` float64 smoothed spectral density on ``grid`` (it integrates
            to 1 over the real line).
        sigma: the width of the Gaussian smoothing kernel.
        num_steps: ``(runs,)`` int64 number of Lanczos steps before each run broke down (``k``
            when it did not).
        dim: the dimension ``n`` of the operator.
        num_matvecs: columns multiplied by the operator (``runs * k``).
        num_samples: data samples behind the operator, when it is a curvature operator.

    Example:
        >>> import math
        >>> lam = torch.arange(1.0, 6.0, dtype=torch.float64)  # eigenvalues 1, ..., 5
        >>> g = torch.Generator().manual_seed(0)
        >>> res = slq_density(torch.diag(lam), num_runs=3, generator=g)
        >>> res.num_runs, tuple(res.nodes.shape), res.num_matvecs  # 5 steps: exact quadrature
        (3, (3, 5), 15)
        >>> [round(x, 10) for x in res.spectral_range]
        [1.0, 5.0]
        >>> abs(float(res.trace(torch.log)) - math.log(120)) < 1e-10  # log det = log 5!
        True
        >>> round(float(res.moments(2)), 10)  # tr(A^2) / n = 55 / 5
        11.0
    """

    nodes: Tensor
    weights: Tensor
    grid: Tensor
    density: Tensor
    sigma: float
    num_steps: Tensor
    dim: int
    num_matvecs: int
    num_samples: int | None = None

    @property
    def num_runs(self) -> int:
        """The number of probes (Lanczos runs)."""
        return int(self.nodes.shape[0])

    @property
    def spectral_range(self) -> tuple[float, float]:
        """Smallest and largest quadrature node carrying weight.

        Ritz values lie inside ``[lambda_min, lambda_max]`` and the extreme ones converge fastest,
        so this is an inner estimate of the spectral interval.
        """
        live = _live_mask(self.num_steps, self.nodes.shape[1])
        inf = torch.tensor(math.inf, dtype=self.nodes.dtype, device=self.nodes.device)
        lo = torch.where(live, self.nodes, inf).min()
        hi = torch.where(live, self.nodes, -inf).max()
        return float(lo), float(hi)

    def run_estimates(self, f: Callable[[Tensor], Tensor]) -> Tensor:
        """Per-run quadrature estimates of ``tr(f(A)) / n``, shape ``(runs,)``.

        Their mean is :meth:`expectation`; their standard deviation divided by
        ``sqrt(runs)`` is its standard error.

        Args:
            f: a function applied elementwise to a float64 tensor of nodes.

        Returns:
            ``sum_j weights[r, j] * f(nodes[r, j])`` for every run ``r``.
        """
        return (self.weights * f(self.nodes)).sum(dim=1)

    def expectation(self, f: Callable[[Tensor], Tensor]) -> Tensor:
        """Quadrature estimate of ``tr(f(A)) / n`` (a 0-d float64 tensor).

        Exact in expectation over the probes for polynomials of degree ``< 2 k``.

        Args:
            f: a function applied elementwise to a float64 tensor of nodes.

        Returns:
            ``sum(weights * f(nodes)) / runs``.
        """
        return self.run_estimates(f).mean()

    def moments(self, p: int) -> Tensor:
        """Estimate of the ``p``-th spectral moment ``tr(A^p) / n`` (a 0-d float64 tensor).

        Args:
            p: a non-negative integer power.

        Returns:
            ``sum(weights * nodes**p) / runs``.
        """
        p = check_positive_int(p, "p", minimum=0)
        return self.expectation(lambda x: x**p)

    def trace(self, f: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Estimate of ``tr(f(A))`` (``tr(A)`` when ``f`` is omitted), i.e. ``n * expectation``.

        Args:
            f: a function applied elementwise to the nodes; identity by default.

        Returns:
            A 0-d float64 tensor.
        """
        return self.dim * self.expectation(f if f is not None else (lambda x: x))


def _live_mask(num_steps: Tensor, k: int) -> Tensor:
    """Mark the positions that belong to each run's active Lanczos block.

    Returns:
        A ``(runs, k)`` boolean mask.
    """
    return torch.arange(k, device=num_steps.device).unsqueeze(0) < num_steps.unsqueeze(1)


def _gaussian_density(nodes: Tensor, weights: Tensor, grid: Tensor, sigma: float) -> Tensor:
    """Evaluate the smoothed quadrature measure on ``grid``.

    Returns:
        The mixture of Gaussians of width ``sigma`` at ``nodes`` weighted by ``weights / runs``.
    """
    runs = nodes.shape[0]
    x, w = nodes.reshape(-1), weights.reshape(-1) / runs
    z = (grid.unsqueeze(1) - x.unsqueeze(0)) / sigma
    return (torch.exp(-0.5 * z * z) @ w) / (sigma * math.sqrt(2.0 * math.pi))


def _lockstep_lanczos(
    op: LinearOperator, V0: Tensor, steps: int
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Run one Lanczos recurrence per column of ``V0`` in lock-step, fully reorthogonalized.

    After a breakdown a run continues with zero vectors (decoupled from its active block).

    Returns:
        ``(alphas (k, R), betas (k, R), num_steps (R,), k)`` with float64 coefficients, where
        ``betas[j]`` couples steps ``j`` and ``j + 1`` and ``num_steps[r]`` is the size of run
        ``r``'s active block.

    Raises:
        ValueError: if the operator returns non-finite values.
    """
    n, R = V0.shape
    dtype, device = V0.dtype, V0.device
    eps = torch.finfo(dtype).eps
    breakdown_tol = 1e3 * eps  # relative to the running estimate of ||A||

    alphas = torch.zeros(steps, R, dtype=torch.float64, device=device)
    betas = torch.zeros(steps, R, dtype=torch.float64, device=device)
    basis = torch.empty(R, steps, n, dtype=dtype, device=device)
    num_steps = torch.ones(R, dtype=torch.int64, device=device)
    active = torch.ones(R, dtype=torch.bool, device=device)
    scale = torch.zeros(R, dtype=dtype, device=device)

    q = V0 / V0.norm(dim=0, keepdim=True)
    q_prev = torch.zeros_like(q)
    beta_prev = torch.zeros(R, dtype=dtype, device=device)
    k = steps
    for j in range(steps):
        basis[:, j, :] = q.T
        W = op.matmat(q)
        alpha = (q * W).sum(dim=0)
        alphas[j] = alpha.to(torch.float64)
        finite = torch.isfinite(W).all()
        if j == steps - 1:
            if not bool(finite):
                raise ValueError(f"operator returned non-finite values at Lanczos step {j}")
            break
        W = W - q * alpha - q_prev * beta_prev
        # Full reorthogonalization of every run against its own basis (twice is enough).
        block = basis[:, : j + 1, :]
        Wr = W.T.unsqueeze(1)  # (R, 1, n): each run's vector as a row
        for _ in range(2):
            coefs = torch.bmm(block, Wr.transpose(1, 2))  # (R, j, 1)
            # (R, 1, j) @ (R, j, n): a wide product, much faster than (R, n, j) @ (R, j, 1)
            Wr = Wr - torch.bmm(coefs.transpose(1, 2), block)
        W = Wr.squeeze(1).T
        beta = W.norm(dim=0)
        scale = torch.maximum(scale, torch.maximum(alpha.abs(), beta))
        active = active & (beta > breakdown_tol * scale)
        betas[j] = torch.where(active, beta, torch.zeros_like(beta)).to(torch.float64)
        num_steps = num_steps + active.to(torch.int64)
        safe_beta = torch.where(active, beta, torch.ones_like(beta))
        q_prev, q = q, torch.where(active, W / safe_beta, torch.zeros_like(W))
        beta_prev = torch.where(active, beta, torch.zeros_like(beta))
        # One host sync per step: the finiteness check and the "all runs broke down" test.
        finite_ok, any_active = torch.stack([finite, active.any()]).tolist()
        if not finite_ok:
            raise ValueError(f"operator returned non-finite values at Lanczos step {j}")
        if not any_active:
            k = j + 1
            break
    return alphas[:k], betas[:k], num_steps, k


def _quadrature(alphas: Tensor, betas: Tensor, num_steps: Tensor) -> tuple[Tensor, Tensor]:
    """Gauss quadrature rules from the tridiagonal matrices, one eigh per distinct block size.

    Returns:
        ``(nodes, weights)``, both ``(R, k)`` float64; padding positions have weight 0.
    """
    k, R = alphas.shape
    T = torch.diag_embed(alphas.T)
    if k > 1:
        off = betas.T[:, : k - 1]
        T = T + torch.diag_embed(off, offset=1) + torch.diag_embed(off, offset=-1)
    nodes = torch.empty(R, k, dtype=torch.float64, device=alphas.device)
    weights = torch.zeros(R, k, dtype=torch.float64, device=alphas.device)
    sizes = num_steps.tolist()
    for m in sorted(set(sizes)):
        idx = torch.tensor([r for r, s in enumerate(sizes) if s == m], device=alphas.device)
        theta, S = torch.linalg.eigh(T[idx, :m, :m])
        nodes[idx, :m] = theta
        weights[idx, :m] = S[:, 0, :] ** 2
        if m < k:  # decoupled block after a breakdown: zero weight, a harmless repeated node
            nodes[idx, m:] = theta[:, -1:].expand(-1, k - m)
    return nodes, weights


def slq_density(
    A: Tensor | LinearOperator,
    num_runs: int = 10,
    steps: int = 80,
    *,
    grid: Tensor | None = None,
    num_points: int = 400,
    sigma: float | None = None,
    generator: torch.Generator | None = None,
    distribution: Distribution = "rademacher",
    probes: Tensor | None = None,
) -> DensityResult:
    """Spectral density of a symmetric operator by stochastic Lanczos quadrature.

    ``num_runs`` Lanczos recurrences (``steps`` steps each, full reorthogonalization) run in
    lock-step as one ``matmat`` of ``num_runs`` columns per step. Run ``r`` gives a Gauss
    quadrature rule (``nodes[r]``, ``weights[r]``) for its probe's weighted spectral measure; the
    average over runs estimates ``(1/n) sum_i delta(x - lambda_i)``, and is smoothed with Gaussians
    of width ``sigma`` on ``grid``. Quadrature estimates of ``tr(f(A)) / n`` come from
    :meth:`DensityResult.expectation` (exact in expectation for polynomials of degree
    ``< 2 steps``; for ``f(x) = x`` with Rademacher probes it equals Hutchinson's estimator).

    ``steps`` is capped at ``n``. A run whose Krylov space becomes invariant (breakdown,
    ``beta <= 1e3 * eps * ||T||``: ``A`` of low rank or with few distinct eigenvalues) stops
    contributing: its later positions get weight exactly 0. When every run has broken down the
    iteration stops early, so ``nodes`` may have fewer than ``steps`` columns.

    Memory: the bases take ``num_runs * steps * n`` entries of ``A``'s dtype.

    Args:
        A: a symmetric ``(n, n)`` tensor or operator (symmetry is assumed, not checked; see
            :meth:`~subspaces.linops.LinearOperator.check_symmetric`).
        num_runs: number of random probes (Lanczos runs).
        steps: Lanczos steps per run (quadrature nodes per run).
        grid: 1-D points where the density is evaluated; default ``num_points`` points spanning
            ``[min node - 3 sigma, max node + 3 sigma]``.
        num_points: size of the default grid.
        sigma: width of the Gaussian smoothing; default ``0.01 * (max node - min node)``
            over the nodes carrying weight (``0.01 * max(|node|, 1)`` when they coincide to
            1e-8 relative).
        generator: source of randomness for the probes.
        distribution: probe distribution, ``rademacher`` (default), ``gaussian`` or ``sphere``
            (the probes are normalized either way).
        probes: explicit ``(n, num_runs)`` start vectors (non-zero columns); overrides
            ``num_runs``, ``distribution`` and ``generator``.

    Returns:
        A :class:`DensityResult` with nodes, weights, grid, density and ``num_matvecs``
        (``num_runs * k`` columns for ``k`` steps taken).

    Raises:
        ValueError: if ``A`` is not square, an argument is out of range, ``probes`` has the
            wrong shape or a zero column, or the operator returns non-finite values.
        TypeError: if ``A``, ``grid`` or ``probes`` has the wrong type.

    Example:
        >>> lam = torch.linspace(1.0, 2.0, 50, dtype=torch.float64)
        >>> g = torch.Generator().manual_seed(0)
        >>> res = slq_density(torch.diag(lam), num_runs=4, generator=g)
        >>> res.nodes.shape  # steps capped at n = 50
        torch.Size([4, 50])
        >>> # Rademacher probes: z^T D z = tr(D) for diagonal D, so the first moment is exact.
        >>> bool(torch.isclose(res.moments(1), lam.mean(), rtol=1e-12))
        True
        >>> step = float(res.grid[1] - res.grid[0])
        >>> bool(abs(float(res.density.sum()) * step - 1.0) < 1e-2)
        True

    References:
        Ubaru, Chen, Saad, SIAM J. Matrix Anal. Appl. 38(4), 2017; Ghorbani, Krishnan, Xiao,
        ICML 2019.
    """
    op = in_working_precision(as_operator(A))  # half precision: products in half, algebra f32
    n, m = op.shape
    if n != m:
        raise ValueError(f"A must be square (symmetric), got shape {op.shape}")
    if n == 0:
        raise ValueError("A must have at least one row, got shape (0, 0)")
    steps = check_positive_int(steps, "steps")
    num_points = check_positive_int(num_points, "num_points", minimum=2)
    if sigma is not None:
        sigma = check_positive_float(sigma, "sigma")
    if probes is None:
        num_runs = check_positive_int(num_runs, "num_runs")
        check_choice(distribution, "distribution", DISTRIBUTIONS)
        V0 = random_matrix(
            n,
            num_runs,
            dtype=op.dtype,
            device=op.device,
            generator=generator,
            distribution=distribution,
        )
    else:
        V0 = check_finite(check_float_tensor(probes, "probes", ndim=2), "probes")
        if V0.shape[0] != n or V0.shape[1] == 0:
            raise ValueError(f"probes must have shape ({n}, runs >= 1), got {tuple(V0.shape)}")
        if bool((V0.norm(dim=0) == 0).any()):
            raise ValueError("probes must not have a zero column")
        V0 = V0.to(dtype=op.dtype, device=op.device)
        num_runs = V0.shape[1]
    if grid is not None:
        grid = check_finite(check_float_tensor(grid, "grid", ndim=1), "grid")
        if grid.numel() == 0:
            raise ValueError("grid must not be empty")

    alphas, betas, num_steps, k = _lockstep_lanczos(op, V0, min(steps, n))
    nodes, weights = _quadrature(alphas, betas, num_steps)

    live = _live_mask(num_steps, k)
    lo = float(torch.where(live, nodes, torch.full_like(nodes, math.inf)).min())
    hi = float(torch.where(live, nodes, torch.full_like(nodes, -math.inf)).max())
    if sigma is None:
        spread = hi - lo
        if spread <= 1e-8 * max(abs(lo), abs(hi)):  # a single point, up to roundoff
            spread = max(abs(lo), abs(hi), 1.0)
        sigma = SIGMA_FRACTION * spread
    if grid is None:
        grid = torch.linspace(
            lo - 3 * sigma, hi + 3 * sigma, num_points, dtype=torch.float64, device=nodes.device
        )
    else:
        grid = grid.to(dtype=torch.float64, device=nodes.device)
    density = _gaussian_density(nodes, weights, grid, sigma)
    return DensityResult(
        nodes=nodes,
        weights=weights,
        grid=grid,
        density=density,
        sigma=float(sigma),
        num_steps=num_steps,
        dim=n,
        num_matvecs=num_runs * k,
    )
