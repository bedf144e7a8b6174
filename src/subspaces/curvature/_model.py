"""How a curvature operator sees a model: selected parameters, batches, losses and modes.

Everything about turning ``(model, loss_fn, data)`` into pure functions of a parameter dictionary
lives here, so the operators themselves only write their per-batch product.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

ModePolicy = Literal["error", "eval", "as_is"]
MODE_POLICIES: tuple[str, ...] = ("error", "eval", "as_is")
Reduction = Literal["mean", "sum"]
REDUCTIONS: tuple[str, ...] = ("mean", "sum")
LossFn = Callable[[Any, Any], Tensor]
ParamSpec = None | str | Sequence[str] | Mapping[str, Tensor]

_STOCHASTIC = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


class ClassLoss:
    """Cross-entropy (or NLL) over class logits, with PyTorch's options, honoured as given.

    ``(n, C)`` outputs, or more dimensions with the classes along ``class_dim`` (``-1`` for
    sequence models' ``(n, T, C)`` logits, ``1`` for PyTorch's ``(n, C, d1, ...)``): every position
    is one term. With
    ``reduction="mean"`` the batch loss is ``sum_t w_t l_t / sum_t w_t`` over the positions ``t``
    whose target is not ``ignore_index`` (``w_t`` = the class weight of the target, 1 without
    weights) -- PyTorch's definition; with ``"sum"``, ``sum_t w_t l_t``.

    Args:
        weight: class weights ``(C,)`` or ``None``.
        ignore_index: target value that contributes nothing (class-index targets).
        label_smoothing: as ``torch.nn.CrossEntropyLoss``.
        reduction: ``"mean"`` or ``"sum"``.
        log_probs: the outputs are log-probabilities (``NLLLoss``) rather than logits.
        class_dim: the class dimension of outputs with more than two dimensions.
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        log_probs: bool = False,
        class_dim: int = -1,
    ) -> None:
        self.class_dim = class_dim
        self.weight = weight
        self.ignore_index = ignore_index
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction
        self.log_probs = log_probs

    def positions(self, x: Tensor, lead: int = 0) -> Tensor:
        """``x`` shaped like the outputs (after ``lead`` leading dimensions) as ``(..., P, C)``.

        Returns:
            A view or copy with one row per position and the classes last.
        """
        if x.ndim - lead > 2 and self.class_dim != -1:
            x = x.movedim(lead + self.class_dim, -1)
        return x.reshape(*x.shape[:lead], -1, x.shape[-1])

    def unpositions(self, y: Tensor, shape: tuple[int, ...], lead: int = 0) -> Tensor:
        """Inverse of :meth:`positions` for an output of ``shape``.

        Returns:
            ``y`` reshaped back to ``(*lead_dims, *shape)``.
        """
        if len(shape) > 2 and self.class_dim != -1:
            moved = list(shape)
            moved.append(moved.pop(self.class_dim))
            y = y.reshape(*y.shape[:lead], *moved)
            return y.movedim(-1, lead + self.class_dim)
        return y.reshape(*y.shape[:lead], *shape)

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        flat = self.positions(outputs)
        C = flat.shape[-1]
        prob_targets = targets.is_floating_point()
        tgt = self.positions(targets).reshape(-1, C) if prob_targets else targets.reshape(-1)
        weight = None if self.weight is None else self.weight.to(outputs)
        if self.log_probs:
            return F.nll_loss(
                flat, tgt, weight=weight, ignore_index=self.ignore_index, reduction=self.reduction
            )
        return F.cross_entropy(
            flat,
            tgt.to(outputs.dtype) if prob_targets else tgt,
            weight=weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )

    def normalizer(self, targets: Any, num_samples: int) -> float:
        """The denominator of the batch mean: the summed weights of the counted positions.

        Returns:
            ``sum_t w_t`` over positions whose target is not ``ignore_index``; for probability
            targets, the number of positions.
        """
        if not isinstance(targets, Tensor):
            return float(num_samples)
        if targets.is_floating_point():  # class probabilities: PyTorch divides by positions
            return float(self.positions(targets).shape[0])
        tgt = targets.reshape(-1)
        valid = tgt != self.ignore_index
        if self.weight is None:
            return float(valid.sum())
        w = self.weight.to(tgt.device)
        return float(w[tgt[valid]].double().sum())

    def position_mask(self, targets: Any, positions: int) -> Tensor | None:
        """Which positions count (``None`` when every one does)."""
        if not isinstance(targets, Tensor) or targets.is_floating_point():
            return None
        valid = targets.reshape(-1) != self.ignore_index
        return None if bool(valid.all()) else valid


