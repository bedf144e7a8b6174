r"""Exact learning dynamics of a linear student and their random-matrix limit.

A linear *teacher* ``w*`` labels ``P`` random inputs of dimension ``N``; a linear *student*
``w`` starts at ``w_0`` and descends the training loss
``L(w) = ||y - X w||^2 / (2P)``. The loss is quadratic with Hessian ``H = X^T X / P``, so the
dynamics decouple in the eigenbasis ``H = V diag(lambda) V^T``: along eigenvector ``v_i`` the
distance to the least-squares solution shrinks by the factor

* ``exp(-lambda_i t)`` under gradient flow ``dw/dt = -grad L(w)`` at time ``t``, and
* ``(1 - eta lambda_i)^k`` after ``k`` steps of gradient descent with learning rate ``eta``,

and the ``N - rank(X)`` directions with ``lambda_i = 0`` (the null space of ``X``, nonempty when
``P < N``) receive no gradient at all: the weights there stay at their initial values forever
(the *frozen subspace*). As ``N, P -> infinity`` with ``alpha = P / N`` fixed, the eigenvalues of
``H`` follow the Marchenko–Pastur law (:class:`MarchenkoPastur`), and averaging the per-mode
errors against it gives the expected error curves in closed form
(:func:`theory_error_curves`). Small eigenvalues pile up at zero when ``alpha = 1``: the
noise fitted along them blows up the converged test error there (the overtraining peak), while
early stopping never lets those modes fit.

Scaling conventions (all float64):

* inputs ``X`` are ``P x N`` with i.i.d. ``N(0, 1)`` entries, so ``E[x x^T] = I`` and the
  expected squared error of ``w`` on a fresh example is exactly
  ``E_g(w) = ||w - w*||^2 + sigma_eps^2``;
* the teacher is ``w* ~ N(0, (teacher_var / N) I)`` (``||w*||^2 ~ teacher_var``), labels are
  ``y = X w* + eps`` with ``eps ~ N(0, sigma_eps^2 I)``, so the signal-to-noise ratio is
  ``SNR = teacher_var / sigma_eps^2``;
* the student starts at ``w_0 ~ N(0, (sigma_0^2 / N) I)`` (``||w_0||^2 ~ sigma_0^2``);
* errors are mean squared errors without the ``1/2``: ``E_train = ||y - X w||^2 / P``.

The paper uses inputs with variance ``1/N`` and teacher entries with variance ``sigma_w^2``,
i.e. ``X_paper = X / sqrt(N)`` and ``w_paper = sqrt(N) w``; its Gram matrix
``X_paper^T X_paper = alpha H`` has Marchenko–Pastur edges ``(1 +- sqrt(alpha))^2`` and its
time ``t_paper / tau`` equals ``t / alpha`` here. Errors are identical in both conventions.

References:
    Advani, Saxe, Sompolinsky. "High-dimensional dynamics of generalization error in neural
    networks." Neural Networks 132, 2020. arXiv:1710.03667.

    Marchenko, Pastur. "Distribution of eigenvalues for some sets of random matrices."
    Mathematics of the USSR-Sbornik 1(4), 1967.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor, check_positive_float, check_positive_int

__all__ = [
    "ErrorCurves",
    "MarchenkoPastur",
    "StudentTeacher",
    "asymptotic_test_error",
    "closed_form_weights",
    "decay_factors",
    "error_curves",
    "frozen_subspace_basis",
    "frozen_subspace_drift",
    "run_gradient_descent",
    "student_teacher",
    "theory_error_curves",
]

_EPS = torch.finfo(torch.float64).eps
_Times = Tensor | Sequence[float] | float | int


def _check_generator(generator: object) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    return generator


def _check_learning_rate(learning_rate: object) -> float | None:
    if learning_rate is None:
        return None
    return check_positive_float(learning_rate, "learning_rate")


def _check_alpha(alpha: object) -> float:
    return check_positive_float(alpha, "alpha")


def _as_times(times: _Times, *, integer: bool) -> Tensor:
    """Times as a 1-D float64 tensor of values ``>= 0`` (``inf`` allowed; integers for GD)."""
    if isinstance(times, bool):
        raise TypeError(f"times must be numbers, got {times!r}")
    if isinstance(times, Tensor):
        if times.dtype == torch.bool or times.is_complex():
            raise TypeError(f"times must be a real tensor, got dtype {times.dtype}")
        t = times.detach().to(torch.float64).reshape(-1)
    elif isinstance(times, (int, float)):
        t = torch.tensor([float(times)], dtype=torch.float64)
    elif isinstance(times, Sequence) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in times
    ):
        t = torch.tensor([float(v) for v in times], dtype=torch.float64)
    else:
        raise TypeError(
            f"times must be a tensor, a number or a sequence of numbers, got {type(times).__name__}"
        )
    if t.numel() == 0:
        raise ValueError("times must not be empty")
    if bool(torch.isnan(t).any()) or bool((t < 0).any()):
        raise ValueError(f"times must be >= 0 (inf allowed), got {t.tolist()}")
    finite = t[torch.isfinite(t)]
    if integer and bool((finite != finite.round()).any()):
        raise ValueError(
            "gradient-descent times are step counts and must be whole numbers (or inf), "
            f"got {finite[finite != finite.round()].tolist()}"
        )
    return t


def _decay(
    eigenvalues: Tensor, times: Tensor, learning_rate: float | None
) -> tuple[Tensor, Tensor]:
    """Per-mode factors ``g`` and ``1 - g`` (computed without cancellation), shape ``(T, N)``."""
    lam = eigenvalues.reshape(1, -1)
    t = times.reshape(-1, 1)
    zero = lam == 0
    t_inf = torch.isinf(t).expand(-1, lam.shape[1])
    if learning_rate is None:
        rate = torch.where(zero, 0.0, lam * torch.where(torch.isinf(t), 0.0, t))
        g = torch.exp(-rate)
        one_minus = -torch.expm1(-rate)
    else:
        base = (1.0 - learning_rate * lam).expand(t.shape[0], -1)
        steps = torch.where(torch.isinf(t), 0.0, t).expand(-1, lam.shape[1])
        g = torch.pow(base, steps)
        positive = base > 0
        log_base = torch.log1p(torch.where(positive, -learning_rate * lam, 0.0).expand_as(base))
        one_minus = torch.where(positive, -torch.expm1(steps * log_base), 1.0 - g)
        unstable = t_inf & ~zero & (base.abs() >= 1)
        if bool(unstable.any()):
            raise ValueError(
                f"learning_rate={learning_rate} does not converge (learning_rate * lambda >= 2 "
                f"for lambda = {float(lam.max())}), so the limit t = inf does not exist"
            )
    g = torch.where(t_inf & ~zero, 0.0, g)
    one_minus = torch.where(t_inf & ~zero, 1.0, one_minus)
    return g, one_minus


def decay_factors(eigenvalues: Tensor, times: _Times, learning_rate: float | None = None) -> Tensor:
    """How much of each eigenmode's initial distance to its optimum remains at each time.

    Gradient flow on a quadratic with Hessian eigenvalue ``lambda`` shrinks that mode's distance
    to the optimum by ``exp(-lambda t)``; gradient descent with learning rate ``eta`` by
    ``(1 - eta lambda)^k`` after ``k`` steps (Advani, Saxe & Sompolinsky 2020). Modes with
    ``lambda = 0`` never move (factor 1).

    Args:
        eigenvalues: ``(N,)`` float Hessian eigenvalues ``lambda_i >= 0``.
        times: flow times ``t >= 0`` (gradient flow) or step counts (gradient descent); ``inf``
            gives the converged limit.
        learning_rate: ``None`` for gradient flow, else the gradient-descent learning rate.

    Returns:
        ``(T, N)`` float64 factors, one row per time.

    Raises:
        TypeError: if ``eigenvalues`` is not a real float tensor or ``times`` not numbers.
        ValueError: for negative or non-finite eigenvalues, negative or NaN times, non-integer
            step counts, a non-positive learning rate, or ``t = inf`` with an unstable
            learning rate (``eta lambda >= 2``).

    Example:
        >>> lam = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
        >>> decay_factors(lam, [0.0, math.log(2)])
        tensor([[1.0000, 1.0000, 1.0000],
                [1.0000, 0.5000, 0.2500]], dtype=torch.float64)
        >>> decay_factors(lam, [3], learning_rate=0.5)
        tensor([[1.0000, 0.1250, 0.0000]], dtype=torch.float64)
    """
    lam = check_finite(check_float_tensor(eigenvalues, "eigenvalues", ndim=1), "eigenvalues")
    if bool((lam < 0).any()):
        raise ValueError(f"eigenvalues must be >= 0, got minimum {float(lam.min())}")
    lr = _check_learning_rate(learning_rate)
    t = _as_times(times, integer=lr is not None)
    return _decay(lam.to(torch.float64), t, lr)[0]


# ----- the student-teacher problem ----------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class StudentTeacher:
    """A linear student-teacher regression problem (inputs, noisy labels, teacher, student init).

    Tensors are converted to float64 (new tensors; the caller's are never modified). The test
    error ``||w - w*||^2 + noise_std^2`` is the expected squared error on a fresh example only
    for inputs with identity covariance, as those of :func:`student_teacher`.

    Args:
        inputs: ``(P, N)`` inputs ``X``, one example per row.
        targets: ``(P,)`` labels ``y``.
        teacher: ``(N,)`` teacher weights ``w*``.
        init: ``(N,)`` initial student weights ``w_0``.
        noise_std: label-noise standard deviation ``sigma_eps >= 0``.

    Raises:
        TypeError: if a tensor argument is not a real float tensor.
        ValueError: for mismatched shapes, non-finite entries or a negative ``noise_std``.

    Example:
        >>> X = torch.eye(2, dtype=torch.float64)
        >>> w_star = torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> p = StudentTeacher(X, X @ w_star, w_star, torch.zeros(2), noise_std=0.0)
        >>> p.alpha, p.test_error(torch.zeros(2)).item(), p.train_error(w_star).item()
        (1.0, 5.0, 0.0)
    """

    inputs: Tensor
    targets: Tensor
    teacher: Tensor
    init: Tensor
    noise_std: float

    def __post_init__(self) -> None:
        X = check_finite(check_float_tensor(self.inputs, "inputs", ndim=2), "inputs")
        P, N = X.shape
        if P == 0 or N == 0:
            raise ValueError(f"inputs must have at least one row and column, got {tuple(X.shape)}")
        for name, expected in (("targets", P), ("teacher", N), ("init", N)):
            v = check_finite(check_float_tensor(getattr(self, name), name, ndim=1), name)
            if v.shape[0] != expected:
                raise ValueError(
                    f"{name} must have length {expected} to match inputs of shape "
                    f"{tuple(X.shape)}, got {tuple(v.shape)}"
                )
            object.__setattr__(self, name, v.detach().to(torch.float64))
        object.__setattr__(self, "inputs", X.detach().to(torch.float64))
        sigma = check_positive_float(self.noise_std, "noise_std", allow_zero=True)
        object.__setattr__(self, "noise_std", sigma)

    @property
    def num_samples(self) -> int:
        """The number of examples ``P``."""
        return self.inputs.shape[0]

    @property
    def num_features(self) -> int:
        """The input dimension ``N``."""
        return self.inputs.shape[1]

    @property
    def alpha(self) -> float:
        """The load ``alpha = P / N``."""
        return self.num_samples / self.num_features

    def train_error(self, weights: Tensor) -> Tensor:
        """Training mean squared error ``||y - X w||^2 / P`` of each weight vector.

        Args:
            weights: ``(N,)`` or ``(T, N)`` student weights.

        Returns:
            A scalar or ``(T,)`` float64 tensor.
        """
        w = self._check_weights(weights)
        residual = self.targets - w @ self.inputs.mT
        return residual.square().mean(dim=-1)

    def test_error(self, weights: Tensor) -> Tensor:
        """Generalization error ``||w - w*||^2 + noise_std^2`` of each weight vector.

        Args:
            weights: ``(N,)`` or ``(T, N)`` student weights.

        Returns:
            A scalar or ``(T,)`` float64 tensor.
        """
        w = self._check_weights(weights)
        return (w - self.teacher).square().sum(dim=-1) + self.noise_std**2

    def _check_weights(self, weights: Tensor) -> Tensor:
        w = check_float_tensor(weights, "weights", ndim=(1, 2))
        if w.shape[-1] != self.num_features:
            raise ValueError(
                f"weights must have {self.num_features} entries in the last dimension, "
                f"got shape {tuple(w.shape)}"
            )
        return w.to(torch.float64)


def student_teacher(
    num_samples: int,
    num_features: int,
    *,
    noise_std: float = 0.5,
    teacher_var: float = 1.0,
    init_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> StudentTeacher:
    """Draw a random linear student-teacher problem (Advani, Saxe & Sompolinsky 2020).

    ``X`` has i.i.d. ``N(0, 1)`` entries, ``w* ~ N(0, teacher_var / N I)``,
    ``y = X w* + eps`` with ``eps ~ N(0, noise_std^2 I)``, and ``w_0 = init_std * z`` with
    ``z ~ N(0, I / N)``; so ``SNR = teacher_var / noise_std^2``. The draws happen in that order
    from ``generator`` and ``z`` is drawn even when ``init_std = 0``, so problems that differ
    only in ``init_std`` share their data and the direction of their initialization.

    Args:
        num_samples: ``P >= 1``.
        num_features: ``N >= 1``.
        noise_std: label-noise standard deviation ``sigma_eps >= 0``.
        teacher_var: expected squared norm of the teacher ``>= 0``.
        init_std: initialization scale ``sigma_0 >= 0`` (``||w_0||^2 ~ sigma_0^2``).
        generator: source of randomness (``None``: torch's global generator).

    Returns:
        The problem, in float64.

    Raises:
        TypeError: for non-integer sizes, non-numeric scales or a non-generator ``generator``.
        ValueError: for sizes below 1 or negative / non-finite scales.

    Example:
        >>> p = student_teacher(300, 100, noise_std=0.5, generator=torch.Generator().manual_seed(0))
        >>> p.inputs.shape, p.alpha
        (torch.Size([300, 100]), 3.0)
        >>> bool(abs(p.test_error(torch.zeros(100)) - 1.25) < 0.5)
        True
    """
    P = check_positive_int(num_samples, "num_samples")
    N = check_positive_int(num_features, "num_features")
    sigma = check_positive_float(noise_std, "noise_std", allow_zero=True)
    var_w = check_positive_float(teacher_var, "teacher_var", allow_zero=True)
    sigma0 = check_positive_float(init_std, "init_std", allow_zero=True)
    gen = _check_generator(generator)
    opts = {"dtype": torch.float64, "generator": gen}
    X = torch.randn(P, N, **opts)  # type: ignore[arg-type]
    teacher = torch.randn(N, **opts) * math.sqrt(var_w / N)  # type: ignore[arg-type]
    noise = torch.randn(P, **opts) * sigma  # type: ignore[arg-type]
    init = torch.randn(N, **opts) * (sigma0 / math.sqrt(N))  # type: ignore[arg-type]
    return StudentTeacher(X, X @ teacher + noise, teacher, init, sigma)


# ----- exact dynamics in the eigenbasis -----------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Modes:
    """A problem in the eigenbasis of ``H = X^T X / P``.

    Along ``v_i`` the student is ``c_i(t) = c_i(0) + fit_i (1 - g_i(t))`` and its distance to the
    teacher ``d_i(t) = init_error_i + fit_i (1 - g_i(t))``; ``fit_i = 0`` on the null space.
    """

    eigenvalues: Tensor  # (N,), exactly 0 beyond the numerical rank
    basis: Tensor  # (N, N), columns v_i
    fit: Tensor  # (N,) c*_i - c_i(0), the least-squares target minus the start
    init_error: Tensor  # (N,) v_i^T (w_0 - w*)
    residual_floor: Tensor  # () ||y - proj_range(X) y||^2 / P, the train error at convergence


def _modes(problem: StudentTeacher) -> _Modes:
    X, y = problem.inputs, problem.targets
    P, N = X.shape
    U, s, Vh = torch.linalg.svd(X, full_matrices=P < N)  # Vh is N x N in both cases
    V = Vh.mT
    tol = float(s.max()) * max(P, N) * _EPS
    rank = int((s > tol).sum())
    U_r, s_r = U[:, :rank], s[:rank]
    uy = U_r.mT @ y
    eigenvalues = torch.zeros(N, dtype=torch.float64)
    eigenvalues[:rank] = s_r.square() / P
    c0 = V.mT @ problem.init
    fit = torch.zeros(N, dtype=torch.float64)
    fit[:rank] = uy / s_r - c0[:rank]
    floor = (y - U_r @ uy).square().sum() / P
    return _Modes(eigenvalues, V, fit, c0 - V.mT @ problem.teacher, floor)


def _check_problem(problem: object) -> StudentTeacher:
    if not isinstance(problem, StudentTeacher):
        raise TypeError(f"problem must be a StudentTeacher, got {type(problem).__name__}")
    return problem


def closed_form_weights(
    problem: StudentTeacher, times: _Times, *, learning_rate: float | None = None
) -> Tensor:
    """The student's weights at each time, in closed form from the eigenbasis of ``X^T X``.

    ``w_t = w_0 + sum_i v_i (c*_i - v_i^T w_0) (1 - g_i(t))`` over the modes with
    ``lambda_i > 0``, with ``c*_i`` the least-squares coordinate and ``g_i`` from
    :func:`decay_factors`; the null-space component of ``w_0`` is carried unchanged (Advani,
    Saxe & Sompolinsky 2020).

    Args:
        problem: the problem.
        times: flow times (gradient flow) or step counts (gradient descent); ``inf`` allowed.
        learning_rate: ``None`` for gradient flow, else the gradient-descent learning rate.

    Returns:
        ``(T, N)`` float64 weights.

    Raises:
        TypeError: if ``problem`` is not a :class:`StudentTeacher` or ``times`` not numbers.
        ValueError: for bad times or learning rate (see :func:`decay_factors`).

    Example:
        >>> p = student_teacher(50, 20, generator=torch.Generator().manual_seed(0))
        >>> w = closed_form_weights(p, [0.0, math.inf])
        >>> bool(torch.equal(w[0], p.init))
        True
        >>> w_ls = torch.linalg.lstsq(p.inputs, p.targets).solution
        >>> bool(torch.allclose(w[1], w_ls, atol=1e-12))
        True
    """
    modes = _modes(_check_problem(problem))
    lr = _check_learning_rate(learning_rate)
    _, one_minus = _decay(modes.eigenvalues, _as_times(times, integer=lr is not None), lr)
    return problem.init + (one_minus * modes.fit) @ modes.basis.mT


def run_gradient_descent(
    problem: StudentTeacher, learning_rate: float, num_steps: int, *, record_every: int = 1
) -> tuple[Tensor, Tensor]:
    """Run full-batch gradient descent on ``||y - X w||^2 / (2P)`` explicitly, step by step.

    ``w_{k+1} = w_k - eta X^T (X w_k - y) / P`` from ``w_0 = problem.init``. This is the
    reference that the closed form of :func:`closed_form_weights` reproduces.

    Args:
        problem: the problem.
        learning_rate: ``eta > 0`` (stable for ``eta < 2 / lambda_max(X^T X / P)``).
        num_steps: number of steps ``>= 0``.
        record_every: keep the weights every this many steps (the last step is always kept).

    Returns:
        ``(steps, weights)``: ``(R,)`` int64 step counts starting at 0 and ``(R, N)`` float64
        weights after those steps.

    Raises:
        TypeError: for a non-:class:`StudentTeacher` problem or non-integer counts.
        ValueError: for a non-positive learning rate, negative counts, or weights that became
            non-finite (a divergent learning rate).

    Example:
        >>> p = student_teacher(50, 20, generator=torch.Generator().manual_seed(0))
        >>> steps, w = run_gradient_descent(p, 0.1, 30, record_every=10)
        >>> steps.tolist()
        [0, 10, 20, 30]
        >>> exact = closed_form_weights(p, steps, learning_rate=0.1)
        >>> bool((w - exact).abs().max() < 1e-12)
        True
    """
    problem = _check_problem(problem)
    lr = check_positive_float(learning_rate, "learning_rate")
    steps_total = check_positive_int(num_steps, "num_steps", minimum=0)
    every = check_positive_int(record_every, "record_every")
    X, y = problem.inputs, problem.targets
    scale = lr / problem.num_samples
    w = problem.init.clone()
    kept, recorded = [0], [w]
    for k in range(1, steps_total + 1):
        w = w - scale * (X.mT @ (X @ w - y))
        if k % every == 0 or k == steps_total:
            kept.append(k)
            recorded.append(w)
    weights = torch.stack(recorded)
    if not bool(torch.isfinite(weights).all()):
        raise ValueError(
            f"gradient descent diverged with learning_rate={lr}: the weights became non-finite "
            "(need learning_rate < 2 / lambda_max(X^T X / P))"
        )
    return torch.tensor(kept, dtype=torch.int64), weights


@dataclass(frozen=True, eq=False)
class ErrorCurves:
    """Training and test error along a trajectory.

    Attributes:
        times: ``(T,)`` float64 flow times or step counts (``inf`` = converged).
        train: ``(T,)`` float64 training MSE ``||y - X w_t||^2 / P``.
        test: ``(T,)`` float64 generalization error ``||w_t - w*||^2 + sigma_eps^2``.

    Example:
        At ``alpha = P / N = 1`` with label noise the training error goes to 0 while the test
        error blows up: early stopping wins.

        >>> g = torch.Generator().manual_seed(0)
        >>> p = student_teacher(40, 40, noise_std=0.5, generator=g)
        >>> c = error_curves(p, [0.0, 1.0, 3.0, 10.0, 30.0, 100.0, math.inf])
        >>> float(c.train[-1]) < 1e-20, float(c.test[-1]) > 1000
        (True, True)
        >>> t, err = c.optimal_stopping()
        >>> t, round(err, 4)
        (3.0, 0.5992)
    """

    times: Tensor
    train: Tensor
    test: Tensor

    def optimal_stopping(self) -> tuple[float, float]:
        """The time of the smallest test error on the grid (oracle early stopping) and that error.

        Returns:
            ``(time, test error)``.

        Example:
            >>> c = ErrorCurves(torch.tensor([0.0, 1.0, 2.0]), torch.zeros(3),
            ...                 torch.tensor([3.0, 1.0, 2.0]))
            >>> c.optimal_stopping()
            (1.0, 1.0)
        """
        i = int(torch.argmin(self.test))
        return float(self.times[i]), float(self.test[i])


def error_curves(
    problem: StudentTeacher, times: _Times, *, learning_rate: float | None = None
) -> ErrorCurves:
    """Exact training and test error curves of gradient flow or descent, mode by mode.

    In the eigenbasis of ``H = X^T X / P``:
    ``E_train(t) = E_floor + sum_i lambda_i fit_i^2 g_i(t)^2`` and
    ``E_g(t) = sigma_eps^2 + sum_i (v_i^T (w_0 - w*) + fit_i (1 - g_i(t)))^2``, where
    ``fit_i = c*_i - v_i^T w_0`` is what mode ``i`` has left to learn and ``E_floor`` the part
    of ``y`` outside the column space of ``X`` (Advani, Saxe & Sompolinsky 2020). The
    cost is ``O(T N)`` after one SVD, without forming the weights.

    Args:
        problem: the problem.
        times: flow times (gradient flow) or step counts (gradient descent); ``inf`` allowed.
        learning_rate: ``None`` for gradient flow, else the gradient-descent learning rate.

    Returns:
        The curves.

    Raises:
        TypeError: if ``problem`` is not a :class:`StudentTeacher` or ``times`` not numbers.
        ValueError: for bad times or learning rate (see :func:`decay_factors`).

    Example:
        >>> p = student_teacher(80, 40, generator=torch.Generator().manual_seed(1))
        >>> c = error_curves(p, [0.0, 1.0, math.inf])
        >>> w = closed_form_weights(p, [0.0, 1.0, math.inf])
        >>> bool(torch.allclose(c.test, p.test_error(w), rtol=1e-12))
        True
        >>> bool(torch.allclose(c.train, p.train_error(w), rtol=1e-10))
        True
    """
    modes = _modes(_check_problem(problem))
    lr = _check_learning_rate(learning_rate)
    t = _as_times(times, integer=lr is not None)
    g, one_minus = _decay(modes.eigenvalues, t, lr)
    train = modes.residual_floor + (modes.eigenvalues * (modes.fit * g).square()).sum(dim=1)
    test = (modes.init_error + modes.fit * one_minus).square().sum(dim=1) + problem.noise_std**2
    return ErrorCurves(t, train, test)


# ----- the frozen subspace ------------------------------------------------------------------------
def frozen_subspace_basis(inputs: Tensor) -> Tensor:
    """Orthonormal basis of the null space of ``X``: the directions gradient descent never moves.

    The gradient of any loss of ``X w`` is ``X^T r``, which lies in the row space of ``X``; the
    ``N - rank(X)`` orthogonal directions form the *frozen subspace* of Advani, Saxe &
    Sompolinsky (2020), where the weights stay at their initial values.

    Args:
        inputs: ``(P, N)`` inputs ``X``.

    Returns:
        ``(N, N - rank(X))`` float64 orthonormal columns (``rank`` with the tolerance
        ``s_max * max(P, N) * eps``).

    Raises:
        TypeError: if ``inputs`` is not a real float tensor.
        ValueError: if ``inputs`` is not 2-D or not finite.

    Example:
        >>> X = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> B = frozen_subspace_basis(X)
        >>> B.shape, bool((X @ B).abs().max() < 1e-14)
        (torch.Size([5, 2]), True)
    """
    X = check_finite(check_float_tensor(inputs, "inputs", ndim=2), "inputs").to(torch.float64)
    P, N = X.shape
    _, s, Vh = torch.linalg.svd(X, full_matrices=True)
    rank = int((s > float(s.max()) * max(P, N) * _EPS).sum()) if s.numel() else 0
    return Vh[rank:].mT.contiguous()


def frozen_subspace_drift(inputs: Tensor, init: Tensor, weights: Tensor) -> Tensor:
    """Norm of the frozen-subspace component of ``w - w_0`` for each weight vector.

    Exact gradient dynamics leave it at zero (Advani, Saxe & Sompolinsky 2020), so in
    float64 it measures rounding only (about ``1e-15``).

    Args:
        inputs: ``(P, N)`` inputs ``X``.
        init: ``(N,)`` initial weights ``w_0``.
        weights: ``(N,)`` or ``(T, N)`` weights ``w_t``.

    Returns:
        A scalar or ``(T,)`` float64 tensor ``||Pi_null(X) (w_t - w_0)||``.

    Raises:
        TypeError: if an argument is not a real float tensor.
        ValueError: for mismatched shapes or non-finite values.

    Example:
        >>> p = student_teacher(30, 60, init_std=1.0, generator=torch.Generator().manual_seed(0))
        >>> _, w = run_gradient_descent(p, 0.2, 200, record_every=50)
        >>> bool(frozen_subspace_drift(p.inputs, p.init, w).max() < 1e-13)
        True
    """
    B = frozen_subspace_basis(inputs)
    w0 = check_finite(check_float_tensor(init, "init", ndim=1), "init").to(torch.float64)
    w = check_finite(check_float_tensor(weights, "weights", ndim=(1, 2)), "weights")
    if w0.shape[0] != B.shape[0] or w.shape[-1] != B.shape[0]:
        raise ValueError(
            f"init and weights must have {B.shape[0]} entries (the columns of inputs), got "
            f"shapes {tuple(w0.shape)} and {tuple(w.shape)}"
        )
    return ((w.to(torch.float64) - w0) @ B).norm(dim=-1)


# ----- the random-matrix limit --------------------------------------------------------------------
@dataclass(frozen=True)
class MarchenkoPastur:
    """Marchenko–Pastur law of the eigenvalues of ``H = X^T X / P`` (``X``: ``P x N``, N(0,1)).

    As ``N, P -> infinity`` with ``alpha = P / N``, the ``N`` eigenvalues are distributed as a
    point mass ``max(0, 1 - alpha)`` at zero (the frozen subspace) plus the density
    ``rho(lambda) = sqrt((lambda_+ - lambda)(lambda - lambda_-)) / (2 pi lambda / alpha)`` on
    ``[lambda_-, lambda_+]``, ``lambda_+- = (1 +- 1 / sqrt(alpha))^2`` (Marchenko & Pastur 1967;
    Advani, Saxe & Sompolinsky 2020).

    Args:
        alpha: the load ``P / N > 0``.

    Raises:
        TypeError: if ``alpha`` is not a number.
        ValueError: if ``alpha`` is not finite and positive.

    Example:
        >>> mp = MarchenkoPastur(0.25)
        >>> mp.lower, mp.upper, mp.point_mass
        (1.0, 9.0, 0.75)
        >>> nodes, weights = mp.quadrature()
        >>> round(float(weights.sum()), 12), round(float((weights * nodes).sum()), 12)
        (0.25, 1.0)
    """

    alpha: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", _check_alpha(self.alpha))

    @property
    def lower(self) -> float:
        """Lower edge ``(1 - 1 / sqrt(alpha))^2`` of the continuous part."""
        return (1.0 - 1.0 / math.sqrt(self.alpha)) ** 2

    @property
    def upper(self) -> float:
        """Upper edge ``(1 + 1 / sqrt(alpha))^2`` of the continuous part."""
        return (1.0 + 1.0 / math.sqrt(self.alpha)) ** 2

    @property
    def point_mass(self) -> float:
        """Fraction ``max(0, 1 - alpha)`` of eigenvalues exactly at zero."""
        return max(0.0, 1.0 - self.alpha)

    def pdf(self, eigenvalues: Tensor) -> Tensor:
        """Density of the continuous part (it integrates to ``1 - point_mass``).

        Args:
            eigenvalues: float tensor of points ``lambda``.

        Returns:
            Float64 tensor of the same shape: ``rho(lambda)``, zero outside the support.

        Raises:
            TypeError: if ``eigenvalues`` is not a real float tensor.
        """
        lam = check_float_tensor(eigenvalues, "eigenvalues").to(torch.float64)
        inside = (lam > self.lower) & (lam < self.upper)
        safe = torch.where(inside, lam, torch.ones_like(lam))
        root = ((self.upper - safe) * (safe - self.lower)).clamp_min(0).sqrt()
        return torch.where(inside, root * self.alpha / (2 * math.pi * safe), 0.0)

    def quadrature(self, num_nodes: int = 4096) -> tuple[Tensor, Tensor]:
        """Nodes and weights integrating smooth functions against the continuous part.

        With ``lambda = m - r cos(theta)`` (``m``, ``r`` the centre and half-width of the
        support) the integrand becomes smooth and periodic in ``theta``, where the midpoint rule
        converges exponentially fast for analytic ``f``.

        Args:
            num_nodes: number of nodes ``>= 1``.

        Returns:
            ``(nodes, weights)``, float64 ``(num_nodes,)`` each, nodes strictly inside the support;
            ``sum(weights * f(nodes))`` approximates ``integral f(lambda) rho(lambda) dlambda``
            and ``weights`` sum to ``1 - point_mass``.

        Raises:
            TypeError: if ``num_nodes`` is not an int.
            ValueError: if ``num_nodes < 1``.
        """
        K = check_positive_int(num_nodes, "num_nodes")
        m = 0.5 * (self.upper + self.lower)
        r = 0.5 * (self.upper - self.lower)
        theta = (torch.arange(K, dtype=torch.float64) + 0.5) * (math.pi / K)
        nodes = m - r * torch.cos(theta)
        weights = (r * torch.sin(theta)).square() * self.alpha / (2 * K * nodes)
        return nodes, weights

    def mean_inverse(self) -> float:
        """``integral rho(lambda) / lambda dlambda`` over the continuous part.

        Returns:
            ``alpha / (alpha - 1)`` for ``alpha > 1``, ``alpha^2 / (1 - alpha)`` for
            ``alpha < 1`` and ``inf`` at ``alpha = 1`` (where ``lambda_- = 0``).
        """
        a = self.alpha
        if a == 1.0:
            return math.inf
        return a / (a - 1.0) if a > 1.0 else a * a / (1.0 - a)


def theory_error_curves(
    alpha: float,
    times: _Times,
    *,
    noise_std: float = 0.5,
    teacher_var: float = 1.0,
    init_std: float = 0.0,
    learning_rate: float | None = None,
    num_nodes: int = 4096,
) -> ErrorCurves:
    """Expected error curves as ``N, P -> infinity`` with ``alpha = P / N`` (random-matrix theory).

    Averaging each mode's error over the teacher, the noise and the initialization and its
    eigenvalue over the Marchenko–Pastur law gives (Advani, Saxe & Sompolinsky 2020,
    in the scaling of this module)::

        E_g(t)     = (teacher_var + sigma_0^2) [pm + <g^2>] + sigma_eps^2 / alpha <(1-g)^2 / lambda>
                     + sigma_eps^2
        E_train(t) = (teacher_var + sigma_0^2) <lambda g^2> + sigma_eps^2 / alpha <g^2>
                     + sigma_eps^2 max(0, 1 - 1 / alpha)

    where ``<.>`` integrates against the continuous part, ``pm = max(0, 1 - alpha)`` is the
    frozen fraction and ``g`` is the decay factor of :func:`decay_factors`. The first term of
    ``E_g`` is the unlearned signal (plus the initialization, which the frozen subspace keeps
    forever); the second is the noise fitted by the modes, which diverges at ``t = inf`` when
    ``alpha = 1``.

    Args:
        alpha: the load ``P / N > 0``.
        times: flow times (gradient flow) or step counts (gradient descent); ``inf`` allowed
            (evaluated exactly, see :func:`asymptotic_test_error`).
        noise_std: ``sigma_eps >= 0``.
        teacher_var: ``E||w*||^2 >= 0``.
        init_std: ``sigma_0 >= 0``.
        learning_rate: ``None`` for gradient flow, else the gradient-descent learning rate.
        num_nodes: quadrature nodes (:meth:`MarchenkoPastur.quadrature`).

    Returns:
        The expected curves.

    Raises:
        TypeError: for non-numeric arguments.
        ValueError: for out-of-range arguments (see :func:`decay_factors`).

    Example:
        >>> c = theory_error_curves(2.0, [0.0, math.inf], noise_std=0.5)
        >>> [round(v, 10) for v in c.test.tolist()]
        [1.25, 0.5]
        >>> [round(v, 10) for v in c.train.tolist()]
        [1.25, 0.125]
    """
    mp = MarchenkoPastur(alpha)
    sigma2 = check_positive_float(noise_std, "noise_std", allow_zero=True) ** 2
    var_w = check_positive_float(teacher_var, "teacher_var", allow_zero=True)
    var_0 = check_positive_float(init_std, "init_std", allow_zero=True) ** 2
    lr = _check_learning_rate(learning_rate)
    t = _as_times(times, integer=lr is not None)
    nodes, weights = mp.quadrature(num_nodes)
    g, one_minus = _decay(nodes, t, lr)
    a = mp.alpha
    signal = var_w + var_0
    test = (
        signal * (mp.point_mass + (weights * g.square()).sum(dim=1))
        + sigma2 / a * (weights * one_minus.square() / nodes).sum(dim=1)
        + sigma2
    )
    train = (
        signal * (weights * nodes * g.square()).sum(dim=1)
        + sigma2 / a * (weights * g.square()).sum(dim=1)
        + sigma2 * max(0.0, 1.0 - 1.0 / a)
    )
    converged = torch.isinf(t)
    if bool(converged.any()):
        limit = asymptotic_test_error(a, noise_std=noise_std, teacher_var=var_w, init_std=init_std)
        test = torch.where(converged, limit, test)
        train = torch.where(converged, sigma2 * max(0.0, 1.0 - 1.0 / a), train)
    return ErrorCurves(t, train, test)


def asymptotic_test_error(
    alpha: float, *, noise_std: float = 0.5, teacher_var: float = 1.0, init_std: float = 0.0
) -> float:
    """Expected test error of the converged student (``t -> inf``) as ``N, P -> infinity``.

    ``E_g(inf) = (teacher_var + sigma_0^2) max(0, 1 - alpha) + sigma_eps^2 (1 + V(alpha))`` with
    ``V = alpha / (1 - alpha)`` below ``alpha = 1`` and ``1 / (alpha - 1)`` above: the frozen
    subspace keeps the initialization and the unlearned teacher (first term), and the noise
    fitted along the smallest eigenvalues diverges at ``alpha = 1`` (the overtraining peak of
    Advani, Saxe & Sompolinsky 2020).

    Args:
        alpha: the load ``P / N > 0``.
        noise_std: ``sigma_eps >= 0``.
        teacher_var: ``E||w*||^2 >= 0``.
        init_std: ``sigma_0 >= 0``.

    Returns:
        The error (``inf`` at ``alpha = 1`` when ``noise_std > 0``).

    Raises:
        TypeError: for non-numeric arguments.
        ValueError: for negative or non-finite arguments, or ``alpha <= 0``.

    Example:
        >>> asymptotic_test_error(0.5, noise_std=0.5, init_std=1.0)
        1.5
        >>> asymptotic_test_error(1.0)
        inf
    """
    mp = MarchenkoPastur(alpha)
    sigma2 = check_positive_float(noise_std, "noise_std", allow_zero=True) ** 2
    var_w = check_positive_float(teacher_var, "teacher_var", allow_zero=True)
    var_0 = check_positive_float(init_std, "init_std", allow_zero=True) ** 2
    fitted = sigma2 / mp.alpha * mp.mean_inverse() if sigma2 > 0 else 0.0
    return (var_w + var_0) * mp.point_mass + fitted + sigma2
