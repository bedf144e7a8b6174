"""Dense curvature matrices for the small-model fast path of ``newton_gr`` (P09).

A Newton iteration of :func:`~subspaces.optim.newton_gr` runs CG for dozens to hundreds of
iterations on one curvature matrix; through the matrix-free operators each CG iteration is a
pass over the data (a ``jvp``, an output-space product and a ``vjp`` under ``vmap``, several
milliseconds even for a hundred parameters). For small models it is cheaper to build the matrix
once per iteration and run the same CG on it:

* GGN and Fisher (``J^T H_L J`` with an output-space matrix ``H_L``): ``J`` itself, the
  ``jvp`` of every identity column (batched), then ``G = J^T (H_L J)`` as one matrix product:
  no ``vjp`` at all;
* Hessian (and a GGN whose Jacobian would be too large to hold): products with identity
  columns, ``DENSE_BLOCK`` of them per ``vmap``'d product.

The result is symmetrized, which changes it only by rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_finite
from ..curvature import CurvatureOperator, GGNOperator
from ..curvature._model import Batch, FunctionalModel, check_loss_finite
from ..linops import LinearOperator
from ..linops.structured import Dense

DENSE_BLOCK = 64  # identity columns per vmap'd product (measured fastest on P09's problems)
_JACOBIAN_ENTRIES = 2**23  # entries of J (and of H_L J) held at once per batch: 64 MiB in float64


def _ggn_gram(op: GGNOperator) -> Tensor:
    """``J^T H_L J`` averaged over the data as the operator weighs it, from batched ``jvp``s.

    Returns:
        The ``(P, P)`` matrix (not symmetrized).

    Raises:
        ValueError: if a loss or the matrix is not finite.
    """
    assert op.layout is not None
    layout, n = op.layout, op.shape[0]
    eye = torch.eye(n, dtype=op.dtype, device=op.device)

    def per_batch(fm: FunctionalModel, batch: Batch) -> Tensor:
        def f(p: dict[str, Tensor]) -> Tensor:
            return fm(p, batch)

        with torch.no_grad():
            out = f(fm.params)
        check_loss_finite(op.loss_fn(out, batch.targets))
        blocks = [layout.unflatten(eye[:, s : s + DENSE_BLOCK]) for s in range(0, n, DENSE_BLOCK)]
        if n * out.numel() > _JACOBIAN_ENTRIES:  # J too large for this batch: column products
            return torch.cat([layout.flatten(op._batch_matmat(fm, batch, V)) for V in blocks], 1)
        cols = []
        jvp = torch.func.vmap(lambda v: torch.func.jvp(f, (fm.params,), (v,))[1], in_dims=-1)
        for V in blocks:
            cols.append(jvp(V))  # (b, *out.shape): J e_j for the block's columns
        J = torch.cat(cols)
        HJ = op._output_matmat(out, batch, J)
        return J.reshape(n, -1) @ HJ.reshape(n, -1).T

    out = op._accumulate(per_batch, (n, n), eye)
    try:
        check_finite(out, "curvature matrix")
    except ValueError as err:
        raise ValueError(f"the operator returned non-finite values: {err}") from None
    return out


def materialize(op: LinearOperator) -> Dense:
    """The curvature operator as a dense symmetric matrix.

    A :class:`~subspaces.curvature.GGNOperator` (and the Fisher, its subclass) is built as
    ``J^T (H_L J)`` from batched Jacobian-vector products; any other operator from products with
    identity columns, ``DENSE_BLOCK`` per ``vmap``'d product. The matrix is symmetrized (the
    operators are symmetric, so this changes it only by rounding).

    Args:
        op: a symmetric curvature operator (from :mod:`subspaces.curvature`) or any symmetric
            :class:`~subspaces.linops.LinearOperator`.

    Returns:
        A :class:`~subspaces.linops.structured.Dense` declared symmetric.

    Raises:
        ValueError: if the matrix has non-finite entries.

    Example:
        >>> import torch
        >>> from subspaces.curvature import GGNOperator
        >>> X, y = torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,))
        >>> G = GGNOperator(torch.nn.Linear(3, 2).double(), "cross_entropy", (X, y))
        >>> M = materialize(G).matrix
        >>> bool(torch.allclose(M, G.to_dense(), rtol=1e-12, atol=1e-14))
        True

    References:
        Semenov, Jaggi, Doikov, "Gradient-Normalized Smoothness for Optimization with
        Approximate Hessians", arXiv:2506.13710 (the method whose solves this serves);
        Schraudolph, "Fast curvature matrix-vector products for second-order gradient descent",
        Neural Computation 2002 (the GGN's ``J^T H_L J`` structure).
    """
    plain = type(op)._matmat is CurvatureOperator._matmat  # not DiagonalGGN's own product
    if isinstance(op, GGNOperator) and plain:
        M = _ggn_gram(op)
    else:
        if isinstance(op, CurvatureOperator):
            op.max_block = max(op.max_block, DENSE_BLOCK)  # this instance only
        M = op.to_dense()
    return Dense(0.5 * (M + M.T), symmetric=True)
