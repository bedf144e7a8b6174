"""FNO: discretisation-agnostic evaluation, positional embedding, configuration errors."""

from __future__ import annotations

import math

import pytest
import torch

from subspaces.operators import FNO, SpectralConv, grid_embedding


def smooth_field(n: int, seed: int) -> torch.Tensor:
    """A random real trigonometric polynomial with |k_i| <= 2 sampled on an n x n grid."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.arange(-2, 3, dtype=torch.float64)
    c = torch.view_as_complex(torch.randn(2, 1, 5, 5, 2, dtype=torch.float64, generator=gen))
    x = torch.arange(n, dtype=torch.float64) / n
    e = torch.exp(2j * math.pi * k[:, None] * x[None, :])
    return torch.einsum("bcpq,pi,qj->bcij", c, e, e).real


def test_same_function_on_two_grids_gives_the_same_output_at_shared_points():
    # A smooth input sampled on 32 and 64 points: the FNO's outputs agree at the shared points up
    # to the aliasing of the activations' harmonics (measured 1e-3 at this initialisation); a
    # 3x3 CNN computes a different function on the finer grid (measured 0.2).
    torch.manual_seed(0)
    model = FNO((8, 8), 1, 1, 16).double()
    x32, x64 = smooth_field(32, 3), smooth_field(64, 3)
    with torch.no_grad():
        y32, y64 = model(x32), model(x64)
    assert float((y64[..., ::2, ::2] - y32).norm() / y32.norm()) < 1e-2
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(16, 1, 3, padding=1)
    ).double()
    with torch.no_grad():
        c32, c64 = cnn(x32), cnn(x64)
    assert float((c64[..., ::2, ::2] - c32).norm() / c32.norm()) > 0.05


def test_grid_embedding_is_the_normalised_coordinate_on_every_grid():
    e16 = grid_embedding(torch.zeros(1, 1, 16, 16))
    e32 = grid_embedding(torch.zeros(1, 1, 32, 32))
    torch.testing.assert_close(e32[..., ::2, ::2], e16, rtol=0, atol=0)
    assert float(e16[0, 1, 4, 0]) == 0.25 and float(e16[0, 2, 0, 8]) == 0.5


def test_one_dimensional_and_factorised_models_run_and_shrink():
    dense = FNO((8,), 2, 3, 16, n_layers=2)
    tucker = FNO((8,), 2, 3, 16, n_layers=2, factorization="tucker", rank=0.1)
    x = torch.randn(4, 2, 40)
    assert dense(x).shape == tucker(x).shape == (4, 3, 40)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(tucker) < count(dense)
    assert all(c.factorization == "tucker" for c in tucker.modules() if isinstance(c, SpectralConv))


def test_gradients_reach_every_parameter():
    model = FNO((4, 4), 1, 1, 8, n_layers=2)
    model(torch.randn(2, 1, 12, 12)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (torch.randn(1, 2, 16, 16), ValueError, "2 channels.*in_channels=1"),
        (torch.randn(1, 1, 8, 16), ValueError, "grid size 8 along spatial dimension 0"),
        (torch.randn(1, 1, 16), ValueError, "4 dimensions"),
        (torch.tensor([[[[float("inf")] * 16] * 16]]), ValueError, "non-finite"),
    ],
)
def test_bad_input_raises(x, error, match):
    with pytest.raises(error, match=match):
        FNO((8, 8), 1, 1, 8, n_layers=1)(x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_modes": (4, 4, 4, 4)}, "1 to 3 spatial dimensions"),
        ({"hidden_channels": 0}, "hidden_channels must be >= 1"),
        ({"n_layers": 0}, "n_layers must be >= 1"),
        ({"channel_mlp_expansion": -1.0}, "channel_mlp_expansion must be >= 0"),
    ],
)
def test_bad_configuration_raises(kwargs, match):
    args = {"n_modes": (4, 4), "in_channels": 1, "out_channels": 1, "hidden_channels": 8}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        FNO(**args)
