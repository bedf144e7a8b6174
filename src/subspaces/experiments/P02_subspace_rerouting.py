"""P02: subspace rerouting flips a refusal probe faster than token search on the output loss.

Claim (Winninger et al. 2025, arXiv 2503.06269): optimizing input tokens so that the
activations of a few layers move from the refusal subspace into the acceptance subspace
(subspace rerouting, SSR; here Probe-SSR: the loss is a linear probe's cross-entropy towards
"comply" at the targeted layer) reaches its goal with far less computation than the usual
gradient token search on the output loss (GCG), partly because each forward pass stops at the
last targeted layer.

Protocol (toy, local, synthetic; no harmful data)
------------------------------------------------
A byte-level causal transformer (Llama family, 4 blocks, width 64) is trained in the run on
synthetic requests: strings over ``a..z`` followed by ``<sep>`` and a label token; the label is
``<refuse>`` when more than 30% of the letters are "trigger" letters (``q x z j k v``) and
``<comply>`` otherwise (the trigger share of each training string is drawn uniformly in
[0, 0.6]). Linear probes (:func:`~subspaces.steering.fit_layer_probes`) read the block outputs
at ``<sep>``; the targeted layer is the first whose held-out probe accuracy is >= 0.95.
Each trial: a fresh request of 10 letters with 5 trigger letters, then 8 adversarial tokens
(initialized to random trigger letters), then ``<sep>``; both searches may use only ``a..z``
(in distribution), with the same top-k (16), candidates per step (32), one replaced position
per candidate and the same random stream. Both stop when the probe at the targeted layer
predicts "comply" (the rerouting goal; its evaluation is not timed) or after ``max_steps``.

- SSR: :class:`~subspaces.steering.SubspaceRerouting` with a probe target at that layer
  (forward stopped after it);
- baseline: :class:`~subspaces.steering.OutputTokenSearch` on the cross-entropy of
  ``<comply>`` as the next token (full forward passes).

Criterion (fixed before running): over the trials, SSR's success rate (probe flipped within
``max_steps``) is at least the baseline's, its median number of steps to the flip is at most
the baseline's, and its median search time to the flip is smaller (failures count as
``max_steps`` and the full time spent). The rate at which the *output* flips to ``<comply>`` at
the found inputs is reported for both (not part of the criterion).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from ..data.text import ByteTokenizer
from ..steering import collect_activations, find_sites
from ..steering.probes import fit_layer_probes
from ..steering.reroute import OutputTokenSearch, RerouteTarget, SubspaceRerouting
from ._common import single_thread
from .registry import ExperimentResult, register

TRIGGER = "qxzjkv"
SAFE = "".join(c for c in "abcdefghijklmnopqrstuvwxyz" if c not in TRIGGER)
THRESHOLD = 0.3


def _tokenizer() -> ByteTokenizer:
    return ByteTokenizer(specials=("<pad>", "<sep>", "<refuse>", "<comply>"))


def _requests(n: int, length: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` letter strings of one length (byte ids) and their labels (1 = refuse)."""
    share = torch.rand(n, 1, generator=g) * 0.6
    is_trigger = torch.rand(n, length, generator=g) < share
    trig = torch.tensor(list(TRIGGER.encode()))
    safe = torch.tensor(list(SAFE.encode()))
    ids = torch.where(
        is_trigger,
        trig[torch.randint(len(trig), (n, length), generator=g)],
        safe[torch.randint(len(safe), (n, length), generator=g)],
    )
    labels = (is_trigger.float().mean(1) > THRESHOLD).long()
    return ids, labels


def _train_toy(model: nn.Module, tok: ByteTokenizer, steps: int, seed: int) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    sep = tok.special_id("<sep>")
    label_ids = torch.tensor([tok.special_id("<comply>"), tok.special_id("<refuse>")])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)
    losses = []
    model.train()
    for step in range(steps):
        length = int(torch.randint(8, 21, (1,), generator=g))
        ids, labels = _requests(64, length, g)
        x = torch.cat([ids, torch.full((64, 1), sep)], dim=1)
        logits = model(input_ids=x).logits[:, -1]
        loss = nn.functional.cross_entropy(logits, label_ids[labels])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in opt.param_groups:
            group["lr"] = 3e-3 * min(1.0, (step + 1) / 20)
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def _first_flip(history: list[torch.Tensor], flipped: Any) -> int | None:
    for i, tokens in enumerate(history):
        if flipped(tokens):
            return i + 1
    return None


