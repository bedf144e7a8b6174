"""Tiny causal language models built offline from a config, and a small training loop.

:func:`tiny_causal_lm` builds a randomly initialized Hugging Face ``transformers`` causal LM of a
given family (no download: only a config), deterministic in ``seed`` and with dropout off;
:func:`train_causal_lm` trains it on a token stream (next-token cross-entropy) with AdamW or any
torch optimizer. The steering reproductions (G-ACT, arXiv 2506.18887; subspace rerouting,
arXiv 2503.06269) and the optimizer benchmarks train their models with these.

This module is not imported by ``subspaces.testing`` (it would import ``transformers``); use
``from subspaces.testing.tiny_lm import tiny_causal_lm, train_causal_lm``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_positive_float, check_positive_int

__all__ = ["FAMILIES", "tiny_causal_lm", "train_causal_lm"]

FAMILIES = ("llama", "gpt2", "gpt_neox", "qwen2", "mistral", "opt")


def _config(
    family: str,
    vocab_size: int,
    hidden: int,
    layers: int,
    heads: int,
    intermediate: int,
    max_positions: int,
    special: dict[str, Any],
) -> Any:
    import transformers as tf

    if family in ("llama", "qwen2", "mistral"):
        cls = {
            "llama": tf.LlamaConfig,
            "qwen2": tf.Qwen2Config,
            "mistral": tf.MistralConfig,
        }[family]
        return cls(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=max_positions,
            attention_dropout=0.0,
            tie_word_embeddings=False,
            **special,
        )
    if family == "gpt2":
        return tf.GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_inner=intermediate,
            n_positions=max_positions,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **special,
        )
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            max_position_embeddings=max_positions,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            tie_word_embeddings=False,
            **special,
        )
    return tf.OPTConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        ffn_dim=intermediate,
        max_position_embeddings=max_positions,
        word_embed_proj_dim=hidden,
        dropout=0.0,
        attention_dropout=0.0,
        layerdrop=0.0,
        **special,
    )


def tiny_causal_lm(
    family: str = "llama",
    *,
    vocab_size: int = 257,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate: int | None = None,
    max_positions: int = 512,
    seed: int = 0,
    attn_implementation: str = "eager",
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> nn.Module:
    """A small randomly initialized ``transformers`` causal LM, built offline from a config.

    Initialization is deterministic in ``seed`` and leaves the global torch RNG untouched;
    dropout is disabled, the model is float32, on CPU and in eval mode. ``attn_implementation``
    defaults to ``"eager"`` (deterministic and identical across CPU runs).

    Args:
        family: one of ``"llama"``, ``"gpt2"``, ``"gpt_neox"``, ``"qwen2"``, ``"mistral"``,
            ``"opt"``.
        vocab_size: vocabulary size (e.g. ``ByteTokenizer().vocab_size``).
        hidden: width of the residual stream (divisible by ``heads``).
        layers: number of decoder blocks.
        heads: attention heads.
        intermediate: MLP width (default ``4 * hidden``).
        max_positions: the longest sequence the position embeddings cover.
        seed: seed of the initialization.
        attn_implementation: ``"eager"`` or ``"sdpa"``.
        pad_token_id: pad id stored in the config (and generation config), if any.
        bos_token_id: beginning-of-sequence id stored in the config, if any.
        eos_token_id: end-of-sequence id stored in the config, if any.

    Returns:
        The model (a ``transformers.PreTrainedModel``).

    Raises:
        ValueError: for an unknown family or attention implementation, or ``hidden`` not
            divisible by ``heads``.
        TypeError: for non-integer sizes.
        ImportError: if ``transformers`` is not installed.

    Example:
        >>> model = tiny_causal_lm("gpt2", vocab_size=50, hidden=16, layers=2, heads=2, seed=1)
        >>> model(torch.tensor([[1, 2, 3]])).logits.shape
        torch.Size([1, 3, 50])
        >>> again = tiny_causal_lm("gpt2", vocab_size=50, hidden=16, layers=2, heads=2, seed=1)
        >>> all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
        True
    """
    check_choice(family, "family", FAMILIES)
    check_choice(attn_implementation, "attn_implementation", ("eager", "sdpa"))
    vocab_size = check_positive_int(vocab_size, "vocab_size")
    hidden = check_positive_int(hidden, "hidden")
    layers = check_positive_int(layers, "layers")
    heads = check_positive_int(heads, "heads")
    max_positions = check_positive_int(max_positions, "max_positions")
    intermediate = 4 * hidden if intermediate is None else intermediate
    intermediate = check_positive_int(intermediate, "intermediate")
    if hidden % heads:
        raise ValueError(f"hidden={hidden} must be divisible by heads={heads}")
    try:
        import transformers
    except ImportError as err:  # pragma: no cover
        raise ImportError("tiny_causal_lm needs transformers: pip install 'subspaces[hf]'") from err
    special = {
        "pad_token_id": pad_token_id,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
    }
    config = _config(
        family, vocab_size, hidden, layers, heads, intermediate, max_positions, special
    )
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(
            config, attn_implementation=attn_implementation, dtype=torch.float32
        )
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.pad_token_id = pad_token_id
        gen.bos_token_id = bos_token_id
        gen.eos_token_id = eos_token_id
    return model.eval()


def _streams(token_ids: Tensor | Sequence[Tensor], seq_len: int) -> list[Tensor]:
    if isinstance(token_ids, Tensor):
        if token_ids.ndim == 1:
            streams = [token_ids]
        elif token_ids.ndim == 2:
            streams = list(token_ids)
        else:
            raise ValueError(f"token_ids must be 1-D or 2-D, got shape {tuple(token_ids.shape)}")
    else:
        streams = list(token_ids)
    if not streams:
        raise ValueError("token_ids must hold at least one token stream")
    out = []
    for i, s in enumerate(streams):
        if not isinstance(s, Tensor) or s.ndim != 1:
            raise TypeError(f"token stream {i} must be a 1-D tensor")
        if s.dtype.is_floating_point or s.dtype == torch.bool:
            raise TypeError(f"token stream {i} must have an integer dtype, got {s.dtype}")
        if s.numel() < seq_len + 1:
            raise ValueError(
                f"token stream {i} has {s.numel()} ids; seq_len={seq_len} needs at least "
                f"{seq_len + 1}"
            )
        out.append(s.long())
    return out


def train_causal_lm(
    model: nn.Module,
    token_ids: Tensor | Sequence[Tensor],
    *,
    steps: int,
    batch_size: int,
    seq_len: int,
    lr: float = 3e-3,
    seed: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    weight_decay: float = 0.0,
    warmup: int = 0,
    grad_clip: float | None = 1.0,
    progress: Callable[[int, float], None] | Any | None = None,
) -> list[float]:
    """Train a causal LM in place on next-token prediction over random windows.

    Each step draws ``batch_size`` windows of ``seq_len + 1`` tokens (stream chosen uniformly at
    random per row when several streams are given, start offset uniform), and minimizes the mean
    cross-entropy of tokens ``1..seq_len`` given their prefixes. Sampling uses its own
    ``torch.Generator`` seeded with ``seed``; with dropout off (as in :func:`tiny_causal_lm`) the
    run is deterministic. The model is put in train mode during the loop and its previous mode
    restored after.

    Args:
        model: a causal LM whose ``forward(input_ids=...)`` returns ``.logits`` (or a tensor of
            logits) of shape ``(batch, seq, vocab)``. Trained in place.
        token_ids: a 1-D token stream, several 1-D streams (a sequence, or the rows of a 2-D
            tensor), e.g. one stream per language.
        steps: optimizer steps.
        batch_size: windows per step.
        seq_len: tokens predicted per window.
        lr: learning rate of the default AdamW (ignored when ``optimizer`` is given, except by
            the warmup, which scales every group's initial learning rate).
        seed: seed of the window sampling.
        optimizer: any ``torch.optim.Optimizer`` over the model's parameters (e.g. a subspace
            optimizer); default ``AdamW(lr, betas=(0.9, 0.95), weight_decay)``.
        weight_decay: weight decay of the default AdamW.
        warmup: linear learning-rate warmup steps (0 = none).
        grad_clip: max global gradient norm, or ``None`` for no clipping.
        progress: called as ``progress(step, loss)`` after each step, or an object with an
            ``update(note=...)`` method such as ``subspaces._progress.Progress``.

    Returns:
        The training loss of every step.

    Raises:
        ValueError: for non-positive sizes, streams shorter than ``seq_len + 1`` or a
            non-finite loss.
        TypeError: for non-integer token streams.

    Example:
        >>> model = tiny_causal_lm("llama", vocab_size=8, hidden=16, layers=1, heads=2)
        >>> stream = torch.arange(400) % 8  # 0 1 2 ... 7 0 1 ...: perfectly predictable
        >>> losses = train_causal_lm(model, stream, steps=60, batch_size=8, seq_len=16, lr=1e-2)
        >>> losses[0] > 1.5, losses[-1] < 0.2
        (True, True)
    """
    steps = check_positive_int(steps, "steps")
    batch_size = check_positive_int(batch_size, "batch_size")
    seq_len = check_positive_int(seq_len, "seq_len")
    lr = check_positive_float(lr, "lr")
    warmup = check_positive_int(warmup, "warmup", minimum=0)
    if grad_clip is not None:
        grad_clip = check_positive_float(grad_clip, "grad_clip")
    streams = _streams(token_ids, seq_len)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer is None:
        optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.arange(seq_len + 1)
    was_training = model.training
    model.train()
    losses: list[float] = []
    try:
        for step in range(steps):
            if len(streams) == 1:
                which = torch.zeros(batch_size, dtype=torch.long)
            else:
                which = torch.randint(len(streams), (batch_size,), generator=gen)
            rows = []
            for w in which.tolist():
                s = streams[w]
                start = int(torch.randint(s.numel() - seq_len, (1,), generator=gen))
                rows.append(s[start + offsets])
            batch = torch.stack(rows).to(device)
            if warmup:
                scale = min(1.0, (step + 1) / warmup)
                for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                    group["lr"] = base * scale
            out = model(input_ids=batch[:, :-1])
            logits = out.logits if hasattr(out, "logits") else out
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1)
            )
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ValueError(f"the training loss became non-finite ({value}) at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            losses.append(value)
            if progress is not None:
                if hasattr(progress, "update"):
                    progress.update(note=f"loss {value:.3f}")
                else:
                    progress(step, value)
    finally:
        if warmup:
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base
        model.train(was_training)
    return losses
