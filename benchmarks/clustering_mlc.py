"""MLC on digits features: seconds per epoch (initialization and MLC phases) and clustering.

Run: ``.venv/bin/python benchmarks/clustering_mlc.py`` (1 thread; about a minute on an idle
core). The features are the 64 standardized pixels of all 1797 bundled digits
(:func:`subspaces.experiments.P04_mlc_clustering.digits_features`); MLC runs with the P04
configuration (MLP 128-128, ``feature_dim`` 32, batch 300: 5 steps per epoch, each with a
``300 x 300`` Sinkhorn membership of 20 sweeps and 300 Cholesky factorizations of ``32 x 32``).
Reported: the median seconds of an MLC-phase epoch (``history_["seconds"]``), the seconds of the
whole fit (initialization epochs, MLC epochs, the final ``1797 x 1797`` membership and its
spectral clustering), and accuracy / NMI next to scikit-learn ``KMeans`` and 10-NN
``SpectralClustering`` on the same features (with their times). The anchor of the per-epoch time
is one epoch of plain MCR² with the true labels on the same network (``mcr2_loss``, no
Sinkhorn): what the membership costs on top of the supervised objective.

Writes ``benchmarks/results/clustering_mlc.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import statistics
import time
from pathlib import Path

import torch

from subspaces._io import write_json
from subspaces.clustering import (
    MLC,
    KMeans,
    MLCNetwork,
    SpectralClustering,
    clustering_accuracy,
    mcr2_loss,
    normalized_mutual_info,
)
from subspaces.experiments.P04_mlc_clustering import MLC_COMMON, MLC_CONFIG, digits_features

OUT = Path(__file__).parent / "results" / "clustering_mlc.json"


def supervised_epoch_seconds(X: torch.Tensor, y: torch.Tensor, epochs: int = 5) -> float:
    cfg = MLC_CONFIG["digits"]
    torch.manual_seed(0)
    net = MLCNetwork(X.shape[1], cfg["hidden_dims"], cfg["feature_dim"], cfg["feature_dim"])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(X.shape[0], generator=g)
        for i in range(X.shape[0] // 300):
            idx = order[i * 300 : (i + 1) * 300]
            Z, _ = net(X[idx])
            loss = mcr2_loss(Z, y[idx], eps=MLC_COMMON["eps"], num_classes=10)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    X, y = digits_features(None, seed=0)
    Xf = X.float()
    supervised = supervised_epoch_seconds(Xf, y)
    start = time.perf_counter()
    mlc = MLC(10, random_state=0, **MLC_COMMON, **MLC_CONFIG["digits"]).fit(Xf)
    fit_seconds = time.perf_counter() - start
    epoch = statistics.median(mlc.history_["seconds"])
    rows = [
        {
            "method": "MLC fit (30 init + 10 MLC epochs, final membership, spectral)",
            "seconds": fit_seconds,
            "accuracy": clustering_accuracy(y, mlc.labels_),
            "nmi": normalized_mutual_info(y, mlc.labels_),
        }
    ]
    for name, est in (
        ("sklearn KMeans", KMeans(10, random_state=0)),
        (
            "sklearn SpectralClustering 10-NN",
            SpectralClustering(10, affinity="nearest_neighbors", n_neighbors=10, random_state=0),
        ),
    ):
        t0 = time.perf_counter()
        labels = est.fit_predict(X)
        rows.append(
            {
                "method": name,
                "seconds": time.perf_counter() - t0,
                "accuracy": clustering_accuracy(y, labels),
                "nmi": normalized_mutual_info(y, labels),
            }
        )
    print(
        f"MLC epoch (median of {len(mlc.history_['seconds'])}): {epoch:.3f} s; "
        f"supervised MCR² epoch: {supervised:.3f} s; ratio {epoch / supervised:.2f}x"
    )
    for r in rows:
        print(
            f"{r['method']:<64} {r['seconds']:7.2f} s  acc {r['accuracy']:.3f}  NMI {r['nmi']:.3f}"
        )
    write_json(
        OUT,
        {
            "name": "clustering_mlc",
            "ours": epoch,
            "anchor": supervised,
            "ratio": epoch / supervised,
            "unit": "seconds per MLC-phase epoch on 1797 digits (5 steps of 300, 1 thread); "
            "anchor = one epoch of supervised MCR² (true labels, no Sinkhorn) on the same network",
            "rows": rows,
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d"),
            "params": {"n": int(X.shape[0]), **MLC_COMMON, **MLC_CONFIG["digits"]},
        },
    )


if __name__ == "__main__":
    main()
