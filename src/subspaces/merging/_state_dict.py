"""Streamed, by-name access to state_dicts: in-memory mappings, ``nn.Module``s and files.

Every merge in :mod:`subspaces.merging` reads its models through :class:`StateDictSource`, one
tensor at a time, so that merging ``K`` models needs the memory of about three (the output, the
tensors of one parameter from each model, and a few working copies), whatever ``K``:

- an ``nn.Module`` or a ``Mapping[str, Tensor]`` is read in place (no copy);
- a ``.safetensors`` file is read by its header, and each tensor with one ``read`` when it is
  asked for (no memory map, so the pages of the models already merged are not kept);
- any other file (``.pt``, ``.pth``, ``.bin``) is read with ``torch.load(..., weights_only=True,
  mmap=True)``, so tensors are paged in from the file on use (never unpickled arbitrary code).

:func:`check_compatible` compares names, shapes and dtypes across sources before any work
starts, and every error names the tensor and the model.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._io import _current_umask

__all__ = [
    "NonFloat",
    "SafetensorsReader",
    "SafetensorsWriter",
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

_HEADER_LIMIT = 100_000_000  # the safetensors format's own limit on the JSON header size

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
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_DTYPE_CODES = {v: k for k, v in _SAFETENSORS_DTYPES.items()}


class SafetensorsReader:
    """Tensors of a ``.safetensors`` file by name, each read from disk when asked for.

    The JSON header is parsed once (names, dtypes, shapes, byte ranges, checked against the file
    size); :meth:`get` reads one tensor with one ``readinto`` into fresh memory. Nothing is
    memory-mapped, so reading many large files one tensor at a time keeps the resident memory at
    the tensors in use.

    Args:
        path: the file.
        label: how errors name it.

    Raises:
        ValueError: for a file that is not a valid safetensors file (naming the file and why).
    """

    def __init__(self, path: str | os.PathLike[str], label: str | None = None) -> None:
        self.path = Path(path)
        self.label = label or str(self.path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else -1
                if not 0 < n <= min(_HEADER_LIMIT, size - 8):
                    raise ValueError("its first 8 bytes are not a valid header length")
                header = json.loads(f.read(n))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as err:
            raise ValueError(f"{self.label}: not a readable safetensors file: {err}") from None
        if not isinstance(header, dict):
            raise ValueError(f"{self.label}: not a readable safetensors file: header is no object")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._start = 8 + n
        self._entries: dict[str, tuple[torch.dtype | None, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            try:
                code, shape, (lo, hi) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            except (TypeError, KeyError, ValueError):
                raise ValueError(f"{self.label}: tensor {name!r} has a malformed header") from None
            dtype = _SAFETENSORS_DTYPES.get(code)
            if not 0 <= lo <= hi or self._start + hi > size:
                raise ValueError(
                    f"{self.label}: tensor {name!r} lies outside the file (truncated file?)"
                )
            if dtype is not None:
                numel = math.prod(shape)
                if (hi - lo) != numel * torch.empty((), dtype=dtype).element_size():
                    raise ValueError(
                        f"{self.label}: tensor {name!r} has {hi - lo} bytes for shape {shape} "
                        f"of {code}"
                    )
            self._entries[name] = (dtype, shape, lo, hi)

    def names(self) -> list[str]:
        """Tensor names in the order of their data in the file."""
        return sorted(self._entries, key=lambda k: self._entries[k][2])

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor ``name``."""
        return self._entries[name][1]

    def dtype(self, name: str) -> torch.dtype | None:
        """The dtype of tensor ``name`` (``None`` for a dtype torch does not have)."""
        return self._entries[name][0]

    def get(self, name: str) -> Tensor:
        """Read tensor ``name`` from the file.

        Returns:
            A new tensor (owning its memory).

        Raises:
            TypeError: for a dtype torch does not have.
            ValueError: if the file is shorter than its header says.
        """
        dtype, shape, lo, hi = self._entries[name]
        if dtype is None:
            raise TypeError(f"tensor {name!r} of {self.label} has a dtype torch cannot read")
        if hi == lo:
            return torch.empty(shape, dtype=dtype)
        buffer = bytearray(hi - lo)
        with open(self.path, "rb") as f:
            f.seek(self._start + lo)
            got = f.readinto(buffer)
        if got != hi - lo:
            raise ValueError(
                f"{self.label}: tensor {name!r} is truncated ({got} of {hi - lo} bytes)"
            )
        return torch.frombuffer(buffer, dtype=dtype).reshape(shape)


def _anonymous_file(directory: Path) -> int | None:
    """A writable file in ``directory`` with no name (Linux ``O_TMPFILE``), or ``None``.

    A process killed while writing it leaves nothing behind: the file only gets a name (and is
    renamed over the target) when it is complete.

    Returns:
        The open file descriptor, or ``None`` where anonymous files are not supported.
    """
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(directory, flag | os.O_WRONLY, 0o600)
    except OSError:
        return None


