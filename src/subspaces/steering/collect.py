"""Streaming, padding-aware collection of activations at named sites of a causal LM.

:func:`collect_activations` runs the model over many prompts batch by batch under
``torch.no_grad()``, keeps only the reduced activations (one vector per prompt for ``"last"`` and
``"mean"``, the selected tokens otherwise), never collects padding tokens (left or right padding),
and stops each forward pass right after the last requested site has run, so reading early layers
of a deep model costs only those layers.

This is the reading half of activation steering (Turner et al. 2023, activation addition;
Zou et al. 2023, representation engineering) and of G-ACT (P01).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import suppress
from typing import Any

import torch
from torch import Tensor, nn

from .._modes import eval_mode
from .._progress import Progress
from .sites import Site, hidden_size, register_site_hook, resolve_site

__all__ = ["collect_activations", "pad_prompts"]

TOKEN_RULES: tuple[str, ...] = ("last", "all", "mean")


class _StopForward(Exception):
    """Raised from a hook to end a forward pass once every requested site has run."""


def pad_prompts(
    prompts: Sequence[Tensor], *, pad_token_id: int = 0, side: str = "right"
) -> dict[str, Tensor]:
    """Pad 1-D token-id tensors into one batch with an attention mask.

    Args:
        prompts: non-empty 1-D integer tensors.
        pad_token_id: the id written at padding positions (never attended to nor collected).
        side: ``"right"`` or ``"left"`` padding.

    Returns:
        ``{"input_ids": (B, T) long, "attention_mask": (B, T) long}``.

    Raises:
        ValueError: for an empty list, an empty prompt or an unknown side.
        TypeError: for a prompt that is not a 1-D integer tensor.

    Example:
        >>> import torch
        >>> b = pad_prompts([torch.tensor([5, 6, 7]), torch.tensor([8])], side="left")
        >>> b["input_ids"].tolist(), b["attention_mask"].tolist()
        ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if len(prompts) == 0:
        raise ValueError("prompts is empty: need at least one prompt")
    for j, p in enumerate(prompts):
        if not isinstance(p, Tensor) or p.ndim != 1 or p.is_floating_point() or p.is_complex():
            raise TypeError(f"prompt {j} must be a 1-D integer tensor, got {p!r:.80}")
        if p.numel() == 0:
            raise ValueError(f"prompt {j} is empty (0 tokens)")
    T = max(int(p.numel()) for p in prompts)
    ids = torch.full((len(prompts), T), int(pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for j, p in enumerate(prompts):
        n = int(p.numel())
        sl = slice(0, n) if side == "right" else slice(T - n, T)
        ids[j, sl] = p.to(torch.long).cpu()
        mask[j, sl] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _iter_batches(
    batches: Any, batch_size: int | None, pad_token_id: int
) -> Iterator[dict[str, Tensor]]:
    if isinstance(batches, Mapping):
        batches = [batches]
    elif isinstance(batches, Tensor):
        if batches.ndim == 1:
            batches = [batches]
        elif batches.ndim == 2:
            batches = [{"input_ids": batches}]
        else:
            raise ValueError(f"input_ids must be 1-D or 2-D, got shape {tuple(batches.shape)}")
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        return
    if isinstance(first, Tensor):
        size = 16 if batch_size is None else batch_size
        chunk = [first]
        for p in iterator:
            if len(chunk) == size:
                yield pad_prompts(chunk, pad_token_id=pad_token_id)
                chunk = []
            chunk.append(p)
        yield pad_prompts(chunk, pad_token_id=pad_token_id)
        return
    for j, batch in enumerate(itertools.chain([first], iterator)):
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise TypeError(
                f"batch {j} must be a dict with 'input_ids' (and optional 'attention_mask') or "
                f"the batches a list of 1-D token tensors; got {type(batch).__name__}"
            )
        ids = batch["input_ids"]
        if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.is_floating_point():
            raise ValueError(f"batch {j}: input_ids must be a 2-D integer tensor, got {ids!r:.80}")
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(ids)
        elif not isinstance(mask, Tensor) or mask.shape != ids.shape:
            raise ValueError(
                f"batch {j}: attention_mask must be a tensor of shape {tuple(ids.shape)}, "
                f"got {getattr(mask, 'shape', mask)!r}"
            )
        full = {**batch, "input_ids": ids, "attention_mask": mask}
        B = ids.shape[0]
        step = B if batch_size is None else batch_size
        for start in range(0, B, max(step, 1)):
            yield {
                k: (v[start : start + step] if isinstance(v, Tensor) and v.shape[:1] == (B,) else v)
                for k, v in full.items()
            }


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def collect_activations(
    model: nn.Module,
    batches: Any,
    sites: Site | str | Sequence[Site | str],
    *,
    token: str | Tensor = "last",
    batch_size: int | None = None,
    pad_token_id: int = 0,
    stop_early: bool = True,
    progress: bool | None = None,
) -> dict[str, Tensor]:
    """Collect activations at ``sites`` over many prompts, keeping only what is asked for.

    Padding is never collected: the last token of a prompt is its last non-padding token, and
    ``"mean"``/``"all"``/mask rules skip padding. With left padding, position ids are passed from
    the attention mask (``cumsum - 1``), so padded and unpadded prompts give the same activations.
    The model runs in eval mode during collection (every module's ``training`` flag is restored
    afterwards) with ``use_cache=False``; its parameters are untouched and every hook is removed,
    also after an error.

    Args:
        model: a causal LM (Hugging Face or any module taking ``input_ids`` and
            ``attention_mask``).
        batches: an iterable of dicts with ``"input_ids"`` ``(B, T)`` and optional
            ``"attention_mask"`` (other keys are passed to the model), or a list of 1-D token
            tensors (padded on the right here, ``batch_size`` at a time, default 16).
        sites: a :class:`Site`, a module name, or a sequence of them.
        token: ``"last"`` -> ``(num_prompts, d)``; ``"mean"`` -> mean over each prompt's tokens,
            ``(num_prompts, d)``; ``"all"`` -> every non-padding token, ``(num_tokens, d)``; a bool
            tensor ``(num_prompts, L)`` (or ``(L,)`` for every prompt), aligned with the batches'
            columns -> the tokens where it is ``True`` (and not padding), ``(num_selected, d)``.
        batch_size: split batches into chunks of at most this many prompts (bounds memory).
        pad_token_id: padding id used when padding a list of token tensors.
        stop_early: end each forward pass once every site has run (saves the later layers).
        progress: report batches on stderr.

    Returns:
        ``{site.key: float32 CPU tensor}`` (``site.key`` is the module name; ``name + ":input"``
        for ``"residual_pre"`` sites), rows in prompt order (token order within a prompt).

    Raises:
        ValueError: for an empty prompt set or an empty prompt, an unknown site, duplicate sites,
            an unknown token rule, a mask of the wrong shape, or a site that did not run.
        TypeError: for batches of the wrong type.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Block(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lin = nn.Linear(4, 4)
        ...     def forward(self, h):
        ...         return h + self.lin(h)
        >>> class LM(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.emb = nn.Embedding(10, 4)
        ...         self.layers = nn.ModuleList([Block(), Block()])
        ...     def forward(self, input_ids, attention_mask=None):
        ...         h = self.emb(input_ids)
        ...         for block in self.layers:
        ...             h = block(h)
        ...         return h
        >>> model = LM()
        >>> prompts = [torch.tensor([1, 2, 3]), torch.tensor([4, 5])]
        >>> acts = collect_activations(model, prompts, "layers.0", token="last")
        >>> acts["layers.0"].shape
        torch.Size([2, 4])
        >>> ref = model.layers[0](model.emb(torch.tensor([4, 5])))[-1]
        >>> torch.allclose(acts["layers.0"][1], ref)
        True
        >>> collect_activations(model, prompts, "layers.1", token="all")["layers.1"].shape
        torch.Size([5, 4])
    """
    site_list = [sites] if isinstance(sites, (Site, str)) else list(sites)
    if not site_list:
        raise ValueError("sites is empty: pass at least one Site or module name")
    resolved = [resolve_site(model, s) for s in site_list]
    keys = [s.key for s in resolved]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate sites: {keys}")
    mask_rule: Tensor | None = None
    if isinstance(token, Tensor):
        if token.dtype != torch.bool or token.ndim not in (1, 2):
            raise ValueError(
                f"token mask must be a bool tensor of shape (num_prompts, L) or (L,), got "
                f"dtype {token.dtype}, shape {tuple(token.shape)}"
            )
        mask_rule = token.cpu()
    elif token not in TOKEN_RULES:
        raise ValueError(f"token must be one of {TOKEN_RULES} or a bool mask, got {token!r}")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    try:
        width: int | None = hidden_size(model)
    except ValueError:
        width = None
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    pass_positions = _accepts(model, "position_ids")
    pass_cache = _accepts(model, "use_cache")

    store: dict[str, list[Tensor]] = {k: [] for k in keys}
    fired: dict[str, int] = {}
    select: dict[str, Tensor] = {}

    def make_fn(site: Site) -> Any:
        key = site.key
        site_width = width if site.kind != "module" else None

        def fn(h: Tensor) -> None:
            if h.shape[-1] != site_width and site_width is not None:
                raise ValueError(f"site {key!r}: hidden size {h.shape[-1]} != {site_width}")
            fired[key] = fired.get(key, 0) + 1
            if fired[key] > 1:
                raise ValueError(
                    f"site {key!r} ran more than once in one forward pass; cannot tell which "
                    "call to collect"
                )
            sel = select["mask"].to(h.device)
            if token == "last" and mask_rule is None:
                out = h[torch.arange(h.shape[0], device=h.device), select["last"].to(h.device)]
            elif token == "mean" and mask_rule is None:
                w = sel.to(torch.float32).unsqueeze(-1)
                out = (h.to(torch.float32) * w).sum(1) / w.sum(1)
            else:
                out = h[sel]
            store[key].append(out.detach().to("cpu", torch.float32))
            if stop_early and len(fired) == len(keys):
                raise _StopForward

        return fn

    handles = []
    n_prompts = 0
    reporter = Progress(None, "collecting activations", quiet=not progress)
    try:
        for site in resolved:
            handles.append(register_site_hook(model, site, make_fn(site), width=None))
        with torch.no_grad(), eval_mode(model):
            for batch in _iter_batches(batches, batch_size, pad_token_id):
                ids, am = batch["input_ids"], batch["attention_mask"]
                B, T = ids.shape
                if B == 0:
                    continue
                valid = am.to(torch.bool).cpu()
                empty = (~valid.any(dim=1)).nonzero().flatten().tolist()
                if empty:
                    raise ValueError(
                        f"prompt(s) {[n_prompts + e for e in empty]} are empty (all padding)"
                    )
                if mask_rule is not None:
                    rows = (
                        mask_rule.expand(B, -1)
                        if mask_rule.ndim == 1
                        else mask_rule[n_prompts : n_prompts + B]
                    )
                    if rows.shape[0] != B or rows.shape[1] < T:
                        raise ValueError(
                            f"token mask of shape {tuple(mask_rule.shape)} does not cover prompts "
                            f"{n_prompts}..{n_prompts + B - 1} with {T} columns"
                        )
                    select["mask"] = rows[:, :T] & valid
                else:
                    select["mask"] = valid
                    positions = torch.arange(T).expand(B, T)
                    select["last"] = torch.where(valid, positions, -1).amax(dim=1)
                kwargs: dict[str, Any] = {
                    k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()
                }
                if pass_positions and "position_ids" not in batch and not bool(valid.all()):
                    pos = (valid.long().cumsum(dim=1) - 1).clamp(min=0)
                    kwargs["position_ids"] = pos.to(device)
                if pass_cache:
                    kwargs["use_cache"] = False
                fired.clear()
                with suppress(_StopForward):
                    model(**kwargs)
                missing = [k for k in keys if k not in fired]
                if missing:
                    raise ValueError(f"site(s) {missing} did not run during the forward pass")
                n_prompts += B
                reporter.update(note=f"{n_prompts} prompts")
    finally:
        for handle in handles:
            handle.remove()
        reporter.close()
    if n_prompts == 0:
        raise ValueError("no prompts: the batches were empty")
    if mask_rule is not None and mask_rule.ndim == 2 and mask_rule.shape[0] != n_prompts:
        raise ValueError(
            f"token mask has {mask_rule.shape[0]} rows but there were {n_prompts} prompts"
        )
    return {k: torch.cat(v) for k, v in store.items()}
