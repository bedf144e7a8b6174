r"""Euclidean projections onto simple convex sets, in closed form, and onto polyhedra.

The upper-level variables of a constrained bilevel problem usually live in a simple set: a box
(hyperparameters with bounds), a simplex (weights that sum to one), an l1 or l2 ball, or a product
of these (:class:`Product`). Each set here computes ``argmin_{u in S} ||u - v||`` in closed form
(the simplex and l1 ball by the sort-and-threshold rule of Held, Wolfe & Crowder 1974 / Duchi,
Shalev-Shwartz, Singer & Chandra 2008), so no external convex solver is needed.

The coupled lower-level constraints of LV-HBA (Yao, Yu, Zeng & Zhang, "Constrained Bi-Level
Optimization: Proximal Lagrangian Value function Approach and Hessian-free Algorithm", ICLR 2024,
arXiv:2401.16164) require the projection onto ``C = {(x, y): g(x, y) <= 0}``; for affine ``g``
that is a polyhedron, projected by :class:`Polyhedron` through its dual, a non-negative
least-squares problem with finite termination (the KKT residual is recomputed and reported).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor, check_positive_float, check_positive_int

__all__ = [
    "Box",
    "ConvexSet",
    "L1Ball",
    "L2Ball",
    "NonNegative",
    "Polyhedron",
    "Product",
    "Reals",
    "Simplex",
    "split_projector",
]


def _vector(v: Tensor, name: str = "v") -> Tensor:
    v = check_finite(check_float_tensor(v, name, ndim=1), name)
    return v


class ConvexSet:
    """A closed convex set of vectors with a Euclidean projection.

    Subclasses implement :meth:`project`; :meth:`violation` is ``||project(v) - v||`` (0 exactly
    on the set, up to round-off).

    Example:
        A new set needs only :meth:`project`:

        >>> class NonPositive(ConvexSet):
        ...     def project(self, v):
        ...         return v.clamp(max=0.0)
        >>> v = torch.tensor([3.0, -1.0, 4.0])
        >>> NonPositive().project(v).tolist(), NonPositive().violation(v)
        ([0.0, -1.0, 0.0], 5.0)
    """

    def project(self, v: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Return the nearest point of the set to ``v`` (a 1-D tensor)."""
        raise NotImplementedError

    def violation(self, v: Tensor) -> float:
        """Distance from ``v`` to the set.

        Args:
            v: a 1-D float tensor.

        Returns:
            ``||project(v) - v||``.
        """
        return float((self.project(v) - v).norm())


@dataclass(frozen=True)
class Reals(ConvexSet):
    """The whole space (projection is the identity).

    Example:
        >>> v = torch.tensor([1.0, -2.0])
        >>> torch.equal(Reals().project(v), v)
        True
    """

    def project(self, v: Tensor) -> Tensor:
        """Return ``v`` (validated)."""
        return _vector(v)


@dataclass(frozen=True)
class Box(ConvexSet):
    """The box ``{u: lower <= u <= upper}`` (entries may be ``-inf`` / ``inf``).

    Args:
        lower: scalar or per-coordinate lower bounds.
        upper: scalar or per-coordinate upper bounds.

    Raises:
        ValueError: if some ``lower > upper`` (the box is empty) or a bound is NaN.

    Example:
        >>> Box(-1.0, 1.0).project(torch.tensor([-3.0, 0.5, 2.0]))
        tensor([-1.0000,  0.5000,  1.0000])
    """

    lower: float | Tensor = -float("inf")
    upper: float | Tensor = float("inf")

    def __post_init__(self) -> None:
        lo = torch.as_tensor(self.lower, dtype=torch.float64)
        hi = torch.as_tensor(self.upper, dtype=torch.float64)
        if bool(torch.isnan(lo).any()) or bool(torch.isnan(hi).any()):
            raise ValueError("Box bounds must not be NaN")
        if bool((lo > hi).any()):
            raise ValueError(
                f"Box is empty: lower > upper at {int((lo > hi).sum())} coordinate(s) "
                f"(lower={self.lower!r}, upper={self.upper!r})"
            )

    def project(self, v: Tensor) -> Tensor:
        """Clamp ``v`` coordinate-wise to ``[lower, upper]``."""
        v = _vector(v)
        lo = torch.as_tensor(self.lower, dtype=v.dtype, device=v.device)
        hi = torch.as_tensor(self.upper, dtype=v.dtype, device=v.device)
        if (lo.ndim and lo.shape != v.shape) or (hi.ndim and hi.shape != v.shape):
            raise ValueError(
                f"Box bounds of shape {tuple(lo.shape)}/{tuple(hi.shape)} do not match v of "
                f"shape {tuple(v.shape)}"
            )
        return torch.minimum(torch.maximum(v, lo), hi)


