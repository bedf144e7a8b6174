"""P01: G-ACT steers code generation towards a target language; probes refined online help.

Claim (Sharma & Raman 2025, "Steering Conceptual Bias via Transformer Latent-Subspace
Activation", arXiv 2506.18887): clustering per-prompt activation differences into a few
steering vectors and choosing among them with lightweight per-layer probes that are refined
online (G-ACT) reliably biases generation towards a target programming language, raises the
probes' classification accuracy over standard ACT (most in the early layers), and beats a
static neuron-attribution intervention.

Protocol (everything offline and in the run)
--------------------------------------------
Corpus: :func:`~subspaces.data.aligned_programs` (random small functions written statement by
statement in a Python-like and a C-like toy language). Each training program starts with a
header ``@@ name(args)``; half the headers carry a language request (`` c`` or `` py``, then the
program in that language), the other half are neutral and are followed by C (the target) with
probability 0.3 and Python otherwise, so after a neutral header the model is biased towards
Python, as the paper's models are biased towards one language. A byte-level Llama-family model
(8 blocks, width 64) is trained on the mixed stream (1000 programs fast, 3000 full; 120 steps of
8 windows / 500 steps of 16 windows of 64 bytes). The contrastive prompts are the headers with
the C request (pos) and the Python request (neg); steering is tested on neutral headers.

- ACT (:class:`~subspaces.steering.ACT`): at the last token of the contrastive prompts, per
  block output, k-means (k = 2) of the differences gives the
  steering vectors; a probe with classes {C, Python-cluster-1, Python-cluster-2} is fitted on
  these prompt activations; every block is steered, every token, ``alpha (1 - p_C) c_j*``.
- G-ACT (:class:`~subspaces.steering.GACT`): the same initial fit, then the probes are refined
  online (3 Adam steps per mini-batch of 8 programs fast / 16 full) on the activations at the
  header end and at every statement boundary of further requested programs (C-requested and
  written in C vs Python-requested and written in Python, paired statement by statement) until
  they converge (:meth:`~subspaces.steering.GACT.refine_until_stable`): after every batch each
  layer's probe is scored on 32 validation programs, a layer stops once its accuracy has not
  risen for ``PATIENCE = 2`` batches and keeps its best probe (at most 8 / 20 batches); the
  curves and stopping points are reported per layer. Only the 4 layers whose refined probes
  are most accurate on the validation programs are steered.
- Static baseline (:class:`~subspaces.steering.NeuronAttributionSteering`, the paper's
  logit-lens score): the 4 MLP units whose output weights, decoded by the unembedding, most
  favour the first byte of the C signature (``i`` of ``int``), boosted by ``alpha`` typical
  activations at every position.

Measurements: per-layer probe accuracy of ACT and G-ACT on statement boundaries of held-out
programs; the target-language rate of 24-byte sampled continuations (temperature 1, seeded) of
held-out headers, classified by a 3-class byte n-gram logistic regression (Python / C / other,
"other" = shuffled bytes, so that gibberish is not counted as C) trained on the corpus. Each
method's strength is chosen on validation headers (grid below) and its rate measured on test
headers.

Seeds: 3 in fast mode, 5 in the full run (``seed, seed + 1, ...``; each seed draws its own
corpus, model, clusters and samples); every comparison is paired by seed with
:func:`~subspaces.experiments._stats.paired_summary` (percentile bootstrap, 95%).

Criterion (issue 18; fixed before the first full run of this version). Means over seeds:
(a) convergence: in every seed every layer's refinement stops by patience (its held-out probe
accuracy did not rise for 2 batches) before the stream of batches ends; (b) G-ACT's test C rate
exceeds the unsteered rate by at least 0.25 and the paired 95% interval of the difference lies
above 0; (c) the paired 95% interval of G-ACT minus ACT mean per-layer held-out probe accuracy
lies above 0, and the mean over seeds of the early-layer probe gain (first third of the blocks,
rounded up: blocks 0-2 of 8) minus the gain on the other blocks is > 0; (d) G-ACT's mean test C
rate exceeds the static baseline's (paired mean difference > 0). G-ACT minus ACT in C rate is
reported, not required (the abstract claims G-ACT's gain over ACT in probe accuracy).
Criterion fixed before the first full run.

Why it changed: the first version (one seed, 4 blocks, a fixed 6 or 16 refinement batches)
could not test the claim: "early layers" was one block, the probes were refined for a number of
batches chosen in advance with no evidence that they had converged, and one seed is not a
verdict. The old criterion -- (1) G-ACT's rate >= unsteered + 0.25; (2) G-ACT's mean probe
accuracy > ACT's and its gain on the first half of the blocks >= its gain on the second half;
(3) G-ACT's rate > the static baseline's -- is still evaluated per seed and kept in
``measured["old_criterion"]``.

First full run of this version (5 seeds, 2026-12-07): FAIL on (c) only. G-ACT raises the C
rate by +0.40 [0.24, 0.56] over unsteered, beats the static baseline by +0.21 [0.13, 0.32]
and ACT's probe accuracy by +0.28 [0.26, 0.32], and every layer's refinement stopped by
patience; but the probe gain is smaller in the first third of the blocks than in the rest
(-0.15 [-0.29, -0.04]): refinement helps the later blocks most here, and on several seeds the
first blocks' held-out accuracy fell on the first batches, so their initial probe was kept.

Development note: a first version took the contrastive pairs at the end of the signature line
written in each language and used the gradient x activation baseline; nothing (not even a plain
mean difference) moved the choice of language after a neutral header, because the state after a
written line does not carry the *request* for a language. The hinted headers (the analogue of
the paper's prompts asking for a language) and the paper's own logit-lens baseline (stronger
here than gradient x activation) replaced them; the criterion was not changed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from ..data.text import ByteTokenizer, aligned_programs
from ..steering import collect_activations, find_sites
from ..steering.act import ACT, GACT
from ..steering.attribution import NeuronAttributionSteering
from ..steering.probes import LinearProbe
from ._common import single_thread
from ._stats import paired_summary, seed_summary
from .registry import ExperimentResult, register

TARGET_SHARE = 0.3
HINT_SHARE = 0.5
N_BUCKETS = 1024
CLASSES = ("python", "c", "other")
N_BLOCKS = 8
PATIENCE = 2


def _header(prog: list[tuple[str, str]], hint: str = "") -> str:
    """``@@ name(args)`` plus an optional language hint (``" c"`` or ``" py"``) and a newline."""
    sig = prog[0][0]  # "def name(args):\n"
    return "@@ " + sig[4:].rstrip().rstrip(":") + hint + "\n"


def _text(prog: list[tuple[str, str]], lang: int, upto: int | None = None, hint: str = "") -> str:
    chunks = prog if upto is None else prog[:upto]
    return _header(prog, hint) + "".join(c[lang] for c in chunks)


HINTS = (" py", " c")


def _ngram_features(texts: list[str]) -> Tensor:
    """Hashed byte 1-3-gram frequencies ``(n, N_BUCKETS)`` (deterministic hash)."""
    X = torch.zeros(len(texts), N_BUCKETS, dtype=torch.float64)
    for i, text in enumerate(texts):
        b = list(text.encode("utf-8", errors="replace"))
        for n in (1, 2, 3):
            for j in range(len(b) - n + 1):
                h = n
                for v in b[j : j + n]:
                    h = (h * 257 + v) % 1_000_003
                X[i, h % N_BUCKETS] += 1.0
        X[i] /= max(1.0, float(len(b)))
    return X


def _language_classifier(
    programs: list[list[tuple[str, str]]], g: torch.Generator
) -> tuple[LinearProbe, float]:
    """3-class byte n-gram classifier (python / c / other) and its held-out accuracy."""
    texts: list[str] = []
    labels: list[int] = []
    for prog in programs:
        for lang in (0, 1):
            body = "".join(c[lang] for c in prog)
            start = int(torch.randint(max(1, len(body) - 32), (1,), generator=g))
            window = body[start : start + 32]
            texts.append(window)
            labels.append(lang)
            perm = torch.randperm(len(window), generator=g).tolist()
            texts.append("".join(window[p] for p in perm))  # same bytes, no language
            labels.append(2)
    X, y = _ngram_features(texts), torch.tensor(labels)
    n_test = len(texts) // 5
    clf = LinearProbe(1e-4).fit(X[n_test:], y[n_test:])
    return clf, clf.score(X[:n_test], y[:n_test])


def _boundary_mask(prog: list[tuple[str, str]], lang: int, length: int) -> Tensor:
    """Bool mask over the tokens of a hinted program: the header end and every chunk end."""
    mask = torch.zeros(length, dtype=torch.bool)
    pos = len(_header(prog, HINTS[lang]).encode()) - 1
    mask[pos] = True
    for chunk in prog:
        pos += len(chunk[lang].encode())
        mask[pos] = True
    return mask


def _boundary_acts(
    model: torch.nn.Module, programs: list[list[tuple[str, str]]], sites: list[Any]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Paired activations at every boundary of hinted programs: (C rows, Python rows)."""
    tok = ByteTokenizer()
    out = []
    for lang in (1, 0):
        ids = [tok.encode(_text(p, lang, hint=HINTS[lang])) for p in programs]
        width = max(int(t.numel()) for t in ids)
        mask = torch.stack(
            [
                torch.nn.functional.pad(
                    _boundary_mask(p, lang, int(t.numel())), (0, width - t.numel())
                )
                for p, t in zip(programs, ids, strict=True)
            ]
        )
        out.append(
            collect_activations(model, ids, sites, token=mask, batch_size=32, pad_token_id=256)
        )
    return out[0], out[1]


