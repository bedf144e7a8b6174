"""P10: the tasks and runners of the target-surrogate reproduction."""

from __future__ import annotations

import math

import pytest
import torch

from subspaces.experiments import get
from subspaces.experiments.P10_target_surrogates import Task, run_sgd, run_sso


@pytest.mark.parametrize("kind", [pytest.param("supervised", marks=pytest.mark.slow), "imitation"])
def test_one_inner_step_runner_equals_sgd_runner(kind: str) -> None:
    # m = 1: the runners must agree (SSO with one inner SGD step is SGD, see test_surrogate)
    task = Task(kind, 0)
    batches = task.batches(5)
    a = run_sgd(task, batches, 0.3)
    b = run_sso(task, batches, 0.3, 1, 64.0)
    assert math.isclose(a, b, rel_tol=1e-5)
    assert a < task.objective(task.model())


def test_task_batches_are_seeded_and_kl_is_zero_on_the_teacher() -> None:
    task = Task("imitation", 1)
    (x1, y1), (x2, y2) = task.batches(1)[0], Task("imitation", 1).batches(1)[0]
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert abs(float(task.loss(task.y, task.y))) < 1e-6


def test_diverging_step_size_is_infinite() -> None:
    task = Task("imitation", 0)
    # the surrogate overflows: TargetSurrogate raises, the runner scores the grid point inf
    assert run_sso(task, task.batches(3), 1e30, 3, 64.0) == math.inf
    assert math.isfinite(run_sso(task, task.batches(3), 0.1, 3, 64.0))


@pytest.mark.slow
def test_p10_fast_run() -> None:
    result = get("P10").run(True, 0)
    m = result.measured
    assert m["T"] == 60 and len(m["runs"]) == 3
    assert isinstance(result.passed, bool) and "supervised" in result.summary
