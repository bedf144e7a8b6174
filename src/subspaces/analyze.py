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
import hashlib
import importlib
import importlib.util
import os
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import __version__
from ._io import CheckpointError, read_checkpoint, settings_hash, write_checkpoint
from ._progress import Progress, format_seconds
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
        curvature_samples: measure curvature (tracked and final) on a seeded random subset of
            this many training samples (``None``: all of them); the subset's seed and size are
            recorded in the summary.
        curvature_batch_size: samples per batch of the curvature products; each product is
            accumulated over the batches of the subset, exactly (never one giant batch).
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
    curvature_samples: int | None = None
    curvature_batch_size: int = 2048

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
            "curvature_batch_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.curvature_samples is not None and (
            not isinstance(self.curvature_samples, int) or self.curvature_samples < 1
        ):
            raise ValueError(
                "curvature_samples (--curvature-samples) must be a positive integer or None, "
                f"got {self.curvature_samples!r}"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        for spec_name in ("model", "data"):
            spec = getattr(self, spec_name)
            if spec is not None and (":" not in spec or spec.startswith(":") or spec.endswith(":")):
                raise ValueError(
                    f"{spec_name} must look like 'package.module:factory' or "
                    f"'path/to/file.py:factory', got {spec!r}"
                )


def _load_factory(spec: str) -> Callable[..., Any]:
    """The callable named by ``"package.module:factory"`` or ``"path/to/file.py:factory"``.

    A module is imported with the current directory on ``sys.path`` (so a module next to where
    the command runs is found without ``PYTHONPATH``); a ``.py`` path is loaded from that file
    (relative to the current directory).

    Returns:
        The callable.

    Raises:
        ValueError: naming ``spec`` when the module or file cannot be imported or has no such
            callable.
    """
    module_name, _, attr = spec.rpartition(":")
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        path = Path(module_name).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"cannot import {spec!r}: no file {path}")
        name = "_subspaces_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ValueError(f"cannot import {spec!r}: {path} is not a Python file")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        added = str(path.parent) not in sys.path
        if added:  # the file's own imports of its neighbours
            sys.path.insert(0, str(path.parent))
        try:
            loader_spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[name]
            raise ValueError(f"cannot import {spec!r}: {type(err).__name__}: {err}") from None
        finally:
            if added:
                sys.path.remove(str(path.parent))
    else:
        cwd = os.getcwd()
        added = cwd not in sys.path and "" not in sys.path
        if added:
            sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"cannot import module {module_name!r} of {spec!r}: {err}") from None
        finally:
            if added:
                sys.path.remove(cwd)
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
    model: nn.Module,
    loss_name: str,
    X: Tensor,
    y: Tensor,
    yt: Tensor,
    batch_size: int = 2048,
) -> tuple[float, float]:
    """Mean loss and accuracy (NaN for float targets), in batches of ``batch_size``."""
    n = len(y)
    loss_sum = torch.zeros((), dtype=torch.float64, device=X.device)
    correct = torch.zeros((), dtype=torch.float64, device=X.device)
    entries = 0
    with torch.no_grad():
        for i in range(0, n, batch_size):
            out = model(X[i : i + batch_size])
            yb, tb = y[i : i + batch_size], yt[i : i + batch_size]
            if loss_name == "cross_entropy":
                loss_sum += nn.functional.cross_entropy(out, yb, reduction="sum").double()
                entries += len(yb)
            else:
                loss_sum += ((out - tb.reshape(out.shape)) ** 2).sum().double()
                entries += out.numel()
            if not y.is_floating_point():
                correct += (out.argmax(1) == yb).double().sum()
    acc = float(correct) / n if not y.is_floating_point() else float("nan")
    return float(loss_sum) / max(entries, 1), acc


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


