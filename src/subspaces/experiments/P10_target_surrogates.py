r"""P10: target-based surrogates beat SGD at an equal number of expensive gradients.

Lavington, Vaswani, Babanezhad, Schmidt & Le Roux, "Target-based Surrogates for Stochastic
Optimization" (ICML 2023, arXiv:2302.02607): when the gradient of the loss with respect to the
model's targets (logits, policy outputs) is the expensive part, stochastic surrogate
optimization (SSO, their Algorithm 1) takes ``m`` cheap steps on the surrogate
``l(z_t) + <grad_z l(z_t), f(theta) - z_t> + ||f(theta) - z_t||^2 / (2 eta)`` per expensive
gradient, and reaches a lower loss than SGD for the same number of expensive gradients.

Protocol (float32, :class:`~subspaces.optim.TargetSurrogate` with inner SGD):

* **supervised**: standardized digits (training split of
  :func:`~subspaces.experiments._common.load_digits_tensors`), an MLP 64-32-10 (tanh),
  cross-entropy; one expensive gradient = the target gradient on a mini-batch of 64 samples.
* **imitation**: a fixed teacher policy (a random MLP 8-32-4, tanh, logits times 3) over states
  ``s ~ N(0, I_8)``; a student MLP 8-16-4 (tanh) matches its action distribution, loss
  ``KL(teacher(s) || student(s))``; one expensive gradient = the teacher queried on 64 fresh
  states (an expert in the loop, as in online imitation learning).

Both methods get the same ``T`` expensive gradients on the same mini-batch sequence (full:
``T = 300``, fast: ``T = 60``) from the same initialization. SGD: step size best of
``{0.1, 0.3, 1.0, 3.0}``; SSO: ``m = 10`` (fast: 5) inner SGD steps, the best of
``eta = 64 * {1, 3, 10}`` (a target-space step per sample of 1, 3 or 10 times its gradient, as
the loss is a batch mean) times inner step size ``{0.3, 1.0, 3.0}``; "best" is the lowest final
objective per seed (SSO thus gets 9 configurations to SGD's 4: it has two step sizes). The
objective is the training loss on the whole training set (supervised) or the KL on a fixed set
of 2048 evaluation states (imitation).

Passed iff on both tasks SSO's final objective is lower than SGD's on every seed (full: 5
seeds, fast: 3), paired by seed.

Criterion fixed before the first full run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..optim import TargetSurrogate
from ._common import load_digits_tensors, single_thread
from ._stats import paired_summary, seed_summary
from .registry import ExperimentResult, register

LRS = (0.1, 0.3, 1.0, 3.0)
INNER_LRS = (0.3, 1.0, 3.0)
ETAS = (1.0, 3.0, 10.0)
BATCH = 64


def _kl(z: Tensor, teacher_logits: Tensor) -> Tensor:
    p = torch.softmax(teacher_logits, dim=1)
    return (
        (p * (torch.log_softmax(teacher_logits, dim=1) - torch.log_softmax(z, dim=1))).sum(1).mean()
    )


class Task:
    """A stream of expensive mini-batches, a model factory and the objective."""

    def __init__(self, kind: str, seed: int) -> None:
        self.kind = kind
        g = torch.Generator().manual_seed(seed)
        if kind == "supervised":
            X, y, _, _ = load_digits_tensors(seed=seed, dtype=torch.float32)
            self.X, self.y = X, y
            self.loss: Callable[..., Tensor] = nn.functional.cross_entropy
            self.sizes = (64, 32, 10)
        else:
            torch.manual_seed(10_000 + seed)
            self.teacher = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4))
            self.X = torch.randn(2048, 8, generator=g)
            with torch.no_grad():
                self.y = 3.0 * self.teacher(self.X)
            self.loss = _kl
            self.sizes = (8, 16, 4)
        self.seed = seed

    def batches(self, T: int) -> list[tuple[Tensor, Tensor]]:
        """The ``T`` mini-batches every method sees (seeded).

        Returns:
            A list of ``(inputs, targets)``.
        """
        g = torch.Generator().manual_seed(20_000 + self.seed)
        out = []
        for _ in range(T):
            if self.kind == "supervised":
                idx = torch.randint(0, len(self.y), (BATCH,), generator=g)
                out.append((self.X[idx], self.y[idx]))
            else:
                s = torch.randn(BATCH, 8, generator=g)
                with torch.no_grad():
                    out.append((s, 3.0 * self.teacher(s)))
        return out

    def model(self) -> nn.Module:
        """The student at its seeded initialization.

        Returns:
            A fresh MLP.
        """
        torch.manual_seed(self.seed)
        a, h, c = self.sizes
        return nn.Sequential(nn.Linear(a, h), nn.Tanh(), nn.Linear(h, c))

    def objective(self, model: nn.Module) -> float:
        """Training loss (supervised) or evaluation KL (imitation).

        Returns:
            The objective.
        """
        with torch.no_grad():
            return float(self.loss(model(self.X), self.y))


def run_sgd(task: Task, batches: list[tuple[Tensor, Tensor]], lr: float) -> float:
    """SGD with one expensive gradient per step.

    Returns:
        The final objective (``inf`` if it diverged).
    """
    model = task.model()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for x, y in batches:
        opt.zero_grad()
        task.loss(model(x), y).backward()
        opt.step()
    return _finite_or_inf(task.objective(model))


def run_sso(
    task: Task, batches: list[tuple[Tensor, Tensor]], lr: float, m: int, eta: float
) -> float:
    """SSO with ``m`` inner SGD steps per expensive gradient.

    Returns:
        The final objective (``inf`` if the step size diverged: the surrogate or the target
        loss became non-finite, which TargetSurrogate reports as a ValueError).

    Raises:
        RuntimeError: if the expensive-gradient count differs from the batches.
    """
    model = task.model()
    sso = TargetSurrogate(
        model, task.loss, torch.optim.SGD(model.parameters(), lr=lr), inner_steps=m, eta=eta
    )
    try:
        for x, y in batches:
            sso.step(x, y)
    except ValueError:
        return math.inf
    if sso.num_expensive != len(batches):
        raise RuntimeError("expensive gradient count mismatch")
    return _finite_or_inf(task.objective(model))


def _finite_or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def _one_seed(seed: int, T: int, m: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("supervised", "imitation"):
        task = Task(kind, seed)
        batches = task.batches(T)
        sgd = {lr: run_sgd(task, batches, lr) for lr in LRS}
        sso = {
            (lr, eta): run_sso(task, batches, lr, m, BATCH * eta)
            for eta in ETAS
            for lr in INNER_LRS
        }
        out[kind] = {
            "initial": task.objective(task.model()),
            "sgd": min(sgd.values()),
            "sso": min(sso.values()),
            "sgd_lr": min(sgd, key=lambda k: sgd[k]),
            "sso_lr_eta": min(sso, key=lambda k: sso[k]),
            "sgd_grid": list(sgd.values()),
            "sso_grid": list(sso.values()),
        }
    return out


@register(
    "P10",
    title="Target-based surrogates (SSO)",
    paper=(
        "Lavington, Vaswani, Babanezhad, Schmidt & Le Roux 2023, Target-based Surrogates for "
        "Stochastic Optimization (ICML 2023, arXiv:2302.02607)"
    ),
    claim=(
        "at an equal number of expensive target-space gradients, SSO reaches a lower loss than "
        "SGD on a supervised task and on an imitation task"
    ),
    criterion=(
        "SSO (m inner SGD steps) final objective < SGD's on every seed for both tasks, each "
        "method with its best step sizes (SGD: lr in {0.1, 0.3, 1, 3}; SSO: inner lr in "
        "{0.3, 1, 3} x eta/64 in {1, 3, 10}), same T expensive gradients"
    ),
)
def run(fast: bool, seed: int) -> ExperimentResult:
    """Run the P10 reproduction (see the module docstring).

    Returns:
        The result with per-seed objectives, paired differences and the verdict.
    """
    seeds = [seed + i for i in range(3 if fast else 5)]
    T, m = (60, 5) if fast else (300, 10)
    start = time.perf_counter()
    with single_thread():
        runs = [_one_seed(s, T, m) for s in seeds]
    measured: dict[str, Any] = {"seeds": seeds, "T": T, "m": m, "runs": runs}
    passed = True
    parts = []
    for kind in ("supervised", "imitation"):
        sgd = [r[kind]["sgd"] for r in runs]
        sso = [r[kind]["sso"] for r in runs]
        measured[f"{kind}_sgd"] = seed_summary(sgd)
        measured[f"{kind}_sso"] = seed_summary(sso)
        measured[f"{kind}_sgd_minus_sso"] = paired_summary(sgd, sso)
        wins = sum(b < a for a, b in zip(sgd, sso, strict=True))
        passed &= wins == len(seeds)
        parts.append(
            f"{kind}: SSO {measured[f'{kind}_sso']['mean']:.4f} vs SGD "
            f"{measured[f'{kind}_sgd']['mean']:.4f} (SSO lower on {wins}/{len(seeds)} seeds)"
        )
    measured["seconds"] = time.perf_counter() - start
    return ExperimentResult(
        measured,
        passed=passed,
        summary=f"T={T} expensive gradients, m={m}: " + "; ".join(parts),
        headline=("supervised_sgd_minus_sso", "imitation_sgd_minus_sso"),
    )
