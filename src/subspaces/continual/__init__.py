"""Continual learning by gradient projection: GPM, TRGP and CUBER, and their metrics.

A network learns tasks one after another. :class:`GPMMemory` keeps, per Linear/Conv2d layer, an
orthonormal basis of the inputs of the tasks learned so far (Saha et al., ICLR 2021);
:class:`ProjectedOptimizer` wraps any torch optimizer and projects each layer's weight gradient
off that basis before ``step``, so the outputs on the old inputs do not move. TRGP (Lin et al.,
ICLR 2022, :mod:`~subspaces.continual.trgp`) selects the old tasks whose subspaces matter for the
new one and learns a scaled weight projection for them; CUBER (Lin et al., NeurIPS 2022,
:mod:`~subspaces.continual.cuber`) releases the subspaces of positively correlated old tasks so
that learning the new task also improves them (backward transfer). :class:`AccuracyMatrix`,
:func:`average_accuracy`, :func:`backward_transfer` and :func:`forgetting` summarise a run.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from subspaces.continual import GPMMemory, ProjectedOptimizer, collect_representations
    >>> net = nn.Sequential(nn.Linear(8, 4, bias=False))
    >>> x_old = torch.randn(20, 2) @ torch.randn(2, 8)  # task 1 inputs span 2 dimensions
    >>> memory = GPMMemory(0.99).update(collect_representations(net, x_old, ["0"]))
    >>> opt = ProjectedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), net, memory)
    >>> before = net(x_old).detach()
    >>> net(torch.randn(16, 8)).pow(2).sum().backward()  # a step of "task 2"
    >>> opt.step()
    >>> bool((net(x_old) - before).abs().max() < 1e-4)
    True
"""

from __future__ import annotations

from .cuber import Regime, layer_regimes, regime, transfer_basis
from .memory import GPMMemory, collect_representations, flat_weight, layer_representation
from .metrics import AccuracyMatrix, average_accuracy, backward_transfer, forgetting
from .projected import ProjectedOptimizer, project_gradient
from .trgp import ScaledProjection, projection_ratio, projection_ratios, trust_region

__all__ = [
    "AccuracyMatrix",
    "GPMMemory",
    "ProjectedOptimizer",
    "Regime",
    "ScaledProjection",
    "average_accuracy",
    "backward_transfer",
    "collect_representations",
    "flat_weight",
    "forgetting",
    "layer_regimes",
    "layer_representation",
    "project_gradient",
    "projection_ratio",
    "projection_ratios",
    "regime",
    "transfer_basis",
    "trust_region",
]