def _generate(model: torch.nn.Module, prompts: list[str], new_tokens: int, seed: int) -> list[str]:
    tok = ByteTokenizer()
    ids, mask = tok.pad([tok.encode(p) for p in prompts], side="left")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        out = model.generate(  # type: ignore[operator]
            input_ids=ids,
            attention_mask=mask.long(),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=True,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
            pad_token_id=tok.pad_id,
        )
    return [tok.decode(row[ids.shape[1] :]) for row in out]


def _rate(clf: LinearProbe, texts: list[str]) -> dict[str, float]:
    pred = clf.predict(_ngram_features(texts))
    n = len(texts)
    return {name: float((pred == i).sum()) / n for i, name in enumerate(CLASSES)}


@register(
    "P01",
    title="G-ACT: probe-selected clustered steering vectors bias code generation to a language",
    paper="Sharma & Raman 2025, Steering Conceptual Bias via Transformer Latent-Subspace "
    "Activation (arXiv:2506.18887)",
    claim=(
        "Per-layer probes refined online that choose among clustered steering vectors (G-ACT) "
        "raise the rate of the target programming language in generated code, have higher "
        "probe accuracy than standard ACT (most in the early layers) and beat a static "
        "neuron-attribution intervention"
    ),
    criterion=(
        "8-block byte-level model trained in the run on a Python-like/C-like toy corpus (C share "
        "0.3), fast 3 / full 5 seeds, paired by seed: (a) every layer's online probe refinement "
        f"stops by patience ({PATIENCE} batches without a held-out rise) in every seed; (b) mean "
        "G-ACT test C rate - unsteered >= 0.25 with the paired 95% interval above 0; (c) the "
        "paired interval of G-ACT - ACT mean per-layer held-out probe accuracy above 0 and the "
        "mean early-third-minus-rest probe gain > 0; (d) mean G-ACT - static neuron-attribution "
        "test C rate > 0"
    ),
    slow=True,
)
def run(fast: bool, seed: int) -> ExperimentResult:
    """Train the toy model, fit ACT / G-ACT / the static baseline and measure them, per seed.

    Args:
        fast: 3 seeds, 120 training steps of 8 windows, 16 validation / 24 test headers, at
            most 8 refinement batches of 8 programs, two strengths per method; else 5 seeds,
            500 steps of 16 windows, 48 / 96 headers, at most 20 batches of 16 programs.
        seed: base seed (the runs use ``seed + 0, 1, ...``): corpus, model, clustering,
            sampling.

    Returns:
        Per-seed values with means and bootstrap intervals, per-layer refinement curves and
        stopping points, the old criterion's result, and the verdict.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    seeds = [seed + i for i in range(3 if fast else 5)]
    with single_thread():
        runs = [_run_seed(fast, s) for s in seeds]
    rate = {m: [r["test"][m]["c"] for r in runs] for m in ("unsteered", "act", "gact", "static")}
    probe = {m: [r["mean_probe_accuracy"][m] for r in runs] for m in ("act", "gact")}
    early_minus_late = [r["early_minus_late_gain"] for r in runs]
    converged = all(all(h["converged"] for h in r["refinement"].values()) for r in runs)
    m: dict[str, Any] = {
        "seeds": seeds,
        "gact_c_rate": seed_summary(rate["gact"]),
        "gact_minus_unsteered_c_rate": paired_summary(rate["gact"], rate["unsteered"]),
        "gact_minus_act_c_rate": paired_summary(rate["gact"], rate["act"]),
        "gact_minus_static_c_rate": paired_summary(rate["gact"], rate["static"]),
        "gact_minus_act_probe_accuracy": paired_summary(probe["gact"], probe["act"]),
        "early_minus_late_probe_gain": seed_summary(early_minus_late),
        "c_rate_per_seed": rate,
        "all_layers_converged": converged,
        "runs": runs,
    }
    criteria = {
        "converged": converged,
        "raise": m["gact_minus_unsteered_c_rate"]["mean"] >= 0.25
        and m["gact_minus_unsteered_c_rate"]["ci95"][0] > 0.0,
        "probe_accuracy": m["gact_minus_act_probe_accuracy"]["ci95"][0] > 0.0
        and m["early_minus_late_probe_gain"]["mean"] > 0.0,
        "beats_static": m["gact_minus_static_c_rate"]["mean"] > 0.0,
    }
    old = [r["old_criterion"] for r in runs]
    m["old_criterion"] = {"per_seed": old, "all_seeds_pass": all(o["passed"] for o in old)}
    m["criteria"] = criteria
    m["seconds"] = time.perf_counter() - start
    m["cpu_seconds"] = time.process_time() - cpu_start
    passed = bool(all(criteria.values()))
    stops = [[h["best_batch"] for h in r["refinement"].values()] for r in runs]
    summary = (
        f"{len(seeds)} seeds; C rate unsteered {_mean(rate['unsteered']):.2f}, ACT "
        f"{_mean(rate['act']):.2f}, G-ACT {_mean(rate['gact']):.2f}, static "
        f"{_mean(rate['static']):.2f}; mean probe accuracy ACT {_mean(probe['act']):.3f} vs "
        f"G-ACT {_mean(probe['gact']):.3f}; early-third-minus-rest gain "
        f"{_mean(early_minus_late):+.3f}; refinement best batch per layer {stops} "
        f"(all converged: {converged}); failed: "
        f"{[k for k, v in criteria.items() if not v] or 'none'}; old criterion passes on "
        f"{sum(o['passed'] for o in old)}/{len(old)} seeds"
    )
    headline = (
        "gact_minus_unsteered_c_rate",
        "gact_minus_act_probe_accuracy",
        "early_minus_late_probe_gain",
        "gact_minus_static_c_rate",
    )
    return ExperimentResult(measured=m, passed=passed, summary=summary, headline=headline)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _refine_stream(
    model: torch.nn.Module, programs: list[list[tuple[str, str]]], sites: list[Any], size: int
) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]]:
    """Lazily computed refinement batches of ``size`` programs (boundary activations)."""
    for b in range(0, len(programs) - size + 1, size):
        yield _boundary_acts(model, programs[b : b + size], sites)


def _run_seed(fast: bool, seed: int) -> dict[str, Any]:
    from ..testing.tiny_lm import tiny_causal_lm, train_causal_lm

    start = time.process_time()
    steps, batch, n_val, n_test = (120, 8, 16, 24) if fast else (500, 16, 48, 96)
    n_fit, max_batches, refine_batch = 48, (8 if fast else 20), (8 if fast else 16)
    new_tokens = 24
    g = torch.Generator().manual_seed(seed)
    n_held = 248 + n_val + n_test  # classifier 200, probe evaluation 48, headers
    programs = aligned_programs((1000 if fast else 3000) + n_held, seed=seed)
    n_lm = len(programs) - n_held
    lm_programs, held = programs[:n_lm], programs[n_lm:]
    # mixed training stream: neutral header, then the program in C (0.3) or Python (0.7)
    texts = []
    for p in lm_programs:
        r = float(torch.rand(1, generator=g))
        if r < HINT_SHARE:  # hinted: the hint names the language
            lang = int(torch.rand(1, generator=g) < 0.5)
            texts.append(_text(p, lang, hint=HINTS[lang]))
        else:  # neutral header: C with probability TARGET_SHARE
            texts.append(_text(p, int(torch.rand(1, generator=g) < TARGET_SHARE)))
    tok = ByteTokenizer()
    model = tiny_causal_lm(
        "llama",
        vocab_size=tok.vocab_size,
        hidden=64,
        layers=N_BLOCKS,
        heads=4,
        seed=seed,
        pad_token_id=tok.pad_id,
        attn_implementation="sdpa",
    )
    losses = train_causal_lm(
        model,
        tok.encode("\n".join(texts)),
        steps=steps,
        batch_size=batch,
        seq_len=64,
        lr=3e-3,
        seed=seed,
        warmup=20,
    )
    model.eval()
    clf, clf_acc = _language_classifier(held[:200], g)

    sites = find_sites(model, kind="block")
    keys = [s.key for s in sites]
    fit_progs = lm_programs[:n_fit]
    refine_progs = lm_programs[n_fit : n_fit + max_batches * refine_batch]
    select_progs = lm_programs[n_fit + max_batches * refine_batch :][:32]
    eval_progs = held[200:248]
    val_headers = [_header(p) for p in held[248 : 248 + n_val]]
    test_headers = [_header(p) for p in held[248 + n_val : 248 + n_val + n_test]]

    pos_prompts = [tok.encode(_header(p, HINTS[1])) for p in fit_progs]
    neg_prompts = [tok.encode(_header(p, HINTS[0])) for p in fit_progs]
    kmeans_seed = seed + 7
    act = ACT(2, sites=sites, generator=torch.Generator().manual_seed(kmeans_seed))
    act.fit(model, pos_prompts, neg_prompts, pad_token_id=tok.pad_id or 0)
    # G-ACT's initial fit is ACT's (same prompts, same k-means seed): copy it, do not redo it
    gact = GACT.from_act(act, refine_steps=3)
    sel_pos, sel_neg = _boundary_acts(model, select_progs, sites)
    history = gact.refine_until_stable(
        _refine_stream(model, refine_progs, sites, refine_batch),
        sel_pos,
        sel_neg,
        patience=PATIENCE,
    )
    steered = gact.select_layers(sel_pos, sel_neg, n_layers=len(sites) // 2)
    ev_pos, ev_neg = _boundary_acts(model, eval_progs, sites)
    acc_act = act.probe_accuracy(ev_pos, ev_neg)
    acc_gact = gact.probe_accuracy(ev_pos, ev_neg)
    gain = [acc_gact[k] - acc_act[k] for k in keys]
    early = -(-len(keys) // 3)  # the first third of the blocks, rounded up
    early_minus_late = _mean(gain[:early]) - _mean(gain[early:])

    static = NeuronAttributionSteering(n_neurons=4, method="logit_lens").fit(
        model, [tok.encode(_header(p)) for p in fit_progs], target_ids=[ord("i")]
    )
    strengths = {"act": [0.25, 0.5, 1.0, 2.0], "gact": [0.25, 0.5, 1.0, 2.0]}
    strengths["static"] = [4.0, 16.0, 64.0, 256.0]
    # fast mode: every other strength (0.5, 2 and 16, 256)
    grids = {name: grid[1::2] if fast else grid for name, grid in strengths.items()}
    steerers: dict[str, Any] = {
        "act": lambda a: act.apply(model, a),
        "gact": lambda a: gact.apply(model, a),
        "static": lambda a: static.apply(model, a),
    }
    test: dict[str, dict[str, float]] = {}
    base_val = _rate(clf, _generate(model, val_headers, new_tokens, seed + 100))
    test["unsteered"] = _rate(clf, _generate(model, test_headers, new_tokens, seed + 200))
    sweeps: dict[str, list[dict[str, float]]] = {}
    for name, grid in grids.items():
        rows = [{"alpha": 0.0, **base_val}]
        for a in grid:
            with steerers[name](a):
                texts = _generate(model, val_headers, new_tokens, seed + 100)
            rows.append({"alpha": a, **_rate(clf, texts)})
        sweeps[name] = rows
        best = max(rows[1:], key=lambda r: r["c"])
        with steerers[name](best["alpha"]):
            texts = _generate(model, test_headers, new_tokens, seed + 200)
        test[name] = {"alpha": best["alpha"], **_rate(clf, texts)}

    mean_act, mean_gact = _mean(list(acc_act.values())), _mean(list(acc_gact.values()))
    half = len(keys) // 2
    old = {  # the criterion before issue 18: one seed, first half of the blocks vs second half
        "raise": test["gact"]["c"] - test["unsteered"]["c"] >= 0.25,
        "probe_accuracy": mean_gact > mean_act and _mean(gain[:half]) >= _mean(gain[half:]),
        "beats_static": test["gact"]["c"] > test["static"]["c"],
    }
    return {
        "seed": seed,
        "train_steps": steps,
        "train_loss_first_last": [losses[0], _mean(losses[-20:])],
        "classifier_heldout_accuracy": clf_acc,
        "layers": [s.layer for s in sites],
        "refinement": {str(s.layer): history[s.key] for s in sites},
        "probe_accuracy_act": [acc_act[k] for k in keys],
        "probe_accuracy_gact": [acc_gact[k] for k in keys],
        "probe_accuracy_gain": gain,
        "mean_probe_accuracy": {"act": mean_act, "gact": mean_gact},
        "early_minus_late_gain": early_minus_late,
        "gact_steered_layers": [act._sites[k].layer for k in steered],
        "val_sweeps": sweeps,
        "test": test,
        "old_criterion": {**old, "passed": all(old.values())},
        "cpu_seconds": time.process_time() - start,
    }
