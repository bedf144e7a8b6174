"""Parts of :func:`~subspaces.analyze.run_analyze`'s loop: evaluation, the optimizer, run state."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ._config import AnalyzeConfig


def _evaluate(
    model: nn.Module,
    loss_name: str,
    X: Tensor,
    y: Tensor,
    yt: Tensor,
    batch_size: int = 2048,
) -> tuple[float, float]:
    """Mean loss and accuracy (NaN for float targets), in batches of ``batch_size``."""
    n = len(y)
    loss_sum = torch.zeros((), dtype=torch.float64, device=X.device)
    correct = torch.zeros((), dtype=torch.float64, device=X.device)
    entries = 0
    with torch.no_grad():
        for i in range(0, n, batch_size):
            out = model(X[i : i + batch_size])
            yb, tb = y[i : i + batch_size], yt[i : i + batch_size]
            if loss_name == "cross_entropy":
                loss_sum += nn.functional.cross_entropy(out, yb, reduction="sum").double()
                entries += len(yb)
            else:
                loss_sum += ((out - tb.reshape(out.shape)) ** 2).sum().double()
                entries += out.numel()
            if not y.is_floating_point():
                correct += (out.argmax(1) == yb).double().sum()
    acc = float(correct) / n if not y.is_floating_point() else float("nan")
    return float(loss_sum) / max(entries, 1), acc


def _silent(message: str) -> None:
    """The log of ranks other than 0 under torchrun."""


def _reraise(error: Exception | None) -> None:
    if error is not None:
        raise error


def _make_optimizer(config: AnalyzeConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    return torch.optim.AdamW(model.parameters(), lr=config.lr)


@dataclass
class _Run:
    history: dict[str, list[float]] = field(
        default_factory=lambda: {
            k: [] for k in ("step", "epoch", "train_loss", "train_acc", "test_loss", "test_acc")
        }
    )
    epoch: int = 0
    step: int = 0
    train_seconds: float = 0.0
    curvature_seconds: float = 0.0
