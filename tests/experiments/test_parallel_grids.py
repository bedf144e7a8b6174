"""The shared task map (serial, local processes, Ray) and the P24/P22 grids built on it."""

from __future__ import annotations

import math
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from subspaces._parallel import TaskFailedError, grid_settings, map_tasks
from subspaces.experiments._common import load_digits_tensors
from subspaces.experiments.P22_stability_trace import (
    _Setting,
    _train_gd,
    make_data,
    make_model,
    stability_grid,
)
from subspaces.experiments.P24_batch_size_learning_rate import (
    _stable_lr_point,
    max_stable_lr,
    stable_lr_grid,
)

# A P22 grid small enough for a default test, large enough that GD and SGD move the weights.
TINY22 = _Setting(n=12, width=6, etas=(0.05, 0.1), max_gd_steps=40, max_sgd_epochs=3, repeats=2)


@pytest.fixture(scope="module")
def serial22() -> list[dict]:
    return stability_grid(TINY22, [7, 1007])


@pytest.fixture
def die_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A picklable task that kills its worker process the first time it runs for a marker."""
    (tmp_path / "raygrid_die_once.py").write_text(
        textwrap.dedent(
            """
            import os

            def die_once(marker, value):
                if not os.path.exists(marker):
                    open(marker, "w").close()
                    os._exit(3)
                return value

            def die_always(value):
                os._exit(3)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers get this sys.path
    import raygrid_die_once

    yield raygrid_die_once
    sys.modules.pop("raygrid_die_once", None)


def test_map_tasks_serial_order_labels_and_callback() -> None:
    seen: list[tuple[int, int]] = []
    out = map_tasks(pow, [(2, 3), (3, 2), (10, 0)], on_result=lambda i, r: seen.append((i, r)))
    assert out == [8, 9, 1]
    assert seen == [(0, 8), (1, 9), (2, 1)]
    assert map_tasks(pow, []) == []
    with pytest.raises(TaskFailedError, match=r"task 1 \(x=-1\) failed: ValueError") as info:
        map_tasks(math.sqrt, [(4.0,), (-1.0,)], labels=["x=4", "x=-1"])
    assert info.value.label == "x=-1" and info.value.index == 1


def test_map_tasks_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"backend must be one of .* got 'dask'"):
        map_tasks(pow, [(2, 3)], backend="dask")
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        map_tasks(pow, [(2, 3)], workers=0)
    with pytest.raises(TypeError, match="workers must be an int, got float"):
        map_tasks(pow, [(2, 3)], workers=2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="task 1 must be a tuple of arguments, got list"):
        map_tasks(pow, [(2, 3), [3, 2]])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="labels has 1 entries for 2 tasks"):
        map_tasks(pow, [(2, 3), (3, 2)], labels=["a"])


def test_grid_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUBSPACES_GRID_BACKEND", raising=False)
    monkeypatch.delenv("SUBSPACES_GRID_WORKERS", raising=False)
    assert grid_settings() == ("serial", 1)
    monkeypatch.setenv("SUBSPACES_GRID_BACKEND", "process")
    monkeypatch.setenv("SUBSPACES_GRID_WORKERS", "3")
    assert grid_settings() == ("process", 3)
    monkeypatch.setenv("SUBSPACES_GRID_WORKERS", "0")
    with pytest.raises(ValueError, match="SUBSPACES_GRID_WORKERS must be an int >= 1, got '0'"):
        grid_settings()
    monkeypatch.setenv("SUBSPACES_GRID_WORKERS", "two")
    with pytest.raises(ValueError, match="got 'two'"):
        grid_settings()
    monkeypatch.setenv("SUBSPACES_GRID_WORKERS", "2")
    monkeypatch.setenv("SUBSPACES_GRID_BACKEND", "dask")
    with pytest.raises(ValueError, match=r"SUBSPACES_GRID_BACKEND must be one of .* got 'dask'"):
        grid_settings()


def test_cli_grid_options_hand_over_through_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from subspaces.cli import main

    monkeypatch.setenv("SUBSPACES_GRID_BACKEND", "serial")  # restored after the test
    monkeypatch.setenv("SUBSPACES_GRID_WORKERS", "1")
    # the hand-over happens before the ids are checked; the unknown id then ends the run
    assert main(["reproduce", "X99", "--grid-workers", "3", "--out", str(tmp_path), "-q"]) == 2
    assert grid_settings() == ("process", 3)
    argv = ["reproduce", "X99", "--grid-backend", "ray", "--out", str(tmp_path), "-q"]
    assert main(argv) == 2
    assert grid_settings() == ("ray", 1)
    assert main(["reproduce", "X99", "--grid-backend", "dask"]) == 2
    assert "--grid-backend: invalid choice: 'dask'" in capsys.readouterr().err


def test_map_tasks_process_retries_a_killed_worker_once_then_reports(die_once) -> None:  # type: ignore[no-untyped-def]
    marker = os.path.join(os.path.dirname(die_once.__file__), "marker")
    # the first attempt of task 0 kills its worker; the retry in a fresh pool succeeds
    out = map_tasks(die_once.die_once, [(marker, 1), (marker, 2)], backend="process", workers=2)
    assert out == [1, 2] and os.path.exists(marker)
    # a task that kills its worker every time is reported with its label after one retry
    with pytest.raises(
        TaskFailedError, match=r"\((a|b)\) failed: worker process died, also on the retry"
    ):
        map_tasks(
            die_once.die_always, [(1,), (2,)], backend="process", workers=2, labels=["a", "b"]
        )


