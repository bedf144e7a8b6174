"""Named places ("sites") in a causal language model where activations are read and steered.

A :class:`Site` is a ``model.named_modules()`` name plus the layer index and the kind of place it
is. :func:`find_sites` locates the decoder-block list of any Hugging Face ``transformers`` causal
LM (GPT-2, Llama, Mistral, Qwen2, Gemma, Phi, GPT-NeoX/Pythia, OPT, GPT-J, Falcon, ... and any
model whose blocks live in one ``nn.ModuleList``) and returns, per layer:

- ``"block"``: the decoder block output, i.e. the residual stream after the block;
- ``"residual_pre"``: the block input, i.e. the residual stream before the block;
- ``"attention"``: the attention sublayer output (before it is added to the residual stream);
- ``"mlp"``: the MLP (or mixture-of-experts layer) output (before it is added to the residual
  stream).

"Before the residual add" is what is added to the stream: in sandwich-norm blocks (Gemma 2/3,
OLMo 2) the sublayer's output norm (``post_attention_layernorm``, ``post_feedforward_layernorm``);
where the sublayer module adds the residual itself (Bloom, MPT's MLP) its output projection.

Any other module can be addressed by a custom ``pattern`` such as ``"model.layers.{i}.mlp"`` or
by its name (kind ``"module"``). Places that are not one hidden state per token are refused with
a clear error instead of silently reading the wrong thing: mixture-of-experts expert modules
(they see only the tokens routed to them, flattened) and modules whose output is not
``(batch, seq, hidden)`` (checked when the hook runs).

Reading and writing at these sites is the basis of activation addition (Turner et al. 2023,
"Activation Addition: Steering Language Models Without Optimization"), representation
engineering (Zou et al. 2023) and G-ACT (Sharma & Raman 2025, "Steering Conceptual Bias via
Transformer Latent-Subspace Activation", P01).
"""

from __future__ import annotations

import difflib
import inspect
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["SITE_KINDS", "Site", "find_sites", "hidden_size", "num_layers", "resolve_site"]

SiteKind = Literal["block", "attention", "mlp", "residual_pre", "module"]
SITE_KINDS: tuple[str, ...] = ("block", "attention", "mlp", "residual_pre", "module")

# Known decoder-block lists, most specific first (all are also found by the generic search).
_LAYER_LISTS = (
    "model.layers",  # Llama, Mistral, Qwen2, Gemma, Phi, Mixtral, ...
    "transformer.h",  # GPT-2, GPT-J, Falcon, Bloom
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "model.language_model.layers",  # multimodal wrappers
    "transformer.layers",
    "layers",  # bare base models (LlamaModel, ...)
    "h",  # bare GPT-2 base model
    "decoder.layers",  # bare OPT base model
)
_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
# "block_sparse_moe": the MoE layer of Mixtral on transformers 4, GraniteMoE, PhiMoE, MiniMax
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe")
_MOE_PARTS = ("experts", "expert")
# Sandwich-norm blocks (Gemma 2/3, OLMo 2/3, EXAONE 4): a block with a norm after its MLP also
# normalizes its attention output, and the norms' outputs are what the residual add receives.
_SANDWICH_MARK = "post_feedforward_layernorm"
_POST_NORMS = {"attention": "post_attention_layernorm", "mlp": "post_feedforward_layernorm"}
# Output projections of sublayers that add the residual themselves (``forward(h, residual)``:
# Bloom's attention and MLP, MPT's MLP), in the order they are tried.
_OUTPUT_PROJECTIONS = {
    "attention": ("dense", "o_proj", "out_proj", "c_proj"),
    "mlp": ("dense_4h_to_h", "down_proj", "fc2", "c_proj", "dense"),
}


@dataclass(frozen=True)
class Site:
    """A named place in a model.

    Args:
        name: a ``model.named_modules()`` name (for ``"residual_pre"`` the block whose input is
            read).
        layer: the decoder-block index, or ``-1`` for a module outside the block list.
        kind: one of :data:`SITE_KINDS`.

    Example:
        >>> s = Site("model.layers.3", 3, "block")
        >>> s.key, Site("model.layers.3", 3, "residual_pre").key
        ('model.layers.3', 'model.layers.3:input')
    """

    name: str
    layer: int
    kind: str = "block"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Site.name must be a non-empty module name, got {self.name!r}")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int):
            raise TypeError(f"Site.layer must be an int, got {self.layer!r}")
        if self.kind not in SITE_KINDS:
            raise ValueError(f"Site.kind must be one of {SITE_KINDS}, got {self.kind!r}")

    @property
    def key(self) -> str:
        """The dictionary key of this site: ``name``, or ``name + ":input"`` for residual_pre."""
        return f"{self.name}:input" if self.kind == "residual_pre" else self.name


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return dict(model.named_modules())


