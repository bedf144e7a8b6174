"""A weight-sharing supernet of the cell space, trained by single-path sampling (SPOS).

Every edge holds all candidate operations; a forward pass runs one path (one operation per edge),
so every architecture of the space is a sub-network that *inherits* the supernet's weights. The
supernet is trained by sampling one path (and the data order) per step from a :class:`Sampler`:
:class:`UniformSampler` is SPOS (Guo et al., "Single path one-shot neural architecture search
with uniform sampling", arXiv:1904.00420); :class:`~subspaces.nas.pada.PADASampler` is PA&DA (Lu
et al., CVPR 2023, arXiv:2302.14772). :func:`train_supernet` also measures the supernet gradient
variance: per epoch, the trace of the covariance of the minibatch gradients over the epoch's steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .networks import CLASSES, IMAGE, CellNetwork, cell_forward, make_op
from .space import CELL_EDGES, CellSpace

__all__ = [
    "CellSupernet",
    "Sampler",
    "SupernetHistory",
    "UniformSampler",
    "inherited_accuracies",
    "train_supernet",
]


class CellSupernet(nn.Module):
    """All candidate operations on every edge; ``forward(x, arch)`` runs one path.

    Args:
        channels: cell width ``C``.
        space: the cell space.

    Example:
        >>> torch.manual_seed(0) and None
        >>> sn = CellSupernet()
        >>> arch = (3, 1, 2, 4)
        >>> net = sn.extract(arch)  # the standalone network with the path's weights
        >>> x = torch.randn(4, 1, 8, 8)
        >>> torch.equal(sn(x, arch), net(x))
        True
    """

    def __init__(self, channels: int = 8, space: CellSpace | None = None) -> None:
        super().__init__()
        self.space = space or CellSpace()
        self.channels = channels
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.edges = nn.ModuleList(
            nn.ModuleList(make_op(op, channels) for op in self.space.ops) for _ in CELL_EDGES
        )
        self.head = nn.Linear(channels * IMAGE * IMAGE, CLASSES)

    def path(self, arch: Sequence[int] | str) -> list[nn.Module]:
        """The operations of ``arch``, one per edge."""
        idx = self.space.validate(arch)
        return [self.edges[e][i] for e, i in enumerate(idx)]  # type: ignore[index]

    def forward(self, x: Tensor, arch: Sequence[int] | str) -> Tensor:
        """Logits of images ``x`` through the path ``arch``."""
        h = cell_forward(self.stem(x), self.path(arch))
        return self.head(F.relu(h).flatten(1))

    def extract(self, arch: Sequence[int] | str) -> CellNetwork:
        """The inherited-weight network of ``arch``.

        Returns:
            A standalone :class:`~subspaces.nas.networks.CellNetwork` holding copies of the
            path's weights.
        """
        idx = self.space.validate(arch)
        with torch.random.fork_rng(devices=[]):
            net = CellNetwork(idx, channels=self.channels, space=self.space)
        state = {}
        for name, value in self.state_dict().items():
            parts = name.split(".")
            key = name
            if parts[0] == "edges":
                e, i = int(parts[1]), int(parts[2])
                if idx[e] != i:
                    continue
                key = ".".join(["edges", parts[1], *parts[3:]])
            state[key] = value.clone()
        net.load_state_dict(state)
        return net

    def op_grad_norms(self, arch: Sequence[int]) -> np.ndarray:
        """Per operation, the summed gradient norms of its parameters on the path ``arch``.

        Returns:
            Per operation index, the sum of each parameter tensor's gradient 2-norm over the
            edges where ``arch`` uses it (0 for parameter-free and unused operations).
        """
        norms = np.zeros(len(self.space.ops))
        for e, i in enumerate(arch):
            for p in self.edges[e][i].parameters():  # type: ignore[index]
                if p.grad is not None:
                    norms[i] += float(p.grad.norm())
        return norms


class Sampler(Protocol):
    """What :func:`train_supernet` asks of a path/data sampler (:class:`UniformSampler`: SPOS).

    Example:
        A minimal conforming sampler: one fixed path, the data in order, counting the steps.

        >>> import torch
        >>> from subspaces.nas.networks import digits_images
        >>> from subspaces.nas.supernet import CellSupernet, train_supernet
        >>> class OnePath:
        ...     def __init__(self, n, arch):
        ...         self.n, self.arch, self.steps = n, arch, 0
        ...     def begin_epoch(self, epoch, num_epochs, generator):
        ...         return torch.arange(self.n)
        ...     def sample_path(self, generator):
        ...         return self.arch
        ...     def observe(self, supernet, arch, indices, logits, targets):
        ...         self.steps += 1
        ...     def end_epoch(self, generator):
        ...         pass
        >>> X, y, _, _ = digits_images()
        >>> torch.manual_seed(0) and None
        >>> sampler = OnePath(64, (3, 1, 2, 4))
        >>> h = train_supernet(CellSupernet(), X[:64], y[:64], sampler, epochs=2, batch_size=32)
        >>> sampler.steps, len(h.loss)  # 2 epochs of 64 / 32 steps
        (4, 2)
    """

    def begin_epoch(self, epoch: int, num_epochs: int, generator: torch.Generator) -> Tensor:
        """The epoch's sample indices, in order."""
        ...

    def sample_path(self, generator: torch.Generator) -> tuple[int, ...]:
        """One operation index per edge."""
        ...

    def observe(
        self,
        supernet: CellSupernet,
        arch: tuple[int, ...],
        indices: Tensor,
        logits: Tensor,
        targets: Tensor,
    ) -> None:
        """Called after each step's backward (gradients are available)."""
        ...

    def end_epoch(self, generator: torch.Generator) -> None:
        """Refresh the sampling probabilities."""
        ...


