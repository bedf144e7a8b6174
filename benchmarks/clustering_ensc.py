"""EnSC and spectral clustering (ours) vs scikit-learn's SpectralClustering on the same affinity.

Run: ``.venv/bin/python benchmarks/clustering_ensc.py`` (1 thread; ``--n-per 200`` for a quick
run). Data: a union of 10 random 6-dimensional subspaces of ``R^64``, ``n_per`` points each
(500 by default: 5,000 points), Gaussian coefficients, relative noise 0.02, rows normalized.

Rows (time and clustering accuracy against the planted labels):

1. ``EnSC`` end to end (the steps of :class:`subspaces.clustering.EnSC`: elastic-net
   self-expression by FISTA with adaptive restart, sparse affinity ``|C| + |C|^T``, our spectral
   clustering), split into the self-expression and the spectral step;
2. the spectral step on the *same* EnSC affinity: ours
   (:func:`subspaces.clustering.spectral_clustering`: ``eigsh`` of the normalized affinity,
   row-normalized embedding, k-means++ with 10 restarts) vs scikit-learn's
   ``SpectralClustering(affinity="precomputed")`` (its default ``arpack`` eigensolver and k-means
   assignment);
3. references on the raw points: scikit-learn ``SpectralClustering`` with a 10-NN affinity and
   ``KMeans`` (the baselines a user would try first).

Writes ``benchmarks/results/clustering_ensc.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import time
from pathlib import Path

import torch

from subspaces._io import write_json
from subspaces.clustering import clustering_accuracy, spectral_clustering
from subspaces.clustering.ensc import elastic_net_self_expression, ensc_affinity

OUT = Path(__file__).parent / "results" / "clustering_ensc.json"
N_SUB, DIM, AMBIENT, NOISE = 10, 6, 64, 0.02


def data(n_per: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    parts, labels = [], []
    for k in range(N_SUB):
        U = torch.linalg.qr(torch.randn(AMBIENT, DIM, generator=g, dtype=torch.float64))[0]
        parts.append(torch.randn(n_per, DIM, generator=g, dtype=torch.float64) @ U.T)
        labels.append(torch.full((n_per,), k))
    X = torch.cat(parts)
    X = X / X.norm(dim=1, keepdim=True)
    X = X + NOISE * torch.randn(X.shape, generator=g, dtype=torch.float64) / AMBIENT**0.5
    X = X / X.norm(dim=1, keepdim=True)
    perm = torch.randperm(X.shape[0], generator=g)
    return X[perm], torch.cat(labels)[perm]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per", type=int, default=500)
    parser.add_argument("--max-iter", type=int, default=300)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    X, y = data(args.n_per)
    X = X.to(getattr(torch, args.dtype))
    n = X.shape[0]
    rows = []

    (C, info), t_se = timed(
        lambda: elastic_net_self_expression(X, max_iter=args.max_iter, tol=1e-6)
    )
    W, t_aff = timed(lambda: ensc_affinity(C))
    ours, t_ours = timed(lambda: spectral_clustering(W, N_SUB, random_state=0))
    acc_ensc = clustering_accuracy(y, ours)
    rows.append(
        {
            "method": f"EnSC end to end (ours, {info['n_iter']} FISTA iterations, "
            f"converged={info['converged']})",
            "seconds": t_se + t_aff + t_ours,
            "accuracy": acc_ensc,
            "self_expression_seconds": t_se,
            "affinity_nnz": int(W.nnz),
        }
    )
    rows.append(
        {
            "method": "spectral step on the EnSC affinity: ours",
            "seconds": t_ours,
            "accuracy": acc_ensc,
        }
    )
    from sklearn.cluster import KMeans as SkKMeans
    from sklearn.cluster import SpectralClustering as SkSpectral

    sk, t_sk = timed(
        lambda: SkSpectral(N_SUB, affinity="precomputed", random_state=0).fit_predict(W)
    )
    rows.append(
        {
            "method": "spectral step on the EnSC affinity: sklearn SpectralClustering",
            "seconds": t_sk,
            "accuracy": clustering_accuracy(y, sk),
        }
    )
    Xn = X.double().numpy()
    knn, t_knn = timed(
        lambda: SkSpectral(
            N_SUB, affinity="nearest_neighbors", n_neighbors=10, random_state=0
        ).fit_predict(Xn)
    )
    rows.append(
        {
            "method": "sklearn SpectralClustering, 10-NN affinity on the points",
            "seconds": t_knn,
            "accuracy": clustering_accuracy(y, knn),
        }
    )
    km, t_km = timed(lambda: SkKMeans(N_SUB, n_init=10, random_state=0).fit_predict(Xn))
    rows.append(
        {
            "method": "sklearn KMeans on the points",
            "seconds": t_km,
            "accuracy": clustering_accuracy(y, km),
        }
    )
    for r in rows:
        print(f"{r['method']:<78} {r['seconds']:8.2f} s  accuracy {r['accuracy']:.4f}")
    print(f"spectral step: sklearn / ours = {t_sk / t_ours:.2f}x")
    write_json(
        OUT,
        {
            "name": "clustering_ensc",
            "ours": t_ours,
            "anchor": t_sk,
            "ratio": t_sk / t_ours,
            "unit": "seconds of the spectral step on the same EnSC affinity (1 thread); "
            "anchor = sklearn SpectralClustering(affinity='precomputed')",
            "rows": rows,
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d"),
            "params": {
                "n": n,
                "subspaces": N_SUB,
                "dim": DIM,
                "ambient": AMBIENT,
                "noise": NOISE,
                "dtype": args.dtype,
                "max_iter": args.max_iter,
            },
        },
    )


if __name__ == "__main__":
    main()
