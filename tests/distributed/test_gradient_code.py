"""Tandon et al.'s gradient code: exact decoding for every tolerated straggler set, errors else."""

from __future__ import annotations

import itertools

import pytest
import torch

from subspaces.distributed.coding import decoding_vector, gradient_code

SMALL = [(n, s) for n in range(2, 8) for s in range(0, min(n, 4))]


@pytest.mark.parametrize(("n", "s"), SMALL)
def test_every_tolerated_pattern_decodes_the_full_gradient(n: int, s: int) -> None:
    gen = torch.Generator().manual_seed(100 * n + s)
    B = gradient_code(n, s, generator=gen)
    assert B.shape == (n, n)
    support = (B != 0).to(torch.int64)
    for i in range(n):  # cyclic support {i, ..., i + s}, B[i, i] = 1
        assert support[i].sum() == s + 1
        assert all(support[i, (i + j) % n] for j in range(s + 1))
        assert B[i, i] == 1.0
    G = torch.randn(n, 5, generator=gen, dtype=torch.float64)  # per-part gradients
    coded = B @ G
    full = G.sum(dim=0)
    for k in range(s + 1):
        for stragglers in itertools.combinations(range(n), k):
            received = [i for i in range(n) if i not in stragglers]
            a = decoding_vector(B, received)
            err = float(torch.linalg.norm(a @ coded[received] - full))
            assert err <= 1e-10 * max(1.0, float(torch.linalg.norm(G))), (stragglers, err)


@pytest.mark.parametrize(("n", "s"), [(4, 1), (5, 2), (6, 2), (6, 3)])
def test_every_pattern_with_more_stragglers_raises(n: int, s: int) -> None:
    B = gradient_code(n, s, generator=torch.Generator().manual_seed(n + s))
    for stragglers in itertools.combinations(range(n), s + 1):
        received = [i for i in range(n) if i not in stragglers]
        with pytest.raises(ValueError, match="cannot decode from workers"):
            decoding_vector(B, received)


def test_uncoded_is_identity_and_float32_decodes() -> None:
    assert torch.equal(gradient_code(3, 0), torch.eye(3, dtype=torch.float64))
    B = gradient_code(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    assert B.dtype == torch.float32
    a = decoding_vector(B, [0, 1, 3, 5])
    assert a.dtype == torch.float32
    torch.testing.assert_close(a @ B[[0, 1, 3, 5]], torch.ones(6), rtol=0, atol=1e-4)


def test_same_seed_same_code() -> None:
    one = gradient_code(7, 3, generator=torch.Generator().manual_seed(5))
    two = gradient_code(7, 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(one, two)


@pytest.mark.parametrize(
    ("n", "s", "match"),
    [
        (0, 0, "n \\(workers\\)"),
        (3, 3, "s \\(stragglers"),
        (3, -1, "s \\(stragglers"),
        (True, 0, "n \\(workers\\)"),
        (3.0, 1, "n \\(workers\\)"),
    ],
)
def test_bad_sizes(n: object, s: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        gradient_code(n, s)  # type: ignore[arg-type]


def test_bad_received() -> None:
    B = gradient_code(4, 1, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="distinct worker indices"):
        decoding_vector(B, [0, 0, 1])
    with pytest.raises(ValueError, match="distinct worker indices"):
        decoding_vector(B, [0, 4, 1])
    with pytest.raises(ValueError, match="no worker"):
        decoding_vector(B, [])
