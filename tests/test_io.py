"""Atomic writes and strict JSON (subspaces._io)."""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from subspaces import _io
from subspaces._io import (
    CheckpointError,
    atomic_write_bytes,
    atomic_write_text,
    read_checkpoint,
    settings_hash,
    to_jsonable,
    write_checkpoint,
    write_json,
)


def _strict_loads(text: str):
    def reject(token: str):
        raise AssertionError(f"invalid JSON constant {token}")

    return json.loads(text, parse_constant=reject)


def test_roundtrip_creates_parents_and_leaves_no_temporary_files(tmp_path: Path):
    target = tmp_path / "a" / "b" / "out.txt"
    assert atomic_write_text(target, "héllo\n") == target
    assert target.read_text(encoding="utf-8") == "héllo\n"
    atomic_write_bytes(target, b"\x00\xff")
    assert target.read_bytes() == b"\x00\xff"
    assert os.listdir(target.parent) == ["out.txt"]


@pytest.mark.parametrize("failing", ["os.replace", "os.fsync"])
def test_failed_write_keeps_old_content_and_removes_temporary(tmp_path, monkeypatch, failing):
    target = tmp_path / "result.json"
    write_json(target, {"version": 1})
    before = target.read_text()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    name = failing.split(".")[1]
    monkeypatch.setattr(os, name, boom)
    with pytest.raises(OSError, match="disk full"):
        write_json(target, {"version": 2, "big": list(range(10_000))})
    monkeypatch.undo()
    assert target.read_text() == before
    assert os.listdir(tmp_path) == ["result.json"]


def test_interrupted_serialization_never_touches_the_file(tmp_path):
    target = tmp_path / "r.json"
    write_json(target, {"ok": True})
    with pytest.raises(TypeError, match="object"):
        write_json(target, {"ok": object()})
    assert _strict_loads(target.read_text()) == {"ok": True}
    assert os.listdir(tmp_path) == ["r.json"]


def test_new_file_permissions_follow_umask_and_existing_mode_is_kept(tmp_path):
    old = os.umask(0o022)
    try:
        target = atomic_write_text(tmp_path / "new.txt", "x")
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
        target.chmod(0o600)
        atomic_write_text(target, "y")
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_type_errors_name_the_type(tmp_path):
    with pytest.raises(TypeError, match="str"):
        atomic_write_bytes(tmp_path / "x", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bytes"):
        atomic_write_text(tmp_path / "x", b"not text")  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


class Color:
    pass


@dataclass
class Point:
    x: float
    y: torch.Tensor


def test_write_json_is_strict_sorted_and_converts_values(tmp_path):
    obj = {
        "z": float("nan"),
        "a": [float("inf"), -math.inf, 1.5],
        "tensor": torch.tensor([[1.0, 2.0]], dtype=torch.float64),
        "scalar": torch.tensor(3),
        "flag": torch.tensor(True),
        "np": np.arange(3),
        "np_scalar": np.float32(0.5),
        "np_bool": np.bool_(True),
        "tuple": (1, "two"),
        "set": {3, 1, 2},
        "path": Path("a/b"),
        "point": Point(1.0, torch.tensor(float("nan"))),
        7: "int key",
    }
    text = write_json(tmp_path / "r.json", obj).read_text()
    data = _strict_loads(text)
    assert list(data) == sorted(data)
    assert data["z"] == "NaN"
    assert data["a"] == ["Infinity", "-Infinity", 1.5]
    assert data["tensor"] == [[1.0, 2.0]]
    assert data["scalar"] == 3 and data["flag"] is True
    assert data["np"] == [0, 1, 2] and data["np_scalar"] == 0.5 and data["np_bool"] is True
    assert data["tuple"] == [1, "two"] and data["set"] == [1, 2, 3]
    assert data["path"] == os.path.join("a", "b")
    assert data["point"] == {"x": 1.0, "y": "NaN"}
    assert data["7"] == "int key"


def test_to_jsonable_rejects_unknown_objects_and_bytes():
    with pytest.raises(TypeError, match="Color"):
        to_jsonable({"c": Color()})
    with pytest.raises(TypeError, match="bytes"):
        to_jsonable(b"png")


# ----- checksummed checkpoints -----------------------------------------------------------------
def _small_checkpoint(path: Path) -> dict:
    payload = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "step": 7, "name": "run"}
    write_checkpoint(path, payload, kind="test.run", version=3, identity=settings_hash({"a": 1}))
    return payload


