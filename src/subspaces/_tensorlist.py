"""Conversions between parameter dictionaries and flat vectors.

Parameters travel through the library as ``dict[str, Tensor]`` (from ``named_parameters()``);
matrix-free algorithms work on flat vectors. :class:`ParamLayout` is the one place that maps
between the two, optionally with a trailing batch dimension (one column per vector).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ParamLayout:
    """Names and shapes of a parameter dictionary, in order.

    Args:
        names: parameter names, in the order they are laid out in the flat vector.
        shapes: the shape of each parameter.

    Example:
        >>> layout = ParamLayout.from_params({"w": torch.zeros(2, 3), "b": torch.zeros(2)})
        >>> layout.numel
        8
        >>> v = layout.flatten({"w": torch.ones(2, 3), "b": torch.zeros(2)})
        >>> layout.unflatten(v)["w"].shape
        torch.Size([2, 3])
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def from_params(cls, params: Mapping[str, Tensor]) -> ParamLayout:
        """Build the layout of a parameter dictionary (order of iteration is kept)."""
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping name -> Tensor, got {type(params).__name__}")
        for name, p in params.items():
            if not isinstance(p, Tensor):
                raise TypeError(f"params[{name!r}] must be a Tensor, got {type(p).__name__}")
        return cls(tuple(params), tuple(tuple(p.shape) for p in params.values()))

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of entries of each parameter."""
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def numel(self) -> int:
        """Total number of entries."""
        return sum(self.sizes)

    def flatten(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """Concatenate a dictionary into a vector ``(numel,)`` or a matrix ``(numel, b)``.

        A matrix results when every tensor carries one extra trailing dimension ``b``.

        Returns:
            The flat vector ``(numel,)``, or the matrix ``(numel, b)`` in the batched case, with
            the parameters stacked in layout order.

        Raises:
            ValueError: if names or shapes do not match the layout.
        """
        if set(tensors) != set(self.names):
            missing = sorted(set(self.names) - set(tensors))
            extra = sorted(set(tensors) - set(self.names))
            raise ValueError(
                f"parameter names do not match the layout: missing {missing}, extra {extra}"
            )
        first = tensors[self.names[0]]
        batched = first.ndim == len(self.shapes[0]) + 1
        pieces = []
        for name, shape in zip(self.names, self.shapes, strict=True):
            t = tensors[name]
            expected = (*shape, first.shape[-1]) if batched else shape
            if tuple(t.shape) != tuple(expected):
                raise ValueError(
                    f"tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(expected)}"
                )
            pieces.append(t.reshape(-1, first.shape[-1]) if batched else t.reshape(-1))
        return torch.cat(pieces, dim=0)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Split a vector ``(numel,)`` or matrix ``(numel, b)`` back into a dictionary.

        Returns:
            A dictionary ``name -> tensor`` in layout order; each tensor has its layout shape,
            plus a trailing ``b`` dimension for a matrix input.

        Raises:
            ValueError: if the leading dimension is not :attr:`numel`.
        """
        if flat.ndim not in (1, 2) or flat.shape[0] != self.numel:
            raise ValueError(
                f"expected a tensor of shape ({self.numel},) or ({self.numel}, b), "
                f"got {tuple(flat.shape)}"
            )
        tail = tuple(flat.shape[1:])
        chunks = torch.split(flat, list(self.sizes), dim=0)
        return {
            name: chunk.reshape(*shape, *tail)
            for name, shape, chunk in zip(self.names, self.shapes, chunks, strict=True)
        }
