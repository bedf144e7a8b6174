"""Streamed, by-name access to state_dicts: in-memory mappings, ``nn.Module``s and files.

Every merge in :mod:`subspaces.merging` reads its models through :class:`StateDictSource`, one
tensor at a time, so that merging ``K`` models needs the memory of about three (the output, the
tensors of one parameter from each model, and a few working copies), whatever ``K``:

- an ``nn.Module`` or a ``Mapping[str, Tensor]`` is read in place (no copy);
- a ``.safetensors`` file is opened lazily and each tensor is read when it is asked for;
- any other file (``.pt``, ``.pth``, ``.bin``) is read with ``torch.load(..., weights_only=True,
  mmap=True)``, so tensors are paged in from the file on use (never unpickled arbitrary code).

:func:`check_compatible` compares names, shapes and dtypes across sources before any work
starts, and every error names the tensor and the model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._io import atomic_write_bytes

__all__ = [
    "NonFloat",
    "StateDictLike",
    "StateDictSource",
    "as_source",
    "check_compatible",
    "check_finite_tensor",
    "load_state_dict",
    "save_safetensors",
]

StateDictLike = nn.Module | Mapping[str, Tensor] | str | os.PathLike[str]
"""What the merging functions accept as a model: a module, a mapping of tensors or a file."""

NonFloat = Literal["error", "base"]
"""What to do with non-floating tensors (integer buffers): refuse them, or copy the base's."""

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _safetensors() -> Any:
    try:
        import safetensors
        import safetensors.torch  # noqa: F401
    except ImportError as err:  # pragma: no cover - safetensors is a core dependency
        raise ImportError(
            "reading or writing .safetensors files needs safetensors: pip install safetensors"
        ) from err
    return safetensors


