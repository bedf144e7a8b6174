r"""BSVRB: blockwise stochastic variance-reduced multi-block bilevel optimization (HVP variant).

Hu, Zhong, Wang, Yang et al., "Blockwise Stochastic Variance-Reduced Methods with Parallel
Speedup for Multi-Block Bilevel Optimization", ICML 2023 (arXiv:2305.18730).

The problem is ``min_x (1/m) sum_i f_i(x, y_i*(x))`` with ``y_i*(x) = argmin_y g_i(x, y)`` for
``m`` blocks (tasks). Every iteration samples ``I`` blocks and, for each, a batch of ``B``
samples, and updates only the sampled blocks' states. Per block ``i`` the method keeps the
lower-level variable ``y_i``, ``s_i`` (tracking ``[grad_yy^2 g_i]^-1 grad_y f_i``, the quantity
a Hessian inverse would give, by Hessian-vector products only), and two variance-reduced
estimators updated by the blockwise MSVR rule (Jiang, Li, Wang, Yang, Zhang, ICML 2022)

    u_i <- (1 - beta) u_i + beta h_i(w_t) + gamma (h_i(w_t) - h_i(w_{t-1})),
    gamma = (m - I) / (I (1 - beta)) + (1 - beta),

(``h_i`` evaluated on the same samples at the current and previous iterate), one for
``grad_y g_i`` (the lower-level step) and one for ``grad_yy^2 g_i s_i - grad_y f_i`` (the
``s_i`` step). The hypergradient estimate ``G = (1/I) sum_{i in I_t} grad_x f_i -
grad_xy^2 g_i s_i`` is tracked by a STORM momentum ``z <- G(w_t) + (1 - beta_x)(z - G(w_{t-1}))``
and ``x <- x - lr * z``. With ``estimator="plain"`` every estimator is the fresh mini-batch value
(the plain stochastic method the variance reduction is compared with).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, Protocol

import torch
from torch import Tensor

from .._checks import (
    check_choice,
    check_finite,
    check_float_tensor,
    check_positive_float,
    check_positive_int,
)
from .result import BilevelResult, History, check_finite_step

__all__ = ["MultiBlockProblem", "bsvrb", "msvr_gamma", "msvr_update"]

Estimator = Literal["msvr", "plain"]


class MultiBlockProblem(Protocol):
    """What :func:`bsvrb` needs from a multi-block bilevel problem.

    ``Y`` holds the sampled blocks' lower-level variables as rows ``(I, d_y)``, ``blocks`` their
    indices ``(I,)`` and ``samples`` per-block sample indices ``(I, B)``. Both functions return
    the **sum over the sampled blocks** of the per-block mini-batch means, so that gradients with
    respect to ``Y`` are per-block gradients.

    Example:
        A conforming problem (no base class needed): every block has ``y_i*(x) = x`` and
        ``f_i = ||y_i - 1||^2 / 2``, so the bilevel minimizer is ``x = 1``.

        >>> class ToOne:
        ...     num_blocks, samples_per_block = 3, 1
        ...     def lower(self, x, Y, blocks, samples):
        ...         return 0.5 * ((Y - x) ** 2).sum()
        ...     def upper(self, x, Y, blocks, samples):
        ...         return 0.5 * ((Y - 1.0) ** 2).sum()
        >>> x0, y0 = torch.zeros(2, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64)
        >>> r = bsvrb(ToOne(), x0, y0, iters=200, blocks_per_iter=3, lr=0.3, lr_lower=0.5,
        ...           lr_s=0.5, beta=0.5, beta_x=1.0, generator=torch.Generator().manual_seed(0))
        >>> float((r.x - 1).abs().max()) < 1e-4
        True
    """

    @property
    def num_blocks(self) -> int:
        """``m``."""
        ...

    @property
    def samples_per_block(self) -> int:
        """Samples per block (the largest allowed ``B``)."""
        ...

    def lower(self, x: Tensor, Y: Tensor, blocks: Tensor, samples: Tensor) -> Tensor:
        """Sum over blocks of ``g_i(x, y_i; samples_i)``."""
        ...

    def upper(self, x: Tensor, Y: Tensor, blocks: Tensor, samples: Tensor) -> Tensor:
        """Sum over blocks of ``f_i(x, y_i; samples_i)``."""
        ...


def msvr_gamma(num_blocks: int, sampled: int, beta: float) -> float:
    """The MSVR correction weight ``gamma = (m - I) / (I (1 - beta)) + (1 - beta)``.

    Args:
        num_blocks: ``m``.
        sampled: ``I``.
        beta: moving-average weight in ``(0, 1)``.

    Returns:
        ``gamma``.

    Raises:
        ValueError: if ``beta`` is outside ``(0, 1)``.

    Example:
        >>> msvr_gamma(10, 10, 0.5)  # all blocks sampled: a STORM-type weight 1 - beta
        0.5
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must be in (0, 1) for MSVR, got {beta}")
    return (num_blocks - sampled) / (sampled * (1.0 - beta)) + (1.0 - beta)


