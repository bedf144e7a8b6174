"""PA&DA: jointly sampling paths and data by their gradient norms to train a supernet.

Lu, Hu, Yang, Sun, Mei, Tan & Song, "PA&DA: Jointly Sampling PAth and DAta for Consistent NAS"
(CVPR 2023, arXiv:2302.14772). The variance of the supernet's stochastic gradient is smallest when
paths and samples are drawn with probabilities proportional to their gradient norms, so PA&DA:

* **paths**: keeps, per candidate operation ``k``, a running importance ``s_k``: after each step,
  the summed norms of the gradients of ``k``'s parameters over the edges where the path uses
  ``k``, divided by how many edges use it, averaged into ``s_k`` (``s_k <- (s_k + new) / 2``;
  parameter-free operations keep ``s_k = 0``). At the end of an epoch every edge's operation
  probabilities become ``p = tau_e * s / sum(s) + (1 - tau_e) / K``;
* **data**: per training sample ``i``, the importance ``g_i = ||softmax(z_i) - onehot(y_i)||_2``
  (a cheap proxy, up to the last layer's input norm, of the per-sample gradient norm of the
  loss), averaged over the times ``i`` was drawn in the epoch (same running mean). The next
  epoch draws ``N`` indices with replacement from ``p_i = tau_e * g_i / sum(g) + (1 - tau_e) / N``
  (samples not drawn this epoch have ``g_i = 0``);
* both refreshed each epoch, with ``tau_e = tau * e / E`` at epoch ``e`` of ``E`` (the authors'
  code's linear warm-up from uniform sampling; ``schedule="constant"`` uses ``tau`` throughout).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .supernet import CellSupernet

__all__ = ["PADASampler", "data_importance"]


def data_importance(logits: Tensor, targets: Tensor) -> Tensor:
    """PA&DA's per-sample gradient-norm proxy ``||softmax(logits) - onehot(targets)||_2``.

    Args:
        logits: ``(n, classes)``.
        targets: ``(n,)`` class indices.

    Returns:
        ``(n,)`` importances.

    Example:
        >>> z = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
        >>> data_importance(z, torch.tensor([0, 0])).round(decimals=4).tolist()
        [0.7071, 0.0]
    """
    probs = F.softmax(logits.detach().double(), dim=1)
    return (probs - F.one_hot(targets, logits.shape[1]).double()).norm(dim=1)


class PADASampler:
    """Path and data importance sampling for :func:`~subspaces.nas.supernet.train_supernet`.

    Args:
        num_samples: training-set size ``N``.
        num_ops: operations per edge ``K``.
        num_edges: edges.
        tau: weight of the importance part, in ``[0, 1]`` (0 is uniform SPOS sampling).
        schedule: ``"linear"`` (``tau_e = tau * e / E``, the authors' code) or ``"constant"``.

    Raises:
        ValueError: for ``tau`` outside ``[0, 1]``, an unknown schedule or non-positive sizes.

    Example:
        >>> s = PADASampler(4, num_ops=3, num_edges=2, tau=0.5, schedule="constant")
        >>> s.observe_path((1, 1), np.array([0.0, 2.0, 0.0]))  # op 1 on both edges: 2 / 2
        >>> s.observe_data(torch.tensor([0, 1]), torch.tensor([3.0, 1.0]))
        >>> s.end_epoch(torch.Generator().manual_seed(0))
        >>> s.path_probs.tolist()  # 0.5 * [0, 1, 0] + 0.5 / 3
        [0.16666666666666666, 0.6666666666666666, 0.16666666666666666]
        >>> s.data_probs.tolist()  # 0.5 * [3, 1, 0, 0] / 4 + 0.5 / 4
        [0.5, 0.25, 0.125, 0.125]
    """

    def __init__(
        self,
        num_samples: int,
        num_ops: int = 5,
        num_edges: int = 4,
        *,
        tau: float = 1.0,
        schedule: Literal["linear", "constant"] = "linear",
    ) -> None:
        for name, value in (("num_samples", num_samples), ("num_ops", num_ops),
                            ("num_edges", num_edges)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must be a number in [0, 1], got {tau!r}")
        if schedule not in ("linear", "constant"):
            raise ValueError(f"schedule must be 'linear' or 'constant', got {schedule!r}")
        self.num_samples, self.num_ops, self.num_edges = num_samples, num_ops, num_edges
        self.tau, self.schedule = float(tau), schedule
        self.path_probs = np.full(num_ops, 1.0 / num_ops)
        self.data_probs = np.full(num_samples, 1.0 / num_samples)
        self.tau_e = 0.0 if schedule == "linear" else self.tau
        self._next_indices: Tensor | None = None
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self.op_importance = np.zeros(self.num_ops)
        self._seen_indices: list[Tensor] = []
        self._seen_values: list[Tensor] = []

    # ----- the Sampler protocol -----
    def begin_epoch(self, epoch: int, num_epochs: int, generator: torch.Generator) -> Tensor:
        """Set ``tau_e`` for the refresh at this epoch's end; return this epoch's indices."""
        self.tau_e = self.tau * epoch / num_epochs if self.schedule == "linear" else self.tau
        self._reset_epoch()
        if self._next_indices is None:
            return torch.randperm(self.num_samples, generator=generator)
        return self._next_indices

    def sample_path(self, generator: torch.Generator) -> tuple[int, ...]:
        """Draw each edge's operation independently from :attr:`path_probs`."""
        probs = torch.as_tensor(self.path_probs)
        ops = torch.multinomial(probs, self.num_edges, replacement=True, generator=generator)
        return tuple(int(i) for i in ops)

    def observe(
        self,
        supernet: CellSupernet,
        arch: tuple[int, ...],
        indices: Tensor,
        logits: Tensor,
        targets: Tensor,
    ) -> None:
        """Record the step's per-operation gradient norms and per-sample importances."""
        self.observe_path(arch, supernet.op_grad_norms(arch))
        self.observe_data(indices, data_importance(logits, targets))

    def end_epoch(self, generator: torch.Generator) -> None:
        """Refresh :attr:`path_probs`, :attr:`data_probs` and draw the next epoch's indices."""
        total = self.op_importance.sum()
        norm = self.op_importance / total if total > 0 else np.full(self.num_ops, 1 / self.num_ops)
        self.path_probs = self.tau_e * norm + (1 - self.tau_e) / self.num_ops
        g = np.zeros(self.num_samples)
        if self._seen_indices:
            idx = torch.cat(self._seen_indices).numpy()
            val = torch.cat(self._seen_values).numpy()
            for i, v in zip(idx, val, strict=True):  # running mean in drawing order
                g[i] = (g[i] + v) / 2 if g[i] != 0 else v
        g_norm = g / g.sum() if g.sum() > 0 else np.full(self.num_samples, 1 / self.num_samples)
        self.data_probs = self.tau_e * g_norm + (1 - self.tau_e) / self.num_samples
        self._next_indices = torch.multinomial(
            torch.as_tensor(self.data_probs), self.num_samples, replacement=True,
            generator=generator,
        )  # fmt: skip

    # ----- the two importance updates, exposed for tests and custom loops -----
    def observe_path(self, arch: Sequence[int], op_grad_norms: np.ndarray) -> None:
        """Average ``op_grad_norms[k] / count(k in arch)`` into ``op_importance[k]`` where > 0."""
        counts = np.bincount(np.asarray(arch), minlength=self.num_ops)
        for k in range(self.num_ops):
            if op_grad_norms[k] != 0.0 and counts[k] > 0:
                self.op_importance[k] = (self.op_importance[k] + op_grad_norms[k] / counts[k]) / 2

    def observe_data(self, indices: Tensor, importance: Tensor) -> None:
        """Record per-sample importances of the drawn ``indices``."""
        if not torch.isfinite(importance).all():
            raise FloatingPointError("non-finite per-sample importance (non-finite logits?)")
        self._seen_indices.append(indices.detach().cpu().long())
        self._seen_values.append(importance.detach().cpu().double())
