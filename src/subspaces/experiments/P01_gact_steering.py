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
(4 blocks, width 64) is trained on the mixed stream (1600 programs fast, 3600 full; 300 / 1500
steps of 16 windows of 64 bytes). The contrastive prompts are the headers with the C request
(pos) and the Python request (neg); steering is tested on neutral headers.

- ACT (:class:`~subspaces.steering.ACT`): at the last token of the contrastive prompts, per
  block output, k-means (k = 2) of the differences gives the
  steering vectors; a probe with classes {C, Python-cluster-1, Python-cluster-2} is fitted on
  these prompt activations; every block is steered, every token, ``alpha (1 - p_C) c_j*``.
- G-ACT (:class:`~subspaces.steering.GACT`): the same initial fit, then the probes are refined
  online (3 Adam steps per mini-batch of 16 programs) on the activations at the header end and
  at every statement boundary of further requested programs (C-requested and written in C vs
  Python-requested and written in Python, paired statement by statement), and only the 2
  layers whose refined probes are most accurate on validation programs are steered.
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

Criterion (set before the first run, unchanged since): (1) G-ACT's test target rate exceeds
the unsteered rate by at least 0.25; (2) G-ACT's mean probe accuracy over layers exceeds ACT's
and its gain over ACT on the first half of the layers is at least its gain on the second half;
(3) G-ACT's test
target rate exceeds the static baseline's.

Development note: a first version took the contrastive pairs at the end of the signature line
written in each language and used the gradient x activation baseline; nothing (not even a plain
mean difference) moved the choice of language after a neutral header, because the state after a
written line does not carry the *request* for a language. The hinted headers (the analogue of
the paper's prompts asking for a language) and the paper's own logit-lens baseline (stronger
here than gradient x activation) replaced them; the criterion was not changed.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from ..data.text import ByteTokenizer, aligned_programs
from ..steering import collect_activations, find_sites
from ..steering.act import ACT, GACT
from ..steering.attribution import NeuronAttributionSteering
from ..steering.probes import LinearProbe
from ._common import single_thread
from .registry import ExperimentResult, register

TARGET_SHARE = 0.3
HINT_SHARE = 0.5
N_BUCKETS = 1024
CLASSES = ("python", "c", "other")


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
        "byte-level model trained in the run on a Python-like/C-like toy corpus (C share 0.3); "
        "(1) G-ACT's test C rate of sampled continuations of neutral headers (3-class byte "
        "n-gram classifier) >= unsteered + 0.25; (2) G-ACT's mean per-layer probe accuracy on "
        "held-out statement boundaries > ACT's, with the gain on the first half of the layers "
        ">= the gain on the second half; (3) G-ACT's test C rate > the static neuron-"
        "attribution baseline's (strengths chosen on validation headers)"
    ),
    slow=True,
)
def run(fast: bool, seed: int) -> ExperimentResult:
    """Train the toy model, fit ACT / G-ACT / the static baseline and measure them.

    Args:
        fast: 300 training steps, 32 validation and 48 test headers, 6 refinement batches;
            else 1500 steps, 64 and 128 headers, 16 refinement batches.
        seed: seeds the corpus, the model, the clustering and the sampling.

    Returns:
        Training loss, classifier accuracy, per-layer probe accuracies of ACT and G-ACT, the
        steered layers, per-method validation sweeps and test rates, and the verdict.
    """
    with single_thread():
        return _run(fast, seed)


