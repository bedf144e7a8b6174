"""Atomic file output and strict JSON, for everything the library writes to disk.

A file is written to a temporary file in the same directory, flushed and ``fsync``-ed, then moved
over the target with :func:`os.replace`, so a reader (or a crash) sees either the old file or the
complete new one, never half of it. JSON is always valid (no ``NaN`` or ``Infinity`` tokens),
with sorted keys, and tensors and NumPy values are converted to plain Python values.

Checkpoints that a run resumes from (:func:`write_checkpoint`, :func:`read_checkpoint`) are one
atomically written file: a first line with the container format version and the SHA-256 of the
rest, a JSON header line (what wrote it, its payload version, the identity of the run) and the
``torch.save`` payload. Reading verifies all of it before ``torch.load(..., weights_only=True)``
sees a byte, so a truncated, damaged, foreign or unknown checkpoint is a one-line
:class:`CheckpointError` naming the file, never a silent resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "atomic_write_bytes",
    "atomic_write_text",
    "read_checkpoint",
    "settings_hash",
    "to_jsonable",
    "write_checkpoint",
    "write_json",
]

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


# ----- checksummed checkpoints ----------------------------------------------------------------
CHECKPOINT_FORMAT = 1
"""Version of the checkpoint container (first line, header line, payload) this module writes."""

_MAGIC = b"SUBSPACES-CHECKPOINT"
_HEX = frozenset("0123456789abcdef")


class CheckpointError(ValueError):
    """A checkpoint that must not be resumed from; the message is one line naming the file."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint, as returned by :func:`read_checkpoint`.

    Attributes:
        path: the file it was read from.
        kind: what wrote it (e.g. ``"subspaces.analyze"``).
        version: the writer's payload format version.
        identity: the identity of the run that wrote it (e.g. :func:`settings_hash`).
        payload: the dict given to :func:`write_checkpoint`.
    """

    path: Path
    kind: str
    version: int
    identity: str
    payload: dict[str, Any]


def settings_hash(settings: Mapping[str, Any]) -> str:
    """SHA-256 of a run's settings as canonical JSON: the identity of a run for its checkpoints.

    Key order does not matter; any changed value changes the hash.

    Args:
        settings: the settings (anything :func:`to_jsonable` converts).

    Returns:
        64 lowercase hexadecimal digits.

    Raises:
        TypeError: if ``settings`` is not a mapping, or holds a value with no JSON form.

    Example:
        >>> settings_hash({"lr": 0.1, "seed": 0}) == settings_hash({"seed": 0, "lr": 0.1})
        True
        >>> settings_hash({"lr": 0.1}) == settings_hash({"lr": 0.2})
        False
    """
    if not isinstance(settings, Mapping):
        raise TypeError(f"settings must be a mapping, got {type(settings).__name__}")
    text = json.dumps(to_jsonable(settings), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_checkpoint(
    path: str | os.PathLike[str],
    payload: Mapping[str, Any],
    *,
    kind: str,
    version: int,
    identity: str,
) -> Path:
    """Write a checkpoint with its format version, identity and SHA-256, atomically.

    The file is a line ``SUBSPACES-CHECKPOINT <format> sha256=<hex>``, a one-line JSON header
    (``kind``, ``version``, ``identity``, ``payload_bytes``) and ``torch.save(payload)``; the
    checksum covers everything after the first line. It is written with
    :func:`atomic_write_bytes`, so the checksum and the content can never disagree after a crash.

    Args:
        path: destination file.
        payload: what to save (tensors, numbers, strings, lists and dicts of them, so that it
            loads with ``torch.load(..., weights_only=True)``).
        kind: what writes it, checked on reading (e.g. ``"subspaces.analyze"``).
        version: the writer's payload format version (a positive int), checked on reading.
        identity: the identity of the run (e.g. :func:`settings_hash` of its settings).

    Returns:
        The destination as a :class:`~pathlib.Path`.

    Raises:
        TypeError: if ``payload`` is not a mapping or ``kind``/``identity`` are not strings.
        ValueError: if ``version`` is not a positive int or ``kind`` is empty.

    Example:
        >>> import os, tempfile, torch
        >>> p = os.path.join(tempfile.mkdtemp(), "checkpoint.pt")
        >>> _ = write_checkpoint(p, {"w": torch.ones(2)}, kind="demo", version=1, identity="abc")
        >>> open(p, "rb").read(30)
        b'SUBSPACES-CHECKPOINT 1 sha256='
        >>> read_checkpoint(p, kind="demo", version=1, identity="abc").payload["w"].tolist()
        [1.0, 1.0]
    """
    if not isinstance(payload, Mapping):
        raise TypeError(f"payload must be a mapping (dict), got {type(payload).__name__}")
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind must be a non-empty string, got {kind!r}")
    if not isinstance(identity, str):
        raise TypeError(f"identity must be a string, got {type(identity).__name__}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a positive int, got {version!r}")
    buffer = io.BytesIO()
    torch.save(dict(payload), buffer)
    body = buffer.getvalue()
    header = {"kind": kind, "version": version, "identity": identity, "payload_bytes": len(body)}
    rest = json.dumps(header, sort_keys=True).encode("utf-8") + b"\n" + body
    first = b"%s %d sha256=%s\n" % (
        _MAGIC,
        CHECKPOINT_FORMAT,
        hashlib.sha256(rest).hexdigest().encode(),
    )
    return atomic_write_bytes(path, first + rest)


def read_checkpoint(
    path: str | os.PathLike[str],
    *,
    kind: str,
    version: int,
    identity: str | None = None,
) -> Checkpoint:
    """Read a checkpoint written by :func:`write_checkpoint`, verifying it before loading it.

    Checked in order: the first line (a subspaces checkpoint of a known container format), the
    SHA-256 of the rest (a truncated or damaged file), the header (``kind``, ``version`` and, if
    given, ``identity``); only then is the payload loaded, with ``torch.load(...,
    weights_only=True)``.

    Args:
        path: the checkpoint file.
        kind: the expected writer.
        version: the payload format version this code reads.
        identity: the expected identity of the run; ``None`` accepts any (the caller compares
            :attr:`Checkpoint.identity` itself, e.g. to say which settings differ).

    Returns:
        The verified :class:`Checkpoint`.

    Raises:
        CheckpointError: (a ``ValueError``) with one line naming the file and what is wrong: it
            cannot be read, is not a subspaces checkpoint, has an unknown format version, is
            truncated or damaged, was written by another kind of run, a payload version this
            code does not read, or another run.

    Example:
        >>> import os, tempfile, torch
        >>> p = os.path.join(tempfile.mkdtemp(), "checkpoint.pt")
        >>> _ = write_checkpoint(p, {"step": 3}, kind="demo", version=1, identity="abc")
        >>> data = bytearray(open(p, "rb").read()); data[-1] ^= 1
        >>> _ = open(p, "wb").write(bytes(data))
        >>> try:
        ...     read_checkpoint(p, kind="demo", version=1)
        ... except CheckpointError as err:
        ...     print("damaged" in str(err) and p in str(err))
        True
    """
    where = Path(path)
    try:
        data = where.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {where}: {err.strerror or err}") from None
    return _decode_checkpoint(data, where, kind=kind, version=version, identity=identity)


def _decode_checkpoint(
    data: bytes, where: Path, *, kind: str, version: int, identity: str | None
) -> Checkpoint:
    """The checks of :func:`read_checkpoint` on the file's bytes (``where`` names it)."""
    name = f"checkpoint {where}"
    first, newline, rest = data.partition(b"\n")
    parts = first.split(b" ")
    if not data.startswith(_MAGIC + b" ") or len(parts) != 3:
        what = (
            "a plain torch.save file (from an older subspaces or another program)"
            if data.startswith(b"PK\x03\x04")
            else "damaged, or another kind of file"
        )
        raise CheckpointError(
            f"{name} is not a subspaces checkpoint (no {_MAGIC.decode()} header line): {what}"
        )
    if not parts[1].isdigit():
        raise CheckpointError(f"{name} is damaged: its format version {parts[1]!r} is no number")
    if int(parts[1]) != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{name} has format version {int(parts[1])}; this subspaces reads format version "
            f"{CHECKPOINT_FORMAT} (a newer subspaces wrote it, or it is damaged)"
        )
    digest = parts[2].decode("ascii", errors="replace").removeprefix("sha256=")
    if not (parts[2].startswith(b"sha256=") and len(digest) == 64 and set(digest) <= _HEX):
        raise CheckpointError(f"{name} is damaged: its header line has no valid SHA-256")
    if not newline or hashlib.sha256(rest).hexdigest() != digest:
        raise CheckpointError(f"{name} is {_diagnose(rest)}")
    line, _, body = rest.partition(b"\n")
    try:
        header = json.loads(line)
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise CheckpointError(f"{name} is damaged: its header is not a JSON object")
    if header.get("kind") != kind:
        raise CheckpointError(f"{name} was written by {header.get('kind')!r}, not by {kind!r}")
    if header.get("version") != version:
        raise CheckpointError(
            f"{name} has {kind} format version {header.get('version')!r}; this subspaces reads "
            f"version {version}"
        )
    if identity is not None and header.get("identity") != identity:
        raise CheckpointError(
            f"{name} is from another run (identity {str(header.get('identity'))[:12]}..., "
            f"this run {identity[:12]}...)"
        )
    try:
        payload = torch.load(io.BytesIO(body), weights_only=True, map_location="cpu")
    except Exception as err:  # any unpickling failure is reported the same way
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(
            f"{name} cannot be loaded with torch.load(weights_only=True): {reason[:200]}"
        ) from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{name} holds a {type(payload).__name__}, not a dict")
    return Checkpoint(where, kind, int(header["version"]), str(header.get("identity")), payload)


def _diagnose(rest: bytes) -> str:
    """Say why a checkpoint's checksum does not match: truncated if its header says so."""
    line, newline, body = rest.partition(b"\n")
    try:
        expected = int(json.loads(line)["payload_bytes"]) if newline else None
    except (ValueError, KeyError, TypeError):
        expected = None
    if not newline or (expected is not None and len(body) < expected):
        have = f"{len(body)} of {expected} payload bytes" if expected is not None else "no payload"
        return f"truncated ({have})"
    return "damaged: its SHA-256 checksum does not match its content"
