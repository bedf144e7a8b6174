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

from collections.abc import Sequence

import torch
from torch import Tensor

from .._checks import check_finite
from ..curvature import CurvatureOperator, GGNOperator
from ..curvature._model import Batch, FunctionalModel, check_loss_finite
from ..linops import LinearOperator
from ..linops.structured import Dense
from ._newton_autograd import closure_grads

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


# ----- the mini-batch path of NewtonGR: the curvature of a closure's autograd graph ---------------
CLOSURE_DENSE_MAX_PARAMS = 1024
"""Parameter count up to which ``NewtonGR(dense=None)`` may materialize the curvature. Lower
than ``newton_gr``'s 2048: a closure's curvature product is cheap (0.25-0.8 ms for 43 to 1810
parameters and 40 to 256 samples, one core), and a float64 ``P x P`` matrix-vector product costs
0.14 ms at ``P = 1024`` but 1.7 ms at 2048, where every dense CG iteration costs more than a
matrix-free one."""
CLOSURE_DENSE_CG_PER_BLOCK = 24
"""``NewtonGR(dense=None)`` materializes once the previous step took at least this many CG
iterations per ``DENSE_BLOCK`` parameters (``newton_gr``'s rule with its own constant): building
the matrix cost 4 to 45 closure products per block of 64 parameters (measured on MLPs and linear
models with 43 to 1810 parameters), against ``newton_gr``'s 1 to 6 operator products, whose
passes over the data have more overhead to amortize."""


def _stack_grads(ts: Sequence[Tensor | None], like: Sequence[Tensor], b: int) -> Tensor:
    """Per-parameter batched gradients ``(b, *p.shape)`` (``None`` = zero) as ``(b, P)``."""
    return torch.cat(
        [
            (p.new_zeros((b, p.numel())) if t is None else t.reshape(b, -1))
            for t, p in zip(ts, like, strict=True)
        ],
        dim=1,
    )