@dataclass(frozen=True)
class NonNegative(ConvexSet):
    """The non-negative orthant ``{u >= 0}``.

    Example:
        >>> NonNegative().project(torch.tensor([-1.0, 2.0]))
        tensor([0., 2.])
    """

    def project(self, v: Tensor) -> Tensor:
        """Return ``max(v, 0)``."""
        return _vector(v).clamp_min(0)


def _simplex(v: Tensor, radius: float) -> Tensor:
    """Projection onto ``{u >= 0, sum u = radius}`` by sorting (Held et al. 1974)."""
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0) - radius
    k = torch.arange(1, v.numel() + 1, dtype=v.dtype, device=v.device)
    cond = u - css / k > 0
    rho = int(torch.nonzero(cond).max())  # cond[0] is always true
    tau = css[rho] / (rho + 1)
    return (v - tau).clamp_min(0)


@dataclass(frozen=True)
class Simplex(ConvexSet):
    """The scaled probability simplex ``{u >= 0, sum(u) = radius}``.

    Args:
        radius: the sum, ``> 0``.

    Example:
        >>> p = Simplex().project(torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64))
        >>> p.tolist(), float(p.sum())
        ([0.0, 0.0, 1.0], 1.0)
    """

    radius: float = 1.0

    def __post_init__(self) -> None:
        check_positive_float(self.radius, "radius")

    def project(self, v: Tensor) -> Tensor:
        """Project onto the simplex in ``O(n log n)``."""
        v = _vector(v)
        if v.numel() == 0:
            raise ValueError("cannot project an empty vector onto a simplex (the set is empty)")
        return _simplex(v, self.radius)


@dataclass(frozen=True)
class L2Ball(ConvexSet):
    """The ball ``{u: ||u - center||_2 <= radius}``.

    Args:
        radius: ``>= 0``.
        center: the centre (default the origin).

    Example:
        >>> L2Ball(1.0).project(torch.tensor([3.0, 4.0]))
        tensor([0.6000, 0.8000])
    """

    radius: float = 1.0
    center: Tensor | None = None

    def __post_init__(self) -> None:
        check_positive_float(self.radius, "radius", allow_zero=True)

    def project(self, v: Tensor) -> Tensor:
        """Rescale ``v - center`` onto the ball if it lies outside."""
        v = _vector(v)
        c = torch.zeros_like(v) if self.center is None else self.center.to(v)
        d = v - c
        norm = d.norm()
        if norm <= self.radius:
            return v.clone()
        return c + d * (self.radius / norm)


@dataclass(frozen=True)
class L1Ball(ConvexSet):
    """The ball ``{u: ||u||_1 <= radius}``.

    Projected as in Duchi et al. (2008): soft-thresholding at the level given by the simplex
    projection of ``|v|``.

    Args:
        radius: ``>= 0``.

    Example:
        >>> L1Ball(1.0).project(torch.tensor([2.0, -1.0], dtype=torch.float64)).tolist()
        [1.0, -0.0]
    """

    radius: float = 1.0

    def __post_init__(self) -> None:
        check_positive_float(self.radius, "radius", allow_zero=True)

    def project(self, v: Tensor) -> Tensor:
        """Project onto the l1 ball."""
        v = _vector(v)
        if float(v.abs().sum()) <= self.radius:
            return v.clone()
        if self.radius == 0:
            return torch.zeros_like(v)
        return torch.sign(v) * _simplex(v.abs(), self.radius)


