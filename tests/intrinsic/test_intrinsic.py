"""Tests of subspaces.intrinsic: projections, subspace training, the d_int90 search, export."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from subspaces.intrinsic import (
    DenseProjection,
    FastfoodProjection,
    IdentityProjection,
    SparseProjection,
    d_int90_search,
    evaluate,
    export_compressed,
    fwht,
    load_compressed,
    make_projection,
    train_in_subspace,
)


def _data(
    n: int = 96, dim: int = 6, classes: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, dim, generator=g, dtype=torch.float64)
    W = torch.randn(dim, classes, generator=g, dtype=torch.float64)
    return X, (X @ W).argmax(dim=1)


def _model(seed: int = 0, width: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, width), nn.Tanh(), nn.Linear(width, 3)).double()


def test_fwht_matches_hadamard() -> None:
    H = fwht(torch.eye(8, dtype=torch.float64))
    assert torch.equal(H, H.T)
    assert torch.allclose(H @ H, 8 * torch.eye(8, dtype=torch.float64))
    assert set(H.unique().tolist()) == {-1.0, 1.0}
    with pytest.raises(ValueError, match="power of two"):
        fwht(torch.ones(6))


def test_dense_columns_exactly_unit_and_memory() -> None:
    P = DenseProjection(20, 500, seed=3, dtype=torch.float64)
    M = P.to_dense()
    assert torch.allclose(M.norm(dim=0), torch.ones(20, dtype=torch.float64), atol=1e-12)
    assert P.memory_bytes == 20 * 500 * 8
    assert torch.equal(M, DenseProjection(20, 500, seed=3, dtype=torch.float64).to_dense())


def test_sparse_columns_exactly_unit_and_sparse() -> None:
    D, d = 10_000, 30
    P = SparseProjection(d, D, seed=1, dtype=torch.float64)
    M = P.to_dense()
    assert torch.allclose(M.norm(dim=0), torch.ones(d, dtype=torch.float64), atol=1e-12)
    # about sqrt(D) = 100 nonzeros per column
    assert 0.8 * d * 100 < P.nnz < 1.2 * d * 100
    assert P.memory_bytes == P.nnz * (16 + 8)
    z = torch.randn(d, 4, dtype=torch.float64)
    assert torch.allclose(P(z), M @ z)


@pytest.mark.parametrize("d,D", [(5, 64), (3, 37), (100, 5000)])
def test_fastfood_equals_its_dense_factors(d: int, D: int) -> None:
    P = FastfoodProjection(d, D, seed=2, dtype=torch.float64)
    assert torch.allclose(P.to_dense(), P.dense_factors(), atol=1e-12)
    z = torch.randn(d, dtype=torch.float64)
    assert torch.allclose(P(z), P.dense_factors() @ z, atol=1e-12)


def test_fastfood_norms_exact_when_blocks_divide_and_in_expectation_otherwise() -> None:
    P = FastfoodProjection(7, 8 * 50, seed=0, dtype=torch.float64)  # n = 8 divides D
    ones = torch.ones(7, dtype=torch.float64)
    assert torch.allclose(P.to_dense().norm(dim=0), ones, atol=1e-12)
    # D = 1000, n = 64: 15 full blocks + 40 rows; squared norms average to 1 within 5 %
    Q = FastfoodProjection(50, 1000, seed=0, dtype=torch.float64)
    sq = Q.to_dense().pow(2).sum(dim=0)
    assert abs(float(sq.mean()) - 1) < 0.05
    assert float((sq - 1).abs().max()) <= 40 / 1000 * 3


def test_fastfood_memory_is_linear_in_D() -> None:
    small = FastfoodProjection(100, 10_000).memory_bytes
    big = FastfoodProjection(100, 100_000).memory_bytes
    assert 9 < big / small < 11
    assert big < 100_000 * 32  # O(D), versus 100 * 100_000 * 4 bytes dense


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        DenseProjection(11, 10)
    with pytest.raises(ValueError, match=">= 1"):
        make_projection("dense", 0, 10)
    with pytest.raises(ValueError, match="projection must be one of"):
        make_projection("gaussian", 2, 10)
    X, y = _data()
    with pytest.raises(ValueError, match=">= 1"):
        train_in_subspace(_model(), nn.functional.cross_entropy, (X, y), 0)
    with pytest.raises(ValueError, match="exceeds"):
        train_in_subspace(_model(), nn.functional.cross_entropy, (X, y), 10_000)
    Xn = X.clone()
    Xn[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        train_in_subspace(_model(), nn.functional.cross_entropy, (Xn, y), 5)
    with pytest.raises(ValueError, match="lr"):
        train_in_subspace(_model(), nn.functional.cross_entropy, (X, y), 5, lr=math.nan)
    with pytest.raises(ValueError, match="non-empty"):
        d_int90_search(_model, (X, y), [])


# --- regressions found by the property tests (tests/properties/test_props_intrinsic.py) ---------


def test_fwht_input_errors_are_named() -> None:
    """A list gave AttributeError and a 0-d tensor IndexError."""
    with pytest.raises(TypeError, match="x"):
        fwht([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="x"):
        fwht(torch.tensor(1.0))


@pytest.mark.parametrize("cls", [DenseProjection, SparseProjection, FastfoodProjection])
def test_projection_dtypes_are_checked(cls) -> None:
    """z of another dtype gave torch's RuntimeError (dense, sparse) or a silently promoted
    float64 result (Fastfood); an integer projection dtype was accepted until its first use."""
    P = cls(2, 8, seed=0)
    with pytest.raises(TypeError, match="dtype"):
        P(torch.ones(2, dtype=torch.float64))
    with pytest.raises(TypeError, match="dtype"):
        cls(2, 8, seed=0, dtype=torch.int64)


def test_sparse_density_type_named() -> None:
    with pytest.raises(TypeError, match="density"):
        SparseProjection(2, 8, density="dense")  # type: ignore[arg-type]


def test_ready_projection_of_another_dtype_is_named() -> None:
    model = _model()
    D = sum(p.numel() for p in model.parameters())
    P = DenseProjection(3, D, seed=0)  # float32, the model is float64
    with pytest.raises(TypeError, match="projection has dtype"):
        train_in_subspace(model, nn.functional.cross_entropy, _data(), 3, projection=P, epochs=1)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_identity_subspace_equals_ordinary_training(optimizer: str) -> None:
    X, y = _data()
    model = _model()
    D = sum(p.numel() for p in model.parameters())
    res = train_in_subspace(
        model,
        nn.functional.cross_entropy,
        (X, y),
        D,
        projection=IdentityProjection(D, dtype=torch.float64),
        seed=5,
        epochs=3,
        lr=0.05,
        batch_size=16,
        optimizer=optimizer,
    )
    # the reference: ordinary training, same optimizer, same minibatches
    ref = _model()
    params = list(ref.parameters())
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(params, lr=0.05)
    gen = torch.Generator().manual_seed(5 + 1)
    for _ in range(3):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 16):
            idx = order[i : i + 16]
            loss = nn.functional.cross_entropy(ref(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    trained = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
    assert float((theta0 + res.z - trained).abs().max()) < 1e-6
    assert float((theta0 - trained).abs().max()) > 1e-2  # it did move; the model is untouched


@pytest.mark.parametrize("kind", ["dense", "sparse", "fastfood"])
def test_subspace_training_learns_and_exports(kind: str) -> None:
    X, y = _data()
    model = _model()
    res = train_in_subspace(
        model, nn.functional.cross_entropy, (X, y), 40, projection=kind, epochs=15, lr=0.1
    )
    assert res.history["loss"][-1] < res.history["loss"][0]
    acc = evaluate(model, res.z, res.projection, (X, y))["accuracy"]
    assert acc == pytest.approx(res.history["accuracy"][-1])
    blob = json.loads(
        json.dumps(export_compressed(model, res.z, res.projection_seed, kind, init_seed=0))
    )
    rebuilt = load_compressed(blob, _model)
    assert float((rebuilt(X).argmax(1) == y).double().mean()) == pytest.approx(acc)


def test_search_finds_threshold_and_resumes(tmp_path: Path) -> None:
    X, y = _data()
    calls = {"n": 0}

    def make() -> nn.Module:
        calls["n"] += 1
        return _model()

    ck = tmp_path / "search.json"
    kwargs: dict[str, Any] = dict(
        epochs=8, lr=0.1, threshold=0.9, checkpoint_path=ck, bisection_steps=2, batch_size=32
    )
    r1 = d_int90_search(make, (X, y), [1, 4, 16, 64], **kwargs)
    assert r1.num_trained == calls["n"] == 1 + len(r1.points)
    assert r1.d_int90 is not None
    assert r1.target == pytest.approx(0.9 * r1.baseline_accuracy)
    curve = {p["d"]: p["accuracy"] for p in r1.points}
    assert curve[r1.d_int90] >= r1.target
    lo = r1.bracket[0]
    assert lo is None or curve[lo] < r1.target
    saved = json.loads(ck.read_text())
    assert len(saved["points"]) == calls["n"]

    calls["n"] = 0
    r2 = d_int90_search(make, (X, y), [1, 4, 16, 64], **kwargs)
    assert calls["n"] == 0 and r2.num_trained == 0
    assert r2.d_int90 == r1.d_int90 and r2.points == r1.points

    # a partially finished run: drop the last point, only that one is redone
    last = max((k for k in saved["points"] if k != "baseline"), key=int)
    del saved["points"][last]
    ck.write_text(json.dumps(saved))
    r3 = d_int90_search(make, (X, y), [1, 4, 16, 64], **kwargs)
    assert calls["n"] == 1 and r3.num_trained == 1
    assert r3.d_int90 == r1.d_int90

    with pytest.raises(ValueError, match="other settings"):
        d_int90_search(make, (X, y), [1, 4, 16, 64], **{**kwargs, "epochs": 3})


def test_p12_fast_reports_the_curve() -> None:
    from subspaces.experiments import registry

    result = registry.get("P12").run(True, 0)
    runs = result.measured["runs"]
    assert [r["width"] for r in runs] == [32, 64, 128]
    assert result.measured["param_growth"] >= 4
    for r in runs:
        assert r["baseline_accuracy"] > 0.8
        assert r["curve"] and all(0 <= p["accuracy"] <= 1 for p in r["curve"])
    assert "accuracy_vs_d" in result.figures