def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over samples (and positions, for ``(n, T, C)`` logits)."""
    return ClassLoss()(outputs, targets)


class SquaredError:
    """Squared error over all entries, mean (as ``torch.nn.functional.mse_loss``) or sum.

    Written out rather than calling ``mse_loss``, whose backward is not forward-differentiable
    under ``torch.func`` ("ZeroTensors are immutable").
    """

    def __init__(self, reduction: str = "mean") -> None:
        self.reduction = reduction

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        sq = (outputs - targets.to(outputs.dtype).reshape(outputs.shape)) ** 2
        return sq.sum() if self.reduction == "sum" else sq.mean()


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error over all entries (as ``torch.nn.functional.mse_loss``).

    Returns:
        The mean of the squared differences, a scalar tensor.
    """
    return SquaredError()(outputs, targets)


LOSSES: dict[str, LossFn] = {"cross_entropy": cross_entropy, "mse": mse}


@dataclass(frozen=True)
class LossSpec:
    """A loss as the operators use it.

    Attributes:
        fn: ``fn(outputs, targets)``, the batch loss exactly as the user defined it.
        reduction: ``"mean"`` (the operator is the curvature of the loss of the whole data set
            as one batch: batch ``b`` enters with weight ``normalizer(b) / sum_b normalizer(b)``)
            or ``"sum"`` (batch losses add up).
        likelihood: ``"cross_entropy"`` or ``"mse"`` when the loss is that negative
            log-likelihood (needed by the Monte-Carlo Fisher), else ``None``.
        no_likelihood: why there is no likelihood (for error messages), or ``None``.
        no_per_sample: why per-sample losses are not defined (the empirical Fisher), or ``None``.
        classes: the class loss (to find its normalizer and counted positions), if any.
    """

    fn: LossFn
    reduction: str
    likelihood: str | None
    no_likelihood: str | None = None
    no_per_sample: str | None = None
    classes: ClassLoss | None = None

    def normalizer(self, targets: Any, num_samples: int) -> float:
        """The batch's weight in a mean (1 for a sum).

        Returns:
            The denominator of the batch mean as the loss defines it (for class losses the
            summed class weights of the counted positions; otherwise the number of samples).
        """
        if self.reduction == "sum":
            return 1.0
        if self.classes is not None:
            return self.classes.normalizer(targets, num_samples)
        return float(num_samples)


def _module_reduction(loss_fn: nn.Module, reduction: str | None) -> str:
    own = getattr(loss_fn, "reduction", "mean")
    if own not in REDUCTIONS:
        raise ValueError(
            f"loss_fn {type(loss_fn).__name__}(reduction={own!r}) is not supported: a curvature "
            "operator needs a scalar loss, reduction 'mean' or 'sum'"
        )
    if reduction is not None and reduction != own:
        raise ValueError(
            f"reduction={reduction!r} contradicts loss_fn {type(loss_fn).__name__}"
            f"(reduction={own!r}); leave reduction out for loss modules"
        )
    return str(own)


