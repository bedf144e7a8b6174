"""Real memory of weights and optimizer state: bytes of the storages, shared ones counted once.

Memory claims of low-rank and quantized optimizers (GaLore: "up to 65.5 % less optimizer-state
memory"; Q-GaLore: INT4 projections and INT8 weights) are statements about bytes per parameter.
These helpers measure them from the tensors themselves: every tensor is charged for the
``untyped_storage().nbytes()`` of its storage (what the allocator actually holds, so a small view
of a large buffer counts the whole buffer), and tensors that share a storage are counted once.

References:
    Zhao, Zhang, Chen, Wang, Anandkumar, Tian. "GaLore: Memory-Efficient LLM Training by
    Gradient Low-Rank Projection." ICML 2024.

    Zhang, Jaiswal, Yin, Liu, Zhao, Tian, Wang. "Q-GaLore: Quantized GaLore with INT4 Projection
    and Layer-Adaptive Low-Rank Gradients." arXiv:2407.08296, 2024.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["MemoryReport", "memory_report", "model_bytes", "optimizer_state_bytes", "tensor_bytes"]


def _storage_key_and_bytes(t: Tensor) -> tuple[tuple[Any, ...], int]:
    """Identity of ``t``'s storage and its size in bytes."""
    if t.layout == torch.strided:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensor subclasses without a plain storage
            pass
        else:
            nbytes = int(storage.nbytes())
            ptr = storage.data_ptr() if t.device.type != "meta" else 0
            if ptr == 0:  # empty or meta storage: nothing to share, key by the object itself
                return ("obj", id(storage), id(t)), nbytes
            return ("ptr", str(t.device), ptr), nbytes
    if t.layout == torch.sparse_coo:
        parts = (t._indices(), t._values())
        total = sum(_storage_key_and_bytes(p)[1] for p in parts)
        return ("obj", id(t)), total
    return ("obj", id(t)), t.numel() * t.element_size()


def _iter_tensors(obj: Any, seen: set[int] | None = None) -> Iterator[Tensor]:
    """Every tensor inside nested dicts, lists, tuples, sets and plain objects' attributes.

    Plain Python objects are walked through ``vars()``, so that tensors held by an object kept in
    optimizer state (GaLore's ``projector``, whose ``ortho_matrix`` is the basis) are counted.
    """
    seen = set() if seen is None else seen
    if isinstance(obj, Tensor):
        yield obj
        return
    if isinstance(obj, (str, bytes, int, float, complex, bool, type(None), type, ModuleType)):
        return
    if callable(obj) and not isinstance(obj, nn.Module):
        return
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Mapping):
        for value in obj.values():
            yield from _iter_tensors(value, seen)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for value in obj:
            yield from _iter_tensors(value, seen)
    elif hasattr(obj, "__dict__"):
        yield from _iter_tensors(vars(obj), seen)


def tensor_bytes(tensors: Tensor | Iterable[Tensor]) -> int:
    """Bytes of the storages behind one tensor or a collection of tensors, each storage once.

    A tensor is charged for its whole storage (``untyped_storage().nbytes()``), not for its
    ``numel() * element_size()``: a view keeps its base alive. Storages are identified by device
    and data pointer, so views and aliases of one buffer count once. Used to measure optimizer
    state in bytes per parameter, the memory figure of GaLore (Zhao et al. 2024) and Q-GaLore
    (Zhang et al. 2024).

    Args:
        tensors: a tensor, or an iterable of tensors (nested lists/tuples/dicts are walked).

    Returns:
        Total bytes.

    Raises:
        TypeError: if ``tensors`` is neither a tensor nor an iterable.

    Example:
        >>> t = torch.zeros(10)
        >>> tensor_bytes(t), tensor_bytes(t[2:5]), tensor_bytes([t, t[2:5], t.view(2, 5)])
        (40, 40, 40)
        >>> tensor_bytes([torch.zeros(10), torch.zeros(3, dtype=torch.uint8)])
        43
    """
    if isinstance(tensors, Tensor):
        items: Iterable[Any] = [tensors]
    elif isinstance(tensors, Iterable):
        items = tensors
    else:
        raise TypeError(
            f"tensors must be a Tensor or an iterable of tensors, got {type(tensors).__name__}"
        )
    seen: set[tuple[Any, ...]] = set()
    total = 0
    for t in _iter_tensors(list(items)):
        key, nbytes = _storage_key_and_bytes(t)
        if key not in seen:
            seen.add(key)
            total += nbytes
    return total


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in ``optimizer.state`` (moments, bases, step counters...).

    Walks the per-parameter state dicts, the containers nested in them and the attributes of
    plain Python objects stored there (GaLore keeps its projection matrix inside a
    ``GaLoreProjector`` object in the state); storages shared by several entries count once.
    Parameters and gradients are not state and are not counted; neither are caches an optimizer
    keeps outside ``optimizer.state``.

    Args:
        optimizer: any ``torch.optim.Optimizer``.

    Returns:
        Total bytes of the state tensors (0 before the first step).

    Raises:
        TypeError: if ``optimizer`` is not a ``torch.optim.Optimizer``.

    Example:
        >>> w = nn.Parameter(torch.zeros(100, 10))
        >>> opt = torch.optim.AdamW([w])
        >>> w.grad = torch.ones_like(w); opt.step()
        >>> optimizer_state_bytes(opt)  # exp_avg + exp_avg_sq (float32) + a float32 step
        8004
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    return tensor_bytes(list(optimizer.state.values()))


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers, shared (tied) storages counted once.

    An :class:`~subspaces.optim.quantization.Int8Linear` weight counts 1 byte per entry plus its
    scale and zero-point buffers, as the INT8 weights of Q-GaLore (Zhang et al. 2024).

    Args:
        model: the model.

    Returns:
        Total bytes.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.

    Example:
        >>> model_bytes(nn.Linear(10, 5))  # (50 + 5) float32
        220
        >>> model_bytes(nn.BatchNorm1d(4))  # 2 params, 2 float buffers, int64 counter
        72
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return tensor_bytes([*model.parameters(), *model.buffers()])


