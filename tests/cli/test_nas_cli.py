"""`subspaces nas build-bench`: builds, resumes and refuses bad arguments."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

import subspaces.nas.space as nas_space
from subspaces.cli import main
from subspaces.nas.bench import TabularBenchmark


@pytest.fixture
def tiny_macro(monkeypatch: pytest.MonkeyPatch) -> None:
    # The command builds the whole space; shrink the macro space to two architectures.
    small = functools.partial(nas_space.MacroSpace, kernels=(1,), widths=(4, 8), layers=1)
    monkeypatch.setattr(nas_space, "MacroSpace", small)


def test_build_bench_writes_a_loadable_table(
    tiny_macro: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "macro.json"
    assert main(["nas", "build-bench", "--space", "macro", "--out", str(out), "-q"]) == 0
    bench = TabularBenchmark.load(out)
    assert len(bench) == 2 and bench.config.seeds == (0, 1, 2)
    assert "2 architectures" in capsys.readouterr().out
    # A rerun over a finished table rebuilds it identically (same content hash).
    digest = json.loads(out.read_text())["content_hash"]
    assert main(["nas", "build-bench", "--space", "macro", "--out", str(out), "-q"]) == 0
    assert json.loads(out.read_text())["content_hash"] == digest


def test_build_bench_errors(
    tiny_macro: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "macro.json"
    Path(f"{out}.partial").write_text(json.dumps({"identity": "other", "records": {}}))
    assert main(["nas", "build-bench", "--space", "macro", "--out", str(out), "-q"]) == 2
    assert "another space or config" in capsys.readouterr().err
    assert main(["nas", "build-bench", "--workers", "0"]) == 2
    assert main(["nas", "build-bench", "--space", "lstm"]) == 2
    assert main(["nas"]) == 2


def test_ray_backend_without_ray_is_a_clear_error(
    tiny_macro: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        args = ["nas", "build-bench", "--space", "macro", "--backend", "ray"]
        assert main([*args, "--out", str(tmp_path / "m.json"), "-q"]) == 2
        assert "needs Ray" in capsys.readouterr().err
    else:
        pytest.skip("Ray is installed: the error path cannot be exercised")