def resolve_loss(loss_fn: str | LossFn, reduction: str | None = None) -> LossSpec:
    """The loss as given: a name, a PyTorch loss module (options honoured) or a callable.

    Args:
        loss_fn: ``"cross_entropy"``, ``"mse"``, ``torch.nn.functional.cross_entropy`` /
            ``mse_loss``, a loss module (``nn.CrossEntropyLoss(weight=..., label_smoothing=...,
            ignore_index=..., reduction=...)``, ``nn.NLLLoss``, ``nn.MSELoss``, or any other
            ``nn`` loss, whose ``reduction`` is read), or a callable ``(outputs, targets)``.
        reduction: how a name or callable reduces over a batch's samples, ``"mean"`` (default)
            or ``"sum"``; for a loss module it is read from the module (a contradicting value
            is an error).

    Returns:
        The :class:`LossSpec`.

    Raises:
        ValueError: for an unknown loss name or reduction, ``reduction="none"`` in a module, or
            a ``reduction`` that contradicts the module's.
        TypeError: for something that is neither a name nor callable.
    """
    if reduction is not None and reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(loss_fn, str):
        if loss_fn not in LOSSES:
            raise ValueError(
                f"loss_fn must be one of {tuple(LOSSES)} or a callable, got {loss_fn!r}"
            )
        loss_fn = F.cross_entropy if loss_fn == "cross_entropy" else F.mse_loss
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a callable or a name, got {type(loss_fn).__name__}")
    if loss_fn is F.cross_entropy or loss_fn is cross_entropy:
        red = reduction or "mean"
        ce = ClassLoss(reduction=red)
        return LossSpec(ce, red, "cross_entropy", classes=ce)
    if loss_fn is F.mse_loss or loss_fn is mse:
        red = reduction or "mean"
        return LossSpec(SquaredError(red), red, "mse")
    if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        red = _module_reduction(loss_fn, reduction)
        name = type(loss_fn).__name__
        smoothing = float(getattr(loss_fn, "label_smoothing", 0.0))
        weight = loss_fn.weight
        ce = ClassLoss(
            None if weight is None else weight.detach(),
            int(loss_fn.ignore_index),
            smoothing,
            red,
            log_probs=isinstance(loss_fn, nn.NLLLoss),
            class_dim=1,  # PyTorch's convention for (n, C, d1, ...) outputs
        )
        why = None
        if weight is not None:
            why = f"{name}(weight=...): class weights make it no negative log-likelihood"
        elif smoothing:
            why = f"{name}(label_smoothing={smoothing}) is no negative log-likelihood"
        elif isinstance(loss_fn, nn.NLLLoss):
            why = "NLLLoss takes log-probabilities, not logits"
        likelihood = None if why else "cross_entropy"
        per_sample = (
            None
            if weight is None
            else f"{name}(weight=...): a class-weighted mean has no per-sample losses"
        )
        return LossSpec(ce, red, likelihood, why, per_sample, ce)
    if isinstance(loss_fn, nn.MSELoss):
        red = _module_reduction(loss_fn, reduction)
        return LossSpec(SquaredError(red), red, "mse")
    if isinstance(loss_fn, nn.modules.loss._Loss):
        red = _module_reduction(loss_fn, reduction)
        why = f"{type(loss_fn).__name__} has no known likelihood"
        return LossSpec(loss_fn, red, None, why)
    return LossSpec(
        loss_fn, reduction or "mean", None, "a custom loss callable has no known likelihood"
    )


def select_params(model: nn.Module, params: ParamSpec) -> dict[str, Tensor]:
    """The parameters a curvature operator differentiates, by name.

    Args:
        model: the model.
        params: ``None`` (every parameter that requires grad), a glob pattern or list of patterns
            matched against ``named_parameters()`` names (``"blocks.*.attn.*"``), or a dict
            name -> parameter (names must be the model's).

    Returns:
        An ordered dict name -> the model's parameter tensor (not a copy).

    Raises:
        ValueError: if nothing is selected or a given name is not a parameter of the model.
        TypeError: for an unsupported ``params`` value.
    """
    named = dict(model.named_parameters())
    chosen: dict[str, Tensor]
    if params is None:
        chosen = {n: p for n, p in named.items() if p.requires_grad}
    elif isinstance(params, str) or (
        isinstance(params, Sequence) and all(isinstance(x, str) for x in params)
    ):
        patterns = [params] if isinstance(params, str) else list(params)
        chosen = {
            n: p for n, p in named.items() if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)
        }
        if not chosen:
            raise ValueError(
                f"no parameter name matches {patterns}; names are e.g. {list(named)[:6]}"
            )
    elif isinstance(params, Mapping):
        unknown = [n for n in params if n not in named]
        if unknown:
            raise ValueError(
                f"{unknown} are not parameters of the model; names are e.g. {list(named)[:6]}"
            )
        chosen = {n: named[n] for n in params}
    else:
        raise TypeError(
            "params must be None, a pattern, a list of patterns or a dict, "
            f"got {type(params).__name__}"
        )
    if not chosen:
        raise ValueError("no parameters selected (every parameter has requires_grad=False)")
    for n, p in chosen.items():
        if not p.dtype.is_floating_point:
            raise TypeError(f"parameter {n!r} has non-floating dtype {p.dtype}")
    return chosen


