"""Supervised dictionary learning (ours) vs the scikit-learn two-stage pipelines a user would try.

Run: ``.venv/bin/python benchmarks/clustering_sdl.py`` (1 thread; ``--n-train 500`` for a quick
run). Data: the P25 generator (:func:`subspaces.experiments.P25_supervised_dictionary.make_data`:
20 features, five nuisance factors of sd 3, one discriminative factor of sd 0.5, noise sd 0.3, one
auxiliary covariate), ``n_train`` training and 5,000 test samples, ``r = 3`` components for all.

Rows (fit time, test accuracy):

1. ``SupervisedDictionary`` filter mode, LPGD, ``xi = 0.01``, ``alpha = 1e-3``, 500 iterations
   at most, one start (the SVD start) and 3 starts;
2. the same with block coordinate descent;
3. scikit-learn ``PCA(3)`` + ``LogisticRegression`` (the anchor: the cheapest pipeline);
4. scikit-learn ``DictionaryLearning(3, alpha=0.1, max_iter=50, lasso_lars)`` +
   ``LogisticRegression``.

Writes ``benchmarks/results/clustering_sdl.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from subspaces._io import write_json
from subspaces.clustering import SupervisedDictionary
from subspaces.experiments.P25_supervised_dictionary import make_data

OUT = Path(__file__).parent / "results" / "clustering_sdl.json"


def timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    d = make_data(0, args.n_train, args.n_test)
    X, a, y = d["X_train"], d["a_train"], d["y_train"]
    rows = []
    for solver in ("lpgd", "bcd"):
        for n_init in (1, 3):
            model = SupervisedDictionary(
                3,
                xi=0.01,
                alpha=1e-3,
                mode="filter",
                solver=solver,
                max_iter=500,
                n_init=n_init,
                random_state=0,
            )
            fitted, seconds = timed(lambda model=model: model.fit(X, y, covariates=a))
            pred = fitted.predict(d["X_test"], covariates=d["a_test"]).numpy()
            rows.append(
                {
                    "method": f"SDL filter {solver}, {n_init} start(s), {fitted.n_iter_} iter",
                    "seconds": seconds,
                    "accuracy": float((pred == d["y_test"]).mean()),
                    "objective": fitted.objective_history_[-1],
                }
            )
    from sklearn.decomposition import PCA, DictionaryLearning
    from sklearn.linear_model import LogisticRegression

    def pipeline(decomp: Any) -> float:
        codes = decomp.fit_transform(X)
        clf = LogisticRegression().fit(np.hstack([codes, a]), y)
        return float(
            clf.score(np.hstack([decomp.transform(d["X_test"]), d["a_test"]]), d["y_test"])
        )

    acc, t_pca = timed(lambda: pipeline(PCA(3, random_state=0)))
    rows.append(
        {"method": "sklearn PCA(3) + LogisticRegression", "seconds": t_pca, "accuracy": acc}
    )
    acc, t_dl = timed(
        lambda: pipeline(
            DictionaryLearning(
                3,
                alpha=0.1,
                max_iter=50,
                transform_algorithm="lasso_lars",
                transform_alpha=0.1,
                random_state=0,
            )
        )
    )
    rows.append(
        {
            "method": "sklearn DictionaryLearning(3) + LogisticRegression",
            "seconds": t_dl,
            "accuracy": acc,
        }
    )
    for r in rows:
        print(f"{r['method']:<58} {r['seconds']:8.3f} s  accuracy {r['accuracy']:.4f}")
    ours = rows[0]["seconds"]
    print(f"SDL (LPGD, 1 start) / PCA+LR = {ours / t_pca:.1f}x; / DL+LR = {ours / t_dl:.2f}x")
    write_json(
        args.out,
        {
            "name": "clustering_sdl",
            "ours": ours,
            "anchor": t_dl,
            "ratio": t_dl / ours,
            "unit": "seconds to fit (1 thread); ours = SDL filter LPGD one start, anchor = "
            "sklearn DictionaryLearning + LogisticRegression",
            "rows": rows,
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d"),
            "params": {"n_train": args.n_train, "n_test": args.n_test, "p": 20, "r": 3},
        },
    )


if __name__ == "__main__":
    main()
