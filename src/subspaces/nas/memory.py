"""Peak memory of the tensors a block of torch code allocates, measured at each allocation.

On CPU torch has no allocator statistics (``torch.cuda.max_memory_allocated`` is CUDA-only) and
``tracemalloc`` does not see torch's allocations, so :class:`TensorMemoryTracker` watches every
operator's outputs through a ``TorchDispatchMode`` (forward and autograd's backward alike): each new
storage adds its byte size to the live total when it is created and removes it when it is freed
(a weak-reference finalizer); the peak of that total is the peak of the memory torch's allocator
had to provide for the block, without its caching or fragmentation overhead.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["TensorMemoryTracker"]


class TensorMemoryTracker(TorchDispatchMode):
    """Context manager recording the live and peak bytes of tensors created inside it.

    Tensors that existed before the block (inputs, parameters) are not counted; gradients and
    optimizer states created inside it are.

    Attributes:
        live: bytes of the storages created in the block that are still alive.
        peak: the largest value ``live`` reached.

    Example:
        >>> x = torch.zeros(1000)  # 4000 bytes, created before: not counted
        >>> with TensorMemoryTracker() as mem:
        ...     y = x + 1  # 4000 bytes
        ...     z = (y * 2).sum()  # a 4000-byte temporary alive while the 4-byte sum is made
        ...     del y
        >>> mem.peak, mem.live
        (8004, 4)
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or key in self._seen:
                continue  # a view of a storage already counted
            self._seen.add(key)
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, size)
        return out

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self._seen.discard(key)
