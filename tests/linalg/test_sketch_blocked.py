"""The blocked (cache-sized, float32 when safe) product of sketched leverage scores.

``leverage_scores(method="sketched")`` forms the row norms of ``A R^{-1}`` (or ``A R^{-1} G``)
block by block, in float32 when ``cond(R) <= 1e4``; these tests pin it to the same pipeline
computed densely in float64 and check the float64 fallback on ill-conditioned matrices.
"""

from __future__ import annotations

import torch

from subspaces.linalg._random import random_matrix
from subspaces.linalg.sketch import (
    _countsketch,
    _fast_dtype,
    _row_norms_squared,
    leverage_scores,
)

DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _heavy(n: int, d: int, seed: int) -> torch.Tensor:
    g = _gen(seed)
    A = random_matrix(n, d, dtype=DT, generator=g)
    scale = random_matrix(n, 1, dtype=DT, generator=g).abs() / (
        random_matrix(n, 1, dtype=DT, generator=g).abs() + 1e-3
    )
    return A * scale.clamp(max=1e3)


def _reference(A: torch.Tensor, m: int, k: int | None, seed: int) -> torch.Tensor:
    """The same pipeline, dense and in float64 (same random draws in the same order)."""
    g = _gen(seed)
    R = torch.linalg.qr(_countsketch(A, m, g), mode="r").R
    d = A.shape[1]
    if k is None:
        Z = torch.linalg.solve_triangular(R, torch.eye(d, dtype=DT), upper=True)
        raw = (A @ Z).square().sum(1)
    else:  # orthonormal JL columns scaled by sqrt(d / k)
        G = torch.linalg.qr(random_matrix(d, k, dtype=DT, generator=g)).Q
        raw = (A @ torch.linalg.solve_triangular(R, G, upper=True)).square().sum(1) * (d / k)
    return (raw * (d / raw.sum())).clamp(max=1.0)  # rescaled to sum to d, clipped at 1


def test_row_norms_blocks_match_dense_at_odd_sizes() -> None:
    A = random_matrix(1003, 7, dtype=DT, generator=_gen(0))
    Z = random_matrix(7, 5, dtype=DT, generator=_gen(1))
    dense = (A @ Z).square().sum(1)
    for chunk in (1, 7, 1000, 4096):
        got = _row_norms_squared(A, Z, DT, chunk=chunk)
        assert got.dtype == DT and torch.allclose(got, dense, rtol=1e-13, atol=0)
    fast = _row_norms_squared(A, Z, torch.float32, chunk=64)
    assert fast.dtype == DT and torch.allclose(fast, dense, rtol=1e-5, atol=0)


def test_sketched_scores_equal_float64_pipeline() -> None:
    A = _heavy(6000, 12, 2)
    for k in (None, 8):
        got = leverage_scores(A, method="sketched", sketch_size=300, jl_dim=k, generator=_gen(5))
        ref = _reference(A, 300, k, 5)
        assert got.dtype == DT
        # float32 products: relative error ~ cond(R) * 6e-8, far below the sketch's
        assert float(((got - ref).abs() / ref).max()) < 1e-4


def test_ill_conditioned_matrix_falls_back_to_float64() -> None:
    A = _heavy(4000, 10, 3) * torch.logspace(0, 8, 10, dtype=DT)  # cond ~ 1e8
    g = _gen(7)
    R = torch.linalg.qr(_countsketch(A, 200, g), mode="r").R
    assert _fast_dtype(A, R) == torch.float64
    assert _fast_dtype(A / torch.logspace(0, 8, 10, dtype=DT), R) == torch.float64  # R decides
    good = torch.linalg.qr(_countsketch(_heavy(4000, 10, 3), 200, _gen(7)), mode="r").R
    assert _fast_dtype(A, good) == torch.float32
    assert _fast_dtype(A.float(), good) == torch.float32
    # leverage is invariant to column scaling: the ill-conditioned scores match the exact ones
    exact = leverage_scores(A)
    approx = leverage_scores(A, method="sketched", sketch_size=400, generator=_gen(7))
    ratio = approx / exact
    assert float(((ratio > 0.6) & (ratio < 1.7)).double().mean()) >= 0.99
    ref = _reference(A, 400, None, 7)
    assert float(((approx - ref).abs() / ref).max()) < 1e-8
