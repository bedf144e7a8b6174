"""Atomic file output and strict JSON, for everything the library writes to disk.

A file is written to a temporary file in the same directory, flushed and ``fsync``-ed, then moved
over the target with :func:`os.replace`, so a reader (or a crash) sees either the old file or the
complete new one, never half of it. JSON is always valid (no ``NaN`` or ``Infinity`` tokens),
with sorted keys, and tensors and NumPy values are converted to plain Python values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["atomic_write_bytes", "atomic_write_text", "to_jsonable", "write_json"]

_NONFINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _current_umask() -> int:
    """Return the process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, creating missing parent directories.

    The bytes go to a hidden temporary file next to ``path``, which is flushed, synced to disk
    and renamed over ``path``. If anything fails the temporary file is removed and ``path`` keeps
    its old content. A new file gets the usual permissions (``0o666`` minus the umask); an
    existing file keeps its own.

    Args:
        path: destination file.
        data: the complete new content.

    Returns:
        The destination as a :class:`~pathlib.Path`.

    Raises:
        TypeError: if ``data`` is not bytes-like.

    Example:
        >>> import os, tempfile
        >>> d = tempfile.mkdtemp()
        >>> p = atomic_write_bytes(os.path.join(d, "sub", "x.bin"), bytes([0, 1, 255]))
        >>> list(p.read_bytes()), os.listdir(p.parent) == ["x.bin"]
        ([0, 1, 255], True)
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_current_umask()
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(target.parent)
    return target


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: not every platform allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`).

    Args:
        path: destination file.
        text: the complete new content.
        encoding: text encoding.

    Returns:
        The destination as a :class:`~pathlib.Path`.

    Raises:
        TypeError: if ``text`` is not a string.

    Example:
        >>> import os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "note.txt")
        >>> _ = atomic_write_text(p, "first")
        >>> _ = atomic_write_text(p, "second")
        >>> open(p).read()
        'second'
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return atomic_write_bytes(path, text.encode(encoding))


def to_jsonable(obj: Any) -> Any:
    """Convert ``obj`` to plain JSON values.

    Tensors and NumPy arrays become (nested) lists or scalars, NumPy and tensor scalars become
    Python numbers, non-finite floats become the strings ``"NaN"``, ``"Infinity"`` and
    ``"-Infinity"``, tuples and sets become lists (sets sorted), dataclasses become dicts, enums
    their values, paths strings, and mapping keys strings.

    Args:
        obj: the value to convert.

    Returns:
        A value made only of dicts, lists, strings, finite floats, ints, bools and ``None``.

    Raises:
        TypeError: for a value with no JSON form, naming its type.

    Example:
        >>> import torch
        >>> to_jsonable({"a": torch.tensor([1.5, float("nan")]), 2: (np.int64(3), float("inf"))})
        {'a': [1.5, 'NaN'], '2': [3, 'Infinity']}
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isnan(obj):
            return "NaN"
        return _NONFINITE.get(obj, float(obj))
    if isinstance(obj, torch.Tensor):
        value = obj.detach().cpu()
        return to_jsonable(value.item() if value.ndim == 0 else value.tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        return sorted((to_jsonable(v) for v in obj), key=repr)
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bytes, bytearray)):
        raise TypeError("bytes have no JSON form; write them to a file and store its name")
    raise TypeError(f"cannot convert a {type(obj).__name__} to JSON: {obj!r:.80}")


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as strict JSON (sorted keys, converted by :func:`to_jsonable`) atomically.

    Args:
        path: destination file.
        obj: the value to write.
        indent: JSON indentation (``None`` for one line).

    Returns:
        The destination as a :class:`~pathlib.Path`.

    Example:
        >>> import json, os, tempfile
        >>> p = write_json(os.path.join(tempfile.mkdtemp(), "r.json"), {"b": float("nan"), "a": 1})
        >>> p.read_text().split()
        ['{', '"a":', '1,', '"b":', '"NaN"', '}']
        >>> json.loads(p.read_text())["b"]
        'NaN'
    """
    text = json.dumps(to_jsonable(obj), sort_keys=True, indent=indent, allow_nan=False)
    return atomic_write_text(path, text + "\n")
