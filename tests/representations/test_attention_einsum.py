"""The cached-path einsum of the attention SVM module returns torch.einsum's bits."""

from __future__ import annotations

import pytest
import torch

from subspaces.representations.attention_svm import _EINSUM_PATHS, _einsum


@pytest.mark.parametrize(("n", "t", "d"), [(4, 3, 16), (2, 5, 6)])
def test_cached_einsum_is_bit_identical_forward_and_backward(n: int, t: int, d: int) -> None:
    g = torch.Generator().manual_seed(n * 100 + d)
    X = torch.randn(n, t, d, generator=g, dtype=torch.float64)
    Z = torch.randn(n, d, generator=g, dtype=torch.float64)
    c = torch.randn(n, t, generator=g, dtype=torch.float64)
    W = torch.randn(d, d, generator=g, dtype=torch.float64, requires_grad=True)
    for _ in range(2):  # the first call fills the cache, the second uses it
        ours = _einsum("ntd,de,ne->nt", X, W, Z)
        ref = torch.einsum("ntd,de,ne->nt", X, W, Z)
        assert torch.equal(ours, ref)
        (g_ours,) = torch.autograd.grad(ours.sin().sum(), W)
        (g_ref,) = torch.autograd.grad(ref.sin().sum(), W)
        assert torch.equal(g_ours, g_ref)
        assert torch.equal(
            _einsum("nt,ntd,ne->de", c, X, Z), torch.einsum("nt,ntd,ne->de", c, X, Z)
        )
    assert ("ntd,de,ne->nt", ((n, t, d), (d, d), (n, d)), "auto") in _EINSUM_PATHS or (
        torch.backends.opt_einsum.strategy != "auto"
    )