# ----- curvature data: a seeded subset in mini-batches -----------------------------------------
def subset_indices(n: int, samples: int | None, seed: int) -> Tensor:
    """The sorted indices of a seeded random subset of ``samples`` out of ``n`` (all if ``None``).

    Args:
        n: the number of samples.
        samples: the subset size (``None`` or ``>= n``: every index).
        seed: the seed of the draw (``torch.randperm`` on a CPU generator).

    Returns:
        A sorted int64 tensor of distinct indices in ``[0, n)``.

    Raises:
        ValueError: for a ``samples`` that is not a positive integer.

    Example:
        >>> idx = subset_indices(10, 4, seed=0)
        >>> len(idx), bool((idx[1:] > idx[:-1]).all()), subset_indices(3, None, 0).tolist()
        (4, True, [0, 1, 2])
    """
    if samples is None or samples >= n:
        return torch.arange(n)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"curvature_samples must be a positive integer, got {samples!r}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:samples].sort().values


def _batch_len(batch: Any) -> int:
    from .curvature._model import _first_tensor

    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        first = _first_tensor(batch[0])
    else:
        first = _first_tensor(batch)
    if first is None or first.ndim == 0:
        raise TypeError(
            "cannot tell the number of samples of a batch: expected (inputs, targets), a dict of "
            f"tensors or a tensor, got {type(batch).__name__}"
        )
    return int(first.shape[0])


def _take(obj: Any, idx: Tensor, n: int) -> Any:
    """Rows ``idx`` of every tensor with ``n`` rows in ``obj`` (others as they are)."""
    if isinstance(obj, Tensor):
        return obj[idx.to(obj.device)] if obj.ndim > 0 and obj.shape[0] == n else obj
    if isinstance(obj, Mapping):
        return {k: _take(v, idx, n) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_take(v, idx, n) for v in obj)
    return obj


def _cat(parts: list[Any]) -> Any:
    """Concatenate batches of one structure along their samples."""
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts) if first.ndim > 0 else first
    if isinstance(first, Mapping):
        return {k: _cat([p[k] for p in parts]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_cat([p[i] for p in parts]) for i in range(len(first)))
    return first


class MappedBatches:
    """A re-iterable view of ``loader`` with ``fn`` applied to every batch (``batch_to_inputs``).

    Args:
        loader: any re-iterable of batches.
        fn: turns one of its batches into what the model and loss take: ``(inputs, targets)``
            (``model(inputs)``, or ``model(**inputs)`` for a dict) or a dict of model inputs
            (``model(**batch)``; the loss gets the whole dict as its targets).

    Example:
        >>> import torch
        >>> rows = [{"image": torch.zeros(2, 3), "label": torch.tensor([0, 1])}]
        >>> view = MappedBatches(rows, lambda b: (b["image"], b["label"]))
        >>> [y.tolist() for _, y in view], len(view)
        ([[0, 1]], 1)
    """

    def __init__(self, loader: Iterable[Any], fn: Callable[[Any], Any]) -> None:
        if not callable(fn):
            raise TypeError(f"batch_to_inputs must be callable, got {type(fn).__name__}")
        self.loader, self.fn = loader, fn

    def __iter__(self) -> Any:
        return (self.fn(batch) for batch in self.loader)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]