@dataclass(frozen=True)
class MemoryReport:
    """Weights and optimizer state in bytes and bytes per parameter (see :func:`memory_report`).

    Attributes:
        num_parameters: entries of the model's distinct parameters.
        weight_bytes: bytes of parameters and buffers (:func:`model_bytes`).
        optimizer_state_bytes: bytes of the optimizer state (:func:`optimizer_state_bytes`).

    Example:
        AdamW keeps two float32 moments per parameter (plus a 4-byte step count per tensor):

        >>> import torch
        >>> from subspaces.optim import memory_report
        >>> model = torch.nn.Linear(100, 10, bias=False)
        >>> opt = torch.optim.AdamW(model.parameters())
        >>> model(torch.ones(2, 100)).sum().backward(); opt.step()
        >>> print(memory_report(model, opt))
                                   bytes        MiB   B/param
        weights                    4,000       0.00     4.000
        optimizer state            8,004       0.01     8.004
        total                     12,004       0.01    12.004
        parameters: 1,000
    """

    num_parameters: int
    weight_bytes: int
    optimizer_state_bytes: int

    @property
    def weight_bytes_per_param(self) -> float:
        """Weight bytes divided by the number of parameters (``nan`` for an empty model)."""
        return self.weight_bytes / self.num_parameters if self.num_parameters else float("nan")

    @property
    def optimizer_bytes_per_param(self) -> float:
        """Optimizer state bytes per parameter (``nan`` for an empty model)."""
        if not self.num_parameters:
            return float("nan")
        return self.optimizer_state_bytes / self.num_parameters

    @property
    def total_bytes(self) -> int:
        """Weights plus optimizer state."""
        return self.weight_bytes + self.optimizer_state_bytes

    def __str__(self) -> str:
        rows = [
            ("weights", self.weight_bytes, self.weight_bytes_per_param),
            ("optimizer state", self.optimizer_state_bytes, self.optimizer_bytes_per_param),
            (
                "total",
                self.total_bytes,
                self.weight_bytes_per_param + self.optimizer_bytes_per_param,
            ),
        ]
        lines = [
            f"{'':<16} {'bytes':>15} {'MiB':>10} {'B/param':>9}",
            *(f"{name:<16} {b:>15,} {b / 2**20:>10.2f} {bpp:>9.3f}" for name, b, bpp in rows),
            f"parameters: {self.num_parameters:,}",
        ]
        return "\n".join(lines)


def memory_report(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> MemoryReport:
    """Measure the weights of ``model`` and the state of ``optimizer`` in bytes per parameter.

    The figure of merit of GaLore (Zhao et al. 2024) and Q-GaLore (Zhang et al. 2024): fp32
    AdamW keeps 8 B/param of state, GaLore ``4 (2 m r + r n) / (m n)`` for an ``m x n`` weight
    (``m >= n``), an :class:`~subspaces.optim.quantization.Int8Linear` weight about 1 B/param.

    Args:
        model: the model (parameters and buffers are counted, shared storages once).
        optimizer: its optimizer; ``None`` counts no state.

    Returns:
        A :class:`MemoryReport` (``str()`` of it is a small table).

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or ``optimizer`` not an optimizer.

    Example:
        >>> model = nn.Linear(100, 10, bias=False)
        >>> opt = torch.optim.AdamW(model.parameters())
        >>> model(torch.ones(2, 100)).sum().backward(); opt.step()
        >>> r = memory_report(model, opt)
        >>> r.num_parameters, r.weight_bytes_per_param, r.optimizer_bytes_per_param
        (1000, 4.0, 8.004)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    num = sum(p.numel() for p in model.parameters())
    state = 0 if optimizer is None else optimizer_state_bytes(optimizer)
    return MemoryReport(
        num_parameters=num, weight_bytes=model_bytes(model), optimizer_state_bytes=state
    )
