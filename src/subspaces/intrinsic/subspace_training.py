r"""Training any ``nn.Module`` in a random subspace ``theta = theta0 + P z`` and ``d_int90``.

Li, Farkhoor, Liu and Yosinski (ICLR 2018, "Measuring the intrinsic dimension of objective
landscapes", arXiv:1804.08838) freeze the initialization ``theta0`` and a random projection ``P``
(``D x d``, unit-norm columns), and train only ``z`` (starting at 0). The intrinsic dimension
``d_int90`` is the smallest ``d`` whose subspace-trained model reaches 90 % of the accuracy of the
fully trained model. MNIST MLPs of many widths gave ``d_int90 ~ 750``.

No model surgery: the model's parameters are read once as ``theta0`` and left untouched; each
step evaluates ``torch.func.functional_call(model, theta0 + unflatten(P z), x)`` with ``z`` the
only leaf that requires grad.

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> X, y = torch.randn(64, 5), torch.randint(0, 2, (64,))
    >>> model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> res = train_in_subspace(model, nn.functional.cross_entropy, (X, y), 10, epochs=3, lr=0.1)
    >>> res.z.shape, res.D, len(res.history["loss"])
    (torch.Size([10]), 66, 3)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .._checks import check_choice, check_positive_float, check_positive_int
from .._io import write_json
from .._tensorlist import ParamLayout
from .parallel import BACKENDS, PointRunner, PointTask, bisection_tree, make_runner, run_point
from .projections import PROJECTION_KINDS, Projection, make_projection

__all__ = [
    "IntrinsicDimensionResult",
    "SubspaceTrainingResult",
    "d_int90_search",
    "evaluate",
    "export_compressed",
    "load_compressed",
    "subspace_parameters",
    "train_in_subspace",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
FORMAT = "subspaces.intrinsic/1"


@dataclass
class SubspaceTrainingResult:
    """Outcome of :func:`train_in_subspace`.

    Attributes:
        z: the trained subspace coordinates ``(d,)`` (detached).
        projection: the projection used (rebuildable from ``kind``, ``d``, ``D``, ``seed``).
        d: subspace dimension.
        D: parameter count of the model.
        projection_seed: seed of ``P``.
        history: per epoch, ``loss`` (mean training minibatch loss) and ``accuracy`` (training
            accuracy at the end of the epoch, ``nan`` when the outputs are not class scores).
        seconds: wall-clock time of the training.

    Example:
        >>> y = torch.arange(128) % 2
        >>> X = torch.randn(128, 5, generator=torch.Generator().manual_seed(0))
        >>> X[:, 0] += 3 * (2 * y - 1)  # separable along the first coordinate
        >>> torch.manual_seed(0) and None
        >>> model = nn.Linear(5, 2)
        >>> res = train_in_subspace(model, nn.functional.cross_entropy, (X, y), 2, epochs=3,
        ...                         lr=0.1, seed=5)
        >>> res.d, res.D, res.projection, len(res.history["loss"])
        (2, 12, DenseProjection(d=2, D=12, seed=5), 3)
        >>> # (kind, d, D, seed) rebuild P, so z alone stores the trained model
        >>> P = make_projection(res.projection.kind, res.d, res.D, res.projection_seed)
        >>> torch.equal(P.to_dense(), res.projection.to_dense())
        True
        >>> evaluate(model, res.z, P, (X, y))["accuracy"] == res.history["accuracy"][-1]
        True
    """

    z: Tensor
    projection: Projection
    d: int
    D: int
    projection_seed: int
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0


def _check_data(data: Any, name: str) -> tuple[Tensor, Tensor]:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{name} must be a pair (inputs, targets) of tensors")
    X, y = data
    if not isinstance(X, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a pair of tensors")
    if X.shape[0] != y.shape[0] or X.shape[0] == 0:
        raise ValueError(
            f"{name}: inputs and targets need the same non-zero length, got {X.shape[0]} "
            f"and {y.shape[0]}"
        )
    for t, part in ((X, "inputs"), (y, "targets")):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} {part} contain NaN or Inf")
    return X, y


def _theta0(model: nn.Module) -> tuple[ParamLayout, Tensor, dict[str, Tensor]]:
    params = {k: v.detach() for k, v in model.named_parameters()}
    if not params:
        raise ValueError("the model has no parameters")
    layout = ParamLayout.from_params(params)
    flat = layout.flatten(params).clone()
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    return layout, flat, buffers


def subspace_parameters(model: nn.Module, z: Tensor, projection: Projection) -> dict[str, Tensor]:
    """The parameters ``theta0 + unflatten(P z)`` with ``theta0`` the model's current parameters.

    Args:
        model: the model at its initialization ``theta0``.
        z: subspace coordinates ``(d,)``.
        projection: ``P``.

    Returns:
        ``name -> tensor`` (differentiable in ``z``).

    Raises:
        ValueError: if ``P`` does not map into the model's parameter count.

    Example:
        >>> from subspaces.intrinsic import DenseProjection
        >>> model = nn.Linear(3, 2)  # D = 8 parameters
        >>> P = DenseProjection(2, 8, seed=0)
        >>> z = torch.tensor([1.0, -2.0])
        >>> moved = subspace_parameters(model, z, P)
        >>> delta = torch.cat([(moved[k] - v).flatten() for k, v in model.named_parameters()])
        >>> bool(torch.allclose(delta, P.matrix @ z))  # theta0 + P z, in named_parameters order
        True
    """
    layout, flat, _ = _theta0(model)
    if layout.numel != projection.D:
        raise ValueError(f"projection maps to D={projection.D}, model has {layout.numel} params")
    return layout.unflatten(flat + projection(z))


def _accuracy(out: Tensor, y: Tensor) -> float:
    if out.ndim == 2 and not y.is_floating_point() and y.ndim == 1:
        return float((out.argmax(dim=1) == y).double().mean())
    return math.nan


def evaluate(
    model: nn.Module,
    z: Tensor,
    projection: Projection,
    data: tuple[Tensor, Tensor],
    loss_fn: LossFn = nn.functional.cross_entropy,
) -> dict[str, float]:
    """Loss and accuracy of ``theta0 + P z`` on ``data`` (one full batch, no grad).

    Args:
        model: the model at ``theta0``.
        z: subspace coordinates.
        projection: ``P``.
        data: ``(inputs, targets)``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.

    Returns:
        ``{"loss": ..., "accuracy": ...}`` (accuracy ``nan`` unless outputs are class scores).

    Example:
        >>> from subspaces.intrinsic import DenseProjection
        >>> model = nn.Linear(3, 2)
        >>> X, y = torch.randn(16, 3), torch.arange(16) % 2
        >>> ev = evaluate(model, torch.zeros(2), DenseProjection(2, 8), (X, y))  # z = 0: theta0
        >>> with torch.no_grad():
        ...     direct = float(nn.functional.cross_entropy(model(X), y))
        >>> abs(ev["loss"] - direct) < 1e-6, 0.0 <= ev["accuracy"] <= 1.0
        (True, True)
    """
    X, y = _check_data(data, "data")
    with torch.no_grad():
        params = subspace_parameters(model, z, projection)
        buffers = {k: v for k, v in model.named_buffers()}
        out = functional_call(model, (params, buffers), (X,))
        return {"loss": float(loss_fn(out, y)), "accuracy": _accuracy(out, y)}


def train_in_subspace(
    model: nn.Module,
    loss_fn: LossFn,
    train_data: tuple[Tensor, Tensor],
    d: int,
    *,
    projection: str | Projection = "dense",
    seed: int = 0,
    epochs: int = 5,
    lr: float = 1e-2,
    batch_size: int = 64,
    optimizer: str = "adam",
) -> SubspaceTrainingResult:
    """Train ``z`` (from 0) so that ``theta0 + P z`` minimizes ``loss_fn``; the model is unchanged.

    Minibatches: each epoch draws ``torch.randperm(n, generator=g)`` from one generator
    ``g = torch.Generator().manual_seed(seed + 1)`` and walks it in chunks of ``batch_size``.

    Args:
        model: the network at its initialization ``theta0`` (its parameters are not modified).
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        train_data: ``(inputs, targets)``.
        d: subspace dimension (ignored when ``projection`` is a :class:`Projection`, which must
            have ``d`` columns).
        projection: ``"dense"``, ``"sparse"``, ``"fastfood"`` or a ready projection.
        seed: seeds ``P`` (``projection_seed``) and the minibatch order.
        epochs: passes over the data.
        lr: learning rate.
        batch_size: minibatch size.
        optimizer: ``"adam"`` or ``"sgd"``.

    Returns:
        The trained ``z``, the projection and the per-epoch history.

    Raises:
        ValueError: for ``d <= 0``, ``d > D``, bad sizes, NaN data or a non-finite loss.
        TypeError: for arguments of the wrong type.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(128) % 2
        >>> X = torch.randn(128, 5, generator=g) + 3 * (2 * y - 1)[:, None]  # separable
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Linear(5, 2)
        >>> res = train_in_subspace(model, nn.functional.cross_entropy, (X, y), d=2, epochs=3)
        >>> res.z.shape, res.D, res.history["loss"][-1] < res.history["loss"][0]
        (torch.Size([2]), 12, True)
    """
    X, y = _check_data(train_data, "train_data")
    check_positive_int(epochs, "epochs")
    check_positive_int(batch_size, "batch_size")
    lr = check_positive_float(lr, "lr")
    check_choice(optimizer, "optimizer", ("adam", "sgd"))
    layout, flat, buffers = _theta0(model)
    D = layout.numel
    if isinstance(projection, Projection):
        P = projection
        if P.D != D:
            raise ValueError(f"projection maps to D={P.D}, the model has {D} parameters")
        if P.dtype != flat.dtype:
            raise TypeError(
                f"projection has dtype {P.dtype} but the model's parameters are {flat.dtype}"
            )
        d = P.d
    else:
        check_choice(projection, "projection", PROJECTION_KINDS)
        check_positive_int(d, "d")
        P = make_projection(projection, d, D, seed, dtype=flat.dtype, device=flat.device)
    z = torch.zeros(P.d, dtype=flat.dtype, device=flat.device, requires_grad=True)
    opt: torch.optim.Optimizer = (
        torch.optim.Adam([z], lr=lr) if optimizer == "adam" else torch.optim.SGD([z], lr=lr)
    )
    gen = torch.Generator().manual_seed(seed + 1)
    n = X.shape[0]
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            params = layout.unflatten(flat + P(z))
            out = functional_call(model, (params, buffers), (X[idx],))
            loss = loss_fn(out, y[idx])
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ValueError(
                    f"non-finite loss {value} in epoch {epoch} (d={P.d}, lr={lr}); "
                    "lower the learning rate"
                )
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += value * len(idx)
            count += len(idx)
        history["loss"].append(total / count)
        history["accuracy"].append(evaluate(model, z.detach(), P, (X, y), loss_fn)["accuracy"])
    return SubspaceTrainingResult(
        z=z.detach().clone(),
        projection=P,
        d=P.d,
        D=D,
        projection_seed=P.seed,
        history=history,
        seconds=time.perf_counter() - start,
    )


@dataclass
class IntrinsicDimensionResult:
    """Outcome of :func:`d_int90_search`.

    Attributes:
        d_int90: smallest evaluated ``d`` reaching the target; ``None`` if none did.
        baseline_accuracy: accuracy of the fully trained model.
        target: ``threshold * baseline_accuracy``.
        points: the accuracy-vs-``d`` curve, ``[{"d", "accuracy", "loss", "seconds"}]`` sorted by
            ``d``.
        bracket: ``(largest failing d, smallest passing d)``; either may be ``None``.
        num_trained: trainings run by this call (points reloaded from the checkpoint excluded;
            the baseline counts as one).

    Example:
        >>> y = torch.arange(128) % 2
        >>> X = torch.randn(128, 5, generator=torch.Generator().manual_seed(0))
        >>> X[:, 0] += 3 * (2 * y - 1)  # separable along the first coordinate
        >>> def make_model():
        ...     torch.manual_seed(0)
        ...     return nn.Linear(5, 2)
        >>> r = d_int90_search(make_model, (X, y), dims=[1, 12], epochs=5, lr=0.1)
        >>> r.baseline_accuracy, r.target, r.d_int90, r.bracket, r.num_trained
        (1.0, 0.9, 1, (None, 1), 2)
        >>> [p["d"] for p in r.points], r.points[0]["accuracy"] >= r.target
        ([1], True)
    """

    d_int90: int | None
    baseline_accuracy: float
    target: float
    points: list[dict[str, float]]
    bracket: tuple[int | None, int | None]
    num_trained: int


def d_int90_search(
    make_model: Callable[[], nn.Module],
    data: tuple[Tensor, Tensor],
    dims: Sequence[int],
    *,
    eval_data: tuple[Tensor, Tensor] | None = None,
    threshold: float = 0.9,
    loss_fn: LossFn = nn.functional.cross_entropy,
    projection: str = "dense",
    seed: int = 0,
    epochs: int = 5,
    lr: float = 1e-2,
    batch_size: int = 64,
    optimizer: str = "adam",
    baseline_lr: float | None = None,
    bisection_steps: int = 3,
    checkpoint_path: str | Path | None = None,
    workers: int = 1,
    backend: str = "process",
) -> IntrinsicDimensionResult:
    """Find ``d_int90``: a coarse sweep over ``dims``, then bisection inside the bracket.

    The baseline is the full model trained with the same optimizer (``P = I``, learning rate
    ``baseline_lr`` or ``lr``). The sweep walks ``dims`` in increasing order and stops at the
    first ``d`` whose accuracy on ``eval_data`` (training data if ``None``) reaches
    ``threshold * baseline``; up to ``bisection_steps`` integer bisections then narrow the
    bracket with the previous (failing) ``d``. Accuracy need not be monotone in ``d``; the answer
    is the smallest passing ``d`` evaluated.

    ``make_model()`` must return the same initialization ``theta0`` on every call (seed it).
    With ``checkpoint_path`` the points are written atomically as JSON after each training; a
    rerun with the same settings reloads them instead of retraining (different settings raise).

    With ``workers > 1`` the baseline and the sweep's dimensions are trained concurrently, in
    increasing order of ``d``, ``workers`` at a time, on local worker processes (``backend=
    "process"``: ``spawn`` start method, one thread per worker) or on Ray (``backend="ray"``,
    optional: ``pip install ray``); each bisection step's possible next midpoints are trained
    ahead in parallel (``2^k - 1 <= workers`` of them, ``k`` steps ahead). Every point is the
    same deterministic training as in the serial search and the decisions are taken in the same
    order, so ``d_int90``, the bracket and every point's numbers equal the serial ones (run the
    caller single-threaded, ``torch.set_num_threads(1)``, for bit-identical floats); ``points``
    may hold a few more dimensions (those already running when the answer became known).
    Each point is written to the checkpoint as soon as it finishes, so an interrupted parallel
    search resumes without redoing finished points. ``make_model`` and ``loss_fn`` (and the data)
    are then sent to other processes: they must be picklable by reference (module-level
    functions or classes, or :func:`functools.partial` of them, in an importable module; not
    lambdas or local functions), and a script needs the ``if __name__ == "__main__":`` guard.

    Args:
        make_model: builds the network at ``theta0``.
        data: training ``(inputs, targets)``.
        dims: candidate dimensions for the sweep.
        eval_data: data on which accuracy is measured.
        threshold: share of the baseline accuracy to reach, in ``(0, 1]``.
        loss_fn: training loss.
        projection: ``"dense"``, ``"sparse"`` or ``"fastfood"``.
        seed: projection and minibatch seed.
        epochs: epochs of every training.
        lr: learning rate of the subspace trainings.
        batch_size: minibatch size.
        optimizer: ``"adam"`` or ``"sgd"``.
        baseline_lr: learning rate of the full training (defaults to ``lr``).
        bisection_steps: maximum number of bisection trainings.
        checkpoint_path: JSON file to resume from and write to.
        workers: number of worker processes (``1``: train in this process).
        backend: ``"process"``, ``"ray"`` or ``"serial"`` (in this process, any ``workers``).

    Returns:
        The result, with the accuracy-vs-``d`` curve.

    Raises:
        ValueError: for empty or non-positive ``dims``, a bad threshold, an unknown backend, or
            a checkpoint written with other settings.
        TypeError: with workers, if ``make_model``, ``loss_fn`` or the data cannot be pickled.
        ImportError: for ``backend="ray"`` when Ray is not installed.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(128) % 2
        >>> X = torch.randn(128, 5, generator=g)
        >>> X[:, 0] += 3 * (2 * y - 1)  # separable along the first coordinate
        >>> def make_model():
        ...     torch.manual_seed(0)
        ...     return nn.Linear(5, 2)
        >>> r = d_int90_search(make_model, (X, y), dims=[1, 2, 4, 12], epochs=5, lr=0.1)
        >>> r.baseline_accuracy, r.target
        (1.0, 0.9)
        >>> accuracy = {p["d"]: p["accuracy"] for p in r.points}
        >>> r.d_int90 is not None and accuracy[r.d_int90] >= r.target
        True
    """
    if not dims:
        raise ValueError("dims must be a non-empty sequence of positive ints")
    dims = sorted({check_positive_int(v, "dims entry") for v in dims})
    threshold = check_positive_float(threshold, "threshold")
    if threshold > 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    check_positive_int(bisection_steps, "bisection_steps", minimum=0)
    _check_data(data, "data")
    evaluation = data if eval_data is None else eval_data
    _check_data(evaluation, "eval_data")
    baseline_rate = lr if baseline_lr is None else check_positive_float(baseline_lr, "baseline_lr")
    workers = check_positive_int(workers, "workers")
    check_choice(backend, "backend", BACKENDS)
    config = {
        "dims": dims,
        "threshold": threshold,
        "projection": projection,
        "seed": seed,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "baseline_lr": baseline_rate,
    }
    state: dict[str, Any] = {"format": FORMAT + "-search", "config": config, "points": {}}
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    if path is not None and path.exists():
        loaded = json.loads(path.read_text())
        if loaded.get("config") != json.loads(json.dumps(config)):
            raise ValueError(
                f"checkpoint {path} was written with other settings: {loaded.get('config')}"
            )
        state = loaded
    task = PointTask(
        make_model=make_model,
        loss_fn=loss_fn,
        data=data,
        eval_data=eval_data,
        projection=projection,
        seed=seed,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        optimizer=optimizer,
        baseline_lr=baseline_rate,
    )
    trained = 0

    def record(key: str, value: dict[str, float]) -> None:
        nonlocal trained
        trained += 1
        state["points"][key] = value
        if path is not None:
            write_json(path, state)

    def point(key: str, d: int | None) -> dict[str, float]:
        if key not in state["points"]:
            record(key, run_point(task, d))
        return state["points"][key]

    runner = make_runner(task, workers, backend)
    try:
        if runner.workers > 1:
            _parallel_sweep(runner, state["points"], dims, threshold, record)
        baseline = point("baseline", None)["accuracy"]
        target = threshold * baseline
        lo: int | None = None
        hi: int | None = None
        for d in dims:
            if point(str(d), d)["accuracy"] >= target:
                hi = d
                break
            lo = d
        if lo is not None and hi is not None:
            a, b = lo, hi
            depth = max(1, (runner.workers + 1).bit_length() - 1)  # 2^depth - 1 <= workers
            for step in range(bisection_steps):
                if b - a <= 1:
                    break
                mid = (a + b) // 2
                if runner.workers > 1 and str(mid) not in state["points"]:
                    ahead = bisection_tree(a, b, min(depth, bisection_steps - step))
                    _run_all(runner, state["points"], [(str(m), m) for m in ahead], record)
                if point(str(mid), mid)["accuracy"] >= target:
                    b = mid
                else:
                    a = mid
            lo, hi = a, b
    finally:
        runner.close()
    points = sorted(
        (dict(v) for k, v in state["points"].items() if k != "baseline"), key=lambda p: p["d"]
    )
    return IntrinsicDimensionResult(
        d_int90=hi,
        baseline_accuracy=baseline,
        target=target,
        points=points,
        bracket=(lo, hi),
        num_trained=trained,
    )


def _run_all(
    runner: PointRunner,
    points: Mapping[str, Any],
    todo: Sequence[tuple[str, int | None]],
    record: Callable[[str, dict[str, float]], None],
) -> None:
    """Train the points of ``todo`` not yet in ``points``, recording each as it finishes."""
    queue = [kd for kd in todo if kd[0] not in points]
    while queue or runner.in_flight:
        while queue and runner.in_flight < runner.workers:
            runner.submit(*queue.pop(0))
        for key, value in runner.wait():
            record(key, value)


def _parallel_sweep(
    runner: PointRunner,
    points: Mapping[str, Any],
    dims: Sequence[int],
    threshold: float,
    record: Callable[[str, dict[str, float]], None],
) -> None:
    """Train the baseline and the sweep's dimensions, in increasing order, ``workers`` at a time.

    A dimension is submitted only while no smaller one is known to pass (which needs the
    baseline); points already running when the answer becomes known are finished and recorded.
    """
    order: list[tuple[str, int | None]] = [("baseline", None)] + [(str(d), d) for d in dims]
    submitted: set[str] = set()

    def needed() -> list[tuple[str, int | None]]:
        out: list[tuple[str, int | None]] = []
        target = threshold * points["baseline"]["accuracy"] if "baseline" in points else None
        for key, d in order:
            if key not in points:
                out.append((key, d))
            elif d is not None and target is not None and points[key]["accuracy"] >= target:
                break
        return [kd for kd in out if kd[0] not in submitted]

    while True:
        queue = needed()
        while queue and runner.in_flight < runner.workers:
            key, d = queue.pop(0)
            submitted.add(key)
            runner.submit(key, d)
        if not runner.in_flight:
            return
        for key, value in runner.wait():
            record(key, value)


def export_compressed(
    model: nn.Module, z: Tensor, projection_seed: int, kind: str, *, init_seed: int
) -> dict[str, Any]:
    """A small JSON-ready description of ``theta0 + P z``: ``d`` numbers and three integers.

    The initialization ``theta0`` is not stored: ``init_seed`` is the seed *the user* passed when
    building the model, and :func:`load_compressed` calls ``make_model(init_seed)`` to rebuild it
    (this is only valid if that reproduces the same ``theta0``, e.g. ``torch.manual_seed`` before
    construction, on the same PyTorch version).

    Args:
        model: the model at ``theta0`` (read for ``D`` and the dtype).
        z: trained coordinates ``(d,)``.
        projection_seed: seed of ``P``.
        kind: ``"dense"``, ``"sparse"`` or ``"fastfood"``.
        init_seed: the seed that rebuilds ``theta0``.

    Returns:
        ``{"format", "kind", "d", "D", "projection_seed", "init_seed", "dtype", "z"}``.

    Raises:
        ValueError: for an unknown ``kind`` or a ``z`` that is not a vector.

    Example:
        >>> from torch import nn
        >>> torch.manual_seed(3) and None
        >>> m = nn.Linear(4, 2)
        >>> blob = export_compressed(m, torch.ones(2), 7, "dense", init_seed=3)
        >>> blob["d"], blob["D"], blob["kind"]
        (2, 10, 'dense')
    """
    check_choice(kind, "kind", PROJECTION_KINDS)
    flat = _theta0(model)[1]
    if z.ndim != 1:
        raise ValueError(f"z must be a vector, got shape {tuple(z.shape)}")
    return {
        "format": FORMAT,
        "kind": kind,
        "d": int(z.numel()),
        "D": int(flat.numel()),
        "projection_seed": int(projection_seed),
        "init_seed": int(init_seed),
        "dtype": str(flat.dtype).removeprefix("torch."),
        "z": [float(v) for v in z.detach().cpu().double()],
    }


def load_compressed(blob: Mapping[str, Any], make_model: Callable[[int], nn.Module]) -> nn.Module:
    """Rebuild the trained network from :func:`export_compressed` output.

    Args:
        blob: the exported dictionary.
        make_model: ``make_model(init_seed)`` returns the network at ``theta0``.

    Returns:
        The model with its parameters set to ``theta0 + P z`` (in place).

    Raises:
        ValueError: for an unknown format or a model whose parameter count differs.

    Example:
        >>> from torch import nn
        >>> def make(s):
        ...     torch.manual_seed(s)
        ...     return nn.Linear(4, 2)
        >>> blob = export_compressed(make(3), torch.tensor([0.5, -1.0]), 7, "fastfood", init_seed=3)
        >>> m = load_compressed(blob, make)
        >>> P = make_projection("fastfood", 2, 10, 7)
        >>> ref = ParamLayout.from_params(dict(make(3).named_parameters()))
        >>> theta = ref.flatten(dict(make(3).named_parameters())) + P(torch.tensor([0.5, -1.0]))
        >>> torch.allclose(ref.flatten(dict(m.named_parameters())), theta)
        True
    """
    if blob.get("format") != FORMAT:
        raise ValueError(f"unknown format {blob.get('format')!r}, expected {FORMAT!r}")
    model = make_model(int(blob["init_seed"]))
    layout, flat, _ = _theta0(model)
    if layout.numel != blob["D"]:
        raise ValueError(f"the model has {layout.numel} parameters, the blob D={blob['D']}")
    z = torch.tensor(blob["z"], dtype=flat.dtype, device=flat.device)
    P = make_projection(
        blob["kind"], int(blob["d"]), layout.numel, int(blob["projection_seed"]), dtype=flat.dtype
    )
    new = layout.unflatten(flat + P(z))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(new[name])
    return model
