"""Shared pieces of the reproductions: the digits data, a small MLP and a short training loop.

The module name starts with ``_`` so the experiment discovery of :mod:`subspaces.experiments`
does not take it for a reproduction. Everything here is deterministic given its ``seed``.

Example:
    >>> Xtr, ytr, Xte, yte = load_digits_tensors(classes=[0, 1, 2])
    >>> model = mlp(Xtr.shape[1], 32, 3, seed=0).double()
    >>> with single_thread():  # small matrices: one thread is fastest
    ...     history = train(model, Xtr, ytr, optimizer="sgd", lr=0.1, epochs=5, batch_size=64,
    ...                     seed=0)
    >>> history["accuracy"][-1] > 0.9 and accuracy(model, Xte, yte) > 0.9
    True
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .._threads import intra_op_threads

__all__ = [
    "accuracy",
    "figure_png",
    "load_digits_tensors",
    "loglog_fit",
    "mlp",
    "single_thread",
    "train",
]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
}


def load_digits_tensors(
    classes: list[int] | tuple[int, ...] | None = None,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    *,
    test_fraction: float = 0.2,
    whiten: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The bundled scikit-learn digits (8x8 images, 1797 samples, 10 classes), standardized.

    The split is stratified by class and set by ``seed``; features are standardized with the
    training mean and standard deviation (constant pixels keep standard deviation 1, so they stay
    0). Labels are renumbered ``0 .. C-1`` in the order of ``classes``. With ``whiten=True`` the
    inputs are instead the standardized principal components of the training inputs (PCA
    whitening: zero mean, identity covariance on the training set; directions of zero training
    variance are dropped, so there are fewer than 64 features).

    Args:
        classes: the digit classes to keep (e.g. ``[0, 1, 2]``); ``None`` keeps all ten.
        dtype: floating dtype of the inputs.
        seed: seeds the train/test split.
        test_fraction: share of each class held out for the test set (0 for no test set).
        whiten: PCA-whiten instead of standardizing each pixel.

    Returns:
        ``(X_train, y_train, X_test, y_test)``: inputs ``(n, 64)`` of ``dtype``, labels ``(n,)``
        of ``torch.long``.

    Raises:
        ValueError: for an unknown or repeated class, or ``test_fraction`` outside ``[0, 1)``.

    Example:
        >>> Xtr, ytr, Xte, yte = load_digits_tensors()
        >>> Xtr.shape, Xte.shape, int(ytr.max()) + 1
        (torch.Size([1438, 64]), torch.Size([359, 64]), 10)
    """
    from sklearn.datasets import load_digits

    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    digits = load_digits()
    X_all = torch.as_tensor(digits.data, dtype=torch.float64)
    y_all = torch.as_tensor(digits.target, dtype=torch.long)
    keep = list(range(10)) if classes is None else [int(c) for c in classes]
    if len(set(keep)) != len(keep) or any(c < 0 or c > 9 for c in keep) or not keep:
        raise ValueError(f"classes must be distinct digits 0..9, got {classes!r}")

    gen = torch.Generator().manual_seed(seed)
    train_idx: list[Tensor] = []
    test_idx: list[Tensor] = []
    labels = torch.empty_like(y_all)
    for new_label, c in enumerate(keep):
        idx = torch.nonzero(y_all == c).flatten()
        labels[idx] = new_label
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        n_test = round(test_fraction * idx.numel())
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr = torch.cat(train_idx).sort().values
    te = torch.cat(test_idx).sort().values
    mean = X_all[tr].mean(0)
    std = X_all[tr].std(0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))

    Z_tr = (X_all[tr] - mean) / std
    Z_te = (X_all[te] - mean) / std
    if whiten:
        _, S, Vh = torch.linalg.svd(Z_tr, full_matrices=False)
        var = S**2 / max(Z_tr.shape[0] - 1, 1)
        keep = var > 1e-10 * var.max()
        proj = Vh[keep].T / var[keep].sqrt()
        Z_tr, Z_te = Z_tr @ proj, Z_te @ proj
    return Z_tr.to(dtype), labels[tr], Z_te.to(dtype), labels[te]


