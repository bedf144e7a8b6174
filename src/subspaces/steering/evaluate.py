"""Did steering work? Target-token mass, probe accuracy, strength sweeps and a short report.

- :func:`target_token_mass`: the next-token probability mass on a set of target tokens, per
  prompt (run it inside a steering context to measure the steered model);
- :func:`probe_accuracy`: accuracy of per-site probes on labelled activations;
- :func:`strength_sweep`: a metric as a function of the steering strength ``alpha``;
- :func:`steering_report`: a markdown table of sweeps (and an optional matplotlib figure).

These are the measurements G-ACT (Sharma & Raman 2025, arXiv 2506.18887) reports: probe
accuracy per layer and the rate of the target concept in the output as steering strength varies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._modes import eval_mode
from .collect import pad_prompts
from .probes import LinearProbe

__all__ = ["probe_accuracy", "steering_report", "strength_sweep", "target_token_mass"]


def target_token_mass(
    model: nn.Module,
    prompts: Sequence[Tensor] | Mapping[str, Tensor],
    target_ids: int | Sequence[int],
    *,
    batch_size: int = 32,
) -> Tensor:
    """Next-token probability mass on ``target_ids`` after each prompt's last real token.

    Args:
        model: a causal LM returning ``.logits`` (or a logits tensor).
        prompts: 1-D token tensors (padded on the left here), or a batch dict with
            ``"input_ids"`` and optional ``"attention_mask"``.
        target_ids: token id(s) whose probabilities are summed.
        batch_size: prompts per forward pass (list input).

    Returns:
        ``(num_prompts,)`` float64 masses in ``[0, 1]``.

    Raises:
        ValueError: for no prompts or an out-of-range target id.

    Example:
        >>> from subspaces.testing.tiny_lm import tiny_causal_lm
        >>> model = tiny_causal_lm("gpt2", vocab_size=10, hidden=16, layers=1, heads=2)
        >>> mass = target_token_mass(model, [torch.tensor([1, 2]), torch.tensor([3])], range(10))
        >>> torch.allclose(mass, torch.ones(2, dtype=torch.float64))
        True
    """
    targets = [target_ids] if isinstance(target_ids, int) else [int(t) for t in target_ids]
    if isinstance(prompts, Mapping):
        batches = [dict(prompts)]
    else:
        if len(prompts) == 0:
            raise ValueError("prompts is empty")
        batches = [
            pad_prompts(list(prompts[i : i + batch_size]), side="left")
            for i in range(0, len(prompts), batch_size)
        ]
    out = []
    with torch.no_grad(), eval_mode(model):
        for batch in batches:
            ids = batch["input_ids"]
            mask = batch.get("attention_mask")
            kwargs: dict[str, Any] = {"input_ids": ids}
            if mask is not None:
                kwargs["attention_mask"] = mask
                valid = mask.bool()
                if not bool(valid.all()):
                    kwargs["position_ids"] = (valid.long().cumsum(1) - 1).clamp(min=0)
                last = torch.where(valid, torch.arange(ids.shape[1]), -1).amax(1)
            else:
                last = torch.full((ids.shape[0],), ids.shape[1] - 1)
            res = model(**kwargs)
            logits = res.logits if hasattr(res, "logits") else res
            V = logits.shape[-1]
            if any(not 0 <= t < V for t in targets):
                raise ValueError(f"target ids {targets} must be in [0, {V})")
            probs = torch.softmax(logits[torch.arange(ids.shape[0]), last].double(), dim=-1)
            out.append(probs[:, targets].sum(-1))
    return torch.cat(out)


def probe_accuracy(
    probes: Mapping[str, LinearProbe],
    acts_by_site: Mapping[str, Tensor],
    labels: Tensor | Sequence[int],
) -> dict[str, float]:
    """Accuracy of each site's probe on labelled activations.

    Args:
        probes: ``{site: fitted probe}``.
        acts_by_site: ``{site: (n, d)}``; sites without a probe are skipped.
        labels: ``(n,)`` labels shared by all sites.

    Returns:
        ``{site: accuracy}``.

    Example:
        >>> X = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
        >>> p = LinearProbe().fit(X, [0, 0, 1, 1])
        >>> probe_accuracy({"a": p}, {"a": X, "b": X}, [0, 0, 1, 1])
        {'a': 1.0}
    """
    y = torch.as_tensor(labels)
    return {k: probes[k].score(acts_by_site[k], y) for k in acts_by_site if k in probes}


def strength_sweep(
    apply: Callable[[float], AbstractContextManager[Any]],
    metric: Callable[[], float | Mapping[str, float]],
    alphas: Sequence[float],
) -> list[dict[str, float]]:
    """Measure ``metric()`` while steering at each strength in ``alphas``.

    Args:
        apply: ``alpha -> context manager`` that steers the model (e.g.
            ``lambda a: act.apply(model, a)`` or ``lambda a: steer(model, Intervention(...,
            alpha=a))``); ``alpha = 0`` should be the unsteered model.
        metric: measures the model (a number, or a mapping of named numbers).
        alphas: the strengths.

    Returns:
        One dict per strength: ``{"alpha": a, "metric": value}`` or ``{"alpha": a, **values}``.

    Raises:
        ValueError: for an empty ``alphas``.

    Example:
        >>> state = {"alpha": 0.0}
        >>> from contextlib import contextmanager
        >>> @contextmanager
        ... def fake(a):
        ...     state["alpha"] = a
        ...     yield
        ...     state["alpha"] = 0.0
        >>> strength_sweep(fake, lambda: 2 * state["alpha"], [0.0, 1.5])
        [{'alpha': 0.0, 'metric': 0.0}, {'alpha': 1.5, 'metric': 3.0}]
    """
    if len(alphas) == 0:
        raise ValueError("alphas is empty")
    rows = []
    for a in alphas:
        with apply(float(a)):
            value = metric()
        row: dict[str, float] = {"alpha": float(a)}
        if isinstance(value, Mapping):
            row.update({str(k): float(v) for k, v in value.items()})
        else:
            row["metric"] = float(value)
        rows.append(row)
    return rows


def steering_report(
    sweeps: Mapping[str, Sequence[Mapping[str, float]]],
    *,
    metric: str = "metric",
    title: str = "Steering strength sweep",
    extra: Mapping[str, Any] | None = None,
    figure_path: str | Path | None = None,
) -> str:
    """A markdown report of strength sweeps of several methods (and an optional figure).

    Args:
        sweeps: ``{method: strength_sweep(...) rows}``.
        metric: the column to tabulate and plot.
        title: heading of the report.
        extra: more ``name: value`` lines to list under the table.
        figure_path: if given, save a matplotlib plot of ``metric`` against ``alpha`` there.

    Returns:
        The markdown text.

    Raises:
        ValueError: for no sweeps or a missing metric column.
        ImportError: when a figure is asked for without matplotlib.

    Example:
        >>> rows = [{"alpha": 0.0, "rate": 0.1}, {"alpha": 1.0, "rate": 0.6}]
        >>> print(steering_report({"ACT": rows}, metric="rate", title="demo"))
        ## demo
        <BLANKLINE>
        | method | alpha=0 | alpha=1 | best |
        |---|---|---|---|
        | ACT | 0.100 | 0.600 | 0.600 (alpha=1) |
    """
    if not sweeps:
        raise ValueError("sweeps is empty")
    alphas: list[float] = []
    for rows in sweeps.values():
        for r in rows:
            if metric not in r:
                raise ValueError(f"metric {metric!r} missing from a sweep row {dict(r)}")
            if r["alpha"] not in alphas:
                alphas.append(r["alpha"])
    alphas.sort()
    lines = [f"## {title}", "", "| method | " + " | ".join(f"alpha={a:g}" for a in alphas)]
    lines[-1] += " | best |"
    lines.append("|---" * (len(alphas) + 2) + "|")
    for name, rows in sweeps.items():
        by_alpha = {r["alpha"]: r[metric] for r in rows}
        cells = [f"{by_alpha[a]:.3f}" if a in by_alpha else "-" for a in alphas]
        finite = [r for r in rows if math.isfinite(r[metric])]
        best = max(finite, key=lambda r: r[metric]) if finite else None
        best_cell = f"{best[metric]:.3f} (alpha={best['alpha']:g})" if best else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {best_cell} |")
    if extra:
        lines.append("")
        lines.extend(f"- {k}: {v}" for k, v in extra.items())
    if figure_path is not None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as err:  # pragma: no cover
            raise ImportError(
                "the figure needs matplotlib: pip install 'subspaces[report]'"
            ) from err
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name, rows in sweeps.items():
            ax.plot([r["alpha"] for r in rows], [r[metric] for r in rows], "o-", label=name)
        ax.set_xlabel("alpha")
        ax.set_ylabel(metric)
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(figure_path, dpi=120)
        plt.close(fig)
    return "\n".join(lines)
