"""Steering vectors round-trip through safetensors, atomically, with metadata."""

from __future__ import annotations

import os

import pytest
import torch

from subspaces.steering import MeanDifference, load_vectors, save_vectors


def test_round_trip_keeps_values_dtypes_and_metadata(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    md = MeanDifference().fit(torch.randn(8, 5, generator=g) + 1, torch.randn(8, 5, generator=g))
    vectors = {
        "model.layers.3": md.vector(),
        "model.layers.4": torch.randn(5, generator=g, dtype=torch.float64),
        "basis": torch.randn(5, 2, generator=g).T,  # non-contiguous is fine
    }
    path = tmp_path / "sub" / "vectors.safetensors"
    save_vectors(path, vectors, {"method": "mean_difference", "token": "last", "alpha": 1.0})
    loaded, meta = load_vectors(path, with_metadata=True)
    assert set(loaded) == set(vectors)
    for k, v in vectors.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v)
    assert meta == {"method": "mean_difference", "token": "last", "alpha": "1.0"}
    assert os.listdir(path.parent) == ["vectors.safetensors"]  # no temporary file left
    # safetensors holds no code: the file is a JSON header plus raw bytes
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert path.read_bytes()[8 : 8 + header_len].startswith(b"{")


def test_overwrite_is_atomic_and_errors_are_clear(tmp_path) -> None:
    path = tmp_path / "v.safetensors"
    save_vectors(path, {"a": torch.ones(3)})
    with pytest.raises(ValueError, match="NaN"):
        save_vectors(path, {"a": torch.tensor([1.0, float("nan")])})
    assert torch.equal(load_vectors(path)["a"], torch.ones(3))  # old content kept
    with pytest.raises(ValueError, match="non-empty mapping"):
        save_vectors(path, {})
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor"):
        save_vectors(path, {"a": [1.0, 2.0]})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="non-empty strings"):
        save_vectors(path, {"": torch.ones(1)})
    with pytest.raises(FileNotFoundError, match="no steering-vector file"):
        load_vectors(tmp_path / "missing.safetensors")
