"""Subspace rerouting: discrete token search that moves internal activations into a subspace.

Subspace rerouting (SSR; Winninger et al. 2025, "Using Mechanistic Interpretability to Craft
Adversarial Attacks against Large Language Models", arXiv 2503.06269) optimizes a few input
tokens so that the activations of chosen layers land in a target region: a probe's target class,
a direction (cosine target) or a subspace. The optimizer is GCG (Zou et al. 2023): gradients with
respect to one-hot token indicators at the optimized positions give, per position, the top-k
candidate substitutions; a batch of random single- (or multi-) position substitutions is
evaluated exactly and the best is kept. Because the loss only reads the targeted layers, every
forward pass stops right after the last of them (raise-and-catch from a hook), which makes each
step cheaper than a search on the output loss (:class:`OutputTokenSearch`, the GCG baseline).

Intended use: research on models you control: robustness evaluation, defence research and
feature visualization (finding inputs that put a model in a given internal state). The library
ships no harmful prompts, no generated attacks and no probes for public models; its tests and
reproduction use a toy model trained in-run with a synthetic "refuse" token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_positive_int
from .._modes import eval_mode
from ..linalg import Subspace
from .probes import LinearProbe
from .sites import Site, register_site_hook, resolve_site

__all__ = ["OutputTokenSearch", "RerouteTarget", "SearchResult", "SubspaceRerouting"]


class _Stop(Exception):
    """Raised from a hook once every targeted site has run."""


@dataclass(frozen=True, eq=False)
class RerouteTarget:
    """Where one targeted layer's activation (at the last position) should go.

    Exactly one of ``probe``, ``direction`` or ``subspace`` is given:

    - ``probe`` + ``target_class``: loss = cross-entropy of the probe's prediction against
      ``target_class`` (Probe-SSR); satisfied when the probe predicts it;
    - ``direction`` + ``target_cos``: loss = ``(target_cos - cos(h, direction))^2``
      (Steering-SSR); satisfied when ``|cos - target_cos| < tol``;
    - ``subspace`` (a :class:`~subspaces.linalg.Subspace` or ``(d, r)`` basis): loss = the
      fraction of ``||h - mean||^2`` outside the subspace (``into=True``) or inside it
      (``into=False``); satisfied below ``tol``.

    Args:
        site: a :class:`~subspaces.steering.Site` or module name.
        probe: a fitted :class:`~subspaces.steering.LinearProbe`.
        target_class: the label (from ``probe.classes_``) to reach.
        direction: a ``(d,)`` direction.
        target_cos: the cosine to reach with ``direction``.
        subspace: the subspace to enter (or leave).
        into: enter (``True``) or leave (``False``) the subspace.
        center: a ``(d,)`` point subtracted before the subspace test (e.g. a mean activation).
        weight: the weight of this term in the total loss.
        tol: satisfaction tolerance (direction and subspace targets).

    Raises:
        ValueError: unless exactly one kind of target is given, or for a missing
            ``target_class``.

    Example:
        Entering the span of ``e_0`` in ``R^3``: the loss is the share of ``||h||^2`` outside it.

        >>> import torch
        >>> from subspaces.steering import RerouteTarget
        >>> t = RerouteTarget("transformer.h.0", subspace=torch.eye(3)[:, :1], tol=0.1)
        >>> h = torch.tensor([[3.0, 4.0, 0.0], [1.0, 0.0, 0.1]])
        >>> [round(x, 6) for x in t.loss(h).tolist()], t.satisfied(h).tolist()
        ([0.64, 0.009901], [False, True])
        >>> d = RerouteTarget("transformer.h.0", direction=torch.tensor([1.0, 0.0, 0.0]),
        ...                   target_cos=0.6)
        >>> [round(x, 6) for x in d.loss(h).tolist()]  # (0.6 - cos)^2
        [0.0, 0.156054]
        >>> try:
        ...     RerouteTarget("transformer.h.0")
        ... except ValueError as e:
        ...     print(e)
        give exactly one of probe, direction or subspace
    """

    site: Site | str
    probe: LinearProbe | None = None
    target_class: int | None = None
    direction: Tensor | None = None
    target_cos: float = 0.0
    subspace: Subspace | Tensor | None = None
    into: bool = True
    center: Tensor | None = None
    weight: float = 1.0
    tol: float = 0.05

    def __post_init__(self) -> None:
        given = [x is not None for x in (self.probe, self.direction, self.subspace)]
        if sum(given) != 1:
            raise ValueError("give exactly one of probe, direction or subspace")
        if self.probe is not None:
            if self.target_class is None:
                raise ValueError("a probe target needs target_class")
            if not bool((self.probe.classes_ == self.target_class).any()):
                raise ValueError(
                    f"target_class {self.target_class} is not among the probe's classes "
                    f"{self.probe.classes_.tolist()}"
                )

    def _basis(self) -> Tensor:
        assert self.subspace is not None
        if isinstance(self.subspace, Subspace):
            return self.subspace.basis
        return Subspace.from_vectors(self.subspace).basis

    def loss(self, h: Tensor) -> Tensor:
        """Per-row loss of activations ``h (B, d)`` (differentiable).

        Args:
            h: activations at the last position.

        Returns:
            ``(B,)`` losses (float64 for probes, ``h``'s dtype otherwise).
        """
        if self.probe is not None:
            logits = self.probe.logits(h)
            idx = int(
                torch.nonzero(torch.eq(self.probe.classes_, int(self.target_class or 0)))[0, 0]
            )
            target = torch.full((h.shape[0],), idx, dtype=torch.long, device=h.device)
            return nn.functional.cross_entropy(logits, target, reduction="none")
        if self.direction is not None:
            d = self.direction.to(h.device, h.dtype)
            cos = nn.functional.cosine_similarity(h, d.expand_as(h), dim=-1)
            return (self.target_cos - cos) ** 2
        Q = self._basis().to(h.device, h.dtype)
        x = h if self.center is None else h - self.center.to(h.device, h.dtype)
        total = (x * x).sum(-1).clamp_min(torch.finfo(h.dtype).tiny)
        inside = ((x @ Q) ** 2).sum(-1)
        frac_in = inside / total
        return 1.0 - frac_in if self.into else frac_in

    def satisfied(self, h: Tensor) -> Tensor:
        """Whether each row of ``h (B, d)`` reached the target.

        Args:
            h: activations at the last position.

        Returns:
            ``(B,)`` bools.
        """
        with torch.no_grad():
            if self.probe is not None:
                pred = self.probe.predict(h.double()).to(h.device)
                return torch.eq(pred, int(self.target_class or 0))
            if self.direction is not None:
                return self.loss(h).sqrt() < self.tol
            return self.loss(h) < self.tol


@dataclass
class SearchResult:
    """Outcome of a token search.

    Attributes:
        tokens: the best optimized tokens found ``(n_adv,)``.
        input_ids: the full best input ``(L,)`` (prefix, optimized tokens, suffix).
        loss: the best loss.
        success: whether the success test passed.
        steps: steps run.
        success_step: first step (1-based) after which the test passed, or ``None``.
        seconds: search time (gradient and candidate evaluation; the success test excluded).
        losses: the loss after each step.
        history: the current optimized tokens after each step.
        times: cumulative search seconds after each step.

    Example:
        >>> import torch
        >>> from subspaces.steering import RerouteTarget, SubspaceRerouting
        >>> from subspaces.testing.tiny_lm import tiny_causal_lm
        >>> model = tiny_causal_lm("gpt2", vocab_size=12, hidden=16, layers=3, heads=2)
        >>> direction = torch.randn(16, generator=torch.Generator().manual_seed(0))
        >>> target = RerouteTarget("transformer.h.0", direction=direction, target_cos=0.5)
        >>> ssr = SubspaceRerouting(model, target, n_steps=5, search_width=16,
        ...                         generator=torch.Generator().manual_seed(0))
        >>> prefix, init = torch.tensor([1, 2]), torch.tensor([3, 3, 3])
        >>> res = ssr.run(prefix, init)  # no suffix: the last optimized token is read
        >>> torch.equal(res.input_ids, torch.cat([prefix, res.tokens]))
        True
        >>> abs(res.loss - ssr.loss(res.input_ids)) < 1e-6, res.loss <= min(res.losses)
        (True, True)
        >>> res.loss < ssr.loss(torch.cat([prefix, init]))
        True
        >>> len(res.losses) == len(res.history) == len(res.times) == res.steps
        True
        >>> res.success, res.success_step == res.steps  # early stop at the first success
        (True, True)
    """

    tokens: Tensor
    input_ids: Tensor
    loss: float
    success: bool
    steps: int
    success_step: int | None
    seconds: float
    losses: list[float] = field(default_factory=list)
    history: list[Tensor] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


class _GCG:
    """GCG search loop shared by :class:`SubspaceRerouting` and :class:`OutputTokenSearch`."""

    def __init__(
        self,
        model: nn.Module,
        *,
        n_steps: int = 100,
        top_k: int = 32,
        search_width: int = 64,
        n_replace: int = 1,
        allowed_tokens: Tensor | None = None,
        batch_size: int | None = None,
        generator: torch.Generator | None = None,
        progress: Callable[[int, float], None] | None = None,
    ) -> None:
        self.model = model
        self.n_steps = check_positive_int(n_steps, "n_steps")
        self.top_k = check_positive_int(top_k, "top_k")
        self.search_width = check_positive_int(search_width, "search_width")
        self.n_replace = check_positive_int(n_replace, "n_replace")
        self.batch_size = (
            None if batch_size is None else check_positive_int(batch_size, "batch_size")
        )
        self.generator = generator
        self.progress = progress
        embed = model.get_input_embeddings()  # type: ignore[operator]
        if not isinstance(embed, nn.Embedding):
            raise TypeError("the model's input embeddings must be an nn.Embedding")
        self._embed = embed
        V = embed.num_embeddings
        if allowed_tokens is None:
            allowed = torch.ones(V, dtype=torch.bool)
        else:
            allowed = torch.as_tensor(allowed_tokens)
            if allowed.dtype != torch.bool:
                mask = torch.zeros(V, dtype=torch.bool)
                mask[allowed.long()] = True
                allowed = mask
            if allowed.shape != (V,):
                raise ValueError(f"allowed_tokens must be a ({V},) bool mask or a list of ids")
        if int(allowed.sum()) < 2:
            raise ValueError("allowed_tokens must allow at least two tokens")
        self.allowed = allowed

    # subclasses implement these two
    def _forward_loss(self, ids: Tensor | None, embeds: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _default_success(self, ids: Tensor) -> Tensor:
        raise NotImplementedError

    def _model_call(self, ids: Tensor | None, embeds: Tensor | None) -> Any:
        if embeds is not None:
            return self.model(inputs_embeds=embeds, use_cache=False)
        return self.model(input_ids=ids, use_cache=False)

    def _batched_loss(self, ids: Tensor) -> Tensor:
        bs = self.batch_size or ids.shape[0]
        with torch.no_grad():
            return torch.cat(
                [
                    self._forward_loss(ids[i : i + bs], None).detach().double()
                    for i in range(0, ids.shape[0], bs)
                ]
            )

    def run(
        self,
        prefix: Tensor,
        init_tokens: Tensor,
        suffix: Tensor | None = None,
        *,
        stop_when: Callable[[Tensor], bool] | None = None,
        early_stop: bool = True,
    ) -> SearchResult:
        """Search the tokens between ``prefix`` and ``suffix`` that minimize the loss.

        Args:
            prefix: fixed 1-D tokens before the optimized ones (may be empty).
            init_tokens: 1-D initial optimized tokens (all must be allowed).
            suffix: fixed 1-D tokens after them (the loss reads the last position).
            stop_when: success test on the full 1-D input (default: the method's own test);
                evaluated after every step, its time is not counted in ``seconds``.
            early_stop: stop at the first success.

        Returns:
            A :class:`SearchResult`.

        Raises:
            ValueError: for bad token tensors or disallowed initial tokens.
        """
        suffix = torch.zeros(0, dtype=torch.long) if suffix is None else suffix
        for name, t in (("prefix", prefix), ("init_tokens", init_tokens), ("suffix", suffix)):
            if not isinstance(t, Tensor) or t.ndim != 1 or t.is_floating_point():
                raise ValueError(f"{name} must be a 1-D integer tensor")
        if init_tokens.numel() == 0:
            raise ValueError("init_tokens must hold at least one token to optimize")
        if not bool(self.allowed[init_tokens.long()].all()):
            raise ValueError("init_tokens contains tokens outside allowed_tokens")
        prefix, suffix = prefix.long(), suffix.long()
        n_adv = init_tokens.numel()
        W_E = self._embed.weight
        device = W_E.device
        allowed = self.allowed.to(device)

        def full(adv: Tensor) -> Tensor:
            lead = prefix.to(device).expand(adv.shape[0], -1)
            tail = suffix.to(device).expand(adv.shape[0], -1)
            return torch.cat([lead, adv, tail], dim=1)

        def success(adv: Tensor) -> bool:
            ids = full(adv.reshape(1, -1))[0]
            if stop_when is not None:
                return bool(stop_when(ids.cpu()))
            with torch.no_grad():
                return bool(self._default_success(ids.reshape(1, -1))[0])

        current = init_tokens.long().to(device).clone()
        best, best_loss = current.clone(), float(self._batched_loss(full(current[None]))[0])
        losses: list[float] = []
        history: list[Tensor] = []
        times: list[float] = []
        elapsed = 0.0
        success_step: int | None = None
        success_tokens: Tensor | None = None
        n_rep = min(self.n_replace, n_adv)
        with eval_mode(self.model):
            if success(current):
                success_step, success_tokens = 0, current.clone()
            for step in range(1, self.n_steps + 1):
                if success_step is not None and early_stop:
                    break
                t0 = time.perf_counter()
                one_hot = nn.functional.one_hot(current, W_E.shape[0]).to(W_E.dtype)
                one_hot.requires_grad_(True)
                with torch.enable_grad():
                    embeds = torch.cat(
                        [
                            self._embed(prefix.to(device)),
                            one_hot @ W_E,
                            self._embed(suffix.to(device)),
                        ]
                    )[None]
                    loss = self._forward_loss(None, embeds).sum()
                    (grad,) = torch.autograd.grad(loss, one_hot)
                grad = grad.masked_fill(~allowed, float("inf"))
                k = min(self.top_k, int(allowed.sum()))
                top = (-grad).topk(k, dim=1).indices  # (n_adv, k)
                g = self.generator
                cands = current.expand(self.search_width, -1).clone()
                pos = torch.rand(self.search_width, n_adv, generator=g).argsort(1)[:, :n_rep]
                pick = torch.randint(k, (self.search_width, n_rep), generator=g)
                pos, pick = pos.to(device), pick.to(device)
                cands.scatter_(1, pos, top[pos, pick])
                cands = torch.unique(cands, dim=0)
                moved = (cands != current).any(dim=1)
                if bool(moved.any()):  # GCG always moves: drop the unchanged candidate
                    cands = cands[moved]
                cand_losses = self._batched_loss(full(cands))
                j = int(cand_losses.argmin())
                current = cands[j].clone()
                cur_loss = float(cand_losses[j])
                if cur_loss < best_loss:
                    best, best_loss = current.clone(), cur_loss
                elapsed += time.perf_counter() - t0
                losses.append(cur_loss)
                history.append(current.detach().cpu().clone())
                times.append(elapsed)
                if self.progress is not None:
                    self.progress(step, cur_loss)
                if success_step is None and success(current):
                    success_step, success_tokens = step, current.clone()
        if success_tokens is not None:
            final = success_tokens
            final_loss = float(self._batched_loss(full(final[None]))[0])
        else:
            final, final_loss = best, best_loss
        return SearchResult(
            tokens=final.cpu(),
            input_ids=full(final[None])[0].cpu(),
            loss=final_loss,
            success=success_step is not None,
            steps=len(losses),
            success_step=success_step,
            seconds=elapsed,
            losses=losses,
            history=history,
            times=times,
        )


class SubspaceRerouting(_GCG):
    """GCG search whose loss moves the targeted layers' activations into target regions.

    The loss is ``sum_k weight_k * loss_k(h_k)`` over the :class:`RerouteTarget` list, read at
    the last position; every forward pass stops after the last targeted site has run.

    Args:
        model: a causal LM accepting ``input_ids`` or ``inputs_embeds`` (Hugging Face style)
            with an ``nn.Embedding`` input embedding.
        targets: one or more :class:`RerouteTarget`.
        n_steps: maximum GCG steps.
        top_k: candidate tokens per position (by gradient).
        search_width: candidates evaluated per step.
        n_replace: positions changed per candidate.
        allowed_tokens: bool mask ``(V,)`` or ids of the tokens the search may use.
        batch_size: candidates per forward pass (default all at once).
        generator: random source of the candidate sampling.
        progress: called as ``progress(step, loss)`` after each step.

    Example:
        >>> from subspaces.testing.tiny_lm import tiny_causal_lm
        >>> model = tiny_causal_lm("gpt2", vocab_size=12, hidden=16, layers=3, heads=2)
        >>> direction = torch.randn(16, generator=torch.Generator().manual_seed(0))
        >>> target = RerouteTarget("transformer.h.0", direction=direction, target_cos=0.5)
        >>> ssr = SubspaceRerouting(model, target, n_steps=5, search_width=16,
        ...                         generator=torch.Generator().manual_seed(0))
        >>> res = ssr.run(torch.tensor([1, 2]), torch.tensor([3, 3, 3]))
        >>> res.loss <= ssr.loss(torch.tensor([1, 2, 3, 3, 3]))
        True
    """

    def __init__(
        self,
        model: nn.Module,
        targets: RerouteTarget | Sequence[RerouteTarget],
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        items = [targets] if isinstance(targets, RerouteTarget) else list(targets)
        if not items:
            raise ValueError("targets is empty")
        for t in items:
            if not isinstance(t, RerouteTarget):
                raise TypeError(f"targets must be RerouteTarget, got {type(t).__name__}")
        self.targets = items
        self.sites = [resolve_site(model, t.site) for t in items]

    def activations(self, ids: Tensor | None, embeds: Tensor | None) -> list[Tensor]:
        """Last-position activations ``(B, d)`` at each targeted site (forward stopped early).

        Args:
            ids: ``(B, L)`` token ids, or ``None`` with ``embeds``.
            embeds: ``(B, L, d)`` input embeddings, or ``None`` with ``ids``.

        Returns:
            One tensor per target, in the order of ``targets`` (differentiable).

        Raises:
            ValueError: if a targeted site did not run.
        """
        store: dict[int, Tensor] = {}
        need = len(self.sites)

        def make(i: int) -> Any:
            def fn(h: Tensor) -> None:
                store[i] = h[:, -1]
                if len(store) == need:
                    raise _Stop

            return fn

        handles = [register_site_hook(self.model, s, make(i)) for i, s in enumerate(self.sites)]
        try:
            self._model_call(ids, embeds)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [self.sites[i].key for i in range(need) if i not in store]
        if missing:
            raise ValueError(f"targeted site(s) {missing} did not run")
        return [store[i] for i in range(need)]

    def _forward_loss(self, ids: Tensor | None, embeds: Tensor | None) -> Tensor:
        acts = self.activations(ids, embeds)
        total = None
        for t, h in zip(self.targets, acts, strict=True):
            term = t.weight * t.loss(h).double()
            total = term if total is None else total + term
        assert total is not None
        return total

    def _default_success(self, ids: Tensor) -> Tensor:
        acts = self.activations(ids, None)
        ok = torch.ones(ids.shape[0], dtype=torch.bool)
        for t, h in zip(self.targets, acts, strict=True):
            ok &= t.satisfied(h).cpu()
        return ok

    def loss(self, input_ids: Tensor) -> float:
        """The rerouting loss of one full 1-D input.

        Args:
            input_ids: ``(L,)`` tokens.

        Returns:
            The loss.
        """
        with torch.no_grad(), eval_mode(self.model):
            return float(self._forward_loss(input_ids.reshape(1, -1), None)[0])


class OutputTokenSearch(_GCG):
    """GCG on the output loss: make ``target_id`` the next token (the baseline of SSR).

    Loss: cross-entropy of the next-token distribution at the last position against
    ``target_id`` (full forward pass); success: ``target_id`` is the most probable next token.

    Args:
        model: a causal LM returning ``.logits``.
        target_id: the token to make most probable.
        **kwargs: the search options of :class:`SubspaceRerouting`.

    Example:
        >>> from subspaces.testing.tiny_lm import tiny_causal_lm
        >>> model = tiny_causal_lm("llama", vocab_size=12, hidden=16, layers=2, heads=2)
        >>> ots = OutputTokenSearch(model, target_id=5, n_steps=20, search_width=32,
        ...                         generator=torch.Generator().manual_seed(0))
        >>> res = ots.run(torch.tensor([1, 2]), torch.tensor([3, 3, 3]))
        >>> res.losses[-1] <= res.losses[0] or res.success
        True
    """

    def __init__(self, model: nn.Module, target_id: int, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if isinstance(target_id, bool) or not isinstance(target_id, int):
            raise TypeError(f"target_id must be an int, got {target_id!r}")
        V = self._embed.num_embeddings
        if not 0 <= target_id < V:
            raise ValueError(f"target_id must be in [0, {V}), got {target_id}")
        self.target_id = target_id

    def _logits(self, ids: Tensor | None, embeds: Tensor | None) -> Tensor:
        out = self._model_call(ids, embeds)
        logits = out.logits if hasattr(out, "logits") else out
        return logits[:, -1].float()

    def _forward_loss(self, ids: Tensor | None, embeds: Tensor | None) -> Tensor:
        logits = self._logits(ids, embeds)
        target = torch.full((logits.shape[0],), self.target_id, device=logits.device)
        return nn.functional.cross_entropy(logits, target, reduction="none")

    def _default_success(self, ids: Tensor) -> Tensor:
        return (self._logits(ids, None).argmax(-1) == self.target_id).cpu()

    def loss(self, input_ids: Tensor) -> float:
        """The output loss of one full 1-D input.

        Args:
            input_ids: ``(L,)`` tokens.

        Returns:
            The cross-entropy of ``target_id`` as the next token.
        """
        with torch.no_grad(), eval_mode(self.model):
            return float(self._forward_loss(input_ids.reshape(1, -1), None)[0])
