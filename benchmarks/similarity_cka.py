"""Exact unbiased linear CKA at 50,000 x 4096: ours vs torch-cka (minibatch) vs a direct N x N Gram.

Run: ``.venv/bin/python benchmarks/similarity_cka.py`` (5-15 minutes on 2 shared CPU cores).
Environment overrides: ``CKA_BENCH_N`` (50000), ``CKA_BENCH_D`` (4096), ``CKA_BENCH_GRAM_N``
(10000: the size at which the N x N anchor runs), ``CKA_BENCH_REPEATS`` (3), ``CKA_BENCH_THREADS``
(2).

Inputs: realistic ``N x d`` float32 activation pairs -- a shared latent of rank 256 with a
power-law spectrum, read out by two different random maps, plus isotropic noise and per-column
offsets (uncentered, like post-activation features); ``Y``'s latent is a rotated, partly
resampled copy of ``X``'s. They are written once to a temporary directory and every method reads
the same rows back in chunks of 4096, so no method ever holds all of them.

Every measurement runs in a fresh subprocess (``torch.set_num_threads(2)``) and records wall
time, the growth of peak resident memory (``resource.getrusage(...).ru_maxrss`` after the
method minus before it; ``tracemalloc`` does not see torch's allocations) and
``os.getloadavg()``. Repeated measurements are interleaved across methods and summarized by the
median. Methods:

* ours: :class:`subspaces.representations.StreamingLinearCKA` with
  ``matmul_dtype=torch.float32`` (single-precision products of each 4096-row chunk, float64
  accumulators ``X^T Y``, ``X^T X``, ``Y^T Y``; ``O(N d^2)`` time, ``O(d^2)`` memory); the exact
  full-data unbiased estimator (HSIC_1, Song et al. 2012). The biased CKA comes from the same
  accumulators;
* torch-cka 0.21: its own ``CKA.compare`` on identity models over batches of 1024 rows -- the
  *minibatch* estimator (HSIC_1 averaged over batches, Nguyen et al. 2021): a different,
  batch-size-dependent number, reported for time and value;
* direct Gram: the textbook unbiased HSIC_1 on the two ``N x N`` float32 Grams (zeroed
  diagonals, float64 reductions), the same estimator as ours. At 50,000 rows it needs
  3 x 10 GB, so it runs on the first ``CKA_BENCH_GRAM_N`` rows, next to ours (float32 and the
  float64 default) on the same rows; its time at full size is extrapolated as ``N^2``.

Writes ``benchmarks/results/similarity_cka.json``; ``ratio`` is torch-cka's median time over
ours (higher: ours faster).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

N = int(os.environ.get("CKA_BENCH_N", "50000"))
D = int(os.environ.get("CKA_BENCH_D", "4096"))
GRAM_N = min(N, int(os.environ.get("CKA_BENCH_GRAM_N", "10000")))
REPEATS = int(os.environ.get("CKA_BENCH_REPEATS", "3"))
THREADS = int(os.environ.get("CKA_BENCH_THREADS", "2"))
CHUNK = 4096
RANK = 256
TORCH_CKA_BATCH = 1024
RESULTS = Path(__file__).resolve().parent / "results"


# ----- subprocess measurement (shared with similarity_layer_matrix.py) ------------------------
def rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_worker(script: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``script --worker SPEC`` in a fresh interpreter and return its JSON result line."""
    proc = subprocess.run(
        [sys.executable, script, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {spec} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def measure(fn: Callable[[], Any]) -> dict[str, Any]:
    """Time ``fn`` in this (worker) process, with peak-RSS growth and load averages."""
    load0 = os.getloadavg()
    base = rss_mb()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "value": value,
        "seconds": seconds,
        "cpu_seconds": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
        "peak_rss_growth_mb": rss_mb() - base,
        "peak_rss_mb": rss_mb(),
        "loadavg_before": list(load0),
        "loadavg_after": list(os.getloadavg()),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    secs = [r["seconds"] for r in runs]
    return {
        "median_seconds": statistics.median(secs),
        "min_seconds": min(secs),
        "max_seconds": max(secs),
        "value": runs[0]["value"],
        "peak_rss_growth_mb": max(r["peak_rss_growth_mb"] for r in runs),
        "loadavg_1min": [r["loadavg_after"][0] for r in runs],
        "runs": runs,
    }


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


# ----- data --------------------------------------------------------------------------------------
def write_data(folder: str, n: int, d: int) -> tuple[str, str]:
    """Low-rank-plus-noise float32 activation pairs, written chunk by chunk (seeded)."""
    g = torch.Generator().manual_seed(0)
    spectrum = torch.arange(1, RANK + 1, dtype=torch.float32).pow(-0.5)
    Wx = torch.randn(RANK, d, generator=g) / math.sqrt(RANK)
    Wy = torch.randn(RANK, d, generator=g) / math.sqrt(RANK)
    Q = torch.linalg.qr(torch.randn(RANK, RANK, generator=g)).Q
    off_x, off_y = torch.rand(d, generator=g), 0.5 * torch.randn(d, generator=g)
    paths = (os.path.join(folder, "X.f32"), os.path.join(folder, "Y.f32"))
    with open(paths[0], "wb") as fx, open(paths[1], "wb") as fy:
        for i in range(0, n, CHUNK):
            m = min(CHUNK, n - i)
            Z = torch.randn(m, RANK, generator=g) * spectrum
            Zy = 0.8 * (Z @ Q) + 0.6 * torch.randn(m, RANK, generator=g) * spectrum
            X = Z @ Wx + 0.3 * torch.randn(m, d, generator=g) + off_x
            Y = Zy @ Wy + 0.3 * torch.randn(m, d, generator=g) + off_y
            fx.write(X.numpy().tobytes())
            fy.write(Y.numpy().tobytes())
    return paths


def read_rows(path: str, start: int, rows: int, d: int) -> torch.Tensor:
    arr = np.fromfile(path, dtype=np.float32, count=rows * d, offset=4 * start * d)
    return torch.from_numpy(arr.reshape(rows, d))


def chunks(paths: tuple[str, str], n: int, d: int, size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    for i in range(0, n, size):
        m = min(size, n - i)
        yield read_rows(paths[0], i, m, d), read_rows(paths[1], i, m, d)


# ----- methods (run inside workers) --------------------------------------------------------------
def ours(paths: tuple[str, str], n: int, d: int, matmul: str) -> dict[str, float]:
    from subspaces.representations import StreamingLinearCKA

    dtype = torch.float32 if matmul == "float32" else torch.float64
    cka = StreamingLinearCKA(matmul_dtype=dtype, chunk_rows=CHUNK)
    for X, Y in chunks(paths, n, d, CHUNK):
        cka.update(X, Y)
    return {"unbiased": cka.value(unbiased=True), "biased": cka.value(unbiased=False)}


def gram_hsic(K: torch.Tensor, L: torch.Tensor) -> float:
    """Unbiased HSIC_1 of two Grams with zeroed diagonals (float64 reductions)."""
    n = K.shape[0]
    k1 = K.sum(dim=1, dtype=torch.float64)
    l1 = L.sum(dim=1, dtype=torch.float64)
    trace = float((K * L).sum(dtype=torch.float64))
    val = trace + float(k1.sum() * l1.sum()) / ((n - 1) * (n - 2)) - 2.0 * float(k1 @ l1) / (n - 2)
    return val / (n * (n - 3))


def direct_gram(paths: tuple[str, str], n: int, d: int) -> dict[str, float]:
    X, Y = read_rows(paths[0], 0, n, d), read_rows(paths[1], 0, n, d)
    K = X @ X.T
    K.fill_diagonal_(0.0)
    hxx = gram_hsic(K, K)
    L = Y @ Y.T
    L.fill_diagonal_(0.0)
    hyy = gram_hsic(L, L)
    hxy = gram_hsic(K, L)
    return {"unbiased": hxy / math.sqrt(hxx * hyy)}


class _Batches(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """Ready-made batches (as 1-tuples, which torch-cka unpacks) of one side of the data."""

    def __init__(self, path: str, n: int, d: int, size: int) -> None:
        self.path, self.n, self.d, self.size = path, n, d, size

    def __iter__(self) -> Iterator[tuple[torch.Tensor]]:
        for i in range(0, self.n, self.size):
            yield (read_rows(self.path, i, min(self.size, self.n - i), self.d),)

    def __len__(self) -> int:
        return (self.n + self.size - 1) // self.size


def torch_cka_pair(paths: tuple[str, str], n: int, d: int) -> dict[str, float]:
    import torch_cka as tc
    from torch.utils.data import DataLoader

    tc.cka.tqdm = lambda it, **_: it  # no progress bar in the log
    dl1 = DataLoader(_Batches(paths[0], n, d, TORCH_CKA_BATCH), batch_size=None)
    dl2 = DataLoader(_Batches(paths[1], n, d, TORCH_CKA_BATCH), batch_size=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cka = tc.CKA(torch.nn.Identity(), torch.nn.Identity(), "X", "Y", [""], [""])
        with torch.no_grad():
            cka.compare(dl1, dl2)
    return {"unbiased_minibatch": float(cka.hsic_matrix[0, 0])}


def worker(spec: dict[str, Any]) -> None:
    set_threads(spec["threads"])
    paths, n, d = tuple(spec["paths"]), spec["n"], spec["d"]
    method = spec["method"]
    if method == "ours":
        out = measure(lambda: ours(paths, n, d, spec["matmul"]))  # type: ignore[arg-type]
    elif method == "gram":
        out = measure(lambda: direct_gram(paths, n, d))  # type: ignore[arg-type]
    elif method == "torch_cka":
        out = measure(lambda: torch_cka_pair(paths, n, d))  # type: ignore[arg-type]
    else:
        raise ValueError(method)
    print(json.dumps(out))


# ----- driver ------------------------------------------------------------------------------------
def torch_cka_version() -> str | None:
    try:
        import importlib.metadata as md

        import torch_cka  # noqa: F401

        return md.version("torch-cka")
    except Exception as err:  # a missing anchor never stops the benchmark
        print(f"torch-cka not importable ({type(err).__name__}: {err})")
        return None


def main() -> None:
    script = os.path.abspath(__file__)
    tc_version = torch_cka_version()
    print(
        f"N={N} d={D} float32 (Gram anchor at N={GRAM_N}), torch {torch.__version__}, "
        f"{THREADS} threads, {REPEATS} repeats, load {os.getloadavg()}"
    )
    with tempfile.TemporaryDirectory(prefix="cka_bench_") as tmp:
        t0 = time.perf_counter()
        paths = write_data(tmp, N, D)
        print(f"data written in {time.perf_counter() - t0:.1f} s")
        base = {"paths": list(paths), "d": D, "threads": THREADS}
        big: dict[str, list[dict[str, Any]]] = {"ours_f32": [], "torch_cka": []}
        small: dict[str, list[dict[str, Any]]] = {"ours_f32": [], "ours_f64": [], "gram": []}
        for rep in range(REPEATS):  # interleaved, so that load drifts hit every method
            r = run_worker(script, {**base, "method": "ours", "matmul": "float32", "n": N})
            big["ours_f32"].append(r)
            print(f"[{rep}] ours float32    N={N}: {r['value']['unbiased']:.7f} "
                  f"{r['seconds']:7.1f} s  +{r['peak_rss_growth_mb']:.0f} MiB  "
                  f"load {r['loadavg_after'][0]:.1f}")  # fmt: skip
            if tc_version is not None:
                r = run_worker(script, {**base, "method": "torch_cka", "n": N})
                big["torch_cka"].append(r)
                print(f"[{rep}] torch-cka       N={N}: {r['value']['unbiased_minibatch']:.7f} "
                      f"{r['seconds']:7.1f} s  +{r['peak_rss_growth_mb']:.0f} MiB  "
                      f"load {r['loadavg_after'][0]:.1f}")  # fmt: skip
            r = run_worker(script, {**base, "method": "ours", "matmul": "float32", "n": GRAM_N})
            small["ours_f32"].append(r)
            print(f"[{rep}] ours float32    N={GRAM_N}: {r['value']['unbiased']:.9f} "
                  f"{r['seconds']:7.1f} s  +{r['peak_rss_growth_mb']:.0f} MiB")  # fmt: skip
            if rep == 0:  # the slow ones once
                r = run_worker(script, {**base, "method": "ours", "matmul": "float64", "n": GRAM_N})
                small["ours_f64"].append(r)
                print(f"[{rep}] ours float64    N={GRAM_N}: {r['value']['unbiased']:.9f} "
                      f"{r['seconds']:7.1f} s  +{r['peak_rss_growth_mb']:.0f} MiB")  # fmt: skip
                r = run_worker(script, {**base, "method": "gram", "n": GRAM_N})
                small["gram"].append(r)
                print(f"[{rep}] direct Gram     N={GRAM_N}: {r['value']['unbiased']:.9f} "
                      f"{r['seconds']:7.1f} s  +{r['peak_rss_growth_mb']:.0f} MiB")  # fmt: skip

    s_ours = summarize(big["ours_f32"])
    s_tc = summarize(big["torch_cka"]) if big["torch_cka"] else None
    s_small = {k: summarize(v) for k, v in small.items()}
    gram_v = s_small["gram"]["value"]["unbiased"]
    diff32 = abs(s_small["ours_f32"]["value"]["unbiased"] - gram_v)
    diff64 = abs(s_small["ours_f64"]["value"]["unbiased"] - gram_v)
    gram_est = s_small["gram"]["median_seconds"] * (N / GRAM_N) ** 2
    print(
        f"\nours (exact unbiased, streaming, float32 products): median "
        f"{s_ours['median_seconds']:.1f} s at {N} x {D} (target <= 90 s), peak RSS growth "
        f"{s_ours['peak_rss_growth_mb']:.0f} MiB; biased CKA {s_ours['value']['biased']:.6f} "
        f"vs unbiased {s_ours['value']['unbiased']:.6f}"
    )
    if s_tc is not None:
        print(
            f"torch-cka minibatch (bs {TORCH_CKA_BATCH}, different estimator): median "
            f"{s_tc['median_seconds']:.1f} s, value {s_tc['value']['unbiased_minibatch']:.6f}; "
            f"torch-cka / ours = {s_tc['median_seconds'] / s_ours['median_seconds']:.2f}x"
        )
    print(
        f"at N={GRAM_N}: |ours f32 - Gram| = {diff32:.1e}, |ours f64 - Gram| = {diff64:.1e}; "
        f"Gram {s_small['gram']['median_seconds']:.1f} s vs ours f32 "
        f"{s_small['ours_f32']['median_seconds']:.1f} s / f64 "
        f"{s_small['ours_f64']['median_seconds']:.1f} s; Gram at N={N} extrapolated "
        f"{gram_est:.0f} s and {3 * 4 * N * N / 2**30:.1f} GiB"
    )
    result = {
        "name": "similarity_cka",
        "date": dt.date.today().isoformat(),
        "command": "python benchmarks/similarity_cka.py",
        "ours": s_ours["median_seconds"],
        "anchor": None if s_tc is None else s_tc["median_seconds"],
        "ratio": None if s_tc is None else s_tc["median_seconds"] / s_ours["median_seconds"],
        "unit": "seconds (median); ratio = torch-cka / ours (higher: ours faster)",
        "target": "exact unbiased linear CKA, 50000 x 4096, <= 90 s on 2 cores, O(d^2) memory",
        "target_met": s_ours["median_seconds"] <= 90.0 and N >= 50000 and D >= 4096,
        "params": {
            "n": N,
            "d": D,
            "gram_n": GRAM_N,
            "chunk": CHUNK,
            "threads": THREADS,
            "repeats": REPEATS,
            "data": f"rank-{RANK} power-law latent read out by random maps + 0.3 noise + "
            "column offsets, float32; Y's latent = 0.8 rotated + 0.6 fresh",
            "torch": torch.__version__,
            "torch_cka": tc_version,
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "full_size": {
            "ours_streaming_float32": s_ours,
            "torch_cka_minibatch": s_tc,
            "direct_gram_extrapolated_seconds": gram_est,
            "direct_gram_memory_gib": 3 * 4 * N * N / 2**30,
        },
        "gram_size": {
            **s_small,
            "abs_diff_ours_float32_vs_gram": diff32,
            "abs_diff_ours_float64_vs_gram": diff64,
        },
    }
    sys.path.insert(0, str(Path(script).parents[1] / "src"))
    from subspaces._io import write_json

    out = write_json(RESULTS / "similarity_cka.json", result)
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]))
    else:
        main()
