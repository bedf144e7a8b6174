"""Non-refresh optimizer step: SubspaceAdamW vs torch AdamW (foreach, fused) and GaLoreAdamW.

Run: ``.venv/bin/python benchmarks/optim_step.py`` (about 3 minutes on a shared 2-core CPU).
``OPTIM_STEP_SIZES=1024`` and ``OPTIM_STEP_THREADS=1`` restrict the sizes / thread counts.

Set-up (issue 20): one float32 square weight ``n x n`` (n = 1024 and 2048), a fixed N(0, 1)
gradient (seeded), rank 128, ``scale=0.25``, ``lr=1e-3``, no weight decay; every optimizer takes
one untimed first step (which for the projected ones chooses the basis) and is then timed on
steps that do not refresh (``update_proj_gap=10**9``). The optimizers run in interleaved rounds
(one step of each per round, rotating the order) so the load of the shared machine falls on all
of them alike; medians are reported. The whole set runs with ``torch.set_num_threads(1)`` and
again with 2 threads (the caller's thread count is restored at the end).

Tools: ``torch.optim.AdamW(foreach=True)`` (the reference of the ratios), ``AdamW(fused=True)``
(CPU has a fused kernel in torch 2.13), GaLoreAdamW (galore-torch 1.0, skipped with a message if
not importable) and ``SubspaceAdamW`` with ``projector`` = ``svd`` (float basis), ``svd`` with
``proj_bits=4`` (4-bit basis), ``svd`` with ``proj_dtype=torch.bfloat16`` (the two products in
bfloat16, opt-in), ``dct`` (indices) and ``random`` (seed).

Memory: ``state`` B/param is :func:`subspaces.optim.memory.optimizer_state_bytes` (what the
state tensors hold); ``resident`` B/param counts every tensor reachable from the optimizer object
(state, projector caches, anything else it keeps between steps) except parameters and gradients.

A "floor" row times the two products a projected step cannot avoid, ``G @ Q`` and
``W.addmm_(N, Q^T)`` (``n x n x r`` each), to show how much of the step is matrix products.

Writes ``benchmarks/results/optim_step.json`` (atomically) and prints a markdown table.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from subspaces._io import write_json
from subspaces.optim.memory import _iter_tensors, _storage_key_and_bytes, optimizer_state_bytes

SIZES = [int(s) for s in os.environ.get("OPTIM_STEP_SIZES", "1024,2048").split(",")]
THREADS = [int(s) for s in os.environ.get("OPTIM_STEP_THREADS", "1,2").split(",")]
RANK = 128
SCALE = 0.25
LR = 1e-3
HUGE_GAP = 10**9
ROUNDS = {1024: 25, 2048: 11}
RESULTS = Path(__file__).resolve().parent / "results" / "optim_step.json"


def galore_cls() -> tuple[Any, str | None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from galore_torch import GaLoreAdamW
    except Exception as err:  # a missing anchor never stops the benchmark
        return None, f"galore-torch not importable, skipped: {type(err).__name__}: {err}"[:200]
    return GaLoreAdamW, None


def resident_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of every tensor reachable from ``opt`` except its parameters and gradients."""
    params = [p for g in opt.param_groups for p in g["params"]]
    skip = {_storage_key_and_bytes(t)[0] for p in params for t in (p, p.grad) if t is not None}
    seen: set[Any] = set()
    total = 0
    for t in _iter_tensors(vars(opt)):
        key, nbytes = _storage_key_and_bytes(t)
        if key not in skip and key not in seen:
            seen.add(key)
            total += nbytes
    return total


def makers(galore: Any) -> dict[str, Callable[[nn.Parameter], torch.optim.Optimizer]]:
    from subspaces.optim import SubspaceAdamW

    def ours(**extra: Any) -> Callable[[nn.Parameter], torch.optim.Optimizer]:
        group = {"rank": RANK, "update_proj_gap": HUGE_GAP, "scale": SCALE, **extra}
        return lambda w: SubspaceAdamW([{"params": [w], **group}], lr=LR)

    out: dict[str, Callable[[nn.Parameter], torch.optim.Optimizer]] = {
        "adamw_foreach": lambda w: torch.optim.AdamW([w], lr=LR, foreach=True),
        "adamw_fused": lambda w: torch.optim.AdamW([w], lr=LR, fused=True),
    }
    if galore is not None:
        group = {"rank": RANK, "update_proj_gap": HUGE_GAP, "scale": SCALE, "proj_type": "std"}
        out["galore_svd"] = lambda w: galore([{"params": [w], **group}], lr=LR)
    out["ours_svd"] = ours(projector="svd")
    out["ours_svd_int4"] = ours(projector="svd", proj_bits=4)
    out["ours_svd_bf16"] = ours(projector="svd", proj_dtype=torch.bfloat16)
    out["ours_dct"] = ours(projector="dct")
    out["ours_random"] = ours(projector="random")
    return out


