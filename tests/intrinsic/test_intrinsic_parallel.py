"""Tests of the parallel d_int90 search: workers give the serial answer and resume correctly."""

from __future__ import annotations

import functools
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from subspaces.intrinsic import d_int90_search
from subspaces.intrinsic.parallel import PointTask, bisection_tree, make_runner, run_point


def _data(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 6, generator=g, dtype=torch.float64)
    W = torch.randn(6, 3, generator=g, dtype=torch.float64)
    return X, (X @ W).argmax(dim=1)


def make_model(seed: int = 0) -> nn.Module:
    """Module-level (picklable) factory of a tiny MLP at a fixed initialization."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()


KW: dict[str, Any] = dict(epochs=6, lr=0.1, threshold=0.9, bisection_steps=3, batch_size=32)
DIMS = [1, 2, 4, 8, 32, 64]


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # workers run one thread: same for the serial reference
    yield
    torch.set_num_threads(old)


def test_two_workers_equal_serial_and_resume(tmp_path: Path) -> None:
    data = _data()
    factory = functools.partial(make_model, 0)
    ck = tmp_path / "search.json"
    serial = d_int90_search(factory, data, DIMS, checkpoint_path=ck, **KW)
    assert serial.d_int90 is not None and serial.bracket[0] is not None  # bisection ran
    # An interrupted run: only the first sweep point finished. Two workers redo everything else
    # (baseline, sweep, bisection) and must neither redo that point nor change any answer.
    saved = json.loads(ck.read_text())
    kept = {"1": saved["points"]["1"]}
    ck.write_text(json.dumps({**saved, "points": kept}))
    par = d_int90_search(factory, data, DIMS, workers=2, checkpoint_path=ck, **KW)
    assert par.d_int90 == serial.d_int90
    assert par.bracket == serial.bracket
    assert par.baseline_accuracy == serial.baseline_accuracy
    ser = {p["d"]: p for p in serial.points}
    got = {p["d"]: p for p in par.points}
    assert set(ser) <= set(got)  # a parallel run may finish a few extra dimensions
    for d, p in ser.items():
        assert got[d]["accuracy"] == p["accuracy"]
        assert got[d]["loss"] == pytest.approx(p["loss"], rel=1e-12, abs=0)
        assert (got[d]["seconds"] == p["seconds"]) == (d == 1)  # only d = 1 was not retrained
    # every point finished by the workers was written; a rerun trains nothing
    saved = json.loads(ck.read_text())
    assert len(saved["points"]) == par.num_trained + 1 == 1 + len(par.points)
    again = d_int90_search(factory, data, DIMS, workers=2, checkpoint_path=ck, **KW)
    assert again.num_trained == 0 and again.points == par.points


def test_unpicklable_factory_and_bad_backend() -> None:
    data = _data(32)
    with pytest.raises(TypeError, match="picklable"):
        d_int90_search(lambda: make_model(0), data, [1, 2], workers=2, **KW)
    with pytest.raises(ValueError, match="backend"):
        d_int90_search(make_model, data, [1, 2], workers=2, backend="threads", **KW)
    with pytest.raises(ValueError, match="workers"):
        d_int90_search(make_model, data, [1, 2], workers=0, **KW)
    # the serial backend (or one worker) needs nothing picklable
    res = d_int90_search(lambda: make_model(0), data, [1, 64], backend="serial", workers=4, **KW)
    assert res.num_trained >= 2


def test_ray_missing_names_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def fake(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match="pip install ray"):
        d_int90_search(make_model, _data(32), [1, 2], workers=2, backend="ray", **KW)


def test_bisection_tree_covers_the_serial_path() -> None:
    assert bisection_tree(0, 16, 1) == [8]
    assert bisection_tree(0, 16, 3) == [8, 4, 12, 2, 6, 10, 14]
    assert bisection_tree(3, 5, 3) == [4]
    assert bisection_tree(4, 5, 2) == []
    # every serial bisection path of depth k lies inside the depth-k tree
    for target in range(1, 16):
        a, b, path = 0, 16, []
        for _ in range(3):
            mid = (a + b) // 2
            path.append(mid)
            a, b = (a, mid) if mid >= target else (mid, b)
        assert set(path) <= set(bisection_tree(0, 16, 3))


def test_task_pickles_and_serial_runner_matches_run_point() -> None:
    data = _data(32)
    task = PointTask(
        make_model, nn.functional.cross_entropy, data, None, "dense", 0, 2, 0.1, 16, "adam", 0.1
    )
    clone = pickle.loads(pickle.dumps(task))
    first, second = run_point(clone, 3), run_point(task, 3)
    first.pop("seconds"), second.pop("seconds")
    assert first == second
    runner = make_runner(task, 1, "process")
    assert runner.workers == 1
    runner.submit("3", 3)
    ((key, value),) = runner.wait()
    assert key == "3" and value["accuracy"] == run_point(task, 3)["accuracy"]
    pool = make_runner(task, 2, "process")  # workers start on the first submit
    assert pool.workers == 2 and type(pool).__name__ == "_ProcessRunner"
    pool.close()


@pytest.mark.slow
def test_ray_backend_equals_serial() -> None:
    pytest.importorskip("ray")
    data = _data()
    serial = d_int90_search(make_model, data, DIMS, **KW)
    par = d_int90_search(make_model, data, DIMS, workers=2, backend="ray", **KW)
    assert par.d_int90 == serial.d_int90 and par.bracket == serial.bracket
    got = {p["d"]: p["accuracy"] for p in par.points}
    for p in serial.points:
        assert got[p["d"]] == p["accuracy"]
