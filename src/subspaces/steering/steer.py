"""Activation steering through forward hooks installed by a context manager.

:func:`steer` adds one hook per :class:`Intervention` and removes exactly those hooks when the
block ends (also after an exception); the model's parameters and modules are never modified.
Four exact operators act on the hidden state ``h`` at a site (``P`` is the orthogonal projector
onto the steering subspace, or onto the line of ``v`` with the ``1/||v||^2`` factor):

- ``"add"``: ``h + alpha v`` (activation addition, Turner et al. 2023; CAA);
- ``"ablate"``: ``h - alpha P h`` (``alpha = 1`` removes the component, Arditi et al. 2024);
- ``"ablate_add"``: ``h + alpha (v - P h)`` (``alpha = 1``: the component is replaced by ``v``);
- ``"clamp"``: ``h + alpha Q (c - Q^T h)`` (``alpha = 1``: the coordinates are set to ``c``).

``alpha = 0`` is an exact no-op for every operator (the hook returns the output untouched).
Positions are ``"all"``, ``"prompt"``, ``"new"`` (tokens generated after the prompt) or a bool
mask over absolute positions; they are computed from the absolute position of each token, read
from the KV cache length, so steering gives the same logits with and without the cache.

References: Turner et al. 2023, "Activation Addition: Steering Language Models Without
Optimization"; Zou et al. 2023, "Representation Engineering"; Sharma & Raman 2025, "Steering
Conceptual Bias via Transformer Latent-Subspace Activation" (G-ACT, P01).
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_finite
from ..linalg import Subspace
from .sites import Site, hidden_size, register_site_hook, resolve_site

__all__ = ["MODES", "POSITIONS", "Intervention", "SteeringHandle", "apply_operator", "steer"]

MODES: tuple[str, ...] = ("add", "ablate", "ablate_add", "clamp")
POSITIONS: tuple[str, ...] = ("all", "prompt", "new")


def _orthonormal(basis: Tensor) -> Tensor:
    """Orthonormal columns spanning ``basis`` (``(d,)`` or ``(d, k)``)."""
    return Subspace.from_vectors(basis).basis


def _as_real(value: Any, name: str) -> float:
    """``value`` as a Python float: a real number, NumPy scalar or 0-d real tensor / array."""
    expected = f"{name} must be a real number (int, float, NumPy scalar or 0-d tensor)"
    if isinstance(value, (Tensor, np.ndarray)):
        is_bool = value.dtype == (torch.bool if isinstance(value, Tensor) else np.bool_)
        is_complex = value.is_complex() if isinstance(value, Tensor) else np.iscomplexobj(value)
        is_meta = isinstance(value, Tensor) and value.is_meta
        if value.ndim != 0 or is_bool or is_complex or is_meta:
            shape, dtype = tuple(value.shape), value.dtype
            raise TypeError(f"{expected}, got {value!r:.80} (shape {shape}, dtype {dtype})")
        return float(value.item())
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{expected}, got {value!r:.80} ({type(value).__name__})")
    return float(value)


def apply_operator(
    h: Tensor,
    *,
    mode: str,
    alpha: float,
    vector: Tensor | None = None,
    basis: Tensor | None = None,
    clamp_value: float | None = None,
) -> Tensor:
    """Apply a steering operator to hidden states ``h (..., d)`` (a new tensor; ``h`` is kept).

    Args:
        h: hidden states, last dimension ``d``.
        mode: ``"add"``, ``"ablate"``, ``"ablate_add"`` or ``"clamp"`` (see the module doc).
        alpha: strength; ``0`` returns ``h`` itself.
        vector: ``(d,)`` steering vector (``add``, ``ablate_add``; spans the projector when no
            ``basis`` is given).
        basis: ``(d, k)`` orthonormal basis of the steering subspace.
        clamp_value: target coordinate(s) for ``clamp``.

    Returns:
        The steered hidden states, same shape and dtype as ``h``.

    Raises:
        ValueError: for an unknown mode or a missing vector/basis/clamp value.

    Example:
        >>> import torch
        >>> h = torch.tensor([[3.0, 4.0]])
        >>> v = torch.tensor([2.0, 0.0])
        >>> apply_operator(h, mode="add", alpha=0.5, vector=v).tolist()
        [[4.0, 4.0]]
        >>> apply_operator(h, mode="ablate", alpha=1.0, vector=v).tolist()
        [[0.0, 4.0]]
        >>> apply_operator(h, mode="ablate_add", alpha=1.0, vector=v).tolist()
        [[2.0, 4.0]]
        >>> apply_operator(h, mode="clamp", alpha=1.0, vector=v, clamp_value=-1.0).tolist()
        [[-1.0, 4.0]]
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if alpha == 0:
        return h
    v = None if vector is None else vector.to(h.dtype)
    if mode == "add":
        if v is None:
            raise ValueError("mode='add' needs a vector")
        return h + alpha * v
    if basis is None:
        if v is None:
            raise ValueError(f"mode={mode!r} needs a vector or a subspace basis")
        Q = (v / torch.linalg.vector_norm(v)).unsqueeze(-1)
    else:
        Q = basis.to(h.dtype)
    coords = h @ Q
    if mode == "ablate":
        return h - alpha * (coords @ Q.T)
    if mode == "ablate_add":
        if v is None:
            raise ValueError("mode='ablate_add' needs a vector")
        return h + alpha * (v - coords @ Q.T)
    if clamp_value is None:
        raise ValueError("mode='clamp' needs clamp_value")
    return h + alpha * ((clamp_value - coords) @ Q.T)