def floor_ms(W0: torch.Tensor, G: torch.Tensor, rounds: int) -> float:
    """Median time of ``G @ Q`` plus ``W.addmm_(N, Q^T)``: the two products of a projected step."""
    n = W0.shape[1]
    Q = torch.linalg.qr(torch.randn(n, RANK, generator=torch.Generator().manual_seed(1))).Q
    N = torch.randn(W0.shape[0], RANK, generator=torch.Generator().manual_seed(2))
    W = W0.clone()
    times = []
    for _ in range(rounds + 1):
        t0 = time.perf_counter()
        torch.mm(G, Q)
        W.addmm_(N, Q.T, alpha=-1e-9)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times[1:])


def bench(n: int, threads: int, galore: Any) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(n)
    W0 = torch.randn(n, n, generator=gen) / n**0.5
    G = torch.randn(n, n, generator=gen)
    rounds = ROUNDS.get(n, 11)
    opts: dict[str, torch.optim.Optimizer] = {}
    for name, make in makers(galore).items():
        w = nn.Parameter(W0.clone())
        w.grad = G.clone()
        opts[name] = make(w)
        opts[name].step()  # creates the state and the basis
        opts[name].step()  # warm-up of the non-refresh path
    names = list(opts)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            opts[name].step()
            times[name].append(time.perf_counter() - t0)
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        opt = opts[name]
        rows[name] = {
            "step_ms": 1e3 * statistics.median(times[name]),
            "times_s": times[name],
            "state_bytes_per_param": optimizer_state_bytes(opt) / (n * n),
            "resident_bytes_per_param": resident_bytes(opt) / (n * n),
        }
    rows["floor_two_products"] = {"step_ms": floor_ms(W0, G, rounds)}
    foreach = rows["adamw_foreach"]["step_ms"]
    fused = rows["adamw_fused"]["step_ms"]
    for row in rows.values():
        row["vs_adamw_foreach"] = row["step_ms"] / foreach
        row["vs_adamw_fused"] = row["step_ms"] / fused
    return rows


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| threads | n | tool | step ms | / AdamW foreach | / AdamW fused | state B/param | "
        "resident B/param |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, rows in results.items():
        threads, n = key.split("x")
        for name, row in rows.items():

            def f(v: Any, fmt: str) -> str:
                return "" if v is None else format(v, fmt)

            lines.append(
                f"| {threads} | {n} | {name} | {row['step_ms']:.2f} | "
                f"{row['vs_adamw_foreach']:.2f} | {row['vs_adamw_fused']:.2f} | "
                f"{f(row.get('state_bytes_per_param'), '.3f')} | "
                f"{f(row.get('resident_bytes_per_param'), '.3f')} |"
            )
    return "\n".join(lines)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "galore-torch"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def main() -> None:
    galore, galore_err = galore_cls()
    if galore_err:
        print(galore_err, file=sys.stderr)
    before = torch.get_num_threads()
    load_start = load()
    print(f"torch {torch.__version__}, sizes {SIZES}, threads {THREADS}, load {load_start}")
    results: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
        for threads in THREADS:
            torch.set_num_threads(threads)
            for n in SIZES:
                results[f"{threads}x{n}"] = rows = bench(n, threads, galore)
                for name, row in rows.items():
                    print(
                        f"  threads={threads} n={n} {name:<20} {row['step_ms']:8.2f} ms  "
                        f"x{row['vs_adamw_foreach']:.2f} foreach  x{row['vs_adamw_fused']:.2f} "
                        "fused",
                        flush=True,
                    )
    finally:
        torch.set_num_threads(before)
    text = table(results)
    print(text)
    write_json(
        RESULTS,
        {
            "name": "optim_step",
            "unit": "milliseconds per non-refresh optimizer step (median), bytes per parameter",
            "params": {
                "sizes": SIZES,
                "threads": THREADS,
                "rank": RANK,
                "scale": SCALE,
                "lr": LR,
                "dtype": "float32",
                "gradient": "fixed N(0, 1), seeded",
                "rounds": {str(k): v for k, v in ROUNDS.items()},
                "load_average_1min": {"start": load_start, "end": load()},
                "machine": platform.platform(),
                "versions": versions(),
                "anchor_errors": [galore_err] if galore_err else [],
            },
            "results": results,
            "table_markdown": text,
        },
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
