"""Low-rank optimizer steps: SubspaceAdamW's projectors vs GaLoreAdamW (galore-torch 1.0) and AdamW.

Run: ``.venv/bin/python benchmarks/optim_refresh.py`` (about 5 minutes on a shared 2-core CPU,
most of it in the exact SVDs at 2048 x 2048). ``OPTIM_BENCH_SIZES=1024`` runs one size only.

Set-up (``shared/research/optimizers.md`` section 10, Run A): one float32 square weight
``n x n`` (n = 1024 and 2048), a fixed N(0, 1) gradient (seeded), rank 128, ``scale=0.25``,
``proj_type='std'``, ``lr=1e-3``, one intra-op thread (``torch.set_num_threads(1)``). Medians
over repeated ``step()`` calls of one optimizer:

* refresh step: ``update_proj_gap=1`` (a new basis every step), after one warm-up step;
* non-refresh step: ``update_proj_gap=10**9``, after the first (refreshing) step;
* ``torch.optim.AdamW`` with ``foreach=True`` and with ``fused=True``.

Optimizers of one kind of step run in interleaved rounds (one step of each per round), so the
load of the shared machine falls on all of them alike.

Tools: GaLoreAdamW (exact ``torch.linalg.svd`` every refresh; the anchor), and
``subspaces.optim.SubspaceAdamW`` with ``projector`` = ``svd`` (GaLore's projector), ``rsvd``
(randomized range finder), ``dct`` (top-r DCT-II columns) and ``random`` (seeded Gaussian).

Memory: :func:`subspaces.optim.memory.optimizer_state_bytes` after the steps (``state`` B/param:
the storages the state tensors hold alive; GaLore's basis sits in a Python ``projector`` object in
its state and is counted, and since it is the view ``Vh[:r]`` of the full SVD it holds the whole
``n x n`` ``Vh``), next to the textbook ``numel * element_size`` count. For ours, ``resident``
B/param adds the bases the projectors cache outside the state
(``SubspaceAdamW._projectors[...]._cache``, private): a DCT or random basis is stored as indices
or a seed but lives as an ``n x r`` float matrix between refreshes.

A parity check at the first size: one step of GaLoreAdamW and of ours with ``projector='svd'``
(``eps=1e-6``, no weight decay, both GaLore's defaults) from the same weight and gradient; the
relative difference of the two updates is reported.

Writes ``benchmarks/results/optim_refresh.json`` (atomically). Ratios: ``refresh_speedup`` =
GaLore refresh step / ours refresh step (higher: ours faster); ``step_vs_adamw`` = step time /
AdamW-foreach step; ``amortized_T200_vs_adamw`` = (refresh + 199 non-refresh) / 200 / AdamW.
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
from subspaces.optim.memory import _iter_tensors, optimizer_state_bytes, tensor_bytes

SIZES = [int(s) for s in os.environ.get("OPTIM_BENCH_SIZES", "1024,2048").split(",")]
RANK = 128
SCALE = 0.25
LR = 1e-3
HUGE_GAP = 10**9
PROJECTORS = ("svd", "rsvd", "dct", "random")
#: (refresh repeats, non-refresh repeats, AdamW repeats) per size
REPEATS = {1024: (5, 15, 30), 2048: (3, 9, 15)}
RESULTS = Path(__file__).resolve().parent / "results" / "optim_refresh.json"


def set_threads() -> None:
    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def galore_cls() -> tuple[Any, str | None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from galore_torch import GaLoreAdamW
    except Exception as err:  # a missing anchor never stops the benchmark
        return None, f"galore-torch not importable: {type(err).__name__}: {err}"[:200]
    return GaLoreAdamW, None


def ours_cls() -> tuple[Any, str | None]:
    try:
        from subspaces.optim import SubspaceAdamW
    except Exception as err:
        return None, f"subspaces.optim.SubspaceAdamW not importable: {type(err).__name__}: {err}"
    return SubspaceAdamW, None


def time_interleaved(
    makers: dict[str, Callable[[nn.Parameter], torch.optim.Optimizer]],
    W0: torch.Tensor,
    G: torch.Tensor,
    repeats: int,
) -> dict[str, tuple[float, list[float], torch.optim.Optimizer]]:
    """Median seconds per ``step()`` of each optimizer, after one untimed first step each.

    The optimizers are stepped in interleaved rounds (one step of each per round, rotating the
    order), so that the load of the shared machine hits all of them alike.
    """
    opts: dict[str, torch.optim.Optimizer] = {}
    for name, make in makers.items():
        w = nn.Parameter(W0.clone())
        w.grad = G.clone()
        opts[name] = make(w)
        opts[name].step()  # creates the state (and the first basis)
    names = list(opts)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            opts[name].step()
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(times[name]), times[name], opts[name]) for name in names}


def projector_cache_tensors(opt: Any) -> list[torch.Tensor]:
    """Bases cached by our projectors outside ``optimizer.state`` (private attributes)."""
    out: list[torch.Tensor] = []
    for proj in getattr(opt, "_projectors", {}).values():
        cache = getattr(proj, "_cache", None)
        if cache is not None:
            out.extend(v for v in cache.values() if isinstance(v, torch.Tensor))
    return out


def logical_state_bytes(opt: torch.optim.Optimizer) -> int:
    """``sum(numel * element_size)`` over the state tensors: the textbook count, which ignores
    that a view keeps its whole base alive (GaLore's ``P = Vh[:r]`` keeps the full ``n x n``
    ``Vh`` of its SVD)."""
    return sum(t.numel() * t.element_size() for t in _iter_tensors(list(opt.state.values())))


def parity(galore: Any, ours: Any, W0: torch.Tensor, G: torch.Tensor) -> dict[str, float]:
    """One step of each from the same weight/gradient: relative difference of the updates."""
    group = {"rank": RANK, "update_proj_gap": 200, "scale": SCALE, "proj_type": "std"}
    w_g = nn.Parameter(W0.clone())
    w_g.grad = G.clone()
    galore([{"params": [w_g], **group}], lr=LR, eps=1e-6, weight_decay=0.0).step()
    w_o = nn.Parameter(W0.clone())
    w_o.grad = G.clone()
    ours([{"params": [w_o], **group, "projector": "svd"}], lr=LR, eps=1e-6, weight_decay=0.0).step()
    d_g = (w_g.detach() - W0).double()
    d_o = (w_o.detach() - W0).double()
    return {
        "update_rel_diff": float((d_g - d_o).norm() / d_g.norm()),
        "update_norm_galore": float(d_g.norm()),
        "update_norm_ours": float(d_o.norm()),
    }


def bench_size(n: int, galore: Any, ours: Any) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(n)
    W0 = torch.randn(n, n, generator=gen) / n**0.5
    G = torch.randn(n, n, generator=gen)
    reps_refresh, reps_step, reps_adamw = REPEATS.get(n, (3, 9, 15))
    numel = n * n
    rows: dict[str, dict[str, Any]] = {}

    def add(name: str, **fields: Any) -> None:
        rows[name] = fields
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in fields.items()
            if k != "times_s"
        )
        print(f"  [{n}] {name:<28} {shown}", flush=True)

    def group(gap: int, **extra: Any) -> dict[str, Any]:
        return {"rank": RANK, "update_proj_gap": gap, "scale": SCALE, "proj_type": "std", **extra}

    def make(cls: Any, gap: int, **extra: Any) -> Callable[[nn.Parameter], Any]:
        return lambda w: cls([{"params": [w], **group(gap, **extra)}], lr=LR)

    # non-refresh steps (and AdamW), interleaved
    steps: dict[str, Callable[[nn.Parameter], Any]] = {
        "adamw_foreach": lambda w: torch.optim.AdamW([w], lr=LR, foreach=True),
        "adamw_fused": lambda w: torch.optim.AdamW([w], lr=LR, fused=True),
    }
    if galore is not None:
        steps["galore_svd"] = make(galore, HUGE_GAP)
    if ours is not None:
        steps.update({f"ours_{p}": make(ours, HUGE_GAP, projector=p) for p in PROJECTORS})
    step_res = time_interleaved(steps, W0, G, max(reps_step, reps_adamw // 2))
    # refresh steps: the two exact-SVD ones together, the fast ones together
    slow: dict[str, Callable[[nn.Parameter], Any]] = {}
    fast: dict[str, Callable[[nn.Parameter], Any]] = {}
    if galore is not None:
        slow["galore_svd"] = make(galore, 1)
    if ours is not None:
        slow["ours_svd"] = make(ours, 1, projector="svd")
        fast.update({f"ours_{p}": make(ours, 1, projector=p) for p in PROJECTORS[1:]})
    refresh_res = time_interleaved(slow, W0, G, reps_refresh) if slow else {}
    refresh_res.update(time_interleaved(fast, W0, G, reps_step) if fast else {})

    for name, (t_step, times_step, opt) in step_res.items():
        fields: dict[str, Any] = {}
        if name in refresh_res:
            fields["refresh_ms"] = 1e3 * refresh_res[name][0]
        fields["step_ms"] = 1e3 * t_step
        fields["times_s"] = {"step": times_step}
        if name in refresh_res:
            fields["times_s"]["refresh"] = refresh_res[name][1]
        fields["state_bytes_per_param"] = optimizer_state_bytes(opt) / numel
        fields["logical_state_bytes_per_param"] = logical_state_bytes(opt) / numel
        if name.startswith("ours"):
            state = list(opt.state.values())
            resident = tensor_bytes([state, projector_cache_tensors(opt)])
            fields["resident_bytes_per_param"] = resident / numel
        add(name, **fields)
    del step_res, refresh_res

    adamw = rows["adamw_foreach"]["step_ms"]
    ratios: dict[str, dict[str, float]] = {}
    galore_ref = rows.get("galore_svd", {}).get("refresh_ms")
    for name, row in rows.items():
        r: dict[str, float] = {"step_vs_adamw": row["step_ms"] / adamw}
        if "refresh_ms" in row:
            r["refresh_vs_adamw"] = row["refresh_ms"] / adamw
            r["amortized_T200_vs_adamw"] = (row["refresh_ms"] + 199 * row["step_ms"]) / 200 / adamw
            if galore_ref is not None:
                r["refresh_speedup_vs_galore"] = galore_ref / row["refresh_ms"]
        ratios[name] = r
    out: dict[str, Any] = {"rows": rows, "ratios": ratios}
    if galore is not None and ours is not None and n == SIZES[0]:
        out["parity_first_step"] = parity(galore, ours, W0, G)
        print(f"  [{n}] parity (one step, svd): {out['parity_first_step']}", flush=True)
    return out


def table(results: dict[str, Any]) -> str:
    lines = [
        "| n | tool | refresh ms | step ms | refresh speedup vs GaLore | step / AdamW | "
        "amortized T=200 / AdamW | state B/param (storage) | state B/param (numel) | "
        "resident B/param |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, res in results.items():
        for name, row in res["rows"].items():
            r = res["ratios"][name]

            def f(v: Any, fmt: str = ".1f") -> str:
                return "" if v is None else format(v, fmt)

            lines.append(
                f"| {n} | {name} | {f(row.get('refresh_ms'))} | {f(row['step_ms'])} | "
                f"{f(r.get('refresh_speedup_vs_galore'))} | {f(r['step_vs_adamw'], '.2f')} | "
                f"{f(r.get('amortized_T200_vs_adamw'), '.2f')} | "
                f"{f(row['state_bytes_per_param'], '.3f')} | "
                f"{f(row['logical_state_bytes_per_param'], '.3f')} | "
                f"{f(row.get('resident_bytes_per_param'), '.3f')} |"
            )
    return "\n".join(lines)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "galore-torch", "bitsandbytes", "tensorly", "transformers"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def main() -> None:
    set_threads()
    galore, galore_err = galore_cls()
    ours, ours_err = ours_cls()
    for err in (galore_err, ours_err):
        if err:
            print(err, file=sys.stderr)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, sizes {SIZES}")
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    results = {str(n): bench_size(n, galore, ours) for n in SIZES}
    text = table(results)
    print(text)
    summary = {
        n: {
            name: {k: round(v, 2) for k, v in r.items()}
            for name, r in res["ratios"].items()
            if name.startswith(("ours", "galore"))
        }
        for n, res in results.items()
    }
    write_json(
        RESULTS,
        {
            "name": "optim_refresh",
            "unit": "milliseconds per optimizer step (median), bytes per parameter",
            "params": {
                "sizes": SIZES,
                "rank": RANK,
                "scale": SCALE,
                "lr": LR,
                "proj_type": "std",
                "dtype": "float32",
                "gradient": "fixed N(0, 1), seeded",
                "refresh": "update_proj_gap=1, after one warm-up step",
                "non_refresh": f"update_proj_gap={HUGE_GAP}, after the first step",
                "repeats": {str(k): v for k, v in REPEATS.items()},
                "threads": torch.get_num_threads(),
                "load_average_1min_at_start": load,
                "machine": platform.platform(),
                "versions": versions(),
                "anchor_errors": [e for e in (galore_err, ours_err) if e],
            },
            "results": results,
            "summary": summary,
            "table_markdown": text,
        },
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
