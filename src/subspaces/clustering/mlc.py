r"""Manifold linearizing and clustering (MLC; Ding, Tong, Chan, Li, Ma & Haeffele, ICCV 2023).

MLC learns, at the same time, a representation ``Z = f(X)`` (unit-norm rows, ``d`` dims) meant
to map each manifold of the data to a linear subspace, and a doubly stochastic membership
``Pi (n, n)`` (row ``j`` is the soft group of sample ``j``), by maximizing the coding rate
reduction with an entropy reward on the membership,

.. math:: \max_\theta\ R(Z_\theta, \epsilon) - \gamma\, R_c(Z_\theta, \Pi_\theta, \epsilon)
   + \lambda\, \bar H(\Pi_\theta), \qquad \Pi_\theta = \mathrm{Sinkhorn}(C_\theta C_\theta^T /
   \eta),

where ``C`` is a second (cluster) head of the same network (unit-norm rows), ``Sinkhorn`` the
entropic projection onto doubly stochastic matrices (log-domain,
:func:`~subspaces.clustering.sinkhorn.sinkhorn_log`, differentiated through) and ``H-bar`` the
mean row entropy of ``Pi``. ``R`` and ``R_c`` are
:func:`~subspaces.clustering.coding_rate.coding_rate` and
:func:`~subspaces.clustering.coding_rate.class_conditional_rate` (with the ``n x n`` membership
each row of ``Pi`` is a group of total weight 1; a membership that is ``1/n_k`` on the blocks of
a partition gives MCR²'s hard-label ``R_c``). Without the entropy term ``R_c`` is smallest at a
permutation matrix (every sample its own group), the trivial solution the regularization rules
out. Training uses mini-batches (``Pi`` is ``batch x batch``).

Initialization (the paper's "one-shot initialization"): the features are first trained
self-supervised, then the cluster head is copied from the feature head so that the initial
membership follows the similarity of the pretrained features. The paper pretrains with image
augmentations (two augmented views must agree while the coding rate of all features grows); a
generic estimator has no augmentations, so here a sample's second view is one of its
``n_neighbors`` nearest neighbours in the input (a documented substitute, not the paper's
protocol). The final clusters are the spectral clustering of the symmetrized membership of the
whole training set (or of a nearest-neighbour graph of ``C`` beyond ``max_full_membership``
samples); each cluster's subspace is the top principal subspace of its features.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> U = torch.linalg.qr(torch.randn(6, 6, generator=g))[0]
    >>> X = torch.cat([torch.randn(60, 2, generator=g) @ U[:, :2].T,
    ...                torch.randn(60, 2, generator=g) @ U[:, 2:4].T])
    >>> # data already on subspaces: linear heads, no initialization phase, no entropy reward
    >>> mlc = MLC(2, feature_dim=4, hidden_dims=(), init_epochs=0, epochs=60, entropy=0.0,
    ...           batch_size=60, random_state=0)
    >>> labels = mlc.fit_predict(X)
    >>> from subspaces.clustering import clustering_accuracy
    >>> clustering_accuracy(torch.arange(120) // 60, labels)
    1.0
    >>> float(mlc.mean_principal_cosines()[0, 1]) < 0.1  # learned subspaces near-orthogonal
    True
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_positive_float, check_positive_int
from .._threads import intra_op_threads
from ..linalg.subspace import Subspace
from ._checks import as_generator, check_data, check_n_clusters, check_subspace_dim
from .base import ClusterEstimator, mean_principal_cosines, pairwise_principal_angles
from .coding_rate import class_conditional_rate, coding_rate
from .sinkhorn import sinkhorn_log
from .spectral import spectral_clustering

__all__ = ["MLC", "MLCNetwork", "mlc_loss"]

#: Sinkhorn sweeps for the membership of the whole training set (its columns sum to 1 exactly,
#: its rows to within what this many sweeps reach; the spectral clustering does not need more).
FINAL_SINKHORN_ITER = 200


def mlc_loss(
    Z: Tensor,
    C: Tensor,
    *,
    eps: float = 0.5,
    eta: float = 0.1,
    gamma: float = 1.0,
    entropy: float = 0.0,
    sinkhorn_iter: int = 20,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """MLC's loss ``-(R(Z) - gamma R_c(Z, Pi) + entropy H(Pi))``, ``Pi = Sinkhorn(C C^T / eta)``.

    ``H(Pi) = -sum_ij Pi_ij log Pi_ij / n`` is the mean row entropy of the membership.

    Args:
        Z: features ``(n, d)`` (unit-norm rows).
        C: cluster features ``(n, d_c)`` (unit-norm rows).
        eps: coding distortion.
        eta: Sinkhorn temperature (smaller: sharper groups).
        gamma: weight of the compression term.
        entropy: weight of the membership's mean row entropy.
        sinkhorn_iter: Sinkhorn sweeps (fixed, differentiated through).

    Returns:
        ``(loss, Pi, parts)``: the scalar loss, the ``(n, n)`` doubly stochastic membership and
        the detached terms ``{"rate", "compression", "entropy"}``.

    Example:
        >>> import torch
        >>> Z = torch.nn.functional.normalize(torch.randn(16, 4), dim=1)
        >>> loss, Pi, parts = mlc_loss(Z, Z)
        >>> Pi.shape, bool(torch.allclose(Pi.sum(0), torch.ones(16), atol=1e-5))
        (torch.Size([16, 16]), True)
    """
    log_pi = sinkhorn_log(C @ C.T, eta, max_iter=sinkhorn_iter, tol=0)
    Pi = log_pi.exp()
    rate = coding_rate(Z, eps)
    comp = class_conditional_rate(Z, Pi, eps)
    ent = -(Pi * log_pi).sum() / Pi.shape[0]
    loss = -(rate - gamma * comp + entropy * ent)
    parts = {"rate": rate.detach(), "compression": comp.detach(), "entropy": ent.detach()}
    return loss, Pi, parts


class MLCNetwork(nn.Module):
    """An MLP backbone with a feature head and a cluster head, both projected to the sphere.

    Args:
        in_dim: input features.
        hidden_dims: widths of the backbone (ReLU after each); ``()`` for linear heads.
        feature_dim: dimension ``d`` of ``Z``.
        cluster_dim: dimension of ``C``.

    Example:
        >>> net = MLCNetwork(10, (32,), 8, 8)
        >>> Z, C = net(torch.randn(5, 10))
        >>> Z.shape, C.shape
        (torch.Size([5, 8]), torch.Size([5, 8]))
    """

    def __init__(
        self, in_dim: int, hidden_dims: Sequence[int], feature_dim: int, cluster_dim: int
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden_dims:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU()]
            width = h
        self.backbone = nn.Sequential(*layers)
        self.feature_head = nn.Linear(width, feature_dim)
        self.cluster_head = nn.Linear(width, cluster_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Unit-norm features and cluster features.

        Args:
            x: inputs ``(n, in_dim)``.

        Returns:
            ``(Z, C)``.
        """
        h = self.backbone(x)
        Z = nn.functional.normalize(self.feature_head(h), dim=-1)
        C = nn.functional.normalize(self.cluster_head(h), dim=-1)
        return Z, C


