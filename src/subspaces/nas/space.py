"""Search spaces: the cell space (NAS-Bench-201-like strings) and a kernel x width macro space.

The **cell space** is a small NAS-Bench-201 cell (Dong & Yang, "NAS-Bench-201: Extending the
scope of reproducible neural architecture search", arXiv:2001.00326) with four nodes and four
edges::

    node1 = e(0, 1)(node0)
    node2 = e(0, 2)(node0) + e(1, 2)(node1)
    node3 = e(2, 3)(node2)                       (the cell's output)

Each edge carries one of five operations (``none``, ``skip_connect``, ``nor_conv_1x1``,
``nor_conv_3x3``, ``avg_pool_3x3``), so the space holds ``5**4 = 625`` architectures. An
architecture is written as in NAS-Bench-201, one ``|op~source|`` group per edge, nodes separated
by ``+``,
e.g. ``|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~2|``.

The **macro space** is a chain of convolutions, each with a kernel size and a width (output
channels) from small menus (the toy macro space of Sukthanker et al., arXiv:2312.10440); an
architecture is written ``k3w16-k5w32`` (one ``k<kernel>w<width>`` per layer).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["CELL_EDGES", "CELL_OPS", "CellSpace", "MacroSpace"]

CELL_OPS: tuple[str, ...] = (
    "none",
    "skip_connect",
    "nor_conv_1x1",
    "nor_conv_3x3",
    "avg_pool_3x3",
)
"""Operation names (NAS-Bench-201's), in the index order used by samplers and supernets."""

CELL_EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2), (2, 3))
"""The cell's edges ``(source, target)`` in string order."""

_GROUP = re.compile(r"^([A-Za-z0-9_]+)~(\d+)$")
_MACRO = re.compile(r"^k(\d+)w(\d+)$")


@dataclass(frozen=True)
class CellSpace:
    """The 4-edge cell space; an architecture is a tuple of operation indices, one per edge.

    Args:
        ops: the candidate operations (names from :data:`CELL_OPS`, no repeats, at least one).

    Raises:
        ValueError: for an empty, repeated or unknown operation list.

    Example:
        >>> space = CellSpace()
        >>> len(space), space.to_string((3, 1, 2, 4))
        (625, '|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~2|')
        >>> space.parse(space.to_string((3, 1, 2, 4)))
        (3, 1, 2, 4)
    """

    ops: tuple[str, ...] = CELL_OPS

    def __post_init__(self) -> None:
        ops = tuple(self.ops)
        if not ops:
            raise ValueError("a search space needs at least one operation, got an empty ops list")
        unknown = [op for op in ops if op not in CELL_OPS]
        if unknown:
            raise ValueError(f"unknown operation(s) {unknown}; expected names from {CELL_OPS}")
        if len(set(ops)) != len(ops):
            raise ValueError(f"ops must not repeat, got {ops}")
        object.__setattr__(self, "ops", ops)

    @property
    def num_edges(self) -> int:
        """Number of edges (4)."""
        return len(CELL_EDGES)

    def __len__(self) -> int:
        return len(self.ops) ** self.num_edges

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        return iter(itertools.product(range(len(self.ops)), repeat=self.num_edges))

    def validate(self, arch: Sequence[int] | str) -> tuple[int, ...]:
        """Return ``arch`` as a tuple of operation indices, checking it (a string is parsed).

        Returns:
            The operation indices.

        Raises:
            ValueError: for a wrong length or an index out of range.
            TypeError: for something that is neither a string nor a sequence of ints.
        """
        if isinstance(arch, str):
            return self.parse(arch)
        if not isinstance(arch, Sequence) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in arch
        ):
            raise TypeError(f"an architecture is a string or a sequence of ints, got {arch!r}")
        if len(arch) != self.num_edges:
            raise ValueError(
                f"architecture {tuple(arch)} has {len(arch)} edges, expected {self.num_edges}"
            )
        idx = tuple(int(i) for i in arch)
        bad = [i for i in idx if not 0 <= i < len(self.ops)]
        if bad:
            raise ValueError(f"operation indices {bad} out of range [0, {len(self.ops)})")
        return idx

    def parse(self, text: str) -> tuple[int, ...]:
        """Parse a NAS-Bench-201 string ``|op~src|+|op~src|op~src|+|op~src|``.

        Returns:
            The operation indices.

        Raises:
            TypeError: if ``text`` is not a string.
            ValueError: for an unknown operation, a wrong number of nodes or edges, or a wrong
                source node.
        """
        if not isinstance(text, str):
            raise TypeError(f"an architecture string must be a str, got {type(text).__name__}")
        nodes = text.split("+")
        expected = [[e for e in CELL_EDGES if e[1] == t] for t in (1, 2, 3)]
        if len(nodes) != len(expected):
            raise ValueError(
                f"architecture string {text!r} has {len(nodes)} nodes, expected {len(expected)} "
                "('|op~0|+|op~0|op~1|+|op~2|')"
            )
        arch: list[int] = []
        for node, edges in zip(nodes, expected, strict=True):
            if not (node.startswith("|") and node.endswith("|")):
                raise ValueError(f"node {node!r} of {text!r} must be written '|op~src|...|'")
            groups = node[1:-1].split("|")
            if len(groups) != len(edges):
                raise ValueError(
                    f"node {node!r} of {text!r} has {len(groups)} edges, expected {len(edges)}"
                )
            for group, (source, _) in zip(groups, edges, strict=True):
                match = _GROUP.match(group)
                if match is None or int(match.group(2)) != source:
                    raise ValueError(f"edge {group!r} of {text!r} must be 'op~{source}'")
                op = match.group(1)
                if op not in self.ops:
                    raise ValueError(f"unknown operation {op!r} in {text!r}; expected {self.ops}")
                arch.append(self.ops.index(op))
        return tuple(arch)

    def to_string(self, arch: Sequence[int] | str) -> str:
        """The NAS-Bench-201 string of ``arch``."""
        idx = self.validate(arch)
        names = [f"{self.ops[i]}~{s}" for i, (s, _) in zip(idx, CELL_EDGES, strict=True)]
        return f"|{names[0]}|+|{names[1]}|{names[2]}|+|{names[3]}|"


