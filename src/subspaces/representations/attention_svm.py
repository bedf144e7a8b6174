r"""Attention as a hard-margin SVM on token pairs (Tarzanagh, Li, Thrampoulidis & Oymak 2023).

A one-layer softmax attention with a query token ``z_i`` reads the sequence ``X_i`` (``T x d``)
through the weights ``softmax(X_i W z_i)`` (``W = K Q^T`` in the key-query parameterization).
"Transformers as Support Vector Machines" (Tarzanagh, Li, Thrampoulidis & Oymak, NeurIPS 2023,
arXiv:2308.16898) shows that gradient descent on ``W`` converges *in direction* to the solution of

    ``W_mm = argmin ||W||  s.t.  (x_{i,alpha_i} - x_{i,t})^T W z_i >= 1  for all i, t != alpha_i``

with the Frobenius norm, where ``alpha_i`` is the (locally) optimal token of sequence ``i``, and
that gradient descent on ``(K, Q)`` converges in direction to the *nuclear-norm* solution.

Solvers (no cvxpy):

* Frobenius norm: the problem is a least-distance program, solved exactly by non-negative least
  squares (Lawson & Hanson 1974, ch. 23): with constraint matrices ``A_j = (x_alpha - x_t) z^T``
  flattened into the rows of ``G``, NNLS of ``[G^T; 1^T] u ~ [0; 1]`` gives
  ``W = G^T u / (1 - 1^T u)`` and the dual multipliers ``lambda = u / (1 - 1^T u)``; the support
  is then polished so that its constraints hold with equality to rounding.
* Nuclear norm: ``W`` only matters through ``Ua^T W Uz`` (``Ua``, ``Uz`` orthonormal bases of
  the spans of the token differences and of the queries), and compressing by these projectors
  never increases the nuclear norm, so the problem is solved on a ``p x q`` block with
  ``p <= n (T - 1)``, ``q <= n``. There ``||W||_* = min_{W = K Q^T} (||K||_F^2 + ||Q||_F^2) / 2``
  (a smooth Burer-Monteiro form with full rank, started from the Frobenius solution) is solved by
  SLSQP; the multipliers follow from stationarity (``K = M Q``, ``Q = M^T K`` with
  ``M = sum_j lambda_j A_j``) by NNLS, and optimality is certified by the duality gap: any
  ``lambda >= 0`` gives the lower bound ``1^T lambda / ||sum_j lambda_j A_j||_2`` (the spectral
  norm is the dual of the nuclear norm).

Example:
    >>> import torch
    >>> X = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)  # one sequence, T = 2
    >>> Z = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    >>> sol = attention_svm(X, Z, torch.tensor([0]))
    >>> sol.W.tolist()  # a z^T / (||a||^2 ||z||^2) with a = x_0 - x_1
    [[0.5, 0.0], [-0.5, 0.0]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import (
    check_choice,
    check_finite,
    check_float_tensor,
    check_positive_float,
    check_positive_int,
    check_tensor,
)

__all__ = [
    "AttentionGDResult",
    "AttentionSVMResult",
    "attention_gd",
    "attention_svm",
    "directional_correlation",
    "is_locally_optimal",
    "make_attention_data",
    "token_scores",
]


def _einsum(equation: str, *operands: Tensor) -> Tensor:
    """``torch.einsum`` with the contraction path cached per equation and operand shapes.

    ``torch.einsum`` asks opt_einsum for the path of every call with three or more operands,
    which costs far more than the contraction itself on these small problems; the path depends
    only on the shapes (and the configured strategy), so the cached call runs the same
    contraction order and returns the same bits.

    Returns:
        The contraction, bit-identical to ``torch.einsum(equation, *operands)``.
    """
    if len(operands) <= 2 or not torch.backends.opt_einsum.enabled:
        return torch.einsum(equation, *operands)
    key = (equation, tuple(tuple(t.shape) for t in operands), torch.backends.opt_einsum.strategy)
    path = _EINSUM_PATHS.get(key)
    if path is None:
        if not torch.backends.opt_einsum.is_available():
            return torch.einsum(equation, *operands)
        pairs, _ = torch.backends.opt_einsum.get_opt_einsum().contract_path(
            equation, *operands, optimize=torch.backends.opt_einsum.strategy
        )
        path = [i for pair in pairs for i in pair]
        _EINSUM_PATHS[key] = path
    return torch._VF.einsum(equation, operands, path=path)  # type: ignore[attr-defined]


_EINSUM_PATHS: dict[tuple[Any, ...], list[int]] = {}


CITATION = (
    'Tarzanagh, Li, Thrampoulidis & Oymak, "Transformers as Support Vector Machines", '
    "NeurIPS 2023 (arXiv:2308.16898)"
)


@dataclass(frozen=True)
class AttentionSVMResult:
    """Solution of the attention SVM.

    Attributes:
        W: the ``(d, d)`` solution (in the inputs' dtype).
        multipliers: ``(n, T)`` dual multipliers ``lambda_{i,t} >= 0`` (0 at ``t = alpha_i``).
        margins: ``(n, T)`` values ``(x_{i,alpha_i} - x_{i,t})^T W z_i`` (0 at ``t = alpha_i``).
        support: ``(n, T)`` bool, the support tokens (positive multiplier).
        norm: ``||W||`` in the solved norm (``"fro"`` or ``"nuclear"``).
        dual_value: the dual objective at ``multipliers`` (a lower bound on the optimal norm).
        gap: relative duality gap ``(norm - dual_value) / norm`` (a certificate of optimality).
        iterations: SLSQP runs used for ``"nuclear"`` (1 for the Frobenius norm, solved by NNLS).
        norm_type: ``"fro"`` or ``"nuclear"``.

    Example:
        Every non-selected token is separated by a margin of at least 1, with equality on the
        support tokens, and the duality gap certifies the minimal norm:

        >>> import torch
        >>> from subspaces.representations import attention_svm, make_attention_data
        >>> data = make_attention_data(2, 3, 6, generator=torch.Generator().manual_seed(0))
        >>> sol = attention_svm(data["X"], data["Z"], data["alpha"])
        >>> others = torch.ones(2, 3, dtype=torch.bool)
        >>> others[torch.arange(2), data["alpha"]] = False
        >>> bool((sol.margins[others] >= 1 - 1e-9).all())
        True
        >>> bool(torch.allclose(sol.margins[sol.support], torch.ones(()).double()))
        True
        >>> sol.gap < 1e-9, abs(sol.norm - float(torch.linalg.matrix_norm(sol.W))) < 1e-9
        (True, True)
    """

    W: Tensor
    multipliers: Tensor
    margins: Tensor
    support: Tensor
    norm: float
    dual_value: float
    gap: float
    iterations: int
    norm_type: str


@dataclass(frozen=True)
class AttentionGDResult:
    """Trajectory of gradient descent on a one-layer attention model.

    Attributes:
        W: final combined weights ``(d, d)`` (``K Q^T`` for the ``"KQ"`` parameterization).
        steps: the steps at which ``checkpoints`` were recorded.
        checkpoints: ``(len(steps), d, d)`` combined weights at those steps.
        loss: training loss before each step.
        grad_norm: gradient norm before each step.
        selected: ``(n,)`` token with the largest attention weight per sequence at the end.
        stopped_early: whether the gradient vanished (underflow) before ``steps`` iterations.
        K: final keys ``(d, r)`` (``None`` for the ``"W"`` parameterization).
        Q: final queries ``(d, r)`` (``None`` for the ``"W"`` parameterization).

    Example:
        >>> import torch
        >>> from subspaces.representations import attention_gd, make_attention_data
        >>> data = make_attention_data(4, 3, 8, generator=torch.Generator().manual_seed(0))
        >>> X, Z, y, v = data["X"], data["Z"], data["y"], data["v"]
        >>> gd = attention_gd(X, Z, y, v, steps=100, record_every=25)
        >>> gd.steps, tuple(gd.checkpoints.shape), torch.equal(gd.checkpoints[-1], gd.W)
        ([25, 50, 75, 100], (4, 8, 8), True)
        >>> gd.loss[-1] < gd.loss[0], torch.equal(gd.selected, data["alpha"]), gd.K is None
        (True, True, True)
    """

    W: Tensor
    steps: list[int]
    checkpoints: Tensor
    loss: list[float]
    grad_norm: list[float]
    selected: Tensor
    stopped_early: bool
    K: Tensor | None = None
    Q: Tensor | None = None


def _check_problem(X: Any, Z: Any, alpha: Any | None = None) -> tuple[Tensor, Tensor, Tensor]:
    X = check_float_tensor(X, "X", ndim=3)
    Z = check_float_tensor(Z, "Z", ndim=2)
    n, T, d = X.shape
    if n < 1 or T < 2 or d < 1:
        raise ValueError(f"X must be (n, T, d) with n >= 1, T >= 2, d >= 1, got {tuple(X.shape)}")
    if Z.shape != (n, d):
        raise ValueError(f"Z must have shape (n, d) = {(n, d)}, got {tuple(Z.shape)}")
    check_finite(X, "X")
    check_finite(Z, "Z")
    if alpha is None:
        return X, Z, torch.empty(0, dtype=torch.long)
    alpha = check_tensor(alpha, "alpha")
    if alpha.dtype.is_floating_point or alpha.dtype == torch.bool or alpha.shape != (n,):
        raise ValueError(
            f"alpha must be an integer tensor of shape ({n},), got {alpha.dtype} "
            f"{tuple(alpha.shape)}"
        )
    if bool(((alpha < 0) | (alpha >= T)).any()):
        raise ValueError(f"alpha must hold token indices in [0, {T}), got {alpha.tolist()}")
    return X, Z, alpha.long()


def _constraint_matrices(X: Tensor, Z: Tensor, alpha: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``vec((x_alpha - x_t) z^T)`` for t != alpha, and the (i, t) index of each row."""
    Xn = X.detach().double().cpu().numpy()
    Zn = Z.detach().double().cpu().numpy()
    n, T, _ = Xn.shape
    rows, index = [], []
    for i in range(n):
        a = int(alpha[i])
        for t in range(T):
            if t != a:
                rows.append(np.outer(Xn[i, a] - Xn[i, t], Zn[i]).ravel())
                index.append((i, t))
    return np.asarray(rows), np.asarray(index, dtype=np.int64)


def _least_distance(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``min ||w|| s.t. G w >= 1`` exactly by NNLS (Lawson & Hanson); returns ``(w, lambda)``."""
    from scipy.optimize import nnls

    m, p = G.shape
    scale = float(np.abs(G).max())
    if not scale > 0:
        raise ValueError("the attention SVM is infeasible: every constraint matrix is zero")
    Gs = G / scale  # w = ws / scale
    E = np.vstack([Gs.T, np.ones((1, m))])
    f = np.zeros(p + 1)
    f[-1] = 1.0
    u, _ = nnls(E, f, maxiter=50 * max(m, 10))
    denom = 1.0 - float(u.sum())
    if not denom > 1e-12:
        raise ValueError(
            "the attention SVM is infeasible: no W separates the selected tokens from the others "
            "(e.g. a selected token equals another token of its sequence, or a query is zero)"
        )
    lam = u / denom
    # polish: on the support, the constraints are equalities: K_SS lam_S = 1
    S = lam > 1e-12 * max(float(lam.max()), 1e-300)
    if S.any():
        K = Gs[S] @ Gs[S].T
        lam_S, *_ = np.linalg.lstsq(K, np.ones(int(S.sum())), rcond=None)
        w_new = Gs[S].T @ lam_S
        if (lam_S > 0).all() and (Gs @ w_new >= 1 - 1e-10).all():
            lam = np.zeros(m)
            lam[S] = lam_S
    w = Gs.T @ lam
    return w / scale, lam / scale**2  # w = G^T lam


def _pack(
    W: np.ndarray,
    lam: np.ndarray,
    G: np.ndarray,
    index: np.ndarray,
    shape: tuple[int, int],
    norm: float,
    dual: float,
    iterations: int,
    norm_type: str,
    like: Tensor,
) -> AttentionSVMResult:
    n, T = shape
    mult = np.zeros((n, T))
    marg = np.zeros((n, T))
    mult[index[:, 0], index[:, 1]] = lam
    marg[index[:, 0], index[:, 1]] = G @ W.ravel()
    support = mult > 0
    dt, dev = like.dtype, like.device
    return AttentionSVMResult(
        W=torch.as_tensor(W, dtype=dt, device=dev),
        multipliers=torch.as_tensor(mult, dtype=dt, device=dev),
        margins=torch.as_tensor(marg, dtype=dt, device=dev),
        support=torch.as_tensor(support, device=like.device),
        norm=norm,
        dual_value=dual,
        gap=(norm - dual) / norm,
        iterations=iterations,
        norm_type=norm_type,
    )


def attention_svm(
    X: Tensor,
    Z: Tensor,
    alpha: Tensor,
    norm: str = "fro",
    *,
    tol: float = 1e-9,
    max_iter: int = 5,
) -> AttentionSVMResult:
    """Solve the attention SVM ``min ||W|| s.t. (x_{i,alpha_i} - x_{i,t})^T W z_i >= 1``.

    The Frobenius problem is solved exactly (NNLS on the least-distance form); the nuclear-norm
    problem by SLSQP on a factorized form in a reduced space, certified by a relative duality
    gap below ``tol`` (see the module docstring). Computation is in float64 whatever the input
    dtype.
    Reference: Tarzanagh, Li, Thrampoulidis & Oymak, "Transformers as Support Vector Machines",
    NeurIPS 2023 (Att-SVM, eq. (Att-SVM) and (Att-SVM*) for the nuclear norm).

    Args:
        X: token sequences ``(n, T, d)``.
        Z: query tokens ``(n, d)``.
        alpha: ``(n,)`` index of the selected (optimal) token of each sequence.
        norm: ``"fro"`` (the implicit bias of gradient descent on ``W``) or ``"nuclear"`` (on
            ``(K, Q)`` with ``W = K Q^T``).
        tol: target relative duality gap for ``"nuclear"``.
        max_iter: SLSQP restarts for ``"nuclear"`` (the first starts from the Frobenius
            solution; more are tried only while the duality gap exceeds ``tol``).

    Returns:
        An :class:`AttentionSVMResult` (solution, multipliers, margins, support, gap).

    Raises:
        ValueError: for inconsistent shapes, out-of-range token indices, non-finite values, or
            an infeasible problem (no ``W`` separates the selected tokens).
        TypeError: for non-floating ``X``/``Z`` or a non-tensor ``alpha``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
        >>> Z = torch.randn(3, 5, generator=g, dtype=torch.float64)
        >>> alpha = torch.tensor([0, 1, 2])
        >>> fro = attention_svm(X, Z, alpha)
        >>> nuc = attention_svm(X, Z, alpha, norm="nuclear")
        >>> mask = torch.ones(3, 4, dtype=torch.bool)
        >>> mask[torch.arange(3), alpha] = False
        >>> bool((fro.margins[mask] >= 1 - 1e-9).all()), fro.gap < 1e-9, nuc.gap < 1e-6
        (True, True, True)
        >>> float(torch.linalg.matrix_norm(nuc.W, "nuc")) <= float(
        ...     torch.linalg.matrix_norm(fro.W, "nuc"))
        True
    """
    X, Z, alpha = _check_problem(X, Z, alpha)
    check_choice(norm, "norm", ("fro", "nuclear"))
    tol = check_positive_float(tol, "tol")
    max_iter = check_positive_int(max_iter, "max_iter")
    n, T, d = X.shape
    G, index = _constraint_matrices(X, Z, alpha)
    w, lam = _least_distance(G)
    W = w.reshape(d, d)
    if norm == "fro":
        value = float(np.linalg.norm(W))
        # dual value 1^T lam - ||sum lam A||^2 / 2 of (1/2)||W||^2 gives ||W||^2 at optimum;
        # the scale-free bound 1^T lam / ||sum lam A||_F is a lower bound on the minimum norm
        M = (G.T @ lam).reshape(d, d)
        dual = float(lam.sum() / max(np.linalg.norm(M), 1e-300))
        return _pack(W, lam, G, index, (n, T), value, dual, 1, "fro", X)

    Wn, lam, value, dual, iterations = _nuclear_svm(G, W, d, tol, max_iter)
    return _pack(Wn, lam, G, index, (n, T), value, dual, iterations, "nuclear", X)


def _orth_basis(V: np.ndarray) -> np.ndarray:
    """Orthonormal basis (columns) of the span of the rows of ``V``."""
    U, S, _ = np.linalg.svd(V.T, full_matrices=False)
    keep = 1e-12 * max(float(S.max()), 1e-300) < S
    return U[:, keep]


def _nuclear_svm(
    G: np.ndarray, W_fro: np.ndarray, d: int, tol: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray, float, float, int]:
    """Nuclear-norm attention SVM.

    The constraints see ``W`` only through ``Pa W Pz`` (``Pa``/``Pz`` the projectors onto the
    spans of the token differences and of the queries), and compressing by projectors does not
    increase the nuclear norm, so the problem is solved on the ``p x q`` block ``Ua^T W Uz``.
    There ``||W||_* = min_{W = K Q^T} (||K||^2 + ||Q||^2) / 2`` (Burer-Monteiro, full rank
    ``r = min(p, q)``) is minimized by SLSQP from the balanced factorization of the Frobenius
    solution, the multipliers are recovered from stationarity (``K = M Q``, ``Q = M^T K``,
    ``M = sum_j lambda_j A_j``) by NNLS, and the duality gap certifies the result; perturbed
    restarts are tried while it does not (a non-global stationary point would show as a gap).

    Returns:
        ``(W, lambda, norm, dual lower bound, SLSQP runs)``.

    Raises:
        ValueError: if no run reaches a feasible point.
    """
    from scipy.optimize import minimize, nnls

    m = G.shape[0]
    A = G.reshape(m, d, d)
    # a_j and z_j of each rank-one A_j = a_j z_j^T (rows of A_j are multiples of z_j)
    idx = np.abs(A).reshape(m, -1).argmax(1)
    rows, cols = np.unravel_index(idx, (d, d))
    a = A[np.arange(m), :, cols]  # column c of a z^T = a * z_c
    z = A[np.arange(m), rows, :]  # row r = a_r * z
    Ua, Uz = _orth_basis(a), _orth_basis(z)
    p, q = Ua.shape[1], Uz.shape[1]
    r = min(p, q)
    At = np.einsum("ap,mab,bq->mpq", Ua, A, Uz)
    Gt = At.reshape(m, -1)
    nK = p * r

    def split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x[:nK].reshape(p, r), x[nK:].reshape(q, r)

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        return 0.5 * float(x @ x), x

    def cons(x: np.ndarray) -> np.ndarray:
        K, Q = split(x)
        return Gt @ (K @ Q.T).ravel() - 1.0

    def cons_jac(x: np.ndarray) -> np.ndarray:
        K, Q = split(x)
        JK = np.einsum("mpq,qr->mpr", At, Q).reshape(m, -1)
        JQ = np.einsum("mpq,pr->mqr", At, K).reshape(m, -1)
        return np.hstack([JK, JQ])

    W0 = Ua.T @ W_fro @ Uz
    U0, S0, V0h = np.linalg.svd(W0, full_matrices=False)
    starts = [np.concatenate([(U0 * np.sqrt(S0)).ravel(), (V0h.T * np.sqrt(S0)).ravel()])]
    rng = np.random.default_rng(0)
    best: tuple[float, float, np.ndarray, np.ndarray] | None = None
    restarts = 0
    for restarts in range(1, max(max_iter, 1) + 1):
        if restarts > len(starts):
            starts.append(starts[0] * (1.0 + rng.standard_normal(starts[0].shape)))
        res = minimize(
            fun,
            starts[restarts - 1],
            jac=True,
            method="SLSQP",
            constraints=[{"type": "ineq", "fun": cons, "jac": cons_jac}],
            options={"ftol": 1e-16, "maxiter": 2000},
        )
        K, Q = split(res.x)
        Wt = K @ Q.T
        margins = Gt @ Wt.ravel()
        margin = float(margins.min())
        if not margin > 0:
            continue
        primal = float(np.linalg.svd(Wt, compute_uv=False).sum()) / margin
        # multipliers from stationarity, on the (nearly) tight constraints
        tight = margins <= margin * (1 + 1e-6) + 1e-6
        B = np.hstack(
            [
                np.einsum("mpq,qr->mpr", At[tight], Q).reshape(int(tight.sum()), -1).T,
            ]
        )
        B = np.vstack([B, np.einsum("mpq,pr->mqr", At[tight], K).reshape(int(tight.sum()), -1).T])
        lam_t, _ = nnls(B, np.concatenate([K.ravel(), Q.ravel()]))
        lam = np.zeros(m)
        lam[tight] = lam_t
        M = np.einsum("m,mpq->pq", lam, At)
        spec = float(np.linalg.norm(M, 2))
        dual = float(lam.sum()) / spec if spec > 0 else 0.0
        if best is None or primal - dual < best[0] - best[1]:
            best = (primal, dual, Wt / min(margin, 1.0), lam / max(spec, 1e-300))
        if best[0] - best[1] <= tol * best[0]:
            break
    if best is None:
        raise ValueError("the nuclear-norm attention SVM solver failed to find a feasible point")
    primal, dual, Wt, lam = best
    return Ua @ Wt @ Uz.T, lam, primal, dual, restarts


def token_scores(X: Tensor, v: Tensor, y: Tensor) -> Tensor:
    """Token scores ``gamma_{i,t} = y_i v^T x_{i,t}`` of a linear head ``v`` and labels ``y``.

    The globally optimal token of sequence ``i`` is ``argmax_t gamma_{i,t}`` (Tarzanagh et al.
    2023, Definition 1).

    Args:
        X: ``(n, T, d)`` tokens.
        v: ``(d,)`` prediction head.
        y: ``(n,)`` labels in ``{-1, +1}`` (any real weights are accepted).

    Returns:
        ``(n, T)`` scores.

    Raises:
        ValueError: for inconsistent shapes.
        TypeError: for non-floating tensors.

    Example:
        >>> X = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
        >>> token_scores(X, torch.tensor([1.0, 1.0]), torch.tensor([-1.0])).tolist()
        [[-1.0, -2.0]]
    """
    X = check_float_tensor(X, "X", ndim=3)
    v = check_float_tensor(v, "v", ndim=1)
    y = check_tensor(y, "y")
    if v.shape[0] != X.shape[2] or y.shape != (X.shape[0],):
        raise ValueError(
            f"need v of shape ({X.shape[2]},) and y of shape ({X.shape[0]},), got "
            f"{tuple(v.shape)} and {tuple(y.shape)}"
        )
    return y.to(X.dtype)[:, None] * (X @ v.to(X.dtype))


def is_locally_optimal(X: Tensor, Z: Tensor, alpha: Tensor, scores: Tensor) -> bool:
    """Whether the token selection ``alpha`` is locally optimal (Tarzanagh et al. 2023, Def. 2).

    ``alpha`` is locally optimal if the (Frobenius) attention SVM for ``alpha`` is feasible and
    every support token ``t`` of every sequence (positive multiplier) scores lower than the
    selected token: ``scores[i, t] < scores[i, alpha_i]``. Globally optimal tokens (the argmax
    of the scores) are locally optimal whenever the SVM is feasible.

    Args:
        X: ``(n, T, d)`` tokens.
        Z: ``(n, d)`` queries.
        alpha: ``(n,)`` selected tokens.
        scores: ``(n, T)`` token scores (e.g. :func:`token_scores`).

    Returns:
        ``True`` or ``False`` (``False`` also when the SVM is infeasible).

    Raises:
        ValueError: for inconsistent shapes.

    Example:
        >>> X = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]], dtype=torch.float64)
        >>> Z = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
        >>> s = torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64)
        >>> is_locally_optimal(X, Z, torch.tensor([0]), s)
        True
        >>> is_locally_optimal(X, Z, torch.tensor([1]), s)  # support token 0 scores higher
        False
    """
    X, Z, alpha = _check_problem(X, Z, alpha)
    scores = check_float_tensor(scores, "scores", ndim=2)
    if scores.shape != X.shape[:2]:
        raise ValueError(f"scores must have shape {tuple(X.shape[:2])}, got {tuple(scores.shape)}")
    try:
        sol = attention_svm(X, Z, alpha)
    except ValueError:
        return False
    sel = scores.gather(1, alpha[:, None])
    return bool(((scores < sel) | ~sol.support.to(scores.device)).all())


def directional_correlation(A: Tensor, B: Tensor) -> float:
    """Cosine of the angle between two matrices: ``<A, B> / (||A||_F ||B||_F)``.

    The measure of directional convergence of Tarzanagh et al. (2023).

    Args:
        A: a tensor.
        B: a tensor of the same shape.

    Returns:
        The correlation in ``[-1, 1]``.

    Raises:
        ValueError: for different shapes, a zero tensor or non-finite values.
        TypeError: for non-floating tensors.

    Example:
        >>> directional_correlation(torch.eye(2), 3.0 * torch.eye(2))
        1.0
        >>> directional_correlation(torch.eye(2), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        0.0
    """
    A = check_float_tensor(A, "A")
    B = check_float_tensor(B, "B")
    if A.shape != B.shape:
        raise ValueError(f"A and B must have the same shape, got {tuple(A.shape)}, {B.shape}")
    check_finite(A, "A")
    check_finite(B, "B")
    a, b = A.detach().double().flatten(), B.detach().double().flatten()
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        raise ValueError("directional_correlation is undefined for a zero tensor")
    return max(-1.0, min(1.0, float(a @ b) / (na * nb)))


def attention_gd(
    X: Tensor,
    Z: Tensor,
    y: Tensor,
    v: Tensor,
    *,
    parameterization: str = "W",
    steps: int = 200,
    lr: float = 0.1,
    normalized: bool = True,
    loss: str = "logistic",
    rank: int | None = None,
    init_scale: float = 0.01,
    generator: torch.Generator | None = None,
    record_every: int = 10,
) -> AttentionGDResult:
    """Gradient descent on a one-layer attention model with a fixed linear head ``v``.

    The prediction is ``f_i = v^T X_i^T softmax(X_i W z_i)`` and the loss
    ``(1/n) sum_i l(y_i f_i)`` with a decreasing ``l`` (logistic or exponential), as in
    Tarzanagh, Li, Thrampoulidis & Oymak, "Transformers as Support Vector Machines" (2023). With
    ``parameterization="W"`` the variable is ``W``; with ``"KQ"`` it is ``(K, Q)`` and
    ``W = K Q^T``. Normalized GD (``lr * grad / ||grad||``, the paper's experiments) lets the norm
    grow linearly so the direction converges in a few hundred steps. Computation is in float64.
    Stops early if the gradient underflows to zero or becomes non-finite.

    Args:
        X: ``(n, T, d)`` tokens.
        Z: ``(n, d)`` queries.
        y: ``(n,)`` labels in ``{-1, +1}``.
        v: ``(d,)`` fixed head.
        parameterization: ``"W"`` or ``"KQ"``.
        steps: gradient steps.
        lr: step size.
        normalized: normalize the gradient (joint norm over ``K`` and ``Q``).
        loss: ``"logistic"`` or ``"exponential"``.
        rank: columns of ``K`` and ``Q`` (default ``d``).
        init_scale: standard deviation of the Gaussian initialization (0 gives ``W = 0``; not
            allowed for ``"KQ"``, where 0 is a stationary point).
        generator: seeds the initialization.
        record_every: record ``W`` every this many steps (and at the last step).

    Returns:
        An :class:`AttentionGDResult`.

    Raises:
        ValueError: for inconsistent shapes, bad hyperparameters or non-finite inputs.
        TypeError: for non-floating tensors.

    Example:
        >>> data = make_attention_data(4, 3, 16, generator=torch.Generator().manual_seed(0))
        >>> X, Z, y, v = data["X"], data["Z"], data["y"], data["v"]
        >>> gd = attention_gd(X, Z, y, v, steps=200)
        >>> svm = attention_svm(X, Z, data["alpha"])
        >>> directional_correlation(gd.W, svm.W) > 0.99
        True
    """
    X, Z, _ = _check_problem(X, Z)
    n, _, d = X.shape
    scores = token_scores(X, v, y).double()
    check_choice(parameterization, "parameterization", ("W", "KQ"))
    check_choice(loss, "loss", ("logistic", "exponential"))
    steps = check_positive_int(steps, "steps")
    lr = check_positive_float(lr, "lr")
    init_scale = check_positive_float(init_scale, "init_scale", allow_zero=True)
    record_every = check_positive_int(record_every, "record_every")
    r = d if rank is None else check_positive_int(rank, "rank")
    if parameterization == "KQ" and init_scale == 0.0:
        raise ValueError("init_scale must be > 0 for the KQ parameterization (0 is stationary)")
    Xd, Zd = X.detach().double(), Z.detach().double()
    if parameterization == "W":
        params = [init_scale * torch.randn(d, d, generator=generator, dtype=torch.float64)]
    else:
        params = [
            init_scale * torch.randn(d, r, generator=generator, dtype=torch.float64)
            for _ in range(2)
        ]

    def combined() -> Tensor:
        return params[0] if parameterization == "W" else params[0] @ params[1].T

    diff = scores[:, :, None] - scores[:, None, :]  # gamma_t - gamma_t', exact
    log_abs_diff = diff.abs().log()  # -inf where equal
    losses: list[float] = []
    gnorms: list[float] = []
    rec_steps: list[int] = []
    recs: list[Tensor] = []
    stopped = False
    for step in range(steps):
        W = combined()
        logits = _einsum("ntd,de,ne->nt", Xd, W, Zd)
        log_s = torch.log_softmax(logits, dim=-1)
        u = (log_s.exp() * scores).sum(-1)  # y_i f_i
        if loss == "logistic":
            losses.append(float(torch.nn.functional.softplus(-u).mean()))
            dl = torch.sigmoid(-u)  # -l'(u)
        else:
            losses.append(float(torch.exp(-u).mean()))
            dl = torch.exp(-u)
        # d u / d logit_t = s_t (gamma_t - u) = s_t sum_t' s_t' (gamma_t - gamma_t'): no
        # cancellation. Once the softmax saturates beyond the float64 range it is evaluated in the
        # log domain (positive and negative parts separately) and rescaled by its largest entry,
        # so the gradient *direction* stays exact; the rescaling is undone for the reported norm.
        if float(log_s.min()) > -600.0:
            s_ = log_s.exp()
            c = -(s_ * torch.einsum("ntk,nk->nt", diff, s_)) * (dl[:, None] / n)
            shift = float(c.abs().max().log()) if bool((c != 0).any()) else -math.inf
            c = c * math.exp(-shift) if math.isfinite(shift) else c
        else:
            terms = log_s[:, None, :] + log_abs_diff  # (n, t, t')
            log_pos = torch.logsumexp(terms.masked_fill(diff <= 0, -math.inf), dim=-1)
            log_neg = torch.logsumexp(terms.masked_fill(diff >= 0, -math.inf), dim=-1)
            sign = torch.sign(log_pos - log_neg).nan_to_num(0.0)  # both parts empty: 0
            hi, lo = torch.maximum(log_pos, log_neg), torch.minimum(log_pos, log_neg)
            log_inner = hi + torch.log1p(-torch.exp(lo - hi).clamp(max=1.0))
            log_c = (log_s + log_inner + dl.log()[:, None] - math.log(n)).nan_to_num(-math.inf)
            shift = float(log_c.max())
            c = -sign * torch.exp(log_c - shift)  # d loss / d logits, divided by e^shift
        if not math.isfinite(shift):
            gnorms.append(0.0)
            stopped = True
            break
        G_W = _einsum("nt,ntd,ne->de", c, Xd, Zd)
        grads = [G_W] if parameterization == "W" else [G_W @ params[1], G_W.T @ params[0]]
        gn_scaled = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
        gn = gn_scaled * math.exp(shift)  # may underflow to 0 (then only the direction is known)
        gnorms.append(gn)
        if gn_scaled == 0.0 or not math.isfinite(gn_scaled) or (not normalized and gn == 0.0):
            stopped = True
            break
        scale = lr / gn_scaled if normalized else lr * math.exp(shift)
        params = [p - scale * g for p, g in zip(params, grads, strict=True)]
        if (step + 1) % record_every == 0 or step + 1 == steps:
            rec_steps.append(step + 1)
            recs.append(combined().clone())
    W_final = combined().detach()
    if not recs:
        rec_steps, recs = [0], [W_final.clone()]
    selected = _einsum("ntd,de,ne->nt", Xd, W_final, Zd).argmax(-1)
    out_dtype = X.dtype
    return AttentionGDResult(
        W=W_final.to(out_dtype),
        steps=rec_steps,
        checkpoints=torch.stack(recs).to(out_dtype),
        loss=losses,
        grad_norm=gnorms,
        selected=selected,
        stopped_early=stopped,
        K=None if parameterization == "W" else params[0].detach().to(out_dtype),
        Q=None if parameterization == "W" else params[1].detach().to(out_dtype),
    )


def make_attention_data(
    n: int,
    T: int,
    d: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> dict[str, Tensor]:
    """Random sequences, queries, labels and head with a well-defined globally optimal token.

    Tokens and queries are independent unit vectors in ``R^d``, ``v`` a unit vector and
    ``y_i = +-1`` with equal probability; the selected token ``alpha_i`` is the argmax of the
    scores ``y_i v^T x_{i,t}`` (distinct scores with probability 1). With ``d >= n (T - 1)`` the
    SVM is feasible for every selection (the constraint matrices are generically independent).

    Args:
        n: sequences.
        T: tokens per sequence (>= 2).
        d: dimension.
        generator: seeds the draw.
        dtype: floating dtype.

    Returns:
        Dict with ``X`` ``(n, T, d)``, ``Z`` ``(n, d)``, ``y`` ``(n,)``, ``v`` ``(d,)``,
        ``scores`` ``(n, T)`` and ``alpha`` ``(n,)`` (the globally optimal tokens).

    Raises:
        ValueError: for ``T < 2`` or non-positive sizes.

    Example:
        >>> data = make_attention_data(2, 3, 4, generator=torch.Generator().manual_seed(0))
        >>> data["X"].shape, bool((data["scores"].argmax(1) == data["alpha"]).all())
        (torch.Size([2, 3, 4]), True)
    """
    n = check_positive_int(n, "n")
    T = check_positive_int(T, "T", minimum=2)
    d = check_positive_int(d, "d")

    def unit(*shape: int) -> Tensor:
        g = torch.randn(*shape, generator=generator, dtype=torch.float64)
        return g / g.norm(dim=-1, keepdim=True)

    X, Z, v = unit(n, T, d), unit(n, d), unit(d)
    y = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).double()
    scores = token_scores(X, v, y)
    return {
        "X": X.to(dtype),
        "Z": Z.to(dtype),
        "y": y.to(dtype),
        "v": v.to(dtype),
        "scores": scores.to(dtype),
        "alpha": scores.argmax(1),
    }
