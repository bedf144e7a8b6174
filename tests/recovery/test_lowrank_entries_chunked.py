"""LowRankMatrix.entries in chunks: the same values as gathering every entry at once."""

import pytest
import torch

from subspaces.recovery import problems
from subspaces.recovery.problems import LowRankMatrix


def _matrix(m: int, n: int, r: int) -> LowRankMatrix:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(m, r, dtype=torch.float64, generator=g)
    B = torch.randn(n, r, dtype=torch.float64, generator=g)
    return LowRankMatrix(A, B)


@pytest.mark.parametrize("chunk", [3000, 1 << 18])
def test_chunked_entries_equal_the_one_shot_gather_and_the_dense_matrix(
    monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(problems, "_ENTRY_CHUNK", chunk)
    M = _matrix(300, 200, 3)
    g = torch.Generator().manual_seed(1)
    count = 100_003  # more than one chunk (2^18 // 3 = 87381 entries), with a remainder
    rows = torch.randint(300, (count,), generator=g)
    cols = torch.randint(200, (count,), generator=g)
    got = M.entries(rows, cols)
    assert got.shape == (count,)
    assert torch.equal(got, (M.A[rows] * M.B[cols]).sum(1))  # bit for bit
    dense = M.to_dense()[rows, cols]  # another summation order: rounding only
    torch.testing.assert_close(got, dense, rtol=0, atol=64 * torch.finfo(torch.float64).eps)


def test_entries_of_an_empty_sample_and_of_a_single_entry() -> None:
    M = _matrix(4, 5, 2)
    empty = torch.zeros(0, dtype=torch.long)
    assert M.entries(empty, empty).shape == (0,)
    one = M.entries(torch.tensor([3]), torch.tensor([4]))
    assert torch.equal(one, (M.A[3] * M.B[4]).sum().reshape(1))