def _is_block_list(module: nn.Module) -> bool:
    if not isinstance(module, nn.ModuleList) or len(module) == 0:
        return False
    first = module[0]
    return any(True for _ in first.children()) and any(True for _ in first.parameters())


def _layer_list(model: nn.Module, modules: dict[str, nn.Module] | None = None) -> str | None:
    """The ``named_modules`` name of the decoder-block ``ModuleList`` (``None`` if not found)."""
    modules = _modules(model) if modules is None else modules
    for name in _LAYER_LISTS:
        if name in modules and _is_block_list(modules[name]):
            return name
    candidates = [n for n, m in modules.items() if n and _is_block_list(m)]
    if not candidates:
        return None
    # shallowest list that is not inside another candidate; ties -> the longest list
    top = [c for c in candidates if not any(c.startswith(o + ".") for o in candidates if o != c)]
    top.sort(key=lambda n: (n.count("."), -len(modules[n])))  # type: ignore[arg-type]
    return top[0]


def _require_layer_list(model: nn.Module, modules: dict[str, nn.Module]) -> str:
    name = _layer_list(model, modules)
    if name is None:
        raise ValueError(
            f"could not find the list of decoder blocks in {type(model).__name__} (no "
            "nn.ModuleList of blocks among named_modules()); pass pattern='path.to.blocks.{i}' "
            "or a module name instead"
        )
    return name


def num_layers(model: nn.Module) -> int:
    """Number of decoder blocks of a causal LM.

    Args:
        model: a model whose blocks live in one ``nn.ModuleList``.

    Returns:
        The length of that list.

    Raises:
        ValueError: if no block list is found.

    Example:
        >>> from torch import nn
        >>> class Block(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.mlp = nn.Linear(4, 4)
        >>> class LM(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layers = nn.ModuleList([Block() for _ in range(3)])
        >>> num_layers(LM())
        3
    """
    modules = _modules(model)
    return len(modules[_require_layer_list(model, modules)])  # type: ignore[arg-type]


