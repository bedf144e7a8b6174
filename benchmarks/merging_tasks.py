"""Merging eight 10M-parameter state_dicts: time and peak memory, ours vs mergekit.

Run: ``.venv/bin/python benchmarks/merging_tasks.py`` (about two minutes, 1 thread). With
mergekit importable (e.g. a scratch venv that sees this checkout, see ``BENCHMARKS.md``), the
same script also times mergekit's tensor-level merge (``GeneralizedTaskArithmeticMerge
.merge_group``, the function its ``mergekit-pytorch`` runs per tensor) on the same tensors.

Problem: a base model and 8 fine-tuned models of 10 float32 tensors of 1000 x 1000 (10,000,000
parameters, 40 MB each), fine-tuned = base + N(0, 0.01^2); generated with seed 0.

Measured, for task arithmetic (``lambda`` 0.3) and TIES (density 0.2, ``lambda`` 1):

* ``in_memory``: the 9 state_dicts in memory, :func:`subspaces.merging.merge` to a dict
  (median of 3 wall times, and CPU seconds), and mergekit's ``merge_group`` over the same tensors;
* ``file_to_file``: ``.safetensors`` files in, ``.safetensors`` out (:func:`run_recipe`, what
  ``subspaces merge`` runs), in a fresh subprocess each: wall and CPU seconds, and the peak
  resident memory added by the merge (``VmHWM`` at the end minus ``VmRSS`` just before the merge,
  from ``/proc/self/status``), in units of one model (40 MB). Targets (issue 11): <= 2 s and
  <= 3 models.

Writes ``benchmarks/results/merging_tasks.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from subspaces._io import write_json
from subspaces.merging import merge, save_safetensors

K, TENSORS, SHAPE = 8, 10, (1000, 1000)
MODEL_BYTES = TENSORS * SHAPE[0] * SHAPE[1] * 4
OUT = Path(__file__).parent / "results" / "merging_tasks.json"
CASES = {
    "task_arithmetic": {"lambda_": 0.3},
    "ties": {"density": 0.2, "lambda_": 1.0},
}

_CHILD = r"""
import json, os, sys, time
import torch
torch.set_num_threads(1)
from subspaces.merging.recipe import load_recipe, run_recipe

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return -1

from subspaces.merging import merge
merge([{"w": torch.ones(10)}], method="ties", base={"w": torch.zeros(10)})  # warm-up: imports
recipe = load_recipe(sys.argv[1])
before = status("VmRSS")
t0, c0 = time.perf_counter(), time.process_time()
run_recipe(recipe, sys.argv[2])
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "rss_before": before, "hwm": status("VmHWM")}))
"""


def make_models(seed: int = 0) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    base = {f"layers.{i}.weight": torch.randn(SHAPE, generator=g) for i in range(TENSORS)}
    models = [
        {n: v + 0.01 * torch.randn(SHAPE, generator=g) for n, v in base.items()} for _ in range(K)
    ]
    return base, models


def time_ours(base: Any, models: Any, method: str, options: dict[str, Any]) -> dict[str, float]:
    walls, cpus = [], []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        merge(models, method=method, base=base, **options)  # type: ignore[arg-type]
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}


def time_mergekit(base: Any, models: Any, method: str, options: dict[str, Any]) -> Any:
    try:
        from mergekit.merge_methods.base import TensorGroup
        from mergekit.merge_methods.registry import get
    except ImportError:
        return "not installed"
    mk = get(method)
    walls, cpus = [], []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        for name in base:
            group = TensorGroup.from_tensors([base[name], *(m[name] for m in models)], base_index=0)
            ids = [e.id for e in group.entries if not e.is_base]
            mk.merge_group(
                group,
                weight=dict.fromkeys(ids, 1.0),
                density=dict.fromkeys(ids, options.get("density", 1.0)),
                normalize=method == "ties",
                rescale=False,
                int8_mask=False,
                **{"lambda": options["lambda_"]},
            )
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}


def file_to_file(folder: Path, method: str, options: dict[str, Any]) -> dict[str, Any]:
    params = {("lambda" if k == "lambda_" else k): v for k, v in options.items()}
    recipe = {
        "method": method,
        "base": "base.safetensors",
        "models": [f"m{i}.safetensors" for i in range(K)],
        "parameters": params,
    }
    path = folder / f"{method}.json"
    path.write_text(json.dumps(recipe))
    out = folder / f"{method}-out.safetensors"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["peak_added_bytes"] = r["hwm"] - r["rss_before"]
    r["peak_added_models"] = r["peak_added_bytes"] / MODEL_BYTES
    out.unlink()
    return r


def main() -> None:
    torch.set_num_threads(1)
    base, models = make_models()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_safetensors(base, folder / "base.safetensors")
        for i, m in enumerate(models):
            save_safetensors(m, folder / f"m{i}.safetensors")
        for method, options in CASES.items():
            ours = time_ours(base, models, method, options)
            anchor = time_mergekit(base, models, method, options)
            files = file_to_file(folder, method, options)
            row = {
                "method": method,
                "options": options,
                "in_memory_ours": ours,
                "in_memory_mergekit": anchor,
                "ratio_mergekit_over_ours_wall": (
                    anchor["wall_s"] / ours["wall_s"] if isinstance(anchor, dict) else None
                ),
                "file_to_file_ours": files,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_json(
        OUT,
        {
            "name": "merging_tasks",
            "params": {
                "models": K,
                "parameters_per_model": TENSORS * SHAPE[0] * SHAPE[1],
                "model_bytes": MODEL_BYTES,
                "dtype": "float32",
                "threads": 1,
                "torch": torch.__version__,
                "uptime": os.popen("uptime").read().strip(),
            },
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
