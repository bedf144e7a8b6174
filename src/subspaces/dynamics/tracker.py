"""``CurvatureTracker``: curvature, stability and gradient subspaces along a training run."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_positive_float, check_positive_int
from ..curvature import GGNOperator, HessianOperator, top_eigen, trace
from ..curvature._model import LossFn, ModePolicy, ParamSpec
from ..linalg import Subspace

OPERATORS = {"hessian": HessianOperator, "ggn": GGNOperator}


class CurvatureTracker:
    r"""Measure curvature every ``every`` steps of any training loop -- yours included.

    This is the one way to analyse a model trained by your own loop: build a tracker, call
    :meth:`step` with the step number at the top of every iteration (it measures when
    ``step % every == 0`` and returns at once otherwise), optionally :meth:`log` your losses,
    then pass it to :func:`subspaces.analyze` (``tracker=...``), which computes the final spectrum
    and writes the same ``report.html`` / ``summary.json`` as ``subspaces analyze``. The ``data``
    it measures on can be any re-iterable of batches; :func:`subspaces.analyze.curvature_batches`
    picks a seeded subset in mini-batches (products are summed over the batches, exactly).

    At each checkpoint it computes, on the full ``data`` (not one mini-batch):

    * the top-``k`` eigenpairs of the Hessian (certified Lanczos, warm-started from the previous
      checkpoint's eigenspace, so tracking costs a fraction of a cold solve), the sharpness
      :math:`\lambda_{\max}` and the GD stability ratio :math:`\eta\lambda_{\max}/2` (stable while
      below 1; Cohen et al. 2021);
    * the trace with its standard error and :math:`\eta\,\mathrm{tr}(H)/2` (the SGD
      mean-square stability ratio for the batch-1 square loss; Wu & Su 2023, P22);
    * the fraction of the full-data gradient inside the top-``k`` eigenspace (Gur-Ari et al.
      2018) and the overlap of that eigenspace with the previous checkpoint's;
    * optionally :math:`\lambda_{\max}` of the current mini-batch's Hessian next to the full-data
      one (Granziol et al. 2022, P24: the batch value overstates it).

    Args:
        model: the model being trained (never modified; evaluated in its current mode under
            ``mode_policy``).
        loss_fn: ``"cross_entropy"``, ``"mse"`` or a callable (mean loss over a batch).
        data: the batches the curvature is measured on: any re-iterable of batches (a list, a
            DataLoader, :func:`subspaces.analyze.curvature_batches` of a seeded subset);
            ``(X, y)`` tuples, dicts (Hugging Face style) or tensors. Every product is summed
            over its batches, exactly.
        lr: the learning rate ``eta``, or ``None`` to read it from ``optimizer``.
        optimizer: read ``param_groups[0]["lr"]`` at each checkpoint (follows schedulers).
        every: measure when ``step % every == 0``.
        k: dimension of the tracked eigenspace.
        eig_rtol: relative residual tolerance of the eigenpairs.
        trace_rtol: target relative standard error of the trace (``None`` to skip the trace).
        trace_max_matvecs: budget of the trace estimate.
        operator: ``"hessian"`` or ``"ggn"``.
        params: parameter selection (see :class:`~subspaces.curvature.HessianOperator`).
        mode_policy: train-mode BatchNorm/Dropout policy; ``"eval"`` by default here, since a
            tracker is called from inside training loops (your modes are restored).
        dtype: compute dtype for curvature (e.g. ``torch.float64``).
        generator: randomness for Lanczos starts and trace probes (with ``distributed``,
            default ``torch.Generator().manual_seed(0)``: every rank must draw the same blocks).
        distributed: data parallelism (see :class:`~subspaces.curvature.CurvatureOperator`):
            each rank passes its shard as ``data`` (and its own mini-batch to :meth:`step`);
            every measurement is then of the whole data set (and of the union of the ranks'
            mini-batches) and identical on every rank.

    Raises:
        ValueError: for non-positive ``every``/``k``/tolerances or neither ``lr`` nor ``optimizer``.

    Example:
        >>> import torch
        >>> X, y = torch.randn(64, 4, dtype=torch.float64), torch.randn(64, 1, dtype=torch.float64)
        >>> model = torch.nn.Linear(4, 1).double()
        >>> tracker = CurvatureTracker(model, "mse", [(X, y)], lr=0.1, every=10, k=2,
        ...                            generator=torch.Generator().manual_seed(0))
        >>> rec = tracker.step(0)
        >>> H = 2 * torch.cat([X, torch.ones(64, 1, dtype=torch.float64)], 1)
        >>> lam = torch.linalg.eigvalsh(H.T @ H / 2 / 64)[-1]
        >>> abs(rec["lambda_max"] - float(lam)) < 1e-6, tracker.step(5) is None
        (True, True)
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: str | LossFn,
        data: Any,
        *,
        lr: float | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        every: int = 100,
        k: int = 5,
        eig_rtol: float = 1e-3,
        trace_rtol: float | None = 0.05,
        trace_max_matvecs: int = 300,
        operator: str = "hessian",
        params: ParamSpec = None,
        mode_policy: ModePolicy = "eval",
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
        distributed: Any = False,
    ) -> None:
        if lr is None and optimizer is None:
            raise ValueError(
                "pass lr= or optimizer= (the stability thresholds need the learning rate)"
            )
        if lr is not None:
            check_positive_float(lr, "lr")
        if operator not in OPERATORS:
            raise ValueError(f"operator must be one of {tuple(OPERATORS)}, got {operator!r}")
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.lr, self.optimizer = lr, optimizer
        self.every = check_positive_int(every, "every")
        self.k = check_positive_int(k, "k")
        self.eig_rtol = check_positive_float(eig_rtol, "eig_rtol")
        self.trace_rtol = (
            None if trace_rtol is None else check_positive_float(trace_rtol, "trace_rtol")
        )
        self.trace_max_matvecs = check_positive_int(trace_max_matvecs, "trace_max_matvecs")
        self.operator = operator
        self.params, self.mode_policy, self.dtype = params, mode_policy, dtype
        self.distributed = distributed
        if generator is None and distributed not in (None, False):
            generator = torch.Generator().manual_seed(0)
        self.generator = generator
        self.subspace: Subspace | None = None
        self.records: list[dict[str, Any]] = []
        self.history: list[dict[str, float]] = []

    def log(self, step: int, **metrics: float) -> None:
        """Record your own numbers at ``step`` (e.g. ``train_loss=...``, ``test_acc=...``).

        :func:`subspaces.analyze` draws them in the report's loss/accuracy figure (keys
        ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``, ``epoch``; others are kept in
        ``summary.json``).

        Raises:
            TypeError: if a value is not a real number.
        """
        row: dict[str, float] = {"step": int(step)}
        for key, raw in metrics.items():
            value = float(raw.detach()) if isinstance(raw, Tensor) and raw.numel() == 1 else raw
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"log: {key} must be a number, got {type(raw).__name__}")
            row[key] = float(value)
        self.history.append(row)

    def products_per_measure(self) -> int:
        """The curvature products one measurement is expected to take.

        The last measurement's count once there is one; before that an estimate: about
        ``3 (k + 2) + 10`` Lanczos products (cold start) plus the trace budget, plus
        ``25`` for the mini-batch ``lambda_max``.

        Returns:
            The number of products (Hessian-vector products).
        """
        if self.records:
            return int(self.records[-1]["matvecs"])
        trace_budget = self.trace_max_matvecs if self.trace_rtol is not None else 0
        return 3 * (self.k + 2) + 10 + trace_budget + 25

    def current_lr(self) -> float:
        """The learning rate in force (from ``optimizer`` if given)."""
        if self.optimizer is not None:
            return float(self.optimizer.param_groups[0]["lr"])
        assert self.lr is not None
        return self.lr

    def _op(self, data: Any) -> HessianOperator | GGNOperator:
        cls = OPERATORS[self.operator]
        return cls(
            self.model,
            self.loss_fn,
            data,
            self.params,
            mode_policy=self.mode_policy,
            dtype=self.dtype,
            distributed=self.distributed,
        )

    def step(self, step: int, batch: Any = None) -> dict[str, Any] | None:
        """Measure if ``step`` is a checkpoint (``step % every == 0``); else return ``None``.

        Args:
            step: the training step (iteration) number.
            batch: the current mini-batch ``(X, y)``; if given, its Hessian's ``lambda_max`` is
                recorded next to the full-data one.

        Returns:
            The new record (also appended to :attr:`records`), or ``None``.
        """
        if step % self.every != 0:
            return None
        return self.measure(step, batch)

    def finish(self, step: int) -> dict[str, Any] | None:
        """Measure at the last training step ``step`` unless the last record is already there.

        Call it once after training (``step`` = the number of optimizer steps taken) so that
        every series (eigenvalues, trace, gradient fraction, eigenspace overlap) ends at the
        last step like the loss curves, not at the last multiple of ``every``.
        :func:`subspaces.analyze` calls it for you.

        Args:
            step: the last training step.

        Returns:
            The new record, or ``None`` if the last record is at ``step`` or later.

        Example:
            >>> import torch
            >>> X, y = torch.randn(32, 3).double(), torch.randn(32, 1).double()
            >>> t = CurvatureTracker(torch.nn.Linear(3, 1).double(), "mse", [(X, y)], lr=0.1,
            ...                      every=10, k=1, generator=torch.Generator().manual_seed(0))
            >>> _ = [t.step(s) for s in range(25)]
            >>> t.finish(25)["step"], t.finish(25), [r["step"] for r in t.records]
            (25, None, [0, 10, 20, 25])
        """
        if self.records and self.records[-1]["step"] >= step:
            return None
        return self.measure(step)

    def measure(
        self, step: int, batch: Any = None, progress: Callable[[str], None] | None = None
    ) -> dict[str, Any]:
        """Measure now, whatever the step (see :meth:`step` for the arguments and what is recorded).

        Returns:
            The record dict (also appended to :attr:`records`).
        """
        t0 = time.perf_counter()
        lr = self.current_lr()
        H = self._op(self.data)
        n_params = H.shape[0]
        k = min(self.k, n_params)
        warm = self.subspace is not None and self.subspace.dim == k
        eig = top_eigen(
            H, k, rtol=self.eig_rtol, v0=self.subspace if warm else None, generator=self.generator
        )
        matvecs = eig.num_matvecs
        new_space = eig.subspace
        overlap = new_space.overlap(self.subspace) if warm and self.subspace is not None else None
        loss, grad = H.loss_and_gradient()
        gnorm = float(grad.norm())
        frac = float(new_space.captured_fraction(grad)) if gnorm > 0 else float("nan")
        lam_max = float(eig.eigenvalues[0])
        record: dict[str, Any] = {
            "step": int(step),
            "lr": lr,
            "loss": loss,
            "grad_norm": gnorm,
            "eigenvalues": eig.eigenvalues.tolist(),
            "residuals": eig.residuals.tolist(),
            "converged": bool(eig.all_converged),
            "lambda_max": lam_max,
            "eta_lambda_over_2": lr * lam_max / 2,
            "grad_fraction": frac,
            "overlap_prev": overlap,
            "warm_start": warm,
            "eig_matvecs": eig.num_matvecs,
            "num_samples": H.num_samples,
        }
        if self.trace_rtol is not None:
            tr = trace(
                H,
                rtol=self.trace_rtol,
                max_matvecs=self.trace_max_matvecs,
                generator=self.generator,
            )
            record.update(
                trace=tr.estimate, trace_stderr=tr.stderr, eta_trace_over_2=lr * tr.estimate / 2
            )
            matvecs += tr.num_matvecs
        if batch is not None:
            Hb = self._op([batch])
            eb = top_eigen(Hb, 1, rtol=self.eig_rtol, generator=self.generator)
            record["batch_lambda_max"] = float(eb.eigenvalues[0])
            record["batch_size"] = Hb.num_samples
            matvecs += eb.num_matvecs
        record["matvecs"] = matvecs
        record["seconds"] = time.perf_counter() - t0
        self.subspace = new_space
        self.records.append(record)
        return record

    # ----- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Records and the tracked basis, loadable with ``torch.load(..., weights_only=True)``.

        Returns:
            A dict of plain Python values and one tensor.
        """
        return {
            "records": [dict(r) for r in self.records],
            "history": [dict(r) for r in self.history],
            "basis": None if self.subspace is None else self.subspace.basis.detach().cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (e.g. when resuming an interrupted run)."""
        self.records = [dict(r) for r in state.get("records", [])]
        self.history = [dict(r) for r in state.get("history", [])]
        basis: Tensor | None = state.get("basis")
        device = next(self.model.parameters()).device
        dtype = self.dtype or next(self.model.parameters()).dtype
        self.subspace = None if basis is None else Subspace(basis.to(device=device, dtype=dtype))
