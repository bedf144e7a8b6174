"""The FNO's fast paths: 1x1 convolutions as matrix products and the pruned transforms of
SpectralConv (their gradients); the one-pass finiteness check is tested in test_checks_finite.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from subspaces.operators import FNO, SpectralConv
from subspaces.operators.fno import _pointwise

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@pytest.mark.parametrize("grid", [(7,), (5, 6), (3, 4, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_equals_conv_with_gradients_float64(grid, bias):
    d = len(grid)
    torch.manual_seed(0)
    layer = _pointwise(3, 4, d, bias=bias).double()
    assert isinstance(layer, {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[d])
    x = torch.randn(2, 3, *grid, dtype=torch.float64, requires_grad=True)
    ours = layer(x)
    ref = CONV[d](x, layer.weight, layer.bias)
    # a sum of 3 products in another order: a few ulps of the largest term
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-14)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(ours, [x, *layer.parameters()], g)
    want = torch.autograd.grad(ref, [x, *layer.parameters()], g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


def test_pointwise_keeps_the_conv_state_dict():
    layer = _pointwise(3, 4, 2)
    plain = nn.Conv2d(3, 4, kernel_size=1)
    plain.load_state_dict(layer.state_dict())  # same keys and shapes
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(layer(x), plain(x), rtol=1e-6, atol=1e-6)


def test_spectral_conv_gradcheck_float64():
    gen = torch.Generator().manual_seed(0)
    conv = SpectralConv(2, 2, (3, 4), dtype=torch.float64, generator=gen)
    x = torch.randn(1, 2, 7, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w: conv._spectral(x, torch.view_as_complex(w)), (x, conv.weight)
    )


def test_fno_raises_on_a_non_finite_output():
    model = FNO((4, 4), 1, 1, 8, n_layers=1)
    x = torch.randn(2, 1, 12, 12)
    assert torch.isfinite(model(x)).all()
    with torch.no_grad():
        model.projection.fc2.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="FNO output contains NaN or Inf"):
        model(x)


def test_fno_matches_conv_modules_in_float64():
    """The whole model with plain nn.ConvNd layers swapped in: same function to rounding."""
    torch.manual_seed(0)
    model = FNO((4, 4), 1, 1, 8, n_layers=2).double()
    x = torch.randn(3, 1, 12, 12, dtype=torch.float64)
    fast = model(x)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Conv2d):
            plain = nn.Conv2d(
                module.in_channels, module.out_channels, 1, bias=module.bias is not None
            )
            plain = plain.double()
            plain.load_state_dict(module.state_dict())
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, plain)
    assert not any(type(m).__name__.startswith("_Pointwise") for m in model.modules())
    torch.testing.assert_close(fast, model(x), rtol=0, atol=1e-13)


@pytest.mark.parametrize(("modes", "grid"), [((4, 24), (9, 26)), ((3, 5), (8, 64)), ((30,), (64,))])
def test_pruned_transforms_equal_rfftn_float64(modes, grid):
    """Against the unpruned ``rfftn`` / ``irfftn`` formula, also where the modes fill the grid."""
    gen = torch.Generator().manual_seed(0)
    conv = SpectralConv(3, 2, modes, dtype=torch.float64, generator=gen)
    x = torch.randn(2, 3, *grid, dtype=torch.float64, generator=gen)
    w = conv.dense_weight().detach()
    dims = tuple(range(2, x.ndim))
    xf = torch.fft.rfftn(x, dim=dims, norm="forward")
    full = torch.zeros(2, 2, *xf.shape[2:], dtype=torch.complex128)
    lead = [torch.tensor(f) % n for f, n in zip(conv.frequencies[:-1], grid[:-1], strict=True)]
    index = torch.meshgrid(*lead, torch.arange(len(conv.frequencies[-1])), indexing="ij")
    letters = "xyz"[: len(grid)]
    picked = xf[(slice(None), slice(None), *index)]
    full[(slice(None), slice(None), *index)] = torch.einsum(
        f"bi{letters},io{letters}->bo{letters}", picked, w
    )
    ref = torch.fft.irfftn(full, s=grid, dim=dims, norm="forward") + conv.bias.detach()
    torch.testing.assert_close(conv(x), ref, rtol=0, atol=1e-12)
