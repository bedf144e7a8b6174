"""``run_analyze``: the command line's run, our training loop on tensors with checkpoints."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from .._io import CheckpointError, settings_hash, write_checkpoint
from .._progress import Progress
from .._threads import choose_threads, intra_op_threads
from ..dynamics import CurvatureTracker
from ._batches import subset_indices
from ._checkpoint import (
    CHECKPOINT,
    CHECKPOINT_KIND,
    CHECKPOINT_VERSION,
    _read_analyze_checkpoint,
    _restore,
)
from ._config import DTYPES, AnalyzeConfig, _resolve_device
from ._costs import _log_tracking_cost, _TrainingEta
from ._ddp import (
    DEFAULT_TIMEOUT_S,
    _broadcast_state,
    _check_shards,
    _ddp_step,
    _dist_context,
    _DistContext,
    _local_batch,
)
from ._final import _final_spectrum
from ._loop import _evaluate, _make_optimizer, _reraise, _Run, _silent
from ._outdir import _check_out_dir, _make_out_dir, _previous_run_files
from ._summary import (
    BATCHNORM_NOTE,
    _curvature_section,
    _final_sections,
    _has_stochastic,
    _subset_note,
)
from ._user_code import _data, _load_factory, _targets, default_mlp


def run_analyze(
    config: AnalyzeConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    threads: int | str | None = "auto",
    distributed: bool | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Any]:
    """Train, track curvature, analyze the final spectrum, and write the report.

    Everything that can be checked before training is checked first, without writing anything:
    the settings, the device, the output folder, the checkpoint to resume from and the batch
    size against the data set.

    Curvature is measured every ``config.every`` steps and once more at the last step, so every
    series ends there. Each phase prints its predicted cost and shows progress with an ETA; after
    ``resume`` the training bar starts at the finished steps and its ETA counts only the rest.

    Args:
        config: the settings.
        out_dir: the output folder (created). If it holds another run (``checkpoint.pt``,
            ``summary.json`` or ``report.html``), ``resume`` or ``force`` must say what to do.
        resume: continue from ``out_dir/checkpoint.pt``, which must exist, be intact and come
            from a run with the same settings.
        force: start a new run in ``out_dir`` even if it holds another one (whose checkpoint,
            ``summary.json`` and ``report.html`` are replaced).
        quiet: no progress output.
        log: where one-line messages go.
        threads: torch intra-op threads for the run: ``"auto"`` (the cores idle when the run
            starts, at most torch's count: threads on busy cores oversubscribe a shared machine;
            one thread for tiny models; under ``torchrun`` divided among the ranks of a
            machine), ``None`` (torch's setting) or a count. The caller's setting is restored
            afterwards.
        distributed: data parallelism over ``torch.distributed`` (see
            :mod:`subspaces.analyze._ddp`): ``None`` (default) when launched by ``torchrun``
            (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set, more than one
            rank) or when a process group is already initialised; ``True`` to require it;
            ``False`` for one process. Each rank trains on its slice of every global batch
            (the batch of ``config.batch_size`` samples of one process, so the learning rate
            keeps its meaning), the ranks' gradients summed, and measures curvature on
            its shard of the curvature samples (``distributed=True`` operators: identical
            measurements on every rank); only rank 0 writes; every rank resumes from the same
            checkpoint; an error on one rank ends every rank. A group this run initialises
            (``gloo`` on CPU, ``nccl`` on CUDA) is destroyed at the end.
        timeout_s: seconds a collective waits for another rank before failing (a group this
            run initialises).

    Returns:
        The summary dict (also written as ``summary.json`` with ``report.html`` and figures).

    Raises:
        ValueError: for bad settings (an unknown or missing device, a batch larger than the
            training set), ``resume`` and ``force`` together, an ``out_dir`` that is not a
            writable folder or holds another run, ``resume`` without a checkpoint, or a diverged
            run. Every message is one line naming the argument or file.
        CheckpointError: (a ``ValueError``) for a checkpoint that is damaged, truncated, of an
            unknown format or from another run, naming the file.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> out = Path(tempfile.mkdtemp())
        >>> _ = (out / "summary.json").write_text("{}")  # a previous run's result
        >>> try:
        ...     run_analyze(AnalyzeConfig(), out)
        ... except ValueError as err:
        ...     print("--resume" in str(err), "--force" in str(err))
        True True
    """
    choose_threads(0, threads)  # type: ignore[arg-type]  # validates
    ctx, device_spec = _dist_context(distributed, config.device, timeout_s)
    try:
        with intra_op_threads(None):  # whatever the run sets, the caller's count comes back
            return _run_analyze(
                config, Path(out_dir), resume, force, quiet, log, threads, ctx, device_spec
            )
    finally:
        ctx.close()


def _run_analyze(
    config: AnalyzeConfig,
    out_dir: Path,
    resume: bool,
    force: bool,
    quiet: bool,
    log: Callable[[str], None],
    threads: int | str | None,
    ctx: _DistContext,
    device_spec: str,
) -> dict[str, Any]:
    """The body of :func:`run_analyze` (which restores the thread count).

    Returns:
        The summary dict.

    Raises:
        ValueError: as :func:`run_analyze`.
        CheckpointError: as :func:`run_analyze`.
    """
    if not ctx.writes:  # under torchrun rank 0 speaks for all (every rank runs the same code)
        log = _silent
    failure: Exception | None = None
    try:  # under torchrun every rank checks, then all agree: one failure ends every rank
        config.validate()
        if resume and force:
            raise ValueError(
                "resume=True (--resume) continues the run in out_dir and force=True (--force) "
                "discards it: give one, not both"
            )
        device = _resolve_device(device_spec)
        out = Path(out_dir)
        _check_out_dir(out)
        ckpt = out / CHECKPOINT
        state: dict[str, Any] | None = None
        if resume:
            if not ckpt.exists():
                raise ValueError(
                    f"nothing to resume: no checkpoint {ckpt} in out_dir (--out) {out}; "
                    "run without --resume to start a new run there"
                )
            state = _read_analyze_checkpoint(ckpt, config)
        else:
            previous = _previous_run_files(out)
            if previous and not force:
                raise ValueError(
                    f"out_dir (--out) {out} already holds another run ({', '.join(previous)}); "
                    "pass --resume (resume=True) to continue it or --force (force=True) to "
                    "overwrite it"
                )
        dtype = DTYPES[config.dtype]
        torch.manual_seed(config.seed)
        Xtr, ytr, Xte, yte, data_name = _data(config, dtype)
        if config.batch_size > len(ytr):
            raise ValueError(
                f"batch_size (--batch-size) {config.batch_size} is larger than the training set "
                f"({len(ytr)} samples); use at most {len(ytr)}"
            )
        if ytr.is_floating_point() and ytr.ndim == 1:  # regression: one output per sample
            if config.loss != "mse":
                raise ValueError(
                    f"loss (--loss) {config.loss!r} needs integer class targets, but {data_name} "
                    "returned 1-D float targets (regression); pass --loss mse (loss='mse')"
                )
            ytr, yte = ytr[:, None], yte[:, None]
        num_classes = int(ytr.max()) + 1 if not ytr.is_floating_point() else ytr.shape[-1]
        Xtr, ytr, Xte, yte = (t.to(device) for t in (Xtr, ytr, Xte, yte))
        ttr, tte = (
            _targets(ytr, config.loss, num_classes, dtype),
            _targets(yte, config.loss, num_classes, dtype),
        )
        in_dim = int(Xtr[0].numel())
        if config.model is None:
            model, model_name = (
                default_mlp(in_dim, num_classes, config.width),
                f"MLP {in_dim}-{config.width}-{config.width}-{num_classes} (ReLU)",
            )
        else:
            model, model_name = _load_factory(config.model)(in_dim, num_classes), config.model
            if not isinstance(model, nn.Module):
                raise ValueError(
                    f"{config.model} must return an nn.Module, got {type(model).__name__}"
                )
        model = model.to(device=device, dtype=dtype)
        optimizer = _make_optimizer(config, model)
        shuffle = torch.Generator().manual_seed(config.seed)
        curv_gen = torch.Generator().manual_seed(config.seed + 1)
        n = len(ytr)
        curv_idx = subset_indices(n, config.curvature_samples, config.seed)
        cbs = config.curvature_batch_size
        if ctx.active:  # each rank its slice of the curvature samples and of every batch
            _check_shards(ctx, n, config.batch_size, len(curv_idx))
            full_data = [(Xtr[c], ttr[c]) for c in ctx.shard(curv_idx).to(device).split(cbs)]
        else:
            full_data = (
                [(Xtr[i : i + cbs], ttr[i : i + cbs]) for i in range(0, n, cbs)]
                if len(curv_idx) == n
                else [(Xtr[c], ttr[c]) for c in curv_idx.to(device).split(cbs)]
            )
        tracker = CurvatureTracker(
            model,
            config.loss,
            full_data,
            optimizer=optimizer,
            every=config.every,
            k=config.k,
            trace_rtol=config.trace_rtol,
            generator=curv_gen,
            distributed=ctx.active,
        )
        run = _Run()
        if state is not None:
            parts = {"model": model, "optimizer": optimizer, "tracker": tracker}
            _restore(ckpt, state, {**parts, "shuffle": shuffle, "curv_gen": curv_gen})
            try:
                run = _Run(**state["run"])
            except TypeError as err:
                raise CheckpointError(
                    f"checkpoint {ckpt}: its run state does not fit: {err}"
                ) from None
            log(f"resuming from {ckpt}: epoch {run.epoch}/{config.epochs}, step {run.step}")
    except Exception as err:
        if not ctx.active:
            raise
        failure = err
    ctx.agree(lambda: _reraise(failure), torch.device(device_spec), torch.float64)
    if ctx.writes:
        _make_out_dir(out)
        if force and not resume:
            for name in _previous_run_files(out):  # the old run's files go; figures redrawn
                os.unlink(out / name)
    if ctx.active:  # every rank starts from rank 0's weights
        _broadcast_state(ctx, model)

    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    num_params = sum(p.numel() for p in model.parameters())
    # Curvature products run over the whole training set: that is the work that decides.
    num_threads = choose_threads(num_params * len(curv_idx), threads)  # type: ignore[arg-type]
    if ctx.active and threads == "auto":  # the ranks on this machine share its cores
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world))
        num_threads = max(1, num_threads // local_world)
    torch.set_num_threads(num_threads)
    subset = (
        f"{len(curv_idx)} of {n} samples (seed {config.seed})"
        if len(curv_idx) < n
        else f"{n} samples"
    )
    checkpoints = sum(1 for s in range(run.step, total_steps) if s % config.every == 0)
    checkpoints += 1  # the last step (tracker.finish): every series ends there
    if not quiet:
        log(
            f"analyze: {model_name} ({num_params} parameters) on {data_name} "
            f"({n} train / {len(yte)} test), {config.optimizer} lr={config.lr}, "
            f"{config.epochs} epochs, curvature every {config.every} steps on {subset} "
            f"in {len(full_data)} batch{'es' if len(full_data) > 1 else ''}, "
            f"{num_threads} thread{'s' if num_threads > 1 else ''}"
        )
        _log_tracking_cost(log, tracker, full_data, checkpoints, total_steps - run.step)
    # after a resume the count starts at the finished steps and the ETA counts only the rest
    show = not quiet and ctx.writes
    progress = Progress(total_steps, "training", quiet=not show, initial=run.step)
    progress.eta = eta = _TrainingEta(checkpoints)  # steps and checkpoints each at their pace
    while run.epoch < config.epochs:
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=shuffle).to(device)
        model.train()
        for i in range(steps_per_epoch):
            idx = perm[i * config.batch_size : (i + 1) * config.batch_size]
            xb, tb = _local_batch(ctx, idx, Xtr, ttr) if ctx.active else (Xtr[idx], ttr[idx])
            if run.step % config.every == 0:
                tc = time.perf_counter()
                rec = tracker.step(run.step, batch=(xb, tb))
                run.curvature_seconds += time.perf_counter() - tc
                eta.checkpoint(time.perf_counter() - tc)
                if rec is not None:
                    progress.note = f"λmax {rec['lambda_max']:.3g} (2/η {2 / rec['lr']:.3g})"
            optimizer.zero_grad()
            if ctx.active:  # the gradient of the mean loss over the global batch
                _ddp_step(ctx, model, config.loss, xb, tb, len(idx), run.step, device)
                optimizer.step()
                run.step += 1
                eta.steps += 1
                progress.update()
                continue
            out_b = model(xb)
            loss = (
                nn.functional.cross_entropy(out_b, tb)
                if config.loss == "cross_entropy"
                else ((out_b - tb) ** 2).mean()
            )
            if not torch.isfinite(loss):
                raise ValueError(
                    f"training diverged at step {run.step} (loss {float(loss)}); lower --lr"
                )
            loss.backward()
            optimizer.step()
            run.step += 1
            eta.steps += 1
            progress.update()
        run.epoch += 1
        model.eval()
        tr_loss, tr_acc = _evaluate(model, config.loss, Xtr, ytr, ttr, cbs)
        te_loss, te_acc = _evaluate(model, config.loss, Xte, yte, tte, cbs)
        for key, value in (
            ("step", run.step),
            ("epoch", run.epoch),
            ("train_loss", tr_loss),
            ("train_acc", tr_acc),
            ("test_loss", te_loss),
            ("test_acc", te_acc),
        ):
            run.history[key].append(value)
        run.train_seconds += time.perf_counter() - t0
        payload = {
            "config": dataclasses.asdict(config),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "tracker": tracker.state_dict(),
            "shuffle": shuffle.get_state(),
            "curv_gen": curv_gen.get_state(),
            "run": dataclasses.asdict(run),
        }

        def save(payload: dict[str, Any] = payload) -> None:
            if ctx.writes:  # only rank 0 writes; a failed write ends every rank (agree)
                write_checkpoint(
                    ckpt,
                    payload,
                    kind=CHECKPOINT_KIND,
                    version=CHECKPOINT_VERSION,
                    identity=settings_hash(dataclasses.asdict(config)),
                )

        ctx.agree(save, device, torch.float64)
    tc = time.perf_counter()
    progress.update(0, note="curvature at the last step")
    rec = tracker.finish(run.step)  # every curvature series ends at the last step, like the losses
    if rec is not None:
        progress.note = f"λmax {rec['lambda_max']:.3g} (2/η {2 / rec['lr']:.3g})"
    run.curvature_seconds += time.perf_counter() - tc
    run.train_seconds += time.perf_counter() - tc
    progress.close()

    # ----- the final spectrum ------------------------------------------------------------------
    final = _final_spectrum(
        model,
        config.loss,
        full_data,
        final_k=config.final_k,
        density_runs=config.density_runs,
        density_steps=config.density_steps,
        generator=curv_gen,
        quiet=quiet,
        log=log,
        what=subset,
        distributed=ctx.active,
        show=ctx.writes,
    )
    lr_now = float(optimizer.param_groups[0]["lr"])
    summary: dict[str, Any] = {
        "title": f"subspaces analyze: {model_name} on {data_name}",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "version": __version__,
        "config": {
            **{k: v for k, v in dataclasses.asdict(config).items()},
            "model": model_name,
            "data": data_name,
            "num_params": num_params,
            "num_train": n,
            "num_test": len(yte),
            "threads": num_threads,
            "curvature_samples": len(curv_idx),
            "curvature_seed": config.seed if len(curv_idx) < n else None,
            "curvature_batches": len(full_data),
            **({"ranks": ctx.world, "curvature_batches": final.top_batches} if ctx.active else {}),
        },
        "history": run.history,
        "curvature": _curvature_section(tracker, config.batch_size),
        **_final_sections(final, lr_now, config.batch_size),
        "timing": {
            "total_seconds": run.train_seconds + final.seconds,
            "train_seconds": run.train_seconds - run.curvature_seconds,
            "curvature_seconds": run.curvature_seconds + final.seconds,
        },
        "notes": [
            _subset_note(n, config.curvature_samples, config.seed, len(curv_idx)),
            "SGD threshold for the trace: 2B/η for batch size B with a mean-reduced loss "
            "(Wu & Su 2023).",
            f"Final top-{final.k} eigenpairs certified to relative residual 1e-4: "
            f"{int(final.top.converged.sum())}/{final.k} converged.",
        ]
        + ([BATCHNORM_NOTE] if _has_stochastic(model) else []),
    }
    from ..report import write_report

    def report() -> None:
        if ctx.writes:  # only rank 0 writes; a failed write ends every rank (agree)
            paths = write_report(summary, out)
            summary["files"] = {k: str(v) for k, v in paths.items()}

    ctx.agree(report, device, torch.float64)
    return summary