def _assert_one_line_naming(err: BaseException, path: Path, *words: str) -> None:
    message = str(err)
    assert "\n" not in message, message
    assert str(path) in message, message
    for word in words:
        assert word in message, message


def test_checkpoint_roundtrip_keeps_payload_and_identity(tmp_path: Path):
    path = tmp_path / "run" / "checkpoint.pt"
    payload = _small_checkpoint(path)
    assert os.listdir(path.parent) == ["checkpoint.pt"]
    loaded = read_checkpoint(path, kind="test.run", version=3, identity=settings_hash({"a": 1}))
    assert loaded.identity == settings_hash({"a": 1}) and loaded.version == 3
    assert torch.equal(loaded.payload["w"], payload["w"])
    assert loaded.payload["step"] == 7 and loaded.payload["name"] == "run"
    # the identity of settings is independent of key order and changes with any value
    assert settings_hash({"a": 1, "b": [1.5]}) == settings_hash({"b": [1.5], "a": 1})
    assert settings_hash({"a": 1, "b": [1.5]}) != settings_hash({"a": 1, "b": [1.25]})


def test_every_single_bit_flip_and_every_truncation_is_refused(tmp_path: Path):
    path = tmp_path / "checkpoint.pt"
    _small_checkpoint(path)
    good = path.read_bytes()
    identity = settings_hash({"a": 1})
    decode = _io._decode_checkpoint  # read_checkpoint's checks, without file I/O
    flips = [(i, bit) for i in range(len(good)) for bit in range(8)]
    for position, bit in flips:
        damaged = bytearray(good)
        damaged[position] ^= 1 << bit
        with pytest.raises(CheckpointError) as info:
            decode(bytes(damaged), path, kind="test.run", version=3, identity=identity)
        _assert_one_line_naming(info.value, path)
    for length in range(len(good)):
        with pytest.raises(CheckpointError) as info:
            decode(good[:length], path, kind="test.run", version=3, identity=identity)
        _assert_one_line_naming(info.value, path)
    # the same checks run on the file
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path, kind="test.run", version=3)
    _assert_one_line_naming(info.value, path, "damaged")
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path, kind="test.run", version=3)
    _assert_one_line_naming(info.value, path, "truncated")


def test_foreign_and_unknown_version_checkpoints_are_refused(tmp_path: Path):
    path = tmp_path / "checkpoint.pt"
    _small_checkpoint(path)
    cases = [
        ({"kind": "other.run", "version": 3}, "test.run"),
        ({"kind": "test.run", "version": 4}, "version 3"),
        ({"kind": "test.run", "version": 3, "identity": settings_hash({"a": 2})}, "another run"),
    ]
    for kwargs, word in cases:
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(path, **kwargs)
        _assert_one_line_naming(info.value, path, word)
    # a plain torch.save file (an older subspaces, or another program)
    torch.save({"model": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path, kind="test.run", version=3)
    _assert_one_line_naming(info.value, path, "not a subspaces checkpoint")
    # a container format this version does not know (header rewritten, checksum recomputed)
    _small_checkpoint(path)
    first, rest = path.read_bytes().split(b"\n", 1)
    path.write_bytes(first.replace(b"CHECKPOINT 1 ", b"CHECKPOINT 9 ") + b"\n" + rest)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path, kind="test.run", version=3)
    _assert_one_line_naming(info.value, path, "format version 9")
    path.unlink()
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path, kind="test.run", version=3)
    _assert_one_line_naming(info.value, path, "cannot read")


def test_checkpoint_loading_stays_weights_only(tmp_path: Path):
    path = tmp_path / "checkpoint.pt"
    write_checkpoint(path, {"obj": Color()}, kind="test.run", version=1, identity="x")
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path, kind="test.run", version=1, identity="x")
    _assert_one_line_naming(info.value, path, "weights_only")


def test_checkpoint_arguments_are_checked(tmp_path: Path):
    with pytest.raises(TypeError, match="payload"):
        write_checkpoint(tmp_path / "c.pt", [1, 2], kind="k", version=1, identity="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="version"):
        write_checkpoint(tmp_path / "c.pt", {}, kind="k", version=0, identity="x")
    assert not (tmp_path / "c.pt").exists()
