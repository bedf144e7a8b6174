"""The thread-count helpers restore the caller's setting whatever happens inside."""

import pytest
import torch

import subspaces._threads as threads_mod
from subspaces._threads import SMALL_WORK, choose_threads, idle_cores, intra_op_threads
from subspaces.experiments._common import single_thread


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_intra_op_threads_sets_and_restores(two_threads):
    with intra_op_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), intra_op_threads(1):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == 2
    with intra_op_threads(None) as n:
        assert n == 2
    # a block that changes the count itself is undone too
    with intra_op_threads(None):
        torch.set_num_threads(1)
    assert torch.get_num_threads() == 2
    with single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_choose_threads(two_threads, monkeypatch):
    assert choose_threads(SMALL_WORK - 1) == 1
    # "auto" uses the cores idle now: both on an idle machine, one when another process is busy
    monkeypatch.setattr(threads_mod, "idle_cores", lambda: 2.0)
    assert choose_threads(SMALL_WORK) == 2
    monkeypatch.setattr(threads_mod, "idle_cores", lambda: 0.9)
    assert choose_threads(SMALL_WORK) == 1
    monkeypatch.setattr(threads_mod, "idle_cores", lambda: 0.0)
    assert choose_threads(1e12) == 1  # never zero
    monkeypatch.setattr(threads_mod, "idle_cores", lambda: 7.0)
    assert choose_threads(1e12) == 2  # never more than torch's count
    assert choose_threads(10, None) == 2
    assert choose_threads(10, 3) == 3


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "two"])
def test_bad_thread_counts(bad):
    with pytest.raises(ValueError, match="thread"):
        choose_threads(10, bad)
    with pytest.raises(ValueError, match="thread"), intra_op_threads(bad):
        pass


def test_bad_work():
    with pytest.raises(ValueError, match="work"):
        choose_threads(-1.0)
    with pytest.raises(ValueError, match="work"):
        choose_threads(float("nan"))


def test_idle_cores_is_a_plausible_count():
    import os

    assert 0.0 <= idle_cores(0.05) <= (os.cpu_count() or 1) + 1e-9


def test_analyze_restores_the_callers_thread_count(tmp_path, two_threads, monkeypatch):
    monkeypatch.setattr(threads_mod, "idle_cores", lambda: 0.5)  # a busy machine
    from subspaces.analyze import AnalyzeConfig, run_analyze

    config = AnalyzeConfig(
        epochs=1, every=1000, width=8, final_k=2, density_runs=2, density_steps=4
    )
    summary = run_analyze(config, tmp_path / "run", quiet=True, log=lambda _: None)
    assert summary["config"]["threads"] == 1  # busy machine: one thread
    assert torch.get_num_threads() == 2
    summary = run_analyze(config, tmp_path / "run2", quiet=True, log=lambda _: None, threads=2)
    assert summary["config"]["threads"] == 2 and torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="threads"):
        run_analyze(config, tmp_path / "run3", quiet=True, threads=0)
    assert torch.get_num_threads() == 2


def test_cli_threads_option(two_threads, capsys, tmp_path):
    from subspaces.cli import main

    assert main(["analyze", "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err
    assert main(["reproduce", "C01", "--fast", "--threads", "1", "--out", str(tmp_path), "-q"]) == 0
    assert torch.get_num_threads() == 2