def mlp(
    in_dim: int,
    width: int,
    out_dim: int,
    depth: int = 2,
    activation: str = "relu",
    *,
    seed: int | None = None,
) -> nn.Module:
    """A fully connected network ``in_dim -> width -> ... -> width -> out_dim``.

    Args:
        in_dim: input features.
        width: units of every hidden layer.
        out_dim: outputs (classes).
        depth: number of hidden layers (0 gives a linear model).
        activation: ``"relu"``, ``"tanh"``, ``"gelu"``, ``"softplus"`` or ``"sigmoid"``.
        seed: if given, the initialization uses this seed without touching the global RNG
            state; otherwise the global RNG initializes as usual.

    Returns:
        An ``nn.Sequential`` in float32 (call ``.double()`` for float64).

    Raises:
        ValueError: for an unknown activation or a non-positive size.

    Example:
        >>> net = mlp(64, 32, 10, seed=0)
        >>> sum(p.numel() for p in net.parameters())
        3466
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    if min(in_dim, width, out_dim) < 1 or depth < 0:
        raise ValueError(
            f"sizes must be positive and depth >= 0, got {in_dim}, {width}, {out_dim}, {depth}"
        )

    def build() -> nn.Module:
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), _ACTIVATIONS[activation]()]
            d = width
        layers.append(nn.Linear(d, out_dim))
        return nn.Sequential(*layers)

    if seed is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@torch.no_grad()
def accuracy(model: nn.Module, X: Tensor, y: Tensor) -> float:
    """Share of ``X`` that ``model`` classifies as ``y`` (argmax of the outputs).

    Args:
        model: a classifier returning logits.
        X: inputs.
        y: integer labels.

    Returns:
        The accuracy in ``[0, 1]``.
    """
    return float((model(X).argmax(-1) == y).double().mean())


def train(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    optimizer: str = "sgd",
    lr: float,
    epochs: int,
    batch_size: int | None,
    seed: int,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    max_steps: int | None = None,
    divergence_factor: float | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place with cross-entropy by plain SGD or Adam on shuffled mini-batches.

    Each epoch visits every sample once in a random order (set by ``seed``) in batches of
    ``batch_size`` (the last, smaller batch is dropped unless it is the only one). After each
    epoch the full-data loss and accuracy are evaluated in eval mode.

    Args:
        model: the network (trained in place; its dtype must match ``X``).
        X: inputs ``(n, ...)``.
        y: integer labels ``(n,)``.
        optimizer: ``"sgd"`` (``torch.optim.SGD``) or ``"adam"`` (``torch.optim.Adam``).
        lr: learning rate.
        epochs: passes over the data.
        batch_size: samples per step; ``None`` or ``>= n`` for full-batch gradient descent.
        seed: seeds the shuffling.
        momentum: SGD momentum (ignored by Adam).
        weight_decay: L2 penalty coefficient passed to the optimizer.
        max_steps: stop after this many steps (``None``: no limit).
        divergence_factor: if given, stop as soon as a mini-batch loss is not finite or exceeds
            ``divergence_factor`` times the initial full-data loss, and set ``diverged``.

    Returns:
        History dict: ``loss`` and ``accuracy`` (full data, after each epoch), ``batch_loss``
        (every step's mini-batch loss, before its update), ``initial_loss`` (full data, before
        training), ``steps``, ``diverged`` (bool) and ``final_loss``.

    Raises:
        ValueError: for an unknown optimizer or a non-positive ``lr``, ``epochs`` or
            ``batch_size``.

    Example:
        >>> Xtr, ytr, _, _ = load_digits_tensors(classes=[3, 8])
        >>> net = mlp(64, 16, 2, seed=1).double()
        >>> with single_thread():
        ...     h = train(net, Xtr, ytr, optimizer="adam", lr=1e-2, epochs=3, batch_size=32, seed=0)
        >>> len(h["loss"]), h["diverged"]
        (3, False)
    """
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    if not lr > 0 or epochs < 0 or (batch_size is not None and batch_size < 1):
        raise ValueError(
            f"need lr > 0, epochs >= 0, batch_size >= 1; got {lr}, {epochs}, {batch_size}"
        )
    n = X.shape[0]
    bs = n if batch_size is None else min(batch_size, n)
    params = [p for p in model.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)

    def full_loss() -> float:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            value = float(loss_fn(model(X), y))
        model.train(was_training)
        return value

    initial = full_loss()
    history: dict[str, Any] = {
        "loss": [],
        "accuracy": [],
        "batch_loss": [],
        "initial_loss": initial,
        "steps": 0,
        "diverged": False,
    }
    threshold = math.inf if divergence_factor is None else divergence_factor * initial
    steps = 0
    model.train()
    done = False
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen, device="cpu").to(X.device)
        n_batches = max(n // bs, 1)
        for b in range(n_batches):
            idx = order[b * bs : (b + 1) * bs]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(X[idx]), y[idx])
            value = float(loss.detach())
            history["batch_loss"].append(value)
            if not math.isfinite(value) or value > threshold:
                history["diverged"] = divergence_factor is not None or not math.isfinite(value)
                done = True
                break
            loss.backward()
            opt.step()
            steps += 1
            if max_steps is not None and steps >= max_steps:
                done = True
                break
        final = full_loss()
        if divergence_factor is not None and (not math.isfinite(final) or final > threshold):
            history["diverged"] = True
            done = True
        history["loss"].append(final)
        history["accuracy"].append(accuracy(model, X, y) if math.isfinite(final) else 0.0)
        if done:
            break
    model.eval()
    history["steps"] = steps
    history["final_loss"] = history["loss"][-1] if history["loss"] else initial
    return history


