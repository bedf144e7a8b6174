r"""The Fourier neural operator (FNO): lifting, Fourier blocks with skips, projection.

Li, Kovachki, Azizzadenesheli, Liu, Bhattacharya, Stuart & Anandkumar, "Fourier Neural Operator for
Parametric Partial Differential Equations" (arXiv:2010.08895), built by the rules of Berner,
Liu-Schiaffini, Kossaifi, Duruisseaux, Bonev, Azizzadenesheli & Anandkumar, "Principled approaches
for extending neural architectures to function spaces for operator learning" (arXiv:2506.10973):
every layer is the discretisation of an operator between function spaces, so one trained model
evaluates on any grid:

- pointwise maps (lifting, projection, channel MLPs, skips) are ``1 x 1`` convolutions, which act
  on function values and do not see the grid spacing;
- the only non-local layer is :class:`~subspaces.operators.spectral_conv.SpectralConv`, whose
  weights live on a fixed set of frequencies with resolution-independent (``norm="forward"``)
  Fourier coefficients;
- the positional embedding is the coordinate ``x_i = i / n`` on the normalised unit cube (the
  same physical points at every ``n``), never a grid index;
- no padding, pooling or ``k x k`` convolution, whose meaning depends on the grid spacing.

The block follows ``neuraloperator``'s ``FNOBlocks``: ``y = act(K x + W x)``, then
``y = act(ChannelMLP(y) + g * x)`` (a soft-gating skip ``g``), with both ``act`` dropped in the
last block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import all_finite, check_finite, check_float_tensor, check_positive_int
from .spectral_conv import Factorization, SpectralConv

__all__ = ["FNO", "ChannelMLP", "grid_embedding"]


def _pointwise_forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``1 x 1`` convolution as one batched matrix product over the flattened grid.

    On CPU this is several times faster than ``mkldnn``'s ``1 x 1`` convolution on
    channels-first data (the FNO's largest cost); the sums run over the same input channels, in
    another order, so results differ from ``F.conv*d`` by float rounding only.

    Returns:
        ``(batch, out, *grid)``: ``weight[:, :, 0, ..., 0] @ x`` at every grid point, plus bias.
    """
    b, c, *grid = x.shape
    out = weight.shape[0]
    w = weight.reshape(out, c).expand(b, out, c)  # a view: no copy per batch element
    x3 = x.reshape(b, c, -1)
    y = torch.bmm(w, x3) if bias is None else torch.baddbmm(bias.view(1, out, 1), w, x3)
    return y.view(b, out, *grid)


class _Pointwise1d(nn.Conv1d):
    """``nn.Conv1d`` with ``kernel_size=1`` (same parameters, initialisation and state dict)."""

    def forward(self, input: Tensor) -> Tensor:
        return _pointwise_forward(input, self.weight, self.bias)


class _Pointwise2d(nn.Conv2d):
    """``nn.Conv2d`` with ``kernel_size=1`` computed as a matrix product."""

    def forward(self, input: Tensor) -> Tensor:
        return _pointwise_forward(input, self.weight, self.bias)


class _Pointwise3d(nn.Conv3d):
    """``nn.Conv3d`` with ``kernel_size=1`` computed as a matrix product."""

    def forward(self, input: Tensor) -> Tensor:
        return _pointwise_forward(input, self.weight, self.bias)


def _pointwise(cin: int, cout: int, d: int, *, bias: bool = True) -> nn.Module:
    conv = {1: _Pointwise1d, 2: _Pointwise2d, 3: _Pointwise3d}[d]
    return conv(cin, cout, kernel_size=1, bias=bias)


def grid_embedding(x: Tensor) -> Tensor:
    """Append the coordinates ``i / n`` of every grid point as extra channels.

    The coordinates are those of the normalised periodic unit cube, so a grid of ``2 n`` points
    holds the points of the grid of ``n`` points (every second one) with the same embedding.

    Args:
        x: ``(batch, channels, *grid)``.

    Returns:
        ``(batch, channels + ndim, *grid)``.

    Example:
        >>> grid_embedding(torch.zeros(1, 1, 4))[0, 1].tolist()
        [0.0, 0.25, 0.5, 0.75]
    """
    grid = x.shape[2:]
    axes = [torch.arange(n, dtype=x.dtype, device=x.device) / n for n in grid]
    mesh = torch.meshgrid(*axes, indexing="ij")
    coords = torch.stack(mesh).unsqueeze(0).expand(x.shape[0], -1, *grid)
    return torch.cat([x, coords], dim=1)


class ChannelMLP(nn.Module):
    """A pointwise two-layer MLP over channels (``1 x 1`` convolutions with GELU between).

    Args:
        in_channels: input channels.
        hidden_channels: width of the hidden layer.
        out_channels: output channels.
        ndim: spatial dimensions (1, 2 or 3).

    Example:
        >>> mlp = ChannelMLP(3, 8, 2, ndim=1)
        >>> tuple(mlp(torch.randn(4, 3, 10)).shape)
        (4, 2, 10)
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, *, ndim: int):
        super().__init__()
        self.fc1 = _pointwise(in_channels, hidden_channels, ndim)
        self.fc2 = _pointwise(hidden_channels, out_channels, ndim)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the MLP at every grid point."""
        return self.fc2(F.gelu(self.fc1(x)))


