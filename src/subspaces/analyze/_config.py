"""Settings of a ``subspaces analyze`` run (:class:`AnalyzeConfig`) and the device check."""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