class MLC(ClusterEstimator):
    """Manifold linearizing and clustering with the scikit-learn API.

    Args:
        n_clusters: number of clusters ``>= 1``.
        feature_dim: dimension ``d`` of the learned representation ``Z``.
        hidden_dims: widths of the MLP backbone (linear, batch norm, ReLU); ``()`` puts linear
            heads on the inputs.
        subspace_dim: dimension of every learned cluster subspace; ``None`` picks, per cluster,
            the fewest principal directions that hold 90% of its features' energy.
        eps: coding distortion (``eps^2 = 0.25`` by default).
        eta: temperature of the Sinkhorn membership ``Pi = Sinkhorn(C C^T / eta)``.
        gamma: weight of the compression term ``R_c``.
        entropy: weight of the membership's mean row entropy in the objective (rewards larger
            groups; 0 lets the membership sharpen towards a permutation, where ``R_c`` is
            smallest).
        epochs: passes over the data with the MLC objective.
        batch_size: samples per step (``Pi`` is ``batch x batch``).
        lr: Adam learning rate of the initialization phase.
        weight_decay: Adam weight decay.
        sinkhorn_iter: Sinkhorn sweeps per step (differentiated through).
        init_epochs: epochs of self-supervised initialization (maximize ``R(Z)`` plus
            ``invariance`` times the mean cosine between a sample's feature and that of one of
            its ``n_neighbors`` nearest input neighbours, the stand-in for the paper's
            augmented views) before the cluster head is copied from the feature head.
        n_neighbors: neighbours that serve as a sample's second view.
        invariance: weight of the view agreement during initialization.
        lr_cluster: Adam learning rate of the MLC phase (default: ``lr``).
        max_full_membership: largest ``n`` whose full ``n x n`` membership is clustered.
        num_threads: intra-op threads while fitting (one is fastest for the small matrices of
            a mini-batch and immune to oversubscription on a shared machine); ``None`` keeps
            torch's setting.
        random_state: ``None``, an int or a ``torch.Generator``.
        dtype: float32 (default) or float64.

    Attributes:
        labels_: ``(n,)`` labels of the training data.
        network_: the trained :class:`MLCNetwork`.
        membership_: ``(n, n)`` doubly stochastic membership of the training data (``None`` when
            ``n > max_full_membership``).
        subspaces_: one :class:`~subspaces.linalg.subspace.Subspace` of ``R^d`` per cluster.
        history_: per-epoch means of ``loss``, ``rate``, ``compression``, ``entropy`` and the
            epoch's ``seconds``.

    Raises:
        ValueError: at ``fit`` for invalid data or parameters (named, with their value).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> U = torch.linalg.qr(torch.randn(20, 4, generator=g))[0]
        >>> X = torch.cat([torch.randn(30, 2, generator=g) @ U[:, :2].T,
        ...                torch.randn(30, 2, generator=g) @ U[:, 2:].T])
        >>> mlc = MLC(2, feature_dim=8, hidden_dims=(16,), epochs=2, init_epochs=2,
        ...           batch_size=60, random_state=0).fit(X)
        >>> mlc.labels_.shape, len(mlc.subspaces_)
        (torch.Size([60]), 2)
        >>> Pi = mlc.membership_  # doubly stochastic: rows and columns sum to one
        >>> bool(torch.allclose(Pi.sum(0), Pi.sum(1)) and torch.allclose(Pi.sum(1), torch.ones(60)))
        True
    """

    def __init__(
        self,
        n_clusters: int = 2,
        *,
        feature_dim: int = 32,
        hidden_dims: Sequence[int] = (128, 128),
        subspace_dim: int | None = None,
        eps: float = 0.5,
        eta: float = 0.1,
        gamma: float = 1.0,
        entropy: float = 0.1,
        epochs: int = 10,
        batch_size: int = 300,
        lr: float = 1e-2,
        weight_decay: float = 1e-5,
        sinkhorn_iter: int = 20,
        init_epochs: int = 30,
        n_neighbors: int = 10,
        invariance: float = 10.0,
        lr_cluster: float | None = None,
        max_full_membership: int = 4000,
        num_threads: int | None = 1,
        random_state: int | torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.n_clusters = n_clusters
        self.feature_dim = feature_dim
        self.hidden_dims = hidden_dims
        self.subspace_dim = subspace_dim
        self.eps = eps
        self.eta = eta
        self.gamma = gamma
        self.entropy = entropy
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.sinkhorn_iter = sinkhorn_iter
        self.init_epochs = init_epochs
        self.n_neighbors = n_neighbors
        self.invariance = invariance
        self.lr_cluster = lr_cluster
        self.max_full_membership = max_full_membership
        self.num_threads = num_threads
        self.random_state = random_state
        self.dtype = dtype

    # ----- validation --------------------------------------------------------------------------
    def _validated(self, X: Any) -> tuple[Tensor, dict[str, Any]]:
        k = check_n_clusters(self.n_clusters)
        if self.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {self.dtype}")
        A = check_data(X, n_clusters=k, dtype=self.dtype)
        d = check_positive_int(self.feature_dim, "feature_dim")
        hidden = tuple(check_positive_int(h, "hidden_dims[i]") for h in self.hidden_dims)
        cfg = {
            "k": k,
            "d": d,
            "hidden": hidden,
            "eps": check_positive_float(self.eps, "eps"),
            "eta": check_positive_float(self.eta, "eta"),
            "gamma": check_positive_float(self.gamma, "gamma", allow_zero=True),
            "entropy": check_positive_float(self.entropy, "entropy", allow_zero=True),
            "epochs": check_positive_int(self.epochs, "epochs"),
            "batch": check_positive_int(self.batch_size, "batch_size", minimum=2),
            "lr": check_positive_float(self.lr, "lr"),
            "wd": check_positive_float(self.weight_decay, "weight_decay", allow_zero=True),
            "sinkhorn_iter": check_positive_int(self.sinkhorn_iter, "sinkhorn_iter"),
            "init_epochs": check_positive_int(self.init_epochs, "init_epochs", minimum=0),
            "n_neighbors": check_positive_int(self.n_neighbors, "n_neighbors"),
            "invariance": check_positive_float(self.invariance, "invariance", allow_zero=True),
            "lr_cluster": check_positive_float(
                self.lr if self.lr_cluster is None else self.lr_cluster, "lr_cluster"
            ),
            "max_full": check_positive_int(self.max_full_membership, "max_full_membership"),
        }
        if self.subspace_dim is not None:
            check_subspace_dim(self.subspace_dim, d, "subspace_dim")
        return A, cfg

    # ----- training ----------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> MLC:
        """Train the network on ``X`` and cluster it.

        Args:
            X: raw data or features ``(n, p)``.
            y: ignored.

        Returns:
            ``self``.

        Raises:
            ValueError: for invalid data or parameters.
            TypeError: for a ``dtype`` other than float32/float64.
            FloatingPointError: if the loss becomes non-finite.
        """
        A, cfg = self._validated(X)
        threads = (
            None
            if self.num_threads is None
            else check_positive_int(self.num_threads, "num_threads")
        )
        with intra_op_threads(threads):
            return self._fit(A, cfg)

    def _fit(self, A: Tensor, cfg: dict[str, Any]) -> MLC:
        g = as_generator(self.random_state)
        n = A.shape[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
            net = MLCNetwork(A.shape[1], cfg["hidden"], cfg["d"], cfg["d"]).to(self.dtype)
        batch = min(cfg["batch"], n)
        history: dict[str, list[float]] = {
            "loss": [],
            "rate": [],
            "compression": [],
            "entropy": [],
            "seconds": [],
        }

        def batches() -> list[Tensor]:
            order = torch.randperm(n, generator=g)
            steps = max(1, n // batch)
            return [order[i * batch : (i + 1) * batch] for i in range(steps)]

        if cfg["init_epochs"]:
            self._pretrain(net, A, cfg, g, batches)
        with torch.no_grad():  # one-shot initialization: C starts as Z
            net.cluster_head.weight.copy_(net.feature_head.weight)
            net.cluster_head.bias.copy_(net.feature_head.bias)
        opt = torch.optim.Adam(net.parameters(), lr=cfg["lr_cluster"], weight_decay=cfg["wd"])
        net.train()
        for _ in range(cfg["epochs"]):
            start = time.perf_counter()
            totals = torch.zeros(4, dtype=torch.float64)
            steps = batches()
            for idx in steps:
                Z, C = net(A[idx])
                loss, _, parts = mlc_loss(
                    Z,
                    C,
                    eps=cfg["eps"],
                    eta=cfg["eta"],
                    gamma=cfg["gamma"],
                    entropy=cfg["entropy"],
                    sinkhorn_iter=cfg["sinkhorn_iter"],
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                totals += torch.stack(
                    [loss.detach(), parts["rate"], parts["compression"], parts["entropy"]]
                ).double()
            totals /= len(steps)
            if not bool(torch.isfinite(totals).all()):
                raise FloatingPointError(
                    f"MLC training diverged (loss {float(totals[0])}); lower lr or raise eps"
                )
            history["loss"].append(float(totals[0]))
            history["rate"].append(float(totals[1]))
            history["compression"].append(float(totals[2]))
            history["entropy"].append(float(totals[3]))
            history["seconds"].append(time.perf_counter() - start)
        net.eval()
        self.network_ = net
        self.history_ = history
        Z, C = self._features(A)
        self.membership_: Tensor | None
        if n <= cfg["max_full"]:
            Pi = sinkhorn_log(
                C.double() @ C.double().T, cfg["eta"], max_iter=FINAL_SINKHORN_ITER, tol=0
            ).exp()
            self.membership_ = Pi.to(self.dtype)
            affinity = 0.5 * (Pi + Pi.T)
            affinity.fill_diagonal_(0.0)
            # the membership is dense and connected: no regularization of the embedding
            labels = spectral_clustering(affinity, cfg["k"], regularization=0.0, random_state=g)
        else:
            self.membership_ = None
            labels = self._knn_spectral(C, cfg["k"], g)
        self.labels_ = labels
        self.features_ = Z
        self.subspaces_ = self._cluster_subspaces(Z, labels, cfg["k"], cfg["d"])
        return self

    def _pretrain(
        self, net: MLCNetwork, A: Tensor, cfg: dict[str, Any], g: torch.Generator, batches: Any
    ) -> None:
        """Self-supervised initialization: expand ``Z`` (max ``R(Z)``), keeping neighbours close.

        MLC initializes from features pretrained with augmentations (two views of a sample must
        agree while the coding rate of all features grows). Without augmentations for generic
        data, a sample's view is one of its ``n_neighbors`` nearest neighbours in the input.
        """
        n = A.shape[0]
        m = min(cfg["n_neighbors"], n - 1)
        nbrs = torch.empty(n, max(m, 1), dtype=torch.long)
        Ad = A.double()
        sq = Ad.pow(2).sum(1)
        for i in range(0, n, 2048):
            D2 = sq[i : i + 2048, None] - 2 * Ad[i : i + 2048] @ Ad.T + sq[None, :]
            D2[torch.arange(D2.shape[0]), torch.arange(i, i + D2.shape[0])] = float("inf")
            nbrs[i : i + 2048] = D2.topk(max(m, 1), dim=1, largest=False).indices
        opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"], weight_decay=cfg["wd"])
        net.train()
        for _ in range(cfg["init_epochs"]):
            for idx in batches():
                pick = torch.randint(nbrs.shape[1], (idx.numel(),), generator=g)
                Z1, _ = net(A[idx])
                Z2, _ = net(A[nbrs[idx, pick]])
                agree = (Z1 * Z2).sum(1).mean()
                loss = -(coding_rate(Z1, cfg["eps"]) + cfg["invariance"] * agree)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    @staticmethod
    def _knn_spectral(C: Tensor, k: int, g: torch.Generator, neighbors: int = 20) -> Tensor:
        import scipy.sparse as sp

        Cd = C.double()
        n = Cd.shape[0]
        rows, cols, vals = [], [], []
        for i in range(0, n, 2048):
            S = Cd[i : i + 2048] @ Cd.T
            top = S.topk(min(neighbors + 1, n), dim=1)
            r = torch.arange(i, i + S.shape[0]).repeat_interleave(top.indices.shape[1])
            rows.append(r)
            cols.append(top.indices.flatten())
            vals.append(top.values.flatten().clamp_min(0))
        W = sp.csr_matrix(
            (torch.cat(vals).numpy(), (torch.cat(rows).numpy(), torch.cat(cols).numpy())),
            shape=(n, n),
        )
        W.setdiag(0)
        return spectral_clustering(W, k, random_state=g)

    def _cluster_subspaces(self, Z: Tensor, labels: Tensor, k: int, d: int) -> list[Subspace]:
        out = []
        Zd = Z.double()
        for j in range(k):
            Zj = Zd[labels == j]
            if Zj.shape[0] == 0:
                Zj = Zd
            _, s, Vh = torch.linalg.svd(Zj, full_matrices=False)
            if self.subspace_dim is not None:
                r = min(int(self.subspace_dim), Vh.shape[0])
            else:
                energy = (s**2).cumsum(0) / (s**2).sum()
                r = int((energy < 0.9).sum()) + 1
            out.append(Subspace(Vh[:r].T.contiguous()))
        return out

    @torch.no_grad()
    def _features(self, A: Tensor) -> tuple[Tensor, Tensor]:
        Zs, Cs = [], []
        for i in range(0, A.shape[0], 4096):
            Z, C = self.network_(A[i : i + 4096])
            Zs.append(Z)
            Cs.append(C)
        return torch.cat(Zs), torch.cat(Cs)

    def _check_input(self, X: Any) -> Tensor:
        self._check_fitted("network_")
        A = check_data(X, dtype=self.dtype)
        expected = self.network_.feature_head.in_features
        first = self.network_.backbone[0] if len(self.network_.backbone) else None
        p = first.in_features if isinstance(first, nn.Linear) else expected
        if A.shape[1] != p:
            raise ValueError(f"X has {A.shape[1]} features, the model was fitted with {p}")
        return A

    def transform(self, X: Any) -> Tensor:
        """The learned representation ``Z`` (unit-norm rows, ``(m, d)``) of ``X``.

        Args:
            X: data ``(m, p)``.

        Returns:
            ``(m, d)`` features.

        Raises:
            ValueError: if ``X`` has a different number of features than the training data.
        """
        return self._features(self._check_input(X))[0]

    def predict(self, X: Any) -> Tensor:
        """Label of the learned subspace that captures most of each sample's feature.

        Args:
            X: data ``(m, p)``.

        Returns:
            ``(m,)`` labels (``argmax_j ||U_j^T z||``).
        """
        Z = self.transform(X).double()
        scores = torch.stack([(Z @ S.basis.double()).norm(dim=1) for S in self.subspaces_], 1)
        return scores.argmax(1)

    def principal_angles(self) -> dict[tuple[int, int], Tensor]:
        """Principal angles between every pair of learned cluster subspaces.

        Returns:
            ``{(i, j): angles}`` for ``i < j``.
        """
        self._check_fitted("subspaces_")
        return pairwise_principal_angles(self.subspaces_)

    def mean_principal_cosines(self) -> Tensor:
        """``(k, k)`` mean cosine of the principal angles between learned cluster subspaces.

        Returns:
            The float64 matrix (0 = orthogonal, 1 on the diagonal).
        """
        self._check_fitted("subspaces_")
        return mean_principal_cosines(self.subspaces_)
