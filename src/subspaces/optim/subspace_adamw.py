"""``SubspaceAdamW``: AdamW run inside a low-rank subspace of each weight's gradient.

One optimizer covers GaLore (exact SVD projector), GaLore 2 (randomized SVD), the SVD-free DCT
projector of P11, seeded random projections (GoLore/Flora) and Q-GaLore's lazy, layer-adaptive
refresh with 4-bit projections (P18). Parameter groups accept GaLore's keys verbatim
(``rank``, ``update_proj_gap``, ``scale``, ``proj_type``), so switching from ``GaLoreAdamW``
needs no change to the groups.

How a step works for a projected weight ``W`` (``m x n``) with gradient ``G``:

1. orient ``G`` so the compressed side is the smaller one (``proj_type="std"``): ``G`` itself
   when ``m >= n``, ``G^T`` when ``m < n``;
2. at a refresh step, the projector picks an orthonormal basis ``Q`` (``b x r``) from the
   oriented matrix (``svd``: its top-``r`` right singular vectors, from a float32/float64 SVD of
   the oriented matrix, kept in float32); moments are kept (``moment_transfer="none"``,
   GaLore), rotated into the new basis (``"rotate"``: ``m <- m C``, ``v <- v (C * C)`` with
   ``C = Q_old^T Q_new``) or reset;
3. Adam runs on ``R = G Q``; the update ``N = m_hat / (sqrt(v_hat) + eps)``, with ``eps`` added
   to the bias-corrected root as in ``torch.optim.AdamW``, maps back as ``scale * N Q^T``;
4. decoupled weight decay multiplies the *pre-update* weight by ``1 - lr * weight_decay`` (as
   ``torch.optim.AdamW`` does).

Differences from galore-torch's ``GaLoreAdamW`` (documented, no parity flag): GaLore adds ``eps``
to ``sqrt(v)`` *before* bias correction (our formula with ``eps / sqrt(1 - beta2^t)``, a larger
effective eps in early steps); for ``m < n`` it takes ``U[:, :r]`` of the SVD of ``G`` where we
take the right singular vectors of ``G^T``, the same subspace with possibly different signs,
which under ``moment_transfer="none"`` changes how carried-over first moments are read after a
refresh; it casts a half-precision basis back to half; and it decays the already-updated weight.

Groups without ``rank``, 1-D parameters, ranks ``>= min(m, n)`` and ranks whose projected state
would not be smaller than AdamW's (the break-even rule below) take the plain AdamW path, computed
by ``torch.optim.adamw.adamw`` itself, so they match ``torch.optim.AdamW`` bit for bit.

Break-even rule (``full_rank="adamw"``, the default): a weight is projected only if its two
``a x r`` moments plus the stored basis take fewer bytes than AdamW's two ``a x b`` moments. For
float32 moments and a float32 basis (``svd``, ``rsvd``) of a square weight that is ``r < 2 b / 3``;
a 4-bit basis, bfloat16 moments or a basis stored as indices or a seed (``dct``, ``random``) save
memory up to nearly ``r = b``. Compute gives no break-even on CPU: the two ``a x b x r`` products
of a projected step cost more than AdamW's elementwise update for every ``r`` above a few dozen,
so the projection is a memory saving, not a speed-up.

A step runs same-shaped layers of a group together: their gradients are projected with one
``torch.bmm`` when they are small (one ``torch.mm`` each otherwise), the moments updated with
``torch._foreach_*``, and each update added to its weight by one fused ``addmm_`` (no ``m x n``
temporary); a layer stepped alone (:meth:`SubspaceAdamW.step_param`) runs the same kernels.

The optimizer state holds only tensors (moments, ``step``, the projector's basis / indices / seed,
the refresh schedule), so ``state_dict()`` loads with ``torch.load(weights_only=True)``, keeps every
state tensor's dtype across a load, and resuming at step ``k`` reproduces uninterrupted training
bit for bit on CPU. Randomized projectors draw from generators seeded by
``(seed, parameter index, step)``, never from the global RNG.

FSDP2 (``torch.distributed.fsdp.fully_shard``): parameters that are ``DTensor`` row shards
(``Shard(0)``) are stepped on their local rows with the collectives described in
:mod:`subspaces.optim._sharded`: every rank holds the same basis; a weight compressed on its
unsharded columns needs no communication per step; a refresh needs nothing (``random``), one
all-reduce of ``n`` scores (``dct``), of the ``n x n`` Gram matrix (``svd``) or of ``n x l``
and ``l x l`` blocks (``rsvd``); a weight compressed on its sharded rows gathers its gradient at
a refresh and all-reduces ``n x r`` partial products per step. The state then holds ``DTensor``
row shards of the moments, so ``torch.distributed.checkpoint`` (``get_state_dict`` /
``set_state_dict``) saves and resumes it bit for bit; :attr:`SubspaceAdamW.comm_bytes` counts
what was communicated.

References:
    Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection", ICML 2024.
    Modoranu et al., "SVD-Free Low-Rank Adaptive Gradient Optimization for Large Language Models"
    (P11), 2025. Zhang et al., "Q-GaLore: Quantized GaLore with INT4 Projection and Layer-Adaptive
    Low-Rank Gradients" (P18), 2024. Loshchilov and Hutter, "Decoupled Weight Decay
    Regularization", ICLR 2019.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.adamw import adamw as _functional_adamw

from ._sharded import has_dtensor, sharded_step
from .projectors import (
    PROJECTORS,
    CoordinateProjector,
    DCTProjector,
    NystromProjector,
    Projector,
    RandomizedSVDProjector,
    RandomProjector,
    SVDProjector,
    get_projector,
)
from .quantization import int8_module_of

__all__ = ["NonFiniteGradientError", "SubspaceAdamW"]

_PROJ_TYPES = ("std", "reverse_std", "left", "right")
_TRANSFERS = ("none", "rotate", "reset")
_REFRESH = ("fixed", "lazy")
_FULL_RANK = ("adamw", "project")
_NONFINITE = ("error", "skip")
_PREFIX = "proj."
_CUSTOM = "custom:"
_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
#: same-shaped layers are projected with one ``bmm`` when each gradient has at most this many
#: entries (measured on CPU: a stack of larger gradients costs more than the per-layer ``mm``
#: calls it replaces, see ``docs/optim.md``)
_BMM_MAX_NUMEL = 128 * 128
#: layers per bucket processed together (bounds the bases and coordinates held at once)
_CHUNK = 16


class NonFiniteGradientError(ValueError):
    """A gradient held NaN or Inf; the optimizer state and the parameters were left unchanged.

    Example:
        >>> import torch
        >>> from subspaces.optim import NonFiniteGradientError, SubspaceAdamW
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> opt = SubspaceAdamW([w], lr=0.1)
        >>> w.grad = torch.tensor([1.0, float("nan"), 0.0])
        >>> try:
        ...     opt.step()
        ... except NonFiniteGradientError as e:
        ...     print(type(e).__name__, isinstance(e, ValueError))
        NonFiniteGradientError True
        >>> w.tolist(), len(opt.state)  # nothing changed
        ([1.0, 1.0, 1.0], 0)
    """


def _seed_for(seed: int, index: int, step: int) -> int:
    """A deterministic 63-bit seed from (group seed, parameter index, step)."""
    x = (seed * _MIX[0] + index * _MIX[1] + step * _MIX[2] + 1) % (1 << 64)
    x ^= x >> 31
    x = (x * _MIX[1]) % (1 << 64)
    x ^= x >> 29
    return x % (1 << 63)


class SubspaceAdamW(Optimizer):
    """AdamW in a refreshed low-rank subspace of each weight's gradient (GaLore family).

    Args:
        params: parameters or parameter groups (dicts). Any default below can be set per group.
        lr: learning rate: a float or, as in ``torch.optim.AdamW``, a one-element tensor.
        betas: Adam's ``(beta1, beta2)``.
        eps: Adam's epsilon.
        weight_decay: decoupled weight decay, applied to the pre-update weight.
        rank: subspace rank ``r``; ``None`` means plain AdamW for the group (GaLore's convention
            of projecting only groups that carry ``rank``).
        update_proj_gap: steps between refreshes of the basis (GaLore's ``T``).
        scale: multiplier of the projected update (GaLore's ``alpha``).
        proj_type: ``"std"`` compresses the smaller side, ``"reverse_std"`` the larger,
            ``"right"`` always the columns, ``"left"`` always the rows.
        projector: ``"svd"``, ``"rsvd"``, ``"nystrom"``, ``"dct"``, ``"random"`` or
            ``"coordinate"`` (see :mod:`subspaces.optim.projectors`; ``"nystrom"`` takes its
            oversampling from ``rsvd_oversample`` and is the one-all-reduce choice under FSDP2).
        moment_transfer: on a refresh, ``"none"`` keeps the moments as they are (GaLore),
            ``"rotate"`` maps them into the new basis, ``"reset"`` zeroes them.
        refresh: ``"fixed"`` refreshes every ``update_proj_gap`` steps; ``"lazy"`` multiplies a
            layer's gap by ``lazy_growth`` whenever the mean subspace overlap
            ``||Q_old^T Q_new||_F^2 / r`` of its last ``lazy_window`` refreshes is at least
            ``lazy_threshold`` (Q-GaLore's layer-adaptive refresh, measured on the whole
            subspace instead of the first singular vector).
        lazy_threshold: overlap above which a layer's subspace counts as settled.
        lazy_window: number of refreshes averaged.
        lazy_growth: factor by which a settled layer's gap grows.
        max_update_proj_gap: cap on a layer's gap under lazy refresh (``None``: no cap).
        proj_bits: ``None`` keeps a stored basis in the parameter's dtype; ``4`` stores it in
            4 bits per value with per-group scales (Q-GaLore; only projectors that store a
            basis, ``svd``, ``rsvd`` and ``nystrom``, are affected).
        proj_group_size: group size of the 4-bit quantization.
        proj_dtype: ``None`` multiplies by the basis in the gradient's float dtype;
            ``torch.bfloat16`` runs the two products of a non-refresh step (``G Q`` and
            ``N Q^T``) in bfloat16 with float32 accumulation, about 3x faster on CPUs with
            AVX512-BF16 (rounds ``R`` and the update to 8 bits of mantissa, see
            ``docs/optim.md``). Refresh steps and the moments stay in float.
        state_dtype: dtype of the moments (``None``: float32, or the parameter's dtype if wider);
            ``torch.bfloat16`` halves the state.
        full_rank: what ranks that save no memory do: ``"adamw"`` (plain AdamW for ranks
            ``>= min(m, n)`` and for ranks whose projected state would be at least AdamW's, see
            the break-even rule in the module docstring) or ``"project"`` (project every rank,
            as GaLore does, with ``r = min(m, n)`` at most; with the ``coordinate`` projector at
            full rank that is exactly AdamW, the reference the conformance suite checks).
        nonfinite: ``"error"`` raises :class:`NonFiniteGradientError` before changing anything;
            ``"skip"`` skips the whole step (counted in :attr:`skipped_steps`).
        seed: seed of the randomized projectors' generators.
        maximize: maximize the objective instead of minimizing it.
        foreach: passed to the plain-AdamW kernel (``None``: torch's default).
        rsvd_oversample: oversampling of the ``rsvd`` and ``nystrom`` projectors.
        rsvd_power_iters: power iterations of the ``rsvd`` projector.
        dct_norm: column norm (1 or 2) used by the ``dct`` projector to score frequencies
            (1 is the paper's choice for DCT-AdamW, P11).
        error_feedback: keep the part of each gradient that the projection drops,
            ``E <- (G + E) - (G + E) Q Q^T``, and add it to the next gradient before projecting
            (DCT-AdamW's error feedback, P11). Costs one ``a x b`` buffer per projected weight in
            the state dtype (counted by the break-even rule).

    Zero-size parameters step as in ``torch.optim.AdamW``; complex parameters are rejected at
    construction, parameters on the meta device or with sparse gradients when stepped (before
    anything changes), each error naming the parameter. The weights of
    :class:`~subspaces.optim.quantization.Int8Linear` layers are updated through their INT8 codes.

    Raises:
        ValueError: for an out-of-range hyperparameter (named in the message).
        TypeError: for a hyperparameter of the wrong type, or a complex parameter.

    Example:
        >>> import torch
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> W = torch.nn.Parameter(torch.randn(64, 32))
        >>> target = torch.randn(64, 32)
        >>> opt = SubspaceAdamW([{"params": [W], "rank": 8, "update_proj_gap": 20,
        ...                       "projector": "dct"}], lr=0.05)
        >>> start = float(((W.detach() - target) ** 2).sum())
        >>> for _ in range(60):
        ...     opt.zero_grad()
        ...     loss = ((W - target) ** 2).sum()
        ...     loss.backward()
        ...     opt.step()
        >>> float(((W.detach() - target) ** 2).sum()) < 0.5 * start
        True
        >>> opt.state[W]["exp_avg"].shape  # Adam runs on 64 x 8 coordinates
        torch.Size([64, 8])
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        rank: int | None = None,
        update_proj_gap: int = 200,
        scale: float = 1.0,
        proj_type: str = "std",
        projector: str = "svd",
        moment_transfer: str = "none",
        refresh: str = "fixed",
        lazy_threshold: float = 0.6,
        lazy_window: int = 3,
        lazy_growth: int = 2,
        max_update_proj_gap: int | None = None,
        proj_bits: int | None = None,
        proj_group_size: int = 256,
        proj_dtype: torch.dtype | None = None,
        state_dtype: torch.dtype | None = None,
        full_rank: str = "adamw",
        nonfinite: str = "error",
        seed: int = 0,
        maximize: bool = False,
        foreach: bool | None = None,
        rsvd_oversample: int = 8,
        rsvd_power_iters: int = 1,
        dct_norm: int = 2,
        error_feedback: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            rank=rank,
            update_proj_gap=update_proj_gap,
            scale=scale,
            proj_type=proj_type,
            projector=projector,
            moment_transfer=moment_transfer,
            refresh=refresh,
            lazy_threshold=lazy_threshold,
            lazy_window=lazy_window,
            lazy_growth=lazy_growth,
            max_update_proj_gap=max_update_proj_gap,
            proj_bits=proj_bits,
            proj_group_size=proj_group_size,
            proj_dtype=proj_dtype,
            state_dtype=state_dtype,
            full_rank=full_rank,
            nonfinite=nonfinite,
            seed=seed,
            maximize=maximize,
            foreach=foreach,
            rsvd_oversample=rsvd_oversample,
            rsvd_power_iters=rsvd_power_iters,
            dct_norm=dct_norm,
            error_feedback=error_feedback,
        )
        self._validate_group(defaults)
        self._projectors: dict[tuple[Any, ...], Projector] = {}
        self.skipped_steps = 0
        #: bytes handed to ``all_reduce`` by steps on FSDP2 ``DTensor`` shards (see
        #: :mod:`subspaces.optim._sharded`); stays 0 in one process
        self.comm_bytes = 0
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ configuration

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after validating its hyperparameters (GaLore keys accepted).

        Args:
            param_group: a dict with ``params`` and any hyperparameter overrides.

        Raises:
            TypeError: for a complex parameter (named in the message) or a hyperparameter of the
                wrong type.
        """
        if "projection_type" in param_group and "proj_type" not in param_group:
            param_group = dict(param_group)
            param_group["proj_type"] = param_group.pop("projection_type")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._validate_group(group)
        for i, p in enumerate(group["params"]):
            if p.is_complex():
                raise TypeError(
                    f"{self._label(p, group, len(self.param_groups) - 1, i)} is complex "
                    f"({p.dtype}); SubspaceAdamW handles real floating parameters only (optimize "
                    "torch.view_as_real(p) as a real parameter, or use torch.optim.AdamW)"
                )

    @staticmethod
    def _validate_group(group: dict[str, Any]) -> None:
        def num(name: str, low: float, high: float = math.inf, *, low_open: bool = False) -> None:
            value = group[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
            bad = value <= low if low_open else value < low
            if bad or value > high or not math.isfinite(value):
                raise ValueError(
                    f"{name} must lie in {'(' if low_open else '['}{low}, {high}], got {value}"
                )

        def integer(name: str, low: int, *, optional: bool = False) -> None:
            value = group[name]
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")

        def choice(name: str, options: tuple[str, ...]) -> None:
            if group[name] not in options:
                raise ValueError(f"{name} must be one of {options}, got {group[name]!r}")

        lr = group["lr"]
        if isinstance(lr, Tensor):  # as torch.optim.AdamW: a one-element tensor
            if lr.numel() != 1 or not lr.is_floating_point() or lr.is_meta:
                raise ValueError(
                    f"lr as a Tensor must be a one-element real floating tensor with data, got "
                    f"shape {tuple(lr.shape)}, dtype {lr.dtype}, device {lr.device}"
                )
            if group["foreach"]:
                raise ValueError("lr as a Tensor is not supported with foreach=True")
            value = float(lr)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"lr must lie in [0.0, inf], got {value}")
        else:
            num("lr", 0.0)
        betas = group["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise TypeError(f"betas must be a pair of floats, got {betas!r}")
        for i, b in enumerate(betas):
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0.0 <= b < 1.0:
                raise ValueError(f"betas[{i}] must lie in [0, 1), got {b!r}")
        num("eps", 0.0, low_open=True)
        num("weight_decay", 0.0)
        integer("rank", 1, optional=True)
        integer("update_proj_gap", 1)
        num("scale", 0.0, low_open=True)
        choice("proj_type", _PROJ_TYPES)
        projector = group["projector"]
        if isinstance(projector, str):
            choice("projector", tuple(PROJECTORS))
        elif not isinstance(projector, Projector):
            raise TypeError(
                f"projector must be a name or a Projector, got {type(projector).__name__}"
            )
        choice("moment_transfer", _TRANSFERS)
        choice("refresh", _REFRESH)
        num("lazy_threshold", 0.0, 1.0)
        integer("lazy_window", 1)
        integer("lazy_growth", 1)
        integer("max_update_proj_gap", 1, optional=True)
        if group["proj_bits"] not in (None, 4):
            raise ValueError(f"proj_bits must be None or 4, got {group['proj_bits']!r}")
        integer("proj_group_size", 2)
        if group.get("proj_dtype") not in (None, torch.bfloat16):
            raise ValueError(
                f"proj_dtype must be None or torch.bfloat16, got {group.get('proj_dtype')!r}"
            )
        if group["proj_group_size"] % 2:
            raise ValueError(f"proj_group_size must be even, got {group['proj_group_size']}")
        sd = group["state_dtype"]
        if sd is not None and (not isinstance(sd, torch.dtype) or not sd.is_floating_point):
            raise TypeError(f"state_dtype must be None or a floating torch.dtype, got {sd!r}")
        choice("full_rank", _FULL_RANK)
        choice("nonfinite", _NONFINITE)
        integer("seed", 0)
        integer("rsvd_oversample", 0)
        integer("rsvd_power_iters", 0)
        if group["dct_norm"] not in (1, 2):
            raise ValueError(f"dct_norm must be 1 or 2, got {group['dct_norm']!r}")
        if not isinstance(group.get("error_feedback", False), bool):
            raise TypeError(f"error_feedback must be a bool, got {group['error_feedback']!r}")

    def _projector(self, group: dict[str, Any]) -> Projector:
        spec = group["projector"]
        if isinstance(spec, Projector):
            return spec
        key = (spec, group["rsvd_oversample"], group["rsvd_power_iters"], group["dct_norm"])
        proj = self._projectors.get(key)
        if proj is None:
            if spec == "rsvd":
                proj = PROJECTORS["rsvd"](group["rsvd_oversample"], group["rsvd_power_iters"])  # type: ignore[call-arg]
            elif spec == "nystrom":
                proj = NystromProjector(group["rsvd_oversample"])
            elif spec == "dct":
                proj = PROJECTORS["dct"](group["dct_norm"])  # type: ignore[call-arg]
            else:
                proj = get_projector(spec)
            self._projectors[key] = proj
        return proj

    # ------------------------------------------------------------------ helpers

    def _plan(self, p: Tensor, group: dict[str, Any]) -> tuple[bool, int]:
        """Whether ``p`` is projected in ``group``, and the effective rank."""
        rank = group["rank"]
        if rank is None or p.ndim < 2 or p.numel() == 0:
            return False, 0  # empty parameters take the plain AdamW path, as in torch (a no-op)
        m = p.shape[0]
        n = p.numel() // m
        small = min(m, n)
        if rank >= small:
            if group["full_rank"] == "adamw":
                return False, 0
            return True, small
        if group["full_rank"] == "adamw" and not self._saves_memory(p, group, (m, n), rank):
            return False, 0
        return True, rank

    def _saves_memory(
        self, p: Tensor, group: dict[str, Any], shape2: tuple[int, int], rank: int
    ) -> bool:
        """The break-even rule: project only if the layer's state is smaller than AdamW's.

        The gradient oriented to ``(a, b)`` (``b`` compressed) keeps two ``a x r`` moments in
        the state dtype plus the stored basis: ``b x r`` floats (``svd``, ``rsvd``), ``b r / 2``
        bytes and two float32 numbers per quantization group with ``proj_bits=4``, or ``r``
        int64 indices / a seed for the other projectors. Plain AdamW keeps two ``a x b``
        moments in the parameter's dtype. With float32 moments and a float32 basis of a square
        weight the projection saves memory only for ``r < 2 b / 3``. With ``error_feedback``
        the ``a x b`` error buffer (state dtype) is counted too.

        Returns:
            Whether projecting ``p`` at ``rank`` keeps less state than plain AdamW.
        """
        m, n = shape2
        a, b = (n, m) if self._transpose(shape2, group["proj_type"]) else (m, n)
        state_size = self._state_dtype(p, group).itemsize
        proj = self._projector(group)
        if not proj.STORES_BASIS:
            basis = 8 * rank
        elif group["proj_bits"] == 4:
            basis = (b * rank + 1) // 2 + 8 * -(-(b * rank) // group["proj_group_size"])
        else:
            basis = b * rank * max(4, p.element_size())
        error = a * b * state_size if group.get("error_feedback") else 0
        return 2 * a * rank * state_size + basis + error < 2 * a * b * p.element_size()

    @staticmethod
    def _transpose(shape2: tuple[int, int], proj_type: str) -> bool:
        """Whether the gradient is transposed so that its columns are the compressed side."""
        m, n = shape2
        if proj_type == "std":
            return m < n
        if proj_type == "reverse_std":
            return m >= n
        return proj_type == "left"

    def _state_dtype(self, p: Tensor, group: dict[str, Any]) -> torch.dtype:
        sd = group["state_dtype"]
        if sd is not None:
            return cast(torch.dtype, sd)
        return torch.float64 if p.dtype == torch.float64 else torch.float32

    def _locate(self, param: Tensor) -> tuple[int, int] | None:
        """``(global index, group index)`` of ``param``, from a map rebuilt when groups change."""
        key = tuple(
            (len(g["params"]), id(g["params"][0]) if g["params"] else 0) for g in self.param_groups
        )
        if getattr(self, "_locations_key", None) != key:
            self._locations = {
                id(p): (i, gi)
                for i, (gi, p) in enumerate(
                    (gi, p) for gi, g in enumerate(self.param_groups) for p in g["params"]
                )
            }
            self._locations_key = key
        return self._locations.get(id(param))

    @staticmethod
    def _label(p: Tensor, group: dict[str, Any], group_index: int, index: int) -> str:
        """How error messages name a parameter: its name when the group has names."""
        names = group.get("param_names")
        if names is not None and index < len(names):
            return f"parameter {names[index]!r} (shape {tuple(p.shape)}, dtype {p.dtype})"
        return (
            f"parameter param_groups[{group_index}]['params'][{index}] "
            f"(shape {tuple(p.shape)}, dtype {p.dtype})"
        )

    def _name(self, p: Tensor) -> str:
        where = self._locate(p)
        if where is None:
            return f"parameter of shape {tuple(p.shape)}"
        group = self.param_groups[where[1]]
        start = sum(len(g["params"]) for g in self.param_groups[: where[1]])
        return self._label(p, group, where[1], where[0] - start)

    def _check_steppable(self, p: Tensor) -> None:
        """Clear errors for parameters that cannot be stepped (before anything changes)."""
        grad = p.grad
        if p.is_meta or (grad is not None and grad.is_meta):
            raise ValueError(
                f"{self._name(p)} is on the meta device (it has no data); materialize the model "
                "(e.g. model.to_empty(device=...) and initialize it) before stepping"
            )
        if grad is not None and grad.layout != torch.strided:
            raise TypeError(
                f"{self._name(p)} has a {grad.layout} gradient; SubspaceAdamW needs dense "
                "gradients (use nn.Embedding(..., sparse=False), or torch.optim.SparseAdam for "
                "sparse ones)"
            )
        if grad is not None and not grad.is_floating_point():
            raise TypeError(
                f"{self._name(p)} has a gradient of dtype {grad.dtype}; SubspaceAdamW handles "
                "real floating gradients only"
            )

    def _check_finite(self, params: list[tuple[Tensor, dict[str, Any]]]) -> bool:
        """``True`` if every gradient is finite; raises or reports according to ``nonfinite``."""
        grads = [(p, group, p.grad) for p, group in params if p.grad is not None and p.grad.numel()]
        if not grads:
            return True
        # One host sync for the whole step: aminmax propagates NaN and is ~50x cheaper than
        # isfinite(g).all() on CPU; the extremes of all gradients are checked together.
        device = grads[0][2].device
        extremes = torch.stack(
            [
                x.to(device, torch.float32)
                for _, _, g in grads
                for x in torch.aminmax(g.detach().reshape(-1))
            ]
        )
        if bool(torch.isfinite(extremes).all()):
            return True
        for p, group, g in grads:
            bad = int((~torch.isfinite(g)).sum())
            if not bad:
                continue
            if group["nonfinite"] == "skip":
                return False
            raise NonFiniteGradientError(
                f"gradient of {self._name(p)} has {bad} non-finite value(s) (NaN or Inf); the "
                "optimizer state and parameters are unchanged. Use nonfinite='skip' to skip such "
                "steps."
            )
        return True

    # ------------------------------------------------------------------ stepping

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Take one optimization step for every parameter with a gradient.

        Args:
            closure: re-evaluates the model and returns the loss (optional).

        Returns:
            The closure's loss, or ``None``.

        Raises:
            NonFiniteGradientError: if a gradient is NaN/Inf and ``nonfinite="error"``.
            TypeError: for a sparse or non-floating gradient (the parameter is named).
            ValueError: for a parameter on the meta device (named).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        todo = [
            (p, group) for group in self.param_groups for p in group["params"] if p.grad is not None
        ]
        if has_dtensor([p for p, _ in todo]):
            sharded_step(self)  # FSDP2 shards: every rank steps its rows (see _sharded)
            return loss
        for p, _ in todo:
            self._check_steppable(p)
        if not self._check_finite(todo):
            self.skipped_steps += 1
            return loss
        for group in self.param_groups:
            floats: list[Tensor] = []
            int8s: list[Tensor] = []
            projected: list[tuple[Tensor, int]] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                is_projected, rank = self._plan(p, group)
                if is_projected:
                    projected.append((p, rank))
                elif int8_module_of(p) is None:
                    floats.append(p)
                else:
                    int8s.append(p)
            if floats:
                self._plain_adamw(floats, group)
            for p in int8s:
                self._int8_dense_step(p, group, cast(tuple[int, int], self._locate(p))[0])
            if projected:
                self._projected_group_step(group, projected)
        return loss

    @torch.no_grad()
    def step_param(self, param: Tensor) -> None:
        """Step a single parameter (used by per-layer stepping inside backward).

        Args:
            param: a parameter of this optimizer with a gradient.

        Raises:
            ValueError: if ``param`` does not belong to this optimizer.
            NonFiniteGradientError: if its gradient is NaN/Inf and ``nonfinite="error"``.
        """
        if self._locate(param) is None:
            raise ValueError("param is not managed by this optimizer")
        if param.grad is None:
            return
        if has_dtensor([param]):
            raise ValueError(
                f"{self._name(param)} is a DTensor (FSDP2 shard); step it with step(), which "
                "runs the collectives of a sharded step on every rank together"
            )
        self._check_steppable(param)
        group = self.param_groups[cast(tuple[int, int], self._locate(param))[1]]
        if not self._check_finite([(param, group)]):
            self.skipped_steps += 1
            return
        self._commit_param(param, self._prepare_param(param))

    # Two-phase stepping for LayerwiseStepper: ``_prepare_param`` reads (and for a projected
    # weight compresses) the gradient and changes nothing; ``_commit_param`` applies the step.

    def _nonfinite_policy(self, param: Tensor) -> str:
        where = self._locate(param)
        if where is None:
            raise ValueError("param is not managed by this optimizer")
        return cast(str, self.param_groups[where[1]]["nonfinite"])

    @torch.no_grad()
    def _prepare_param(self, param: Tensor, previous: _Prepared | None = None) -> _Prepared:
        """Phase one of a step of ``param``: nothing in the optimizer or the model changes.

        A projected weight's gradient is reduced to its ``a x r`` coordinates ``R`` (and, at a
        refresh, the new basis is chosen), so the caller may free ``param.grad``; other
        parameters keep using ``param.grad`` (``keeps_grad``). ``previous`` is the record of an
        earlier part of the same gradient (a weight used inside and outside a reentrant
        checkpoint): the coordinates add up, which is exact unless the basis was refreshed.

        Args:
            param: a parameter of this optimizer with a gradient.
            previous: the record of an earlier part of this gradient, if any.

        Returns:
            The record to pass to :meth:`_commit_param`.

        Raises:
            ValueError: if ``param`` does not belong to this optimizer.
            RuntimeError: if a split gradient meets a basis refresh.
        """
        where = self._locate(param)
        if where is None:
            raise ValueError("param is not managed by this optimizer")
        index, group_index = where
        group = self.param_groups[group_index]
        self._check_steppable(param)
        projected, rank = self._plan(param, group)
        if not projected:
            kind = "plain" if int8_module_of(param) is None else "int8"
            return _Prepared(kind, group_index, index, rank)
        R, new, transpose, b, error = self._projected_prepare(
            param, group, rank, index, add_error=previous is None
        )
        if previous is None:
            return _Prepared("projected", group_index, index, rank, R, new, transpose, b, error)
        if previous.new is not None or new is not None or previous.R is None:
            raise RuntimeError(
                f"{self._name(param)} received its gradient in several parts within one "
                "backward (a weight used both inside and outside reentrant activation "
                "checkpoints) at a step that refreshes its basis, which would be chosen from "
                "part of the gradient; use torch.utils.checkpoint(..., use_reentrant=False)"
            )
        previous.R = previous.R + R.to(previous.R.dtype)
        if previous.error is not None and error is not None:
            previous.error = previous.error + error.to(previous.error.dtype)
        return previous

    @torch.no_grad()
    def _commit_param(self, param: Tensor, prepared: _Prepared) -> None:
        """Phase two: apply the step prepared by :meth:`_prepare_param`."""
        group = self.param_groups[prepared.group_index]
        if prepared.kind == "plain":
            self._plain_adamw([param], group)
        elif prepared.kind == "int8":
            self._int8_dense_step(param, group, prepared.index)
        else:
            self._projected_commit(param, group, prepared)

    def _plain_adamw(self, params: list[Tensor], group: dict[str, Any]) -> None:
        grads, exp_avgs, exp_avg_sqs, steps = [], [], [], []
        for p in params:
            state = self.state[p]
            if len(state) == 0:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            grads.append(cast(Tensor, p.grad))
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        beta1, beta2 = group["betas"]
        _functional_adamw(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            foreach=group["foreach"],
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
        )

    def _init_projected_state(
        self, p: Tensor, group: dict[str, Any], shape2: tuple[int, int], rank: int
    ) -> dict[str, Any]:
        state = self.state[p]
        a = shape2[0]
        dtype = self._state_dtype(p, group)
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        state["exp_avg"] = torch.zeros(a, rank, dtype=dtype, device=p.device)
        state["exp_avg_sq"] = torch.zeros(a, rank, dtype=dtype, device=p.device)
        state["next_refresh"] = torch.tensor(0, dtype=torch.int64)
        state["gap"] = torch.tensor(group["update_proj_gap"], dtype=torch.int64)
        state["refresh_count"] = torch.tensor(0, dtype=torch.int64)
        state["overlaps"] = torch.zeros(group["lazy_window"], dtype=torch.float64)
        state["overlap_count"] = torch.tensor(0, dtype=torch.int64)
        return state

    def _proj_state(self, state: dict[str, Any]) -> dict[str, Tensor]:
        return {k[len(_PREFIX) :]: v for k, v in state.items() if k.startswith(_PREFIX)}

    def _set_proj_state(self, state: dict[str, Any], proj_state: dict[str, Tensor]) -> None:
        for k in [k for k in state if k.startswith(_PREFIX)]:
            del state[k]
        for k, v in proj_state.items():
            state[_PREFIX + k] = v

    def _select(
        self, G: Tensor, group: dict[str, Any], rank: int, index: int, step: int
    ) -> tuple[dict[str, Tensor], Tensor]:
        """A refresh's new projector state and ``R = G Q`` (changes nothing)."""
        proj = self._projector(group)
        generator = torch.Generator(device="cpu").manual_seed(_seed_for(group["seed"], index, step))
        new, GQ = proj.select(G, rank, generator=generator)
        if group["proj_bits"] == 4 and proj.STORES_BASIS:
            new = _pack_basis(new, group["proj_group_size"])
            GQ = None  # project with the quantized basis, as every later step will
        if GQ is None:
            GQ = proj.project(G, _unpacked(new))
        return new, GQ

    def _install(
        self,
        state: dict[str, Any],
        group: dict[str, Any],
        rank: int,
        new: dict[str, Tensor],
        step: int,
        b: int,
    ) -> None:
        """Make ``new`` the basis: moment transfer, lazy-refresh bookkeeping, next refresh."""
        proj = self._projector(group)
        old = self._proj_state(state)
        first = not old
        if not first and (group["moment_transfer"] == "rotate" or group["refresh"] == "lazy"):
            # at least float32; float64 moments are rotated in float64
            work = torch.promote_types(state["exp_avg"].dtype, torch.float32)
            Q_old = _basis_of(proj, old, b, work)
            Q_new = _basis_of(proj, new, b, work)
            C = Q_old.T @ Q_new
            if group["moment_transfer"] == "rotate":
                m = state["exp_avg"]
                v = state["exp_avg_sq"]
                state["exp_avg"] = (m.to(work) @ C).to(m.dtype)
                state["exp_avg_sq"] = (v.to(work) @ C.square()).to(v.dtype)
            if group["refresh"] == "lazy":
                overlap = float(C.square().sum()) / rank
                hist = torch.cat(
                    [state["overlaps"][1:], torch.tensor([overlap], dtype=torch.float64)]
                )
                state["overlaps"] = hist
                state["overlap_count"] = state["overlap_count"] + 1
                full = int(state["overlap_count"]) >= hist.numel()
                if full and float(hist.mean()) >= group["lazy_threshold"]:
                    gap = int(state["gap"]) * group["lazy_growth"]
                    cap = group["max_update_proj_gap"]
                    state["gap"] = torch.tensor(
                        gap if cap is None else min(gap, cap), dtype=torch.int64
                    )
        if not first and group["moment_transfer"] == "reset":
            state["exp_avg"] = torch.zeros_like(state["exp_avg"])
            state["exp_avg_sq"] = torch.zeros_like(state["exp_avg_sq"])
        self._set_proj_state(state, new)
        state["refresh_count"] = state["refresh_count"] + 1
        state["next_refresh"] = torch.tensor(step + int(state["gap"]), dtype=torch.int64)

    def _projected_prepare(
        self, p: Tensor, group: dict[str, Any], rank: int, index: int, add_error: bool = True
    ) -> tuple[Tensor, dict[str, Tensor] | None, bool, int, Tensor | None]:
        """Project ``p.grad`` (and choose a new basis at a refresh); changes nothing.

        With ``error_feedback`` the stored buffer ``E`` is added to the oriented gradient first
        (only when ``add_error``: the first part of a split gradient), and the new buffer is
        what the projection drops, ``(G + E) - R Q^T``.

        Returns:
            ``(R, new basis state or None, transposed, b, new error buffer or None)``.
        """
        grad = cast(Tensor, p.grad)
        if group["maximize"]:
            grad = -grad
        m = p.shape[0]
        shape2 = (m, p.numel() // m)
        G = grad.reshape(shape2)
        transpose = self._transpose(shape2, group["proj_type"])
        if transpose:
            G = G.T
        work = G if G.dtype in (torch.float32, torch.float64) else G.float()
        state = self.state.get(p, {})
        step = int(state["step"]) if state else 0
        feedback = bool(group.get("error_feedback"))
        if feedback and add_error and "error" in state:
            work = work + state["error"].to(work.dtype)
        if not state or step >= int(state["next_refresh"]):
            new, R = self._select(work, group, rank, index, step)
            error = self._dropped(work, R, new, group) if feedback else None
            return R, new, transpose, int(work.shape[1]), error
        proj = self._projector(group)
        pdtype = group.get("proj_dtype")
        if pdtype is not None and _uses_basis_products(proj):
            Q = _basis_of(proj, self._proj_state(state), int(work.shape[1]), work.dtype)
            R = torch.mm(work.to(pdtype), Q.to(pdtype)).to(work.dtype)
        else:
            R = proj.project(work, _unpacked(self._proj_state(state)))
        error = self._dropped(work, R, self._proj_state(state), group) if feedback else None
        return R, None, transpose, int(work.shape[1]), error

    def _dropped(
        self, work: Tensor, R: Tensor, proj_state: dict[str, Tensor], group: dict[str, Any]
    ) -> Tensor:
        """``work - R Q^T``: the part of the oriented gradient outside the subspace."""
        proj = self._projector(group)
        return work - proj.project_back(R, _unpacked(proj_state), int(work.shape[1]))

    def _projected_commit(self, p: Tensor, group: dict[str, Any], prepared: _Prepared) -> None:
        R = cast(Tensor, prepared.R)
        b, rank = prepared.b, prepared.rank
        state = self.state[p]
        if len(state) == 0:
            state = self._init_projected_state(p, group, (R.shape[0], b), rank)
        if prepared.new is not None:
            self._install(state, group, rank, prepared.new, int(state["step"]), b)
        if prepared.error is not None:
            state["error"] = prepared.error.to(state["exp_avg"].dtype)
        item = _Item(p, state, R, prepared.transpose, b, prepared.index)
        item.refreshed = prepared.new is not None
        self._adam_projected(group, [item])

    def _projected_step(self, p: Tensor, group: dict[str, Any], rank: int, index: int) -> None:
        R, new, transpose, b, error = self._projected_prepare(p, group, rank, index)
        where = cast(tuple[int, int], self._locate(p))
        prepared = _Prepared("projected", where[1], index, rank, R, new, transpose, b, error)
        self._projected_commit(p, group, prepared)

    def _projected_group_step(self, group: dict[str, Any], items: list[tuple[Tensor, int]]) -> None:
        """Step the projected weights of one group, same-shaped non-refresh layers together.

        Layers that refresh their basis this step, and layers the grouped kernel does not cover
        (INT8 weights, half-precision weights, projectors with their own ``project`` /
        ``project_back``), take the per-layer path. The others are bucketed by the shape of
        their oriented gradient and rank: a bucket of small matrices is projected with one
        ``torch.bmm``, larger ones with one ``torch.mm`` each (batching them only adds the copy
        of the gradients into a stack, see ``docs/optim.md``); the moments of a bucket are
        updated with ``torch._foreach_*`` and the update is added to the weight by one
        ``addmm_`` per layer. Every layer runs the same kernels in the same order as
        :meth:`step_param`, so the two paths agree bit for bit (unbatched) or to rounding
        (``bmm``).
        """
        proj = self._projector(group)
        groupable = (
            _uses_basis_products(proj)
            and group["refresh"] in _REFRESH
            and not group.get("error_feedback")
        )
        buckets: dict[tuple[Any, ...], list[tuple[Tensor, dict[str, Any], int]]] = {}
        for p, rank in items:
            index = cast(tuple[int, int], self._locate(p))[0]
            state = self.state.get(p)
            if (
                not groupable
                or not state
                or int(state["step"]) >= int(state["next_refresh"])
                or p.dtype not in (torch.float32, torch.float64)
                or cast(Tensor, p.grad).dtype != p.dtype
                or not p.is_contiguous()
                or int8_module_of(p) is not None
            ):
                self._projected_step(p, group, rank, index)
                continue
            m = p.shape[0]
            shape2 = (m, p.numel() // m)
            key = (shape2, rank, p.dtype, p.device)
            buckets.setdefault(key, []).append((p, state, index))
        for (shape2, _rank, _dtype, _device), members in buckets.items():
            transpose = self._transpose(shape2, group["proj_type"])
            b = shape2[0] if transpose else shape2[1]
            for start in range(0, len(members), _CHUNK):
                chunk = members[start : start + _CHUNK]
                grads = []
                for p, _, _ in chunk:
                    G = cast(Tensor, p.grad).reshape(shape2)
                    grads.append(G.T if transpose else G)
                Qs = [_basis_of(proj, self._proj_state(state), b, p.dtype) for p, state, _ in chunk]
                a = grads[0].shape[0]
                pdtype = group.get("proj_dtype")
                if pdtype is not None:
                    grads = [G.to(pdtype) for G in grads]
                    Qp = [Q.to(pdtype) for Q in Qs]
                else:
                    Qp = Qs
                if len(chunk) > 1 and a * b <= _BMM_MAX_NUMEL:
                    Rs = list(torch.bmm(torch.stack(grads), torch.stack(Qp)).unbind(0))
                else:
                    Rs = [torch.mm(G, Q) for G, Q in zip(grads, Qp, strict=True)]
                if pdtype is not None:
                    Rs = [R.to(p.dtype) for R, (p, _, _) in zip(Rs, chunk, strict=True)]
                if group["maximize"]:
                    torch._foreach_neg_(Rs)  # exact: (-G) Q == -(G Q) bit for bit
                self._adam_projected(
                    group,
                    [
                        _Item(p, state, R, transpose, b, index, Q)
                        for (p, state, index), R, Q in zip(chunk, Rs, Qs, strict=True)
                    ],
                )

    def _adam_projected(self, group: dict[str, Any], items: list[_Item]) -> None:
        """Adam on the coordinates ``R`` of ``items`` and the update mapped back into the weights.

        Moments in the dtype of ``R`` are updated in place with ``torch._foreach_*`` over all
        items; others (e.g. bfloat16 moments) in the promoted dtype, then stored back. The update
        ``-lr * scale / bias1 * N Q^T`` and the decoupled weight decay are applied by one
        ``addmm_`` into the weight when the basis is a dense matrix of the weight's dtype (no
        ``a x b`` temporary); otherwise through the projector's ``project_back``.
        """
        beta1, beta2 = group["betas"]
        direct = [
            it
            for it in items
            if it.state["exp_avg"].dtype == it.R.dtype
            and it.state["exp_avg_sq"].dtype == it.R.dtype
        ]
        if direct:
            Rs = [it.R for it in direct]
            m1s = [it.state["exp_avg"] for it in direct]
            m2s = [it.state["exp_avg_sq"] for it in direct]
            torch._foreach_lerp_(m1s, Rs, 1 - beta1)
            torch._foreach_mul_(m2s, beta2)
            torch._foreach_addcmul_(m2s, Rs, Rs, value=1 - beta2)
            for it, m1, m2 in zip(direct, m1s, m2s, strict=True):
                it.m1, it.m2 = m1, m2
        for it in items:
            if it.m1 is not None:
                continue
            exp_avg, exp_avg_sq = it.state["exp_avg"], it.state["exp_avg_sq"]
            cdtype = torch.promote_types(exp_avg.dtype, it.R.dtype)
            it.m1 = exp_avg.to(cdtype).lerp_(it.R.to(cdtype), 1 - beta1)
            it.m2 = exp_avg_sq.to(cdtype).mul_(beta2).addcmul_(it.R, it.R, value=1 - beta2)
            exp_avg.copy_(it.m1)
            exp_avg_sq.copy_(it.m2)
        bias1s, bias2_sqrts = [], []
        for it in items:
            it.state["step"] += 1
            t = float(it.state["step"])
            bias1s.append(1 - beta1**t)
            bias2_sqrts.append(math.sqrt(1 - beta2**t))
        denoms = torch._foreach_sqrt([cast(Tensor, it.m2) for it in items])
        torch._foreach_div_(denoms, bias2_sqrts)
        torch._foreach_add_(denoms, group["eps"])
        Ns = torch._foreach_div([cast(Tensor, it.m1) for it in items], denoms)
        del denoms
        proj = self._projector(group)
        fused = _uses_basis_products(proj)
        lr = _as_float(group["lr"])
        wd = group["weight_decay"]
        pdtype = group.get("proj_dtype")
        for it, N, bias1 in zip(items, Ns, bias1s, strict=True):
            p = it.p
            factor = group["scale"] / bias1
            if (
                fused
                and N.dtype == p.dtype
                and p.is_contiguous()
                and int8_module_of(p) is None
                and p.numel() == N.shape[0] * it.b
            ):
                Q = it.Q
                if Q is None or Q.dtype != N.dtype:
                    Q = _basis_of(proj, self._proj_state(it.state), it.b, N.dtype)
                # explicit sizes (not -1) so that an empty FSDP2 row shard views too
                a = N.shape[0]
                W = p.view(a, it.b) if not it.transpose else p.view(it.b, a)
                beta = 1 - lr * wd if wd else 1.0
                if pdtype is not None and not it.refreshed:
                    # bfloat16 product (float32 accumulation), added to the float weight
                    Np, Qp = N.to(pdtype), Q.to(pdtype)
                    U = torch.mm(Qp, Np.T) if it.transpose else torch.mm(Np, Qp.T)
                    if wd:
                        W.mul_(beta)
                    W.add_(U, alpha=-lr * factor)
                elif it.transpose:
                    W.addmm_(Q, N.T, beta=beta, alpha=-lr * factor)
                else:
                    W.addmm_(N, Q.T, beta=beta, alpha=-lr * factor)
                continue
            U = proj.project_back(N, _unpacked(self._proj_state(it.state)), it.b)
            if it.transpose:
                U = U.T
            self._apply(p, U.reshape(p.shape), group, factor, it.index, int(it.state["step"]))

    def _apply(
        self, p: Tensor, U: Tensor, group: dict[str, Any], factor: float, index: int, step: int
    ) -> None:
        """``p <- p (1 - lr wd) - lr factor U``; INT8 weights re-quantize stochastically."""
        lr = _as_float(group["lr"])
        owner = int8_module_of(p)
        if owner is not None:
            W = owner.dequantized_weight(torch.float32)
            delta = U.to(torch.float32).mul(-lr * factor)
            if group["weight_decay"]:
                delta.add_(W, alpha=-lr * group["weight_decay"])
            generator = torch.Generator(device="cpu").manual_seed(
                _seed_for(group["seed"] + 1, index, step)
            )
            owner.apply_update(delta, generator)
            return
        if group["weight_decay"]:
            p.mul_(1 - lr * group["weight_decay"])
        p.add_(U.to(p.dtype), alpha=-lr * factor)

    def _int8_dense_step(self, p: Tensor, group: dict[str, Any], index: int) -> None:
        """Full-rank Adam for an INT8 weight (a group without ``rank``)."""
        grad = cast(Tensor, p.grad).to(torch.float32)
        if group["maximize"]:
            grad = -grad
        state = self.state[p]
        if len(state) == 0:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(grad)
            state["exp_avg_sq"] = torch.zeros_like(grad)
        beta1, beta2 = group["betas"]
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        state["step"] += 1
        t = float(state["step"])
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**t)).add_(group["eps"])
        U = state["exp_avg"] / denom
        self._apply(p, U, group, 1.0 / (1 - beta1**t), index, int(t))

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The optimizer state as tensors and plain values (loadable with ``weights_only=True``).

        A :class:`~subspaces.optim.projectors.Projector` object given as a group's ``projector``
        is stored as the group keys that rebuild it: a built-in projector by name with its
        options (``projector="rsvd"``, ``rsvd_oversample``, ``rsvd_power_iters``;
        ``projector="dct"``, ``dct_norm``), a projector class of your own as the string
        ``"custom:<module>.<class>"``, which :meth:`load_state_dict` matches against the
        projector object of the optimizer it loads into.

        Returns:
            The state dict (see ``torch.optim.Optimizer.state_dict``).
        """
        sd = super().state_dict()
        for group in sd["param_groups"]:
            proj = group.get("projector")
            if isinstance(proj, Projector):
                group.update(_describe(proj) or {"projector": _custom_name(proj)})
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict, keeping every state tensor's saved dtype.

        ``torch.optim.Optimizer`` casts floating state to the parameter's dtype on load; that
        would round a float32 basis of a bfloat16 weight, or widen bfloat16 moments. Here the
        saved dtypes are restored after the base class has matched parameters. A group whose
        projector object matches the saved description keeps that object.

        Args:
            state_dict: as returned by :meth:`state_dict`.

        Raises:
            ValueError: if the checkpoint names a custom projector that the receiving group
                does not hold (build the optimizer with that projector object first).
        """
        current = [g.get("projector") for g in self.param_groups]
        for i, (saved, proj) in enumerate(zip(state_dict["param_groups"], current, strict=False)):
            spec = saved.get("projector")
            custom = isinstance(spec, str) and spec.startswith(_CUSTOM)
            if custom and not (isinstance(proj, Projector) and _custom_name(proj) == spec):
                raise ValueError(
                    f"param group {i} of the checkpoint used the projector {spec!r}, and this "
                    f"optimizer's group {i} holds {proj!r}; construct the optimizer with an "
                    "instance of that Projector class in the group before loading"
                )
        saved_state = state_dict["state"]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        for group, proj in zip(self.param_groups, current, strict=True):
            if isinstance(proj, Projector):
                desc = _describe(proj) or {"projector": _custom_name(proj)}
                if all(group.get(k) == v for k, v in desc.items()):
                    group["projector"] = proj
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params, strict=True):
            if saved_id not in saved_state:
                continue
            for key, value in saved_state[saved_id].items():
                if isinstance(value, Tensor) and key != "step":
                    self.state[p][key] = value.to(device=p.device).clone()

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(group):
                if key != "params":
                    lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)


def _pack_basis(state: dict[str, Tensor], group_size: int) -> dict[str, Tensor]:
    from .quantization import pack_int4

    Q = state["basis"]
    packed, scale, zero = pack_int4(Q, group_size)
    return {
        "basis_int4": packed,
        "basis_scale": scale,
        "basis_zero": zero,
        "basis_shape": torch.tensor(list(Q.shape), dtype=torch.int64),
        "basis_group_size": torch.tensor(group_size, dtype=torch.int64),
    }


def _unpacked(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The projector state with a 4-bit basis dequantized.

    Nothing is cached: keeping the float basis of every layer would make ``proj_bits=4`` hold
    more memory than a float basis. Dequantizing costs ``O(b r)``, less than the ``O(a b r)``
    projection it serves.

    Returns:
        ``state`` itself, or ``{"basis": Q}`` with the dequantized float32 basis.
    """
    if "basis_int4" not in state:
        return state
    from .quantization import unpack_int4

    shape = tuple(int(s) for s in state["basis_shape"])
    Q = unpack_int4(
        state["basis_int4"],
        state["basis_scale"],
        state["basis_zero"],
        shape,
        int(state["basis_group_size"]),
    )
    return {"basis": Q}


def _basis_of(proj: Projector, state: dict[str, Tensor], b: int, dtype: torch.dtype) -> Tensor:
    return proj.basis(_unpacked(state), b, dtype)


def _as_float(value: float | Tensor) -> float:
    return float(value)


@dataclass(eq=False)
class _Item:
    """One projected layer inside a step: its coordinates ``R`` and (once computed) moments."""

    p: Tensor
    state: dict[str, Any]
    R: Tensor
    transpose: bool
    b: int
    index: int
    Q: Tensor | None = None
    refreshed: bool = False
    m1: Tensor | None = None
    m2: Tensor | None = None


def _uses_basis_products(proj: Projector) -> bool:
    """Whether ``proj`` projects by products with its dense basis (the base-class methods)."""
    cls = type(proj)
    return cls.project is Projector.project and cls.project_back is Projector.project_back


@dataclass
class _Prepared:
    """A step of one parameter prepared by ``SubspaceAdamW._prepare_param``, not yet applied.

    ``kind`` is ``"plain"`` (AdamW on ``param.grad``), ``"int8"`` (full-rank Adam of an INT8
    weight on ``param.grad``) or ``"projected"`` (``R``: the gradient's coordinates in the basis,
    ``new``: the basis chosen at a refresh, ``transpose`` and ``b`` its orientation, ``error``:
    the new error-feedback buffer when the group uses error feedback).
    """

    kind: str
    group_index: int
    index: int
    rank: int
    R: Tensor | None = None
    new: dict[str, Tensor] | None = None
    transpose: bool = False
    b: int = 0
    error: Tensor | None = None

    @property
    def keeps_grad(self) -> bool:
        """Whether the commit still reads ``param.grad`` (else it may be freed now)."""
        return self.kind != "projected"


def _describe(proj: Projector) -> dict[str, Any]:
    """Group keys that rebuild a built-in projector by name (serialisable), else ``{}``."""
    if type(proj) is RandomizedSVDProjector:
        return {
            "projector": "rsvd",
            "rsvd_oversample": proj.oversample,
            "rsvd_power_iters": proj.power_iters,
        }
    if type(proj) is NystromProjector:
        return {"projector": "nystrom", "rsvd_oversample": proj.oversample}
    if type(proj) is DCTProjector:
        return {"projector": "dct", "dct_norm": proj.norm}
    if type(proj) in (SVDProjector, RandomProjector, CoordinateProjector):
        return {"projector": proj.name}
    return {}


def _custom_name(proj: Projector) -> str:
    cls = type(proj)
    return f"{_CUSTOM}{cls.__module__}.{cls.__qualname__}"