@pytest.mark.slow
def test_p24_grid_serial_equals_process_bit_for_bit() -> None:
    X, y, _, _ = load_digits_tensors(None, seed=0)
    X, y = X[:60], y[:60]
    serial = stable_lr_grid(X, y, 5, 2, 1, batch_sizes=[8])
    # grid order: rows[b][s]; each point equals a direct search with the same seeds
    direct = _stable_lr_point(X, y, 5, "adam", 8, 1, 1)
    assert serial["adam"][0][1] == direct[0]
    assert serial["sgd"][0][0] != serial["adam"][0][0]  # the two optimizers' points differ
    pooled = stable_lr_grid(X, y, 5, 2, 1, batch_sizes=[8], backend="process", workers=2)
    assert pooled == serial  # floats compared exactly
    with pytest.raises(ValueError, match="lr_seeds must be an int >= 1, got 0"):
        stable_lr_grid(X, y, 5, 0, 1)
    with pytest.raises(ValueError, match="bisections must be an int >= 0, got -1"):
        stable_lr_grid(X, y, 5, 1, -1)
    # the searches the points run bracket the rate they report
    lr, runs = max_stable_lr(lambda lr: lr < 0.3, 1.0, bisections=1)
    assert 0.25 <= lr < 0.3 and runs == 4


def test_p22_grid_splits_gd_per_eta_exactly(serial22: list[dict]) -> None:
    # GD at each eta alone gives the very weights of GD over the whole eta tuple
    X, y = make_data(TINY22.n, 7)
    init = make_model(TINY22.width, 8)
    together = _train_gd(init, X, y, TINY22.etas, TINY22.max_gd_steps)
    for k, eta in enumerate(TINY22.etas):
        alone = _train_gd(init, X, y, (eta,), TINY22.max_gd_steps)[0]
        assert alone.loss == together[k].loss and alone.steps == together[k].steps
        assert alone.model is not None and together[k].model is not None
        for a, b in zip(alone.model.parameters(), together[k].model.parameters(), strict=True):
            assert torch.equal(a, b)
    serial = serial22
    assert [rep["seed"] for rep in serial] == [7, 1007]
    assert "trace_identity" in serial[0] and "trace_identity" not in serial[1]
    assert [r["eta"] for r in serial[1]["gd"]] == list(TINY22.etas)
    assert [r["eta"] for r in serial[1]["sgd"]] == list(TINY22.etas)
    assert serial[0]["gd"][0]["loss"] != serial[1]["gd"][0]["loss"]  # repeats differ
    with pytest.raises(ValueError, match="seeds must hold at least one seed"):
        stability_grid(TINY22, [])


def _numbers(reps: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in reps]


def test_p22_grid_process_equals_serial(serial22: list[dict]) -> None:
    # spawning two workers (each imports torch and the library) is most of this test's ~10 s CPU
    pooled = stability_grid(TINY22, [7, 1007], backend="process", workers=2)
    assert _numbers(pooled) == _numbers(serial22)


@pytest.mark.slow
def test_p24_and_p22_grids_on_local_ray_equal_serial() -> None:
    ray = pytest.importorskip("ray")
    X, y, _, _ = load_digits_tensors(None, seed=0)
    X, y = X[:60], y[:60]
    serial = stable_lr_grid(X, y, 5, 2, 1, batch_sizes=[8, 16])
    serial22 = stability_grid(TINY22, [7, 1007])
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        remote = stable_lr_grid(X, y, 5, 2, 1, batch_sizes=[8, 16], backend="ray", workers=2)
        assert remote == serial  # bit for bit, in grid order
        remote22 = stability_grid(TINY22, [7, 1007], backend="ray", workers=2)
        assert _numbers(remote22) == _numbers(serial22)
        with pytest.raises(TaskFailedError, match=r"task 1 \(x=-1\) failed"):
            map_tasks(
                math.sqrt, [(4.0,), (-1.0,)], backend="ray", workers=2, labels=["x=4", "x=-1"]
            )
        # a task whose worker dies every time is retried once by Ray, then reported
        with pytest.raises(TaskFailedError, match=r"task 0 \(exit\) failed"):
            map_tasks(os._exit, [(3,)], backend="ray", workers=1, labels=["exit"])
    finally:
        ray.shutdown()


class _RecordingRay:
    """A stand-in for the ``ray`` module that records how it was initialized."""

    def __init__(self, initialized: bool) -> None:
        self.initialized = initialized
        self.calls: list[dict] = []

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs: object) -> None:
        self.calls.append(kwargs)
        self.initialized = True


@pytest.mark.parametrize(
    ("address", "running", "expected"),
    [
        (None, False, [{"num_cpus": 3, "include_dashboard": False}]),  # a local Ray, 3 CPUs
        ("ray://head:10001", False, [{}]),  # joins RAY_ADDRESS: no local resources asked for
        ("ray://head:10001", True, []),  # a running Ray is used as it is
    ],
)
def test_ensure_ray_starts_joins_or_reuses(
    monkeypatch: pytest.MonkeyPatch, address: str | None, running: bool, expected: list
) -> None:
    from subspaces._parallel import ensure_ray

    fake = _RecordingRay(running)
    monkeypatch.setitem(sys.modules, "ray", fake)
    if address is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", address)
    ray, started = ensure_ray(3)
    assert ray is fake and started is (not running) and fake.calls == expected
    fake.initialized = False
    with pytest.raises(ValueError, match="cpus"):
        ensure_ray(0)