@dataclass(frozen=True, eq=False)
class Intervention:
    """One steering operation at one site.

    Args:
        site: a :class:`~subspaces.steering.Site` or a ``named_modules()`` name.
        vector: ``(d,)`` steering vector, used as is (scale included: for a fitted direction use
            ``direction.vector()``, i.e. ``direction_ * scale_``).
        subspace: a :class:`~subspaces.linalg.Subspace` or a ``(d, k)`` tensor whose columns
            span the subspace to ablate / clamp / replace.
        mode: ``"add"``, ``"ablate"``, ``"ablate_add"`` or ``"clamp"``.
        alpha: strength (``0`` is an exact no-op; may be negative). A NumPy scalar or a 0-d
            tensor is converted to a Python float (detached: no gradient flows into it).
        positions: ``"all"``, ``"prompt"``, ``"new"`` or a bool mask ``(L,)`` / ``(B, L)`` over
            absolute positions (positions beyond ``L`` are not steered). A call with ``k * B``
            sequences, as ``generate(num_beams=k)`` or ``num_return_sequences=k`` runs, gives
            row ``i`` of the mask to sequences ``i * k`` to ``i * k + k - 1`` (``generate``
            repeats each prompt ``k`` times in place).
        clamp_value: the coordinate value(s) ``mode="clamp"`` sets.

    Raises:
        ValueError: for an unknown mode or positions, a missing vector / subspace / clamp value,
            a non-finite alpha or vector, or a vector and subspace of different dimensions.
            (A vector that overflows the model's dtype is refused by :func:`steer`.)
        TypeError: for fields of the wrong type.

    Example:
        >>> import torch
        >>> iv = Intervention("model.layers.1", torch.ones(4), mode="add", alpha=2.0)
        >>> iv.dim, iv.basis is None
        (4, True)
        >>> Intervention("model.layers.1", subspace=torch.eye(4)[:, :2], mode="ablate").dim
        4
    """

    site: Site | str
    vector: Tensor | None = None
    subspace: Subspace | Tensor | None = None
    mode: str = "add"
    alpha: float = 1.0
    positions: str | Tensor = "all"
    clamp_value: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.site, (Site, str)):
            raise TypeError(f"site must be a Site or a module name, got {type(self.site).__name__}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        object.__setattr__(self, "alpha", _as_real(self.alpha, "alpha"))
        if not math.isfinite(self.alpha):
            raise ValueError(f"alpha must be finite, got {self.alpha}")
        if isinstance(self.positions, Tensor):
            if self.positions.dtype != torch.bool or self.positions.ndim not in (1, 2):
                raise ValueError(
                    "positions mask must be a bool tensor of shape (L,) or (batch, L), got "
                    f"dtype {self.positions.dtype}, shape {tuple(self.positions.shape)}"
                )
        elif self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS} or a bool mask")
        if self.vector is not None:
            if not isinstance(self.vector, Tensor) or not self.vector.is_floating_point():
                raise TypeError(f"vector must be a floating tensor, got {self.vector!r:.80}")
            if self.vector.ndim != 1 or self.vector.numel() == 0:
                raise ValueError(f"vector must be 1-D (d,), got shape {tuple(self.vector.shape)}")
            check_finite(self.vector, "vector")
        basis: Tensor | None
        if self.subspace is None:
            basis = None
        elif isinstance(self.subspace, Subspace):
            basis = self.subspace.basis
        elif isinstance(self.subspace, Tensor):
            if self.subspace.ndim not in (1, 2):
                shape = tuple(self.subspace.shape)
                raise ValueError(f"subspace tensor must be (d, k) columns, got shape {shape}")
            basis = _orthonormal(self.subspace)
        else:
            kind = type(self.subspace).__name__
            raise TypeError(f"subspace must be a Subspace or a (d, k) tensor, got {kind}")
        object.__setattr__(self, "_basis", basis)
        if self.mode in ("add", "ablate_add") and self.vector is None:
            raise ValueError(f"mode={self.mode!r} needs a vector")
        if self.mode in ("ablate", "clamp") and self.vector is None and basis is None:
            raise ValueError(f"mode={self.mode!r} needs a vector or a subspace")
        if self.mode == "clamp" and self.clamp_value is None:
            raise ValueError("mode='clamp' needs clamp_value")
        projects_on_vector = basis is None and self.mode != "add" and self.vector is not None
        if projects_on_vector and float(torch.linalg.vector_norm(self.vector)) == 0.0:
            raise ValueError(f"mode={self.mode!r} cannot project onto a zero vector")
        if self.vector is not None and basis is not None and basis.shape[0] != self.vector.numel():
            raise ValueError(
                f"vector has dimension {self.vector.numel()} but the subspace lives in "
                f"dimension {basis.shape[0]}"
            )

    @property
    def basis(self) -> Tensor | None:
        """The orthonormal ``(d, k)`` basis of ``subspace`` (``None`` without a subspace)."""
        return getattr(self, "_basis", None)

    @property
    def dim(self) -> int:
        """The hidden size this intervention expects."""
        if self.vector is not None:
            return int(self.vector.numel())
        assert self.basis is not None  # guaranteed by __post_init__
        return int(self.basis.shape[0])