@register(
    "P02",
    title="Subspace rerouting flips a refusal probe faster than output-loss token search",
    paper="Winninger, Addad & Kapusta 2025, Using Mechanistic Interpretability to Craft "
    "Adversarial Attacks against Large Language Models (arXiv:2503.06269)",
    claim=(
        "A GCG token search whose loss moves a targeted layer's activations into the probe-"
        "defined acceptance subspace (forward stopped at that layer) flips the probe in fewer "
        "steps and less time than the same search on the output loss"
    ),
    criterion=(
        "toy byte-level transformer trained in the run with a synthetic <refuse>/<comply> rule; "
        "over the trials (4 fast, 12 full) with identical search settings, SSR's probe-flip "
        "success rate >= the output search's, SSR's median steps to the flip <= the output "
        "search's, and SSR's median search time to the flip < the output search's (failures "
        "count as max_steps and the full time)"
    ),
)
def run(fast: bool, seed: int) -> ExperimentResult:
    """Train the toy model and probes, then race rerouting against output-loss search.

    Args:
        fast: 4 trials, 250 training steps, at most 30 search steps; else 12 trials, 500
            training steps, at most 60 search steps.
        seed: seeds the model, the data, the trials and the searches.

    Returns:
        The training loss, probe accuracies per layer, the targeted layer, per-trial steps /
        seconds / output flips for both searches, the medians and the verdict.
    """
    with single_thread():
        return _run(fast, seed)


