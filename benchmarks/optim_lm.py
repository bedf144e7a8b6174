"""Loss after K steps of a small causal LM on real text: SubspaceAdamW vs GaLore vs AdamW.

A tiny Llama-style model (byte-level, hidden 128, 4 layers) is trained on the Python standard
library's own source (offline) from the same initialization and the same batches with:

* ``torch.optim.AdamW`` (foreach), the full-rank reference;
* ``galore_torch.GaLoreAdamW`` 1.0 (exact SVD, moments not rotated), rank r = hidden / 4;
* ``subspaces.optim.SubspaceAdamW`` at the same rank with the ``svd`` projector (GaLore parity),
  ``svd`` + moment rotation, ``rsvd`` + rotation, and ``dct`` (+ rotation).

Same learning rate, betas, refresh gap and scale for every projected optimizer; the projected
group is the decoder's linear layers (GaLore's recipe), the rest runs plain AdamW. Prints the
held-out loss (nats/token), its gap to AdamW and to GaLore, and the mean step time.

Run: ``.venv/bin/python benchmarks/optim_lm.py [--steps 500] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _anchors import RESULTS_DIR, load_average, machine, today
from subspaces.experiments._lm import build_lm, eval_loss, lm_data, train_lm
from subspaces.optim import SubspaceAdamW, projected_param_groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--gap", type=int, default=50)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=None, help="run only these configurations")
    ap.add_argument("--out", default="optim_lm.json", help="file name under benchmarks/results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rank = args.hidden // 4
    data = lm_data(2_000_000, args.seq_len, num_eval=128, seed=args.seed)
    betas = (0.9, 0.95)
    common = dict(update_proj_gap=args.gap, scale=1.0)

    def ours(**kw):
        def make(model):
            groups = projected_param_groups(
                model, rank, include=("model.layers.*",), **common, **kw
            )
            return SubspaceAdamW(groups, lr=args.lr, betas=betas)

        return make

    def galore(model):
        from galore_torch import GaLoreAdamW

        groups = projected_param_groups(model, rank, include=("model.layers.*",), **common)
        groups[-1]["proj_type"] = "std"
        return GaLoreAdamW(groups, lr=args.lr, betas=betas, weight_decay=0.0, eps=1e-8)

    def adamw(model):
        return torch.optim.AdamW(
            model.parameters(), lr=args.lr, betas=betas, weight_decay=0.0, foreach=True
        )

    configs = {
        "adamw": adamw,
        "galore": galore,
        "ours_svd": ours(projector="svd"),
        "ours_svd_rotate": ours(projector="svd", moment_transfer="rotate"),
        "ours_rsvd_rotate": ours(projector="rsvd", moment_transfer="rotate"),
        "ours_dct_rotate": ours(projector="dct", moment_transfer="rotate"),
    }
    if args.only:
        unknown = set(args.only) - set(configs)
        if unknown:
            ap.error(f"unknown configurations {sorted(unknown)}; choose from {sorted(configs)}")
        configs = {k: v for k, v in configs.items() if k in args.only}
    results = {}
    for name, make in configs.items():
        try:
            model = build_lm(data.vocab_size, args.hidden, args.layers, args.seed)
            opt = make(model)
        except ImportError as exc:
            results[name] = {"error": f"not installed: {exc}"}
            print(f"{name:18s} not installed ({exc})")
            continue
        times: list[float] = []
        train_lm(
            model,
            opt,
            data,
            steps=args.steps,
            batch_size=args.batch,
            seq_len=args.seq_len,
            seed=args.seed,
            step_times=times,
        )
        loss = eval_loss(model, data)
        results[name] = {
            "eval_loss": loss,
            "step_ms_median": 1e3 * statistics.median(times),
            "step_ms_mean": 1e3 * statistics.mean(times),
        }
        print(
            f"{name:18s} eval loss {loss:.4f}   step {1e3 * statistics.mean(times):7.2f} ms "
            f"(median {1e3 * statistics.median(times):.2f})",
            flush=True,
        )
    ref = results.get("adamw", {}).get("eval_loss")
    gal = results.get("galore", {}).get("eval_loss")
    print()
    for name, r in results.items():
        if "eval_loss" not in r:
            continue
        line = f"{name:18s}"
        if ref is not None:
            r["gap_vs_adamw"] = r["eval_loss"] / ref - 1
            line += f" vs AdamW {100 * r['gap_vs_adamw']:+6.2f}%"
        if gal is not None:
            r["gap_vs_galore"] = r["eval_loss"] / gal - 1
            line += f"   vs GaLore {100 * r['gap_vs_galore']:+6.2f}%"
        print(line)
    out = {
        "benchmark": "optim_lm",
        "date": today(),
        "machine": machine(),
        "load_average": load_average(),
        "command": "python " + " ".join(sys.argv),
        "params": vars(args) | {"rank": rank},
        "results": results,
    }
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, args.out), "w") as fh:
        json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
