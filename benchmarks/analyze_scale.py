"""``subspaces analyze`` at 10x the demo: a small CNN on 20,000 generated 16x16 images.

Run: ``.venv/bin/python benchmarks/analyze_scale.py`` (full: 20,000 training images, 2 epochs,
curvature on a seeded subset of 2,000 in batches of 500; about 10-15 minutes on 2 idle cores) or
``--quick`` (2,000 images, 1 epoch, curvature on 1,000 and a smaller final spectrum: a smoke
test of a few minutes).

The demo (``make demo``) trains a 9k-parameter MLP on 1,438 digits (8x8). Here the data are
20,000 training and 2,000 test images of 16x16 pixels (14x the samples, 4x the pixels), made
in-process from a seeded generator (ten class templates, random shifts and noise: no
download), and the model is a two-layer CNN with BatchNorm (about 11k parameters). The run goes
through :func:`subspaces.analyze.run_analyze`, the command line's code path, with the model and
data given as ``path/to/file.py:factory`` specs exactly as ``subspaces analyze --model
benchmarks/analyze_scale.py:make_model --data benchmarks/analyze_scale.py:make_data`` would.

What it reports, per phase (training steps, curvature tracking, final spectrum):

* the predicted cost printed before the phase (products x measured seconds per product; the
  budgets are upper estimates: a trace stops early when accurate, Lanczos when converged) and
  the actual products and seconds;
* peak resident memory (``ru_maxrss``) of the whole process, and the resident memory after the
  imports and after the data are built, so the increase of the run itself is visible.

Writes the figures as JSON to ``--json`` (default ``benchmarks/results/analyze_scale.json``,
atomically) and prints a table. Record ``uptime`` next to the figures: on a shared machine the
seconds depend on the load.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve()
RESULTS = HERE.parent / "results" / "analyze_scale.json"
SIDE = 16
CLASSES = 10
N_TRAIN = int(os.environ.get("ANALYZE_SCALE_N", "20000"))
N_TEST = max(N_TRAIN // 10, 200)


def make_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``N_TRAIN`` + ``N_TEST`` images ``(1, 16, 16)`` of ten classes, seeded, in memory.

    Each class is a smooth random template; a sample is its class template shifted by up to two
    pixels, scaled, plus pixel noise, so the classes overlap and the CNN keeps learning.

    Returns:
        ``(X_train, y_train, X_test, y_test)``.
    """
    g = torch.Generator().manual_seed(0)
    n = N_TRAIN + N_TEST
    coarse = torch.randn(CLASSES, 1, 4, 4, generator=g)
    templates = nn.functional.interpolate(coarse, size=(SIDE, SIDE), mode="bilinear")
    y = torch.randint(0, CLASSES, (n,), generator=g)
    X = templates[y]
    shifts = torch.randint(-2, 3, (n, 2), generator=g)
    for dx in range(-2, 3):  # shift in groups (no per-sample Python loop over 22,000 images)
        for dy in range(-2, 3):
            sel = (shifts[:, 0] == dx) & (shifts[:, 1] == dy)
            X[sel] = torch.roll(X[sel], shifts=(dx, dy), dims=(2, 3))
    scale = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)
    X = scale * X + 0.8 * torch.randn(n, 1, SIDE, SIDE, generator=g)
    return X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:], y[N_TRAIN:]


def make_model(in_dim: int, out_dim: int) -> nn.Module:
    """A small CNN with BatchNorm for ``(1, 16, 16)`` images (``in_dim`` = 256 pixels).

    Returns:
        The model.
    """
    if in_dim != SIDE * SIDE:
        raise ValueError(f"make_model expects {SIDE}x{SIDE} images, got in_dim={in_dim}")
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 4x4
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, out_dim),
    )


