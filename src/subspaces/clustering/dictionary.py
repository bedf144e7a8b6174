r"""Supervised dictionary learning (SDL) with auxiliary covariates.

Lee, Lyu & Yao, "Supervised dictionary learning with auxiliary covariates" (arXiv:2206.06774):
learn a dictionary ``W (p, r)`` whose codes ``H (N, r)`` reconstruct the data ``X (N, p)``
while the labels ``y`` are predicted from the codes (or the filtered features) together with
auxiliary covariates ``A (N, q)``:

.. math::
    \min_{W, H, \beta, \gamma, b}\;
    \frac1N \sum_i \ell\big(y_i,\; \beta^T f_i + \gamma^T a_i + b\big)
    + \frac{\xi}{N}\,\|X - H W^T\|_F^2 + \lambda\,(\text{ridge}),

with ``\ell`` the multinomial logistic loss on ``kappa = n_classes - 1`` logits (class 0 has
logit 0; for two classes it is the logistic loss) and the feature ``f_i`` either

* ``mode="feature"``: the code ``h_i`` (the paper's SDL-feature). The objective depends on the
  factors only through ``Theta = H [W^T, beta]`` of shape ``(N, p + kappa)`` and rank ``<= r``;
  new data are coded by least squares on the dictionary;
* ``mode="filter"``: the filtered features ``W^T x_i`` (SDL-filter). Here ``Theta = W [H^T,
  beta]`` of shape ``(p, N + kappa)``, and the logits are ``x_i^T (W beta) + ...``.

The ridge is ``lambda (||Theta||_F^2 / N + ||gamma||_F^2)``. In both modes the objective is
convex (strongly, for ``lambda > 0``) in the *lifted* variables ``(Theta, gamma, b)``: SDL is a
convex problem under a rank constraint. Two solvers (:data:`SOLVERS`):

* ``"lpgd"`` -- low-rank projected gradient descent on the lifted problem (the paper's convex
  algorithm): a gradient step on ``(Theta, gamma, b)``, then ``Theta`` is projected onto rank
  ``r`` by a truncated SVD. The step is ``1/L`` per block (data columns of ``Theta``, label
  columns, covariate coefficients; ``L`` a bound of the block's curvature, doubled for the
  coupling of labels and covariates), i.e. plain LPGD on the lifted variables rescaled column by
  column, which changes neither the rank nor the minimizers and guarantees descent;
* ``"bcd"`` -- block coordinate descent on the factors ``Theta diag(c) = H Phi`` (``c`` the same
  column scaling, ``Phi = [W^T, beta] diag(c)``): one gradient step with the block's own Lipschitz
  constant on the codes ``H``, on ``Phi`` and on ``(gamma, b)`` in turn (no step can increase the
  objective), then ``H`` and ``Phi`` are rebalanced by an SVD of their product (which leaves the
  objective unchanged).

:class:`SupervisedDictionary` is the estimator: ``fit(X, y, covariates=None)``,
``transform(X)`` (least-squares codes on the dictionary), ``predict_proba``, ``predict``.
:func:`sdl_objective` evaluates the lifted objective, for checks with other solvers.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.randn(60, 5, generator=g, dtype=torch.float64)
    >>> y = (X[:, 0] > 0).long()
    >>> sdl = SupervisedDictionary(2, xi=1.0, n_init=1, max_iter=300).fit(X, y)
    >>> sdl.transform(X).shape, bool((sdl.predict(X) == y).float().mean() > 0.9)
    (torch.Size([60, 2]), True)
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .._checks import check_choice, check_positive_float, check_positive_int
from ._checks import as_generator, check_data, check_labels

__all__ = ["MODES", "SOLVERS", "SupervisedDictionary", "sdl_objective"]

Solver = Literal["lpgd", "bcd"]
SOLVERS: tuple[str, ...] = ("lpgd", "bcd")
Mode = Literal["filter", "feature"]
MODES: tuple[str, ...] = ("filter", "feature")


def _multinomial_loss(Z: Tensor, Y: Tensor) -> Tensor:
    """Mean multinomial loss of logits ``Z (N, kappa)`` (class 0: logit 0), one-hot ``Y``."""
    full = torch.cat([torch.zeros_like(Z[:, :1]), Z], dim=1)
    return (torch.logsumexp(full, dim=1) - (full * Y).sum(1)).mean()


def _multinomial_grad(Z: Tensor, Y: Tensor) -> Tensor:
    """Gradient of :func:`_multinomial_loss` with respect to ``Z``."""
    full = torch.cat([torch.zeros_like(Z[:, :1]), Z], dim=1)
    P = torch.softmax(full, dim=1)
    return (P[:, 1:] - Y[:, 1:]) / Z.shape[0]


class _Lifted:
    """The lifted SDL problem in ``(Theta, coef)``; ``Theta = [Theta_R, Theta_L]`` by columns.

    ``feature`` mode: ``Theta (N, p + kappa)``, ``Theta_R ~ X``, logits ``Theta_L + B coef``.
    ``filter`` mode: ``Theta (p, N + kappa)``, ``Theta_R ~ X^T``, logits ``X Theta_L + B coef``.
    """

    def __init__(self, mode: str, X: Tensor, Y: Tensor, B: Tensor, xi: float, alpha: float):
        self.mode, self.X, self.Y, self.B, self.xi, self.alpha = mode, X, Y, B, xi, alpha
        self.N = X.shape[0]
        self.target = X if mode == "feature" else X.T
        self.m = self.target.shape[1]
        self.kappa = Y.shape[1] - 1
        self.loss_lip = 0.25 if self.kappa == 1 else 0.5
        self.design_norm2 = 1.0 if mode == "feature" else _norm2(X)
        self.b_norm2 = _norm2(B)

    def logits(self, theta: Tensor, coef: Tensor) -> Tensor:
        label = theta[:, self.m :]
        return (label if self.mode == "feature" else self.X @ label) + self.B @ coef

    def objective(self, theta: Tensor, coef: Tensor) -> Tensor:
        loss = _multinomial_loss(self.logits(theta, coef), self.Y)
        recon = (self.target - theta[:, : self.m]).pow(2).sum() / self.N
        ridge = theta.pow(2).sum() / self.N + coef[:-1].pow(2).sum()
        return loss + self.xi * recon + self.alpha * ridge

    def gradients(self, theta: Tensor, coef: Tensor) -> tuple[Tensor, Tensor]:
        G = _multinomial_grad(self.logits(theta, coef), self.Y)  # (N, kappa)
        g_label = G if self.mode == "feature" else self.X.T @ G
        g_recon = -2 * self.xi * (self.target - theta[:, : self.m]) / self.N
        g_theta = torch.cat([g_recon, g_label], dim=1) + 2 * self.alpha * theta / self.N
        g_coef = self.B.T @ G
        g_coef[:-1] += 2 * self.alpha * coef[:-1]
        return g_theta, g_coef

    def column_curvature(self, coupled: bool) -> Tensor:
        """Curvature bound of each column block of ``Theta`` (doubled label block if coupled)."""
        d_r = (2 * self.xi + 2 * self.alpha) / self.N
        d_l = ((2 if coupled else 1) * self.loss_lip * self.design_norm2 + 2 * self.alpha) / self.N
        return torch.cat([torch.full((self.m,), d_r), torch.full((self.kappa,), d_l)]).double()

    def coef_curvature(self, coupled: bool) -> float:
        return (2 if coupled else 1) * self.loss_lip * self.b_norm2 / self.N + 2 * self.alpha


def sdl_objective(
    theta: Tensor,
    coef: Tensor,
    X: Tensor,
    Y: Tensor,
    B: Tensor,
    xi: float,
    alpha: float,
    mode: Mode = "feature",
) -> Tensor:
    r"""The lifted SDL objective at ``Theta`` and ``coef = [gamma; b]``.

    ``mean_i loss(y_i, z_i) + xi/N ||R - Theta_R||^2 + alpha/N ||Theta||^2 + alpha ||gamma||^2``
    (the intercept, the last row of ``coef``, is not penalized), where in ``"feature"`` mode
    ``Theta = [Theta_R, Theta_L]`` is ``(N, p + kappa)``, ``R = X`` and ``z = Theta_L + B coef``;
    in ``"filter"`` mode it is ``(p, N + kappa)``, ``R = X^T`` and ``z = X Theta_L + B coef``.

    Args:
        theta: the lifted matrix.
        coef: ``(q + 1, kappa)`` covariate coefficients with the intercept as last row.
        X: ``(N, p)`` data.
        Y: ``(N, kappa + 1)`` one-hot labels.
        B: ``(N, q + 1)`` covariates with a column of ones last.
        xi: reconstruction weight.
        alpha: ridge weight ``lambda``.
        mode: ``"feature"`` or ``"filter"``.

    Returns:
        The objective (a scalar tensor).

    Example:
        >>> import torch
        >>> X, Y, B = torch.zeros(2, 1), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.ones(2, 1)
        >>> round(float(sdl_objective(torch.zeros(2, 2), torch.zeros(1, 1), X, Y, B, 1.0, 0.0)), 6)
        0.693147
    """
    check_choice(mode, "mode", MODES)
    return _Lifted(mode, X, Y, B, xi, alpha).objective(theta, coef)


def _truncate(theta: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
    U, s, Vh = torch.linalg.svd(theta, full_matrices=False)
    return U[:, :r], s[:r], Vh[:r]


def _lpgd(prob: _Lifted, theta: Tensor, coef: Tensor, r: int, iters: int, tol: float) -> Any:
    step = 1.0 / prob.column_curvature(coupled=True)
    scale = step.rsqrt()  # Theta~ = Theta diag(scale) has a gradient with Lipschitz constant <= 1
    d_coef = prob.coef_curvature(coupled=True)
    history = [float(prob.objective(theta, coef))]
    n_iter = 0
    for n_iter in range(1, iters + 1):  # noqa: B007 - n_iter is read after the loop
        g_theta, g_coef = prob.gradients(theta, coef)
        U, s, Vh = _truncate((theta - g_theta * step) * scale, r)
        theta = ((U * s) @ Vh) / scale
        coef = coef - g_coef / d_coef
        history.append(float(prob.objective(theta, coef)))
        if history[-2] - history[-1] <= tol * max(1.0, abs(history[-1])):
            break
    return theta, coef, history, n_iter


def _bcd(prob: _Lifted, theta: Tensor, coef: Tensor, r: int, iters: int, tol: float) -> Any:
    scale = prob.column_curvature(coupled=False).sqrt()
    d_coef = prob.coef_curvature(coupled=False)
    U, s, Vh = _truncate(theta * scale, r)
    H, Phi = U * s.sqrt(), s.sqrt().unsqueeze(1) * Vh  # H @ Phi = Theta diag(scale)

    def grads(H: Tensor, Phi: Tensor, coef: Tensor) -> tuple[Tensor, Tensor]:
        g_theta, g_coef = prob.gradients((H @ Phi) / scale, coef)
        return g_theta / scale, g_coef

    history = [float(prob.objective((H @ Phi) / scale, coef))]
    n_iter = 0
    for n_iter in range(1, iters + 1):  # noqa: B007
        H = H - (grads(H, Phi, coef)[0] @ Phi.T) / _norm2(Phi)
        Phi = Phi - (H.T @ grads(H, Phi, coef)[0]) / _norm2(H)
        coef = coef - grads(H, Phi, coef)[1] / d_coef
        U, s, Vh = _truncate(H @ Phi, r)
        H, Phi = U * s.sqrt(), s.sqrt().unsqueeze(1) * Vh
        history.append(float(prob.objective((H @ Phi) / scale, coef)))
        if history[-2] - history[-1] <= tol * max(1.0, abs(history[-1])):
            break
    return (H @ Phi) / scale, coef, history, n_iter


class SupervisedDictionary:
    """Supervised dictionary learning with auxiliary covariates (Lee, Lyu & Yao 2022).

    Args:
        n_components: dictionary size ``r`` (``1 <= r <= min(n_samples, n_features)``).
        xi: weight ``> 0`` of the reconstruction term (large: close to PCA + logistic regression;
            small: the dictionary serves the labels).
        mode: ``"filter"`` (labels from ``W^T x``; default) or ``"feature"`` (labels from the
            codes; new data coded by least squares).
        alpha: ridge weight ``lambda >= 0`` on the lifted matrix and the covariate coefficients.
        solver: ``"lpgd"`` (lifted convex problem, low-rank projected gradient) or ``"bcd"``
            (block coordinate descent on the factors).
        max_iter: iterations (LPGD steps or BCD sweeps).
        tol: stop when the objective decreases by less than ``tol`` times its magnitude.
        n_init: starts; the first is the truncated SVD of the data part (the reconstructive
            dictionary), the others random rank-``r`` matrices of the same norm; the lowest final
            objective is kept. Both solvers are local methods on a rank-constrained problem: from
            the SVD start they can stay at the reconstructive fixed point when the discriminative
            direction has low variance (seen in filter mode), which other starts escape.
        random_state: ``None``, an int seed or a ``torch.Generator`` for the random starts.

    Attributes:
        components_: ``(r, p)`` dictionary atoms (rows; ``W^T``; orthonormal in filter mode).
        coef_: ``(r, kappa)`` label coefficients of :meth:`transform`'s codes (``beta``).
        coef_covariates_: ``(q, kappa)`` coefficients of the covariates (``gamma``).
        intercept_: ``(kappa,)``.
        classes_: the sorted class labels (class ``classes_[0]`` has logit 0).
        theta_: the lifted solution of rank ``<= r`` (``(N, p + kappa)`` in feature mode,
            ``(p, N + kappa)`` in filter mode).
        objective_history_: objective after each iteration of the kept start (index 0: start).
        final_objectives_: the final objective of every start.
        n_iter_: iterations run.

    Raises:
        ValueError: (in ``fit``) for NaN/Inf rows, fewer samples than ``n_components``,
            ``n_components`` above the number of features, a single class, mismatched lengths.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(1)
        >>> X = torch.randn(80, 6, generator=g, dtype=torch.float64)
        >>> y = torch.where(X[:, 1] > 0.5, 2, torch.where(X[:, 1] < -0.5, 1, 0))
        >>> sdl = SupervisedDictionary(3, xi=0.5, solver="bcd", n_init=1, max_iter=200).fit(X, y)
        >>> sdl.predict_proba(X).shape, sdl.classes_.tolist()
        (torch.Size([80, 3]), [0, 1, 2])
    """

    def __init__(
        self,
        n_components: int,
        *,
        xi: float = 1.0,
        alpha: float = 1e-3,
        mode: Mode = "filter",
        solver: Solver = "lpgd",
        max_iter: int = 1000,
        tol: float = 1e-8,
        n_init: int = 3,
        random_state: int | torch.Generator | None = None,
    ) -> None:
        self.n_components = n_components
        self.xi = xi
        self.alpha = alpha
        self.mode = mode
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.random_state = random_state

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments, by name (scikit-learn convention).

        Args:
            deep: ignored.

        Returns:
            ``{name: value}``.
        """
        del deep
        names = (
            "n_components",
            "xi",
            "alpha",
            "mode",
            "solver",
            "max_iter",
            "tol",
            "n_init",
            "random_state",
        )
        return {k: getattr(self, k) for k in names}

    def set_params(self, **params: Any) -> SupervisedDictionary:
        """Set constructor arguments.

        Args:
            **params: new values by name.

        Returns:
            ``self``.

        Raises:
            ValueError: for an unknown name.
        """
        for k, v in params.items():
            if k not in self.get_params():
                raise ValueError(f"unknown parameter {k!r} for SupervisedDictionary")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"SupervisedDictionary({args})"

    # ----- validation --------------------------------------------------------------------------
    def _covariates(self, covariates: Any, n: int, q: int | None) -> Tensor:
        if covariates is None:
            A = torch.zeros(n, 0, dtype=torch.float64)
        else:
            A = check_data(covariates, "covariates", dtype=torch.float64)
            if A.shape[0] != n:
                raise ValueError(
                    f"covariates must have one row per sample ({n}), got {A.shape[0]} rows"
                )
        if q is not None and A.shape[1] != q:
            raise ValueError(
                f"covariates must have {q} columns (as in fit), got {A.shape[1]}"
                + ("; pass covariates=None as in fit" if q == 0 else "")
            )
        return torch.cat([A, torch.ones(n, 1, dtype=torch.float64)], dim=1)

    # ----- fitting -----------------------------------------------------------------------------
    def fit(self, X: Any, y: Any, covariates: Any = None) -> SupervisedDictionary:
        """Learn the dictionary and the classifier.

        Args:
            X: ``(N, p)`` data.
            y: ``(N,)`` integer class labels (at least two classes).
            covariates: optional ``(N, q)`` auxiliary covariates.

        Returns:
            ``self``.

        Raises:
            ValueError: for NaN/Inf rows, fewer samples or features than ``n_components``, a
                single class, mismatched lengths, or a diverging objective.
        """
        r = check_positive_int(self.n_components, "n_components")
        xi = check_positive_float(self.xi, "xi")
        alpha = check_positive_float(self.alpha, "alpha", allow_zero=True)
        solver = check_choice(self.solver, "solver", SOLVERS)
        mode = check_choice(self.mode, "mode", MODES)
        iters = check_positive_int(self.max_iter, "max_iter")
        tol = check_positive_float(self.tol, "tol", allow_zero=True)
        n_init = check_positive_int(self.n_init, "n_init")
        data = check_data(X, "X", dtype=torch.float64)
        N, p = data.shape
        if r > min(N, p):
            raise ValueError(
                f"n_components={r} must be <= min(n_samples, n_features) = min({N}, {p})"
            )
        labels = check_labels(y, N, "y")
        classes, index = torch.unique(labels, return_inverse=True)
        if classes.numel() < 2:
            raise ValueError(f"y must hold at least 2 classes, got only {classes.tolist()}")
        Y = torch.nn.functional.one_hot(index, classes.numel()).to(torch.float64)
        B = self._covariates(covariates, N, None)
        kappa = classes.numel() - 1
        prob = _Lifted(mode, data, Y, B, xi, alpha)
        start = torch.cat([prob.target, torch.zeros(prob.target.shape[0], kappa)], 1).double()
        U, s, Vh = _truncate(start, r)
        solve = _lpgd if solver == "lpgd" else _bcd
        gen = as_generator(self.random_state, "random_state")
        best: Any = None
        finals = []
        for run in range(n_init):
            if run == 0:
                theta0 = (U * s) @ Vh
            else:  # a random rank-r start of the same scale as the SVD start
                G1 = torch.randn(start.shape[0], r, generator=gen, dtype=torch.float64)
                G2 = torch.randn(r, start.shape[1], generator=gen, dtype=torch.float64)
                theta0 = G1 @ G2
                theta0 *= float(s.norm()) / float(theta0.norm())
            coef = torch.zeros(B.shape[1], kappa, dtype=torch.float64)
            out = solve(prob, theta0, coef, r, iters, tol)
            finals.append(out[2][-1])
            if best is None or out[2][-1] < best[2][-1]:
                best = out
        theta, coef, history, n_iter = best
        self.final_objectives_ = finals
        if not math.isfinite(history[-1]):
            raise ValueError(f"the SDL objective became {history[-1]}; check the scale of X")
        U, s, Vh = _truncate(theta, r)
        m = prob.m
        if mode == "feature":  # Theta = H [W^T, beta]: codes U s, atoms Vh[:, :p]
            self.components_ = Vh[:, :m].clone()
            self.coef_ = Vh[:, m:].clone()
        else:  # Theta = W [H^T, beta]: orthonormal atoms U, beta = s Vh[:, N:]
            self.components_ = U.T.clone()
            self.coef_ = s.unsqueeze(1) * Vh[:, m:]
        self.theta_ = theta
        self.coef_covariates_ = coef[:-1].clone()
        self.intercept_ = coef[-1].clone()
        self.classes_ = classes
        self.objective_history_ = history
        self.n_iter_ = n_iter
        self.n_features_in_ = p
        return self

    # ----- inference ---------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise RuntimeError("this SupervisedDictionary is not fitted yet: call fit(X, y) first")

    def transform(self, X: Any) -> Tensor:
        """Codes of ``X`` on the dictionary, ``argmin_h ||x - W h||`` for each row.

        In filter mode the atoms are orthonormal and this is ``W^T x``.

        Args:
            X: ``(m, p)`` data.

        Returns:
            ``(m, r)`` codes (float64).

        Raises:
            ValueError: if ``X`` has another number of features than in ``fit``.
        """
        self._check_fitted()
        data = check_data(X, "X", dtype=torch.float64)
        if data.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X must have {self.n_features_in_} features (as in fit), got {data.shape[1]}"
            )
        return torch.linalg.lstsq(self.components_.T, data.T).solution.T

    def decision_function(self, X: Any, covariates: Any = None) -> Tensor:
        """Logits of classes ``classes_[1:]`` against ``classes_[0]``.

        Args:
            X: ``(m, p)`` data.
            covariates: ``(m, q)`` covariates if ``fit`` had them.

        Returns:
            ``(m, kappa)`` logits.
        """
        H = self.transform(X)
        B = self._covariates(covariates, H.shape[0], self.coef_covariates_.shape[0])
        coef = torch.cat([self.coef_covariates_, self.intercept_.unsqueeze(0)])
        return H @ self.coef_ + B @ coef

    def predict_proba(self, X: Any, covariates: Any = None) -> Tensor:
        """Class probabilities, columns in the order of ``classes_``.

        Args:
            X: ``(m, p)`` data.
            covariates: ``(m, q)`` covariates if ``fit`` had them.

        Returns:
            ``(m, n_classes)`` probabilities.
        """
        Z = self.decision_function(X, covariates)
        return torch.softmax(torch.cat([torch.zeros_like(Z[:, :1]), Z], dim=1), dim=1)

    def predict(self, X: Any, covariates: Any = None) -> Tensor:
        """Most probable class of each row.

        Args:
            X: ``(m, p)`` data.
            covariates: ``(m, q)`` covariates if ``fit`` had them.

        Returns:
            ``(m,)`` labels from ``classes_``.
        """
        return self.classes_[self.predict_proba(X, covariates).argmax(1)]


def _norm2(M: Tensor) -> float:
    """Squared spectral norm (at least a tiny positive number)."""
    return max(float(torch.linalg.matrix_norm(M, ord=2)) ** 2, float(np.finfo(np.float64).tiny))
