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

from subspaces._io import atomic_write_bytes, atomic_write_text, to_jsonable, write_json


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