class _CallState:
    """Absolute positions of the tokens in the current forward call of the steered model."""

    def __init__(self, prompt_length: int | None) -> None:
        self.fixed_prompt = prompt_length
        self.prompt_length: int | None = prompt_length
        self.prompt_tokens: Tensor | None = None
        self.past = 0
        self.length = 0
        self.active = False

    def update(self, past: int, tokens: Tensor | None, length: int) -> None:
        self.past, self.length, self.active = past, length, True
        if self.fixed_prompt is not None:
            return
        if past > 0:
            if self.prompt_length is None:
                self.prompt_length = past
            return
        stored = self.prompt_tokens
        recompute = (
            stored is not None
            and tokens is not None
            and tokens.shape[0] == stored.shape[0]
            and tokens.shape[1] >= stored.shape[1]
            and torch.equal(tokens[:, : stored.shape[1]], stored.to(tokens.device))
        )
        if not recompute:
            self.prompt_length = length
            self.prompt_tokens = None if tokens is None else tokens.detach().clone()


class SteeringHandle:
    """What :func:`steer` yields: the active interventions and the prompt bookkeeping.

    Attributes:
        interventions: the interventions, with their sites resolved to :class:`Site`.
        sites: the resolved sites, one per intervention.

    Example:
        With ``positions="new"`` the prompt (the first call's tokens) is left alone and only the
        tokens after it are steered, also when the sequence is recomputed in full:

        >>> import torch
        >>> from torch import nn
        >>> from subspaces.steering import Intervention, steer
        >>> class LM(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.embed = nn.Embedding(5, 2)
        ...         self.layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(2)])
        ...     def forward(self, input_ids):
        ...         h = self.embed(input_ids)
        ...         for layer in self.layers:
        ...             h = layer(h)
        ...         return h
        >>> model, prompt, longer = LM(), torch.tensor([[1, 2, 3]]), torch.tensor([[1, 2, 3, 4]])
        >>> before = model(longer).detach()
        >>> iv = Intervention("layers.1", torch.tensor([1.0, -1.0]), alpha=2.0, positions="new")
        >>> with steer(model, iv) as handle:
        ...     _ = model(prompt)
        ...     after = model(longer).detach()
        ...     length = handle.prompt_length
        ...     handle.reset()  # the next cache-free call starts a new prompt
        ...     _ = model(longer)
        >>> [s.name for s in handle.sites], length, handle.prompt_length
        (['layers.1'], 3, 4)
        >>> (after - before).tolist()
        [[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [2.0, -2.0]]]
    """

    def __init__(self, interventions: list[Intervention], sites: list[Site], state: _CallState):
        self.interventions = interventions
        self.sites = sites
        self._state = state
        self.active = True

    @property
    def prompt_length(self) -> int | None:
        """Length of the current prompt (tokens before it are ``"prompt"``, after ``"new"``)."""
        return self._state.prompt_length

    def set_prompt_length(self, n: int | None) -> None:
        """Fix the prompt length (``None``: detect it from the first call of each new prompt).

        Raises:
            ValueError: if ``n`` is not a non-negative int or ``None``.
        """
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"prompt length must be a non-negative int or None, got {n!r}")
        self._state.fixed_prompt = n
        self._state.prompt_length = n
        self._state.prompt_tokens = None

    def reset(self) -> None:
        """Forget the detected prompt; the next cache-free call defines a new one."""
        self.set_prompt_length(None)


