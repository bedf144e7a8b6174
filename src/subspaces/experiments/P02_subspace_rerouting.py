"""P02: subspace rerouting flips a refusal model's output faster than output-loss token search.

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
per candidate and the same random stream. Both stop at the success test (its evaluation is not
timed) or after ``max_steps``.

- SSR: :class:`~subspaces.steering.SubspaceRerouting` with a probe target at that layer
  (forward stopped after it);
- baseline: :class:`~subspaces.steering.OutputTokenSearch` on the cross-entropy of
  ``<comply>`` as the next token (full forward passes).

Criterion (changed for issue 18, fixed before the first full run). The attack's purpose is
the model's *output*; the old pass counted flips of the very probe rerouting optimizes, while the
output flipped in 0 of 12 full-run trials. Now:

- the targeted layer must carry the behaviour at the decision token: it is the first block whose
  held-out probe accuracy is >= 0.95 **and** whose activation at ``<sep>``, patched from a
  complying request into a refused one (50 held-out pairs of the same length), flips the model's
  output to ``<comply>`` in at least 90 % of the pairs (the last block if none qualifies);
- both searches stop when the model's output at ``<sep>`` is ``<comply>`` (argmax over the whole
  vocabulary), and a trial succeeds only then;
- PASS iff SSR's output-flip rate is positive and at least the output search's, and the paired
  (by trial) 95 % bootstrap interval of the mean ``log(t_SSR / t_output)`` of the search time to
  the output flip lies below 0 (failures count with the full search time).

The old criterion (probe at the first layer with accuracy >= 0.95, both searches stopped at the
probe flip; SSR's probe-flip rate >= the output search's, median steps <=, median time <) is run
on the same trials and kept in ``measured["old_criterion"]``. One trained model per run; trials
(4 fast, 12 full) are the paired units. Criterion fixed before the first full run.
"""

from __future__ import annotations

import math
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
from ._stats import paired_summary
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


@register(
    "P02",
    title="Subspace rerouting flips a refusal model's output faster than output-loss search",
    paper="Winninger, Addad & Kapusta 2025, Using Mechanistic Interpretability to Craft "
    "Adversarial Attacks against Large Language Models (arXiv:2503.06269)",
    claim=(
        "A GCG token search whose loss moves a targeted layer's activations into the probe-"
        "defined acceptance subspace (forward stopped at that layer) makes the model comply in "
        "less time than the same search on the output loss"
    ),
    criterion=(
        "toy byte-level transformer trained in the run with a synthetic <refuse>/<comply> rule; "
        "probe at the first layer with probe accuracy >= 0.95 whose <sep> activation, patched "
        "from a complying request, flips the output in >= 90% of pairs; both searches stop when "
        "the output is <comply>; over the trials (4 fast, 12 full, paired) SSR's output-flip "
        "rate > 0 and >= the output search's, and the 95% interval of mean log(t_SSR/t_output) "
        "to the output flip lies below 0 (failures count with the full time)"
    ),
)
def run(fast: bool, seed: int) -> ExperimentResult:
    """Train the toy model and probes, then race rerouting against output-loss search.

    Args:
        fast: 4 trials, 250 training steps, at most 30 search steps; else 12 trials, 500
            training steps, at most 60 search steps.
        seed: seeds the model, the data, the trials and the searches.

    Returns:
        The training loss, probe accuracies and patching flip rates per layer, the targeted
        layer, per-trial steps / seconds / output flips for both searches, the paired time
        ratios, the old criterion and the verdict.
    """
    with single_thread():
        return _run(fast, seed)


def _patch_flip_rate(
    model: nn.Module, site: Any, refused: torch.Tensor, complied: torch.Tensor, comply: int
) -> float:
    """Activation patching at the last position of one block.

    Returns:
        The share of refused requests whose output becomes ``<comply>`` when the block output at
        the last position is replaced by that of a complying request (same length, by row).
    """
    module = model.get_submodule(site.name)
    saved: list[torch.Tensor] = []

    def capture(_m: nn.Module, _i: Any, out: Any) -> None:
        saved.append((out[0] if isinstance(out, tuple) else out)[:, -1].clone())

    def patch(_m: nn.Module, _i: Any, out: Any) -> Any:
        h = out[0] if isinstance(out, tuple) else out
        h = h.clone()
        h[:, -1] = saved[0]
        return (h, *out[1:]) if isinstance(out, tuple) else h

    with torch.no_grad():
        handle = module.register_forward_hook(capture)
        try:
            model(input_ids=complied)
        finally:
            handle.remove()
        handle = module.register_forward_hook(patch)
        try:
            logits = model(input_ids=refused).logits[:, -1]
        finally:
            handle.remove()
    return float((logits.argmax(-1) == comply).double().mean())


