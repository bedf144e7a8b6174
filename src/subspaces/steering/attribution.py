"""Static neuron-attribution steering: boost the MLP neurons most attributed to a target token.

The baseline G-ACT (Sharma & Raman 2025, arXiv 2506.18887) compares against: find the MLP
neurons most responsible for the target token (there: "C++"/"CPP") and perturb them statically,
whatever the context. Two scores are available:

- ``"grad_x_act"`` (default): attribution ``a_n * d log p(target) / d a_n`` of each MLP hidden
  unit ``a_n`` (the input of the MLP's output projection) at the prompts' last token, averaged
  over prompts (gradient x activation, Shrikumar et al. 2016);
- ``"logit_lens"``: the paper's static score, computed from the weights only: the unit's output
  column ``w_n`` (its write into the residual stream) decoded by the unembedding,
  ``P = softmax(W_U w_n)``, scored ``A_n = P[t] / mean(top-k P)``.

:meth:`NeuronAttributionSteering.apply` then adds ``alpha * scale_n`` to the chosen units at every
position (``scale_n`` = the unit's typical activation magnitude on the prompts, so ``alpha = 1``
is "one typical activation"), a static intervention: it does not look at the current context.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_positive_int
from .._modes import eval_mode
from .sites import find_sites, num_layers

__all__ = ["NeuronAttributionSteering", "mlp_output_projections"]

_OUT_PROJ = ("down_proj", "c_proj", "dense_4h_to_h", "fc2", "fc_out", "w2", "out_proj")


def mlp_output_projections(model: nn.Module) -> list[str]:
    """Module names of each layer's MLP output projection (its input = the MLP hidden units).

    Args:
        model: a causal LM (Llama/Mistral/Qwen2 ``mlp.down_proj``, GPT-2 ``mlp.c_proj``,
            GPT-NeoX ``mlp.dense_4h_to_h``, OPT ``fc2``, ...).

    Returns:
        One module name per decoder block, in layer order.

    Raises:
        ValueError: if a block has no recognizable MLP output projection.

    Example:
        >>> from subspaces.testing.tiny_lm import tiny_causal_lm
        >>> mlp_output_projections(tiny_causal_lm("llama", hidden=16, layers=2, heads=2))
        ['model.layers.0.mlp.down_proj', 'model.layers.1.mlp.down_proj']
    """
    blocks = [s.name for s in find_sites(model, kind="block")]
    names = [n for n, _ in model.named_modules()]
    out = []
    for block in blocks:
        inside = [n for n in names if n.startswith(block + ".")]
        found = None
        for pref in (".mlp.", ".feed_forward.", "."):
            for cand in _OUT_PROJ:
                hits = [n for n in inside if n.endswith(pref.rstrip(".") + "." + cand)]
                hits = [n for n in hits if "attn" not in n and "attention" not in n]
                if hits:
                    found = hits[0]
                    break
            if found:
                break
        if found is None:
            raise ValueError(f"no MLP output projection found in block {block!r}")
        out.append(found)
    return out


def _out_columns(module: nn.Module) -> Tensor:
    """``(m, d)``: row ``n`` is what hidden unit ``n`` writes into the residual stream."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor) or weight.ndim != 2:
        raise ValueError(f"{type(module).__name__} has no 2-D weight")
    if isinstance(module, nn.Linear):
        return weight.detach().T  # Linear: (d, m)
    return weight.detach()  # GPT-2 Conv1D: (m, d)