def curvature_batches(
    data: Iterable[Any],
    samples: int | None = None,
    *,
    seed: int = 0,
    batch_size: int | None = None,
) -> list[Any]:
    """A seeded subset of ``data``'s samples as a list of mini-batches, for curvature products.

    One pass over ``data`` counts the samples ``n``; :func:`subset_indices` draws ``samples`` of
    them with ``seed`` (positions in ``data``'s order; with a shuffled loader the subset also
    depends on its order, so prefer an unshuffled one); a second pass keeps those rows of every
    batch (tensors with the batch's number of rows; tuples, lists and dicts of them), regrouped
    into batches of ``batch_size`` samples (default: the first batch's size). A curvature
    operator on the result sums its products over the batches, so every product is exact over
    the subset and memory holds one batch at a time.

    Args:
        data: a re-iterable of batches (a DataLoader, a list): ``(inputs, targets)``, dicts of
            tensors (Hugging Face style) or tensors.
        samples: the subset size (``None``: every sample).
        seed: the seed of the subset.
        batch_size: samples per returned batch.

    Returns:
        The list of batches (copies of the chosen rows).

    Raises:
        ValueError: for bad ``samples``/``batch_size`` or empty data.
        TypeError: for batches whose number of samples cannot be told.

    Example:
        >>> import torch
        >>> X, y = torch.arange(10.0)[:, None], torch.arange(10)
        >>> loader = [(X[:6], y[:6]), (X[6:], y[6:])]
        >>> parts = curvature_batches(loader, 5, seed=0, batch_size=2)
        >>> [len(b[1]) for b in parts], torch.cat([b[1] for b in parts]).tolist() == (
        ...     subset_indices(10, 5, seed=0).tolist())
        ([2, 2, 1], True)
    """
    if batch_size is not None and (
        not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise ValueError(f"curvature_batch_size must be a positive integer, got {batch_size!r}")
    sizes = [_batch_len(b) for b in data]
    n = sum(sizes)
    if n == 0:
        raise ValueError("the training data is empty: no batches")
    idx = subset_indices(n, samples, seed)
    size = batch_size or sizes[0]
    out: list[Any] = []
    pending: list[Any] = []
    pending_n, start = 0, 0
    for batch in data:
        m = _batch_len(batch)
        local = idx[(idx >= start) & (idx < start + m)] - start
        start += m
        if len(local) == 0:
            continue
        pending.append(batch if len(local) == m else _take(batch, local, m))
        pending_n += len(local)
        while pending_n >= size:
            whole = _cat(pending) if len(pending) > 1 else pending[0]
            out.append(_take(whole, torch.arange(size), pending_n))
            rest = torch.arange(size, pending_n)
            pending = [_take(whole, rest, pending_n)] if len(rest) else []
            pending_n -= size
    if start != n:
        raise ValueError(f"the data changed between two passes over it ({n} samples, then {start})")
    if pending_n:
        out.append(_cat(pending) if len(pending) > 1 else pending[0])
    return out


def causal_lm_loss(logits: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
    """The loss a Hugging Face causal LM computes from its own ``labels``, as a loss function.

    ``model(**batch)`` with ``batch["labels"]`` returns ``.loss``: the mean cross-entropy of the
    logits at positions ``0..T-2`` against the labels at ``1..T-1``, positions with label
    ``-100`` ignored. Curvature operators and :func:`analyze` call ``loss_fn(logits, batch)``
    (for a dict batch the targets are the whole dict), so this is the loss to pass for
    batches that include ``labels``.

    Args:
        logits: ``(n, T, V)``.
        batch: the batch dict, with ``labels`` ``(n, T)``.

    Returns:
        The scalar mean loss.

    Raises:
        ValueError: if ``batch`` has no ``labels``.

    Example:
        >>> import torch
        >>> logits = torch.zeros(1, 3, 5)
        >>> round(float(causal_lm_loss(logits, {"labels": torch.tensor([[1, 2, 3]])})), 4)
        1.6094
    """
    labels = batch.get("labels") if isinstance(batch, Mapping) else None
    if labels is None:
        raise ValueError(
            "causal_lm_loss needs batches that are dicts with 'labels' (e.g. labels = input_ids)"
        )
    from .curvature._model import ClassLoss

    shifted = logits[:, :-1, :]
    return ClassLoss(ignore_index=-100)(shifted, labels[:, 1:])


def _measure_product_seconds(op: Any, generator: torch.Generator) -> float:
    """Seconds of one curvature product (measured on a random vector)."""
    v = torch.randn(op.shape[0], generator=generator, dtype=torch.float64)
    v = v.to(device=op.device, dtype=op.dtype)
    op @ v  # the first product builds and checks what later ones reuse
    t0 = time.perf_counter()
    op @ v
    return time.perf_counter() - t0


def _log_tracking_cost(
    log: Callable[[str], None], tracker: CurvatureTracker, data: Any, checks: int, steps: int
) -> None:
    """Print the predicted cost of tracking: checkpoints x products x measured time per product."""
    per = _measure_product_seconds(tracker._op(data), torch.Generator())
    products = tracker.products_per_measure()
    log(
        _cost_line("tracking", [(f"{checks} checkpoints x {products}", checks * products)], per)
        + f", plus {steps} training steps"
    )


def _cost_line(phase: str, parts: list[tuple[str, int]], seconds_per_product: float) -> str:
    """``phase: up to N products (parts) x T ms per product (measured) = up to S``.

    The counts are budgets and estimates (a trace stops early when accurate enough, Lanczos when
    converged), so the time is an upper estimate.

    Returns:
        The line.
    """
    total = sum(p for _, p in parts)
    detail = ", ".join(f"{name} {p}" for name, p in parts)
    return (
        f"{phase}: up to {total} products ({detail}) x {seconds_per_product * 1e3:.3g} ms "
        f"per product (measured) = up to {format_seconds(total * seconds_per_product)}"
    )


@dataclass
class _Final:
    top: Any
    split: Any
    tr: Any
    dens: Any
    seconds: float
    k: int
    top_batches: int | None


def _final_spectrum(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    *,
    final_k: int,
    density_runs: int,
    density_steps: int,
    generator: torch.Generator,
    quiet: bool,
    log: Callable[[str], None],
    what: str,
    dtype: torch.dtype | None = None,
    trace_budget: int = 600,
) -> _Final:
    """Top eigenpairs, trace and SLQ density of the Hessian on ``data`` (summed over its batches).

    The predicted cost (products x measured seconds per product) is logged before it starts, and
    each part's progress while it runs.

    Returns:
        The results and the seconds they took.
    """
    t0 = time.perf_counter()
    H = HessianOperator(model, loss_fn, data, mode_policy="eval", dtype=dtype)
    k_final = min(final_k, H.shape[0])
    steps = min(density_steps, H.shape[0])
    if not quiet:
        per = _measure_product_seconds(H, torch.Generator().manual_seed(0))
        batches = H.num_batches or 1
        log(
            _cost_line(
                f"final spectrum on {what} ({batches} batch{'es' if batches > 1 else ''})",
                [
                    (f"top-{k_final} eigenpairs", 3 * (k_final + 2) + 10),
                    (f"trace (at most {trace_budget})", trace_budget),
                    (f"density {density_runs}x{steps}", density_runs * steps),
                ],
                per,
            )
        )
    progress = Progress(3, "final spectrum", quiet=quiet)
    progress.note = "top eigenpairs"
    top = top_eigen(H, k_final, rtol=1e-4, generator=generator)
    progress.update()
    split = bulk_outliers(top) if int((top.eigenvalues > 0).sum()) >= 2 else None
    progress.note = "trace"
    tr = trace(H, rtol=0.03, max_matvecs=trace_budget, generator=generator)
    progress.update()
    progress.note = "density"
    dens = density(H, density_runs, steps, generator=generator)
    progress.update()
    progress.close()
    return _Final(top, split, tr, dens, time.perf_counter() - t0, k_final, H.num_batches)


def _curvature_section(tracker: CurvatureTracker, batch_size: int | None) -> dict[str, Any]:
    recs = tracker.records
    return {
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
        "batch_size": batch_size,
    }


def _final_sections(
    final: _Final, lr: float | None, batch_size: int | None
) -> dict[str, dict[str, Any]]:
    top, split, tr, dens = final.top, final.split, final.tr, final.dens
    lam = float(top.eigenvalues[0])
    out: dict[str, dict[str, Any]] = {
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
        }
    }
    if lr is not None:
        out["stability"] = {
            "lr": lr,
            "gd_threshold": 2 / lr,
            "final_lambda_max": lam,
            "final_trace": tr.estimate,
            "eta_lambda_over_2": lr * lam / 2,
            "eta_trace_over_2": lr * tr.estimate / 2,
        }
        if batch_size is not None:
            out["stability"]["sgd_trace_threshold"] = 2 * batch_size / lr
    return out


def _has_stochastic(model: nn.Module) -> bool:
    from .curvature._model import _STOCHASTIC

    return any(isinstance(m, _STOCHASTIC) for m in model.modules())


def _subset_note(n: int, samples: int | None, seed: int, used: int | None) -> str:
    if samples is None or samples >= n:
        return (
            f"Curvature is measured on the full training set ({used if used else n} samples), "
            "never on one mini-batch; the mini-batch sharpness is shown separately."
        )
    return (
        f"Curvature is measured on a random subset of {samples} of the {n} training samples "
        f"(seed {seed}), the same subset at every checkpoint, never on one mini-batch; each "
        "product is summed over its mini-batches, exactly."
    )


BATCHNORM_NOTE = (
    "BatchNorm and Dropout are evaluated in eval mode for every curvature measurement "
    "(BatchNorm with its running statistics), so the Hessian is that of the deterministic "
    "eval-mode loss; the training modes are restored afterwards."
)


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
        threads: torch intra-op threads for the run: ``"auto"`` (the cores idle when the run
            starts, at most torch's count: threads on busy cores oversubscribe a shared machine;
            one thread for tiny models), ``None`` (torch's setting) or a count. The caller's
            setting is restored afterwards.

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
            raise ValueError(f"{config.model} must return an nn.Module, got {type(model).__name__}")
    model = model.to(device=device, dtype=dtype)
    optimizer = _make_optimizer(config, model)
    shuffle = torch.Generator().manual_seed(config.seed)
    curv_gen = torch.Generator().manual_seed(config.seed + 1)
    n = len(ytr)
    curv_idx = subset_indices(n, config.curvature_samples, config.seed)
    cbs = config.curvature_batch_size
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

    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    num_params = sum(p.numel() for p in model.parameters())
    # Curvature products run over the whole training set: that is the work that decides.
    num_threads = choose_threads(num_params * len(curv_idx), threads)  # type: ignore[arg-type]
    torch.set_num_threads(num_threads)
    subset = (
        f"{len(curv_idx)} of {n} samples (seed {config.seed})"
        if len(curv_idx) < n
        else f"{n} samples"
    )
    if not quiet:
        log(
            f"analyze: {model_name} ({num_params} parameters) on {data_name} "
            f"({n} train / {len(yte)} test), {config.optimizer} lr={config.lr}, "
            f"{config.epochs} epochs, curvature every {config.every} steps on {subset} "
            f"in {len(full_data)} batch{'es' if len(full_data) > 1 else ''}, "
            f"{num_threads} thread{'s' if num_threads > 1 else ''}"
        )
        checkpoints = sum(1 for s in range(run.step, total_steps) if s % config.every == 0)
        if checkpoints:
            _log_tracking_cost(log, tracker, full_data, checkpoints, total_steps - run.step)
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
    from .report import write_report

    paths = write_report(summary, out)
    summary["files"] = {k: str(v) for k, v in paths.items()}
    return summary


# ----- the Python entry point: your own model, data and loss -----------------------------------
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
    from .curvature._model import output_tensor, split_batch

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


def _loss_name(loss_fn: Any) -> str:
    if isinstance(loss_fn, str):
        return loss_fn
    if isinstance(loss_fn, nn.Module):
        return type(loss_fn).__name__
    return getattr(loss_fn, "__name__", type(loss_fn).__name__)


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

    Either way the result is the ``summary.json`` / ``report.html`` of ``subspaces analyze``.

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
        ([0, 2], 64, 4)
    """
    from .curvature._model import iterate_batches, output_tensor, resolve_loss, split_batch

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
        if not quiet:
            log(
                f"analyze: {type(model).__name__} "
                f"({sum(p.numel() for p in model.parameters())} parameters), {n} training "
                f"samples, curvature on {used} every {every} steps"
            )
            if total is not None:
                checks = (total + every - 1) // every
                _log_tracking_cost(log, tracker, tracker.data, checks, total)
        progress = Progress(total, "training", quiet=quiet)
        for epoch in range(epochs):
            model.train()
            for raw in train:
                tc = time.perf_counter()
                rec = tracker.step(step, batch=raw)
                curvature_seconds += time.perf_counter() - tc
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
                progress.update()
            tr_loss, tr_acc = _evaluate_loader(model, loss, train, device)
            row = {"step": step, "epoch": epoch + 1, "train_loss": tr_loss, "train_acc": tr_acc}
            if test is not None:
                row["test_loss"], row["test_acc"] = _evaluate_loader(model, loss, test, device)
            record(row)
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
        from .report import write_report

        paths = write_report(summary, out_dir)
        summary["files"] = {key: str(v) for key, v in paths.items()}
    return summary


class _CallableModule(types.ModuleType):
    """This module, callable: ``subspaces.analyze(model, ...)`` is :func:`analyze`.

    The package exports the entry point under the module's own name; making the module callable
    keeps ``subspaces.analyze.AnalyzeConfig``, ``import subspaces.analyze as m`` and
    ``from subspaces.analyze import analyze`` all working.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return analyze(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
