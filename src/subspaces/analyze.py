"""The main job, ``subspaces analyze``: train a model while tracking its curvature, then report.

With no arguments it trains an MLP on the bundled digits data with SGD, measures the Hessian
every ``every`` steps on the full training set (top-``k`` eigenpairs warm-started from the previous
checkpoint, trace with a standard error, gradient fraction in the top eigenspace, eigenspace
overlap, mini-batch vs full-data sharpness), computes the final spectrum (top eigenvalues,
outliers vs bulk, SLQ density) and writes ``report.html``, ``summary.json`` and the figures.

A checkpoint (model, optimizer, tracker, history, random states) is written atomically after
every epoch, with a format version, a SHA-256 checksum and the hash of the run's settings
(:func:`subspaces._io.write_checkpoint`); ``resume=True`` continues an interrupted run from it,
keeping the finished work, and refuses a checkpoint that is damaged, truncated, of another
format or from another run. A folder that holds another run (a checkpoint, ``summary.json`` or
``report.html``) is never overwritten silently: ``resume=True`` continues it, ``force=True``
starts over in it, anything else is an error.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import __version__
from ._io import CheckpointError, read_checkpoint, settings_hash, write_checkpoint
from ._progress import Progress
from ._threads import choose_threads, intra_op_threads
from .curvature import HessianOperator, bulk_outliers, density, top_eigen, trace
from .dynamics import CurvatureTracker

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_KIND = "subspaces.analyze"
CHECKPOINT_VERSION = 1
"""Version of the analyze checkpoint payload (bump when its keys or their meaning change)."""
RUN_FILES = (CHECKPOINT, "summary.json", "report.html")
"""Files that mark a folder as holding a run (``force=True`` replaces them)."""
_CHECKPOINT_KEYS = ("config", "model", "optimizer", "tracker", "shuffle", "curv_gen", "run")
DEVICE_TYPES = ("cpu", "cuda", "mps")
OPTIMIZERS = ("sgd", "adam", "adamw")
LOSSES = ("cross_entropy", "mse")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class AnalyzeConfig:
    """Settings of one ``analyze`` run (every field is a command-line option).

    Attributes:
        model: ``"module:factory"`` returning an ``nn.Module`` for ``(in_dim, num_classes)``
            (called as ``factory(in_dim, out_dim)``); default: an MLP 64-``width``-``width``-10.
        data: ``"module:factory"`` returning ``(X_train, y_train, X_test, y_test)`` tensors;
            default: the bundled digits.
        loss: ``"cross_entropy"`` or ``"mse"`` (targets one-hot for classification).
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr: learning rate.
        momentum: SGD momentum.
        epochs: training epochs.
        batch_size: mini-batch size.
        every: measure curvature every this many steps.
        k: dimension of the tracked top eigenspace.
        seed: seed of initialization, shuffling and estimators.
        dtype: ``"float32"`` or ``"float64"``.
        device: e.g. ``"cpu"`` or ``"cuda"``.
        width: hidden width of the default MLP.
        final_k: eigenvalues computed at the end (to see the outliers and the bulk edge).
        density_runs: SLQ probe vectors for the final density.
        density_steps: Lanczos steps per SLQ run.
        trace_rtol: target relative standard error of the tracked trace.
    """

    model: str | None = None
    data: str | None = None
    loss: str = "cross_entropy"
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    epochs: int = 10
    batch_size: int = 32
    every: int = 25
    k: int = 10
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    width: int = 64
    final_k: int = 20
    density_runs: int = 8
    density_steps: int = 60
    trace_rtol: float = 0.1

    def validate(self) -> None:
        """Check every field.

        Raises:
            ValueError: naming the bad field and what was expected.
        """
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        for name in (
            "epochs",
            "batch_size",
            "every",
            "k",
            "width",
            "final_k",
            "density_runs",
            "density_steps",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        for spec_name in ("model", "data"):
            spec = getattr(self, spec_name)
            if spec is not None and (":" not in spec or spec.startswith(":") or spec.endswith(":")):
                raise ValueError(
                    f"{spec_name} must look like 'package.module:factory', got {spec!r}"
                )


def _load_factory(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import module {module_name!r} of {spec!r}: {err}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"{spec!r}: {module_name} has no callable {attr!r}")
    return factory


def default_mlp(in_dim: int, out_dim: int, width: int = 64) -> nn.Module:
    """The default model: ``in_dim``-``width``-``width``-``out_dim`` with ReLU."""
    return nn.Sequential(
        nn.Linear(in_dim, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, out_dim),
    )


def _data(config: AnalyzeConfig, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor, str]:
    if config.data is None:
        from .data import load_digits_split

        return (*load_digits_split(seed=config.seed, dtype=dtype), "digits (scikit-learn, 8x8)")
    out = _load_factory(config.data)()
    if not (
        isinstance(out, (tuple, list)) and len(out) == 4 and all(isinstance(t, Tensor) for t in out)
    ):
        raise ValueError(f"{config.data} must return (X_train, y_train, X_test, y_test) tensors")
    Xtr, ytr, Xte, yte = out
    if len(Xtr) == 0:
        raise ValueError(f"{config.data} returned an empty training set")

    def cast(t: Tensor) -> Tensor:
        return t.to(dtype) if t.is_floating_point() else t

    return cast(Xtr), cast(ytr), cast(Xte), cast(yte), config.data


def _targets(y: Tensor, loss: str, num_classes: int, dtype: torch.dtype) -> Tensor:
    if loss == "mse" and not y.is_floating_point():
        return nn.functional.one_hot(y, num_classes).to(dtype)
    return y


def _evaluate(
    model: nn.Module, loss_name: str, X: Tensor, y: Tensor, yt: Tensor
) -> tuple[float, float]:
    with torch.no_grad():
        out = model(X)
        if loss_name == "cross_entropy":
            loss = nn.functional.cross_entropy(out, y)
        else:
            loss = ((out - yt) ** 2).mean()
        acc = (
            (out.argmax(1) == y).double().mean()
            if not y.is_floating_point()
            else torch.tensor(float("nan"))
        )
    return float(loss), float(acc)


def _make_optimizer(config: AnalyzeConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    return torch.optim.AdamW(model.parameters(), lr=config.lr)


def _resolve_device(spec: str) -> torch.device:
    """The device of ``spec``, checked to exist on this machine.

    Returns:
        The device.

    Raises:
        ValueError: naming ``spec`` for an unknown device string, an unsupported device type, or
            a CUDA/MPS device this machine does not have.
    """
    expected = "expected 'cpu', 'cuda', 'cuda:N' or 'mps'"
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device (--device) {spec!r} is not a device: {expected}") from None
    if device.type not in DEVICE_TYPES:
        raise ValueError(f"device (--device) {spec!r} is not supported by analyze: {expected}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = "a CUDA build" if torch.version.cuda else "a CPU-only build of torch"
            raise ValueError(
                f"device (--device) {spec!r}: CUDA is not available on this machine "
                f"({built}, torch {torch.__version__}); use --device cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device (--device) {spec!r}: this machine has {count} CUDA device(s), "
                f"numbered 0 to {count - 1}"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device (--device) {spec!r}: MPS is not available on this machine")
    return device


def _previous_run_files(out: Path) -> list[str]:
    """The files of :data:`RUN_FILES` that ``out`` holds."""
    return [name for name in RUN_FILES if (out / name).exists()]


def _check_out_dir(out: Path) -> None:
    """Raise unless ``out`` is, or can be created as, a folder (no side effects)."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        what = "is a file" if existing == out else f"is under {existing}, which is a file"
        raise ValueError(f"out_dir (--out) {out} {what}, not a folder; give a folder")