def stochastic_training_modules(model: nn.Module) -> list[str]:
    """Names of BatchNorm / Dropout modules that are in training mode."""
    return [
        n or type(m).__name__
        for n, m in model.named_modules()
        if m.training and isinstance(m, _STOCHASTIC)
    ]


@contextmanager
def _math_attention() -> Iterator[None]:
    """Route ``scaled_dot_product_attention`` to its composite MATH kernel.

    The fused (flash / memory-efficient) kernels have neither forward-mode derivatives nor double
    backward (pytorch/pytorch#116350), which curvature products need; the MATH kernel computes the
    same attention out of differentiable primitives.
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - old torch
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


@contextmanager
def mode_policy_applied(model: nn.Module, policy: str) -> Iterator[None]:
    """Apply the train-mode policy for one pass and restore every module's mode afterwards.

    Attention runs on the MATH kernel during the pass (see ``_math_attention``).

    Raises:
        ValueError: with policy ``"error"`` when BatchNorm or Dropout modules are in training mode.
    """
    with _math_attention(), _policy(model, policy):
        yield


@contextmanager
def _policy(model: nn.Module, policy: str) -> Iterator[None]:
    offenders = stochastic_training_modules(model)
    if policy != "eval" and not offenders:
        yield
        return
    if policy == "error":
        raise ValueError(
            f"modules {offenders[:5]} are in training mode: BatchNorm would use batch statistics "
            "and Dropout would make the operator random. Call model.eval(), or pass "
            "mode_policy='eval' (evaluated in eval mode, your modes restored) or 'as_is'."
        )
    if policy == "as_is":
        dropouts = [
            n
            for n, m in model.named_modules()
            if m.training and isinstance(m, nn.modules.dropout._DropoutNd)
        ]
        if dropouts:
            raise ValueError(
                f"Dropout modules {dropouts[:5]} are in training mode: a random operator is not a "
                "matrix; use mode_policy='eval' or model.eval()"
            )
        # BatchNorm with batch statistics, running statistics left untouched
        bns = [
            m
            for m in model.modules()
            if m.training and isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        saved_track = [(bn, bn.track_running_stats) for bn in bns]
        try:
            for bn in bns:
                bn.track_running_stats = False
            yield
        finally:
            for bn, was_tracking in saved_track:
                bn.track_running_stats = was_tracking
        return
    saved = [(m, m.training) for m in model.modules()]
    try:
        # the whole model, not only BatchNorm/Dropout modules: functional dropout
        # (F.dropout(x, p, training=self.training)) follows its own module's flag
        for m in model.modules():
            m.training = False
        yield
    finally:
        for m, was in saved:
            m.training = was


@dataclass
class Batch:
    """One batch, split into model inputs and loss targets."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    targets: Any
    size: int
    keys: list[int] | None = None
    """One 64-bit key per sample, a hash of its data (see :func:`sample_keys`)."""


def _tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for k in sorted(obj, key=str):
            yield from _tensors(obj[k])
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _tensors(v)


# ----- counter-based hashing with int64 tensor ops (the same bits on every device) --------------
def _int64(x: int) -> int:
    """``x`` modulo ``2**64`` as a signed 64-bit integer (the value an int64 tensor holds)."""
    x %= 2**64
    return x - 2**64 if x >= 2**63 else x


_GOLDEN = _int64(0x9E3779B97F4A7C15)
_MIX1 = _int64(0xBF58476D1CE4E5B9)
_MIX2 = _int64(0x94D049BB133111EB)