def _race(
    model: nn.Module,
    target: RerouteTarget,
    comply: int,
    starts: list[tuple[torch.Tensor, torch.Tensor]],
    suffix: torch.Tensor,
    stop_when: Any,
    common: dict[str, Any],
    seed: int,
) -> list[dict[str, Any]]:
    """Run SSR and the output search from every start, both stopped by ``stop_when``."""
    rows = []
    for t, (prefix, init) in enumerate(starts):
        row: dict[str, Any] = {"trial": t}
        for name in ("ssr", "output"):
            g = torch.Generator().manual_seed(seed + 10 + t)
            searcher: SubspaceRerouting | OutputTokenSearch
            if name == "ssr":
                searcher = SubspaceRerouting(model, target, generator=g, **common)
            else:
                searcher = OutputTokenSearch(model, comply, generator=g, **common)
            res = searcher.run(prefix, init, suffix, stop_when=stop_when)
            step = res.success_step if res.success else None
            row[name] = {
                "success": res.success,
                "steps": step if step is not None else common["n_steps"],
                "seconds": res.times[step - 1] if step else (0.0 if res.success else res.seconds),
                "input_ids": res.input_ids,
                "seconds_per_step": res.seconds / max(res.steps, 1),
            }
        rows.append(row)
    return rows


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
    with torch.no_grad():
        pred = model(input_ids=torch.stack(prompts[:200])).logits[:, -1]
    model_acc = float((pred[:, [comply, refuse]].argmax(1) == labels[0]).double().mean())

    # activation patching at <sep>: which blocks carry the decision (held-out pairs, length 18)
    with torch.no_grad():
        held = torch.stack(prompts[400:600])
        says = model(input_ids=held).logits[:, -1].argmax(-1)
    refused, complied = held[says == refuse][:50], held[says == comply][:50]
    k = min(len(refused), len(complied))
    patch_rate = {
        s.layer: _patch_flip_rate(model, s, refused[:k], complied[:k], comply) for s in sites
    }
    carries = [s for s in sites if probe_acc[s.layer] >= 0.95 and patch_rate[s.layer] >= 0.9]
    layer = carries[0] if carries else sites[-1]
    old_layer = next((s for s in sites if probe_acc[s.layer] >= 0.95), sites[-1])

    allowed = torch.zeros(tok.vocab_size, dtype=torch.bool)
    allowed[list(b"abcdefghijklmnopqrstuvwxyz")] = True
    suffix = torch.tensor([sep])

    def probe_flipped_at(site: Any) -> Any:
        def flipped(ids: torch.Tensor) -> bool:
            a = collect_activations(model, [ids], [site], token="last")[site.key]
            return bool(probes[site.key].predict(a)[0] == 0)

        return flipped

    def output_flipped(ids: torch.Tensor) -> bool:
        with torch.no_grad():
            return int(model(input_ids=ids[None]).logits[0, -1].argmax()) == comply

    tg = torch.Generator().manual_seed(seed + 3)
    trig = torch.tensor(list(TRIGGER.encode()))
    safe = torch.tensor(list(SAFE.encode()))
    starts = []
    for _ in range(n_trials):
        letters = torch.cat(
            [
                trig[torch.randint(len(trig), (5,), generator=tg)],
                safe[torch.randint(len(safe), (5,), generator=tg)],
            ]
        )
        prefix = letters[torch.randperm(10, generator=tg)]
        init = trig[torch.randint(len(trig), (8,), generator=tg)]
        starts.append((prefix, init))
    common = {
        "n_steps": max_steps,
        "top_k": 16,
        "search_width": 32,
        "n_replace": 1,
        "allowed_tokens": allowed,
    }
    initial_refuse = [not output_flipped(torch.cat([p, i, suffix])) for p, i in starts]
    target = RerouteTarget(layer, probe=probes[layer.key], target_class=0)
    trials = _race(model, target, comply, starts, suffix, output_flipped, common, seed)
    old_target = RerouteTarget(old_layer, probe=probes[old_layer.key], target_class=0)
    old_trials = _race(
        model, old_target, comply, starts, suffix, probe_flipped_at(old_layer), common, seed
    )
    for rows in (trials, old_trials):
        for row in rows:
            for m in ("ssr", "output"):
                ids = row[m].pop("input_ids")
                row[m]["output_flipped"] = output_flipped(ids)
                row[m]["final_text"] = tok.decode(ids)

    def stats(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
        return {
            m: {
                "success_rate": sum(r[m]["success"] for r in rows) / len(rows),
                "median_steps": float(statistics.median(r[m]["steps"] for r in rows)),
                "median_seconds": float(statistics.median(r[m]["seconds"] for r in rows)),
                "output_flip_rate": sum(r[m]["output_flipped"] for r in rows) / len(rows),
                "median_seconds_per_step": float(
                    statistics.median(r[m]["seconds_per_step"] for r in rows)
                ),
            }
            for m in ("ssr", "output")
        }

    new, old = stats(trials), stats(old_trials)
    floor = 1e-6  # a success before the first step costs no search time
    log_ratio = paired_summary(
        [math.log(max(r["ssr"]["seconds"], floor)) for r in trials],
        [math.log(max(r["output"]["seconds"], floor)) for r in trials],
    )
    s, o = new["ssr"], new["output"]
    rate_ok = s["success_rate"] > 0 and s["success_rate"] >= o["success_rate"]
    faster = log_ratio["ci95"][1] < 0
    passed = rate_ok and faster
    so, oo = old["ssr"], old["output"]
    measured: dict[str, Any] = {
        "train_steps": train_steps,
        "train_loss_first_last": [losses[0], float(sum(losses[-20:]) / 20)],
        "model_label_accuracy": model_acc,
        "probe_test_accuracy_by_layer": probe_acc,
        "patch_flip_rate_by_layer": patch_rate,
        "patch_pairs": k,
        "targeted_layer": layer.layer,
        "num_layers": len(sites),
        "max_steps": max_steps,
        "initial_output_refuses": initial_refuse,
        "trials": trials,
        "stats": new,
        "log_time_ratio_ssr_over_output": log_ratio,
        "checks": {"output_flip_rate": rate_ok, "ssr_faster": faster},
        "old_criterion": {
            "targeted_layer": old_layer.layer,
            "trials": old_trials,
            "stats": old,
            "passed": so["success_rate"] >= oo["success_rate"]
            and so["median_steps"] <= oo["median_steps"]
            and so["median_seconds"] < oo["median_seconds"],
        },
        "seconds": time.perf_counter() - start,
    }
    ratio = math.exp(log_ratio["mean"])
    lo, hi = (math.exp(v) for v in log_ratio["ci95"])
    summary = (
        f"toy refusal model (label acc {model_acc:.2f}); probe at layer {layer.layer} of "
        f"{len(sites)} (acc {probe_acc[layer.layer]:.2f}, patching flips "
        f"{patch_rate[layer.layer]:.0%}); over {n_trials} trials the output flipped to <comply> "
        f"with SSR in {s['success_rate']:.0%} (median {s['median_steps']:.0f} steps, "
        f"{s['median_seconds']:.2f} s) vs output search {o['success_rate']:.0%} "
        f"({o['median_steps']:.0f} steps, {o['median_seconds']:.2f} s); time ratio SSR/output "
        f"x{ratio:.2f} [{lo:.2f}, {hi:.2f}] (old probe-flip criterion at layer "
        f"{old_layer.layer}: {'PASS' if measured['old_criterion']['passed'] else 'FAIL'}, "
        f"outputs flipped SSR {so['output_flip_rate']:.0%}, output search "
        f"{oo['output_flip_rate']:.0%})"
    )
    return ExperimentResult(
        measured=measured,
        passed=passed,
        summary=summary,
        headline=("log_time_ratio_ssr_over_output",),
    )
