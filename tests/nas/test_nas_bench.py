"""The tabular benchmark: shipped files, determinism of the generator, resume, bad input."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from subspaces.nas.bench import (
    BenchConfig,
    TabularBenchmark,
    _evaluate,
    build_benchmark,
    space_to_dict,
)
from subspaces.nas.space import CellSpace, MacroSpace

TINY = BenchConfig(epochs=1, seeds=(0,))
SKIPS = CellSpace(ops=("none", "skip_connect"))


def _shipped(kind: str) -> dict:
    path = resources.files("subspaces.nas").joinpath(f"data/{kind}_bench.json")
    if not path.is_file():
        pytest.skip(f"{kind}_bench.json not built yet")
    return json.loads(path.read_text())


@pytest.mark.parametrize("kind", ["macro", "cell"])
def test_shipped_benchmark_loads_and_regenerates(kind: str) -> None:
    data = _shipped(kind)
    bench = TabularBenchmark.builtin(kind)  # type: ignore[arg-type]
    assert len(bench) == len(bench.space) and bench.content_hash == data["content_hash"]
    # The generator, rerun here on the cheapest architectures with the shipped budget,
    # reproduces the shipped records exactly (same accuracies per seed and parameter counts).
    cheapest = sorted(bench.records, key=lambda a: bench.records[a]["train_time"])[:1]
    for arch in cheapest:
        fresh = _evaluate(data["space"], arch, data["config"])
        shipped = bench.records[arch]
        assert fresh["accuracy_per_seed"] == shipped["accuracy_per_seed"], arch
        assert fresh["params"] == shipped["params"]
    acc = bench.accuracies()
    # Cells with no path to the output predict one class (about 1/10 of the test digits).
    assert acc.min() >= 0.05 and acc.max() <= 1.0 and acc.max() > 0.95
    if len(bench.config.seeds) > 1:
        # The spread over architectures exceeds the noise of a multi-seed mean (signal).
        assert acc.std() > bench.noise() / len(bench.config.seeds) ** 0.5 > 0


def test_hash_matches_a_regenerated_small_space(tmp_path: Path) -> None:
    first = build_benchmark(SKIPS, tmp_path / "a.json", config=TINY)
    again = build_benchmark(SKIPS, tmp_path / "b.json", config=TINY)
    assert first.content_hash == again.content_hash
    loaded = TabularBenchmark.load(tmp_path / "b.json")
    assert loaded.content_hash == first.content_hash and len(loaded) == 16
    # Every arch whose output node is `none` predicts a constant: 10 classes -> ~10 % accuracy.
    dead = loaded.query("|skip_connect~0|+|skip_connect~0|skip_connect~1|+|none~2|")
    alive = loaded.query("|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~2|")
    assert dead.accuracy < 0.2 < 0.8 < alive.accuracy
    # A different budget changes the hash.
    other = build_benchmark(SKIPS, config=BenchConfig(epochs=2, seeds=(0,)))
    assert other.content_hash != first.content_hash


@pytest.mark.slow
def test_process_pool_gives_the_same_table() -> None:
    local = build_benchmark(SKIPS, config=TINY)
    pooled = build_benchmark(SKIPS, config=TINY, workers=2)
    assert pooled.content_hash == local.content_hash


def test_resume_keeps_finished_architectures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    archs = list(SKIPS)
    build_benchmark(SKIPS, out, config=TINY, archs=archs[:5])  # interrupted: only a partial
    partial = Path(f"{out}.partial")
    assert not out.exists() and partial.exists()
    saved = json.loads(partial.read_text())
    assert len(saved["records"]) == 5
    # Plant a marker in one finished record: a resumed build must keep it, not retrain.
    first = SKIPS.to_string(archs[0])
    saved["records"][first]["train_time"] = 1234.0
    partial.write_text(json.dumps(saved))
    calls: list[int] = []
    bench = build_benchmark(SKIPS, out, config=TINY, progress=lambda d, t: calls.append(d))
    assert bench.records[first]["train_time"] == 1234.0
    assert calls == list(range(6, 17)) and out.exists() and not partial.exists()


def test_partial_of_another_config_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    build_benchmark(SKIPS, out, config=TINY, archs=list(SKIPS)[:1])
    with pytest.raises(ValueError, match="another space or config"):
        build_benchmark(SKIPS, out, config=BenchConfig(epochs=2, seeds=(0,)))
    build_benchmark(SKIPS, out, config=BenchConfig(epochs=2, seeds=(0,)), resume=False,
                    archs=list(SKIPS)[:1])  # fmt: skip


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        build_benchmark(SKIPS, config=TINY, archs=[])
    with pytest.raises(ValueError, match="workers must be"):
        build_benchmark(SKIPS, config=TINY, workers=0)
    with pytest.raises(ValueError, match="backend must be"):
        build_benchmark(SKIPS, config=TINY, backend="dask")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seeds must hold"):
        BenchConfig(seeds=())
    with pytest.raises(ValueError, match="epochs must be"):
        BenchConfig(epochs=0)
    with pytest.raises(ValueError, match="lr must be"):
        BenchConfig(lr=float("nan"))
    bench = build_benchmark(SKIPS, config=TINY, archs=list(SKIPS)[:1])
    with pytest.raises(KeyError, match="not in this benchmark"):
        bench.query(list(SKIPS)[1])
    with pytest.raises(ValueError, match="unknown operation"):
        bench.query("|nor_conv_3x3~0|+|none~0|none~1|+|none~2|")


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    bench = build_benchmark(SKIPS, tmp_path / "b.json", config=TINY)
    data = json.loads((tmp_path / "b.json").read_text())
    arch = next(iter(data["records"]))
    data["records"][arch]["accuracy_per_seed"] = [1.0]
    (tmp_path / "t.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="does not match its content"):
        TabularBenchmark.load(tmp_path / "t.json")
    assert space_to_dict(bench.space) == {"kind": "cell", "ops": ["none", "skip_connect"]}


def test_ray_backend_matches_local() -> None:
    pytest.importorskip("ray")
    space = MacroSpace(kernels=(1,), widths=(4, 8), layers=1)
    local = build_benchmark(space, config=TINY)
    remote = build_benchmark(space, config=TINY, workers=2, backend="ray")
    assert remote.content_hash == local.content_hash