@dataclass
class UniformSampler:
    """SPOS: uniform operations on every edge, a fresh permutation of the data each epoch.

    Args:
        num_samples: training-set size.
        num_ops: operations per edge.
        num_edges: edges.

    Example:
        >>> import torch
        >>> from subspaces.nas.supernet import UniformSampler
        >>> sampler, g = UniformSampler(6), torch.Generator().manual_seed(0)
        >>> sorted(sampler.begin_epoch(0, 1, g).tolist())  # a permutation of the data
        [0, 1, 2, 3, 4, 5]
        >>> path = sampler.sample_path(g)
        >>> len(path), all(0 <= op < 5 for op in path)  # one of 5 operations on each of 4 edges
        (4, True)
    """

    num_samples: int
    num_ops: int = 5
    num_edges: int = 4

    def begin_epoch(self, epoch: int, num_epochs: int, generator: torch.Generator) -> Tensor:
        """A fresh permutation of the training set."""
        return torch.randperm(self.num_samples, generator=generator)

    def sample_path(self, generator: torch.Generator) -> tuple[int, ...]:
        """Uniform operations, independently per edge."""
        ops = torch.randint(self.num_ops, (self.num_edges,), generator=generator)
        return tuple(int(i) for i in ops)

    def observe(self, *args: Any) -> None:
        """Nothing to record."""
        return None

    def end_epoch(self, generator: torch.Generator) -> None:
        """Nothing to refresh."""
        return None


@dataclass
class SupernetHistory:
    """What :func:`train_supernet` recorded, one entry per epoch.

    Example:
        >>> import torch
        >>> from subspaces.nas.networks import digits_images
        >>> from subspaces.nas.supernet import CellSupernet, UniformSampler, train_supernet
        >>> X, y, _, _ = digits_images()
        >>> torch.manual_seed(0) and None
        >>> h = train_supernet(CellSupernet(), X[:64], y[:64], UniformSampler(64), epochs=2,
        ...                    batch_size=32, generator=torch.Generator().manual_seed(0))
        >>> len(h.loss), len(h.grad_variance), len(h.grad_sq_mean)
        (2, 2, 2)
        >>> all(v > 0 for v in h.grad_variance + h.grad_sq_mean)
        True
    """

    loss: list[float] = field(default_factory=list)
    grad_variance: list[float] = field(default_factory=list)
    """Trace of the covariance of the minibatch gradient (all parameters, unsampled operations
    count as zero) over the epoch's steps."""
    grad_sq_mean: list[float] = field(default_factory=list)
    """Squared norm of the epoch's mean gradient (to read the variance relative to it)."""


