r"""Per-parameter-name schedules: a merge hyperparameter that varies by tensor or by layer.

Every numeric hyperparameter of a merge (a model's weight, the density, lambda, SLERP's ``t``)
accepts a *schedule*, resolved once per tensor name:

- a number: the same value for every tensor;
- :class:`Rules`: an ordered list of ``(pattern, value)``; the first pattern that matches the
  tensor name wins (``fnmatch`` glob such as ``"*.bias"``, or a regular expression written
  ``"re:<regex>"`` and matched with :func:`re.search`), else ``default``;
- :class:`Gradient`: mergekit's "gradient" (a list of values interpolated linearly over the
  layers): the layer of a tensor is the first integer component of its dotted name (``"3"`` in
  ``"layers.3.mlp.weight"``), layers are ranked in increasing order, and layer ``i`` of ``L`` gets
  the list interpolated at ``i / (L - 1)``; a tensor with no layer index gets ``default`` (the
  first value when ``default`` is ``None``).

In a JSON or YAML recipe: ``0.5``; ``{"rules": [["*.bias", 0.0], ["re:^0\\.", 0.3]],
"default": 1.0}`` (or the bare list of pairs); ``{"gradient": [0.0, 0.5, 1.0]}``.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Gradient",
    "Rules",
    "Schedule",
    "layer_index",
    "parse_schedule",
    "resolve",
    "resolve_all",
]

_INT_PART = re.compile(r"(?:^|\.)(\d+)(?=\.|$)")


def layer_index(name: str) -> int | None:
    """The first integer component of a dotted tensor name, or ``None``.

    Args:
        name: a tensor name such as ``"model.layers.3.mlp.weight"``.

    Returns:
        The integer (``3``), or ``None`` when no component is an integer.

    Example:
        >>> layer_index("model.layers.3.mlp.weight"), layer_index("2.bias"), layer_index("emb")
        (3, 2, None)
    """
    match = _INT_PART.search(name)
    return int(match.group(1)) if match else None


def _check_value(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, got {type(value).__name__} ({value!r})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value}")
    return value


@dataclass(frozen=True)
class Rules:
    r"""First matching ``(pattern, value)`` wins; ``default`` when none matches.

    Args:
        rules: ``(pattern, value)`` pairs: an ``fnmatch`` glob, or ``"re:<regex>"``.
        default: the value for names no pattern matches (``None``: such a name is an error).

    Raises:
        ValueError: for an invalid regular expression or a non-finite value.
        TypeError: for a pattern that is not a string or a value that is not a number.

    Example:
        >>> r = Rules((("*.bias", 0.0), ("re:^0\\.", 0.3)), default=1.0)
        >>> [resolve(r, n) for n in ("0.weight", "0.bias", "2.weight")]
        [0.3, 0.0, 1.0]
    """

    rules: tuple[tuple[str, float], ...]
    default: float | None = None

    def __post_init__(self) -> None:
        clean = []
        for i, pair in enumerate(self.rules):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"rules[{i}] must be a (pattern, value) pair, got {pair!r}")
            pattern, value = pair
            if not isinstance(pattern, str):
                raise TypeError(f"rules[{i}] pattern must be a string, got {pattern!r}")
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as err:
                    raise ValueError(
                        f"rules[{i}] pattern {pattern!r} is not a valid regex: {err}"
                    ) from None
            clean.append((pattern, _check_value(value, f"rules[{i}] value")))
        object.__setattr__(self, "rules", tuple(clean))
        if self.default is not None:
            object.__setattr__(self, "default", _check_value(self.default, "default"))

    def value(self, name: str) -> float:
        """The value for tensor ``name``."""
        for pattern, value in self.rules:
            if pattern.startswith("re:"):
                if re.search(pattern[3:], name):
                    return value
            elif fnmatch.fnmatchcase(name, pattern):
                return value
        if self.default is None:
            raise ValueError(
                f"no schedule rule matches tensor {name!r} and there is no default "
                f"(patterns: {[p for p, _ in self.rules]})"
            )
        return self.default


@dataclass(frozen=True)
class Gradient:
    """mergekit's gradient: ``values`` interpolated linearly from the first to the last layer.

    Args:
        values: at least one value; one value is a constant.
        default: the value for tensors with no layer index (``None``: ``values[0]``).

    Example:
        >>> g = Gradient((0.0, 1.0))
        >>> names = ["0.weight", "2.weight", "4.weight", "head"]
        >>> [resolve(g, n, names) for n in names]
        [0.0, 0.5, 1.0, 0.0]
    """

    values: tuple[float, ...]
    default: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.values, (str, bytes)) or not isinstance(self.values, Sequence):
            raise TypeError(f"gradient values must be a list of numbers, got {self.values!r}")
        if len(self.values) == 0:
            raise ValueError("gradient values must hold at least one number, got []")
        vals = tuple(_check_value(v, f"gradient values[{i}]") for i, v in enumerate(self.values))
        object.__setattr__(self, "values", vals)
        if self.default is not None:
            object.__setattr__(self, "default", _check_value(self.default, "default"))

    def value(self, name: str, names: Sequence[str]) -> float:
        """The value for tensor ``name`` among all tensor ``names`` (which fix the layer count)."""
        return self._value(name, sorted({i for i in map(layer_index, names) if i is not None}))

    def _value(self, name: str, layers: list[int]) -> float:
        index = layer_index(name)
        if index is None:
            return self.values[0] if self.default is None else self.default
        if index not in layers:
            layers = sorted({*layers, index})
        if len(layers) == 1 or len(self.values) == 1:
            return self.values[0]
        position = layers.index(index) / (len(layers) - 1) * (len(self.values) - 1)
        lo = min(math.floor(position), len(self.values) - 2)
        frac = position - lo
        return (1 - frac) * self.values[lo] + frac * self.values[lo + 1]


Schedule = float | int | Rules | Gradient
"""A hyperparameter: a number, :class:`Rules` or :class:`Gradient`."""


def parse_schedule(spec: Any, what: str = "value") -> Schedule:
    """A schedule from its JSON/YAML form (see the module docstring); schedules pass through.

    Args:
        spec: a number, a list of ``[pattern, value]`` pairs, ``{"rules": [...], "default": x}``
            or ``{"gradient": [...], "default": x}``.
        what: how errors name it (e.g. ``"parameters.density"``).

    Returns:
        The schedule.

    Raises:
        TypeError: for any other form.
        ValueError: for a mapping with unknown keys.

    Example:
        >>> parse_schedule({"gradient": [0, 1]})
        Gradient(values=(0.0, 1.0), default=None)
        >>> parse_schedule([["*.bias", 0]], "weight").value("x.bias")
        0.0
    """
    if isinstance(spec, (Rules, Gradient)):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return _check_value(spec, what)
    if isinstance(spec, (list, tuple)):
        return Rules(tuple(tuple(p) if isinstance(p, list) else p for p in spec))
    if isinstance(spec, Mapping):
        keys = set(spec)
        if keys <= {"rules", "default"} and "rules" in keys:
            rules = spec["rules"]
            if not isinstance(rules, (list, tuple)):
                raise TypeError(f"{what}.rules must be a list of [pattern, value], got {rules!r}")
            return Rules(
                tuple(tuple(p) if isinstance(p, list) else p for p in rules), spec.get("default")
            )
        if keys <= {"gradient", "default"} and "gradient" in keys:
            values = spec["gradient"]
            if not isinstance(values, (list, tuple)):
                raise TypeError(f"{what}.gradient must be a list of numbers, got {values!r}")
            return Gradient(tuple(values), spec.get("default"))
        raise ValueError(
            f"{what} must be a number, a list of [pattern, value], "
            f"{{'rules': ..., 'default': ...}} or {{'gradient': [...]}}; got keys {sorted(keys)}"
        )
    raise TypeError(
        f"{what} must be a number or a schedule (rules or gradient), got {type(spec).__name__} "
        f"({spec!r})"
    )


def resolve(schedule: Schedule, name: str, names: Sequence[str] = ()) -> float:
    """The value of ``schedule`` for tensor ``name``.

    Args:
        schedule: a number, :class:`Rules` or :class:`Gradient`.
        name: the tensor name.
        names: all tensor names of the model (needed by :class:`Gradient` for the layer count).

    Returns:
        The value.

    Example:
        >>> resolve(0.3, "any.weight")
        0.3
    """
    if isinstance(schedule, Rules):
        return schedule.value(name)
    if isinstance(schedule, Gradient):
        return schedule.value(name, names or [name])
    return _check_value(schedule, f"value for {name!r}")


def resolve_all(schedule: Schedule, names: Sequence[str]) -> dict[str, float]:
    """The value of ``schedule`` for every tensor of ``names`` (one pass over the names).

    Args:
        schedule: a number, :class:`Rules` or :class:`Gradient`.
        names: all tensor names of the model.

    Returns:
        ``name -> value``.

    Example:
        >>> resolve_all(Gradient((1.0, 3.0)), ["0.w", "1.w", "2.w"])
        {'0.w': 1.0, '1.w': 2.0, '2.w': 3.0}
    """
    if isinstance(schedule, Gradient):
        layers = sorted({i for i in map(layer_index, names) if i is not None})
        return {n: schedule._value(n, layers) for n in names}
    return {n: resolve(schedule, n, names) for n in names}
