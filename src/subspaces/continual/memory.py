r"""Gradient Projection Memory (GPM): per layer, an orthonormal basis of past tasks' inputs.

Saha, Garg & Roy, "Gradient Projection Memory for Continual Learning" (ICLR 2021). For a linear
map ``y = W x`` (``nn.Linear``, or ``nn.Conv2d`` acting on its unfolded input patches), a weight
update ``dW`` changes the output on an input ``x`` by ``dW x``; if every row of ``dW`` is
orthogonal to the span of the past tasks' inputs, their outputs do not change at all. GPM keeps,
per layer, a basis ``M`` (``d x k``) of the subspace that holds almost all of the past inputs'
energy, and trains later tasks with gradients projected as ``G <- G - (G M) M^T``
(:class:`~subspaces.continual.ProjectedOptimizer`).

After each task, with ``R`` (``d x n``) the layer inputs of ``n`` training samples as columns
(patches for a convolution, :func:`layer_representation`) and the energy threshold
``eps in (0, 1)``:

- first task: ``R = U S V^T``; ``M = U[:, :k]`` with the smallest ``k`` such that
  ``sum_{i<=k} s_i^2 >= eps ||R||_F^2`` (Eq. 5 of the paper);
- later tasks: ``R_hat = R - M M^T R``, ``R_hat = U' S' V'^T``; add the first ``r`` columns of
  ``U'`` with the smallest ``r`` such that
  ``||R||^2 - ||R_hat||^2 + sum_{i<=r} s'_i^2 >= eps ||R||^2`` (Eq. 8-9), i.e. only as many new
  directions as the part of the new inputs that the memory does not already hold needs.

Each task also gets its own basis (used by the TRGP trust-region test and CUBER's regime test,
:mod:`subspaces.continual.trgp`, :mod:`subspaces.continual.cuber`): following the TRGP reference
code, the columns of the updated memory ``[M, U'_r]`` with the largest energies
``||m_i^T R||^2`` until they hold ``eps ||R||^2``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_finite, check_float_tensor
from .._io import read_checkpoint, write_checkpoint
from ..linalg.subspace import Subspace

__all__ = [
    "GPMMemory",
    "collect_representations",
    "flat_weight",
    "layer_representation",
]

_KIND = "subspaces.continual.GPMMemory"
_VERSION = 1


def _check_layer(module: nn.Module, name: str) -> None:
    if isinstance(module, nn.Linear):
        return
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ValueError(
                f"layer {name!r}: grouped convolutions (groups={module.groups}) are "
                "not supported; the memory needs one input space per layer"
            )
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            raise ValueError(
                f"layer {name!r}: padding={module.padding!r}, padding_mode="
                f"{module.padding_mode!r} are not supported; use integer zero padding"
            )
        return
    raise TypeError(
        f"layer {name!r} is a {type(module).__name__}; GPM supports nn.Linear and nn.Conv2d"
    )


def layer_representation(module: nn.Module, inputs: Tensor) -> Tensor:
    """The input vectors a Linear or Conv2d layer multiplies by its weight, as columns.

    ``nn.Linear``: every input row (leading dimensions flattened), ``(in_features, N)``.
    ``nn.Conv2d``: every input patch, by :func:`torch.nn.functional.unfold` with the layer's
    kernel size, dilation, padding and stride, ``(C_in * kh * kw, N * L)`` in the order of
    ``weight.reshape(out, -1)``, so that the layer output is ``W_flat @ R`` (plus bias).

    Args:
        module: an ``nn.Linear`` or ``nn.Conv2d`` (``groups=1``, integer zero padding).
        inputs: what the layer receives in its forward call.

    Returns:
        ``R`` with one input vector per column.

    Raises:
        TypeError: for another kind of layer or a non-floating input.
        ValueError: for an input whose last dimension (Linear) or channels (Conv2d) do not match.

    Example:
        >>> conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        >>> x = torch.randn(4, 2, 5, 5)
        >>> R = layer_representation(conv, x)
        >>> R.shape
        torch.Size([18, 100])
        >>> out = flat_weight(conv) @ R  # (3, 4 * 25)
        >>> torch.allclose(out.reshape(3, 4, 25).transpose(0, 1), conv(x).flatten(2), atol=1e-5)
        True
    """
    _check_layer(module, type(module).__name__)
    x = check_float_tensor(inputs, "inputs")
    if isinstance(module, nn.Linear):
        if x.ndim < 1 or x.shape[-1] != module.in_features:
            raise ValueError(
                f"inputs of an nn.Linear({module.in_features}, ...) must end in "
                f"{module.in_features} features, got shape {tuple(x.shape)}"
            )
        return x.reshape(-1, module.in_features).T
    assert isinstance(module, nn.Conv2d)  # _check_layer
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] != module.in_channels:
        raise ValueError(
            f"inputs of an nn.Conv2d({module.in_channels}, ...) must be (N, {module.in_channels}, "
            f"H, W), got shape {tuple(x.shape)}"
        )
    padding = module.padding
    assert not isinstance(padding, str)  # _check_layer
    patches = nn.functional.unfold(
        x,
        kernel_size=module.kernel_size,
        dilation=module.dilation,
        padding=padding,
        stride=module.stride,
    )  # (N, C*kh*kw, L)
    return patches.transpose(0, 1).reshape(patches.shape[1], -1)


def flat_weight(module: nn.Module) -> Tensor:
    """The weight of a Linear or Conv2d layer as the matrix ``(out, d)`` acting on its inputs.

    Args:
        module: an ``nn.Linear`` or ``nn.Conv2d``.

    Returns:
        A view of ``module.weight`` of shape ``(out, d)``.

    Raises:
        TypeError: if the module has no weight tensor.

    Example:
        >>> flat_weight(nn.Conv2d(2, 3, 3)).shape
        torch.Size([3, 18])
    """
    weight = module.weight
    if not isinstance(weight, Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return weight.reshape(weight.shape[0], -1)


@contextmanager
def _capture_inputs(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, list[Tensor]]]:
    modules = dict(model.named_modules())
    captured: dict[str, list[Tensor]] = {name: [] for name in layers}
    handles = []
    try:
        for name in layers:

            def hook(module: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
                captured[name].append(args[0].detach())

            handles.append(modules[name].register_forward_pre_hook(hook))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def collect_representations(
    model: nn.Module,
    inputs: Tensor,
    layers: Sequence[str],
    *,
    forward: Any = None,
) -> dict[str, Tensor]:
    """Run ``model`` on ``inputs`` and return each layer's representation matrix ``R``.

    Hooks are installed for the one forward pass only; the model runs in eval mode under
    ``torch.no_grad()`` and gets its training flag back afterwards.

    Args:
        model: the network.
        inputs: a batch of inputs (GPM uses a few hundred random training samples).
        layers: names from ``model.named_modules()`` of Linear or Conv2d layers.
        forward: optional callable ``forward(inputs)`` used instead of ``model(inputs)`` (e.g.
            a TRGP scaled forward); it must call the layers of ``model``.

    Returns:
        ``{layer: R}`` with ``R`` from :func:`layer_representation`.

    Raises:
        ValueError: for an unknown or repeated layer name, or a layer that was not called.
        TypeError: for a layer that is not Linear or Conv2d.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> R = collect_representations(net, torch.randn(10, 4), ["0", "2"])
        >>> R["0"].shape, R["2"].shape
        (torch.Size([4, 10]), torch.Size([3, 10]))
    """
    names = list(layers)
    modules = dict(model.named_modules())
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"layers must be distinct, non-empty module names, got {names!r}")
    for name in names:
        if name not in modules:
            known = [n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))]
            raise ValueError(f"unknown layer {name!r}; Linear/Conv2d layers of the model: {known}")
        _check_layer(modules[name], name)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _capture_inputs(model, names) as captured:
            (forward or model)(inputs)
    finally:
        model.train(was_training)
    out = {}
    for name in names:
        if not captured[name]:
            raise ValueError(f"layer {name!r} was not called in the forward pass")
        out[name] = torch.cat(
            [layer_representation(modules[name], x) for x in captured[name]], dim=1
        )
    return out


def _smallest_reaching(cumulative: Tensor, target: float) -> int:
    """The smallest ``k`` with ``cumulative[k-1] >= target`` (``len`` if never reached)."""
    reached = torch.nonzero(cumulative >= target)
    return int(reached[0]) + 1 if reached.numel() else cumulative.numel()


def _check_threshold(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in (0, 1), got {type(value).__name__}")
    value = float(value)
    if not (0.0 < value < 1.0) or math.isnan(value):
        raise ValueError(f"{name} must be in (0, 1) (a share of the input energy), got {value}")
    return value


class GPMMemory:
    """GPM's per-layer memory: orthonormal bases of the inputs of the tasks learned so far.

    Args:
        threshold: the energy threshold ``eps in (0, 1)``, one number for every layer or a
            mapping ``{layer: eps}`` (GPM's PMNIST setting: ``0.95`` for the first layer and
            ``0.99`` for the others). :meth:`update` can override it per task (GPM raises it
            with the task index on CIFAR-100: ``0.97 + 0.003 t``).

    Attributes:
        bases_: ``{layer: M}``, ``M`` of shape ``(d, k)`` with orthonormal columns.
        task_bases_: one ``{layer: S_j}`` per task, ``S_j`` (``d x k_j``) orthonormal columns
            spanning task ``j``'s important input directions (each inside ``bases_``).
        history_: one ``{layer: (k, d)}`` per task: the memory dimension after that task over
            the layer's input dimension.

    Raises:
        ValueError: for a threshold outside (0, 1).
        TypeError: for a threshold that is not a number or a mapping of numbers.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> R = torch.randn(6, 2, generator=g, dtype=torch.float64) @ torch.randn(
        ...     2, 50, generator=g, dtype=torch.float64)
        >>> memory = GPMMemory(threshold=0.99).update({"fc": R})
        >>> memory.history_
        [{'fc': (2, 6)}]
        >>> M = memory.bases_["fc"]
        >>> bool(torch.linalg.norm(R - M @ (M.T @ R)) < 1e-12 * torch.linalg.norm(R))
        True
    """

    def __init__(self, threshold: float | Mapping[str, float] = 0.97) -> None:
        self.threshold = self._checked_threshold(threshold, "threshold")
        self.bases_: dict[str, Tensor] = {}
        self.task_bases_: list[dict[str, Tensor]] = []
        self.history_: list[dict[str, tuple[int, int]]] = []
        self.version = 0

    @staticmethod
    def _checked_threshold(
        threshold: float | Mapping[str, float], name: str
    ) -> float | dict[str, float]:
        if isinstance(threshold, Mapping):
            if not threshold:
                raise ValueError(f"{name} mapping is empty; give {{layer: eps}} or one number")
            return {str(k): _check_threshold(v, f"{name}[{k!r}]") for k, v in threshold.items()}
        return _check_threshold(threshold, name)

    def _threshold_for(self, layer: str, threshold: float | dict[str, float]) -> float:
        if isinstance(threshold, dict):
            if layer not in threshold:
                raise ValueError(
                    f"no threshold for layer {layer!r}; the threshold mapping has "
                    f"{sorted(threshold)}"
                )
            return threshold[layer]
        return threshold

    @property
    def num_tasks(self) -> int:
        """The number of tasks stored (calls of :meth:`update`)."""
        return len(self.task_bases_)

    @property
    def layers(self) -> list[str]:
        """The layers the memory holds, in the order they were first given."""
        return list(self.bases_)

    def update(
        self,
        representations: Mapping[str, Tensor],
        threshold: float | Mapping[str, float] | None = None,
    ) -> GPMMemory:
        """Add one finished task: grow each layer's basis by the new directions it needs.

        Args:
            representations: ``{layer: R}``, ``R`` (``d x n``) the layer inputs as columns (from
                :func:`collect_representations`). Every task must give the same layers with the
                same ``d``.
            threshold: this task's energy threshold (default: the constructor's).

        Returns:
            ``self``.

        Raises:
            ValueError: for NaN/Inf, an empty matrix, a changed layer set or input dimension, or
                a threshold outside (0, 1).
            TypeError: for a non-floating or non-2-D ``R``.
        """
        if not isinstance(representations, Mapping) or not representations:
            raise ValueError(
                "representations must be a non-empty mapping {layer: R (d x n)}, got "
                f"{type(representations).__name__}"
            )
        eps_all = (
            self.threshold if threshold is None else self._checked_threshold(threshold, "threshold")
        )
        if self.bases_ and set(representations) != set(self.bases_):
            raise ValueError(
                f"representations cover layers {sorted(representations)}, but the memory holds "
                f"{sorted(self.bases_)}; every task must give the same layers"
            )
        checked: dict[str, tuple[Tensor, float]] = {}
        for layer, given in representations.items():
            R = check_finite(
                check_float_tensor(given, f"representations[{layer!r}]", ndim=2),
                f"representations[{layer!r}]",
            )
            if R.shape[0] == 0 or R.shape[1] == 0:
                raise ValueError(
                    f"representations[{layer!r}] is empty (shape {tuple(R.shape)}); "
                    "need d x n with d, n >= 1"
                )
            old = self.bases_.get(layer)
            if old is not None and old.shape[0] != R.shape[0]:
                raise ValueError(
                    f"representations[{layer!r}] has input dimension {R.shape[0]}, but the "
                    f"memory of that layer has dimension {old.shape[0]}"
                )
            checked[str(layer)] = (R, self._threshold_for(str(layer), eps_all))
        task: dict[str, Tensor] = {}
        for layer, (R, eps) in checked.items():  # nothing changes before all is validated
            basis, own = self._update_layer(self.bases_.get(layer), R, eps)
            self.bases_[layer] = basis
            task[layer] = own
        self.task_bases_.append(task)
        self.history_.append(
            {k: (int(v.shape[1]), int(v.shape[0])) for k, v in self.bases_.items()}
        )
        self.version += 1
        return self

    @staticmethod
    def _update_layer(M: Tensor | None, R: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        work = R.to(torch.promote_types(R.dtype, torch.float32))
        d = work.shape[0]
        total = float(torch.linalg.matrix_norm(work.double()) ** 2)
        M = work.new_zeros(d, 0) if M is None else M.to(work.dtype)
        if total == 0.0:
            return M, M[:, :0]
        k = M.shape[1]
        residual = work - M @ (M.T @ work) if k else work
        if k < d:
            U, s, _ = torch.linalg.svd(residual, full_matrices=False)
            captured = total - float(torch.linalg.matrix_norm(residual.double()) ** 2)
            if captured >= eps * total:
                r = 0
            else:
                cumulative = captured + torch.cumsum(s.double() ** 2, 0)
                r = min(_smallest_reaching(cumulative, eps * total), d - k)
            if r:
                new = U[:, :r]
                if k:  # one more Gram-Schmidt pass keeps [M, new] orthonormal to rounding
                    new = new - M @ (M.T @ new)
                new = torch.linalg.qr(new).Q
                M = torch.cat([M, new], dim=1)
        # the task's own basis: the memory's columns holding the most of this task's energy
        energy = ((M.T @ work).double() ** 2).sum(1)
        order = torch.argsort(energy, descending=True)
        j = _smallest_reaching(torch.cumsum(energy[order], 0), eps * total)
        own = M[:, order[:j]]
        return M.contiguous(), own.contiguous()

    def basis(self, layer: str) -> Tensor | None:
        """The memory basis ``M`` (``d x k``) of ``layer``, or ``None`` if it holds nothing.

        Args:
            layer: a layer name.

        Returns:
            The basis or ``None`` (no task stored, or no direction kept for this layer).
        """
        M = self.bases_.get(layer)
        return None if M is None or M.shape[1] == 0 else M

    def subspace(self, layer: str) -> Subspace:
        """The memory of ``layer`` as a :class:`~subspaces.linalg.subspace.Subspace`.

        Args:
            layer: a layer whose memory is not empty.

        Returns:
            The subspace spanned by the stored basis.

        Raises:
            ValueError: if the layer holds no direction.
        """
        M = self.basis(layer)
        if M is None:
            raise ValueError(f"the memory of layer {layer!r} is empty (layers: {self.layers})")
        return Subspace(M)

    def dim_ratios(self) -> list[dict[str, float]]:
        """Per task, each layer's memory dimension over its input dimension (``k / d``).

        Returns:
            One ``{layer: k / d}`` per stored task (GPM's "gradient constraints summary").
        """
        return [{k: a / b for k, (a, b) in h.items()} for h in self.history_]

    # ----- persistence ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the memory (tensors, numbers, strings, lists, dicts).

        Returns:
            A dict that loads with ``torch.load(..., weights_only=True)``.
        """
        threshold: Any = (
            dict(self.threshold) if isinstance(self.threshold, dict) else self.threshold
        )
        return {
            "threshold": threshold,
            "bases": {k: v.clone() for k, v in self.bases_.items()},
            "task_bases": [{k: v.clone() for k, v in t.items()} for t in self.task_bases_],
            "history": [{k: list(v) for k, v in h.items()} for h in self.history_],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> GPMMemory:
        """Restore what :meth:`state_dict` returned.

        Args:
            state: a state dict of a :class:`GPMMemory`.

        Returns:
            ``self``.

        Raises:
            ValueError: for a state dict that is not one of a GPM memory or whose bases are not
                orthonormal.
        """
        missing = {"threshold", "bases", "task_bases", "history"} - set(state)
        if missing:
            raise ValueError(f"not a GPMMemory state dict: missing {sorted(missing)}")
        threshold = self._checked_threshold(state["threshold"], "state['threshold']")
        bases = {str(k): v for k, v in state["bases"].items()}
        for k, v in bases.items():
            check_finite(
                check_float_tensor(v, f"state['bases'][{k!r}]", ndim=2), f"state['bases'][{k!r}]"
            )
            if v.shape[1]:
                Subspace(v)  # raises unless orthonormal
        task_bases = [{str(k): v for k, v in t.items()} for t in state["task_bases"]]
        history = [{str(k): (int(v[0]), int(v[1])) for k, v in h.items()} for h in state["history"]]
        if len(history) != len(task_bases):
            raise ValueError(
                f"state has {len(task_bases)} task bases but {len(history)} history rows"
            )
        self.threshold = threshold
        self.bases_, self.task_bases_, self.history_ = bases, task_bases, history
        self.version += 1
        return self

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the memory to ``path`` atomically, as a verified subspaces checkpoint.

        Args:
            path: destination file.

        Returns:
            The path written.
        """
        return write_checkpoint(
            path, self.state_dict(), kind=_KIND, version=_VERSION, identity="gpm-memory"
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GPMMemory:
        """Read a memory written by :meth:`save` (checksum verified, ``weights_only`` load).

        Args:
            path: the file.

        Returns:
            The memory.

        Raises:
            subspaces._io.CheckpointError: for a damaged, truncated or foreign file.
        """
        payload = read_checkpoint(path, kind=_KIND, version=_VERSION).payload
        threshold = payload.get("threshold", 0.97)
        return cls(threshold).load_state_dict(payload)

    def __repr__(self) -> str:
        dims = ", ".join(f"{k}: {v.shape[1]}/{v.shape[0]}" for k, v in self.bases_.items())
        return f"GPMMemory(tasks={self.num_tasks}, {dims or 'empty'})"
