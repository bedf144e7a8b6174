"""``NewtonGR``: gradient-regularized Newton steps on mini-batches through a closure (P09).

Reference:
    Andrei Semenov, Martin Jaggi, Nikita Doikov, "Gradient-Normalized Smoothness for
    Optimization with Approximate Hessians", arXiv:2506.13710 (2025), Algorithm 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._checks import check_choice, check_positive_float
from ..linops import LinearOperator
from ._newton_autograd import closure_curvature
from ._newton_dense import (
    CLOSURE_DENSE_CG_PER_BLOCK,
    CLOSURE_DENSE_MAX_PARAMS,
    DENSE_BLOCK,
    closure_matrix,
)
from ._newton_search import Rule, check_common, search

CLOSURE_CURVATURES: tuple[str, ...] = ("hessian", "ggn", "empirical_fisher")


class NewtonGR(torch.optim.Optimizer):
    """Gradient-regularized Newton steps on mini-batches, with an adaptive regularization.

    ``step(closure)`` evaluates the closure (which must return the mini-batch loss *without*
    calling ``backward()``, or ``(loss, outputs)`` for ``curvature="ggn"`` and
    ``"empirical_fisher"``), solves ``(H + lambda I) d = g`` by CG on curvature products of the
    closure's autograd graph, and tries ``x - lr * d``, re-evaluating the closure on the same
    mini-batch for the acceptance test ``f(x) - f(x+) >= ||g(x+)||^2 / (8 lambda)`` of the
    paper's Algorithm 1 (with ``lambda / lr`` for a damped step ``lr < 1``, which is the
    regularized step of the curvature ``H / lr``). All parameters form one Newton system, so
    the hyperparameters must be equal in every parameter group. The state is the exponent ``k`` of
    ``c = c0 * factor**k`` (a small integer stored in the parameter dtype, exact there, so a
    reload keeps ``c`` exactly), a step counter and a flag ``many_cg``: whether the last step
    took enough CG iterations for ``dense=None`` to materialize the next curvature (so a resumed
    run takes the same path).

    For small models the curvature of the mini-batch can be materialized once per step
    (``dense``) and CG run on the matrix: building it costs a few batched backward passes per 64
    parameters, while matrix-free CG costs a double-backward pass per iteration, and a rejected
    trial then needs no re-evaluation of the closure at ``x``. Both paths take the same steps to
    rounding. A closure's products are cheap (a fraction of a millisecond for a small MLP), so
    this pays only for a few hundred parameters and steps of many CG iterations (measured up to
    2.5x faster on a 160-parameter MLP, slower from about 600 parameters).

    Args:
        params: parameters or parameter groups.
        lr: step scale (1 = the Newton step of the paper; a learning-rate scheduler may change
            it between steps).
        curvature: ``"hessian"``, ``"ggn"`` or ``"empirical_fisher"`` (the empirical Fisher
            assumes the loss is a mean over the first dimension of ``outputs``).
        c: the starting regularization constant ``c0``.
        rule: ``"gns"`` or ``"sqrt"`` (see :func:`newton_gr`).
        adaptive: adapt ``c`` by the acceptance test.
        max_trials: trials per step; if none passes, the parameters are left unchanged.
        cg_rtol: CG relative tolerance.
        cg_max_iters: CG iteration limit.
        dense: materialize the mini-batch curvature each step (see
            :func:`~subspaces.optim._newton_dense.closure_matrix`) and run the same CG on it.
            ``None`` (default): ``newton_gr``'s rule with constants measured for closures: when
            there are at most ``CLOSURE_DENSE_MAX_PARAMS`` (1024) parameters and the previous
            step took at least ``CLOSURE_DENSE_CG_PER_BLOCK * ceil(P / 64)`` (24 per 64
            parameters) CG iterations, all trials together (the first step is matrix-free).

    Raises:
        TypeError: ``dense`` not a bool or ``None``.
        ValueError: bad hyperparameters, a missing closure, a closure that already called
            ``backward()``, or a non-finite loss or gradient.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> b = torch.ones(3, dtype=torch.float64)
        >>> opt = NewtonGR([w], curvature="hessian")
        >>> for _ in range(30):
        ...     _ = opt.step(lambda: 0.5 * w @ A @ w - b @ w)
        >>> bool(torch.allclose(w, torch.linalg.solve(A, b), atol=1e-8))
        True

    References:
        Semenov, Jaggi, Doikov, "Gradient-Normalized Smoothness for Optimization with
        Approximate Hessians", arXiv:2506.13710.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        *,
        curvature: str = "hessian",
        c: float = 1.0,
        rule: Rule = "gns",
        adaptive: bool = True,
        max_trials: int = 40,
        cg_rtol: float | None = None,
        cg_max_iters: int | None = None,
        dense: bool | None = None,
    ) -> None:
        lr = check_positive_float(lr, "lr")
        check_choice(curvature, "curvature", CLOSURE_CURVATURES)
        c, rule_name, max_trials = check_common(c, rule, max_trials)
        if dense is not None and not isinstance(dense, bool):
            raise TypeError(f"dense must be a bool or None, got {type(dense).__name__}")
        defaults = dict(
            lr=lr, curvature=curvature, c=c, rule=rule_name, adaptive=bool(adaptive),
            max_trials=max_trials, cg_rtol=cg_rtol, cg_max_iters=cg_max_iters, dense=dense,
        )  # fmt: skip
        super().__init__(params, defaults)

    def _shared(self) -> dict[str, Any]:
        keys = (
            "lr", "curvature", "c", "rule", "adaptive", "max_trials", "cg_rtol", "cg_max_iters",
            "dense",
        )  # fmt: skip
        first = self.param_groups[0]
        for group in self.param_groups[1:]:
            for k in keys:
                if group[k] != first[k]:
                    raise ValueError(
                        f"NewtonGR solves one system over all groups: {k!r} must be equal in "
                        f"every group, got {first[k]!r} and {group[k]!r}"
                    )
        return {k: first[k] for k in keys}

    @staticmethod
    def _unpack(value: Any) -> tuple[Tensor, Tensor | None]:
        loss, outputs = (value[0], value[1]) if isinstance(value, tuple) else (value, None)
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            raise ValueError(f"the closure must return a scalar loss tensor, got {loss!r}")
        if not bool(torch.isfinite(loss)):
            raise ValueError(f"the closure returned a non-finite loss ({float(loss.detach())})")
        return loss, outputs

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Tensor:  # type: ignore[override]
        """One Newton step on the mini-batch the closure evaluates.

        Returns:
            The loss at the starting point (detached).

        Raises:
            ValueError: without a closure, or for non-finite losses or gradients.
        """
        if closure is None:
            raise ValueError(
                "NewtonGR.step needs a closure returning the mini-batch loss (it re-evaluates "
                "the loss at trial points), e.g. opt.step(lambda: loss_fn(model(X), y))"
            )
        hp = self._shared()
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        if not params:
            raise ValueError("NewtonGR has no parameter that requires grad")
        state = self.state[params[0]]
        if "log_c" not in state:
            # the exponent k of c = c0 * factor**k: a small integer, exact in the param dtype
            # (load_state_dict casts floating state to it), so a reload keeps c exactly
            state["log_c"] = torch.zeros((), dtype=params[0].dtype)
            state["step"] = torch.zeros((), dtype=torch.int64)
        if "many_cg" not in state:
            # 1 when the last step took enough CG iterations to pay for materializing (0 or 1:
            # exact in any dtype, which load_state_dict casts floating-point state to)
            state["many_cg"] = torch.zeros((), dtype=params[0].dtype)
        factor = 2.0 if hp["rule"] == "gns" else 4.0
        n = sum(p.numel() for p in params)
        cutoff = CLOSURE_DENSE_CG_PER_BLOCK * math.ceil(n / DENSE_BLOCK)
        dense = hp["dense"]
        if dense is None:  # the rule of newton_gr: materialize once CG takes enough products
            dense = n <= CLOSURE_DENSE_MAX_PARAMS and bool(state["many_cg"] > 0)

        def load(x: Tensor) -> None:
            start = 0
            for p in params:
                p.copy_(x[start : start + p.numel()].view_as(p))
                start += p.numel()

        def grad_and_op(need_op: bool) -> tuple[float, Tensor, LinearOperator | None]:
            op: LinearOperator | None
            with torch.enable_grad():
                loss, outputs = self._unpack(closure())
                kind = hp["curvature"] if need_op else "hessian"
                if not need_op:  # only the gradient at a trial point
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                    g = torch.cat(
                        [
                            (torch.zeros_like(p) if t is None else t).reshape(-1)
                            for t, p in zip(grads, params, strict=True)
                        ]
                    )
                    op = None
                elif dense:
                    g, op = closure_matrix(kind, loss, params, outputs)
                else:
                    g, op = closure_curvature(kind, loss, params, outputs)
            if not bool(torch.isfinite(g).all()):
                raise ValueError("the gradient of the closure's loss is not finite")
            return float(loss), g, op

        x = torch.cat([p.detach().reshape(-1) for p in params])
        loss, g, H = grad_and_op(True)
        state["step"] += 1
        if float(g.norm()) == 0.0:
            return torch.tensor(loss, dtype=params[0].dtype)

        def evaluate(xn: Tensor) -> tuple[float, Tensor]:
            load(xn)
            f, gn, _ = grad_and_op(False)
            return f, gn

        def refresh() -> LinearOperator:
            # a trial changed the parameters in place, which invalidates the graph at x:
            # evaluate the closure at x again (one more forward pass per rejected trial)
            load(x)
            _, _, op = grad_and_op(True)
            assert op is not None
            return op

        k = round(float(state["log_c"]))
        assert H is not None
        out = search(
            H, x, loss, g, evaluate, rule=hp["rule"], c=hp["c"] * factor**k,
            adaptive=hp["adaptive"], max_trials=hp["max_trials"], lr=hp["lr"],
            cg_rtol=hp["cg_rtol"], cg_max_iters=hp["cg_max_iters"],
            refresh=None if dense else refresh,  # a dense H is detached: it stays valid
        )  # fmt: skip
        state["many_cg"] = torch.tensor(float(out.cg_iterations >= cutoff), dtype=params[0].dtype)
        load(out.x)  # the accepted point, or back to x when every trial failed
        if hp["adaptive"]:
            state["log_c"] = torch.tensor(
                float(round(math.log(out.c_next / hp["c"], factor))), dtype=params[0].dtype
            )
        return torch.tensor(loss, dtype=params[0].dtype)
