"""12 x 12 layer-by-layer CKA at 10,000 x 768: ours vs torch-cka vs direct N x N Grams.

Run: ``.venv/bin/python benchmarks/similarity_layer_matrix.py`` (5-15 minutes on 2 shared CPU
cores). Environment overrides: ``LAYER_BENCH_N`` (10000), ``LAYER_BENCH_WIDTH`` (768),
``LAYER_BENCH_LAYERS`` (12), ``LAYER_BENCH_GRAM_N`` (10000), ``LAYER_BENCH_OLD_N`` (2000),
``LAYER_BENCH_REPEATS`` (3), ``LAYER_BENCH_THREADS`` (2).

Models: two residual MLPs (different seeds) of 12 blocks ``h + GELU(Linear(LayerNorm(h)))``,
width 768; the 12 block outputs of one are compared with the 12 of the other (two-model) or with
themselves (same model, symmetric). Inputs: 10,000 rows of a rank-64 power-law latent read out
to 768 features plus noise, scaled to standard deviation 0.5 (float32).

Each measurement runs in a fresh subprocess (the measurement helpers of ``similarity_cka.py``:
wall time, peak-RSS growth, ``os.getloadavg()``), repeated measurements interleaved, medians
reported. Methods:

* ours, CKA only: the activations are captured first (not timed), then one
  :class:`subspaces.representations.StreamingCKAMatrix` (``matmul_dtype=torch.float32``) is fed
  batches of 500 rows of all 24 layers -- the cost of the 12 x 12 unbiased CKA matrix itself,
  streaming; two-model and symmetric;
* ours, end to end: :func:`subspaces.representations.layer_similarity_matrix` (hooks, forward
  passes of both models in batches of 500, streaming CKA; ``matmul_dtype=torch.float32``);
* torch-cka 0.21: ``CKA(model_a, model_b, ...).compare`` over batches of 1024 (forward passes
  included): the *minibatch* estimator, a different batch-size-dependent number;
* direct Gram: unbiased HSIC_1 on ``N x N`` float32 Grams of the captured activations (the 12
  Grams of model A held, each Gram of model B formed once; float64 reductions) -- exact, the
  same estimator as ours, ``O(N^2)`` memory;
* the per-pair path that the layer matrix replaced (one float64 ``StreamingLinearCKA`` per
  pair, recomputing each layer's Gram for every pair; the library's current class) on
  ``LAYER_BENCH_OLD_N`` rows, extrapolated linearly to ``N``.

Writes ``benchmarks/results/similarity_layer_matrix.json``; ``ratio`` is torch-cka's median time
over ours end to end (higher: ours faster).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from similarity_cka import measure, run_worker, set_threads, summarize

N = int(os.environ.get("LAYER_BENCH_N", "10000"))
WIDTH = int(os.environ.get("LAYER_BENCH_WIDTH", "768"))
LAYERS = int(os.environ.get("LAYER_BENCH_LAYERS", "12"))
GRAM_N = min(N, int(os.environ.get("LAYER_BENCH_GRAM_N", "10000")))
OLD_N = min(N, int(os.environ.get("LAYER_BENCH_OLD_N", "2000")))
REPEATS = int(os.environ.get("LAYER_BENCH_REPEATS", "3"))
THREADS = int(os.environ.get("LAYER_BENCH_THREADS", "2"))
BATCH = 500
TORCH_CKA_BATCH = 1024
RESULTS = Path(__file__).resolve().parent / "results"
NAMES = [str(i) for i in range(LAYERS)]


class Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.f(h)


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(*[Residual(WIDTH) for _ in range(LAYERS)]).eval()


def make_inputs(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    rank = 64
    spectrum = torch.arange(1, rank + 1, dtype=torch.float32).pow(-0.5)
    W = torch.randn(rank, WIDTH, generator=g)
    x = (torch.randn(n, rank, generator=g) * spectrum) @ W
    x = x + 0.3 * x.std() * torch.randn(n, WIDTH, generator=g)
    return 0.5 * x / x.std()  # small next to the residual branches, so layers drift apart


def capture(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    from subspaces.representations import collect_activations

    acts = collect_activations(model, NAMES, x, batch_size=BATCH)
    return [acts[name] for name in NAMES]


# ----- methods (inside workers) ------------------------------------------------------------------
def ours_cka_only(A: list[torch.Tensor], B: list[torch.Tensor] | None) -> list[list[float]]:
    from subspaces.representations.similarity import StreamingCKAMatrix

    acc = StreamingCKAMatrix(matmul_dtype=torch.float32)
    for i in range(0, A[0].shape[0], BATCH):
        acc.update(
            [a[i : i + BATCH] for a in A], None if B is None else [b[i : i + BATCH] for b in B]
        )
    return acc.value(unbiased=True).tolist()


def ours_end_to_end(ma: nn.Module, mb: nn.Module, x: torch.Tensor) -> list[list[float]]:
    from subspaces.representations import layer_similarity_matrix

    S = layer_similarity_matrix(
        ma, mb, NAMES, NAMES, x, unbiased=True, batch_size=BATCH, matmul_dtype=torch.float32
    )
    return S.tolist()


def torch_cka_matrix(ma: nn.Module, mb: nn.Module, x: torch.Tensor) -> list[list[float]]:
    import torch_cka as tc
    from torch.utils.data import DataLoader, TensorDataset

    tc.cka.tqdm = lambda it, **_: it
    dl = DataLoader(TensorDataset(x), batch_size=TORCH_CKA_BATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cka = tc.CKA(ma, mb, "A", "B", NAMES, NAMES)
        with torch.no_grad():
            cka.compare(dl, dl)
    return cka.hsic_matrix.double().tolist()


def _hsic_gram(K: torch.Tensor, L: torch.Tensor, k1: torch.Tensor, l1: torch.Tensor) -> float:
    n = K.shape[0]
    trace = float((K * L).sum(dtype=torch.float64))
    val = trace + float(k1.sum() * l1.sum()) / ((n - 1) * (n - 2)) - 2.0 * float(k1 @ l1) / (n - 2)
    return val / (n * (n - 3))


def direct_gram(A: list[torch.Tensor], B: list[torch.Tensor]) -> list[list[float]]:
    def gram(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        K = X @ X.T
        K.fill_diagonal_(0.0)
        k1 = K.sum(dim=1, dtype=torch.float64)
        return K, k1, _hsic_gram(K, K, k1, k1)

    grams_a = [gram(X) for X in A]
    out = [[0.0] * len(B) for _ in A]
    for j, Y in enumerate(B):
        L, l1, hyy = gram(Y)
        for i, (K, k1, hxx) in enumerate(grams_a):
            out[i][j] = _hsic_gram(K, L, k1, l1) / math.sqrt(hxx * hyy)
    return out


def old_per_pair(A: list[torch.Tensor], B: list[torch.Tensor]) -> list[list[float]]:
    """The per-pair path: one float64 :class:`StreamingLinearCKA` per layer pair, batches of 500.

    (Before the shared-product matrix of issue 6 this was how a layer-by-layer matrix was
    computed; the class itself is the library's current one.)
    """
    from subspaces.representations.cka import StreamingLinearCKA

    stats = [[StreamingLinearCKA() for _ in B] for _ in A]
    for r in range(0, A[0].shape[0], BATCH):
        for i, a in enumerate(A):
            for j, b in enumerate(B):
                stats[i][j].update(a[r : r + BATCH], b[r : r + BATCH])
    return [[s.value(unbiased=True) for s in row] for row in stats]


def worker(spec: dict[str, Any]) -> None:
    import subspaces.representations.similarity  # noqa: F401  (imports are not timed)

    set_threads(spec["threads"])
    method, n = spec["method"], spec["n"]
    x = make_inputs(N)[:n]
    ma = make_model(1)
    mb = ma if spec.get("same") else make_model(2)
    if method in ("ours_cka_only", "gram", "old"):
        with torch.no_grad():
            A = capture(ma, x)
            B = A if spec.get("same") else capture(mb, x)
        if method == "ours_cka_only":
            out = measure(lambda: ours_cka_only(A, None if spec.get("same") else B))
        elif method == "gram":
            out = measure(lambda: direct_gram(A, B))
        else:
            out = measure(lambda: old_per_pair(A, B))
            from subspaces.representations.similarity import cka_matrix

            old_m = torch.tensor(out["value"], dtype=torch.float64)
            for dtype in (torch.float64, torch.float32):
                new_m = cka_matrix(A, B, unbiased=True, matmul_dtype=dtype)
                out[f"max_abs_diff_vs_ours_{str(dtype)[6:]}"] = float((new_m - old_m).abs().max())
    elif method == "ours_e2e":
        out = measure(lambda: ours_end_to_end(ma, mb, x))
    elif method == "torch_cka":
        out = measure(lambda: torch_cka_matrix(ma, mb, x))
    else:
        raise ValueError(method)
    print(json.dumps(out))


# ----- driver ------------------------------------------------------------------------------------
def main() -> None:
    script = os.path.abspath(__file__)
    try:
        import importlib.metadata as md

        import torch_cka  # noqa: F401

        tc_version: str | None = md.version("torch-cka")
    except Exception as err:  # a missing anchor never stops the benchmark
        print(f"torch-cka not importable ({type(err).__name__}: {err})")
        tc_version = None
    print(
        f"{LAYERS} x {LAYERS} layers, N={N}, width {WIDTH}, torch {torch.__version__}, "
        f"{THREADS} threads, {REPEATS} repeats, load {os.getloadavg()}"
    )
    base = {"threads": THREADS, "n": N}
    runs: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("ours_cka_two", "ours_cka_same", "ours_e2e_two", "ours_e2e_same", "tc")
    }
    plan = [
        ("ours_cka_two", {"method": "ours_cka_only"}),
        ("ours_cka_same", {"method": "ours_cka_only", "same": True}),
        ("ours_e2e_two", {"method": "ours_e2e"}),
        ("ours_e2e_same", {"method": "ours_e2e", "same": True}),
    ]
    if tc_version is not None:
        plan.append(("tc", {"method": "torch_cka"}))
    for rep in range(REPEATS):
        for key, spec in plan:
            if key == "tc" and rep > 0 and runs["tc"][0]["seconds"] > 120:
                continue  # a slow anchor is timed once
            r = run_worker(script, {**base, **spec})
            runs[key].append(r)
            print(
                f"[{rep}] {key:14s} {r['seconds']:7.1f} s  +{r['peak_rss_growth_mb']:.0f} MiB  "
                f"load {r['loadavg_after'][0]:.1f}"
            )
    gram = run_worker(script, {**base, "n": GRAM_N, "method": "gram"})
    print(f"direct Gram N={GRAM_N}: {gram['seconds']:.1f} s +{gram['peak_rss_growth_mb']:.0f} MiB")
    old = run_worker(script, {**base, "n": OLD_N, "method": "old"})
    print(f"previous per-pair float64 N={OLD_N}: {old['seconds']:.1f} s")

    S = {k: summarize(v) for k, v in runs.items() if v}
    ref = torch.tensor(S["ours_cka_two"]["value"], dtype=torch.float64)
    checks: dict[str, float] = {
        "max_abs_diff_e2e_vs_cka_only": float(
            (torch.tensor(S["ours_e2e_two"]["value"], dtype=torch.float64) - ref).abs().max()
        ),
        "max_abs_diff_symmetric_vs_two_model_same_inputs": float(
            (
                torch.tensor(S["ours_e2e_same"]["value"], dtype=torch.float64)
                - torch.tensor(S["ours_cka_same"]["value"], dtype=torch.float64)
            )
            .abs()
            .max()
        ),
    }
    if GRAM_N == N:
        gram_m = torch.tensor(gram["value"], dtype=torch.float64)
        checks["max_abs_diff_ours_float32_vs_gram"] = float((gram_m - ref).abs().max())
    if "tc" in S:
        checks["max_abs_diff_torch_cka_minibatch_vs_exact"] = float(
            (torch.tensor(S["tc"]["value"], dtype=torch.float64) - ref).abs().max()
        )
    med = {k: v["median_seconds"] for k, v in S.items()}
    for k, v in med.items():
        print(f"median {k:14s} {v:7.1f} s")
    print(
        f"direct Gram at N={GRAM_N}: {gram['seconds']:.1f} s; previous implementation at "
        f"N={OLD_N}: {old['seconds']:.1f} s (linear in N: ~{old['seconds'] * N / OLD_N:.0f} s)"
    )
    checks["previous_vs_ours_float64_at_old_n"] = old["max_abs_diff_vs_ours_float64"]
    checks["previous_vs_ours_float32_at_old_n"] = old["max_abs_diff_vs_ours_float32"]
    print(json.dumps(checks, indent=1))
    S_print = ref
    print("CKA (two-model, unbiased) first row:", [round(v, 3) for v in S_print[0].tolist()])
    result = {
        "name": "similarity_layer_matrix",
        "date": dt.date.today().isoformat(),
        "command": "python benchmarks/similarity_layer_matrix.py",
        "ours": med["ours_cka_two"],
        "anchor": med.get("tc"),
        "ratio": None if "tc" not in med else med["tc"] / med["ours_e2e_two"],
        "unit": "seconds (median); ratio = torch-cka / ours end to end (higher: ours faster)",
        "target": "12 x 12 layer CKA matrix at 10000 x 768 in < 15 s (2 cores)",
        "target_met": med["ours_cka_two"] < 15.0 and N >= 10000 and WIDTH >= 768,
        "params": {
            "n": N,
            "width": WIDTH,
            "layers": LAYERS,
            "batch": BATCH,
            "threads": THREADS,
            "repeats": REPEATS,
            "gram_n": GRAM_N,
            "old_n": OLD_N,
            "models": "residual MLPs h + GELU(Linear(LayerNorm(h))), seeds 1 and 2",
            "torch": torch.__version__,
            "torch_cka": tc_version,
            "machine": platform.platform(),
        },
        "medians_seconds": med,
        "summaries": S,
        "direct_gram": gram,
        "previous_implementation": {**old, "extrapolated_seconds_at_n": old["seconds"] * N / OLD_N},
        "checks": checks,
    }
    sys.path.insert(0, str(Path(script).parents[1] / "src"))
    from subspaces._io import write_json

    out = write_json(RESULTS / "similarity_layer_matrix.json", result)
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]))
    else:
        main()