@dataclass(frozen=True)
class Product(ConvexSet):
    """The Cartesian product of sets acting on consecutive slices of a vector.

    Args:
        parts: ``(size, set)`` pairs; the vector has ``sum(size)`` entries.

    Example:
        >>> S = Product(((2, Box(0.0, 1.0)), (2, L2Ball(1.0))))
        >>> S.project(torch.tensor([-1.0, 0.5, 0.0, 2.0])).tolist()
        [0.0, 0.5, 0.0, 1.0]
    """

    parts: tuple[tuple[int, ConvexSet], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("Product needs at least one (size, set) part")
        for size, s in self.parts:
            check_positive_int(size, "Product part size")
            if not isinstance(s, ConvexSet):
                raise TypeError(f"Product parts must be ConvexSet, got {type(s).__name__}")

    @property
    def dim(self) -> int:
        """Total number of coordinates."""
        return sum(size for size, _ in self.parts)

    def project(self, v: Tensor) -> Tensor:
        """Project each slice onto its set."""
        v = _vector(v)
        if v.numel() != self.dim:
            raise ValueError(f"Product has {self.dim} coordinates, got v of shape {tuple(v.shape)}")
        out, start = [], 0
        for size, s in self.parts:
            out.append(s.project(v[start : start + size]))
            start += size
        return torch.cat(out)


class Polyhedron(ConvexSet):
    """The polyhedron ``{u: G u <= h}``, projected exactly through its dual.

    The projection ``argmin ||u - v||^2 / 2  s.t.  G u <= h`` is ``u = v - G^T mu`` where
    ``mu >= 0`` minimizes the dual ``mu^T Q mu / 2 - mu^T (G v - h)`` with ``Q = G G^T = L L^T``.
    That is the non-negative least-squares problem ``min_{mu >= 0} ||L^T mu - L^{-1} (G v - h)||``,
    solved by the Lawson-Hanson active-set method (``scipy.optimize.nnls``) and, if its KKT
    residual is not tiny (it can stop early on degenerate inputs), polished by restarted
    accelerated projected gradient on the dual; the Cholesky factor ``L`` is computed once. The
    KKT residual of each projection is recomputed and kept in :attr:`last_kkt_residual`
    (relative to ``1 + max|G v - h|``).

    Args:
        G: ``(p, n)`` constraint matrix with linearly independent rows (``p <= n``).
        h: ``(p,)`` right-hand side.

    Raises:
        ValueError: for mismatched or non-finite ``G``/``h``, or rows of ``G`` that are linearly
            dependent (``G G^T`` not positive definite).
        TypeError: for non-float or mismatched dtypes.

    Example:
        >>> G = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
        >>> P = Polyhedron(G, torch.tensor([1.0], dtype=torch.float64))
        >>> P.project(torch.tensor([1.0, 1.0], dtype=torch.float64)).tolist()
        [0.5, 0.5]
    """

    def __init__(self, G: Tensor, h: Tensor) -> None:
        self.G = check_finite(check_float_tensor(G, "G", ndim=2), "G")
        self.h = check_finite(check_float_tensor(h, "h", ndim=1), "h")
        if self.h.shape[0] != self.G.shape[0]:
            raise ValueError(f"h must have {self.G.shape[0]} entries to match G, got {h.shape}")
        if self.h.dtype != self.G.dtype:
            raise TypeError(f"h has dtype {self.h.dtype} but G has dtype {self.G.dtype}")
        G64 = self.G.to(torch.float64)
        self.Q = G64 @ G64.T
        L, info = torch.linalg.cholesky_ex(self.Q)
        if int(info) != 0:
            raise ValueError(
                f"the rows of G (shape {tuple(G.shape)}) must be linearly independent: G G^T is "
                "not positive definite"
            )
        self.L = L
        self.last_kkt_residual = 0.0
        self._step: float | None = None  # 1 / ||Q||, computed on the first polish

    def project(self, v: Tensor) -> Tensor:
        """Project ``v`` onto the polyhedron (see the class docstring)."""
        from scipy.optimize import nnls

        v = _vector(v)
        if v.shape[0] != self.G.shape[1]:
            raise ValueError(f"v must have {self.G.shape[1]} entries to match G, got {v.shape}")
        G = self.G.to(torch.float64)
        c = G @ v.to(torch.float64) - self.h.to(torch.float64)
        if bool((c <= 0).all()):
            self.last_kkt_residual = 0.0
            return v.clone()
        d = torch.linalg.solve_triangular(self.L, c[:, None], upper=False)[:, 0]
        mu_np, _ = nnls(self.L.T.numpy(), d.numpy(), maxiter=50 * c.numel())
        mu = self._polish(torch.from_numpy(mu_np), c)
        return (v.to(torch.float64) - G.T @ mu).to(v.dtype)

    def _kkt(self, mu: Tensor, c: Tensor) -> float:
        lam = self.Q @ mu - c  # = h - G u: the slack of the projected point
        res = max(float(lam.clamp_max(0).abs().max()), float((mu * lam).abs().max()))
        return res / (1.0 + float(c.abs().max()))

    def _polish(self, mu: Tensor, c: Tensor, tol: float = 1e-12, max_iters: int = 20000) -> Tensor:
        """Accelerated projected gradient on the dual from ``mu`` until the KKT residual is tiny.

        ``scipy.optimize.nnls`` can stop early on degenerate inputs (rows with ``G v - h = 0``);
        this restarts FISTA (O'Donoghue & Candes 2015) from its answer.

        Returns:
            The polished multipliers.
        """
        res = self._kkt(mu, c)
        if res <= tol:
            self.last_kkt_residual = res
            return mu
        if self._step is None:
            self._step = 1.0 / float(torch.linalg.eigvalsh(self.Q)[-1])
        step = self._step
        prev, w, t = mu, mu, 1.0
        for it in range(max_iters):
            new = (w - step * (self.Q @ w - c)).clamp_min(0)
            t_new = 0.5 * (1.0 + (1.0 + 4.0 * t * t) ** 0.5)
            if float((new - prev) @ (w - new)) > 0:  # gradient restart
                t_new, w = 1.0, new
            else:
                w = new + ((t - 1.0) / t_new) * (new - prev)
            prev, t = new, t_new
            if it % 25 == 24 and self._kkt(prev, c) <= tol:
                break
        self.last_kkt_residual = self._kkt(prev, c)
        return prev

    def violation(self, v: Tensor) -> float:
        """Largest constraint violation ``max(G v - h)^+`` (not the distance).

        Args:
            v: a 1-D float tensor.

        Returns:
            The violation.
        """
        v = _vector(v)
        return float((self.G.to(v.dtype) @ v - self.h.to(v.dtype)).clamp_min(0).max())


def split_projector(S: ConvexSet, dim_x: int) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Turn a set of stacked vectors ``[x; y]`` into a projector ``(x, y) -> (x', y')``.

    This is how a coupled feasible set ``C = {(x, y): g(x, y) <= 0}`` (for example a
    :class:`Polyhedron` over ``[x; y]``) is given to :func:`~subspaces.bilevel.lv_hba`.

    Args:
        S: a set of vectors of length ``dim_x + dim_y``.
        dim_x: the number of leading coordinates that belong to ``x``.

    Returns:
        The projector.

    Raises:
        TypeError: if ``S`` is not a :class:`ConvexSet`.

    Example:
        >>> G = torch.tensor([[-0.5, 1.0]], dtype=torch.float64)  # y - x/2 <= 0
        >>> proj = split_projector(Polyhedron(G, torch.zeros(1, dtype=torch.float64)), 1)
        >>> f64 = torch.float64
        >>> x, y = proj(torch.tensor([0.0], dtype=f64), torch.tensor([1.25], dtype=f64))
        >>> x.tolist(), y.tolist()
        ([0.5], [0.25])
    """
    if not isinstance(S, ConvexSet):
        raise TypeError(f"S must be a ConvexSet, got {type(S).__name__}")
    dim_x = check_positive_int(dim_x, "dim_x", minimum=0)

    def project(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        u = S.project(torch.cat([x, y]))
        return u[:dim_x], u[dim_x:]

    return project
