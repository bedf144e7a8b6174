"""Linear probes on activations: L2-regularized logistic regression in torch, per layer.

:class:`LinearProbe` fits binary or multinomial logistic regression exactly (L-BFGS on the
convex objective, float64 by default), is differentiable with respect to its input (so it can
drive gradient-based searches such as subspace rerouting) and can be refined online by gradient
steps on new batches (:meth:`LinearProbe.partial_fit`), as G-ACT does with its per-layer probes.
:func:`fit_layer_probes` fits one probe per site and records held-out accuracies.

References: Alain & Bengio 2016, "Understanding intermediate layers using linear classifier
probes"; Sharma & Raman 2025, "Steering Conceptual Bias via Transformer Latent-Subspace
Activation" (G-ACT, arXiv 2506.18887: per-layer probes trained and refined online); Winninger
et al. 2025 (subspace rerouting, arXiv 2503.06269: probes define the target subspaces).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor, check_positive_float, check_positive_int

__all__ = ["LinearProbe", "fit_layer_probes"]


def _as_labels(y: Tensor | list[int], n: int) -> Tensor:
    y = torch.as_tensor(y)
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        if y.dtype == torch.bool or bool((y == y.round()).all()):
            y = y.long()
        else:
            raise TypeError(f"labels must be integers, got dtype {y.dtype} with fractional values")
    if y.ndim != 1 or y.numel() != n:
        raise ValueError(f"labels must be 1-D with {n} entries, got shape {tuple(y.shape)}")
    return y.long()


class LinearProbe:
    """L2-regularized logistic-regression probe (binary or multinomial), fitted in torch.

    Minimizes ``mean_i CE(W x_i + b, y_i) + l2 / 2 * ||W||_F^2`` (the intercept is not
    penalized). With two classes a single logit ``w.x + b`` is used (as scikit-learn does), so
    ``coef_`` has one row; with ``k > 2`` classes ``coef_`` is ``(k, d)`` (softmax). With
    ``standardize=True`` features are centred and scaled by the training statistics first and
    ``l2`` acts on the standardized weights; ``coef_``/``intercept_`` are always expressed on
    the raw inputs. The objective is strictly convex, so :meth:`fit` returns the unique
    optimum (L-BFGS with strong-Wolfe line search, to a gradient tolerance).

    Args:
        l2: ridge strength (``>= 0``; scikit-learn's ``C`` equals ``1 / (n * l2)``).
        standardize: centre and scale features before fitting.
        max_iter: L-BFGS iterations.
        tol: gradient-norm tolerance of L-BFGS.
        dtype: working dtype of the parameters (float64 by default).

    Attributes:
        classes_: sorted class labels ``(k,)``.
        coef_: ``(1, d)`` (binary) or ``(k, d)`` weights on raw inputs.
        intercept_: ``(1,)`` or ``(k,)``.
        n_iter_: L-BFGS iterations used by the last :meth:`fit`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(200, 5, generator=g)
        >>> y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()
        >>> probe = LinearProbe(l2=1e-3).fit(X, y)
        >>> probe.score(X, y) > 0.95, probe.predict_proba(X[:3]).shape
        (True, torch.Size([3, 2]))
        >>> bool(probe.direction()[0] > 0.8)
        True
    """

    classes_: Tensor
    mean_: Tensor
    scale_: Tensor
    n_iter_: int
    train_accuracy_: float
    test_accuracy_: float
    _W: Tensor
    _b: Tensor
    _Wp: Tensor
    _bp: Tensor

    def __init__(
        self,
        l2: float = 1e-3,
        *,
        standardize: bool = True,
        max_iter: int = 200,
        tol: float = 1e-9,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.l2 = check_positive_float(l2, "l2", allow_zero=True)
        self.standardize = bool(standardize)
        self.max_iter = check_positive_int(max_iter, "max_iter")
        self.tol = check_positive_float(tol, "tol")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.dtype = dtype
        self._adam: torch.optim.Adam | None = None

    def __repr__(self) -> str:
        fitted = f", classes={self.classes_.tolist()}" if self.is_fitted else ""
        return f"LinearProbe(l2={self.l2}, standardize={self.standardize}{fitted})"

    # ----- state -----------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` or :meth:`partial_fit` has run."""
        return hasattr(self, "_W")

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("this LinearProbe is not fitted yet: call fit() or partial_fit()")

    @property
    def n_classes(self) -> int:
        """Number of classes ``k``."""
        self._require_fitted()
        return int(self.classes_.numel())

    @property
    def coef_(self) -> Tensor:
        """Weights on raw inputs: ``(1, d)`` for two classes, ``(k, d)`` otherwise."""
        self._require_fitted()
        return (self._W / self.scale_).detach().clone()

    @property
    def intercept_(self) -> Tensor:
        """Intercepts on raw inputs: ``(1,)`` for two classes, ``(k,)`` otherwise."""
        self._require_fitted()
        return (self._b - (self._W / self.scale_) @ self.mean_).detach().clone()

    def direction(self) -> Tensor:
        """Unit normal of the decision boundary (binary probes), pointing to class ``classes_[1]``.

        Returns:
            A unit ``(d,)`` vector in the raw input space.

        Raises:
            ValueError: for a probe with more than two classes.
        """
        self._require_fitted()
        if self._W.shape[0] != 1:
            raise ValueError("direction() is defined for binary probes; use coef_ for k > 2")
        w = self.coef_[0]
        return w / torch.linalg.vector_norm(w).clamp_min(torch.finfo(w.dtype).tiny)

    # ----- math --------------------------------------------------------------------------------
    def _check_X(self, X: Tensor, name: str = "X", *, fitted: bool = True) -> Tensor:
        if fitted:
            self._require_fitted()
        X = check_float_tensor(X, name, ndim=2)
        if self.is_fitted and X.shape[1] != self.mean_.numel():
            raise ValueError(
                f"{name} has {X.shape[1]} features but the probe was fitted on {self.mean_.numel()}"
            )
        return X

    def logits(self, X: Tensor) -> Tensor:
        """Differentiable class logits ``(n, k)`` of inputs ``(n, d)`` (or ``(d,)``).

        For binary probes the logits are ``(0, w.x + b)``, so ``softmax`` gives the class
        probabilities. Gradients flow to ``X`` (not to the probe's parameters).

        Args:
            X: activations; any floating dtype (computed in the probe's dtype).

        Returns:
            ``(n, k)`` logits (``(k,)`` for a 1-D input), in the probe's dtype.
        """
        self._require_fitted()
        single = X.ndim == 1
        Z = self._raw_logits(
            ((X.reshape(1, -1) if single else X).to(self.dtype) - self.mean_) / self.scale_,
            self._W,
            self._b,
        )
        return Z[0] if single else Z

    @staticmethod
    def _raw_logits(Xs: Tensor, W: Tensor, b: Tensor) -> Tensor:
        z = Xs @ W.T + b
        if W.shape[0] == 1:
            return torch.cat([torch.zeros_like(z), z], dim=1)
        return z

    def _loss(self, Xs: Tensor, y: Tensor, W: Tensor, b: Tensor) -> Tensor:
        z = self._raw_logits(Xs, W, b)
        return torch.nn.functional.cross_entropy(z, y) + 0.5 * self.l2 * (W * W).sum()

    def decision_function(self, X: Tensor) -> Tensor:
        """Signed margin ``w.x + b`` (binary, ``(n,)``) or the logits ``(n, k)``.

        Args:
            X: ``(n, d)`` activations.

        Returns:
            The margins or logits, detached.
        """
        X = self._check_X(X)
        with torch.no_grad():
            Z = self.logits(X)
        return Z[:, 1] - Z[:, 0] if self._W.shape[0] == 1 else Z

    def predict_proba(self, X: Tensor) -> Tensor:
        """Class probabilities ``(n, k)``, columns in the order of ``classes_``.

        Args:
            X: ``(n, d)`` activations.

        Returns:
            Probabilities (rows sum to one), detached, in the probe's dtype.
        """
        X = self._check_X(X)
        with torch.no_grad():
            return torch.softmax(self.logits(X), dim=1)

    def predict(self, X: Tensor) -> Tensor:
        """Most probable class labels ``(n,)``.

        Args:
            X: ``(n, d)`` activations.

        Returns:
            Labels taken from ``classes_``.
        """
        self._require_fitted()
        return self.classes_[self.predict_proba(X).argmax(dim=1)]

    def score(self, X: Tensor, y: Tensor | list[int]) -> float:
        """Accuracy on ``(X, y)``.

        Args:
            X: ``(n, d)`` activations.
            y: ``(n,)`` labels.

        Returns:
            The fraction of correct predictions.
        """
        X = self._check_X(X)
        y = _as_labels(y, X.shape[0])
        return float((self.predict(X) == y).double().mean())

    def _encode(self, y: Tensor) -> Tensor:
        idx = torch.searchsorted(self.classes_, y)
        idx = idx.clamp(max=self.classes_.numel() - 1)
        bad = self.classes_[idx] != y
        if bool(bad.any()):
            raise ValueError(
                f"labels {sorted(set(y[bad].tolist()))} are not among the probe's classes "
                f"{self.classes_.tolist()}"
            )
        return idx

    # ----- fitting -----------------------------------------------------------------------------
    def _init_state(self, X: Tensor, classes: Tensor) -> None:
        d = X.shape[1]
        Xd = X.to(self.dtype)
        if self.standardize:
            self.mean_ = Xd.mean(0)
            std = Xd.std(0, correction=0) if X.shape[0] > 1 else torch.ones(d, dtype=self.dtype)
            self.scale_ = torch.where(std > 0, std, torch.ones_like(std))
        else:
            self.mean_ = torch.zeros(d, dtype=self.dtype)
            self.scale_ = torch.ones(d, dtype=self.dtype)
        self.classes_ = classes
        rows = 1 if classes.numel() == 2 else int(classes.numel())
        self._W = torch.zeros(rows, d, dtype=self.dtype)
        self._b = torch.zeros(rows, dtype=self.dtype)
        self._adam = None

    def fit(self, X: Tensor, y: Tensor | list[int]) -> LinearProbe:
        """Fit the probe to convergence on ``(X, y)`` (discarding any previous state).

        Args:
            X: ``(n, d)`` activations.
            y: ``(n,)`` integer labels with at least two distinct values.

        Returns:
            ``self``.

        Raises:
            ValueError: for mismatched shapes, fewer than two classes or non-finite inputs.
            TypeError: for non-float ``X`` or non-integer labels.
        """
        X = check_float_tensor(X, "X", ndim=2)
        check_finite(X, "X")
        y = _as_labels(y, X.shape[0])
        classes = torch.unique(y)
        if classes.numel() < 2:
            raise ValueError(f"fit needs at least two classes, got {classes.tolist()}")
        self._init_state(X, classes)
        Xs = (X.to(self.dtype) - self.mean_) / self.scale_
        yi = self._encode(y)
        W = self._W.clone().requires_grad_(True)
        b = self._b.clone().requires_grad_(True)
        opt = torch.optim.LBFGS(
            [W, b],
            lr=1.0,
            max_iter=self.max_iter,
            tolerance_grad=self.tol,
            tolerance_change=0.0,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            opt.zero_grad()
            loss = self._loss(Xs, yi, W, b)
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        self.n_iter_ = int(opt.state[opt._params[0]].get("n_iter", 0))
        self._W, self._b = W.detach(), b.detach()
        return self

    def partial_fit(
        self,
        X: Tensor,
        y: Tensor | list[int],
        *,
        classes: Tensor | list[int] | None = None,
        lr: float = 0.05,
        steps: int = 1,
    ) -> LinearProbe:
        """Refine the probe online with Adam steps on the regularized loss of a new batch.

        The first call on an unfitted probe needs ``classes`` (all labels that will ever occur)
        and initializes the weights at zero and the standardization from this batch; later
        calls keep the standardization and the Adam moments, so a stream of batches is an
        online optimization of the probe (the refinement G-ACT applies during use).

        Args:
            X: ``(n, d)`` activations.
            y: ``(n,)`` labels among the probe's classes.
            classes: every class label (required on the first call of an unfitted probe).
            lr: Adam step size (in standardized units).
            steps: gradient steps on this batch.

        Returns:
            ``self``.

        Raises:
            ValueError: for labels outside the classes, a missing ``classes`` on the first call
                or mismatched shapes.
        """
        X = check_float_tensor(X, "X", ndim=2)
        check_finite(X, "X")
        y = _as_labels(y, X.shape[0])
        lr = check_positive_float(lr, "lr")
        steps = check_positive_int(steps, "steps")
        if not self.is_fitted:
            if classes is None:
                raise ValueError("the first partial_fit on an unfitted probe needs classes=")
            cls = torch.unique(torch.as_tensor(classes).long())
            if cls.numel() < 2:
                raise ValueError(f"classes must hold at least two labels, got {cls.tolist()}")
            self._init_state(X, cls)
        X = self._check_X(X, fitted=False)
        Xs = (X.to(self.dtype) - self.mean_) / self.scale_
        yi = self._encode(y)
        if self._adam is None:
            self._Wp = self._W.clone().requires_grad_(True)
            self._bp = self._b.clone().requires_grad_(True)
            self._adam = torch.optim.Adam([self._Wp, self._bp], lr=lr)
        for group in self._adam.param_groups:
            group["lr"] = lr
        with torch.enable_grad():
            for _ in range(steps):
                self._adam.zero_grad()
                self._loss(Xs, yi, self._Wp, self._bp).backward()
                self._adam.step()
        self._W, self._b = self._Wp.detach().clone(), self._bp.detach().clone()
        return self

    def loss(self, X: Tensor, y: Tensor | list[int]) -> float:
        """The regularized objective on ``(X, y)`` (what :meth:`fit` minimizes).

        Args:
            X: ``(n, d)`` activations.
            y: ``(n,)`` labels.

        Returns:
            Mean cross-entropy plus ``l2 / 2 * ||W||^2`` (standardized weights).
        """
        X = self._check_X(X)
        self._require_fitted()
        y = _as_labels(y, X.shape[0])
        Xs = (X.to(self.dtype) - self.mean_) / self.scale_
        with torch.no_grad():
            return float(self._loss(Xs, self._encode(y), self._W, self._b))


def fit_layer_probes(
    acts_by_site: Mapping[str, Tensor],
    labels: Tensor | list[int],
    *,
    l2: float = 1e-3,
    test_fraction: float = 0.25,
    generator: torch.Generator | None = None,
    standardize: bool = True,
) -> dict[str, LinearProbe]:
    """Fit one :class:`LinearProbe` per site on a shared train/test split.

    Each probe gets ``train_accuracy_`` and (when ``test_fraction > 0``) ``test_accuracy_``
    on the held-out rows (the same rows for every site), so layers can be compared and chosen by
    probe accuracy (as G-ACT steers only the layers whose probes are reliable).

    Args:
        acts_by_site: ``{site: (n, d) activations}``, rows aligned with ``labels``.
        labels: ``(n,)`` integer labels.
        l2: ridge strength of every probe.
        test_fraction: share of rows held out, in ``[0, 1)``.
        generator: random source of the split.
        standardize: standardize features (see :class:`LinearProbe`).

    Returns:
        ``{site: fitted probe}`` in the order of ``acts_by_site``.

    Raises:
        ValueError: for an empty mapping, mismatched row counts, a bad ``test_fraction`` or a
            training split with a single class.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(120) % 2
        >>> acts = {"early": torch.randn(120, 4, generator=g),
        ...         "late": torch.randn(120, 4, generator=g) + 3.0 * y[:, None]}
        >>> probes = fit_layer_probes(acts, y, generator=g)
        >>> probes["late"].test_accuracy_ > 0.9 > probes["early"].test_accuracy_
        True
    """
    if not acts_by_site:
        raise ValueError("acts_by_site is empty")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    first = next(iter(acts_by_site.values()))
    n = first.shape[0]
    y = _as_labels(labels, n)
    for name, acts in acts_by_site.items():
        check_float_tensor(acts, f"acts_by_site[{name!r}]", ndim=2)
        if acts.shape[0] != n:
            raise ValueError(f"acts_by_site[{name!r}] has {acts.shape[0]} rows, expected {n}")
    perm = torch.randperm(n, generator=generator)
    n_test = round(test_fraction * n)
    test, train = perm[:n_test], perm[n_test:]
    if torch.unique(y[train]).numel() < 2:
        raise ValueError("the training split holds a single class; use more data")
    probes: dict[str, LinearProbe] = {}
    for name, acts in acts_by_site.items():
        probe = LinearProbe(l2, standardize=standardize).fit(acts[train], y[train])
        probe.train_accuracy_ = probe.score(acts[train], y[train])
        if n_test:
            known = torch.isin(y[test], probe.classes_)
            probe.test_accuracy_ = probe.score(acts[test][known], y[test][known])
        probes[name] = probe
    return probes