class SafetensorsWriter:
    """Write a ``.safetensors`` file tensor by tensor, atomically.

    The header (names, dtypes, shapes, offsets) is written first from the declared layout; each
    :meth:`write` appends one tensor's bytes, in the declared order; :meth:`commit` syncs the
    temporary file and renames it over ``path``. The temporary file is anonymous where the system
    allows it (Linux ``O_TMPFILE``), so a process killed mid-way (even by ``kill -9``) leaves no
    file at all; elsewhere it is a hidden ``.NAME.*.tmp`` next to ``path`` that a killed process
    leaves behind. Closed without a commit (an exception, ``close()``), the temporary file is
    removed. ``path`` itself is never partial.

    Args:
        path: the destination.
        layout: ``(name, dtype, shape)`` of every tensor, in the order they will be written.
        metadata: string metadata for the header.

    Raises:
        TypeError: for a dtype safetensors cannot store.

    Example:
        >>> import os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "m.safetensors")
        >>> with SafetensorsWriter(p, [("w", torch.float32, (2,))]) as w:
        ...     w.write("w", torch.tensor([1.0, 2.0]))
        ...     _ = w.commit()
        >>> SafetensorsReader(p).get("w").tolist()
        [1.0, 2.0]
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        layout: Sequence[tuple[str, torch.dtype, tuple[int, ...]]],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        header: dict[str, Any] = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        self._order: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
        offset = 0
        for name, dtype, shape in layout:
            if dtype not in _DTYPE_CODES:
                raise TypeError(f"tensor {name!r}: safetensors cannot store dtype {dtype}")
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            header[name] = {
                "dtype": _DTYPE_CODES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
            self._order.append((name, dtype, tuple(shape)))
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % 8)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp: str | None = None
        fd = _anonymous_file(self.path.parent)
        if fd is None:  # no O_TMPFILE here: a named hidden temporary file
            fd, self._tmp = tempfile.mkstemp(
                dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
            )
        self._file: Any = os.fdopen(fd, "wb")
        self._file.write(len(text).to_bytes(8, "little") + text)
        self._next = 0
        self._done = False

    def write(self, name: str, tensor: Tensor) -> None:
        """Append tensor ``name`` (the next one of the layout; its dtype and shape must match).

        Raises:
            ValueError: for a tensor out of order or of another dtype or shape.
        """
        if self._next >= len(self._order):
            raise ValueError(f"tensor {name!r} is not in the declared layout (all written)")
        want, dtype, shape = self._order[self._next]
        if name != want or tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise ValueError(
                f"expected tensor {want!r} ({dtype}, {shape}) next, got {name!r} "
                f"({tensor.dtype}, {tuple(tensor.shape)})"
            )
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        if data.numel():
            raw: Any = data.view(torch.uint8).numpy()  # written from the tensor's memory
            self._file.write(raw)
        self._next += 1

    def commit(self) -> Path:
        """Finish the file and move it over ``path``.

        Returns:
            ``path``.

        Raises:
            ValueError: if some declared tensors were not written.
            OSError: if the file cannot be written or renamed.
        """
        if self._next != len(self._order):
            missing = self._order[self._next][0]
            raise ValueError(f"tensor {missing!r} was declared but not written")
        self._file.flush()
        os.fsync(self._file.fileno())
        mode = 0o666 & ~_current_umask()
        if self._tmp is None:  # give the anonymous file a name, then move it over the target
            os.fchmod(self._file.fileno(), mode)
            for _ in range(100):  # a fresh name; another process may take one in between
                name = tempfile.mktemp(
                    dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
                )
                proc = os.open("/proc/self/fd", os.O_RDONLY)
                try:  # linkat(AT_SYMLINK_FOLLOW): the documented way to name an O_TMPFILE file
                    os.link(str(self._file.fileno()), name, src_dir_fd=proc, follow_symlinks=True)
                except FileExistsError:
                    continue
                finally:
                    os.close(proc)
                self._tmp = name
                break
            self._file.close()
            if self._tmp is None:
                raise OSError(f"could not name the temporary file for {self.path}")
        else:
            self._file.close()
            os.chmod(self._tmp, mode)
        os.replace(self._tmp, self.path)
        self._done = True
        return self.path

    def close(self) -> None:
        """Abandon an uncommitted file (remove the temporary file). Idempotent."""
        if not self._done:
            with contextlib.suppress(Exception):
                self._file.close()
            if self._tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._tmp)
            self._done = True

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
            self._safe = SafetensorsReader(self.path, self.label)
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
        return self._safe.names()

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor ``name`` (without reading it from a file)."""
        if self._mapping is not None:
            return tuple(self._mapping[name].shape)
        return self._safe.shape(name)

    def dtype(self, name: str) -> torch.dtype | None:
        """The dtype of tensor ``name`` (``None`` for a file dtype torch does not name here)."""
        if self._mapping is not None:
            return self._mapping[name].dtype
        return self._safe.dtype(name)

    def get(self, name: str) -> Tensor:
        """Tensor ``name`` (read from the file for a file source; never modify it in place)."""
        if self._mapping is not None:
            return self._mapping[name].detach()
        return self._safe.get(name)

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
    items = list(state.items())
    for name, value in items:
        if not isinstance(value, Tensor):
            raise TypeError(f"tensor {name!r} must be a torch.Tensor, got {type(value).__name__}")
    layout = [(n, v.dtype, tuple(v.shape)) for n, v in items]
    with SafetensorsWriter(path, layout, metadata) as writer:
        for name, value in items:
            writer.write(name, value)
        return writer.commit()