@dataclass(frozen=True)
class MacroSpace:
    """A chain of ``layers`` convolutions, each with a kernel size and a width from menus.

    Args:
        kernels: odd kernel sizes, ascending, no repeats.
        widths: output channel counts, ascending, no repeats.
        layers: number of searchable convolutions.

    Raises:
        ValueError: for empty menus, even or non-positive kernels, non-positive widths or layers.

    Example:
        >>> space = MacroSpace()
        >>> len(space), space.choices[:2], space.to_string(((5, 32), (3, 16)))
        (81, ((1, 8), (1, 16)), 'k5w32-k3w16')
        >>> space.parse("k5w32-k3w16")
        ((5, 32), (3, 16))
    """

    kernels: tuple[int, ...] = (1, 3, 5)
    widths: tuple[int, ...] = (8, 16, 32)
    layers: int = 2

    def __post_init__(self) -> None:
        kernels, widths = tuple(self.kernels), tuple(self.widths)
        if not kernels or not widths:
            raise ValueError(
                f"a search space needs at least one kernel and one width, got {kernels}, {widths}"
            )
        if any(not isinstance(k, int) or k < 1 or k % 2 == 0 for k in kernels):
            raise ValueError(f"kernels must be positive odd ints, got {kernels}")
        if any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be positive ints, got {widths}")
        if list(kernels) != sorted(set(kernels)) or list(widths) != sorted(set(widths)):
            raise ValueError(f"kernels and widths must ascend without repeats: {kernels} {widths}")
        if not isinstance(self.layers, int) or self.layers < 1:
            raise ValueError(f"layers must be a positive int, got {self.layers!r}")
        object.__setattr__(self, "kernels", kernels)
        object.__setattr__(self, "widths", widths)

    @property
    def choices(self) -> tuple[tuple[int, int], ...]:
        """The per-layer candidates ``(kernel, width)``, kernel-major."""
        return tuple(itertools.product(self.kernels, self.widths))

    def __len__(self) -> int:
        return len(self.choices) ** self.layers

    def __iter__(self) -> Iterator[tuple[tuple[int, int], ...]]:
        return iter(itertools.product(self.choices, repeat=self.layers))

    def validate(self, arch: Sequence[Sequence[int]] | str) -> tuple[tuple[int, int], ...]:
        """Return ``arch`` as ``((kernel, width), ...)``, checking it (a string is parsed).

        Returns:
            The layers.

        Raises:
            TypeError: for something that is not a sequence of pairs.
            ValueError: for a wrong number of layers or a kernel/width outside the menus.
        """
        if isinstance(arch, str):
            return self.parse(arch)
        try:
            layers = tuple((int(k), int(w)) for k, w in arch)
        except (TypeError, ValueError):
            raise TypeError(
                f"a macro architecture is ((kernel, width), ...), got {arch!r}"
            ) from None
        if len(layers) != self.layers:
            raise ValueError(
                f"architecture {layers} has {len(layers)} layers, expected {self.layers}"
            )
        for k, w in layers:
            if k not in self.kernels or w not in self.widths:
                raise ValueError(
                    f"layer (kernel {k}, width {w}) not in kernels {self.kernels} x widths "
                    f"{self.widths}"
                )
        return layers

    def parse(self, text: str) -> tuple[tuple[int, int], ...]:
        """Parse ``k3w16-k5w32``.

        Returns:
            The layers.

        Raises:
            TypeError: if ``text`` is not a string.
            ValueError: for a malformed string or values outside the menus.
        """
        if not isinstance(text, str):
            raise TypeError(f"an architecture string must be a str, got {type(text).__name__}")
        layers = []
        for part in text.split("-"):
            match = _MACRO.match(part)
            if match is None:
                raise ValueError(f"layer {part!r} of {text!r} must be written 'k<kernel>w<width>'")
            layers.append((int(match.group(1)), int(match.group(2))))
        return self.validate(layers)

    def to_string(self, arch: Sequence[Sequence[int]] | str) -> str:
        """The ``k3w16-k5w32`` string of ``arch``."""
        return "-".join(f"k{k}w{w}" for k, w in self.validate(arch))