class StateDictSource:
    """One model's tensors by name, read on demand.

    Args:
        obj: an ``nn.Module`` (its ``state_dict()``), a mapping ``name -> Tensor``, or the path of
            a ``.safetensors`` file or a ``torch.save`` file of such a mapping.
        label: how errors name this model (default: the file name, or ``"model"``).

    Raises:
        TypeError: for another kind of object, or a mapping with a non-tensor value.
        ValueError: for a missing or unreadable file, or a file that does not hold a mapping of
            tensors.

    Example:
        >>> import torch
        >>> src = StateDictSource({"w": torch.ones(2, 3)}, label="a")
        >>> src.names(), src.shape("w"), src.get("w").sum().item()
        (['w'], (2, 3), 6.0)
    """

    def __init__(self, obj: StateDictLike, label: str | None = None) -> None:
        self._mapping: Mapping[str, Tensor] | None = None
        self._safe: Any = None
        self.path: Path | None = None
        if isinstance(obj, nn.Module):
            self._mapping = obj.state_dict()
            self.label = label or type(obj).__name__
        elif isinstance(obj, Mapping):
            for key, value in obj.items():
                if not isinstance(key, str):
                    raise TypeError(f"{label or 'model'}: tensor names must be str, got {key!r}")
                if not isinstance(value, Tensor):
                    raise TypeError(
                        f"{label or 'model'}: {key!r} must be a torch.Tensor, got "
                        f"{type(value).__name__}"
                    )
            self._mapping = obj
            self.label = label or "model"
        elif isinstance(obj, (str, os.PathLike)):
            self.path = Path(obj)
            self.label = label or str(self.path)
            self._open_file()
        else:
            raise TypeError(
                f"{label or 'model'} must be an nn.Module, a mapping of tensors or a file path, "
                f"got {type(obj).__name__}"
            )

    def _open_file(self) -> None:
        assert self.path is not None
        if not self.path.is_file():
            raise ValueError(f"{self.label}: no such file {str(self.path)!r}")
        if self.path.suffix == ".safetensors":
            st = _safetensors()
            try:
                self._safe = st.safe_open(str(self.path), framework="pt", device="cpu")
            except Exception as err:  # safetensors raises its own error types
                raise ValueError(f"{self.label}: not a readable safetensors file: {err}") from None
            return
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(
                f"{self.label}: cannot be read with torch.load(weights_only=True): {reason[:200]}"
            ) from None
        if not isinstance(data, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in data.items()
        ):
            raise ValueError(
                f"{self.label}: expected a mapping of tensor names to tensors (a state_dict), "
                f"got {type(data).__name__}"
            )
        self._mapping = data

    def names(self) -> list[str]:
        """The tensor names, in the source's order."""
        if self._mapping is not None:
            return list(self._mapping.keys())
        return list(self._safe.keys())

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor ``name`` (without reading it from a file)."""
        if self._mapping is not None:
            return tuple(self._mapping[name].shape)
        return tuple(self._safe.get_slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype | None:
        """The dtype of tensor ``name`` (``None`` for a file dtype torch does not name here)."""
        if self._mapping is not None:
            return self._mapping[name].dtype
        return _SAFETENSORS_DTYPES.get(self._safe.get_slice(name).get_dtype())

    def get(self, name: str) -> Tensor:
        """Tensor ``name`` (read from the file for a file source; never modify it in place)."""
        if self._mapping is not None:
            return self._mapping[name].detach()
        return self._safe.get_tensor(name)

    def __repr__(self) -> str:
        return f"StateDictSource({self.label!r})"


def as_source(obj: StateDictLike | StateDictSource, label: str) -> StateDictSource:
    """``obj`` as a :class:`StateDictSource` labelled ``label`` (a source is returned as is).

    Args:
        obj: a model, mapping, file path or source.
        label: the name errors use for it.

    Returns:
        The source.
    """
    if isinstance(obj, StateDictSource):
        return obj
    return StateDictSource(obj, label=label)


def check_compatible(
    sources: Sequence[StateDictSource],
    *,
    reference: StateDictSource | None = None,
    non_float: NonFloat = "error",
) -> list[str]:
    """Check that all sources hold the same tensor names with the same shapes; return the names.

    Args:
        sources: the models to merge.
        reference: the model whose names and order the others must match (default: the first).
        non_float: ``"error"`` refuses integer or boolean tensors; ``"base"`` lets them through
            (the merge copies them from the reference).

    Returns:
        The tensor names of ``reference``, in its order.

    Raises:
        ValueError: for an empty list, a name missing from (or extra in) a model, or a shape that
            differs; the message names the tensor and both models.
        TypeError: for a non-floating tensor when ``non_float="error"``.

    Example:
        >>> import torch
        >>> a = StateDictSource({"w": torch.zeros(2)}, label="a")
        >>> b = StateDictSource({"w": torch.zeros(3)}, label="b")
        >>> try:
        ...     check_compatible([a, b])
        ... except ValueError as err:
        ...     print(err)
        tensor 'w' has shape (3,) in b but (2,) in a
    """
    if non_float not in ("error", "base"):
        raise ValueError(f"non_float must be 'error' or 'base', got {non_float!r}")
    if not sources:
        raise ValueError("models must hold at least one model, got an empty list")
    ref = reference if reference is not None else sources[0]
    names = ref.names()
    if not names:
        raise ValueError(f"{ref.label} holds no tensors")
    wanted = set(names)
    shapes = {n: ref.shape(n) for n in names}
    for src in sources:
        if src is ref:
            continue
        have = src.names()
        have_set = set(have)
        missing = [n for n in names if n not in have_set]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ValueError(
                f"tensor {missing[0]!r} of {ref.label} is missing from {src.label}{more}"
            )
        extra = [n for n in have if n not in wanted]
        if extra:
            more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
            raise ValueError(f"tensor {extra[0]!r} of {src.label} is not in {ref.label}{more}")
        for n in names:
            shape = src.shape(n)
            if shape != shapes[n]:
                raise ValueError(
                    f"tensor {n!r} has shape {shape} in {src.label} but {shapes[n]} in {ref.label}"
                )
    if non_float == "error":
        for src in [ref, *[s for s in sources if s is not ref]]:
            for n in names:
                dtype = src.dtype(n)
                if dtype is None or not dtype.is_floating_point:
                    raise TypeError(
                        f"tensor {n!r} of {src.label} has dtype {dtype}, not a floating dtype: "
                        "only floating tensors can be merged (pass non_float='base' to copy "
                        "integer buffers from the base model)"
                    )
    return names


def check_finite_tensor(x: Tensor, name: str, label: str) -> None:
    """Raise ``ValueError`` naming tensor ``name`` of model ``label`` if ``x`` holds NaN or Inf.

    Args:
        x: the tensor.
        name: its name in the state_dict.
        label: the model it comes from.

    Raises:
        ValueError: naming the tensor, the model, the count and the first bad value and index.
    """
    if not x.is_floating_point() or x.numel() == 0:
        return
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return
    bad = (~finite).nonzero()
    first = tuple(int(i) for i in bad[0])
    value = float(x[first]) if first else float(x)
    raise ValueError(
        f"tensor {name!r} of {label} contains {bad.shape[0]} non-finite value(s): "
        f"{value} at index {first}"
    )


def load_state_dict(obj: StateDictLike) -> dict[str, Tensor]:
    """Read a whole model into a ``dict`` of tensors (copies of file contents, views of modules).

    Args:
        obj: a module, mapping or file (see :class:`StateDictSource`).

    Returns:
        ``name -> Tensor``.

    Example:
        >>> import torch
        >>> sorted(load_state_dict(torch.nn.Linear(2, 3)))
        ['bias', 'weight']
    """
    src = as_source(obj, "model")
    return {n: src.get(n) for n in src.names()}


def iter_tensors(src: StateDictSource, names: Sequence[str]) -> Iterator[tuple[str, Tensor]]:
    """``(name, tensor)`` for each of ``names``, read one at a time."""
    for n in names:
        yield n, src.get(n)


def save_safetensors(
    state: Mapping[str, Tensor],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``state`` to a ``.safetensors`` file atomically (a crash leaves no partial file).

    Args:
        state: ``name -> Tensor`` (made contiguous on CPU for writing; the caller's tensors are
            not modified).
        path: the destination.
        metadata: optional string metadata stored in the file header.

    Returns:
        The destination as a :class:`~pathlib.Path`.

    Raises:
        TypeError: if a value is not a tensor.

    Example:
        >>> import os, tempfile, torch
        >>> p = save_safetensors({"w": torch.arange(3.0)}, os.path.join(tempfile.mkdtemp(), "m.safetensors"))
        >>> load_state_dict(p)["w"].tolist()
        [0.0, 1.0, 2.0]
    """  # noqa: E501
    st = _safetensors()
    tensors: dict[str, Tensor] = {}
    for name, value in state.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"tensor {name!r} must be a torch.Tensor, got {type(value).__name__}")
        tensors[name] = value.detach().to("cpu").contiguous()
    data = st.torch.save(tensors, metadata=dict(metadata) if metadata else None)
    del tensors
    return atomic_write_bytes(path, data)
