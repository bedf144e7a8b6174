r"""Merge methods on state_dicts, streamed one tensor at a time.

Notation: ``theta_0`` the base (pretrained) model, ``theta_k`` the fine-tuned models, ``tau_k =
theta_k - theta_0`` their task vectors (*deltas*), ``w_k`` their weights.

- ``linear``: ``sum_k w_k theta_k / sum_k w_k`` (weight averaging; no base).
- ``task_arithmetic`` (Ilharco et al. 2023): ``theta_0 + lambda sum_k w_k tau_k``.
- ``ties`` (Yadav et al. 2023): trim each ``tau_k`` to its ``density`` largest magnitudes, elect
  a sign per entry (``consensus="sum"``: the sign of ``sum_k w_k tau_k``; ``"count"``: the sign
  held by more weighted deltas), then the *disjoint mean*: ``sum`` over the deltas that agree with
  the elected sign divided by the sum of their weights.
- ``dare`` (Yu et al. 2024): drop each delta entry with probability ``1 - density`` and rescale
  the survivors by ``1 / density`` (``rescale="inverse"``, the paper) or so that each delta keeps
  its l1 norm (``rescale="l1"``, mergekit's ``rescale: true``); then task arithmetic.
  ``dare_ties`` uses TIES' sign election on the dropped deltas.
- ``breadcrumbs`` (Davari & Belilovsky 2024): drop the largest ``gamma`` share of each delta's
  magnitudes (outliers) and the smallest so that a ``density`` share is kept; ``breadcrumbs_ties``
  adds TIES' sign election.
- ``slerp``: spherical interpolation of two models per tensor, falling back to linear
  interpolation when the tensors are nearly parallel (``|cos| > 0.9995``).

The sparsification, sign election and divisor follow mergekit's
``generalized_task_arithmetic`` (so a recipe gives the same tensors in both), including its
defaults for ``normalize``: true for ``linear`` and ``ties``, false for the others.
Every numeric hyperparameter accepts a per-tensor schedule (:mod:`subspaces.merging.schedule`).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from .._checks import check_choice
from .._progress import Progress
from ._state_dict import (
    NonFloat,
    StateDictLike,
    StateDictSource,
    as_source,
    check_compatible,
    check_finite_tensor,
)
from .schedule import Schedule, parse_schedule, resolve_all

__all__ = [
    "METHODS",
    "Consensus",
    "Method",
    "Rescale",
    "breadcrumbs_sparsify",
    "dare_sparsify",
    "disjoint_merge",
    "iter_merge",
    "magnitude_sparsify",
    "merge",
    "sign_agreement_mask",
    "slerp",
]

Method = Literal[
    "linear",
    "task_arithmetic",
    "ties",
    "dare",
    "dare_ties",
    "breadcrumbs",
    "breadcrumbs_ties",
    "slerp",
]
METHODS: tuple[str, ...] = get_args(Method)
Consensus = Literal["sum", "count"]
Rescale = Literal["inverse", "l1", "none"]

_CHUNK = 1 << 16  # entries per chunk of the element-wise combination

# method -> (sparsification, consensus used, default normalize)
_SPEC: dict[str, tuple[str | None, bool, bool]] = {
    "task_arithmetic": (None, False, False),
    "ties": ("magnitude", True, True),
    "dare": ("random", False, False),
    "dare_ties": ("random", True, False),
    "breadcrumbs": ("outliers", False, False),
    "breadcrumbs_ties": ("outliers", True, False),
}


def _check_density(density: float, what: str = "density") -> float:
    if isinstance(density, bool) or not isinstance(density, (int, float)):
        raise TypeError(f"{what} must be a number in (0, 1], got {density!r}")
    if not (0.0 < float(density) <= 1.0):
        raise ValueError(f"{what} must be in (0, 1], got {density}")
    return float(density)


def _rescale_(flat: Tensor, before: Tensor | None, density: float, rescale: str) -> Tensor:
    """Rescale the kept entries in place: ``1 / density``, or back to the l1 norm ``before``."""
    if rescale == "inverse":
        return flat.div_(density)
    if rescale == "l1" and before is not None:
        after = flat.abs().sum()
        if float(before) >= 1e-7 and float(after) >= 1e-7:  # mergekit's RescaleNorm.l1
            flat.mul_(before / after)
    return flat


def _magnitude_(delta: Tensor, density: float, rescale: str) -> Tensor:
    """In-place :func:`magnitude_sparsify` of a contiguous tensor."""
    n = delta.numel()
    if density >= 1.0 or n == 0:
        return delta
    flat = delta.view(-1)
    magnitude = flat.abs().float()
    before = magnitude.sum() if rescale == "l1" else None
    keep = torch.zeros(n, dtype=torch.bool, device=delta.device)
    keep[torch.topk(magnitude, max(1, int(density * n)), sorted=False).indices] = True
    del magnitude
    flat.mul_(keep)
    _rescale_(flat, before, density, rescale)
    return delta


def _dare_(
    delta: Tensor, density: float, rescale: str, generator: torch.Generator | None
) -> Tensor:
    """In-place :func:`dare_sparsify` of a contiguous tensor."""
    if density >= 1.0:
        return delta
    flat = delta.view(-1)
    before = flat.abs().sum() if rescale == "l1" else None
    keep = torch.rand(flat.shape, generator=generator, device=delta.device) < density
    flat.mul_(keep)
    _rescale_(flat, before, density, rescale)
    return delta


def _breadcrumbs_(delta: Tensor, density: float, gamma: float, rescale: str) -> Tensor:
    """In-place :func:`breadcrumbs_sparsify` of a contiguous tensor."""
    if density >= 1.0:
        return delta
    n = delta.numel()
    flat = delta.view(-1)
    before = flat.abs().sum() if rescale == "l1" else None
    n_keep = int(density * n)
    n_bottom = max(n - n_keep - int(gamma * n), 0)
    order = torch.argsort(flat.abs().float())
    keep = torch.zeros(n, dtype=torch.bool, device=delta.device)
    keep[order[n_bottom : n_bottom + n_keep]] = True
    del order
    flat.mul_(keep)
    _rescale_(flat, before, density, rescale)
    return delta


def _fresh(delta: Tensor) -> Tensor:
    return delta.clone(memory_format=torch.contiguous_format)


def magnitude_sparsify(delta: Tensor, density: float, *, rescale: Rescale = "none") -> Tensor:
    """Keep the ``max(1, int(density * numel))`` largest magnitudes of ``delta`` (TIES' trim).

    Args:
        delta: a task vector tensor.
        density: share of entries kept, in ``(0, 1]`` (1 returns ``delta`` unchanged).
        rescale: ``"none"``, ``"l1"`` (match the l1 norm of ``delta``) or ``"inverse"``
            (multiply by ``1 / density``).

    Returns:
        A new tensor (``delta`` is not modified).

    Example:
        >>> magnitude_sparsify(torch.tensor([0.1, -3.0, 2.0, 0.5]), 0.5).tolist()
        [0.0, -3.0, 2.0, 0.0]
    """
    density = _check_density(density)
    check_choice(rescale, "rescale", get_args(Rescale))
    return _magnitude_(_fresh(delta), density, rescale)


def dare_sparsify(
    delta: Tensor,
    density: float,
    *,
    rescale: Rescale = "inverse",
    generator: torch.Generator | None = None,
) -> Tensor:
    """DARE: keep each entry with probability ``density`` and rescale the survivors.

    Args:
        delta: a task vector tensor.
        density: keep probability ``p`` in ``(0, 1]``.
        rescale: ``"inverse"`` (times ``1 / p``, the paper), ``"l1"`` (match the l1 norm of
            ``delta``, mergekit) or ``"none"``.
        generator: the random generator (default: torch's global one).

    Returns:
        A new tensor.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> out = dare_sparsify(torch.ones(10000), 0.25, generator=g)
        >>> sorted(set(out.tolist())), abs(out.mean().item() - 1.0) < 0.05
        ([0.0, 4.0], True)
    """
    density = _check_density(density)
    check_choice(rescale, "rescale", get_args(Rescale))
    return _dare_(_fresh(delta), density, rescale, generator)


def breadcrumbs_sparsify(
    delta: Tensor, density: float, gamma: float = 0.01, *, rescale: Rescale = "none"
) -> Tensor:
    """Model Breadcrumbs: drop the top ``gamma`` and the smallest magnitudes, keep ``density``.

    With ``n`` entries ranked by magnitude, the ``int(density * n)`` entries that follow the
    ``max(0, n - int(density * n) - int(gamma * n))`` smallest are kept: the ``int(gamma * n)``
    largest (outliers) and the smallest are dropped (when ``density + gamma > 1`` the smallest
    ``int(density * n)`` are kept), as mergekit's ``magnitude_outliers``.

    Args:
        delta: a task vector tensor.
        density: share kept, in ``(0, 1]``.
        gamma: share of largest magnitudes dropped, in ``[0, 1)``.
        rescale: ``"none"``, ``"l1"`` or ``"inverse"``.

    Returns:
        A new tensor.

    Raises:
        ValueError: for ``density`` outside (0, 1] or ``gamma`` outside [0, 1).

    Example:
        >>> breadcrumbs_sparsify(torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0]), 0.4, 0.2).tolist()
        [0.0, 0.0, 3.0, -4.0, 0.0]
    """
    density = _check_density(density)
    check_choice(rescale, "rescale", get_args(Rescale))
    _check_gamma(gamma)
    return _breadcrumbs_(_fresh(delta), density, float(gamma), rescale)


def _check_gamma(gamma: Any, what: str = "gamma") -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma < 1:
        raise ValueError(f"{what} must be a number in [0, 1), got {gamma!r}")
    return float(gamma)


def sign_agreement_mask(weighted: Tensor, consensus: Consensus = "sum") -> Tensor:
    """TIES' sign election: which entries of the stacked weighted deltas agree with the majority.

    The elected sign of an entry is that of ``sum_k weighted[k]`` (``"sum"``) or of
    ``sum_k sign(weighted[k])`` (``"count"``); a tie elects ``+``. Zero entries never agree.

    Args:
        weighted: ``(K, ...)`` stacked weighted deltas.
        consensus: ``"sum"`` or ``"count"``.

    Returns:
        A boolean ``(K, ...)`` mask.

    Example:
        >>> d = torch.tensor([[1.0, -1.0], [-3.0, -1.0], [1.0, 0.0]])
        >>> sign_agreement_mask(d, "sum").tolist(), sign_agreement_mask(d, "count")[:, 0].tolist()
        ([[False, True], [True, True], [False, False]], [True, False, True])
    """
    check_choice(consensus, "consensus", get_args(Consensus))
    total = weighted.sum(0) if consensus == "sum" else weighted.sign().sum(0)
    elected = torch.where(total >= 0, 1.0, -1.0).to(weighted.dtype)
    return weighted.sign() == elected


def disjoint_merge(
    deltas: Tensor,
    weights: Tensor,
    *,
    consensus: Consensus | None,
    normalize: bool,
) -> Tensor:
    """Combine stacked deltas: weighted sum, optionally sign-elected, optionally normalized.

    With ``consensus``: ``sum_k w_k d_k [agree_k] / sum_k w_k [agree_k]`` (TIES' disjoint mean;
    an entry where nobody agrees gets 0); without: ``sum_k w_k d_k / sum_k w_k``. The divisions
    happen only when ``normalize`` (a zero divisor counts as 1).

    Args:
        deltas: ``(K, ...)``.
        weights: ``(K,)``.
        consensus: ``"sum"``, ``"count"`` or ``None``.
        normalize: divide by the (agreeing) weight sum.

    Returns:
        The merged delta ``(...)``.

    Example:
        >>> d = torch.tensor([[2.0, -1.0], [4.0, 3.0]])
        >>> disjoint_merge(d, torch.ones(2), consensus="sum", normalize=True).tolist()
        [3.0, 3.0]
    """
    k = deltas.shape[0]
    flat = deltas.reshape(k, -1)
    w = weights.to(deltas.dtype).view(k, 1)
    out = torch.empty(flat.shape[1], dtype=deltas.dtype, device=deltas.device)
    total = float(weights.sum())
    for lo in range(0, flat.shape[1], _CHUNK):  # chunks keep the (K, chunk) temporaries small
        weighted = flat[:, lo : lo + _CHUNK] * w
        if consensus is not None:
            agree = sign_agreement_mask(weighted, consensus)
            mixed = (weighted * agree).sum(0)
            if normalize:
                divisor = (w * agree).sum(0)
                mixed /= torch.where(divisor == 0, torch.ones_like(divisor), divisor)
        else:
            mixed = weighted.sum(0)
            if normalize:
                mixed /= 1.0 if abs(total) < 1e-8 else total
        out[lo : lo + _CHUNK] = mixed
    return out.view(deltas.shape[1:])


def slerp(a: Tensor, b: Tensor, t: float, *, dot_threshold: float = 0.9995) -> Tensor:
    """Spherical linear interpolation between two tensors (as flat vectors).

    ``sin((1-t) W)/sin(W) a + sin(t W)/sin(W) b`` with ``cos W`` the cosine of ``a`` and ``b``;
    linear interpolation ``(1-t) a + t b`` when ``|cos W| > dot_threshold`` (nearly parallel, where
    the spherical formula divides by almost zero) or either tensor is (almost) zero. ``t = 0`` and
    ``t = 1`` return copies of ``a`` and ``b`` exactly.

    Args:
        a: the first endpoint.
        b: the second endpoint (same shape).
        t: interpolation parameter (0 gives ``a``, 1 gives ``b``; values outside extrapolate).
        dot_threshold: cosine above which the linear formula is used.

    Returns:
        A new tensor of ``a``'s shape and dtype.

    Raises:
        ValueError: if the shapes differ.

    Example:
        >>> a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
        >>> [round(v, 6) for v in slerp(a, b, 0.5).tolist()]
        [0.707107, 0.707107]
    """
    if a.shape != b.shape:
        raise ValueError(
            f"slerp endpoints must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    t = float(t)
    if t == 0.0:
        return a.clone()
    if t == 1.0:
        return b.to(a.dtype, copy=True)
    work = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    x, y = a.to(work), b.to(work)
    nx, ny = x.norm(), y.norm()
    eps = 1e-8
    if float(nx) < eps or float(ny) < eps:
        return torch.lerp(x, y, t).to(a.dtype)
    dot = float((x / nx).flatten() @ (y / ny).flatten())
    if abs(dot) > dot_threshold:
        return torch.lerp(x, y, t).to(a.dtype)
    omega = math.acos(max(-1.0, min(1.0, dot)))
    s = math.sin(omega)
    out = (math.sin((1 - t) * omega) / s) * x + (math.sin(t * omega) / s) * y
    return out.to(a.dtype)


def _generator_for(seed: int, index: int, name: str) -> torch.Generator:
    """A generator that depends only on the seed, the model index and the tensor name."""
    key = zlib.crc32(f"{seed}:{index}:{name}".encode())
    return torch.Generator().manual_seed(key)


def _work_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(x.dtype == torch.float64 for x in tensors) else torch.float32


def iter_merge(
    models: Sequence[StateDictLike | StateDictSource],
    *,
    method: Method,
    base: StateDictLike | StateDictSource | None = None,
    weights: Sequence[Schedule | Any] | None = None,
    lambda_: Schedule | Any = 1.0,
    density: Schedule | Any = 1.0,
    consensus: Consensus = "sum",
    rescale: Rescale | None = None,
    gamma: Schedule | Any = 0.01,
    t: Schedule | Any = 0.5,
    normalize: bool | None = None,
    seed: int = 0,
    non_float: NonFloat = "error",
    progress: bool = False,
) -> Iterator[tuple[str, Tensor]]:
    """Merge ``models`` tensor by tensor, yielding ``(name, merged tensor)`` in the base's order.

    Names, shapes and dtypes are checked across all models before the first tensor is merged;
    each tensor is read from every model only when it is merged, and checked for NaN/Inf. The
    output tensor has the dtype of the base (of the first model for ``linear`` and ``slerp``);
    the arithmetic is done in float32 (float64 when an input is float64).

    Args:
        models: the fine-tuned models (modules, mappings of tensors, or ``.safetensors``/``.pt``
            files); exactly two for ``slerp``.
        method: one of :data:`METHODS` (see the module docstring).
        base: the pretrained model (required by the task-vector methods; not used by
            ``linear`` and ``slerp``).
        weights: one weight (or schedule) per model; default 1 each.
        lambda_: scale of the merged task vector (``theta_0 + lambda * merged delta``).
        density: share of each delta kept by ``ties``, ``dare``, ``breadcrumbs`` (in (0, 1]).
        consensus: TIES' sign election, ``"sum"`` or ``"count"``.
        rescale: after sparsification: ``"inverse"`` (times 1/density), ``"l1"`` (keep each
            delta's l1 norm) or ``"none"``; default ``"inverse"`` for the DARE methods and
            ``"none"`` otherwise.
        gamma: share of largest magnitudes dropped by the breadcrumbs methods.
        t: SLERP's interpolation parameter (0: first model, 1: second).
        normalize: divide by the (agreeing) weight sum; default per method (see above).
        seed: seeds DARE's drops (a tensor's drops depend only on the seed, the model's index and
            the tensor's name).
        non_float: ``"error"`` refuses integer/boolean tensors; ``"base"`` copies them from the
            base (from the first model for ``linear`` and ``slerp``).
        progress: print a progress line to ``stderr``.

    Yields:
        ``(name, tensor)`` for every tensor of the base.

    Raises:
        ValueError: for an unknown method, an empty model list, a missing base, names or shapes
            that do not match, a density outside (0, 1], or NaN/Inf in a model (each names the
            tensor and the model).
        TypeError: for a non-floating tensor with ``non_float="error"``.

    Example:
        >>> base = {"w": torch.zeros(2)}
        >>> models = [{"w": torch.tensor([1.0, -1.0])}, {"w": torch.tensor([3.0, 1.0])}]
        >>> [(n, t.tolist()) for n, t in iter_merge(models, method="task_arithmetic", base=base,
        ...                                          lambda_=0.5)]
        [('w', [2.0, 0.0])]
    """
    check_choice(method, "method", METHODS)
    check_choice(consensus, "consensus", get_args(Consensus))
    if rescale is not None:
        check_choice(rescale, "rescale", get_args(Rescale))
    if isinstance(models, (StateDictSource, dict, str)) or not isinstance(models, Sequence):
        raise TypeError(f"models must be a list of models, got {type(models).__name__}")
    if len(models) == 0:
        raise ValueError("models must hold at least one model, got an empty list")
    sources = [as_source(m, f"models[{i}]") for i, m in enumerate(models)]
    if method in ("linear", "slerp"):
        if base is not None:
            raise ValueError(f"method {method!r} takes no base model (got one)")
        if method == "slerp" and len(sources) != 2:
            raise ValueError(f"slerp merges exactly two models, got {len(sources)}")
        ref = sources[0]
    else:
        if base is None:
            raise ValueError(f"method {method!r} needs the base model (base=...)")
        ref = as_source(base, "base")
    names = check_compatible(
        [ref, *sources] if ref is not sources[0] else sources, reference=ref, non_float=non_float
    )
    if weights is None:
        weight_specs: list[Any] = [1.0] * len(sources)
    else:
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
            raise TypeError(f"weights must be a list (one per model), got {weights!r}")
        if len(weights) != len(sources):
            raise ValueError(
                f"weights must hold one value per model ({len(sources)}), got {len(weights)}"
            )
        weight_specs = list(weights)
    w_table = [
        resolve_all(parse_schedule(w, f"weights[{i}]"), names) for i, w in enumerate(weight_specs)
    ]
    lam_table = resolve_all(parse_schedule(lambda_, "lambda"), names)
    density_table = resolve_all(parse_schedule(density, "density"), names)
    for n, d in density_table.items():
        try:
            _check_density(d)
        except ValueError:
            raise ValueError(f"density must be in (0, 1], got {d} for tensor {n!r}") from None
    gamma_table = resolve_all(parse_schedule(gamma, "gamma"), names)
    t_table = resolve_all(parse_schedule(t, "t"), names)

    sparsify, use_consensus, default_normalize = _SPEC.get(method, (None, False, True))
    do_normalize = default_normalize if normalize is None else bool(normalize)
    rescale_mode = rescale or ("inverse" if sparsify == "random" else "none")

    stack: Tensor | None = None
    with Progress(len(names), f"merge ({method})", quiet=not progress) as bar:
        for name in names:
            first = ref.get(name)
            if not first.is_floating_point():  # non_float == "base" (checked above)
                yield name, first.clone()
                bar.update()
                continue
            check_finite_tensor(first, name, ref.label)
            if method == "slerp":
                other = sources[1].get(name)
                check_finite_tensor(other, name, sources[1].label)
                yield name, slerp(first, other, t_table[name])
                bar.update()
                continue
            work = _work_dtype(first)
            if method == "linear":
                acc = torch.zeros(first.shape, dtype=work)
                total = 0.0
                for k, src in enumerate(sources):
                    x = first if src is ref else src.get(name)
                    acc.add_(x.to(work), alpha=w_table[k][name])
                    total += w_table[k][name]
                if do_normalize and abs(total) >= 1e-8:
                    acc /= total
                result = acc.to(first.dtype)
                _check_output(result, name, sources)
                yield name, result
                bar.update()
                continue
            base_t = first.to(work).contiguous()
            w = [w_table[k][name] for k in range(len(sources))]
            d = density_table[name]
            if use_consensus:  # the sign election needs every delta of this tensor at once
                size = len(sources) * base_t.numel()
                if stack is None or stack.numel() < size or stack.dtype != work:
                    stack = None  # free the old buffer before allocating the new one
                    stack = torch.empty(size, dtype=work)
                deltas = stack[:size].view(len(sources), *base_t.shape)  # reused across tensors
            else:
                buf = torch.empty_like(base_t)
                mixed = torch.zeros_like(base_t)
            for k, src in enumerate(sources):
                x = src.get(name)
                if sparsify is not None:  # a dropped NaN would vanish silently: check inputs
                    check_finite_tensor(x, name, src.label)
                delta = torch.sub(x.to(work), base_t, out=deltas[k] if use_consensus else buf)
                del x
                if sparsify == "magnitude":
                    _magnitude_(delta, d, rescale_mode)
                elif sparsify == "random":
                    _dare_(delta, d, rescale_mode, _generator_for(seed, k, name))
                elif sparsify == "outliers":
                    _breadcrumbs_(delta, d, gamma_table[name], rescale_mode)
                if not use_consensus:
                    mixed.add_(delta, alpha=w[k])
            if use_consensus:
                mixed = disjoint_merge(
                    deltas,
                    torch.tensor(w, dtype=work),
                    consensus=consensus,
                    normalize=do_normalize,
                )
                del deltas
            else:
                del buf
            if not use_consensus and do_normalize:
                total = sum(w)
                mixed /= 1.0 if abs(total) < 1e-8 else total
            result = mixed.mul_(lam_table[name]).add_(base_t).to(first.dtype)
            _check_output(result, name, sources)  # NaN inputs, or overflow of the output dtype
            yield name, result
            bar.update()


def _check_output(out: Tensor, name: str, sources: Sequence[StateDictSource]) -> None:
    """If a merged tensor is not finite, name the model holding NaN/Inf (else: overflow)."""
    if bool(torch.isfinite(out.sum())) or bool(torch.isfinite(out).all()):
        return
    for src in sources:
        check_finite_tensor(src.get(name), name, src.label)
    raise ValueError(
        f"merging tensor {name!r} overflowed to a non-finite value (the inputs are finite): "
        "lower the weights or lambda"
    )


def merge(
    models: Sequence[StateDictLike | StateDictSource],
    *,
    method: Method,
    base: StateDictLike | StateDictSource | None = None,
    **options: Any,
) -> dict[str, Tensor]:
    """Merge ``models`` into one state_dict (see :func:`iter_merge` for every option).

    Args:
        models: the fine-tuned models.
        method: one of :data:`METHODS`.
        base: the pretrained model (for the task-vector methods).
        **options: ``weights``, ``lambda_``, ``density``, ``consensus``, ``rescale``, ``gamma``,
            ``t``, ``normalize``, ``seed``, ``non_float``, ``progress``.

    Returns:
        ``name -> merged tensor``.

    Example:
        >>> base = {"w": torch.zeros(4)}
        >>> a = {"w": torch.tensor([1.0, -2.0, 0.0, 4.0])}
        >>> b = {"w": torch.tensor([3.0, 1.0, 0.0, -1.0])}
        >>> merge([a, b], method="task_arithmetic", base=base, lambda_=0.5)["w"].tolist()
        [2.0, -0.5, 0.0, 1.5]
        >>> merge([a, b], method="ties", base=base, density=1.0)["w"].tolist()
        [2.0, -2.0, 0.0, 4.0]
    """
    return dict(iter_merge(models, method=method, base=base, **options))