def train_supernet(
    supernet: CellSupernet,
    X: Tensor,
    y: Tensor,
    sampler: Sampler,
    *,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 2.5e-4,
    grad_clip: float = 5.0,
    generator: torch.Generator | None = None,
) -> SupernetHistory:
    """Train ``supernet`` by single-path sampling (SGD with cosine decay, PA&DA's recipe).

    Each step samples a path from ``sampler``, computes the mean cross-entropy of the minibatch,
    back-propagates, records the gradient (for the variance), clips the gradient norm to
    ``grad_clip``, lets the sampler observe the step, and updates.

    Args:
        supernet: the supernet (trained in place).
        X: images ``(n, 1, 8, 8)``.
        y: labels ``(n,)``.
        sampler: path and data sampler (:class:`UniformSampler` for SPOS).
        epochs: passes (each of ``len(indices)`` samples as the sampler returns them).
        batch_size: minibatch size.
        lr: initial SGD learning rate (cosine-annealed to 0 over ``epochs``).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        grad_clip: maximal gradient norm.
        generator: randomness of paths and data order.

    Returns:
        Per-epoch loss and gradient variance.

    Raises:
        ValueError: for mismatched ``X``/``y`` or a non-positive hyperparameter.
        FloatingPointError: if the loss becomes non-finite.

    Example:
        >>> from subspaces.nas.networks import digits_images
        >>> Xtr, ytr, _, _ = digits_images()
        >>> torch.manual_seed(0) and None
        >>> sn = CellSupernet()
        >>> h = train_supernet(sn, Xtr[:256], ytr[:256], UniformSampler(256), epochs=2)
        >>> len(h.loss), h.loss[1] < h.loss[0], h.grad_variance[0] > 0
        (2, True, True)
    """
    if X.ndim != 4 or len(X) != len(y) or len(y) == 0:
        raise ValueError(
            f"X must be (n, 1, 8, 8) images and y (n,) labels with n > 0, got "
            f"{tuple(X.shape)} and {tuple(y.shape)}"
        )
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not lr > 0 or not grad_clip > 0:
        raise ValueError(f"lr and grad_clip must be > 0, got {lr} and {grad_clip}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    params = [p for p in supernet.parameters()]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    history = SupernetHistory()
    supernet.train()
    for epoch in range(epochs):
        order = sampler.begin_epoch(epoch, epochs, gen)
        g_sum = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
        g_sq = torch.zeros_like(g_sum)
        losses = []
        steps = 0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            arch = sampler.sample_path(gen)
            opt.zero_grad(set_to_none=False)
            logits = supernet(X[idx], arch)
            loss = F.cross_entropy(logits, y[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite supernet loss {float(loss.detach())} at epoch {epoch}"
                )
            loss.backward()
            g = torch.cat(
                [torch.zeros(p.numel()) if p.grad is None else p.grad.reshape(-1) for p in params]
            ).double()
            g_sum += g
            g_sq += g * g
            steps += 1
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            sampler.observe(supernet, arch, idx, logits.detach(), y[idx])
            opt.step()
            losses.append(loss.detach())
        mean = g_sum / steps
        history.loss.append(float(torch.stack(losses).mean()))
        history.grad_variance.append(float((g_sq / steps - mean * mean).sum()))
        history.grad_sq_mean.append(float(mean @ mean))
        sampler.end_epoch(gen)
        sched.step()
    return history


@torch.no_grad()
def inherited_accuracies(
    supernet: CellSupernet, archs: Sequence[Sequence[int] | str], X: Tensor, y: Tensor
) -> np.ndarray:
    """Accuracy of each architecture with the weights it inherits from ``supernet``.

    Args:
        supernet: a trained supernet.
        archs: architectures of its space.
        X: evaluation images.
        y: their labels.

    Returns:
        One accuracy per architecture.

    Example:
        >>> sn = CellSupernet()
        >>> X, y = torch.zeros(4, 1, 8, 8), torch.arange(4)
        >>> accs = inherited_accuracies(sn, [(0, 0, 0, 0)], X, y)
        >>> accs.shape
        (1,)
    """
    was_training = supernet.training
    supernet.eval()
    try:
        # the same operations as ``supernet(X, a)`` per architecture (same bits), with the stem
        # and the outputs of the first three edges, shared by many paths, computed once each
        idx = [supernet.space.validate(a) for a in archs]
        edges = supernet.edges
        stem = supernet.stem(X)
        n1: dict[int, Tensor] = {}
        e02: dict[int, Tensor] = {}
        e12: dict[tuple[int, int], Tensor] = {}
        out = []
        for i01, i02, i12, i23 in idx:
            if i01 not in n1:
                n1[i01] = edges[0][i01](stem)  # type: ignore[index]
            if i02 not in e02:
                e02[i02] = edges[1][i02](stem)  # type: ignore[index]
            if (i01, i12) not in e12:
                e12[i01, i12] = edges[2][i12](n1[i01])  # type: ignore[index]
            h = edges[3][i23](e02[i02] + e12[i01, i12])  # type: ignore[index]
            logits = supernet.head(F.relu(h).flatten(1))
            out.append(float((logits.argmax(1) == y).double().mean()))
    finally:
        supernet.train(was_training)
    return np.array(out)