def msvr_update(u: Tensor, fresh: Tensor, fresh_prev: Tensor, beta: float, gamma: float) -> Tensor:
    """One blockwise MSVR update ``(1 - beta) u + beta fresh + gamma (fresh - fresh_prev)``.

    Args:
        u: the sampled blocks' current estimates.
        fresh: the mini-batch values at the current iterate.
        fresh_prev: the same mini-batch at the previous iterate.
        beta: moving-average weight.
        gamma: correction weight (:func:`msvr_gamma`).

    Returns:
        The new estimates.

    Example:
        >>> u, h = torch.zeros(2), torch.ones(2)
        >>> msvr_update(u, h, h, 0.25, 1.0).tolist()  # same point twice: a moving average
        [0.25, 0.25]
    """
    return (1.0 - beta) * u + beta * fresh + gamma * (fresh - fresh_prev)


def _oracles(
    problem: MultiBlockProblem,
    x: Tensor,
    Y: Tensor,
    S: Tensor,
    blocks: Tensor,
    lo_samples: Tensor,
    up_samples: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per sampled block: ``grad_y g``, ``H s - grad_y f``; and ``sum grad_x f - J s``."""
    xr, Yr = x.detach().clone().requires_grad_(True), Y.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        lo = problem.lower(xr, Yr, blocks, lo_samples)
        up = problem.upper(xr, Yr, blocks, up_samples)
        if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(up))):
            raise ValueError(
                f"non-finite objective: lower={float(lo.detach())}, upper={float(up.detach())}"
            )
        (gy,) = torch.autograd.grad(lo, Yr, create_graph=True)
        fx, fy = torch.autograd.grad(up, (xr, Yr), allow_unused=True)
        hs, js = torch.autograd.grad(gy, (Yr, xr), S, allow_unused=True)
    fx = torch.zeros_like(x) if fx is None else fx
    fy = torch.zeros_like(Y) if fy is None else fy
    hs = torch.zeros_like(Y) if hs is None else hs
    js = torch.zeros_like(x) if js is None else js
    return gy.detach(), (hs - fy).detach(), (fx - js).detach()


def bsvrb(
    problem: MultiBlockProblem,
    x0: Tensor,
    y0: Tensor,
    *,
    iters: int = 1000,
    blocks_per_iter: int = 1,
    batch_size: int = 1,
    lr: float = 0.01,
    lr_lower: float = 0.1,
    lr_s: float = 0.1,
    beta: float = 0.1,
    beta_x: float = 0.1,
    s_radius: float = 1e3,
    estimator: Estimator = "msvr",
    generator: torch.Generator | None = None,
    record_every: int = 10,
    evaluate: Callable[[Tensor, Tensor], tuple[float, float]] | None = None,
    stop_below: float | None = None,
) -> BilevelResult:
    """Run BSVRB with Hessian-vector products (the paper's second variant, no Hessian inverse).

    Args:
        problem: a :class:`MultiBlockProblem` with ``m = problem.num_blocks`` blocks.
        x0: initial upper-level variable (1-D float).
        y0: initial lower-level variables ``(m, d_y)``, ``x0``'s dtype.
        iters: iterations.
        blocks_per_iter: ``I``, blocks sampled per iteration (``1 <= I <= m``).
        batch_size: ``B``, samples per sampled block (``1 <= B <= samples_per_block``).
        lr: upper-level step size.
        lr_lower: step size of the ``y_i``.
        lr_s: step size of the ``s_i``.
        beta: MSVR moving-average weight in ``(0, 1)``.
        beta_x: STORM momentum weight of the hypergradient in ``(0, 1]``.
        s_radius: the ``s_i`` are projected onto the l2 ball of this radius (bounded iterates).
        estimator: ``"msvr"`` (variance-reduced) or ``"plain"`` (fresh mini-batch values).
        generator: randomness of the block and sample draws.
        record_every: call ``evaluate`` every this many iterations (and at the start and end).
        evaluate: ``(x, Y) -> (upper objective, hypergradient norm)``, e.g. the exact values of
            the problem; its time is excluded from ``history.time``.
        stop_below: stop at the first record whose hypergradient norm is below this.

    Returns:
        A :class:`~subspaces.bilevel.BilevelResult`; ``state`` holds ``S`` and the estimators.

    Raises:
        TypeError: for non-float inputs or mismatched dtypes.
        ValueError: for ``I`` outside ``[1, m]``, ``B`` outside ``[1, samples_per_block]``, step
            sizes ``<= 0``, ``beta`` outside ``(0, 1)``, shapes that do not match, or values that
            become non-finite.

    Example:
        >>> from subspaces.bilevel.problems import MultiTaskRidge
        >>> prob = MultiTaskRidge.random(8, 4, 32, generator=torch.Generator().manual_seed(0))
        >>> x0 = torch.zeros(4, dtype=torch.float64)
        >>> h0 = prob.hypergradient(x0).norm()
        >>> r = bsvrb(prob, x0, torch.zeros(8, 4, dtype=torch.float64), iters=300,
        ...           blocks_per_iter=4, batch_size=8, lr=0.5, lr_lower=0.3, lr_s=0.3,
        ...           beta=0.5, beta_x=0.5, generator=torch.Generator().manual_seed(0))
        >>> bool(prob.hypergradient(r.x).norm() < 0.2 * h0)
        True
    """
    m = check_positive_int(problem.num_blocks, "problem.num_blocks")
    n = check_positive_int(problem.samples_per_block, "problem.samples_per_block")
    x = check_finite(check_float_tensor(x0, "x0", ndim=1), "x0").detach().clone()
    Y = check_finite(check_float_tensor(y0, "y0", ndim=2), "y0").detach().clone()
    if Y.dtype != x.dtype:
        raise TypeError(f"y0 has dtype {Y.dtype} but x0 has dtype {x.dtype}")
    if Y.shape[0] != m:
        raise ValueError(f"y0 must have one row per block ({m}), got shape {tuple(Y.shape)}")
    iters = check_positive_int(iters, "iters")
    I = check_positive_int(blocks_per_iter, "blocks_per_iter")
    if m < I:
        raise ValueError(f"blocks_per_iter (I={I}) must be <= the number of blocks m={m}")
    B = check_positive_int(batch_size, "batch_size")
    if n < B:
        raise ValueError(f"batch_size (B={B}) must be <= samples_per_block={n}")
    lr, lr_lower, lr_s = (
        check_positive_float(lr, "lr"),
        check_positive_float(lr_lower, "lr_lower"),
        check_positive_float(lr_s, "lr_s"),
    )
    s_radius = check_positive_float(s_radius, "s_radius")
    estimator = check_choice(estimator, "estimator", ("msvr", "plain"))  # type: ignore[assignment]
    if not 0.0 < float(beta) < 1.0:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    if not 0.0 < float(beta_x) <= 1.0:
        raise ValueError(f"beta_x must be in (0, 1], got {beta_x}")
    record_every = check_positive_int(record_every, "record_every")
    gamma = msvr_gamma(m, I, beta)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)

    S = torch.zeros_like(Y)
    V = torch.zeros_like(Y)  # estimator of grad_y g_i
    U = torch.zeros_like(Y)  # estimator of H_i s_i - grad_y f_i
    Z = torch.zeros_like(x)  # STORM estimator of the hypergradient
    x_prev, Y_prev, S_prev = x.clone(), Y.clone(), S.clone()
    history = History()
    elapsed, znorm = 0.0, float("nan")

    def record(k: int) -> bool:
        if evaluate is None:
            history.append(k, elapsed, float("nan"), 0.0, znorm)
            return False
        upper, hnorm = evaluate(x, Y)
        history.append(k, elapsed, upper, 0.0, hnorm)
        return stop_below is not None and hnorm < stop_below

    stop = record(0)
    k = 0
    for step in range(1, iters + 1):
        if stop:
            break
        k = step
        t0 = time.perf_counter()
        blocks = torch.randperm(m, generator=gen)[:I]
        lo_s = torch.argsort(torch.rand(I, n, generator=gen), dim=1)[:, :B]
        up_s = torch.argsort(torch.rand(I, n, generator=gen), dim=1)[:, :B]
        gy, q, G = _oracles(problem, x, Y[blocks], S[blocks], blocks, lo_s, up_s)
        G = G / I
        if estimator == "msvr" and k > 1:
            gy_p, q_p, G_p = _oracles(
                problem, x_prev, Y_prev[blocks], S_prev[blocks], blocks, lo_s, up_s
            )
            V[blocks] = msvr_update(V[blocks], gy, gy_p, beta, gamma)
            U[blocks] = msvr_update(U[blocks], q, q_p, beta, gamma)
            Z = G + (1.0 - beta_x) * (Z - G_p / I)
        else:
            V[blocks], U[blocks], Z = gy, q, G
        check_finite_step(Z, "hypergradient estimate", k)
        check_finite_step(V, "lower-level gradient estimate", k)
        x_prev, Y_prev, S_prev = x.clone(), Y.clone(), S.clone()
        Y[blocks] = Y[blocks] - lr_lower * V[blocks]
        s_new = S[blocks] - lr_s * U[blocks]
        norms = s_new.norm(dim=1, keepdim=True).clamp_min(s_radius)
        S[blocks] = s_new * (s_radius / norms)
        x = x - lr * Z
        znorm = float(Z.norm())
        elapsed += time.perf_counter() - t0
        if k % record_every == 0 or k == iters:
            stop = record(k)
            if stop:
                break
    return BilevelResult(
        x=x, y=Y, history=history, state={"S": S, "V": V, "U": U, "Z": Z}, iterations=k
    )
