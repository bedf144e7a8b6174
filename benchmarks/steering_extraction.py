"""Steering-vector extraction: ours vs steering-vectors 0.12.2 vs repeng 0.4.0 on the same inputs.

Run: ``.venv/bin/python benchmarks/steering_extraction.py`` (about 5-10 minutes on 2 shared CPU
cores, most of it starting 24 fresh interpreters). Environment overrides: ``STEER_BENCH_PAIRS``
(128), ``STEER_BENCH_REPEATS`` (3), ``STEER_BENCH_BATCH`` (32).

Model: a random-init ``LlamaForCausalLM`` (hidden 256, 6 layers, 4 heads, MLP 688, vocabulary
1,003), float32, built offline from ``LlamaConfig`` (seed 0). Tokenizer: a ``tokenizers``
``WordLevel`` vocabulary with a whitespace pre-tokenizer wrapped in ``PreTrainedTokenizerFast``
(pad ``[PAD]``, right padding) -- the minimal adapter both peers need, since their examples load
tokenizers from the hub. Prompt pairs: ``STEER_BENCH_PAIRS`` pairs of 24-96 random filler words
that share everything except one concept word (from a "positive" or a "negative" list of 10),
which sits at a random position; the vectors are read at the last token of every block.

Two scenarios, every method on the same pairs, batch size ``STEER_BENCH_BATCH``:

* ``all_layers``: vectors for all 6 blocks. Mean difference: ours (``collect_activations`` +
  ``MeanDifference``) vs steering-vectors ``train_steering_vector(..., mean_aggregator())``;
  PCA of differences: ours (``PCADifference(center=True)``) vs repeng ``read_representations(...,
  method="pca_diff")`` (scikit-learn PCA on the centred differences).
* ``one_early_layer``: the same, for block 1 only; ours stops each forward pass after that block.

Each measurement runs in a fresh interpreter (one thread) that builds the model and pairs, then
times one call and records the growth of its peak resident memory during the call
(``ru_maxrss`` after minus before; ``tracemalloc`` does not see torch's allocations); repeats are
interleaved across methods and summarized by the median. Agreement: the signed
cosine between our vector and the peer's at every layer, also for steering-vectors'
``pca_aggregator`` vs ``PCADifference(center=False)`` and repeng's ``pca_center`` vs
``PCACentered``. Two site/sign facts show up there: repeng reads its last layer from HF's
``hidden_states[-1]``, which is *after* the final norm (our ``"block"`` site of the last layer is
before it; reading our site ``model.norm`` gives repeng's vector, recorded as
``cosine_last_layer_post_norm_vs_repeng_pca_diff``); and centring the differences removes the
mean difference, so the centred-PCA direction hardly separates pos from neg (our
``sign_check_`` near 0.5, recorded) and the two sign rules -- our mean projection gap, repeng's
majority vote over pairs -- may pick opposite signs of the same axis.

Peer adapters (none change the peers' algorithms): repeng 0.4.0 annotates with ``np.float_``,
removed in NumPy 2, so the benchmark sets ``numpy.float_ = numpy.float64`` before importing it;
steering-vectors declares ``transformers<5`` and is installed with ``--no-deps`` (it runs
unchanged on transformers 5.24). Writes ``benchmarks/results/steering_extraction.json``; ratios
are peer / ours (higher: ours faster or leaner).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import importlib.metadata as md
import io
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from subspaces.steering import (
    MeanDifference,
    PCACentered,
    PCADifference,
    collect_activations,
    find_sites,
    load_vectors,
    resolve_site,
    save_vectors,
)

PAIRS = int(os.environ.get("STEER_BENCH_PAIRS", "128"))
REPEATS = int(os.environ.get("STEER_BENCH_REPEATS", "3"))
BATCH = int(os.environ.get("STEER_BENCH_BATCH", "32"))
LAYERS = 6
RESULTS = Path(__file__).resolve().parent / "results"
POSITIVE = ["joy", "love", "calm", "bright", "warm", "kind", "hope", "glad", "sweet", "brave"]
NEGATIVE = ["fear", "hate", "storm", "dark", "cold", "cruel", "doubt", "sad", "bitter", "weak"]


def build_tokenizer() -> Any:
    """A WordLevel tokenizer over the benchmark vocabulary, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(981)] + POSITIVE + NEGATIVE
    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2}
    vocab.update({w: i + 3 for i, w in enumerate(words)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]"
    )
    fast.padding_side = "right"
    return fast