def hidden_size(model: nn.Module) -> int:
    """Width of the residual stream of a causal LM.

    Read from ``model.config`` (``hidden_size``, ``n_embd`` or ``d_model``), else from the input
    embedding.

    Args:
        model: a Hugging Face model or any module with ``get_input_embeddings()``.

    Returns:
        The hidden size.

    Raises:
        ValueError: if it cannot be determined.

    Example:
        >>> from types import SimpleNamespace
        >>> from torch import nn
        >>> m = nn.Linear(2, 2)
        >>> m.config = SimpleNamespace(hidden_size=32)
        >>> hidden_size(m)
        32
    """
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", None)
    for cfg in (text_config, config):
        for attr in ("hidden_size", "n_embd", "d_model"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    get_emb = getattr(model, "get_input_embeddings", None)
    if callable(get_emb):
        emb = get_emb()
        if isinstance(emb, nn.Embedding):
            return int(emb.embedding_dim)
    raise ValueError(
        f"cannot determine the hidden size of {type(model).__name__}: no config.hidden_size / "
        "n_embd / d_model and no nn.Embedding input embedding"
    )


_LAYERS_EXPECTED = "layers must be ints (Python or NumPy integers, 0-d integer tensors), a sequence"


def _as_layer_index(raw: Any) -> int | None:
    """``raw`` as a Python int if it is an integer scalar (not a bool), else ``None``."""
    if isinstance(raw, (bool, np.bool_)):
        return None
    if isinstance(raw, Tensor) and (raw.ndim != 0 or raw.dtype == torch.bool):
        return None
    if isinstance(raw, np.ndarray) and (raw.ndim != 0 or raw.dtype == np.bool_):
        return None
    try:
        return operator.index(raw)
    except TypeError:
        return None


def _normalize_layers(layers: int | Sequence[int] | None, n: int) -> list[int]:
    if layers is None:
        return list(range(n))
    single = _as_layer_index(layers)
    if single is not None:
        items: Iterable[Any] = [single]
    elif isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise TypeError(
            f"{_LAYERS_EXPECTED} of them or None, got {layers!r} ({type(layers).__name__})"
        )
    else:
        items = layers
    out = []
    for raw in items:
        index = _as_layer_index(raw)
        if index is None:
            raise TypeError(
                f"{_LAYERS_EXPECTED} of them or None, got {raw!r} ({type(raw).__name__}) in "
                f"layers={layers!r}"
            )
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise ValueError(f"layer {index} is out of range for a model with {n} layers")
        out.append(i)
    if not out:
        raise ValueError("layers is empty; pass None for all layers")
    return out


def _is_experts_class(module: nn.Module | None) -> bool:
    """Experts fused into one module (``MixtralExperts``, ``GraniteMoeParallelExperts``, ...)."""
    return module is not None and type(module).__name__.endswith(("Experts", "Expert"))


def _check_not_moe_expert(name: str, modules: dict[str, nn.Module]) -> None:
    parts = name.split(".")
    ancestors = (".".join(parts[: j + 1]) for j in range(len(parts)))
    if any(p in _MOE_PARTS for p in parts) or any(
        _is_experts_class(modules.get(a)) for a in ancestors
    ):
        raise ValueError(
            f"site {name!r} is inside a mixture-of-experts expert module; experts see only the "
            "tokens routed to them (flattened), so per-token reading and steering there is not "
            "supported. Use the block output or the whole MoE layer (kind='mlp') instead"
        )


def _child(modules: dict[str, nn.Module], block: str, names: tuple[str, ...]) -> str | None:
    for n in names:
        if f"{block}.{n}" in modules:
            return f"{block}.{n}"
    return None


def _adds_residual(module: nn.Module) -> bool:
    """Whether ``module.forward`` takes the residual stream and adds it itself (Bloom, MPT)."""
    try:
        return "residual" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def _sublayer(model: nn.Module, modules: dict[str, nn.Module], block: str, kind: str) -> str:
    """The module whose output is the ``kind`` sublayer's contribution before the residual add.

    Returns:
        Its ``named_modules()`` name.

    Raises:
        ValueError: if the block has no such module.
    """
    names = _ATTENTION_NAMES if kind == "attention" else _MLP_NAMES
    child = _child(modules, block, names)
    if child is None:
        children = [c for c, _ in modules[block].named_children()]
        raise ValueError(
            f"{type(modules[block]).__name__} ({block}) has no {kind} sublayer module "
            f"(looked for {names}; its children are {children}). Its {kind} output is not a "
            f"module output here, so it is unsupported; use kind='block' or a pattern naming "
            "the module you want"
        )
    post_norm = f"{block}.{_POST_NORMS[kind]}"
    if f"{block}.{_SANDWICH_MARK}" in modules and post_norm in modules:
        return post_norm
    if not _adds_residual(modules[child]):
        return child
    projections = _OUTPUT_PROJECTIONS[kind]
    proj = _child(modules, child, projections)
    if proj is None:
        raise ValueError(
            f"{type(modules[child]).__name__} ({child}) adds the residual stream to its output "
            f"itself and has no output projection module (looked for {projections}), so its "
            f"{kind} output before the residual add is not a module output here; use "
            "kind='block' or a pattern naming the module you want"
        )
    config = getattr(model, "config", None)
    tp = getattr(config, "pretraining_tp", 1)
    if getattr(config, "slow_but_exact", False) and isinstance(tp, int) and tp > 1:
        raise ValueError(
            f"with slow_but_exact=True and pretraining_tp={tp}, {type(modules[child]).__name__} "
            f"({child}) computes its output projection from weight slices without calling "
            f"{proj}, so a hook there would never run; use kind='block', or set "
            "model.config.slow_but_exact = False"
        )
    return proj


def find_sites(
    model: nn.Module,
    kind: str = "block",
    layers: int | Sequence[int] | None = None,
    *,
    pattern: str | None = None,
) -> list[Site]:
    """Find the sites of one kind in each requested layer of a causal LM.

    The decoder-block list is found from ``named_modules()`` (templates for the common Hugging
    Face families, then a generic search for the shallowest ``nn.ModuleList`` of blocks); the
    attention and MLP sublayers are the block's child named ``self_attn`` / ``attn`` /
    ``attention`` / ``self_attention`` and ``mlp`` / ``feed_forward`` / ``ffn`` /
    ``block_sparse_moe``. Their sites are what the residual add receives: the sublayer's output
    norm in sandwich-norm blocks (Gemma 2/3, OLMo 2), the output projection of a sublayer that
    adds the residual itself (Bloom, MPT's MLP), else the sublayer's own output.

    Args:
        model: the model (not modified).
        kind: ``"block"`` (block output), ``"residual_pre"`` (block input), ``"attention"`` or
            ``"mlp"`` (sublayer outputs); with ``pattern`` any kind in :data:`SITE_KINDS`.
        layers: an index or indices (negative counts from the end; Python or NumPy integers,
            0-d integer tensors, or a sequence / 1-D array of them); ``None`` = all layers.
        pattern: a custom format string with ``{i}`` for the layer, such as
            ``"model.layers.{i}.mlp"``; its sites get ``kind`` (default ``"block"``) as label.

    Returns:
        One :class:`Site` per requested layer, in the order requested.

    Raises:
        ValueError: for an unknown kind, a model without a block list, a layer out of range, a
            sublayer the family does not have (e.g. OPT has no MLP module) or that a hook
            cannot reach (Bloom with ``slow_but_exact`` tensor parallelism), a pattern without
            ``{i}`` or naming missing modules, or a mixture-of-experts expert module.
        TypeError: for ``layers`` that are not integers.

    Example:
        >>> from torch import nn
        >>> class Block(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.self_attn, self.mlp = nn.Linear(4, 4), nn.Linear(4, 4)
        >>> class LM(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.model = nn.Module()
        ...         self.model.layers = nn.ModuleList([Block() for _ in range(3)])
        >>> [s.name for s in find_sites(LM(), "mlp", layers=[0, -1])]
        ['model.layers.0.mlp', 'model.layers.2.mlp']
        >>> find_sites(LM(), pattern="model.layers.{i}.self_attn", layers=1)[0]
        Site(name='model.layers.1.self_attn', layer=1, kind='block')
    """
    if kind not in SITE_KINDS:
        raise ValueError(f"kind must be one of {SITE_KINDS}, got {kind!r}")
    modules = _modules(model)
    if pattern is not None:
        if not isinstance(pattern, str) or "{i}" not in pattern:
            raise ValueError(f"pattern must be a format string containing '{{i}}', got {pattern!r}")
        list_name = _layer_list(model, modules)
        if list_name is not None:
            n = len(modules[list_name])  # type: ignore[arg-type]
        else:
            n = 0
            while pattern.format(i=n) in modules:
                n += 1
            if n == 0:
                raise ValueError(f"pattern {pattern!r} matches no module (tried i=0)")
        sites = []
        for i in _normalize_layers(layers, n):
            name = pattern.format(i=i)
            if name not in modules:
                raise ValueError(f"pattern {pattern!r} gives {name!r}, which is not a module")
            _check_not_moe_expert(name, modules)
            sites.append(Site(name, i, kind))
        return sites
    if kind == "module":
        raise ValueError("kind='module' needs a pattern (or use resolve_site with a name)")
    list_name = _require_layer_list(model, modules)
    n = len(modules[list_name])  # type: ignore[arg-type]
    sites = []
    for i in _normalize_layers(layers, n):
        block = f"{list_name}.{i}"
        if kind in ("block", "residual_pre"):
            sites.append(Site(block, i, kind))
            continue
        sites.append(Site(_sublayer(model, modules, block, kind), i, kind))
    return sites


def resolve_site(model: nn.Module, site: Site | str) -> Site:
    """Check a site against a model, turning a module name into a :class:`Site`.

    A name is classified as the ``"block"``, ``"attention"`` or ``"mlp"`` site of its layer when it
    is the one :func:`find_sites` gives for that kind, else as kind ``"module"`` (its layer is the
    enclosing block's index, or ``-1``): Bloom's ``self_attention`` returns attention plus
    residual, so it is a ``"module"``, while its ``self_attention.dense`` is the attention site.

    Args:
        model: the model.
        site: a :class:`Site` or a ``named_modules()`` name.

    Returns:
        The validated site.

    Raises:
        ValueError: if the module does not exist (close names are suggested) or is a
            mixture-of-experts expert.
        TypeError: if ``site`` is neither a ``Site`` nor a string.

    Example:
        >>> from torch import nn
        >>> class Block(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.mlp = nn.Sequential(nn.Linear(4, 4))
        >>> class LM(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layers = nn.ModuleList([Block() for _ in range(2)])
        >>> resolve_site(LM(), "layers.1.mlp"), resolve_site(LM(), "layers.1.mlp.0").kind
        (Site(name='layers.1.mlp', layer=1, kind='mlp'), 'module')
    """
    modules = _modules(model)
    if isinstance(site, Site):
        name = site.name
    elif isinstance(site, str):
        name = site
    else:
        raise TypeError(f"site must be a Site or a module name, got {type(site).__name__}")
    if name not in modules or name == "":
        close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(f"unknown site {name!r}: no such module in {type(model).__name__}{hint}")
    _check_not_moe_expert(name, modules)
    if isinstance(site, Site):
        return site
    list_name = _layer_list(model, modules)
    if list_name is not None:
        m = re.fullmatch(re.escape(list_name) + r"\.(\d+)(\..+)?", name)
        if m is not None:
            i, rest = int(m.group(1)), m.group(2)
            if rest is None:
                return Site(name, i, "block")
            for kind in ("attention", "mlp"):
                try:
                    if _sublayer(model, modules, f"{list_name}.{i}", kind) == name:
                        return Site(name, i, kind)
                except ValueError:
                    continue
            return Site(name, i, "module")
    return Site(name, -1, "module")


# ----- hook plumbing shared by collection and steering ---------------------------------------
HiddenFn = Callable[[Tensor], "Tensor | None"]


def _split_output(output: Any, site: Site) -> tuple[Tensor, Callable[[Tensor], Any]]:
    """Return the hidden-state tensor of a module output and a function that puts it back."""
    if isinstance(output, Tensor):
        return output, lambda new: new
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        rest = list(output[1:])
        kind = type(output)
        if kind is tuple or kind is list:
            return output[0], lambda new: kind([new, *rest])
        return output[0], lambda new: kind(new, *rest)  # namedtuple
    hs = getattr(output, "last_hidden_state", None)
    if isinstance(hs, Tensor):

        def put(new: Tensor) -> Any:
            output.last_hidden_state = new  # a fresh ModelOutput made by this forward call
            return output

        return hs, put
    raise ValueError(
        f"site {site.name!r} returned {type(output).__name__}, not a hidden-state tensor (or a "
        "tuple starting with one); it cannot be read or steered"
    )


def _check_hidden(h: Tensor, site: Site, width: int | None) -> None:
    if h.ndim != 3 or (width is not None and h.shape[-1] != width):
        expected = f"(batch, seq, {width})" if width is not None else "(batch, seq, hidden)"
        raise ValueError(
            f"site {site.name!r} produced a tensor of shape {tuple(h.shape)}, expected {expected}; "
            "it is not a per-token hidden state (e.g. a flattened MLP or an MoE expert)"
        )


def register_site_hook(
    model: nn.Module, site: Site, fn: HiddenFn, *, width: int | None = None
) -> torch.utils.hooks.RemovableHandle:
    """Register ``fn(hidden) -> new hidden | None`` at a site; return the removable handle.

    ``"residual_pre"`` sites use a forward pre-hook on the block (the input may be passed
    positionally or as ``hidden_states=``); every other kind a forward hook on the module output.
    Private plumbing for :mod:`~subspaces.steering.collect` and :mod:`~subspaces.steering.steer`.

    Returns:
        The handle; ``handle.remove()`` removes exactly this hook.

    Raises:
        ValueError: if the site is not a module of ``model``.
    """
    module = _modules(model).get(site.name)
    if module is None:
        raise ValueError(f"unknown site {site.name!r}: no such module in {type(model).__name__}")
    if site.kind == "residual_pre":

        def pre_hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if args and isinstance(args[0], Tensor):
                h = args[0]
                _check_hidden(h, site, width)
                new = fn(h)
                return None if new is None else ((new, *args[1:]), kwargs)
            hk = kwargs.get("hidden_states")
            if not isinstance(hk, Tensor):
                raise ValueError(f"cannot find the input hidden states of block {site.name!r}")
            _check_hidden(hk, site, width)
            new = fn(hk)
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def hook(mod: nn.Module, args: Any, output: Any) -> Any:
        h, put = _split_output(output, site)
        _check_hidden(h, site, width)
        new = fn(h)
        return None if new is None else put(new)

    return module.register_forward_hook(hook)
