"""ACT and G-ACT: clustered steering vectors chosen per token by per-layer probes.

Both methods start from contrastive activations: for prompt ``i`` and layer ``l``, ``pos`` is
the activation of the prompt written in the target concept (e.g. the target programming
language), ``neg`` the same prompt in the source concept, and ``delta_i = pos_i - neg_i``.

- :class:`ACT` (adaptive activation steering, Wang et al. 2025, arXiv 2406.00034): per layer
  the differences are clustered (k-means, :class:`~subspaces.steering.ClusteredDirections`) into
  ``k`` steering vectors (cluster means, natural scale). A per-layer probe with ``k + 1``
  classes (class 0: "already in the target concept"; class ``1 + j``: "source concept, cluster
  ``j``") is fitted once on the prompt activations. While the model runs, every token's
  activation at the layer is read by the probe, which chooses the vector of the most probable
  cluster ``j*`` and gates its intensity by ``1 - p(target)`` (adaptive intensity):
  ``h <- h + alpha * (1 - p_0(h)) * c_{j*}``.
- :class:`GACT` (gradient-refined ACT, Sharma & Raman 2025, arXiv 2506.18887): the same
  clustered vectors and probe-gated injection, but the probes are *refined online by gradient
  steps* on the activations met in use (:meth:`GACT.refine`, streaming mini-batches of labelled
  activations, e.g. at every position of contrastive continuations instead of the prompt's
  last token only), and only a subset of layers is steered, chosen by probe accuracy
  (:meth:`GACT.select_layers`), which bounds the per-layer probing overhead.

What the abstract specifies is implemented; details the abstract leaves open are choices made
here and documented: the probe's label set (target + one class per source cluster), the
gate ``1 - p_0`` (ACT's adaptive intensity), Adam as the online optimizer, and layer selection
by held-out probe accuracy.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_float_tensor, check_positive_float, check_positive_int
from .collect import collect_activations
from .directions import ClusteredDirections
from .probes import LinearProbe
from .sites import Site, find_sites, register_site_hook, resolve_site

__all__ = ["ACT", "GACT"]


def _pairs(
    pos_by_site: Mapping[str, Tensor], neg_by_site: Mapping[str, Tensor], keys: Sequence[str]
) -> None:
    for key in keys:
        if key not in pos_by_site or key not in neg_by_site:
            raise ValueError(f"activations for site {key!r} are missing")
        pos = check_float_tensor(pos_by_site[key], f"pos[{key!r}]", ndim=2)
        neg = check_float_tensor(neg_by_site[key], f"neg[{key!r}]", ndim=2)
        if pos.shape != neg.shape:
            raise ValueError(
                f"pos and neg activations at {key!r} must be paired (same shape), got "
                f"{tuple(pos.shape)} and {tuple(neg.shape)}"
            )


class ACT:
    """Adaptive activation steering: clustered vectors, a fixed per-layer probe picks one.

    Args:
        n_clusters: steering vectors per layer (k-means clusters of the differences).
        sites: the sites to read and steer (``Site`` objects or module names); default: the
            decoder-block outputs of every layer, found at :meth:`fit`.
        l2: ridge strength of the probes.
        adaptive: gate the intensity by ``1 - p(target)`` (ACT); ``False`` adds the chosen
            vector at full strength.
        normalize_clusters: cluster unit-normalized differences (directions only).
        generator: random source of k-means.

    Attributes:
        site_keys_: the keys of the fitted sites, in layer order.
        clusters_: ``{site: ClusteredDirections}``.
        probes_: ``{site: LinearProbe}`` with classes ``0..k``.
        steered_: the sites steered by :meth:`apply` (all fitted sites for ACT).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> neg = torch.randn(60, 4, generator=g, dtype=torch.float64)
        >>> shift = torch.tensor([9.0, 0.0, 0.0, 0.0], dtype=torch.float64)
        >>> act = ACT(n_clusters=1).fit_activations({"l0": neg + shift}, {"l0": neg})
        >>> v = act.steering_vector("l0", neg[:2])  # source activations: full vector
        >>> torch.allclose(v, shift.expand(2, 4), atol=0.2)
        True
        >>> float(act.steering_vector("l0", (neg + shift)[:1]).norm()) < 1.0  # already target
        True
    """

    def __init__(
        self,
        n_clusters: int = 2,
        *,
        sites: Sequence[Site | str] | None = None,
        l2: float = 1e-3,
        adaptive: bool = True,
        normalize_clusters: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.n_clusters = check_positive_int(n_clusters, "n_clusters")
        self.sites = None if sites is None else list(sites)
        self.l2 = l2
        self.adaptive = bool(adaptive)
        self.normalize_clusters = normalize_clusters
        self.generator = generator

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_clusters={self.n_clusters}, adaptive={self.adaptive})"

    # ----- fitting -----------------------------------------------------------------------------
    def _resolve(self, model: nn.Module) -> list[Site]:
        if self.sites is None:
            return find_sites(model, kind="block")
        return [resolve_site(model, s) for s in self.sites]

    def fit(
        self,
        model: nn.Module,
        pos_prompts: Any,
        neg_prompts: Any,
        *,
        token: str | Tensor = "last",
        batch_size: int | None = None,
        pad_token_id: int = 0,
    ) -> ACT:
        """Collect contrastive activations from ``model`` and fit clusters and probes.

        Args:
            model: the causal LM.
            pos_prompts: prompts in the target concept (anything
                :func:`~subspaces.steering.collect_activations` accepts).
            neg_prompts: the same prompts in the source concept (paired with ``pos_prompts``).
            token: which token's activation represents a prompt (default the last).
            batch_size: forward batch size of the collection.
            pad_token_id: padding id when prompts are a list of tensors.

        Returns:
            ``self``.
        """
        sites = self._resolve(model)
        kw: dict[str, Any] = {"token": token, "batch_size": batch_size}
        kw["pad_token_id"] = pad_token_id
        pos = collect_activations(model, pos_prompts, sites, **kw)
        neg = collect_activations(model, neg_prompts, sites, **kw)
        self._sites = {s.key: s for s in sites}
        return self.fit_activations(pos, neg)

    def fit_activations(
        self, pos_by_site: Mapping[str, Tensor], neg_by_site: Mapping[str, Tensor]
    ) -> ACT:
        """Fit clusters and probes from paired activations ``{site: (n, d)}``.

        Args:
            pos_by_site: target-concept activations per site.
            neg_by_site: source-concept activations per site, row ``i`` paired with
                ``pos_by_site[site][i]``.

        Returns:
            ``self``.

        Raises:
            ValueError: for unpaired or missing activations, or too few pairs.
        """
        keys = list(pos_by_site)
        if not keys:
            raise ValueError("no sites: pos_by_site is empty")
        _pairs(pos_by_site, neg_by_site, keys)
        if not hasattr(self, "_sites") or set(self._sites) != set(keys):
            self._sites = {k: Site(k, -1, "module") for k in keys}
        self.site_keys_ = keys
        self.clusters_: dict[str, ClusteredDirections] = {}
        self.probes_: dict[str, LinearProbe] = {}
        self._centroids: dict[str, Tensor] = {}
        for key in keys:
            pos, neg = pos_by_site[key].double(), neg_by_site[key].double()
            clusters = ClusteredDirections(
                self.n_clusters, normalize=self.normalize_clusters, generator=self.generator
            ).fit(pos, neg)
            X, y = self._probe_data(clusters, pos, neg)
            self.clusters_[key] = clusters
            self.probes_[key] = LinearProbe(self.l2).fit(X, y)
            self._centroids[key] = clusters.centroids_.double()
        self.steered_ = list(keys)
        return self

    @staticmethod
    def _probe_data(
        clusters: ClusteredDirections, pos: Tensor, neg: Tensor
    ) -> tuple[Tensor, Tensor]:
        z = clusters.predict(pos - neg)
        X = torch.cat([pos, neg])
        y = torch.cat([torch.zeros(pos.shape[0], dtype=torch.long), 1 + z])
        return X, y

    def _require_fitted(self) -> None:
        if not hasattr(self, "probes_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted: call fit() first")

    def probe_labels(self, key: str, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
        """The probe's training pairs ``(X, y)`` for paired activations at ``key``.

        Class 0 for the target-concept rows, ``1 + cluster`` for the source rows (the cluster
        of their difference, nearest centroid).

        Args:
            key: a fitted site key.
            pos: ``(n, d)`` target-concept activations.
            neg: ``(n, d)`` paired source-concept activations.

        Returns:
            ``X (2n, d)`` and ``y (2n,)``.
        """
        self._require_fitted()
        return self._probe_data(self.clusters_[key], pos.double(), neg.double())

    def probe_accuracy(
        self, pos_by_site: Mapping[str, Tensor], neg_by_site: Mapping[str, Tensor]
    ) -> dict[str, float]:
        """Accuracy of each site's probe on paired activations (labels as in training).

        Args:
            pos_by_site: target-concept activations per site.
            neg_by_site: paired source-concept activations per site.

        Returns:
            ``{site: accuracy}`` for the fitted sites present in the inputs.
        """
        self._require_fitted()
        keys = [k for k in self.site_keys_ if k in pos_by_site]
        _pairs(pos_by_site, neg_by_site, keys)
        out = {}
        for key in keys:
            X, y = self.probe_labels(key, pos_by_site[key], neg_by_site[key])
            out[key] = self.probes_[key].score(X, y)
        return out

    # ----- steering ----------------------------------------------------------------------------
    def steering_vector(self, key: str, h: Tensor, alpha: float = 1.0) -> Tensor:
        """The vector added to activations ``h (..., d)`` at site ``key``.

        ``alpha * (1 - p_0(h)) * c_{j*}`` with ``j* = argmax_j p_{1+j}(h)`` (without the gate
        when ``adaptive=False``).

        Args:
            key: a fitted site key.
            h: activations, last dimension ``d``.
            alpha: strength.

        Returns:
            A tensor shaped like ``h`` (its dtype).

        Raises:
            ValueError: for a site that was not fitted.
        """
        self._require_fitted()
        if key not in self.probes_:
            raise ValueError(f"site {key!r} was not fitted; fitted sites: {self.site_keys_}")
        flat = h.detach().reshape(-1, h.shape[-1])
        with torch.no_grad():
            p = torch.softmax(self.probes_[key].logits(flat), dim=-1)
            choice = p[:, 1:].argmax(dim=-1)
            vec = self._centroids[key][choice]
            if self.adaptive:
                vec = vec * (1.0 - p[:, :1])
        return (alpha * vec).to(h.dtype).reshape(h.shape)

    @contextmanager
    def apply(
        self, model: nn.Module, alpha: float = 1.0, *, sites: Sequence[str] | None = None
    ) -> Iterator[list[str]]:
        """Steer ``model`` inside a ``with`` block (every token, every steered site).

        Args:
            model: the model the steering was fitted on.
            alpha: strength (``0``: no hook is installed, an exact no-op).
            sites: override the steered sites (default ``steered_``).

        Yields:
            The steered site keys.

        Raises:
            ValueError: for a site that was not fitted.
        """
        self._require_fitted()
        keys = list(self.steered_ if sites is None else sites)
        for key in keys:
            if key not in self.probes_:
                raise ValueError(f"site {key!r} was not fitted; fitted sites: {self.site_keys_}")
        handles = []
        try:
            if alpha != 0:
                for key in keys:
                    site = self._site(model, key)

                    def fn(h: Tensor, key: str = key) -> Tensor:
                        return h + self.steering_vector(key, h, alpha)

                    handles.append(register_site_hook(model, site, fn))
            yield keys
        finally:
            for handle in handles:
                handle.remove()

    def _site(self, model: nn.Module, key: str) -> Site:
        site = self._sites.get(key)
        if site is not None and site.layer >= 0:
            return site
        name = key[: -len(":input")] if key.endswith(":input") else key
        resolved = resolve_site(model, name)
        if key.endswith(":input"):
            resolved = Site(resolved.name, resolved.layer, "residual_pre")
        return resolved


class GACT(ACT):
    """Gradient-refined ACT: probes refined online, only the most reliable layers steered.

    Fitting starts exactly as :class:`ACT` (clusters and probes on the prompt activations);
    :meth:`refine` then takes Adam steps on the probes' regularized cross-entropy for each new
    mini-batch of labelled activations (call it on a stream, e.g. activations at every position
    of contrastive continuations, as the model is used), and :meth:`select_layers` keeps the
    ``n_layers`` sites whose probes are most accurate on held-out pairs.

    Args:
        n_clusters: steering vectors per layer.
        sites: candidate sites (default every decoder block).
        l2: ridge strength of the probes.
        adaptive: gate the intensity by ``1 - p(target)``.
        refine_lr: Adam step size of the online refinement.
        refine_steps: gradient steps per refinement batch.
        normalize_clusters: spherical k-means on the differences.
        generator: random source of k-means.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> neg = torch.randn(200, 4, generator=g, dtype=torch.float64)
        >>> pos = neg + torch.tensor([2.0, 0, 0, 0], dtype=torch.float64)
        >>> gact = GACT(n_clusters=1).fit_activations({"a": pos[:8]}, {"a": neg[:8]})
        >>> before = gact.probe_accuracy({"a": pos[100:]}, {"a": neg[100:]})["a"]
        >>> for i in range(0, 100, 20):
        ...     _ = gact.refine({"a": pos[i:i + 20]}, {"a": neg[i:i + 20]})
        >>> gact.probe_accuracy({"a": pos[100:]}, {"a": neg[100:]})["a"] >= before
        True
    """

    def __init__(
        self,
        n_clusters: int = 2,
        *,
        sites: Sequence[Site | str] | None = None,
        l2: float = 1e-3,
        adaptive: bool = True,
        refine_lr: float = 0.05,
        refine_steps: int = 1,
        normalize_clusters: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(
            n_clusters,
            sites=sites,
            l2=l2,
            adaptive=adaptive,
            normalize_clusters=normalize_clusters,
            generator=generator,
        )
        self.refine_lr = refine_lr
        self.refine_steps = check_positive_int(refine_steps, "refine_steps")

    @classmethod
    def from_act(cls, act: ACT, *, refine_lr: float = 0.05, refine_steps: int = 1) -> GACT:
        """A :class:`GACT` that starts from a fitted :class:`ACT`'s clusters and probes.

        G-ACT's fit is ACT's (Sharma & Raman 2025, "Steering Conceptual Bias via Transformer
        Latent-Subspace Activation", arXiv:2506.18887), so when both are wanted on the same
        prompts this skips the second collection and probe fit: the result equals
        ``GACT(...).fit(...)`` with the same settings and an identically seeded generator.
        The clusters and probes are deep copies (refining the G-ACT leaves ``act`` as it is).

        Args:
            act: a fitted ACT (not modified).
            refine_lr: Adam step size of the online refinement.
            refine_steps: gradient steps per refinement batch.

        Returns:
            The new, fitted G-ACT.

        Raises:
            TypeError: if ``act`` is not an :class:`ACT`.
            RuntimeError: if ``act`` is not fitted.

        Example:
            >>> g = torch.Generator().manual_seed(0)
            >>> neg = torch.randn(40, 4, generator=g, dtype=torch.float64)
            >>> pos = neg + torch.tensor([2.0, 0, 0, 0], dtype=torch.float64)
            >>> act = ACT(1).fit_activations({"a": pos}, {"a": neg})
            >>> gact = GACT.from_act(act, refine_steps=3)
            >>> bool((gact.probes_["a"].coef_ == act.probes_["a"].coef_).all())
            True
            >>> gact.probes_["a"] is act.probes_["a"], gact.refine_steps
            (False, 3)
        """
        if not isinstance(act, ACT):
            raise TypeError(f"act must be an ACT, got {type(act).__name__}")
        act._require_fitted()
        out = cls(
            act.n_clusters,
            sites=act.sites,
            l2=act.l2,
            adaptive=act.adaptive,
            refine_lr=refine_lr,
            refine_steps=refine_steps,
            normalize_clusters=act.normalize_clusters,
            generator=act.generator,
        )
        out._sites = dict(act._sites)
        out.site_keys_ = list(act.site_keys_)
        out.clusters_ = copy.deepcopy(act.clusters_)
        out.probes_ = copy.deepcopy(act.probes_)
        out._centroids = copy.deepcopy(act._centroids)
        out.steered_ = list(act.steered_)
        return out

    def refine(self, pos_by_site: Mapping[str, Tensor], neg_by_site: Mapping[str, Tensor]) -> GACT:
        """One online refinement step of every probe on a new batch of paired activations.

        Labels follow the probes' scheme (0 for target rows, ``1 + cluster`` for source rows,
        the cluster of each pair's difference); the clusters themselves are kept fixed.

        Args:
            pos_by_site: ``{site: (m, d)}`` target-concept activations (sites not given are
                left as they are).
            neg_by_site: paired source-concept activations.

        Returns:
            ``self``.
        """
        self._require_fitted()
        keys = [k for k in self.site_keys_ if k in pos_by_site]
        _pairs(pos_by_site, neg_by_site, keys)
        for key in keys:
            X, y = self.probe_labels(key, pos_by_site[key], neg_by_site[key])
            self.probes_[key].partial_fit(X, y, lr=self.refine_lr, steps=self.refine_steps)
        self.n_refined_ = getattr(self, "n_refined_", 0) + 1
        return self

    def refine_until_stable(
        self,
        batches: Iterable[tuple[Mapping[str, Tensor], Mapping[str, Tensor]]],
        val_pos: Mapping[str, Tensor],
        val_neg: Mapping[str, Tensor],
        *,
        patience: int = 2,
        min_delta: float = 0.0,
    ) -> dict[str, dict[str, Any]]:
        """Refine the probes on a stream until their held-out accuracy stops rising, per layer.

        After every batch of ``batches`` the still-active probes are refined (:meth:`refine`)
        and scored on the held-out pairs; a layer stops (its probe is frozen) once its
        accuracy has not exceeded its best by more than ``min_delta`` for ``patience``
        consecutive batches, and its probe is then reset to the best one seen (early stopping).
        The stream is read lazily and no further once every layer has stopped.

        Args:
            batches: iterable of ``(pos_by_site, neg_by_site)`` paired activations (every
                fitted site present).
            val_pos: held-out target-concept activations per site (the stopping set).
            val_neg: paired held-out source-concept activations.
            patience: batches without a rise after which a layer stops.
            min_delta: smallest accuracy increase that counts as a rise (``>= 0``).

        Returns:
            Per site key: ``curve`` (held-out accuracy before refinement, then after each
            batch the layer took), ``best``, ``best_batch`` (index into ``curve``),
            ``batches`` (batches refined on), ``converged`` (stopped by ``patience``, i.e. the
            last ``patience`` entries of ``curve`` never beat ``best`` by more than
            ``min_delta``; false when the stream ended first) and ``final`` (held-out accuracy
            of the kept probe, recomputed; equals ``best``). Also stored in ``refine_history_``.

        Raises:
            ValueError: for a ``patience`` below 1, a negative ``min_delta`` or an empty stream.
        """
        self._require_fitted()
        patience = check_positive_int(patience, "patience")
        min_delta = check_positive_float(min_delta, "min_delta", allow_zero=True)
        keys = list(self.site_keys_)
        _pairs(val_pos, val_neg, keys)
        acc0 = self.probe_accuracy(val_pos, val_neg)
        hist: dict[str, dict[str, Any]] = {
            k: {"curve": [acc0[k]], "best": acc0[k], "best_batch": 0, "converged": False}
            for k in keys
        }
        best_probe = {k: copy.deepcopy(self.probes_[k]) for k in keys}
        active = set(keys)
        n_seen = 0
        for pos, neg in batches:
            n_seen += 1
            run = [k for k in keys if k in active]
            self.refine({k: pos[k] for k in run}, {k: neg[k] for k in run})
            acc = self.probe_accuracy({k: val_pos[k] for k in run}, {k: val_neg[k] for k in run})
            for k in run:
                h = hist[k]
                h["curve"].append(acc[k])
                if acc[k] > h["best"] + min_delta:
                    h["best"], h["best_batch"] = acc[k], len(h["curve"]) - 1
                    best_probe[k] = copy.deepcopy(self.probes_[k])
                elif len(h["curve"]) - 1 - h["best_batch"] >= patience:
                    h["converged"] = True
                    active.discard(k)
            if not active:
                break
        if n_seen == 0:
            raise ValueError("batches is empty: give at least one refinement batch")
        for k in keys:
            self.probes_[k] = best_probe[k]
        final = self.probe_accuracy(val_pos, val_neg)
        for k in keys:
            hist[k]["batches"] = len(hist[k]["curve"]) - 1
            hist[k]["final"] = final[k]
        self.refine_history_ = hist
        return hist

    def select_layers(
        self,
        pos_by_site: Mapping[str, Tensor],
        neg_by_site: Mapping[str, Tensor],
        n_layers: int,
    ) -> list[str]:
        """Steer only the ``n_layers`` sites whose probes are most accurate on these pairs.

        Args:
            pos_by_site: held-out target-concept activations per site.
            neg_by_site: paired source-concept activations.
            n_layers: how many sites to keep.

        Returns:
            The kept site keys (in layer order); also stored in ``steered_``.
        """
        n_layers = check_positive_int(n_layers, "n_layers")
        acc = self.probe_accuracy(pos_by_site, neg_by_site)
        ranked = sorted(acc, key=lambda k: -acc[k])[:n_layers]
        self.steered_ = [k for k in self.site_keys_ if k in ranked]
        self.selection_accuracy_ = acc
        return list(self.steered_)
