"""The reproduction gallery runner: serial, local processes, resume, crashes (``gallery.py``)."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from subspaces.experiments import ExperimentResult
from subspaces.experiments.gallery import finished_record, run_gallery, run_record
from subspaces.experiments.registry import temporarily_registered

CALLS: list[str] = []


def _passing(fast: bool, seed: int) -> ExperimentResult:
    CALLS.append("X90")
    return ExperimentResult({"seed": seed, "fast": fast}, passed=True, figures={"f": b"png"})


def _raising(fast: bool, seed: int) -> ExperimentResult:
    CALLS.append("X91")
    raise RuntimeError("broken on purpose")


def test_serial_run_writes_records_and_resume_reruns_only_errors(tmp_path: Path) -> None:
    seen: list[tuple[str, bool]] = []
    with (
        temporarily_registered("X90", _passing),
        temporarily_registered("X91", _raising),
    ):
        CALLS.clear()
        records = run_gallery(
            ["X90", "X91"],
            tmp_path,
            fast=True,
            seed=3,
            on_done=lambda r, tb, old: seen.append((r["id"], old)),
        )
        assert [r["status"] for r in records] == ["passed", "error"]
        assert records[0]["measured"] == {"seed": 3, "fast": True}
        assert "broken on purpose" in records[1]["error"]
        assert json.loads((tmp_path / "X90.json").read_text())["status"] == "passed"
        assert (tmp_path / "X90_f.png").read_bytes() == b"png"
        assert seen == [("X90", False), ("X91", False)]

        CALLS.clear()
        seen.clear()
        again = run_gallery(
            ["X90", "X91"],
            tmp_path,
            fast=True,
            seed=3,
            resume=True,
            on_done=lambda r, tb, old: seen.append((r["id"], old)),
        )
        assert CALLS == ["X91"]  # the finished one is reused, the error runs again
        assert again[0]["date"] == records[0]["date"]
        assert seen == [("X90", True), ("X91", False)]

        CALLS.clear()
        run_gallery(["X90"], tmp_path, fast=False, seed=3, resume=True)  # another setting
        assert CALLS == ["X90"]
        assert finished_record(tmp_path, "X90", False, 3) is not None
        assert finished_record(tmp_path, "X90", True, 3) is None  # overwritten by the full run


def test_run_record_seeds_and_catches(tmp_path: Path) -> None:
    with temporarily_registered("X91", _raising):
        record, figures, tb = run_record("X91", fast=True, seed=0)
    assert record["status"] == "error" and figures == {}
    assert tb is not None and tb.splitlines()[-1] == "RuntimeError: broken on purpose"


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        run_gallery(["C01"], tmp_path, backend="dask")
    with pytest.raises(ValueError, match="workers must be an integer >= 1, got 0"):
        run_gallery(["C01"], tmp_path, workers=0)
    with pytest.raises(ValueError, match="duplicate experiment ids"):
        run_gallery(["C01", "C01"], tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="Ray is installed")
def test_ray_backend_without_ray_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ImportError, match="pip install ray"):
        run_gallery(["C01"], tmp_path, backend="ray")


@pytest.mark.slow
def test_process_backend_equals_serial_and_survives_a_killed_worker(tmp_path: Path) -> None:
    ids = ["C01", "P13"]
    serial = run_gallery(ids, tmp_path / "serial", fast=True)

    killed: list[int] = []

    def kill_one_worker() -> None:  # kill a worker while the reproductions run
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            children = multiprocessing.active_children()
            if children:
                time.sleep(1.0)
                os.kill(children[0].pid, signal.SIGKILL)  # type: ignore[arg-type]
                killed.append(children[0].pid)  # type: ignore[arg-type]
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    parallel = run_gallery(ids, tmp_path / "process", fast=True, backend="process", workers=2)
    killer.join()
    assert killed, "no worker was seen"
    for a, b in zip(serial, parallel, strict=True):
        assert b["status"] == a["status"] != "error", b.get("error")
        # the same deterministic runs: every measurement but the timings agrees
        untimed = [k for k in a["measured"] if "second" not in k and "time" not in k]
        assert untimed and all(b["measured"][k] == a["measured"][k] for k in untimed)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed")
def test_ray_backend_runs_two_reproductions(tmp_path: Path) -> None:
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        records = run_gallery(["C01", "P13"], tmp_path, fast=True, backend="ray")
    finally:
        ray.shutdown()
    assert [r["status"] for r in records] == ["passed", "passed"]
    assert {p.name for p in tmp_path.glob("*.json")} == {"C01.json", "P13.json"}


def _busy_child(fast: bool, seed: int) -> ExperimentResult:
    """Burns CPU in this process and in a child process it waits for."""
    import subprocess
    import sys

    end = time.process_time() + 0.15
    while time.process_time() < end:
        pass
    code = "import time\nend = time.process_time() + 0.15\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", code], check=True)
    return ExperimentResult({}, passed=True)


def test_record_counts_cpu_seconds_of_the_run_and_its_children() -> None:
    with temporarily_registered("X92", _busy_child):
        record, _, tb = run_record("X92", fast=True, seed=0)
    assert tb is None
    # 0.15 s in this process plus >= 0.15 s in the child (its interpreter start-up adds more)
    assert record["cpu_seconds"] >= 0.3
    # CPU time cannot exceed wall time by more than the other core's share (2 threads busy)
    assert record["cpu_seconds"] <= 2 * record["seconds"] + 0.05