def _batched_grad(
    outputs: Sequence[Tensor], inputs: Sequence[Tensor], V: Sequence[Tensor]
) -> tuple[Tensor | None, ...]:
    """``torch.autograd.grad`` of a block of cotangents (their leading dimension).

    Returns:
        The batched gradients (``None`` where unused): one ``vmap``'d backward pass, or a
        column loop where a backward op has no batching rule.
    """
    try:
        return torch.autograd.grad(
            outputs, inputs, V, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
    except RuntimeError:  # no vmap rule for some backward op: one column at a time
        b = V[0].shape[0]
        cols = [
            torch.autograd.grad(
                outputs, inputs, [v[j] for v in V], retain_graph=True, allow_unused=True
            )
            for j in range(b)
        ]
        return tuple(
            None if cols[0][i] is None else torch.stack([c[i] for c in cols])
            for i in range(len(inputs))
        )


def _identity_blocks(params: Sequence[Tensor]) -> list[list[Tensor]]:
    """The identity's rows, ``DENSE_BLOCK`` at a time, split per parameter as ``(b, *p.shape)``."""
    n = sum(p.numel() for p in params)
    eye = torch.eye(n, dtype=params[0].dtype, device=params[0].device)
    blocks = []
    for s in range(0, n, DENSE_BLOCK):
        E, start, parts = eye[s : s + DENSE_BLOCK], 0, []
        for p in params:
            parts.append(E[:, start : start + p.numel()].reshape(-1, *p.shape))
            start += p.numel()
        blocks.append(parts)
    return blocks


def closure_matrix(
    kind: str, loss: Tensor, params: Sequence[Tensor], outputs: Tensor | None
) -> tuple[Tensor, Dense]:
    """The flat gradient and the dense curvature of ``loss`` on its autograd graph.

    The dense counterpart of :func:`~subspaces.optim._newton_autograd.closure_curvature` (the
    same matrices, built once instead of one double-backward per CG iteration):

    * Hessian: the Jacobian of the gradient, ``DENSE_BLOCK`` identity rows per ``vmap``'d
      backward pass;
    * GGN: ``J^T (H_L (J E))`` for ``DENSE_BLOCK`` identity columns ``E`` at a time: batched
      double-vjp, output-space Hessian and vjp passes (unlike :func:`materialize`, not the
      Gram ``J^T (H_L J)``: its ``P^2`` times the output size flops cost more than these passes
      on a closure's graph, measured 1.5-2.3x slower for 540-610 parameters and 2-10 classes);
    * empirical Fisher: the per-sample gradients ``a_i = J_i^T s_i`` from ``J`` (batched
      double-vjp passes), then ``N a a^T``; the GGN's block products when ``J`` would exceed
      ``2**23`` entries.

    The matrix is symmetrized.

    Args:
        kind: ``"hessian"``, ``"ggn"`` or ``"empirical_fisher"``.
        loss: a scalar with a graph to ``params`` (and through ``outputs`` for the GGN/Fisher).
        params: the parameters (in the optimizer's order).
        outputs: the model outputs the loss was computed from (GGN and Fisher only).

    Returns:
        ``(gradient, matrix)``; the gradient is detached.

    Raises:
        ValueError: if the graph is missing (the closure called ``backward()``), ``outputs`` is
            needed and absent, or the gradient or the matrix is not finite.

    Example:
        >>> import torch
        >>> from subspaces.optim._newton_autograd import closure_curvature
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh()).double()
        >>> X = torch.randn(10, 3, dtype=torch.float64)
        >>> out = model(X)
        >>> loss = (out**2).mean()
        >>> _, H = closure_matrix("ggn", loss, list(model.parameters()), out)
        >>> _, op = closure_curvature("ggn", loss, list(model.parameters()), out)
        >>> bool(torch.allclose(H.matrix, op.to_dense(), rtol=1e-12, atol=1e-14))
        True

    References:
        Semenov, Jaggi, Doikov, "Gradient-Normalized Smoothness for Optimization with
        Approximate Hessians", arXiv:2506.13710 (the method whose solves this serves);
        Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation 1994.
    """
    n = sum(p.numel() for p in params)
    grads = closure_grads(kind, loss, params, outputs, create_graph=True)
    g = _stack_grads([None if t is None else t.detach() for t in grads], params, 1)[0]
    if not bool(torch.isfinite(g).all()):
        raise ValueError("the gradient of the closure's loss is not finite")
    blocks = _identity_blocks(params)
    if kind == "hessian":
        used = [(t, p) for t, p in zip(grads, params, strict=True) if t is not None]
        rows = []
        for E in blocks:
            b = E[0].shape[0]
            if not any(t.requires_grad for t, _ in used):  # a gradient constant in params
                rows.append(params[0].new_zeros((b, n)))
                continue
            # H E = d/dtheta <grad, E>: the rows of H for the block (H is symmetric)
            Es = [e for e, t in zip(E, grads, strict=True) if t is not None and t.requires_grad]
            outs = [t for t, _ in used if t.requires_grad]
            rows.append(_stack_grads(_batched_grad(outs, params, Es), params, b))
        M = torch.cat(rows)
    else:
        assert outputs is not None
        z = outputs
        dz = torch.autograd.grad(loss, z, create_graph=(kind == "ggn"), retain_graph=True)[0]
        u = torch.zeros_like(z, requires_grad=True)
        jt_u = torch.autograd.grad(z, params, u, create_graph=True, allow_unused=True)
        jt_used = [t for t in jt_u if t is not None]
        N = z.shape[0] if z.ndim else 1
        s = dz.detach().reshape(N, -1)

        def jmat(E: list[Tensor]) -> Tensor:  # J E^T as (b, *z.shape)
            Es = [e for e, t in zip(E, jt_u, strict=True) if t is not None]
            if not jt_used:
                return z.new_zeros((E[0].shape[0], *z.shape))
            JE = _batched_grad(jt_used, [u], Es)[0]
            assert JE is not None
            return JE

        def hl(JE: Tensor) -> Tensor:  # the output-space curvature times each J e
            if kind == "ggn":
                out = _batched_grad([dz], [z], [JE])[0]
                return JE.new_zeros(JE.shape) if out is None else out
            coef = (s * JE.reshape(JE.shape[0], N, -1)).sum(-1, keepdim=True)
            return (N * s * coef).reshape(JE.shape)

        if kind == "empirical_fisher" and n * z.numel() <= _JACOBIAN_ENTRIES:
            J = torch.cat([jmat(E) for E in blocks])  # (P, *z.shape)
            a = (J.reshape(n, N, -1) * s).sum(-1)  # (P, N): per-sample gradients
            M = N * (a @ a.T)
        else:  # the GGN's Gram J^T (H_L J) costs P^2 z.numel() flops: more than these passes
            M = torch.cat(
                [
                    _stack_grads(_batched_grad([z], params, [hl(jmat(E))]), params, E[0].shape[0])
                    for E in blocks
                ]
            )
    M = M.detach()
    try:
        check_finite(M, "curvature matrix")
    except ValueError as err:
        raise ValueError(f"the closure's curvature is not finite: {err}") from None
    return g, Dense(0.5 * (M + M.T), symmetric=True)