class NeuronAttributionSteering:
    """Static baseline: boost the ``n_neurons`` MLP units most attributed to target tokens.

    Args:
        n_neurons: how many units to boost (over all layers).
        method: ``"grad_x_act"`` or ``"logit_lens"`` (see the module doc).
        layers: restrict the search to these layer indices (default all).
        top_k: ``k`` of the logit-lens score's normalizer.

    Attributes:
        neurons_: ``[(module name, unit index), ...]`` chosen, best first.
        scores_: their scores.
        scale_: their typical activation magnitude (mean ``|a|`` over prompt tokens).

    Example:
        >>> from subspaces.testing.tiny_lm import tiny_causal_lm
        >>> model = tiny_causal_lm("llama", vocab_size=20, hidden=16, layers=2, heads=2)
        >>> prompts = [torch.tensor([1, 2, 3]), torch.tensor([4, 5])]
        >>> nas = NeuronAttributionSteering(n_neurons=2).fit(model, prompts, target_ids=[7])
        >>> len(nas.neurons_), nas.neurons_[0][0].endswith("down_proj")
        (2, True)
        >>> x = torch.tensor([[1, 2, 3]])
        >>> with nas.apply(model, alpha=3.0):
        ...     steered = model(x).logits[0, -1].softmax(-1)[7]
        >>> bool(steered > model(x).logits[0, -1].softmax(-1)[7])
        True
    """

    def __init__(
        self,
        n_neurons: int = 1,
        *,
        method: str = "grad_x_act",
        layers: Sequence[int] | None = None,
        top_k: int = 10,
    ) -> None:
        self.n_neurons = check_positive_int(n_neurons, "n_neurons")
        self.method = check_choice(method, "method", ("grad_x_act", "logit_lens"))
        self.layers = None if layers is None else list(layers)
        self.top_k = check_positive_int(top_k, "top_k")

    def _modules(self, model: nn.Module) -> list[str]:
        names = mlp_output_projections(model)
        if self.layers is None:
            return names
        n = num_layers(model)
        idx = sorted({i % n for i in self.layers})
        return [names[i] for i in idx]

    def fit(
        self,
        model: nn.Module,
        prompts: Sequence[Tensor],
        target_ids: int | Sequence[int],
    ) -> NeuronAttributionSteering:
        """Score the MLP units and keep the ``n_neurons`` best.

        Args:
            model: a causal LM returning ``.logits``.
            prompts: 1-D token tensors (the next token after each is the one to promote).
            target_ids: the target token id(s); their total log-probability is attributed.

        Returns:
            ``self``.

        Raises:
            ValueError: for no prompts or an empty prompt.
        """
        if len(prompts) == 0:
            raise ValueError("prompts is empty")
        if any(p.ndim != 1 or p.numel() == 0 for p in prompts):
            raise ValueError("every prompt must be a non-empty 1-D token tensor")
        targets = [target_ids] if isinstance(target_ids, int) else list(target_ids)
        module_names = self._modules(model)
        modules = dict(model.named_modules())
        captured: dict[str, Tensor] = {}

        def make_hook(name: str) -> Any:
            def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
                a = args[0]
                if a.requires_grad:
                    a.retain_grad()
                captured[name] = a

            return hook

        handles = [modules[n].register_forward_pre_hook(make_hook(n)) for n in module_names]
        attrib = {n: torch.zeros(0) for n in module_names}
        magnitude = {n: torch.zeros(0) for n in module_names}
        try:
            with eval_mode(model), torch.enable_grad():
                for prompt in prompts:
                    captured.clear()
                    out = model(input_ids=prompt.reshape(1, -1))
                    logits = out.logits if hasattr(out, "logits") else out
                    logp = torch.log_softmax(logits[0, -1].float(), dim=-1)
                    score = torch.logsumexp(logp[targets], dim=0)
                    acts = [captured[n] for n in module_names]
                    grads = torch.autograd.grad(score, acts, allow_unused=True)
                    for n, a, g in zip(module_names, acts, grads, strict=True):
                        # (1, T, m), or (T, m) where a model flattens tokens (OPT)
                        a3 = a.reshape(1, -1, a.shape[-1])
                        a_last = a3[0, -1].detach().double()
                        g_last = (
                            torch.zeros_like(a_last)
                            if g is None
                            else g.reshape(1, -1, a.shape[-1])[0, -1].double()
                        )
                        contrib = a_last * g_last
                        mag = a3[0].detach().double().abs().mean(0)
                        attrib[n] = contrib if attrib[n].numel() == 0 else attrib[n] + contrib
                        magnitude[n] = mag if magnitude[n].numel() == 0 else magnitude[n] + mag
        finally:
            for h in handles:
                h.remove()
        scores: dict[str, Tensor] = {}
        if self.method == "grad_x_act":
            scores = {n: attrib[n] / len(prompts) for n in module_names}
        else:
            unembed = model.get_output_embeddings()  # type: ignore[operator]
            W_U = unembed.weight.detach().double()
            for n in module_names:
                cols = _out_columns(modules[n]).double()  # (m, d)
                P = torch.softmax(cols @ W_U.T, dim=-1)  # (m, V)
                top = P.topk(min(self.top_k, P.shape[1]), dim=1).values.mean(1)
                scores[n] = P[:, targets].sum(1) / top
        flat = torch.cat([scores[n] for n in module_names])
        owners = [(n, i) for n in module_names for i in range(scores[n].numel())]
        k = min(self.n_neurons, flat.numel())
        best = flat.topk(k).indices.tolist()
        self.neurons_ = [owners[j] for j in best]
        self.scores_ = flat[best].float()
        self.scale_ = torch.tensor(
            [float(magnitude[n][i]) / len(prompts) for n, i in self.neurons_]
        )
        return self

    @contextmanager
    def apply(self, model: nn.Module, alpha: float = 1.0) -> Iterator[None]:
        """Add ``alpha * scale_`` to the chosen units at every position, inside a block.

        Args:
            model: the model it was fitted on.
            alpha: strength (``0``: no hook is installed).

        Yields:
            ``None``.

        Raises:
            RuntimeError: if not fitted.
        """
        if not hasattr(self, "neurons_"):
            raise RuntimeError("NeuronAttributionSteering is not fitted: call fit() first")
        modules = dict(model.named_modules())
        per_module: dict[str, list[tuple[int, float]]] = {}
        for (name, idx), s in zip(self.neurons_, self.scale_.tolist(), strict=True):
            per_module.setdefault(name, []).append((idx, s))
        handles = []

        def make_hook(items: list[tuple[int, float]]) -> Any:
            index = torch.tensor([i for i, _ in items])
            delta = torch.tensor([s for _, s in items])

            def hook(mod: nn.Module, args: tuple[Any, ...]) -> Any:
                a = args[0]
                add = torch.zeros(a.shape[-1], dtype=a.dtype, device=a.device)
                add[index.to(a.device)] = alpha * delta.to(a.device, a.dtype)
                return (a + add, *args[1:])

            return hook

        try:
            if alpha != 0:
                for name, items in per_module.items():
                    handles.append(modules[name].register_forward_pre_hook(make_hook(items)))
            yield None
        finally:
            for h in handles:
                h.remove()
