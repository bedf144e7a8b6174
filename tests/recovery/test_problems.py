"""Regression tests for the synthetic completion problems (subspaces.recovery.problems)."""

from __future__ import annotations

import pytest
import torch

from subspaces.recovery import low_rank_matrix


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, "float64"])
def test_low_rank_matrix_rejects_non_float_dtype(dtype) -> None:
    with pytest.raises(TypeError, match="dtype"):
        low_rank_matrix(4, 3, 2, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_rank_matrix_factors_in_every_float_dtype(dtype: torch.dtype) -> None:
    M = low_rank_matrix(6, 5, 2, coherence="coherent", dtype=dtype, generator=torch.Generator())
    assert M.A.dtype == dtype and M.B.dtype == dtype
    assert int(torch.linalg.matrix_rank(M.A.double() @ M.B.double().T)) == 2