def _rss_mib() -> float:
    """Current resident memory of this process (MiB), from /proc (0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


COST = re.compile(r"^(?P<phase>[^:]+): up to (?P<products>\d+) products .* x (?P<ms>[\d.e+-]+) ms")


def _predicted(messages: list[str]) -> dict[str, dict[str, float]]:
    """``{"tracking": {...}, "final": {...}}`` from the cost lines printed before each phase."""
    out: dict[str, dict[str, float]] = {}
    for line in messages:
        m = COST.match(line)
        if not m:
            continue
        key = "tracking" if m["phase"].startswith("tracking") else "final"
        products, ms = int(m["products"]), float(m["ms"])
        out[key] = {
            "products": products,
            "ms_per_product": ms,
            "seconds": products * ms / 1e3,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2,000 images, 1 epoch, curvature on 1,000, smaller final spectrum (a smoke test)",
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--curvature-samples", type=int, default=None, help="default 2000")
    parser.add_argument("--curvature-batch-size", type=int, default=500)
    parser.add_argument("--every", type=int, default=None, help="default 100")
    parser.add_argument("--threads", default="auto", help="'auto' or a count")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    global N_TRAIN, N_TEST
    if args.quick:
        N_TRAIN, N_TEST = 2000, 200
        os.environ["ANALYZE_SCALE_N"] = str(N_TRAIN)  # the factory file is loaded again
    epochs = args.epochs or (1 if args.quick else 2)
    samples = args.curvature_samples or (1000 if args.quick else 2000)
    every = args.every or (32 if args.quick else 100)
    small = {"final_k": 10, "density_runs": 4, "density_steps": 30, "trace_rtol": 0.2}
    rss_imports = _rss_mib()

    from subspaces.analyze import AnalyzeConfig, _train, run_analyze

    finals: list[Any] = []
    real_final = _train._final_spectrum

    def timed_final(*a: Any, **kw: Any) -> Any:
        finals.append(real_final(*a, **kw))
        return finals[-1]

    _train._final_spectrum = timed_final  # the final phase's own seconds, for the table
    config = AnalyzeConfig(
        model=f"{HERE}:make_model",
        data=f"{HERE}:make_data",
        epochs=epochs,
        batch_size=64,
        lr=0.05,
        momentum=0.9,
        every=every,
        k=10,
        curvature_samples=samples,
        curvature_batch_size=args.curvature_batch_size,
        **(small if args.quick else {}),
    )
    data_mib = (N_TRAIN + N_TEST) * SIDE * SIDE * 4 / 2**20  # the images, float32, one copy
    messages: list[str] = []

    def log(message: str) -> None:
        messages.append(message)
        print(message, flush=True)

    threads: int | str = int(args.threads) if args.threads.isdigit() else args.threads
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        summary = run_analyze(config, Path(out) / "run", log=log, threads=threads)
        wall = time.perf_counter() - t0
    final = finals[-1]
    timing = summary["timing"]
    tracking_seconds = timing["curvature_seconds"] - final.seconds
    predicted = _predicted(messages)
    cfg = summary["config"]
    result: dict[str, Any] = {
        "uptime": subprocess.run(
            ["uptime"], check=False, capture_output=True, text=True
        ).stdout.strip(),
        "torch": torch.__version__,
        "threads": cfg["threads"],
        "num_train": cfg["num_train"],
        "num_test": cfg["num_test"],
        "image": [1, SIDE, SIDE],
        "num_params": cfg["num_params"],
        "epochs": epochs,
        "batch_size": config.batch_size,
        "every": config.every,
        "k": config.k,
        "final_k": config.final_k,
        "density": [config.density_runs, config.density_steps],
        "quick": args.quick,
        "curvature_samples": cfg["curvature_samples"],
        "curvature_batches": cfg["curvature_batches"],
        "phases": {
            "training (steps, no curvature)": {"seconds": timing["train_seconds"]},
            "tracking": {
                "predicted": predicted.get("tracking"),
                "products": sum(summary["curvature"]["matvecs"]),
                "checkpoints": len(summary["curvature"]["step"]),
                "seconds": tracking_seconds,
            },
            "final spectrum": {
                "predicted": predicted.get("final"),
                "products": summary["final"]["matvecs"],
                "seconds": final.seconds,
            },
        },
        "total_seconds": wall,
        "rss_mib": {
            "after_imports": round(rss_imports, 1),
            "data_one_copy": round(data_mib, 1),
            "peak": round(_peak_rss_mib(), 1),
        },
        "final_lambda_max": summary["final"]["eigenvalues"][0],
        "test_acc": summary["history"]["test_acc"][-1],
    }
    from subspaces._io import write_json

    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, result)
    print()
    print(f"{result['uptime']}")
    print(
        f"{cfg['num_train']} images 16x16, CNN {cfg['num_params']} parameters, {epochs} epochs, "
        f"curvature on {cfg['curvature_samples']} samples in {cfg['curvature_batches']} "
        f"batches, {cfg['threads']} thread(s)"
    )
    print(f"{'phase':<32} {'predicted':>24} {'actual':>24}")
    for name, phase in result["phases"].items():
        pred = phase.get("predicted")
        p = f"{pred['products']} prod, {pred['seconds']:.1f} s" if pred else "-"
        a = (
            f"{phase['products']} prod, {phase['seconds']:.1f} s"
            if "products" in phase
            else f"{phase['seconds']:.1f} s"
        )
        print(f"{name:<32} {p:>24} {a:>24}")
    print(
        f"total {wall:.1f} s; peak RSS {result['rss_mib']['peak']:.0f} MiB "
        f"(after imports {rss_imports:.0f} MiB); test accuracy {result['test_acc']:.3f}"
    )
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
