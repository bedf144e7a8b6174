"""Standalone networks of the two search spaces and the digits images they are trained on.

A cell network is ``stem conv 3x3 (1 -> C) -> cell (the four edges of the architecture) -> ReLU
-> flatten -> linear``; a macro network is ``conv (1 -> w1, k1) -> ReLU -> conv (w1 -> w2, k2) ->
ReLU -> flatten -> linear``. Convolution operations are ReLU -> Conv (NAS-Bench-201's
ReLU-Conv-BN without the batch norm, so an inherited-weight evaluation needs no statistics
recalibration and a supernet path is exactly a standalone network).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.digits import load_digits_split
from .space import CELL_EDGES, CellSpace, MacroSpace

__all__ = ["CellNetwork", "MacroNetwork", "digits_images", "make_op"]

IMAGE = 8
CLASSES = 10


def digits_images(
    seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The bundled 8x8 digits as images ``(n, 1, 8, 8)``: 1438 train and 359 test samples.

    Args:
        seed: seed of the split.
        dtype: floating dtype.

    Returns:
        ``(X_train, y_train, X_test, y_test)``.

    Example:
        >>> Xtr, ytr, Xte, yte = digits_images()
        >>> tuple(Xtr.shape), tuple(Xte.shape)
        ((1438, 1, 8, 8), (359, 1, 8, 8))
    """
    return tuple(t.clone() for t in _digits_images(seed, dtype))  # type: ignore[return-value]


@functools.lru_cache(maxsize=4)
def _digits_images(seed: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    Xtr, ytr, Xte, yte = load_digits_split(seed=seed, dtype=dtype)
    return Xtr.reshape(-1, 1, IMAGE, IMAGE), ytr, Xte.reshape(-1, 1, IMAGE, IMAGE), yte


class _Zero(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


class _ReLUConv(nn.Module):
    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.relu(x))


def make_op(name: str, channels: int) -> nn.Module:
    """One cell operation by its NAS-Bench-201 name.

    Args:
        name: one of :data:`~subspaces.nas.space.CELL_OPS`.
        channels: input = output channels.

    Returns:
        The module.

    Raises:
        ValueError: for an unknown name.

    Example:
        >>> op = make_op("nor_conv_3x3", 4)
        >>> tuple(op(torch.zeros(2, 4, 8, 8)).shape)
        (2, 4, 8, 8)
    """
    if name == "none":
        return _Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return _ReLUConv(channels, 1)
    if name == "nor_conv_3x3":
        return _ReLUConv(channels, 3)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ValueError(f"unknown operation {name!r}")


def cell_forward(x: Tensor, edges: Sequence[nn.Module]) -> Tensor:
    """The cell's DAG: ``n1 = e01(x)``, ``n2 = e02(x) + e12(n1)``, ``n3 = e23(n2)``."""
    e01, e02, e12, e23 = edges
    n1 = e01(x)
    return e23(e02(x) + e12(n1))


class CellNetwork(nn.Module):
    """The standalone network of one cell architecture.

    Parameter names (``stem``, ``edges.<e>``, ``head``) match a
    :class:`~subspaces.nas.supernet.CellSupernet`'s ``edges.<e>.<op>``, so a path's weights load
    into it.

    Args:
        arch: the architecture (string or operation indices).
        channels: cell width ``C``.
        space: the cell space.

    Example:
        >>> net = CellNetwork("|nor_conv_3x3~0|+|skip_connect~0|none~1|+|nor_conv_1x1~2|")
        >>> tuple(net(torch.zeros(5, 1, 8, 8)).shape)
        (5, 10)
    """

    def __init__(
        self, arch: Sequence[int] | str, channels: int = 8, space: CellSpace | None = None
    ) -> None:
        super().__init__()
        self.space = space or CellSpace()
        self.arch = self.space.validate(arch)
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.edges = nn.ModuleList(make_op(self.space.ops[i], channels) for i in self.arch)
        self.head = nn.Linear(channels * IMAGE * IMAGE, CLASSES)
        assert len(self.edges) == len(CELL_EDGES)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(n, 10)`` of images ``(n, 1, 8, 8)``."""
        h = cell_forward(self.stem(x), list(self.edges))
        return self.head(F.relu(h).flatten(1))


class MacroNetwork(nn.Module):
    """The standalone network of one macro architecture: conv-ReLU per layer, then a linear head.

    Args:
        arch: ``((kernel, width), ...)`` or a string like ``k3w16-k5w32``.
        space: the macro space.

    Example:
        >>> net = MacroNetwork("k3w16-k5w8")
        >>> tuple(net(torch.zeros(5, 1, 8, 8)).shape), net.convs[1].weight.shape[:2]
        ((5, 10), torch.Size([8, 16]))
    """

    def __init__(self, arch: Sequence[Sequence[int]] | str, space: MacroSpace | None = None):
        super().__init__()
        self.space = space or MacroSpace()
        self.arch = self.space.validate(arch)
        convs, c_in = [], 1
        for k, w in self.arch:
            convs.append(nn.Conv2d(c_in, w, k, padding=k // 2))
            c_in = w
        self.convs = nn.ModuleList(convs)
        self.head = nn.Linear(c_in * IMAGE * IMAGE, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(n, 10)`` of images ``(n, 1, 8, 8)``."""
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.head(x.flatten(1))
