"""FNO: ours beside ``neuraloperator.models.FNO`` at an identical configuration.

Run (in an environment with ``neuraloperator``; without it only our rows are printed)::

    OMP_NUM_THREADS=1 python benchmarks/operators_fno.py [--repeats 15] [--seeds 3] [--epochs 12]

(``--seeds 0``: timing only.)

Configuration (both libraries): ``n_modes=(8, 8)``, 1 input and 1 output channel,
``hidden_channels=24``, 4 layers, lifting and projection channel ratio 2, grid positional
embedding, channel MLP with expansion 0.5 and soft-gating skip, linear FNO skip, dense weights,
float32, one thread. ``neuraloperator``'s ``n_modes`` counts kept frequencies the same way as
ours (``-(m // 2) .. (m - 1) // 2`` along leading dims, ``0 .. m // 2`` along the last), so the
two models have the same parameter count, and with ``neuraloperator``'s weights copied into ours
(``load_neuralop_state_dict``) the two compute the same function: the maximum absolute output
difference is printed. It is float32 rounding (about 1e-7 on outputs of size 0.1), not 0: our
``1 x 1`` convolutions are batched matrix products and our spectral transforms are pruned 1-D
FFTs, which sum the same terms in another order than ``mkldnn``'s convolution and ``rfftn``.

1. Time: forward, and forward + backward of the mean square output, on a batch of 32 inputs at
   ``16 x 16`` and ``64 x 64``; median over ``--repeats`` runs with the two models alternated in
   every repeat; ratio ours / neuraloperator (< 1: ours faster).
2. Error: both trained with the P30 protocol (``subspaces.experiments.P30_neural_operators``:
   Darcy 1000 train / 100 test, relative H1 loss, AdamW 5e-3, cosine, batch 32) for ``--epochs``
   on ``--seeds`` seeds (the same seeds, data and batch order for both); relative L2 test error at
   16 and zero-shot at 32, mean over seeds, ratio ours / neuraloperator.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from subspaces.experiments.P30_neural_operators import evaluate_errors, train_model
from subspaces.operators import FNO, darcy_flow, load_neuralop_state_dict

CONFIG = {"n_modes": (8, 8), "in_channels": 1, "out_channels": 1, "hidden_channels": 24}


def real_count(model: nn.Module) -> int:
    """Parameters counted in real numbers (a complex entry counts twice)."""
    return sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters())


def make(kind: str) -> nn.Module:
    if kind == "ours":
        return FNO(**CONFIG, n_layers=4)
    from neuralop.models import FNO as NeuralopFNO

    return NeuralopFNO(**CONFIG, n_layers=4, lifting_channel_ratio=2, projection_channel_ratio=2)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    kinds = ["ours"]
    try:
        make("neuralop")
        kinds.append("neuralop")
    except ImportError as error:
        print(f"neuraloperator not installed ({error}); printing our rows only")
    torch.manual_seed(0)
    models = {k: make(k) for k in kinds}
    for k, m in models.items():
        print(f"{k}: {real_count(m)} real parameters")
    if "neuralop" in models:
        twin = load_neuralop_state_dict(make("ours"), models["neuralop"].state_dict())
        with torch.no_grad():
            for n in (16, 32):
                x = torch.randn(4, 1, n, n)
                diff = float((twin(x) - models["neuralop"](x)).abs().max())
                print(f"same weights, {n}x{n}: max |ours - neuralop| = {diff:.3g}")

    print("\n| grid | pass | ours ms | neuralop ms | ratio |")
    print("|---|---|---|---|---|")
    for n in (16, 64):
        x = torch.randn(32, 1, n, n)
        runs: dict[tuple[str, str], list[float]] = {}
        for m in models.values():  # warm-up
            m(x).square().mean().backward()
        for _ in range(args.repeats):
            for k, m in models.items():
                with torch.no_grad():
                    runs.setdefault((k, "forward"), []).append(timed(lambda m=m, x=x: m(x)))
                runs.setdefault((k, "fwd+bwd"), []).append(
                    timed(lambda m=m, x=x: m(x).square().mean().backward())
                )
        for stage in ("forward", "fwd+bwd"):
            ours = statistics.median(runs[("ours", stage)]) * 1e3
            if "neuralop" in models:
                theirs = statistics.median(runs[("neuralop", stage)]) * 1e3
                print(f"| {n} | {stage} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.2f} |")
            else:
                print(f"| {n} | {stage} | {ours:.2f} | - | - |")

    if args.seeds == 0:
        return
    a, u = darcy_flow(1000, (16,), fine_grid=64, seed=0)[16]
    test = darcy_flow(100, (16, 32), fine_grid=64, seed=1)
    errors: dict[str, dict[int, list[float]]] = {k: {16: [], 32: []} for k in kinds}
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    for s in range(args.seeds):
        for k in kinds:
            torch.manual_seed(s)
            predictor, cpu = train_model(make(k), a, u, epochs=args.epochs, seed=s)
            for n, e in evaluate_errors(predictor, test).items():
                errors[k][n].append(e)
            seconds[k].append(cpu)
    print(f"\n| model | rel. L2 at 16 | at 32 (zero-shot) | train CPU s | ({args.seeds} seeds)")
    print("|---|---|---|---|")
    for k in kinds:
        e16, e32 = (statistics.mean(errors[k][n]) for n in (16, 32))
        print(f"| {k} | {e16:.4f} | {e32:.4f} | {statistics.mean(seconds[k]):.1f} |")
        print(f"  per seed 16: {[round(v, 4) for v in errors[k][16]]}")
        print(f"  per seed 32: {[round(v, 4) for v in errors[k][32]]}")
    if "neuralop" in kinds:
        for n in (16, 32):
            ratio = statistics.mean(errors["ours"][n]) / statistics.mean(errors["neuralop"][n])
            print(f"error ratio ours / neuralop at {n}: {ratio:.3f}")


if __name__ == "__main__":
    main()