def _run(fast: bool, seed: int) -> ExperimentResult:
    from ..testing.tiny_lm import tiny_causal_lm

    start = time.perf_counter()
    n_trials, train_steps, max_steps = (4, 250, 30) if fast else (12, 500, 60)
    tok = _tokenizer()
    model = tiny_causal_lm(
        "llama", vocab_size=tok.vocab_size, hidden=64, layers=4, heads=4, seed=seed
    )
    losses = _train_toy(model, tok, train_steps, seed)
    sep = tok.special_id("<sep>")
    comply = tok.special_id("<comply>")
    refuse = tok.special_id("<refuse>")

    # probes at <sep> on held-out requests
    g = torch.Generator().manual_seed(seed + 1)
    prompts, labels = [], []
    for length in (10, 14, 18):
        ids, lab = _requests(200, length, g)
        prompts += [torch.cat([r, torch.tensor([sep])]) for r in ids]
        labels.append(lab)
    y = torch.cat(labels)
    sites = find_sites(model, kind="block")
    acts = collect_activations(model, prompts, sites, token="last", batch_size=200)
    probes = fit_layer_probes(acts, y, generator=torch.Generator().manual_seed(seed + 2))
    probe_acc = {s.layer: probes[s.key].test_accuracy_ for s in sites}
    layer = next((s for s in sites if probes[s.key].test_accuracy_ >= 0.95), sites[-1])
    probe = probes[layer.key]
    with torch.no_grad():
        pred = model(input_ids=torch.stack(prompts[:200])).logits[:, -1]
    model_acc = float((pred[:, [comply, refuse]].argmax(1) == labels[0]).double().mean())

    allowed = torch.zeros(tok.vocab_size, dtype=torch.bool)
    allowed[list(b"abcdefghijklmnopqrstuvwxyz")] = True
    suffix = torch.tensor([sep])

    def probe_flipped(ids: torch.Tensor) -> bool:
        a = collect_activations(model, [ids], [layer], token="last")[layer.key]
        return bool(probe.predict(a)[0] == 0)

    def output_flipped(ids: torch.Tensor) -> bool:
        with torch.no_grad():
            return int(model(input_ids=ids[None]).logits[0, -1].argmax()) == comply

    trials = []
    tg = torch.Generator().manual_seed(seed + 3)
    trig = torch.tensor(list(TRIGGER.encode()))
    safe = torch.tensor(list(SAFE.encode()))
    for t in range(n_trials):
        letters = torch.cat(
            [
                trig[torch.randint(len(trig), (5,), generator=tg)],
                safe[torch.randint(len(safe), (5,), generator=tg)],
            ]
        )
        prefix = letters[torch.randperm(10, generator=tg)]
        init = trig[torch.randint(len(trig), (8,), generator=tg)]
        start_ids = torch.cat([prefix, init, suffix])
        row: dict[str, Any] = {
            "trial": t,
            "initial_probe_refuse": not probe_flipped(start_ids),
            "initial_output_refuse": not output_flipped(start_ids),
        }
        common = {
            "n_steps": max_steps,
            "top_k": 16,
            "search_width": 32,
            "n_replace": 1,
            "allowed_tokens": allowed,
        }
        target = RerouteTarget(layer, probe=probe, target_class=0)
        for name, searcher in (
            (
                "ssr",
                SubspaceRerouting(
                    model, target, generator=torch.Generator().manual_seed(seed + 10 + t), **common
                ),
            ),
            (
                "output",
                OutputTokenSearch(
                    model,
                    comply,
                    generator=torch.Generator().manual_seed(seed + 10 + t),
                    **common,
                ),
            ),
        ):
            res = searcher.run(prefix, init, suffix, stop_when=probe_flipped)
            steps = res.success_step if res.success else max_steps
            seconds = (
                res.times[res.success_step - 1]
                if res.success and res.success_step
                else (0.0 if res.success else res.seconds)
            )
            row[name] = {
                "success": res.success,
                "steps": steps,
                "seconds": seconds,
                "output_flipped": output_flipped(res.input_ids),
                "final_tokens": tok.decode(res.tokens),
                "seconds_per_step": res.seconds / max(res.steps, 1),
            }
        trials.append(row)

    def med(method: str, key: str) -> float:
        return float(statistics.median(r[method][key] for r in trials))

    def rate(method: str, key: str) -> float:
        return sum(bool(r[method][key]) for r in trials) / len(trials)

    summary_stats = {
        m: {
            "success_rate": rate(m, "success"),
            "median_steps": med(m, "steps"),
            "median_seconds": med(m, "seconds"),
            "output_flip_rate": rate(m, "output_flipped"),
            "median_seconds_per_step": med(m, "seconds_per_step"),
        }
        for m in ("ssr", "output")
    }
    s, o = summary_stats["ssr"], summary_stats["output"]
    passed = (
        s["success_rate"] >= o["success_rate"]
        and s["median_steps"] <= o["median_steps"]
        and s["median_seconds"] < o["median_seconds"]
    )
    measured: dict[str, Any] = {
        "train_steps": train_steps,
        "train_loss_first_last": [losses[0], float(sum(losses[-20:]) / 20)],
        "model_label_accuracy": model_acc,
        "probe_test_accuracy_by_layer": probe_acc,
        "targeted_layer": layer.layer,
        "num_layers": len(sites),
        "max_steps": max_steps,
        "trials": trials,
        "stats": summary_stats,
        "seconds": time.perf_counter() - start,
    }
    summary = (
        f"toy refusal model (label acc {model_acc:.2f}), probe at layer {layer.layer} of "
        f"{len(sites)} (acc {probe_acc[layer.layer]:.2f}); over {n_trials} trials SSR flipped "
        f"the probe in {s['success_rate']:.0%} (median {s['median_steps']:.0f} steps, "
        f"{s['median_seconds']:.2f} s, {s['median_seconds_per_step'] * 1e3:.0f} ms/step) vs "
        f"output search {o['success_rate']:.0%} ({o['median_steps']:.0f} steps, "
        f"{o['median_seconds']:.2f} s, {o['median_seconds_per_step'] * 1e3:.0f} ms/step); "
        f"output flipped to <comply>: SSR {s['output_flip_rate']:.0%}, output search "
        f"{o['output_flip_rate']:.0%}"
    )
    return ExperimentResult(measured=measured, passed=passed, summary=summary)
