"""Save and load steering vectors as safetensors (atomic write, no pickle).

Vectors are plain named tensors plus string metadata (where a vector was read: module name, token
rule, method, layer...), the format the steering-vectors and repeng users asked for to share
vectors (steering-vectors #49/#50, repeng #34).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._io import atomic_write_bytes

__all__ = ["load_vectors", "save_vectors"]


def _safetensors() -> Any:
    """The ``safetensors`` package (with ``safetensors.torch``), or a clear ImportError."""
    try:
        import safetensors
        import safetensors.torch  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "saving and loading steering vectors needs safetensors: "
            'pip install "subspaces[hf]" (or pip install safetensors)'
        ) from exc
    return safetensors


def save_vectors(
    path: str | os.PathLike[str],
    vectors: Mapping[str, Tensor],
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write named steering vectors to a safetensors file, atomically.

    Args:
        path: destination file (parent directories are created).
        vectors: ``{name: tensor}``; tensors are stored contiguous, on CPU, in their dtype.
        metadata: string-convertible values stored in the file header (``str(value)``).

    Raises:
        ValueError: for an empty mapping, an empty name or a non-finite tensor.
        TypeError: for a value that is not a tensor or a name that is not a string.
        ImportError: if ``safetensors`` is not installed (``pip install "subspaces[hf]"``).

    Example:
        >>> import os, tempfile, torch
        >>> p = os.path.join(tempfile.mkdtemp(), "v.safetensors")
        >>> save_vectors(p, {"model.layers.3": torch.arange(3.0)}, {"method": "mean_difference"})
        >>> out = load_vectors(p)
        >>> out["model.layers.3"].tolist(), load_vectors(p, with_metadata=True)[1]
        ([0.0, 1.0, 2.0], {'method': 'mean_difference'})
    """
    save = _safetensors().torch.save

    if not isinstance(vectors, Mapping) or not vectors:
        raise ValueError("vectors must be a non-empty mapping {name: tensor}")
    tensors: dict[str, Tensor] = {}
    for name, value in vectors.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"vector names must be non-empty strings, got {name!r}")
        if not isinstance(value, Tensor):
            raise TypeError(f"vector {name!r} must be a torch.Tensor, got {type(value).__name__}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"vector {name!r} contains NaN or Inf")
        tensors[name] = value.detach().to("cpu").contiguous().clone()
    meta = None if metadata is None else {str(k): str(v) for k, v in metadata.items()}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_vectors(path: str | os.PathLike[str], *, with_metadata: bool = False) -> Any:
    """Read vectors written by :func:`save_vectors` (or any safetensors file).

    Args:
        path: the file.
        with_metadata: also return the header metadata.

    Returns:
        ``{name: tensor}``, or ``({name: tensor}, metadata dict)`` with ``with_metadata``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ImportError: if ``safetensors`` is not installed (``pip install "subspaces[hf]"``).

    Example:
        >>> import os, tempfile, torch
        >>> p = os.path.join(tempfile.mkdtemp(), "v.safetensors")
        >>> save_vectors(p, {"layers.0": torch.ones(2, dtype=torch.float64)}, {"alpha": 4})
        >>> vectors, meta = load_vectors(p, with_metadata=True)
        >>> vectors["layers.0"].dtype, vectors["layers.0"].tolist(), meta
        (torch.float64, [1.0, 1.0], {'alpha': '4'})
    """
    safe_open = _safetensors().safe_open

    if not os.path.exists(path):
        raise FileNotFoundError(f"no steering-vector file at {os.fspath(path)!r}")
    out: dict[str, Tensor] = {}
    with safe_open(os.fspath(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
            out[key] = f.get_tensor(key)
        meta = dict(f.metadata() or {})
    return (out, meta) if with_metadata else out