def _shift_right(x: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 ``x`` by ``s`` bits (torch's ``>>`` copies the sign bit)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def splitmix64(x: Tensor) -> Tensor:
    """The splitmix64 output for state ``x``: ``mix(x + 0x9E3779B97F4A7C15)``, elementwise.

    Computed with int64 tensor operations that wrap modulo ``2**64``, so it gives the same bits
    on every device and in any batch layout; a good 64-bit mixer (Steele, Lea & Flood 2014) and
    the counter-based generator of the Monte-Carlo Fisher's labels.

    Args:
        x: an int64 tensor.

    Returns:
        An int64 tensor of ``x``'s shape (the 64 bits of the unsigned result).

    Example:
        >>> import torch
        >>> hex(int(splitmix64(torch.tensor([0]))) % 2**64)  # the reference's first output
        '0xe220a8397b1dcdaf'
    """
    z = x + _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def uniform53(h: Tensor) -> Tensor:
    """Float64 uniforms in ``[0, 1)`` from the top 53 bits of int64 hashes ``h``.

    Returns:
        A float64 tensor of ``h``'s shape (multiples of ``2**-53``).
    """
    return _shift_right(h, 11).to(torch.float64) * 2.0**-53


def _tag(text: str) -> int:
    return _int64(int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little"))


_ROW_CACHE: dict[int, tuple[Any, int, int, Tensor]] = {}
"""``id(tensor) -> (weakref, version, rows, row hashes)``: one hash of each data tensor's rows."""


def _row_hashes(tensor: Tensor, n: int) -> Tensor:
    """A 64-bit hash of each of the ``n`` rows of ``tensor`` (its bytes, dtype and row shape).

    Computed on the tensor's device with int64 operations (every word mixed with its position,
    summed modulo ``2**64``, mixed again) and cached per tensor while it lives and is unchanged
    (its version counter), so a fixed list of batches is hashed once, not on every pass.

    Returns:
        An int64 tensor ``(n,)`` on ``tensor``'s device.
    """
    try:
        version: int | None = tensor._version
    except RuntimeError:  # an inference tensor has no version counter: hashed on every pass
        version = None
    entry = _ROW_CACHE.get(id(tensor))
    if (
        version is not None
        and entry is not None
        and entry[0]() is tensor
        and entry[1] == version
        and entry[2] == n
    ):
        return entry[3]
    t = tensor.detach().reshape(n, -1)
    tag = _tag(f"{t.dtype}{tuple(tensor.shape[1:])}")
    if t.dtype.is_complex:
        t = torch.view_as_real(t).reshape(n, -1)
    b = t.contiguous().view(torch.uint8)  # (n, bytes)
    pad = -b.shape[1] % 8
    if pad:
        b = F.pad(b, (0, pad))
    words = b.view(torch.int64)  # (n, w)
    position = splitmix64(torch.arange(words.shape[1], device=words.device) ^ tag)
    h = splitmix64(words ^ position).sum(1, dtype=torch.int64)
    out = splitmix64(h ^ tag)
    if version is None:
        return out
    try:
        key = id(tensor)
        ref = weakref.ref(tensor, lambda _: _ROW_CACHE.pop(key, None))
    except TypeError:  # a tensor subclass without weak references: no cache
        return out
    _ROW_CACHE[key] = (ref, version, n, out)
    return out


def sample_key_tensor(raw: Any, n: int) -> Tensor:
    """A 64-bit hash of each sample's data: the bytes of row ``i`` of every tensor of ``n`` rows.

    The key of a sample does not depend on the batch it is in, on its position there or on the
    device, so it identifies the sample across passes over a shuffled loader (the data-set
    fingerprint and the Monte-Carlo Fisher's labels are built from it). It is computed on the
    data's device with int64 operations, once per data tensor while that tensor is unchanged
    (a fixed list of batches is hashed on the first pass only; a tensor changed in place through
    its version counter is hashed again).

    Args:
        raw: a batch: a tensor, or tuples, lists and dicts of tensors (dicts by sorted key).
        n: the number of samples (tensors with another number of rows are ignored).

    Returns:
        An int64 tensor ``(n,)`` on the device of the batch's first tensor of ``n`` rows (CPU
        if there is none; then every key is the same).

    Example:
        >>> import torch
        >>> X, y = torch.arange(12.0).reshape(4, 3), torch.tensor([0, 1, 0, 1])
        >>> keys = sample_key_tensor((X, y), 4)
        >>> same = bool((sample_key_tensor((X[2:], y[2:]), 2) == keys[2:]).all())
        >>> same, len(set(keys.tolist()))
        (True, 4)
    """
    acc: Tensor | None = None
    for tensor in _tensors(raw):
        if tensor.ndim == 0 or tensor.shape[0] != n:
            continue
        rows = _row_hashes(tensor, n)
        acc = rows if acc is None else splitmix64(acc ^ rows.to(acc.device))
    if acc is None:
        return torch.full((n,), _tag("no per-sample tensor"), dtype=torch.int64)
    return acc


def sample_keys(raw: Any, n: int) -> list[int]:
    """The keys of :func:`sample_key_tensor` as Python integers (signed 64-bit values).

    Returns:
        ``n`` integers in ``[-2**63, 2**63)``.
    """
    return sample_key_tensor(raw, n).tolist()


def _first_tensor(obj: Any) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, Mapping):
        for v in obj.values():
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(obj, (tuple, list)):
        for v in obj:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _move(obj: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    if isinstance(obj, Tensor):
        obj = obj.to(device)
        return obj.to(dtype) if dtype is not None and obj.is_floating_point() else obj
    if isinstance(obj, Mapping):
        return {k: _move(v, device, dtype) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_move(v, device, dtype) for v in obj)
    return obj


def split_batch(
    batch: Any,
    device: torch.device,
    dtype: torch.dtype | None,
    batch_size_fn: Callable[[Any], int] | None = None,
) -> Batch:
    """Split a batch into model inputs and targets.

    ``(X, y)`` (tuple or list of two): ``model(X)`` (``model(**X)`` for a dict ``X``), loss
    targets ``y``. A dict (Hugging Face style): ``model(**batch)``, targets the whole dict. A
    tensor: ``model(X)``, targets ``None``.

    Returns:
        The batch's positional and keyword model inputs, loss targets and number of samples.

    Raises:
        TypeError: for an unsupported batch type.
        ValueError: for an empty batch.
    """
    batch = _move(batch, device, dtype)
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        X, y = batch
        args, kwargs = ((), dict(X)) if isinstance(X, Mapping) else ((X,), {})
        targets = y
    elif isinstance(batch, Mapping):
        args, kwargs, targets = (), dict(batch), batch
    elif isinstance(batch, Tensor):
        args, kwargs, targets = (batch,), {}, None
    else:
        raise TypeError(
            "a batch must be (inputs, targets), a dict of model inputs or a tensor, "
            f"got {type(batch).__name__}"
        )
    if batch_size_fn is not None:
        size = int(batch_size_fn(batch))
    else:
        first = _first_tensor(args if args else kwargs)
        if first is None or first.ndim == 0:
            raise TypeError("cannot tell the batch size; pass batch_size_fn")
        size = int(first.shape[0])
    if size <= 0:
        raise ValueError("empty batch (0 samples)")
    return Batch(args, kwargs, targets, size)


def data_changed_error(first: tuple[int, int], now: tuple[int, int]) -> ValueError:
    """The error for data that differ between two passes over them.

    Returns:
        A ``ValueError`` naming both sample counts and the usual causes.
    """
    return ValueError(
        f"the data changed between two passes over it ({first[0]} samples on the first pass, "
        f"{now[0]} now{', other samples' if first[0] == now[0] else ''}): every product is a "
        "pass over the data, so the operator would change between products and Lanczos or a "
        "trace estimate would be wrong. A DataLoader with shuffle=True and drop_last=True, "
        "random augmentation or a sampler that draws a subset does this; pass a fixed list of "
        "batches, or a DataLoader without drop_last and without random transforms"
    )


def output_tensor(out: Any) -> Tensor:
    """The tensor a loss is computed from: the output itself, or ``.logits`` of a model output.

    Returns:
        ``out`` if it is a tensor, else its ``.logits`` attribute or ``"logits"`` entry.

    Raises:
        TypeError: if no tensor can be found.
    """
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, Mapping) and isinstance(out.get("logits"), Tensor):
        return out["logits"]
    raise TypeError(f"model output {type(out).__name__} is not a tensor and has no .logits")


class FunctionalModel:
    """The model as a pure function of the selected parameters (others and buffers fixed).

    With ``dtype`` set, parameters and floating buffers are cast copies; the user's model is
    never modified. Buffers are always passed as copies, so a train-mode BatchNorm cannot update
    the user's running statistics.
    """

    def __init__(
        self, model: nn.Module, params: dict[str, Tensor], dtype: torch.dtype | None
    ) -> None:
        self.model = model
        self.names = tuple(params)
        cast = (lambda t: t.detach().to(dtype)) if dtype is not None else (lambda t: t.detach())
        self.params = {n: cast(p) for n, p in params.items()}
        frozen = {n: p for n, p in model.named_parameters() if n not in params}
        self.fixed = {
            n: cast(p) if p.is_floating_point() else p.detach() for n, p in frozen.items()
        }
        for n, b in model.named_buffers():
            self.fixed[n] = (cast(b) if b.is_floating_point() else b.detach()).clone()
        ref = next(iter(self.params.values()))
        self.dtype, self.device = ref.dtype, ref.device

    def __call__(self, p: Mapping[str, Tensor], batch: Batch) -> Tensor:
        out = output_tensor(
            functional_call(self.model, {**self.fixed, **p}, batch.args, batch.kwargs, strict=False)
        )
        # A parameter the forward pass never touches (an unused head, a module skipped for this
        # input) has no derivative at all, which torch.func turns into an unmaterialized zero
        # (a garbage expand under vmap) and autograd into "not used in the graph". An exact zero
        # times every parameter makes each one part of the graph: its rows and columns of every
        # curvature matrix are then exactly zero.
        anchor = sum(v.sum() for v in p.values())
        return out + 0 * anchor


def check_loss(loss: Tensor) -> Tensor:
    """Validate a loss value: a scalar tensor (finiteness is checked by ``check_loss_finite``).

    Returns:
        ``loss`` itself, unchanged.

    Raises:
        ValueError: if the loss is not a scalar tensor.
    """
    if not isinstance(loss, Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(
            f"loss_fn must return a scalar (the mean loss over the batch), got {shape}; "
            "use reduction='mean'"
        )
    return loss


def check_deterministic(loss: Callable[[], Tensor], policy: str) -> None:
    """Evaluate the loss of one batch twice and raise if the two values differ.

    A random forward pass (dropout in training mode -- as a module or as
    ``F.dropout(x, p, training=self.training)`` -- or noise injection) makes every product a
    different random matrix: Lanczos and the trace estimators would run on an operator that is
    not fixed, and ``vmap`` refuses random operations with a cryptic error.

    Raises:
        ValueError: naming both values and the fix.
    """
    with torch.no_grad():
        a, b = loss().detach(), loss().detach()
    tol = 1e3 * torch.finfo(a.dtype).eps * max(float(a.abs()), float(b.abs()))
    if not bool(torch.isfinite(a)) or float((a - b).abs()) <= tol:
        return
    fix = (
        "pass mode_policy='eval' (evaluates the whole model in eval mode and restores your "
        "modes) or call model.eval()"
        if policy != "eval"
        else "it is random even in eval mode: make the forward pass deterministic"
    )
    raise ValueError(
        f"the forward pass is random: two evaluations of the loss on the same batch gave "
        f"{float(a)!r} and {float(b)!r} (dropout in training mode, functional F.dropout "
        f"included?), so the operator would not be a fixed matrix; {fix}"
    )


def check_loss_finite(loss: Tensor) -> None:
    """Raise if a loss value (or a batch of copies of it) is NaN or Inf.

    Raises:
        ValueError: naming the value.
    """
    if not bool(torch.isfinite(loss).all()):
        raise ValueError(
            f"the loss is not finite on a batch (got {loss.flatten()[0].item()}); "
            "check the model and data"
        )


def iterate_batches(data: Any) -> Iterable[Any]:
    """Data as an iterable of batches: a single batch (tuple of tensors, dict, tensor) is wrapped.

    Returns:
        ``[data]`` for a single batch, else ``data`` itself.

    Raises:
        TypeError: if ``data`` is not iterable, or is a one-shot iterator (every product is a
            pass over the data, so it must be re-iterable: a list, a DataLoader).
    """
    if isinstance(data, (Tensor, Mapping)):
        return [data]
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return [data]
    if not isinstance(data, Iterable):
        raise TypeError(f"data must be an iterable of batches, got {type(data).__name__}")
    if isinstance(data, Iterator):
        raise TypeError(
            f"data is a one-shot iterator ({type(data).__name__}); every product is a pass over "
            "the data, so pass something re-iterable: a list of batches or a DataLoader"
        )
    return data


def num_params(params: Mapping[str, Tensor]) -> int:
    """Total number of entries."""
    return sum(math.prod(p.shape) for p in params.values())