def _make_out_dir(out: Path) -> None:
    """Create ``out`` and check that files can be written in it.

    Raises:
        ValueError: naming ``out`` and the reason when it cannot be created or written.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out, prefix=".subspaces-write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(f"out_dir (--out) {out} is not a writable folder: {reason}") from None


def _read_analyze_checkpoint(path: Path, config: AnalyzeConfig) -> dict[str, Any]:
    """The verified payload of the analyze checkpoint ``path`` for a run with ``config``.

    Returns:
        The payload (keys of ``_CHECKPOINT_KEYS``).

    Raises:
        CheckpointError: one line naming ``path``: unreadable, not a checkpoint, truncated,
            damaged, of another kind or format version, or from a run with other settings.
    """
    hint = "; start over with --force (force=True)"
    try:
        checkpoint = read_checkpoint(path, kind=CHECKPOINT_KIND, version=CHECKPOINT_VERSION)
    except CheckpointError as err:
        raise CheckpointError(f"{err}{hint}") from None
    state = checkpoint.payload
    missing = [key for key in _CHECKPOINT_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}{hint}")
    settings = dataclasses.asdict(config)
    if checkpoint.identity != settings_hash(settings):
        saved = state["config"] if isinstance(state["config"], dict) else {}
        diff = "; ".join(
            f"{key}: {saved.get(key)!r} in the checkpoint, {value!r} now"
            for key, value in settings.items()
            if saved.get(key) != value
        )
        diff = diff or "its settings hash differs"
        raise CheckpointError(
            f"checkpoint {path} was made with other settings ({diff}); resume with the same "
            f"options{hint}"
        )
    return state


def _restore(path: Path, state: dict[str, Any], parts: dict[str, Any]) -> None:
    """Load each ``state[name]`` into ``parts[name]``; a mismatch is a one-line CheckpointError."""
    for name, part in parts.items():
        try:
            if isinstance(part, torch.Generator):
                part.set_state(state[name])
            else:
                part.load_state_dict(state[name])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CheckpointError(
                f"checkpoint {path}: its {name} state does not fit this run: {reason[:200]}"
            ) from None


@dataclass
class _Run:
    history: dict[str, list[float]] = field(
        default_factory=lambda: {
            k: [] for k in ("step", "epoch", "train_loss", "train_acc", "test_loss", "test_acc")
        }
    )
    epoch: int = 0
    step: int = 0
    train_seconds: float = 0.0
    curvature_seconds: float = 0.0


def run_analyze(
    config: AnalyzeConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    threads: int | str | None = "auto",
) -> dict[str, Any]:
    """Train, track curvature, analyze the final spectrum, and write the report.

    Everything that can be checked before training is checked first, without writing anything:
    the settings, the device, the output folder, the checkpoint to resume from and the batch
    size against the data set.

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
        threads: torch intra-op threads for the run: ``"auto"`` (one thread unless a product
            touches more than :data:`~subspaces._threads.SMALL_WORK` parameter-samples: the
            many small products of a small model oversubscribe a shared machine), ``None``
            (torch's setting) or a count. The caller's setting is restored afterwards.

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
    with intra_op_threads(None):  # whatever the run sets, the caller's count comes back
        return _run_analyze(config, Path(out_dir), resume, force, quiet, log, threads)


def _run_analyze(
    config: AnalyzeConfig,
    out_dir: Path,
    resume: bool,
    force: bool,
    quiet: bool,
    log: Callable[[str], None],
    threads: int | str | None,
) -> dict[str, Any]:
    """The body of :func:`run_analyze` (which restores the thread count).

    Returns:
        The summary dict.

    Raises:
        ValueError: as :func:`run_analyze`.
        CheckpointError: as :func:`run_analyze`.
    """
    config.validate()
    if resume and force:
        raise ValueError(
            "resume=True (--resume) continues the run in out_dir and force=True (--force) "
            "discards it: give one, not both"
        )
    device = _resolve_device(config.device)
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
            raise ValueError(f"{config.model} must return an nn.Module, got {type(model).__name__}")
    model = model.to(device=device, dtype=dtype)
    optimizer = _make_optimizer(config, model)
    shuffle = torch.Generator().manual_seed(config.seed)
    curv_gen = torch.Generator().manual_seed(config.seed + 1)
    full_data = [(Xtr, ttr)]
    tracker = CurvatureTracker(
        model,
        config.loss,
        full_data,
        optimizer=optimizer,
        every=config.every,
        k=config.k,
        trace_rtol=config.trace_rtol,
        generator=curv_gen,
    )
    run = _Run()
    if state is not None:
        parts = {"model": model, "optimizer": optimizer, "tracker": tracker}
        _restore(ckpt, state, {**parts, "shuffle": shuffle, "curv_gen": curv_gen})
        try:
            run = _Run(**state["run"])
        except TypeError as err:
            raise CheckpointError(f"checkpoint {ckpt}: its run state does not fit: {err}") from None
        log(f"resuming from {ckpt}: epoch {run.epoch}/{config.epochs}, step {run.step}")
    _make_out_dir(out)
    if force and not resume:
        for name in _previous_run_files(out):  # the old run's files go; its figures are redrawn
            os.unlink(out / name)

    n = len(ytr)
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    num_params = sum(p.numel() for p in model.parameters())
    # Curvature products run over the whole training set: that is the work that decides.
    num_threads = choose_threads(num_params * n, threads)  # type: ignore[arg-type]
    torch.set_num_threads(num_threads)
    if not quiet:
        log(
            f"analyze: {model_name} ({num_params} parameters) on {data_name} "
            f"({n} train / {len(yte)} test), {config.optimizer} lr={config.lr}, "
            f"{config.epochs} epochs, curvature every {config.every} steps, "
            f"{num_threads} thread{'s' if num_threads > 1 else ''}"
        )
    progress = Progress(total_steps, "training", quiet=quiet)
    progress.count = run.step
    while run.epoch < config.epochs:
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=shuffle).to(device)
        model.train()
        for i in range(steps_per_epoch):
            idx = perm[i * config.batch_size : (i + 1) * config.batch_size]
            xb, tb = Xtr[idx], ttr[idx]
            if run.step % config.every == 0:
                tc = time.perf_counter()
                rec = tracker.step(run.step, batch=(xb, tb))
                run.curvature_seconds += time.perf_counter() - tc
                if rec is not None:
                    progress.note = f"λmax {rec['lambda_max']:.3g} (2/η {2 / rec['lr']:.3g})"
            optimizer.zero_grad()
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
            progress.update()
        run.epoch += 1
        model.eval()
        tr_loss, tr_acc = _evaluate(model, config.loss, Xtr, ytr, ttr)
        te_loss, te_acc = _evaluate(model, config.loss, Xte, yte, tte)
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
        write_checkpoint(
            ckpt,
            {
                "config": dataclasses.asdict(config),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "tracker": tracker.state_dict(),
                "shuffle": shuffle.get_state(),
                "curv_gen": curv_gen.get_state(),
                "run": dataclasses.asdict(run),
            },
            kind=CHECKPOINT_KIND,
            version=CHECKPOINT_VERSION,
            identity=settings_hash(dataclasses.asdict(config)),
        )
    progress.close()

    # ----- the final spectrum ------------------------------------------------------------------
    model.eval()
    t0 = time.perf_counter()
    if not quiet:
        log("final spectrum: top eigenvalues, trace, density (full training set)")
    H = HessianOperator(model, config.loss, full_data)
    k_final = min(config.final_k, H.shape[0])
    top = top_eigen(H, k_final, rtol=1e-4, generator=curv_gen)
    split = bulk_outliers(top) if int((top.eigenvalues > 0).sum()) >= 2 else None
    tr = trace(H, rtol=0.03, max_matvecs=600, generator=curv_gen)
    dens = density(
        H, config.density_runs, min(config.density_steps, H.shape[0]), generator=curv_gen
    )
    final_seconds = time.perf_counter() - t0
    lr_now = float(optimizer.param_groups[0]["lr"])
    recs = tracker.records
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
        },
        "history": run.history,
        "curvature": {
            "step": [r["step"] for r in recs],
            "eigenvalues": [r["eigenvalues"] for r in recs],
            "residuals": [r["residuals"] for r in recs],
            "trace": [r.get("trace") for r in recs],
            "trace_stderr": [r.get("trace_stderr") for r in recs],
            "grad_fraction": [r["grad_fraction"] for r in recs],
            "overlap_prev": [r["overlap_prev"] for r in recs],
            "batch_lambda_max": [r.get("batch_lambda_max") for r in recs],
            "matvecs": [r["matvecs"] for r in recs],
            "num_samples": recs[0]["num_samples"] if recs else None,
            "batch_size": config.batch_size,
        },
        "stability": {
            "lr": lr_now,
            "gd_threshold": 2 / lr_now,
            "sgd_trace_threshold": 2 * config.batch_size / lr_now,
            "final_lambda_max": float(top.eigenvalues[0]),
            "final_trace": tr.estimate,
            "eta_lambda_over_2": lr_now * float(top.eigenvalues[0]) / 2,
            "eta_trace_over_2": lr_now * tr.estimate / 2,
        },
        "final": {
            "eigenvalues": top.eigenvalues.tolist(),
            "residuals": top.residuals.tolist(),
            "converged": top.converged.tolist(),
            "num_outliers": split.num_outliers if split else 0,
            "bulk_edge": split.bulk_edge if split else None,
            "gap_ratio": split.gap_ratio if split else None,
            "trace": tr.estimate,
            "trace_stderr": tr.stderr,
            "num_samples": top.num_samples,
            "matvecs": top.num_matvecs + tr.num_matvecs + dens.num_matvecs,
            "density": {
                "grid": dens.grid.tolist(),
                "density": dens.density.tolist(),
                "nodes": dens.nodes.tolist(),
                "weights": dens.weights.tolist(),
            },
        },
        "timing": {
            "total_seconds": run.train_seconds + final_seconds,
            "train_seconds": run.train_seconds - run.curvature_seconds,
            "curvature_seconds": run.curvature_seconds + final_seconds,
        },
        "notes": [
            f"Curvature is measured on the full training set ({n} samples), "
            "never on one mini-batch; the mini-batch sharpness is shown separately.",
            "SGD threshold for the trace: 2B/η for batch size B with a mean-reduced loss "
            "(Wu & Su 2023).",
            f"Final top-{k_final} eigenpairs certified to relative residual 1e-4: "
            f"{int(top.converged.sum())}/{k_final} converged.",
        ],
    }
    from .report import write_report

    paths = write_report(summary, out)
    summary["files"] = {k: str(v) for k, v in paths.items()}
    return summary