def build_model(vocab_size: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        length = rng.randint(24, 96)
        filler = [f"w{rng.randrange(981)}" for _ in range(length)]
        at = rng.randrange(length)
        pos, neg = list(filler), list(filler)
        pos[at], neg[at] = rng.choice(POSITIVE), rng.choice(NEGATIVE)
        pairs.append((" ".join(pos), " ".join(neg)))
    return pairs


# ----- measurement (each timed call runs in a fresh interpreter) -------------------------------
def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(spec: dict[str, Any]) -> None:
    """Build the model and pairs, run one method once, save its vectors, print one JSON line."""
    torch.set_num_threads(1)
    setattr(np, "float_", np.float64)  # noqa: B010 - repeng 0.4.0 on NumPy 2 (see doc)
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer))
    pairs = make_pairs(PAIRS)
    fn = method_table(model, tokenizer, pairs, spec["layers"])[spec["method"]]
    gc.collect()
    base = peak_rss_mib()
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # the peers' tqdm bars
        vectors = fn()
    seconds = time.perf_counter() - start
    growth = peak_rss_mib() - base
    save_vectors(spec["out"], {str(k): v.contiguous() for k, v in vectors.items()})
    print(json.dumps({"seconds": seconds, "peak_rss_growth_mib": growth}))


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----- the methods ------------------------------------------------------------------------------
def ours(
    model, tokenizer, pairs, layers, estimator, *, sites=None, info=None
) -> dict[int, torch.Tensor]:
    """Tokenize in batches, collect last-token block outputs, fit one direction per layer."""
    texts = [s for pair in pairs for s in pair]  # pos, neg interleaved like repeng
    batches = (
        dict(tokenizer(texts[i : i + BATCH], padding=True, return_tensors="pt"))
        for i in range(0, len(texts), BATCH)
    )
    sites = find_sites(model, "block", layers) if sites is None else sites
    acts = collect_activations(model, batches, sites, token="last")
    out = {}
    for layer, site in zip(layers, sites, strict=True):
        a = acts[site.key]
        fitted = estimator().fit(a[0::2], a[1::2])
        out[layer] = fitted.vector() if isinstance(fitted, MeanDifference) else fitted.direction_
        if info is not None:
            info[str(layer)] = fitted.sign_check_
    return out


def steering_vectors_run(model, tokenizer, pairs, layers, aggregator) -> dict[int, torch.Tensor]:
    from steering_vectors import train_steering_vector

    sv = train_steering_vector(
        model, tokenizer, pairs, layers=layers, layer_type="decoder_block",
        aggregator=aggregator, batch_size=BATCH, read_token_index=-1,
    )  # fmt: skip
    return {int(k): v.detach().float() for k, v in sv.layer_activations.items()}


def repeng_run(model, tokenizer, pairs, layers, method) -> dict[int, torch.Tensor]:
    from repeng import DatasetEntry
    from repeng.extract import read_representations

    entries = [DatasetEntry(positive=p, negative=n) for p, n in pairs]
    dirs = read_representations(
        model, tokenizer, entries, hidden_layers=layers, batch_size=BATCH, method=method
    )
    return {int(k): torch.as_tensor(v).float() for k, v in dirs.items()}


def method_table(model, tokenizer, pairs, layers) -> dict[str, Callable[[], Any]]:
    from steering_vectors import mean_aggregator

    return {
        "ours_mean_difference": lambda: ours(model, tokenizer, pairs, layers, MeanDifference),
        "steering_vectors_mean": lambda: steering_vectors_run(
            model, tokenizer, pairs, layers, mean_aggregator()
        ),
        "ours_pca_difference_centered": lambda: ours(
            model, tokenizer, pairs, layers, lambda: PCADifference(center=True)
        ),
        "repeng_pca_diff": lambda: repeng_run(model, tokenizer, pairs, layers, "pca_diff"),
    }


def cosines(a: dict[int, torch.Tensor], b: dict[int, torch.Tensor]) -> dict[str, float]:
    return {
        str(k): float(torch.nn.functional.cosine_similarity(a[k].double(), b[k].double(), dim=0))
        for k in sorted(a)
    }


