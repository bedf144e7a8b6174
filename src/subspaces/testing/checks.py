"""Assertions for users' and our own operators and estimators."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..linops import LinearOperator


def assert_matches_dense(
    op: LinearOperator,
    dense: Tensor,
    *,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    num_columns: int = 3,
    generator: torch.Generator | None = None,
) -> None:
    """Assert that an operator acts exactly like a dense matrix.

    Checks ``op @ v`` (vector), ``op @ M`` (matrix), ``v @ op`` and ``M @ op`` (left products),
    ``op.T``, ``op.to_dense()``, ``op.to_scipy()`` and, when the operator has a parameter
    layout, ``op @ {name: tensor}``.

    Args:
        op: the operator under test.
        dense: its expected matrix ``(m, n)``.
        rtol: relative tolerance (relative to the largest entry of the reference product).
        atol: absolute tolerance.
        num_columns: columns of the random test matrices.
        generator: random generator for the test vectors.

    Raises:
        AssertionError: naming the first product that differs, with the size of the difference.

    Example:
        >>> from subspaces.linops import Dense
        >>> M = torch.randn(4, 3, dtype=torch.float64)
        >>> assert_matches_dense(Dense(M), M)
    """
    m, n = dense.shape
    if tuple(op.shape) != (m, n):
        raise AssertionError(f"shape: operator {op.shape} vs dense {(m, n)}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=gen, dtype=dense.dtype).to(dense.device)
    X = torch.randn(n, num_columns, generator=gen, dtype=dense.dtype).to(dense.device)
    y = torch.randn(m, generator=gen, dtype=dense.dtype).to(dense.device)
    Y = torch.randn(num_columns, m, generator=gen, dtype=dense.dtype).to(dense.device)

    def close(what: str, got: Any, want: Tensor) -> None:
        if not isinstance(got, Tensor):
            got = torch.as_tensor(np.asarray(got), dtype=want.dtype, device=want.device)
        if tuple(got.shape) != tuple(want.shape):
            raise AssertionError(f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}")
        err = float((got - want).abs().max()) if want.numel() else 0.0
        scale = float(want.abs().max()) if want.numel() else 0.0
        if err > atol + rtol * scale:
            raise AssertionError(
                f"{what}: max abs error {err:.3e} > atol {atol:.1e} + rtol {rtol:.1e} * {scale:.3e}"
            )

    close("op @ vector", op @ x, dense @ x)
    close("op @ matrix", op @ X, dense @ X)
    close("vector @ op", y @ op, y @ dense)
    close("matrix @ op", Y @ op, Y @ dense)
    close("op.T @ matrix", op.T @ Y.T, dense.T @ Y.T)
    close("op.to_dense()", op.to_dense(), dense)
    sp = op.to_scipy()
    close("to_scipy() @ vector", sp @ x.cpu().numpy(), (dense @ x).cpu())
    close("to_scipy() @ matrix", sp @ X.cpu().numpy(), (dense @ X).cpu())
    close("to_scipy().T @ vector", sp.T @ y.cpu().numpy(), (dense.T @ y).cpu())
    if op.layout is not None:
        d = op.layout.unflatten(x)
        got = op @ d
        flat = op.layout.flatten(got) if isinstance(got, dict) else got
        close("op @ parameter dict", flat, dense @ x)


def check_estimator_convergence(
    estimator: Callable[[torch.Generator], Any],
    truth: float,
    *,
    target_rel_error: float = 1e-2,
    max_matvecs: int = 100_000,
    seed: int = 0,
) -> int:
    """Average independent runs of a randomized estimator until it is within a relative error.

    The estimator is called with a fresh generator each run and must return an object with
    ``estimate`` (float or tensor) and ``num_matvecs`` attributes (every result of
    :mod:`subspaces.linalg` has them). An unbiased estimator's running mean converges to the truth;
    a biased one exhausts the budget.

    Args:
        estimator: ``generator -> result``.
        truth: the exact value.
        target_rel_error: stop when ``|mean - truth| <= target_rel_error * |truth|``.
        max_matvecs: budget over all runs.
        seed: seed of the first run (run ``i`` uses ``seed + i``).

    Returns:
        The number of products spent.

    Raises:
        AssertionError: if the budget runs out first.

    Example:
        >>> from subspaces.linalg import hutchinson_trace
        >>> A = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
        >>> spent = check_estimator_convergence(
        ...     lambda g: hutchinson_trace(A, 10, generator=g), 55.0
        ... )
        >>> spent <= 100_000
        True
    """
    total, spent, runs = 0.0, 0, 0
    while spent < max_matvecs:
        result = estimator(torch.Generator().manual_seed(seed + runs))
        total += float(result.estimate)
        spent += int(result.num_matvecs)
        runs += 1
        if abs(total / runs - truth) <= target_rel_error * abs(truth):
            return spent
    raise AssertionError(
        f"estimator did not reach relative error {target_rel_error} within {max_matvecs} matvecs: "
        f"mean {total / runs:.6g} vs truth {truth:.6g} after {runs} runs"
    )
