"""The spectral-weight probe on weights of known per-mode spectra and multilinear ranks."""

from __future__ import annotations

import pytest
import torch

from subspaces.operators import FNO, SpectralConv, effective_rank, probe_model, probe_spectral_conv


def test_per_mode_singular_values_and_effective_rank_are_the_known_ones():
    conv = SpectralConv(3, 3, (4, 4), dtype=torch.float64)
    spectra = torch.rand(4, 3, 3, dtype=torch.float64) + 0.1  # per kept frequency
    with torch.no_grad():
        w = torch.zeros(3, 3, 4, 3, dtype=torch.complex128)
        for i in range(4):
            for j in range(3):
                q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.complex128))
                w[:, :, i, j] = q @ torch.diag(spectra[i, j].to(torch.complex128)) @ q.mH
        conv.weight.copy_(torch.view_as_real(w))
    p = probe_spectral_conv(conv)
    expected = spectra.sort(-1, descending=True).values
    torch.testing.assert_close(p.singular_values.double(), expected, rtol=1e-5, atol=1e-6)
    probs = expected / expected.sum(-1, keepdim=True)
    erank = torch.exp(-(probs * probs.log()).sum(-1))
    torch.testing.assert_close(p.effective_rank.double(), erank, rtol=1e-5, atol=1e-6)
    assert p.frequencies == [[-2, -1, 0, 1], [0, 1, 2]]


def test_tucker_ranks_recover_a_planted_multilinear_rank():
    conv = SpectralConv(6, 5, (6, 6), factorization="tucker", rank=(2, 3, 1, 2))
    p = probe_spectral_conv(conv, energy=1 - 1e-9)
    assert p.tucker_ranks == (2, 3, 1, 2)
    assert p.stored_ranks == (2, 3, 1, 2)
    dense = SpectralConv(6, 5, (6, 6), generator=torch.Generator().manual_seed(0))
    assert probe_spectral_conv(dense, energy=1 - 1e-9).tucker_ranks == (6, 5, 6, 4)


def test_effective_rank_limits():
    s = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(effective_rank(s), torch.tensor([1.0, 3.0, 0.0]))


def test_probe_model_names_every_spectral_layer():
    names = list(probe_model(FNO((4,), 1, 1, 6, n_layers=3)))
    assert names == ["convs.0", "convs.1", "convs.2"]


def test_bad_input_raises():
    with pytest.raises(TypeError, match="SpectralConv, got Linear"):
        probe_spectral_conv(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="energy must be in"):
        probe_spectral_conv(SpectralConv(2, 2, (4,)), energy=1.5)