def _run(fast: bool, seed: int) -> ExperimentResult:
    from ..testing.tiny_lm import tiny_causal_lm, train_causal_lm

    start = time.perf_counter()
    steps, n_val, n_test = (300, 32, 48) if fast else (1500, 64, 128)
    n_fit, n_refine_batches, refine_batch = 48, (6 if fast else 16), 16
    new_tokens = 24
    g = torch.Generator().manual_seed(seed)
    n_held = 248 + n_val + n_test  # classifier 200, probe evaluation 48, headers
    programs = aligned_programs((1600 if fast else 3600) + n_held, seed=seed)
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
    stream = "\n".join(texts)
    tok = ByteTokenizer()
    model = tiny_causal_lm(
        "llama",
        vocab_size=tok.vocab_size,
        hidden=64,
        layers=4,
        heads=4,
        seed=seed,
        pad_token_id=tok.pad_id,
        attn_implementation="sdpa",
    )
    losses = train_causal_lm(
        model,
        tok.encode(stream),
        steps=steps,
        batch_size=16,
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
    refine_progs = lm_programs[n_fit : n_fit + n_refine_batches * refine_batch]
    select_progs = lm_programs[n_fit + n_refine_batches * refine_batch :][:32]
    eval_progs = held[200:248]
    val_headers = [_header(p) for p in held[248 : 248 + n_val]]
    test_headers = [_header(p) for p in held[248 + n_val : 248 + n_val + n_test]]

    pos_prompts = [tok.encode(_header(p, HINTS[1])) for p in fit_progs]
    neg_prompts = [tok.encode(_header(p, HINTS[0])) for p in fit_progs]
    kmeans_seed = seed + 7
    act = ACT(2, sites=sites, generator=torch.Generator().manual_seed(kmeans_seed))
    act.fit(model, pos_prompts, neg_prompts, pad_token_id=tok.pad_id or 0)
    gact = GACT(
        2, sites=sites, refine_steps=3, generator=torch.Generator().manual_seed(kmeans_seed)
    )
    gact.fit(model, pos_prompts, neg_prompts, pad_token_id=tok.pad_id or 0)
    for b in range(n_refine_batches):
        batch = refine_progs[b * refine_batch : (b + 1) * refine_batch]
        pos, neg = _boundary_acts(model, batch, sites)
        gact.refine(pos, neg)
    sel_pos, sel_neg = _boundary_acts(model, select_progs, sites)
    steered = gact.select_layers(sel_pos, sel_neg, n_layers=len(sites) // 2)
    ev_pos, ev_neg = _boundary_acts(model, eval_progs, sites)
    acc_act = act.probe_accuracy(ev_pos, ev_neg)
    acc_gact = gact.probe_accuracy(ev_pos, ev_neg)
    gain = [acc_gact[k] - acc_act[k] for k in keys]
    half = len(keys) // 2
    early_gain = sum(gain[:half]) / half
    late_gain = sum(gain[half:]) / (len(keys) - half)

    static = NeuronAttributionSteering(n_neurons=4, method="logit_lens").fit(
        model, [tok.encode(_header(p)) for p in fit_progs], target_ids=[ord("i")]
    )
    grids = {
        "act": [0.25, 0.5, 1.0, 2.0],
        "gact": [0.25, 0.5, 1.0, 2.0],
        "static": [4.0, 16.0, 64.0, 256.0],
    }
    steerers: dict[str, Any] = {
        "act": lambda a: act.apply(model, a),
        "gact": lambda a: gact.apply(model, a),
        "static": lambda a: static.apply(model, a),
    }
    sweeps: dict[str, list[dict[str, float]]] = {}
    test: dict[str, dict[str, float]] = {}
    samples: dict[str, list[str]] = {}
    base_val = _rate(clf, _generate(model, val_headers, new_tokens, seed + 100))
    base_test_texts = _generate(model, test_headers, new_tokens, seed + 200)
    test["unsteered"] = _rate(clf, base_test_texts)
    samples["unsteered"] = base_test_texts[:3]
    for name, grid in grids.items():
        rows = [{"alpha": 0.0, **base_val}]
        for a in grid:
            with steerers[name](a):
                rows.append(
                    {
                        "alpha": a,
                        **_rate(clf, _generate(model, val_headers, new_tokens, seed + 100)),
                    }
                )
        sweeps[name] = rows
        best = max(rows[1:], key=lambda r: r["c"])
        with steerers[name](best["alpha"]):
            texts = _generate(model, test_headers, new_tokens, seed + 200)
        test[name] = {"alpha": best["alpha"], **_rate(clf, texts)}
        samples[name] = texts[:3]

    c1 = test["gact"]["c"] - test["unsteered"]["c"] >= 0.25
    mean_act = sum(acc_act.values()) / len(keys)
    mean_gact = sum(acc_gact.values()) / len(keys)
    c2 = mean_gact > mean_act and early_gain >= late_gain
    c3 = test["gact"]["c"] > test["static"]["c"]
    passed = bool(c1 and c2 and c3)
    measured: dict[str, Any] = {
        "train_steps": steps,
        "train_loss_first_last": [losses[0], sum(losses[-20:]) / 20],
        "classifier_heldout_accuracy": clf_acc,
        "layers": [s.layer for s in sites],
        "probe_accuracy_act": [acc_act[k] for k in keys],
        "probe_accuracy_gact": [acc_gact[k] for k in keys],
        "probe_accuracy_gain": gain,
        "mean_probe_accuracy": {"act": mean_act, "gact": mean_gact},
        "gain_first_half_second_half": [early_gain, late_gain],
        "gact_steered_layers": [act._sites[k].layer for k in steered],
        "val_sweeps": sweeps,
        "test": test,
        "samples": samples,
        "criteria": {"raise": c1, "probe_accuracy": c2, "beats_static": c3},
        "seconds": time.perf_counter() - start,
    }
    summary = (
        f"C rate on test headers: unsteered {test['unsteered']['c']:.2f}, ACT "
        f"{test['act']['c']:.2f} (alpha {test['act']['alpha']:g}), G-ACT {test['gact']['c']:.2f} "
        f"(alpha {test['gact']['alpha']:g}, layers {measured['gact_steered_layers']}), static "
        f"neurons {test['static']['c']:.2f} (alpha {test['static']['alpha']:g}); probe accuracy "
        f"ACT {[round(acc_act[k], 2) for k in keys]} vs G-ACT "
        f"{[round(acc_gact[k], 2) for k in keys]} (gain first/second half "
        f"{early_gain:+.2f}/{late_gain:+.2f}); classifier acc {clf_acc:.2f}"
    )
    return ExperimentResult(measured=measured, passed=passed, summary=summary)