class _SoftGating(nn.Module):
    """Per-channel scaling ``g * x`` (``neuraloperator``'s ``soft-gating`` skip)."""

    def __init__(self, channels: int, ndim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, *([1] * ndim)))

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * x


class FNO(nn.Module):
    r"""Fourier neural operator on ``1``-, ``2``- or ``3``-dimensional grids.

    Args:
        n_modes: retained frequencies per spatial dimension (see
            :class:`~subspaces.operators.spectral_conv.SpectralConv`); its length sets the
            dimension.
        in_channels: input function channels (the coordinates are added when
            ``positional_embedding``).
        out_channels: output function channels.
        hidden_channels: width of the Fourier blocks.
        n_layers: number of Fourier blocks.
        lifting_channel_ratio: hidden width of the lifting MLP, in units of ``hidden_channels``.
        projection_channel_ratio: hidden width of the projection MLP, likewise.
        positional_embedding: append the normalised coordinates ``i / n`` to the input.
        channel_mlp_expansion: hidden width of each block's channel MLP, in units of
            ``hidden_channels`` (0 disables the channel MLP and its skip).
        factorization: weight storage of the spectral convolutions (``"dense"``, ``"tucker"``,
            ``"cp"``).
        rank: rank of a factorised weight (see ``SpectralConv``).

    Raises:
        TypeError: for a non-int size.
        ValueError: for sizes below 1 or more than 3 spatial dimensions.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = FNO((4, 4), in_channels=1, out_channels=1, hidden_channels=8, n_layers=2)
        >>> a = torch.randn(2, 1, 16, 16)
        >>> tuple(model(a).shape), tuple(model(torch.randn(2, 1, 32, 32)).shape)
        ((2, 1, 16, 16), (2, 1, 32, 32))
    """

    def __init__(
        self,
        n_modes: Sequence[int],
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        n_layers: int = 4,
        *,
        lifting_channel_ratio: int = 2,
        projection_channel_ratio: int = 2,
        positional_embedding: bool = True,
        channel_mlp_expansion: float = 0.5,
        factorization: Factorization = "dense",
        rank: float | int | Sequence[int] = 1.0,
    ) -> None:
        super().__init__()
        modes = tuple(n_modes)
        if not 1 <= len(modes) <= 3:
            raise ValueError(f"n_modes must name 1 to 3 spatial dimensions, got {modes!r}")
        d = len(modes)
        self.n_modes = modes
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        h = check_positive_int(hidden_channels, "hidden_channels")
        self.n_layers = check_positive_int(n_layers, "n_layers")
        lift = check_positive_int(lifting_channel_ratio, "lifting_channel_ratio")
        proj = check_positive_int(projection_channel_ratio, "projection_channel_ratio")
        if not (isinstance(channel_mlp_expansion, (int, float)) and channel_mlp_expansion >= 0):
            raise ValueError(f"channel_mlp_expansion must be >= 0, got {channel_mlp_expansion!r}")
        self.positional_embedding = bool(positional_embedding)
        cin = in_channels + (d if positional_embedding else 0)
        self.lifting = ChannelMLP(cin, lift * h, h, ndim=d)
        self.convs = nn.ModuleList(
            SpectralConv(h, h, modes, factorization=factorization, rank=rank)
            for _ in range(n_layers)
        )
        self.fno_skips = nn.ModuleList(_pointwise(h, h, d, bias=False) for _ in range(n_layers))
        mlp_width = round(channel_mlp_expansion * h)
        self.channel_mlps = nn.ModuleList(
            ChannelMLP(h, mlp_width, h, ndim=d) for _ in range(n_layers if mlp_width else 0)
        )
        self.mlp_skips = nn.ModuleList(
            _SoftGating(h, d) for _ in range(n_layers if mlp_width else 0)
        )
        self.projection = ChannelMLP(h, proj * h, out_channels, ndim=d)

    def forward(self, x: Tensor) -> Tensor:
        """Evaluate the operator on functions sampled on a grid.

        Args:
            x: ``(batch, in_channels, *grid)``, the grid fine enough for ``n_modes``.

        Returns:
            ``(batch, out_channels, *grid)``.

        Raises:
            TypeError: if ``x`` is not a real floating tensor.
            ValueError: for wrong dimensions or channels, NaN/Inf, or a grid too coarse.
        """
        check_float_tensor(x, "x", ndim=len(self.n_modes) + 2)
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"x has {x.shape[1]} channels (shape {tuple(x.shape)}), expected "
                f"in_channels={self.in_channels}"
            )
        check_finite(x, "x")
        if self.positional_embedding:
            x = grid_embedding(x)
        x = self.lifting(x)
        for i in range(self.n_layers):
            last = i == self.n_layers - 1
            y = self.convs[i](x) + self.fno_skips[i](x)
            if self.channel_mlps:
                y = y if last else F.gelu(y)
                y = self.channel_mlps[i](y) + self.mlp_skips[i](x)
            x = y if last else F.gelu(y)
        out = self.projection(x)
        if not all_finite(out):
            raise ValueError(
                "the FNO output contains NaN or Inf although its input is finite: the weights "
                "(or the hidden state) overflowed"
            )
        return out
