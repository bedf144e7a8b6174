"""Entangled mixed convolution vs output mixing; macro supernet; search; memory tracker."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from subspaces.nas.entangled import (
    EntangledConv,
    MacroSupernet,
    OutputMixedConv,
    extract_macro,
    relaxed_weights,
    search,
)
from subspaces.nas.memory import TensorMemoryTracker
from subspaces.nas.networks import digits_images
from subspaces.nas.space import MacroSpace


def test_entangled_conv_equals_weighted_sum_of_candidate_convolutions() -> None:
    torch.manual_seed(0)
    kernels, widths = (1, 3, 5), (2, 3, 6)
    conv = EntangledConv(4, kernels, widths).double()
    x = torch.randn(3, 4, 7, 7, dtype=torch.float64)
    a = torch.randn(9, dtype=torch.float64)  # any weights: the identity is linearity
    # Reference from scratch: each candidate's own convolution with its cropped kernel and
    # first filters, at its own padding, zero-padded to the widest output.
    W, b = conv.weight.detach(), conv.bias.detach()
    ref = torch.zeros(3, 6, 7, 7, dtype=torch.float64)
    for i, (k, w) in enumerate((k, w) for k in kernels for w in widths):
        lo = (5 - k) // 2
        out = F.conv2d(x, W[:w, :, lo : lo + k, lo : lo + k], b[:w], padding=k // 2)
        ref[:, :w] += a[i] * out
    torch.testing.assert_close(conv(x, a), ref, rtol=0, atol=1e-10)
    # One-hot weights give exactly one candidate.
    onehot = torch.zeros(9, dtype=torch.float64)
    onehot[4] = 1.0  # (3, 3)
    torch.testing.assert_close(conv(x, onehot), conv.candidate(x, 4), rtol=0, atol=1e-12)
    assert conv(x, onehot)[:, 3:].abs().max() == 0


def test_output_mixing_with_copied_weights_equals_entangled() -> None:
    torch.manual_seed(1)
    ent = EntangledConv(2, (1, 3), (2, 4)).double()
    out = OutputMixedConv(2, (1, 3), (2, 4)).double()
    with torch.no_grad():
        for i, c in enumerate(out.convs):
            k, w = ent.choices[i]
            lo = (3 - k) // 2
            c.weight.copy_(ent.weight[:w, :, lo : lo + k, lo : lo + k])
            c.bias.copy_(ent.bias[:w])
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    a = torch.softmax(torch.randn(4, dtype=torch.float64), 0)
    torch.testing.assert_close(out(x, a), ent(x, a), rtol=0, atol=1e-10)
    hard = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(out(x, hard, skip_zero=True), ent(x, hard), rtol=0, atol=1e-10)


def test_discretised_entangled_supernet_is_the_standalone_network() -> None:
    torch.manual_seed(0)
    space = MacroSpace()
    sn = MacroSupernet(space, "entangled").double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    for arch in ["k5w32-k5w32", "k1w8-k3w16", "k3w16-k1w8"]:
        layers = space.parse(arch)
        mix = torch.zeros(2, 9, dtype=torch.float64)
        for i, choice in enumerate(layers):
            mix[i, space.choices.index(choice)] = 1.0
        net = extract_macro(sn, arch).double()
        torch.testing.assert_close(sn(x, mix), net(x), rtol=0, atol=1e-10)


def test_entangled_step_is_cheaper_than_output_mixing() -> None:
    X, y = digits_images()[:2]
    peaks = {}
    for mixing in ("entangled", "output"):
        torch.manual_seed(0)
        sn = MacroSupernet(MacroSpace(), mixing)  # type: ignore[arg-type]
        with TensorMemoryTracker() as mem:
            F.cross_entropy(sn(X[:32], relaxed_weights(sn.alphas, "darts")), y[:32]).backward()
        peaks[mixing] = mem.peak
    # Output mixing keeps 9 candidate outputs per layer (widths 8+16+32 per kernel, padded);
    # entangled one output of width 32 (plus the mixed weights, which are small here).
    assert peaks["entangled"] < 0.5 * peaks["output"]


def test_relaxations() -> None:
    a = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
    d = relaxed_weights(a, "darts")
    torch.testing.assert_close(d, torch.softmax(a, -1))
    g = relaxed_weights(a, "gdas", temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert sorted(g.detach().flatten().tolist()) == [0.0, 0.0, 1.0]
    g.sum().backward()  # straight-through: gradient reaches the logits
    assert a.grad is not None
    with pytest.raises(ValueError, match="relaxation must be"):
        relaxed_weights(a, "snas")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature must be"):
        relaxed_weights(a, "gdas", temperature=0.0)


def test_search_moves_alphas_and_returns_argmax() -> None:
    X, y = digits_images()[:2]
    torch.manual_seed(0)
    space = MacroSpace(kernels=(1, 3), widths=(4, 8), layers=1)
    sn = MacroSupernet(space, "entangled")
    r = search(sn, X[:256], y[:256], relaxation="gdas", epochs=2)
    assert r.alphas.abs().max() > 0 and r.arch == sn.argmax()
    assert r.arch == (space.choices[int(r.alphas[0].argmax())],)


def test_bad_input() -> None:
    conv = EntangledConv(2, (1, 3), (2, 4))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        conv(torch.zeros(1, 2, 5, 5), torch.ones(3))
    with pytest.raises(ValueError, match="mixing must be"):
        MacroSupernet(MacroSpace(), "sum")  # type: ignore[arg-type]
    sn = MacroSupernet(MacroSpace(), "output")
    with pytest.raises(ValueError, match="needs an entangled supernet"):
        extract_macro(sn, "k1w8-k1w8")
    X = torch.zeros(4, 1, 8, 8)
    with pytest.raises(ValueError, match="epochs must be"):
        search(sn, X, torch.zeros(4, dtype=torch.long), epochs=0)
    with pytest.raises(ValueError, match="X must be"):
        search(sn, X, torch.zeros(3, dtype=torch.long))
    out = OutputMixedConv(2, (1,), (2,))
    with pytest.raises(ValueError, match="all mixing weights are zero"):
        out(torch.zeros(1, 2, 3, 3), torch.zeros(1), skip_zero=True)