def main() -> None:
    torch.set_num_threads(1)
    setattr(np, "float_", np.float64)  # noqa: B010 - repeng 0.4.0 on NumPy 2 (see doc)
    from steering_vectors import pca_aggregator

    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer))
    pairs = make_pairs(PAIRS)
    scenarios = {"all_layers": list(range(LAYERS)), "one_early_layer": [1]}
    results: dict[str, Any] = {}
    methods = list(method_table(model, tokenizer, pairs, [0]))
    tmp = tempfile.mkdtemp(prefix="steer_bench_")
    times = {n: {k: [] for k in methods} for n in scenarios}
    mems = {n: {k: [] for k in methods} for n in scenarios}
    for rep in range(REPEATS):  # interleaved: every method once per round
        for name, layers in scenarios.items():
            for key in methods:
                out = os.path.join(tmp, f"{name}_{key}.safetensors")
                res = run_worker({"method": key, "layers": layers, "out": out})
                times[name][key].append(res["seconds"])
                mems[name][key].append(res["peak_rss_growth_mib"])
                print(f"  round {rep + 1}/{REPEATS} {name:16s} {key:30s} {res['seconds']:.2f} s")
    for name, layers in scenarios.items():
        vectors = {
            key: {
                int(k): v
                for k, v in load_vectors(os.path.join(tmp, f"{name}_{key}.safetensors")).items()
            }
            for key in methods
        }
        med = {k: statistics.median(v) for k, v in times[name].items()}
        mem = {k: statistics.median(v) for k, v in mems[name].items()}
        row: dict[str, Any] = {
            "layers": layers,
            "seconds_median": med,
            "seconds_all": times[name],
            "peak_rss_growth_mib_all": mems[name],
            "peak_rss_growth_mib_median": mem,
            "time_ratio_steering_vectors_over_ours": med["steering_vectors_mean"]
            / med["ours_mean_difference"],
            "time_ratio_repeng_over_ours": med["repeng_pca_diff"]
            / med["ours_pca_difference_centered"],
            "memory_ratio_steering_vectors_over_ours": mem["steering_vectors_mean"]
            / max(mem["ours_mean_difference"], 1e-9),
            "memory_ratio_repeng_over_ours": mem["repeng_pca_diff"]
            / max(mem["ours_pca_difference_centered"], 1e-9),
            "cosine_mean_difference_vs_steering_vectors": cosines(
                vectors["ours_mean_difference"], vectors["steering_vectors_mean"]
            ),
            "cosine_pca_difference_centered_vs_repeng_pca_diff": cosines(
                vectors["ours_pca_difference_centered"], vectors["repeng_pca_diff"]
            ),
        }
        if name == "all_layers":  # the other two same-method pairs (agreement only, untimed)
            with contextlib.redirect_stderr(io.StringIO()):
                row["cosine_pca_difference_vs_steering_vectors_pca"] = cosines(
                    ours(model, tokenizer, pairs, layers, PCADifference),
                    steering_vectors_run(model, tokenizer, pairs, layers, pca_aggregator()),
                )
                row["cosine_pca_centered_vs_repeng_pca_center"] = cosines(
                    ours(model, tokenizer, pairs, layers, PCACentered),
                    repeng_run(model, tokenizer, pairs, layers, "pca_center"),
                )
                # repeng reads its last layer from HF's hidden_states[-1], i.e. after the final
                # norm; reading our site "model.norm" instead shows the same vector
                last = LAYERS - 1
                post_norm = ours(
                    model, tokenizer, pairs, [last], lambda: PCADifference(center=True),
                    sites=[resolve_site(model, "model.norm")],
                )  # fmt: skip
                row["cosine_last_layer_post_norm_vs_repeng_pca_diff"] = cosines(
                    post_norm, {last: vectors["repeng_pca_diff"][last]}
                )
                sign_checks: dict[str, float] = {}
                ours(model, tokenizer, pairs, layers, lambda: PCADifference(center=True),
                     info=sign_checks)  # fmt: skip
                row["ours_pca_difference_centered_sign_check"] = sign_checks
        results[name] = row
        print(f"[{name}] layers {layers}")
        for key in methods:
            print(f"  {key:32s} {med[key]:7.3f} s  peak +{mem[key]:7.1f} MiB")
        print(
            f"  steering-vectors / ours: time {row['time_ratio_steering_vectors_over_ours']:.2f}x, "
            f"memory {row['memory_ratio_steering_vectors_over_ours']:.2f}x"
        )
        print(
            f"  repeng / ours:           time {row['time_ratio_repeng_over_ours']:.2f}x, "
            f"memory {row['memory_ratio_repeng_over_ours']:.2f}x"
        )
        for key, value in row.items():
            if key.startswith("cosine"):
                signed = min(value.values())
                unsigned = min(abs(v) for v in value.values())
                print(f"  {key}: min {signed:.6f} (min |cos| {unsigned:.6f})")
    versions = {}
    for pkg in ("torch", "transformers", "steering-vectors", "repeng", "numpy", "scikit-learn"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[pkg] = md.version(pkg)
    payload = {
        "benchmark": "steering_extraction",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "loadavg": os.getloadavg(),
        },
        "versions": versions,
        "params": {
            "pairs": PAIRS,
            "repeats": REPEATS,
            "batch_size": BATCH,
            "model": "LlamaForCausalLM random init, hidden 256, 6 layers, 4 heads, MLP 688, "
            f"vocab {len(tokenizer)}, float32",
            "prompts": "24-96 filler words + one concept word (positive vs negative list)",
            "token": "last non-padding token, right padding",
        },
        "adapters": {
            "repeng": "numpy.float_ = numpy.float64 set before import (NumPy 2)",
            "steering-vectors": "installed with --no-deps (declares transformers<5)",
            "tokenizer": "tokenizers WordLevel + PreTrainedTokenizerFast, built offline",
        },
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    from subspaces._io import write_json

    write_json(RESULTS / "steering_extraction.json", payload)
    print(f"wrote {RESULTS / 'steering_extraction.json'}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]))
    else:
        main()
