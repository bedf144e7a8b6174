"""SpectralConv against a dense DFT-matrix implementation, resolution invariance, factorisations."""

from __future__ import annotations

import math

import pytest
import torch

from subspaces.operators import SpectralConv, kept_frequencies


def dense_reference(conv: SpectralConv, x: torch.Tensor) -> torch.Tensor:
    """The layer written with explicit DFT matrices in float64 (no torch.fft).

    Forward coefficients ``c_k = n^{-d} sum_j x_j e^{-2 pi i k.j / n}`` on the kept frequencies,
    the per-frequency product with ``R(k)``, and the real synthesis that ``irfftn`` performs on a
    half spectrum: ``y_j = Re sum_k m_k (R(k)^T c_k) e^{2 pi i k.j / n}`` with multiplicity
    ``m_k = 1`` for last-dimension frequency 0 and 2 otherwise.
    """
    w = conv.dense_weight().detach().to(torch.complex128)
    x = x.to(torch.float64)
    grid = x.shape[2:]
    d = len(grid)
    analysis, synthesis = [], []
    for freqs, n in zip(conv.frequencies, grid, strict=True):
        k = torch.tensor(freqs, dtype=torch.float64)[:, None]
        j = torch.arange(n, dtype=torch.float64)[None, :]
        phase = 2 * math.pi * k * j / n
        analysis.append(torch.exp(-1j * phase) / n)  # (kept, n)
        synthesis.append(torch.exp(1j * phase))
    coef = x.to(torch.complex128)
    letters = "pqr"[:d]
    for i in range(d):  # contract grid dim i with its analysis matrix
        spec = "bc" + "".join(letters[:i]) + "z" + "".join(letters[i + 1 :])
        out = "bc" + letters
        coef = torch.einsum(f"{spec},{letters[i]}z->{out}", coef, analysis[i])
    mixed = torch.einsum(f"bi{letters},io{letters}->bo{letters}", coef, w)
    mult = torch.full((len(conv.frequencies[-1]),), 2.0, dtype=torch.float64)
    mult[0] = 1.0
    mixed = mixed * mult
    for i in range(d):
        spec = "bo" + "".join(letters[:i]) + letters[i] + "".join(letters[i + 1 :])
        out = "bo" + "".join(letters[:i]) + "z" + "".join(letters[i + 1 :])
        mixed = torch.einsum(f"{spec},{letters[i]}z->{out}", mixed, synthesis[i])
    y = mixed.real
    if conv.bias is not None:
        y = y + conv.bias.detach().to(torch.float64)
    return y


