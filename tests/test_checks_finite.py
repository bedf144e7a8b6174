"""``check_finite`` / ``all_finite``: one reduction, every NaN and Inf found, any dtype."""

from __future__ import annotations

import pytest
import torch

from subspaces._checks import all_finite, check_finite


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, 37, 4095])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_every_bad_value_is_found(bad, where, dtype):
    x = torch.randn(4096).to(dtype)
    assert all_finite(x) and check_finite(x, "x") is x
    x[where] = bad
    assert not all_finite(x)
    with pytest.raises(ValueError, match=r"x contains 1 non-finite"):
        check_finite(x, "x")
    # a strided view sees only its own entries
    view = x[(where + 1) % 2 :: 2] if where % 2 else x[1::2]
    assert all_finite(view)


def test_empty_huge_integer_and_complex():
    assert all_finite(torch.empty(0, 3))
    big = torch.full((10,), torch.finfo(torch.float32).max)  # finite, a sum would overflow
    assert check_finite(big, "x") is big
    assert all_finite(torch.arange(5)) and all_finite(torch.tensor([True, False]))
    z = torch.randn(6, dtype=torch.complex64)
    assert all_finite(z)
    z[2] = complex(0.0, float("inf"))
    assert not all_finite(z)
    with pytest.raises(ValueError, match="contains 1 non-finite"):
        check_finite(z, "z")