def loglog_fit(x: Sequence[float] | Tensor, y: Sequence[float] | Tensor) -> tuple[float, float]:
    """Least-squares line through ``(log x, log y)``.

    Args:
        x: positive abscissae (at least two distinct).
        y: positive ordinates.

    Returns:
        ``(slope, intercept)`` of ``log y = slope * log x + intercept``.

    Raises:
        ValueError: for fewer than two points or a non-positive value.

    Example:
        >>> slope, _ = loglog_fit([1.0, 2.0, 4.0], [3.0, 1.5, 0.75])
        >>> round(slope, 12)
        -1.0
    """
    lx = torch.as_tensor(x, dtype=torch.float64).flatten()
    ly = torch.as_tensor(y, dtype=torch.float64).flatten()
    if lx.numel() != ly.numel() or lx.numel() < 2:
        raise ValueError(f"need two or more (x, y) pairs, got {lx.numel()} and {ly.numel()}")
    if bool((lx <= 0).any()) or bool((ly <= 0).any()):
        raise ValueError("log-log fit needs positive values")
    lx, ly = lx.log(), ly.log()
    xc = lx - lx.mean()
    slope = float((xc * (ly - ly.mean())).sum() / (xc * xc).sum())
    return slope, float(ly.mean() - slope * lx.mean())


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block with one intra-op thread, then restore the previous count.

    The reproductions multiply small dense matrices, for which one thread is fastest and immune
    to oversubscription on a shared machine (two threads can be 10-30x slower under load). The
    results do not depend on the thread count.

    Yields:
        Nothing.
    """
    with intra_op_threads(1):
        yield


def figure_png(fig: Any, dpi: int = 110) -> bytes:
    """Render a Matplotlib figure to PNG bytes and close it.

    Args:
        fig: a ``matplotlib.figure.Figure``.
        dpi: resolution.

    Returns:
        The PNG file content.
    """
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def checks_text(checks: dict[str, bool]) -> str:
    """The end of a verdict summary: ``"all checks hold"`` or the names of the failed checks.

    Args:
        checks: ``{check name: held}``.

    Returns:
        The text.

    Example:
        >>> checks_text({"a": True, "b": False, "c": False})
        'failed: b, c'
    """
    failed = [name for name, held in checks.items() if not held]
    return "failed: " + ", ".join(failed) if failed else "all checks hold"
