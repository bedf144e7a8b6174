"""``analyze(model, train_loader, loss_fn, ...)``: the Python entry point for your own objects."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import __version__
from .._progress import Progress
from ..dynamics import CurvatureTracker
from ._batches import MappedBatches, _batch_len, curvature_batches
from ._costs import _log_tracking_cost, _TrainingEta
from ._final import _final_spectrum
from ._outdir import _check_out_dir, _make_out_dir, _previous_run_files
from ._summary import (
    BATCHNORM_NOTE,
    _curvature_section,
    _final_sections,
    _has_stochastic,
    _loss_name,
    _subset_note,
)


def _count_samples(data: Any) -> int:
    dataset = getattr(data, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__") and not getattr(data, "drop_last", 0):
        return len(dataset)
    return sum(_batch_len(b) for b in data)


def _evaluate_loader(
    model: nn.Module, loss: Any, data: Iterable[Any], device: torch.device
) -> tuple[float, float]:
    """Mean loss over ``data`` (weighted as the curvature operators weight batches) and accuracy.

    Returns:
        ``(loss, accuracy)``; the accuracy is NaN unless outputs are ``(n, C)`` logits and
        targets ``(n,)`` class indices.
    """
    from ..curvature._model import output_tensor, split_batch

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    loss_sum, weight, correct, counted = 0.0, 0.0, 0.0, 0
    try:
        with torch.no_grad():
            for raw in data:
                b = split_batch(raw, device, None)
                out = output_tensor(model(*b.args, **b.kwargs))
                c = loss.normalizer(b.targets, b.size)
                loss_sum += float(loss.fn(out, b.targets)) * c
                weight += c
                t = b.targets
                if (
                    isinstance(t, Tensor)
                    and not t.is_floating_point()
                    and out.ndim == 2
                    and t.shape == out.shape[:1]
                ):
                    correct += float((out.argmax(1) == t).sum())
                    counted += b.size
    finally:
        for m, was in modes:
            m.training = was
    acc = correct / counted if counted else float("nan")
    return (loss_sum / weight if weight else float("nan")), acc


def analyze(
    model: nn.Module,
    train_loader: Iterable[Any],
    loss_fn: str | Callable[[Any, Any], Tensor],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    test_loader: Iterable[Any] | None = None,
    epochs: int = 1,
    every: int = 25,
    k: int = 10,
    out: str | Path | None = None,
    curvature_samples: int | None = None,
    curvature_batch_size: int | None = None,
    seed: int = 0,
    tracker: CurvatureTracker | None = None,
    batch_to_inputs: Callable[[Any], Any] | None = None,
    lr: float | None = None,
    final_k: int = 20,
    density_runs: int = 8,
    density_steps: int = 60,
    trace_rtol: float = 0.1,
    final_trace_matvecs: int = 600,
    dtype: torch.dtype | None = None,
    force: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Analyse your own model and data: track its Hessian, compute the final spectrum, report.

    Two ways to use it:

    * **Our loop**: pass ``optimizer``; ``analyze`` trains ``epochs`` epochs over
      ``train_loader`` (``loss_fn(outputs, targets)`` per batch, backward, ``optimizer.step()``),
      measures curvature every ``every`` steps with a :class:`~subspaces.dynamics.CurvatureTracker`
      and evaluates after each epoch.
    * **Your loop** (the one way to analyse a run you train yourself): build a
      :class:`~subspaces.dynamics.CurvatureTracker`, call ``tracker.step(step)`` inside your loop
      (and ``tracker.log(step, train_loss=...)`` if you like), then call
      ``analyze(model, train_loader, loss_fn, tracker=tracker, out=...)`` without an optimizer:
      it trains nothing, evaluates the model, computes the final spectrum and writes the report
      with the tracker's records.

    Either way the result is the ``summary.json`` / ``report.html`` of ``subspaces analyze``, and
    every curvature series ends at the last training step (the last one logged or measured with
    your loop): after training the tracker measures once more there
    (:meth:`~subspaces.dynamics.CurvatureTracker.finish`). Each phase prints its predicted cost
    and shows progress with an ETA.

    Batches are ``(inputs, targets)`` (``model(inputs)``; ``model(**inputs)`` for a dict), dicts
    (Hugging Face style: ``model(**batch)``, the loss gets the whole dict as targets, e.g.
    :func:`causal_lm_loss` for batches with ``labels``) or anything ``batch_to_inputs`` turns into
    one of those. A model output that is not a tensor contributes its ``.logits``.

    Curvature runs over mini-batches: every product is summed over the batches of the curvature
    data (exact, one batch in memory at a time). The curvature data is ``train_loader`` itself,
    or, with ``curvature_samples`` or ``curvature_batch_size``, :func:`curvature_batches` of it: a
    random subset of ``curvature_samples`` samples drawn with ``seed`` (both recorded in the
    summary's ``config``) in batches of ``curvature_batch_size``. BatchNorm and Dropout are
    evaluated in eval mode for curvature (your modes are restored).

    Args:
        model: any ``nn.Module`` (on the device its batches are moved to).
        train_loader: a re-iterable of batches (a DataLoader or a list).
        loss_fn: ``"cross_entropy"``, ``"mse"``, a PyTorch loss module, or a callable
            ``(outputs, targets) -> scalar`` (mean over the batch unless it is a module with
            ``reduction="sum"``).
        optimizer: train with it (our loop); ``None``: train nothing.
        test_loader: batches to evaluate on (test loss and accuracy in the report).
        epochs: epochs of our loop.
        every: measure curvature every this many steps (our loop).
        k: dimension of the tracked top eigenspace (our loop).
        out: folder for ``report.html``, ``summary.json`` and figures; ``None`` writes nothing.
            A folder that holds another run is refused unless ``force=True``.
        curvature_samples: curvature on a seeded random subset of this many training samples.
        curvature_batch_size: samples per curvature batch (default: the loader's batches).
        seed: seed of the subset and of the estimators' random vectors.
        tracker: your tracker (your loop); with our loop, one is made if ``None``.
        batch_to_inputs: maps each batch of ``train_loader``/``test_loader`` to
            ``(inputs, targets)`` or a dict of model inputs.
        lr: learning rate for the stability thresholds when neither ``optimizer`` nor
            ``tracker`` gives one (``None``: no stability section).
        final_k: eigenvalues of the final spectrum.
        density_runs: SLQ probes of the final density.
        density_steps: Lanczos steps per probe.
        trace_rtol: target relative standard error of the tracked trace.
        final_trace_matvecs: product budget of the final trace (it stops earlier at a 3%
            standard error).
        dtype: compute curvature in this dtype (e.g. ``torch.float64``).
        force: write into an ``out`` that holds another run.
        quiet: no progress output.
        log: where one-line messages (predicted costs) go.

    Returns:
        The summary dict (as ``summary.json``; with ``"files"`` when ``out`` is given).

    Raises:
        ValueError: for bad arguments (each named), an ``out`` that is not a writable folder or
            holds another run, a diverged loss or empty data.
        TypeError: for a model that is not an ``nn.Module``, data that are not re-iterable, or a
            loss that is neither a name nor callable.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> g = torch.Generator().manual_seed(0)
        >>> X, y = torch.randn(64, 5, generator=g), torch.randint(0, 3, (64,), generator=g)
        >>> loader = [(X[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
        >>> model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> s = analyze(model, loader, nn.CrossEntropyLoss(), optimizer=opt, every=2, k=2,
        ...             final_k=4, density_runs=2, density_steps=8, quiet=True)
        >>> s["curvature"]["step"], s["config"]["curvature_samples"], len(s["final"]["eigenvalues"])
        ([0, 2, 4], 64, 4)
    """
    from ..curvature._model import iterate_batches, output_tensor, resolve_loss, split_batch

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, loader in (("train_loader", train_loader), ("test_loader", test_loader)):
        if loader is not None:
            if isinstance(loader, (Tensor, Mapping)) or not isinstance(loader, Iterable):
                raise TypeError(
                    f"{name} must be an iterable of batches (a DataLoader or a list), got "
                    f"{type(loader).__name__}"
                )
            iterate_batches(loader)  # raises TypeError for one-shot iterators
    for name, value in (
        ("epochs", epochs),
        ("every", every),
        ("k", k),
        ("final_k", final_k),
        ("density_runs", density_runs),
        ("density_steps", density_steps),
        ("final_trace_matvecs", final_trace_matvecs),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if tracker is not None and not isinstance(tracker, CurvatureTracker):
        raise TypeError(f"tracker must be a CurvatureTracker, got {type(tracker).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer)}")
    loss = resolve_loss(loss_fn)
    out_dir = None if out is None else Path(out)
    if out_dir is not None:
        _check_out_dir(out_dir)
        previous = _previous_run_files(out_dir)
        if previous and not force:
            raise ValueError(
                f"out {out_dir} already holds another run ({', '.join(previous)}); pass "
                "force=True to overwrite it or choose another folder"
            )
        _make_out_dir(out_dir)
        for name in previous:
            os.unlink(out_dir / name)

    train = MappedBatches(train_loader, batch_to_inputs) if batch_to_inputs else train_loader
    test = (
        MappedBatches(test_loader, batch_to_inputs)
        if batch_to_inputs and test_loader is not None
        else test_loader
    )
    device = next(iter(model.parameters())).device
    n = _count_samples(train)
    if n == 0:
        raise ValueError("train_loader is empty: no samples")
    first_batch = _batch_len(next(iter(train)))
    if curvature_samples is not None or curvature_batch_size is not None:
        curv_data: Any = curvature_batches(
            train, curvature_samples, seed=seed, batch_size=curvature_batch_size
        )
    elif tracker is not None and optimizer is None:
        curv_data = tracker.data  # your loop: the final spectrum on what you tracked
    else:
        curv_data = train
    used = min(curvature_samples, n) if curvature_samples is not None else n
    if curv_data is not train and curvature_samples is None:
        used = _count_samples(iterate_batches(curv_data))
    gen = torch.Generator().manual_seed(seed + 1)
    if tracker is None and optimizer is not None:
        tracker = CurvatureTracker(
            model,
            loss_fn,
            curv_data,
            optimizer=optimizer,
            every=every,
            k=k,
            trace_rtol=trace_rtol,
            dtype=dtype,
            generator=gen,
        )
    history: dict[str, list[Any]] = {
        key: [] for key in ("step", "epoch", "train_loss", "train_acc", "test_loss", "test_acc")
    }

    def record(row: dict[str, Any]) -> None:
        for key, series in history.items():
            series.append(row.get(key))

    t_start = time.perf_counter()
    curvature_seconds, step = 0.0, 0
    if optimizer is not None:
        assert tracker is not None
        steps_per_epoch = len(train) if hasattr(train, "__len__") else None  # type: ignore[arg-type]
        total = steps_per_epoch * epochs if steps_per_epoch is not None else None
        # checkpoints: every every-th step, and the last step (tracker.finish)
        checks = (total + every - 1) // every + 1 if total is not None else 0
        if not quiet:
            log(
                f"analyze: {type(model).__name__} "
                f"({sum(p.numel() for p in model.parameters())} parameters), {n} training "
                f"samples, curvature on {used} every {every} steps"
            )
            if total is not None:
                _log_tracking_cost(log, tracker, tracker.data, checks, total)
        progress = Progress(total, "training", quiet=quiet)
        progress.eta = eta = _TrainingEta(checks)  # steps and checkpoints each at their pace
        for epoch in range(epochs):
            model.train()
            for raw in train:
                tc = time.perf_counter()
                rec = tracker.step(step, batch=raw)
                curvature_seconds += time.perf_counter() - tc
                if rec is not None:
                    eta.checkpoint(time.perf_counter() - tc)
                if rec is not None:
                    progress.note = f"λmax {rec['lambda_max']:.3g} (2/η {2 / rec['lr']:.3g})"
                b = split_batch(raw, device, None)
                optimizer.zero_grad()
                batch_loss = loss.fn(output_tensor(model(*b.args, **b.kwargs)), b.targets)
                if not bool(torch.isfinite(batch_loss)):
                    raise ValueError(
                        f"training diverged at step {step} (loss {float(batch_loss)}); lower the lr"
                    )
                batch_loss.backward()
                optimizer.step()
                step += 1
                eta.steps += 1
                progress.update()
            tr_loss, tr_acc = _evaluate_loader(model, loss, train, device)
            row = {"step": step, "epoch": epoch + 1, "train_loss": tr_loss, "train_acc": tr_acc}
            if test is not None:
                row["test_loss"], row["test_acc"] = _evaluate_loader(model, loss, test, device)
            record(row)
        tc = time.perf_counter()
        progress.update(0, note="curvature at the last step")
        rec = tracker.finish(step)  # every curvature series ends at the last step, like the losses
        if rec is not None:
            progress.note = f"λmax {rec['lambda_max']:.3g} (2/η {2 / rec['lr']:.3g})"
        curvature_seconds += time.perf_counter() - tc
        progress.close()
    else:
        rows = tracker.history if tracker is not None else []
        for row in rows:
            record(row)
        last = max(
            [r["step"] for r in rows] + ([r["step"] for r in tracker.records] if tracker else []),
            default=0,
        )
        tr_loss, tr_acc = _evaluate_loader(model, loss, train, device)
        row = {"step": last, "train_loss": tr_loss, "train_acc": tr_acc}
        if test is not None:
            row["test_loss"], row["test_acc"] = _evaluate_loader(model, loss, test, device)
        record(row)
        if tracker is not None:  # the curvature series end at the last step too
            tc = time.perf_counter()
            tracker.finish(last)
            curvature_seconds += time.perf_counter() - tc
    train_seconds = time.perf_counter() - t_start

    final = _final_spectrum(
        model,
        loss_fn,
        curv_data,
        final_k=final_k,
        density_runs=density_runs,
        density_steps=density_steps,
        generator=gen,
        quiet=quiet,
        log=log,
        what=f"{used} of {n} samples" if used < n else f"{n} samples",
        dtype=dtype,
        trace_budget=final_trace_matvecs,
    )
    if optimizer is not None:
        lr_now: float | None = float(optimizer.param_groups[0]["lr"])
    elif tracker is not None:
        lr_now = tracker.current_lr()
    else:
        lr_now = lr
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model_name = f"{type(model).__name__} ({num_params} parameters)"
    data_name = f"{type(train_loader).__name__} of {n} samples"
    summary: dict[str, Any] = {
        "title": f"subspaces analyze: {model_name} on {data_name}",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "version": __version__,
        "config": {
            "model": model_name,
            "data": data_name,
            "loss": _loss_name(loss_fn),
            "optimizer": type(optimizer).__name__ if optimizer is not None else "your loop",
            "lr": lr_now,
            "epochs": epochs if optimizer is not None else None,
            "batch_size": first_batch,
            "every": tracker.every if tracker is not None else None,
            "k": tracker.k if tracker is not None else None,
            "seed": seed,
            "dtype": str(dtype or next(iter(model.parameters())).dtype).replace("torch.", ""),
            "device": str(device),
            "num_params": num_params,
            "num_train": n,
            "num_test": _count_samples(test) if test is not None else 0,
            "curvature_samples": used,
            "curvature_seed": seed if curvature_samples is not None else None,
            "curvature_batches": final.top_batches,
        },
        "history": history,
        "curvature": _curvature_section(tracker, first_batch) if tracker is not None else {},
        **_final_sections(final, lr_now, first_batch),
        "timing": {
            "total_seconds": train_seconds + final.seconds,
            "train_seconds": train_seconds - curvature_seconds,
            "curvature_seconds": curvature_seconds + final.seconds,
        },
        "notes": [
            _subset_note(n, curvature_samples, seed, used)
            if curv_data is not getattr(tracker, "data", None) or optimizer is not None
            else f"Curvature is measured on the data given to the tracker ({used} of the {n} "
            "training samples, the same at every checkpoint and for the final spectrum), "
            "each product summed over its mini-batches, exactly.",
            f"Final top-{final.k} eigenpairs certified to relative residual 1e-4: "
            f"{int(final.top.converged.sum())}/{final.k} converged.",
        ]
        + ([BATCHNORM_NOTE] if _has_stochastic(model) else [])
        + (
            ["Trained by your own loop; the tracker's records are shown as measured."]
            if optimizer is None and tracker is not None
            else []
        ),
    }
    if out_dir is not None:
        from ..report import write_report

        paths = write_report(summary, out_dir)
        summary["files"] = {key: str(v) for key, v in paths.items()}
    return summary
