r"""Bilevel test problems: SVM hyperparameter learning on digits (P27) and multi-task ridge (P28).

:class:`SVMHyperparameters` is the benchmark of Yao, Yu, Zeng & Zhang (arXiv:2401.16164, Sec. 5):
per-training-sample costs ``c`` are the upper-level variables; the lower level is the soft-margin
SVM ``min_{w, b, xi} ||w||^2 / 2 + sum_i exp(c_i) xi_i^2 / 2`` subject to the coupled constraints
``1 - xi_i - y_i (w^T z_i + b) <= 0``; the upper level is their smoothed validation error
``mean_j leaky_relu(2 sigmoid(-5 y_j (w^T z_j + b) / ||w||) - 1)``. Data: two digit classes of
scikit-learn's bundled digits, standardized, with a share of the training labels flipped.

:class:`MultiTaskRidge` is a many-block problem in the sense of Hu et al. (arXiv:2305.18730):
``m`` regression tasks share per-feature ridge penalties ``exp(x)`` (upper level, validation loss
averaged over tasks); each task's lower level is its own ridge regression. Everything has a closed
form, so exact hypergradients measure the stochastic methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as tnf

from .._checks import check_positive_float, check_positive_int
from .projections import Box, Polyhedron

__all__ = ["MultiTaskRidge", "SVMHyperparameters"]


@dataclass
class SVMHyperparameters:
    """SVM hyperparameter learning with coupled lower-level constraints (LV-HBA's benchmark).

    Variables: ``x = c`` (``n_train`` log-costs), ``y = [w (d), b (1), xi (n_train)]``.

    Attributes:
        Z_train, y_train, Z_val, y_val, Z_test, y_test: data (labels in ``{-1, +1}``).
        c_bounds: the box of ``c``.

    Example:
        >>> P = SVMHyperparameters.digits(n_train=40, n_val=30)
        >>> c = torch.zeros(P.n, dtype=torch.float64)  # log-costs
        >>> g = torch.Generator().manual_seed(0)
        >>> u = torch.randn(P.d + 1, dtype=torch.float64, generator=g)  # (w, b)
        >>> y = P.lift(u)  # with the optimal slacks: feasible for the coupled constraints
        >>> float(P.constraints(c, y).max()) <= 1e-12
        True
        >>> bool(torch.isclose(P.lower_objective(c, y), P.squared_hinge_objective(c, u)))
        True
        >>> X, C_y = P.feasible_set()
        >>> X.violation(c), C_y.violation(y) < 1e-8
        (0.0, True)
    """

    Z_train: Tensor
    y_train: Tensor
    Z_val: Tensor
    y_val: Tensor
    Z_test: Tensor
    y_test: Tensor
    c_bounds: tuple[float, float] = (-8.0, 4.0)

    @classmethod
    def digits(
        cls,
        classes: tuple[int, int] = (3, 8),
        n_train: int = 150,
        n_val: int = 100,
        corruption: float = 0.2,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> SVMHyperparameters:
        """Two digit classes, standardized, ``corruption`` of the training labels flipped.

        Args:
            classes: the two digits (first is ``+1``).
            n_train: training samples.
            n_val: validation samples (the rest is the test set).
            corruption: fraction of flipped training labels, in ``[0, 0.5)``.
            seed: shuffling and corruption seed.
            dtype: floating dtype.

        Returns:
            The problem.

        Raises:
            ValueError: for ``corruption`` outside ``[0, 0.5)`` or more samples than the classes
                have.

        Example:
            >>> P = SVMHyperparameters.digits(n_train=40, n_val=30)
            >>> P.Z_train.shape, P.dim_y
            (torch.Size([40, 64]), 105)
        """
        from sklearn.datasets import load_digits

        check_positive_int(n_train, "n_train")
        check_positive_int(n_val, "n_val")
        if not 0.0 <= corruption < 0.5:
            raise ValueError(f"corruption must be in [0, 0.5), got {corruption}")
        data = load_digits()
        X = torch.as_tensor(data.data, dtype=torch.float64)
        t = torch.as_tensor(data.target)
        keep = (t == classes[0]) | (t == classes[1])
        X, lab = X[keep], torch.where(t[keep] == classes[0], 1.0, -1.0).to(torch.float64)
        if n_train + n_val >= X.shape[0]:
            raise ValueError(f"n_train + n_val must be < {X.shape[0]} samples of {classes}")
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(X.shape[0], generator=gen)
        X, lab = X[perm], lab[perm]
        mean, std = X[:n_train].mean(0), X[:n_train].std(0)
        X = (X - mean) / torch.where(std > 1e-8, std, torch.ones_like(std))
        ytr = lab[:n_train].clone()
        flip = torch.rand(n_train, generator=gen) < corruption
        ytr[flip] = -ytr[flip]
        s = n_train + n_val
        return cls(
            X[:n_train].to(dtype),
            ytr.to(dtype),
            X[n_train:s].to(dtype),
            lab[n_train:s].to(dtype),
            X[s:].to(dtype),
            lab[s:].to(dtype),
        )

    @property
    def n(self) -> int:
        """Training samples (``= len(x)`` and the number of constraints)."""
        return int(self.Z_train.shape[0])

    @property
    def d(self) -> int:
        """Features."""
        return int(self.Z_train.shape[1])

    @property
    def dim_y(self) -> int:
        """``d + 1 + n``."""
        return self.d + 1 + self.n

    def split(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(w, b, xi)`` from ``y``."""
        return y[: self.d], y[self.d], y[self.d + 1 :]

    def validation_loss(self, x: Tensor, y: Tensor, *, test: bool = False) -> Tensor:
        """Upper objective ``F``: smoothed 0-1 loss of ``(w, b)`` on validation (or test) data."""
        w, b, _ = self.split(y)
        Z, lab = (self.Z_test, self.y_test) if test else (self.Z_val, self.y_val)
        margin = lab * (Z @ w + b) / w.norm().clamp_min(1e-12)
        return tnf.leaky_relu(2 * torch.sigmoid(-5.0 * margin) - 1).mean()

    def accuracy(self, y: Tensor, *, test: bool = True) -> float:
        """Accuracy of ``sign(Z w + b)`` on test (or validation) data."""
        w, b, _ = self.split(y)
        Z, lab = (self.Z_test, self.y_test) if test else (self.Z_val, self.y_val)
        return float(((Z @ w + b) * lab > 0).to(torch.float64).mean())

    def lower_objective(self, x: Tensor, y: Tensor) -> Tensor:
        """``f(c, (w, b, xi)) = ||w||^2 / 2 + sum_i exp(c_i) xi_i^2 / 2``."""
        w, _, xi = self.split(y)
        return 0.5 * (w * w).sum() + 0.5 * (torch.exp(x) * xi * xi).sum()

    def constraints(self, x: Tensor, y: Tensor) -> Tensor:
        """``g(c, (w, b, xi)) = 1 - xi - y_train * (Z_train w + b)`` (``<= 0`` is feasible)."""
        w, b, xi = self.split(y)
        return 1.0 - xi - self.y_train * (self.Z_train @ w + b)

    def feasible_set(self) -> tuple[Box, Polyhedron]:
        """``(X, C_y)``: the box of ``c`` and the polyhedron ``{y: g(., y) <= 0}``."""
        G = torch.cat(
            [
                -self.y_train[:, None] * self.Z_train,
                -self.y_train[:, None],
                -torch.eye(self.n, dtype=self.Z_train.dtype),
            ],
            dim=1,
        )
        return Box(*self.c_bounds), Polyhedron(G, -torch.ones(self.n, dtype=G.dtype))

    def squared_hinge_objective(self, x: Tensor, u: Tensor) -> Tensor:
        """The equivalent unconstrained lower level in ``u = (w, b)``.

        Eliminating ``xi`` (optimal at ``max(0, 1 - y_i (w^T z_i + b))``) gives
        ``||w||^2 / 2 + sum_i exp(c_i) max(0, 1 - y_i (w^T z_i + b))^2 / 2``.

        Args:
            x: the log-costs ``c``.
            u: ``(w, b)``.

        Returns:
            The objective (scalar).
        """
        w, b = u[: self.d], u[self.d]
        slack = (1.0 - self.y_train * (self.Z_train @ w + b)).clamp_min(0)
        return 0.5 * (w * w).sum() + 0.5 * (torch.exp(x) * slack * slack).sum()

    def lift(self, u: Tensor) -> Tensor:
        """``y = (w, b, xi)`` from ``u = (w, b)`` with the optimal slacks ``xi = max(0, 1 - m)``."""
        w, b = u[: self.d], u[self.d]
        xi = (1.0 - self.y_train * (self.Z_train @ w + b)).clamp_min(0)
        return torch.cat([u, xi])


@dataclass
class MultiTaskRidge:
    """``m`` ridge-regression tasks sharing per-feature log-penalties ``x`` (``d`` of them).

    ``g_i(x, y) = mean_j (a_ij^T y - b_ij)^2 / 2 + sum_k exp(x_k) y_k^2 / 2`` on task ``i``'s
    training samples; ``f_i(x, y) = mean_j (a'_ij^T y - b'_ij)^2 / 2 + upper_reg ||x||^2 / 2`` on
    its validation samples (the small penalty on ``x`` removes the flat region ``x -> inf`` where
    every ``y_i* -> 0`` and the hypergradient vanishes without ``x`` being a minimizer).

    Attributes:
        A, b: training inputs ``(m, n, d)`` and targets ``(m, n)``.
        Av, bv: validation inputs and targets (same shapes).
        upper_reg: weight of ``||x||^2 / 2`` in every ``f_i``.

    Example:
        >>> P = MultiTaskRidge.random(3, 4, 10, generator=torch.Generator().manual_seed(0))
        >>> x = torch.zeros(4, dtype=torch.float64)
        >>> # the exact hypergradient against central differences of the exact objective
        >>> eps, E = 1e-6, torch.eye(4, dtype=torch.float64)
        >>> fd = [(P.objective(x + eps * e) - P.objective(x - eps * e)) / (2 * eps) for e in E]
        >>> bool(torch.allclose(P.hypergradient(x), torch.tensor(fd, dtype=torch.float64),
        ...                     atol=1e-7))
        True
        >>> # the stochastic interface: all blocks, all samples give m times the exact objective
        >>> Y, blocks = P.lower_solution(x), torch.arange(3)
        >>> full = P.upper(x, Y, blocks, torch.arange(10).expand(3, 10))
        >>> abs(float(full) / 3 - P.objective(x)) < 1e-12
        True
    """

    A: Tensor
    b: Tensor
    Av: Tensor
    bv: Tensor
    upper_reg: float = 0.0

    @classmethod
    def random(
        cls,
        num_blocks: int,
        dim: int,
        samples: int,
        *,
        noise: float = 0.5,
        upper_reg: float = 0.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> MultiTaskRidge:
        """Tasks ``w_i = w0 + 0.3 delta_i`` with half of ``w0``'s entries zero; targets with noise.

        Args:
            num_blocks: ``m``.
            dim: ``d``.
            samples: training (and validation) samples per task.
            noise: target noise standard deviation (``> 0``).
            upper_reg: weight of ``||x||^2 / 2`` in the upper level (``>= 0``).
            generator: randomness.
            dtype: floating dtype.

        Returns:
            The problem.

        Example:
            >>> P = MultiTaskRidge.random(3, 4, 10, generator=torch.Generator().manual_seed(0))
            >>> P.num_blocks, P.samples_per_block, tuple(P.lower_solution(torch.zeros(4)).shape)
            (3, 10, (3, 4))
        """
        m, d, n = (
            check_positive_int(v, k)
            for v, k in ((num_blocks, "num_blocks"), (dim, "dim"), (samples, "samples"))
        )
        noise = check_positive_float(noise, "noise")
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        w0 = torch.randn(d, generator=gen, dtype=torch.float64) * (torch.arange(d) % 2 == 0)
        W = w0 + 0.3 * torch.randn(m, d, generator=gen, dtype=torch.float64)

        def draw() -> tuple[Tensor, Tensor]:
            A = torch.randn(m, n, d, generator=gen, dtype=torch.float64)
            y = torch.einsum("mnd,md->mn", A, W) + noise * torch.randn(
                m, n, generator=gen, dtype=torch.float64
            )
            return A.to(dtype), y.to(dtype)

        (A, b), (Av, bv) = draw(), draw()
        return cls(A, b, Av, bv, check_positive_float(upper_reg, "upper_reg", allow_zero=True))

    @property
    def num_blocks(self) -> int:
        """``m``."""
        return int(self.A.shape[0])

    @property
    def samples_per_block(self) -> int:
        """``n``."""
        return int(self.A.shape[1])

    @property
    def dim(self) -> int:
        """``d``."""
        return int(self.A.shape[2])

    @staticmethod
    def _mse(A: Tensor, b: Tensor, Y: Tensor) -> Tensor:
        r = torch.einsum("ibd,id->ib", A, Y) - b
        return 0.5 * (r * r).mean(dim=1).sum()

    def lower(self, x: Tensor, Y: Tensor, blocks: Tensor, samples: Tensor) -> Tensor:
        """Sum over the sampled blocks of ``g_i`` on the sampled training rows."""
        A = self.A[blocks[:, None], samples]
        b = self.b[blocks[:, None], samples]
        return self._mse(A, b, Y) + 0.5 * (torch.exp(x) * Y * Y).sum()

    def upper(self, x: Tensor, Y: Tensor, blocks: Tensor, samples: Tensor) -> Tensor:
        """Sum over the sampled blocks of ``f_i`` on the sampled validation rows."""
        val = self._mse(self.Av[blocks[:, None], samples], self.bv[blocks[:, None], samples], Y)
        return val + 0.5 * self.upper_reg * blocks.numel() * (x * x).sum()

    def _hessians(self, x: Tensor) -> Tensor:
        n = self.samples_per_block
        return self.A.transpose(1, 2) @ self.A / n + torch.diag_embed(
            torch.exp(x).expand(self.num_blocks, -1)
        )

    def lower_solution(self, x: Tensor) -> Tensor:
        """Exact ``y_i*(x)`` of every block, ``(m, d)``."""
        x = x.to(self.A.dtype)
        rhs = torch.einsum("mnd,mn->md", self.A, self.b) / self.samples_per_block
        return torch.linalg.solve(self._hessians(x), rhs)

    def objective(self, x: Tensor) -> float:
        """Exact upper objective ``(1/m) sum_i f_i(x, y_i*(x))``."""
        Y = self.lower_solution(x)
        r = torch.einsum("mnd,md->mn", self.Av, Y) - self.bv
        return float(0.5 * (r * r).mean()) + 0.5 * self.upper_reg * float((x * x).sum())

    def hypergradient(self, x: Tensor) -> Tensor:
        """Exact ``dF/dx = -(1/m) sum_i exp(x) * y_i* * H_i^{-1} grad_y f_i`` (dense solves)."""
        x = x.to(self.A.dtype)
        Y = self.lower_solution(x)
        r = torch.einsum("mnd,md->mn", self.Av, Y) - self.bv
        fy = torch.einsum("mnd,mn->md", self.Av, r) / self.samples_per_block
        v = torch.linalg.solve(self._hessians(x), fy)
        return -(torch.exp(x) * Y * v).mean(0) + self.upper_reg * x