def _call_info(signature: inspect.Signature | None, args: Any, kwargs: dict[str, Any]) -> Any:
    named: dict[str, Any] = dict(kwargs)
    if signature is not None:
        try:
            bound = signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            bound = {}
        for name, value in bound.items():
            param = signature.parameters[name]
            if param.kind == param.VAR_KEYWORD:
                named.update(value)
            else:
                named[name] = value
    elif args:
        named.setdefault("input_ids", args[0])
    tokens = named.get("input_ids")
    if not isinstance(tokens, Tensor):
        tokens = named.get("inputs_embeds")
    if not isinstance(tokens, Tensor) or tokens.ndim < 2:
        return None
    past = 0
    cache_position = named.get("cache_position")
    if isinstance(cache_position, Tensor) and cache_position.numel() > 0:
        past = int(cache_position.reshape(-1)[0])
    else:
        for key in ("cache", "past_key_values"):
            cache = named.get(key)
            if cache is None:
                continue
            if hasattr(cache, "get_seq_length"):
                past = int(cache.get_seq_length())
            elif isinstance(cache, (tuple, list)) and cache and isinstance(cache[0], (tuple, list)):
                past = int(cache[0][0].shape[-2])
            break
    return past, tokens, int(tokens.shape[1])


def _position_mask(iv: Intervention, state: _CallState, h: Tensor) -> Tensor | None:
    """``(B or 1, T)`` bool mask of the steered tokens of this call, ``None`` for all."""
    if isinstance(iv.positions, str) and iv.positions == "all":
        return None
    if not state.active:
        raise ValueError(
            f"positions={iv.positions if isinstance(iv.positions, str) else 'mask'} needs the "
            "forward call to go through the model passed to steer() (no call was seen)"
        )
    T = h.shape[1]
    pos = torch.arange(state.past, state.past + T, device=h.device)
    if isinstance(iv.positions, Tensor):
        mask = iv.positions.to(h.device)
        L = mask.shape[-1]
        inside = pos < L
        picked = mask[..., pos.clamp(max=max(L - 1, 0))] & inside
        if picked.ndim == 1:
            return picked.unsqueeze(0)
        rows, batch = picked.shape[0], h.shape[0]
        if rows in (1, batch):
            return picked
        if rows > 0 and batch % rows == 0:
            # generate(num_beams=k) / num_return_sequences=k: each prompt repeated k times in place
            return picked.repeat_interleave(batch // rows, dim=0)
        raise ValueError(
            f"positions mask has {rows} rows but the forward call has {batch} sequences; "
            f"expected 1 row, {batch} rows, or a divisor of {batch} (each row then covers "
            "batch // rows consecutive sequences, as generate's num_beams / "
            "num_return_sequences expansion lays them out)"
        )
    prompt = state.prompt_length if state.prompt_length is not None else state.past + T
    sel = pos < prompt if iv.positions == "prompt" else pos >= prompt
    return sel.unsqueeze(0)


def _cast(
    iv: Intervention, site: Site, dtype: torch.dtype, device: torch.device | None
) -> tuple[Tensor | None, Tensor | None]:
    """The vector and projection basis of ``iv`` in the model's dtype, checked to be finite.

    The basis of a vector-only projection is the unit vector, computed in float64 before the
    cast, so only the direction has to fit the model's dtype.

    Returns:
        ``(vector, basis)`` on ``device`` in ``dtype`` (each ``None`` when ``iv`` has none).

    Raises:
        ValueError: if ``alpha * vector`` (what is added) or ``clamp_value`` overflows ``dtype``.
    """
    vector = None if iv.vector is None else iv.vector.to(device=device, dtype=dtype)
    basis = iv.basis
    if basis is None and iv.mode != "add" and iv.vector is not None:
        v64 = iv.vector.double()
        basis = (v64 / torch.linalg.vector_norm(v64)).unsqueeze(-1)
    basis = None if basis is None else basis.to(device=device, dtype=dtype)
    if dtype.is_floating_point and vector is not None and iv.mode in ("add", "ablate_add"):
        added = iv.alpha * vector
        if not bool(torch.isfinite(added).all()):
            largest = abs(iv.alpha) * float(iv.vector.abs().max())  # type: ignore[union-attr]
            raise ValueError(
                f"the steering vector at site {site.name!r} overflows the model's dtype {dtype}: "
                f"alpha * vector has entries up to {largest:.3g} but the largest finite {dtype} "
                f"value is {torch.finfo(dtype).max:.3g}; scale the vector or alpha down, or run "
                "the model in a wider dtype"
            )
    if dtype.is_floating_point and iv.mode == "clamp" and iv.clamp_value is not None:
        target = torch.as_tensor(iv.clamp_value).to(dtype=dtype)
        if not bool(torch.isfinite(target).all()):
            raise ValueError(
                f"clamp_value={iv.clamp_value!r} at site {site.name!r} overflows the model's "
                f"dtype {dtype} (largest finite value {torch.finfo(dtype).max:.3g})"
            )
    return vector, basis


def _param_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of the first floating parameter of ``module`` (``None`` if it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


@contextmanager
def steer(
    model: nn.Module,
    interventions: Intervention | Sequence[Intervention],
    *,
    prompt_length: int | None = None,
) -> Iterator[SteeringHandle]:
    """Steer ``model`` inside a ``with`` block; remove exactly the added hooks afterwards.

    Positions are absolute token positions: with a KV cache, the position of the tokens of a
    call starts at the cache length, so ``positions="new"`` steers the same tokens whether the
    sequence is generated step by step with the cache or recomputed in full. The prompt is the
    input of the first cache-free call of a new sequence (a cache-free call whose tokens start
    with the stored prompt is a recomputation of it, not a new prompt); pass ``prompt_length``
    or call ``handle.set_prompt_length`` to fix it instead.

    Args:
        model: the model to steer (its parameters and modules are never modified).
        interventions: one :class:`Intervention` or a sequence (applied in order).
        prompt_length: fix the prompt length instead of detecting it.

    Yields:
        A :class:`SteeringHandle`.

    Raises:
        ValueError: for an empty list, an unknown site, a vector or subspace whose dimension
            does not match the model's hidden size, a vector that overflows the model's dtype
            (``alpha * vector`` cast to the dtype of the site's parameters on entry, and to the
            dtype of the hidden states when the model runs, must be finite), a positions mask
            whose rows do not match the batch, or (when the model runs) a site output that is
            not ``(batch, seq, d)``.
        TypeError: for interventions that are not :class:`Intervention`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class LM(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layers = nn.ModuleList([nn.Sequential(nn.Linear(2, 2)) for _ in range(2)])
        ...     def forward(self, input_ids):
        ...         h = nn.functional.one_hot(input_ids, 2).float()
        ...         for block in self.layers:
        ...             h = block(h)
        ...         return h
        >>> model, x = LM(), torch.tensor([[0, 1, 1]])
        >>> before = model(x)
        >>> iv = Intervention("layers.1", torch.tensor([1.0, -1.0]), alpha=2.0)
        >>> with steer(model, iv):
        ...     after = model(x)
        >>> torch.allclose(after - before, torch.tensor([2.0, -2.0]))
        True
        >>> len(model._forward_pre_hooks), len(model.layers[1]._forward_hooks)
        (0, 0)
    """
    items = [interventions] if isinstance(interventions, Intervention) else list(interventions)
    if not items:
        raise ValueError("interventions is empty: pass at least one Intervention")
    for j, iv in enumerate(items):
        if not isinstance(iv, Intervention):
            raise TypeError(f"interventions[{j}] must be an Intervention, got {type(iv).__name__}")
    sites = [resolve_site(model, iv.site) for iv in items]
    try:
        width: int | None = hidden_size(model)
    except ValueError:
        width = None
    modules = dict(model.named_modules())
    for iv, site in zip(items, sites, strict=True):
        if width is not None and site.kind != "module" and iv.dim != width:
            raise ValueError(
                f"intervention at {site.name!r} has dimension {iv.dim} but the model's hidden "
                f"size is {width}"
            )
        dtype = _param_dtype(modules[site.name]) or _param_dtype(model)
        if dtype is not None and iv.alpha != 0:
            _cast(iv, site, dtype, None)  # refuse an overflowing vector before the model runs
    state = _CallState(prompt_length)
    handle = SteeringHandle(items, sites, state)
    try:
        signature: inspect.Signature | None = inspect.signature(model.forward)
    except (TypeError, ValueError):
        signature = None

    def model_pre_hook(mod: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        info = _call_info(signature, args, kwargs)
        if info is None:
            state.active = False
        else:
            state.update(*info)

    def make_fn(iv: Intervention, site: Site) -> Any:
        cache: dict[tuple[torch.dtype, torch.device], tuple[Tensor | None, Tensor | None]] = {}
        expected = iv.dim

        def fn(h: Tensor) -> Tensor | None:
            if iv.alpha == 0:
                return None
            if h.shape[-1] != expected:
                raise ValueError(
                    f"site {site.name!r} has width {h.shape[-1]} but the intervention has "
                    f"dimension {expected}"
                )
            key = (h.dtype, h.device)
            if key not in cache:
                cache[key] = _cast(iv, site, h.dtype, h.device)
            vector, basis = cache[key]
            mask = _position_mask(iv, state, h)
            if mask is not None and not bool(mask.any()):
                return None
            new = apply_operator(
                h,
                mode=iv.mode,
                alpha=float(iv.alpha),
                vector=vector,
                basis=basis,
                clamp_value=iv.clamp_value,
            )
            if mask is None or bool(mask.all()):
                return new
            return torch.where(mask.unsqueeze(-1), new, h)

        return fn

    handles = []
    try:
        handles.append(model.register_forward_pre_hook(model_pre_hook, with_kwargs=True))
        for iv, site in zip(items, sites, strict=True):
            handles.append(register_site_hook(model, site, make_fn(iv, site), width=None))
        yield handle
    finally:
        for h in handles:
            h.remove()
        handle.active = False
