"""A small causal language model on Python's own source, for the optimizer reproductions.

Byte-level tokens of the standard library's ``.py`` files (offline, deterministic), a tiny
Llama-style model from :mod:`subspaces.testing.tiny_lm`, a training loop that lets the caller
look at every gradient before the step, and a held-out loss.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..data.text import ByteTokenizer, python_source_text, sample_windows


@dataclass(frozen=True)
class LMSetting:
    """Size of the model and of the run: the fast one for tests, the full one for reproductions."""

    hidden: int
    layers: int
    seq_len: int
    batch: int
    num_bytes: int

    @property
    def rank(self) -> int:
        """The subspace rank the optimizer reproductions use: a quarter of the width."""
        return self.hidden // 4


def lm_setting(fast: bool) -> LMSetting:
    """The shared tiny-LM setting of the optimizer reproductions.

    Returns:
        hidden 64, 2 layers, 64-token windows, 400 kB of text when ``fast``; else hidden 128,
        4 layers, 128-token windows, 2 MB.
    """
    if fast:
        return LMSetting(hidden=64, layers=2, seq_len=64, batch=16, num_bytes=400_000)
    return LMSetting(hidden=128, layers=4, seq_len=128, batch=16, num_bytes=2_000_000)


@dataclass(frozen=True)
class LMData:
    """Token streams for training and a fixed set of held-out windows."""

    train: Tensor
    eval_windows: Tensor
    vocab_size: int


def lm_data(num_bytes: int, seq_len: int, num_eval: int = 64, seed: int = 0) -> LMData:
    """Python source as bytes: 90% for training, windows of the last 10% for evaluation.

    Returns:
        The :class:`LMData`.
    """
    tok = ByteTokenizer()
    ids = tok.encode(python_source_text(num_bytes, seed=seed))
    cut = int(0.9 * ids.numel())
    g = torch.Generator().manual_seed(seed + 1)
    windows = sample_windows(ids[cut:], num_eval, seq_len + 1, generator=g)
    return LMData(ids[:cut], windows, tok.vocab_size)


def build_lm(vocab_size: int, hidden: int, layers: int, seed: int) -> nn.Module:
    """A tiny Llama-style causal LM (eager attention, float32, deterministic init).

    Returns:
        The model.
    """
    from ..testing.tiny_lm import tiny_causal_lm

    return tiny_causal_lm(
        "llama", vocab_size=vocab_size, hidden=hidden, layers=layers, heads=4, seed=seed
    )


def _loss(model: nn.Module, windows: Tensor) -> Tensor:
    logits = model(input_ids=windows[:, :-1]).logits
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)
    )


@torch.no_grad()
def eval_loss(model: nn.Module, data: LMData) -> float:
    """Mean next-token cross-entropy on the held-out windows.

    Returns:
        The loss in nats per token.
    """
    was = model.training
    model.eval()
    loss = float(_loss(model, data.eval_windows))
    model.train(was)
    return loss


def train_lm(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: LMData,
    *,
    steps: int,
    batch_size: int,
    seq_len: int,
    seed: int,
    on_grad: Callable[[int], None] | None = None,
    step_times: list[float] | None = None,
) -> list[float]:
    """Train with the given optimizer; ``on_grad(step)`` runs after backward, before the step.

    ``step_times``, when given, receives the wall time of every ``optimizer.step()``.

    Returns:
        The training losses.
    """
    g = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for step in range(steps):
        windows = sample_windows(data.train, batch_size, seq_len + 1, generator=g)
        optimizer.zero_grad()
        loss = _loss(model, windows)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
        if on_grad is not None:
            on_grad(step)
        t0 = time.perf_counter()
        optimizer.step()
        if step_times is not None:
            step_times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    model.eval()
    return losses