@pytest.mark.parametrize(
    ("modes", "grid"),
    [((5,), (12,)), ((4, 6), (9, 14)), ((3, 4, 4), (7, 8, 10))],
)
@pytest.mark.parametrize("factorization", ["dense", "tucker", "cp"])
def test_equals_dense_dft_matrices_float64(modes, grid, factorization):
    gen = torch.Generator().manual_seed(0)
    conv = SpectralConv(
        3, 2, modes, factorization=factorization, rank=0.5, dtype=torch.float64, generator=gen
    )
    with torch.no_grad():
        conv.bias.normal_(generator=gen)
    x = torch.randn(2, 3, *grid, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(conv(x), dense_reference(conv, x), rtol=0, atol=1e-10)


def band_limited(batch: int, channels: int, n: int, kmax: int, gen: torch.Generator):
    """Random real 2-D trigonometric polynomials with |k_i| <= kmax, sampled on n x n."""
    k = torch.arange(-kmax, kmax + 1, dtype=torch.float64)
    c = torch.randn(batch, channels, k.numel(), k.numel(), 2, dtype=torch.float64, generator=gen)
    c = torch.view_as_complex(c)
    x = torch.arange(n, dtype=torch.float64) / n
    e = torch.exp(2j * math.pi * k[:, None] * x[None, :])  # (K, n)
    return torch.einsum("bcpq,pi,qj->bcij", c, e, e).real


def test_resolution_invariance_on_band_limited_input():
    gen = torch.Generator().manual_seed(1)
    conv = SpectralConv(2, 3, (6, 6), dtype=torch.float64, generator=gen)
    # the same band-limited functions (|k| <= 5 < 16 / 2) sampled on 16 x 16 and on 32 x 32
    coarse = band_limited(2, 2, 16, 5, torch.Generator().manual_seed(7))
    fine = band_limited(2, 2, 32, 5, torch.Generator().manual_seed(7))
    torch.testing.assert_close(fine[..., ::2, ::2], coarse, rtol=0, atol=1e-12)
    y16, y32 = conv(coarse), conv(fine)
    # the fine output is the trigonometric interpolation of the coarse output ...
    spec = torch.fft.fft2(y16 - conv.bias, norm="forward")
    padded = torch.zeros(2, 3, 32, 32, dtype=torch.complex128)
    for i in range(-7, 8):
        for j in range(-7, 8):
            padded[..., i % 32, j % 32] = spec[..., i % 16, j % 16]
    interp = torch.fft.ifft2(padded, norm="forward").real + conv.bias
    torch.testing.assert_close(y32, interp, rtol=0, atol=1e-10)
    # ... and agrees with the coarse output on the coarse points
    torch.testing.assert_close(y32[..., ::2, ::2], y16, rtol=0, atol=1e-10)


def test_frequency_above_the_modes_is_removed_and_kept_ones_pass():
    conv = SpectralConv(1, 1, (4,), dtype=torch.float64, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[..., 0] = 1.0  # R(k) = 1 for every kept k = 0, 1, 2
    x = torch.arange(16, dtype=torch.float64) / 16
    low = torch.cos(2 * math.pi * 2 * x)[None, None]
    high = torch.cos(2 * math.pi * 3 * x)[None, None]
    torch.testing.assert_close(conv(low + high), low, rtol=0, atol=1e-12)


def test_negative_frequencies_of_leading_dims_are_kept():
    assert kept_frequencies(6, last=False) == [-3, -2, -1, 0, 1, 2]
    assert kept_frequencies(5, last=False) == [-2, -1, 0, 1, 2]
    assert kept_frequencies(6, last=True) == [0, 1, 2, 3]
    conv = SpectralConv(1, 1, (4, 4), dtype=torch.float64, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[..., 0] = 1.0
    n = 8
    x = torch.arange(n, dtype=torch.float64) / n
    # a wave along (k1, k2) = (-1, 1): cos(2 pi (-x + y)) needs the negative k1 coefficient
    wave = torch.cos(2 * math.pi * (-x[:, None] + x[None, :]))[None, None]
    torch.testing.assert_close(conv(wave), wave, rtol=0, atol=1e-12)


@pytest.mark.parametrize("factorization", ["tucker", "cp"])
def test_factorised_weight_reconstructs_dense_weight(factorization):
    conv = SpectralConv(3, 4, (4, 4), factorization=factorization, rank=0.6, dtype=torch.float64)
    w = conv.dense_weight()
    assert w.shape == (3, 4, 4, 3)
    if factorization == "tucker":
        core = torch.view_as_complex(conv.core)
        u = [torch.view_as_complex(f) for f in conv.factors]
        manual = core
        for mode, factor in enumerate(u):  # n-mode products, one at a time
            manual = torch.tensordot(factor, manual.movedim(mode, 0), dims=([1], [0]))
            manual = manual.movedim(0, mode)
    else:
        lam = torch.view_as_complex(conv.cp_weights)
        u = [torch.view_as_complex(f) for f in conv.factors]
        manual = torch.zeros(w.shape, dtype=torch.complex128)
        for r in range(lam.numel()):
            outer = lam[r] * u[0][:, r]
            for factor in u[1:]:
                outer = outer[..., None] * factor[:, r]
            manual = manual + outer
    torch.testing.assert_close(w, manual, rtol=1e-12, atol=1e-12)
    dense_count = 2 * math.prod(w.shape)
    assert sum(p.numel() for p in conv.parameters() if p is not conv.bias) < dense_count


def test_tucker_rank_one_is_rank_one_per_unfolding():
    conv = SpectralConv(3, 3, (4, 4), factorization="tucker", rank=(1, 1, 1, 1))
    w = conv.dense_weight().detach().to(torch.complex128)
    for mode in range(4):
        unfold = w.movedim(mode, 0).reshape(w.shape[mode], -1)
        s = torch.linalg.svdvals(unfold)
        assert s[1:].max() < 1e-5 * s[0]


def test_float64_module_conversion_keeps_weights():
    conv = SpectralConv(2, 2, (4,))
    w32 = conv.dense_weight().detach().clone()
    conv = conv.to(torch.float64)
    assert conv.dense_weight().dtype == torch.complex128
    torch.testing.assert_close(conv.dense_weight().to(torch.complex64), w32)


def test_state_dict_loads_with_weights_only(tmp_path):
    conv = SpectralConv(2, 2, (4, 4), factorization="tucker", rank=0.5)
    path = tmp_path / "conv.pt"
    torch.save(conv.state_dict(), path)
    other = SpectralConv(2, 2, (4, 4), factorization="tucker", rank=0.5)
    other.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(1, 2, 8, 8)
    torch.testing.assert_close(other(x), conv(x), rtol=0, atol=0)


def test_grid_too_coarse_for_modes_raises():
    conv = SpectralConv(1, 1, (8, 8))
    with pytest.raises(ValueError, match=r"grid size 8 along spatial dimension 0 .*at least 9"):
        conv(torch.randn(1, 1, 8, 16))
    with pytest.raises(ValueError, match=r"grid size 8 along spatial dimension 1"):
        conv(torch.randn(1, 1, 16, 8))
    conv(torch.randn(1, 1, 9, 9))  # the coarsest grid that holds |k| <= 4


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (torch.randn(1, 3, 16, 16), ValueError, "3 channels.*in_channels=2"),
        (torch.randn(1, 2, 16), ValueError, "4 dimensions"),
        (torch.full((1, 2, 16, 16), float("nan")), ValueError, "non-finite"),
        (torch.zeros(1, 2, 16, 16, dtype=torch.int64), TypeError, "floating dtype"),
    ],
)
def test_bad_input_raises(x, error, match):
    with pytest.raises(error, match=match):
        SpectralConv(2, 2, (4, 4))(x)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_modes": (0, 4)}, ValueError, r"n_modes\[0\] must be >= 1"),
        ({"n_modes": ()}, ValueError, "at least one"),
        ({"factorization": "tt"}, ValueError, "'tt'"),
        ({"factorization": "tucker", "rank": 1.5}, ValueError, r"\(0, 1\], got 1.5"),
        ({"factorization": "tucker", "rank": (9, 1, 1, 1)}, ValueError, "rank\\[0\\] = 9"),
        ({"factorization": "tucker", "rank": (1, 1)}, ValueError, "4 ints"),
        ({"factorization": "cp", "rank": (2, 2)}, ValueError, "one int"),
        ({"dtype": torch.float16}, TypeError, "float32 or torch.float64"),
        ({"in_channels": 2.0}, TypeError, "in_channels must be an int"),
    ],
)
def test_bad_configuration_raises(kwargs, error, match):
    args = {"in_channels": 2, "out_channels": 2, "n_modes": (4, 4)}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        SpectralConv(args.pop("in_channels"), args.pop("out_channels"), args.pop("n_modes"), **args)
