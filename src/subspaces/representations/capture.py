r"""Capture activations of named modules and compare layers of two networks, streaming.

Modules are named as in :meth:`torch.nn.Module.named_modules` (``"0"``, ``"encoder.fc1"``, ...).
Forward hooks are installed only inside :func:`capture_activations`, a context manager that
removes exactly the hooks it added when the block ends, also on an exception. The model's
parameters, buffers and ``training`` flags are left as they were: the data-loader helpers run
the forward passes under :func:`torch.no_grad` in eval mode and restore every submodule's
``training`` flag afterwards (so batch-norm running statistics are not updated).

Every captured activation is flattened per sample to a ``(batch, features)`` matrix: a
convolutional feature map ``(b, C, H, W)`` becomes ``(b, C * H * W)``, i.e. every (channel,
position) pair is one feature, as in Kornblith et al., "Similarity of Neural Network
Representations Revisited" (ICML 2019). A module returning a tuple (e.g. an RNN) contributes
its first element; other non-tensor outputs raise ``TypeError``.

Data may be a tensor of inputs (split into batches of ``batch_size`` rows) or any iterable of
batches (a :class:`torch.utils.data.DataLoader`, a list); a batch is a tensor of inputs, or a
tuple/list whose first element is the inputs (``(x, y)`` pairs). Inputs are moved to the device
of the model's first parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_positive_int
from .._modes import eval_mode
from .cka_pairs import StreamingCKAMatrix

__all__ = [
    "capture_activations",
    "collect_activations",
    "layer_similarity_matrix",
]


def _resolve(model: nn.Module, layers: Sequence[str], name: str) -> dict[str, nn.Module]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise ValueError(
            f"layers of {name} must be a non-empty list of module names, got {layers!r}"
        )
    modules = dict(model.named_modules())
    unknown = [layer for layer in layers if layer not in modules]
    if unknown:
        known = ", ".join(repr(k) for k in list(modules)[:20])
        raise ValueError(
            f"unknown module name(s) {unknown} in {name}; named_modules() gives: {known}"
            + (" ..." if len(modules) > 20 else "")
        )
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers of {name} has repeated names: {list(layers)}")
    return {layer: modules[layer] for layer in layers}


def _flatten_output(output: Any, layer: str) -> Tensor:
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        output = output[0]
    if not isinstance(output, Tensor):
        raise TypeError(
            f"module {layer!r} returned {type(output).__name__}; only tensor outputs (or a "
            "tuple whose first element is a tensor) can be captured"
        )
    if output.ndim == 0:
        raise ValueError(f"module {layer!r} returned a scalar; expected a batch of activations")
    return output.detach().reshape(output.shape[0], -1)


@contextmanager
def capture_activations(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of named modules during forward passes inside a ``with`` block.

    The yielded dict maps each name to the detached output of the latest forward pass,
    flattened per sample to ``(batch, features)``. The hooks are removed when the block ends,
    also on an exception; hooks installed by others are untouched.

    Args:
        model: the network.
        layers: names from ``model.named_modules()``.

    Yields:
        ``{name: (batch, features) tensor}``, refreshed on every forward pass.

    Raises:
        TypeError: if ``model`` is not a module, or a layer returns something other than a
            tensor.
        ValueError: for an empty or repeated list of names, or a name that is not a module of
            ``model`` (the message lists the known names).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> with capture_activations(net, ["1"]) as acts:
        ...     _ = net(torch.randn(5, 3))
        >>> acts["1"].shape, len(net[1]._forward_hooks)
        (torch.Size([5, 4]), 0)
    """
    modules = _resolve(model, layers, "model")
    store: dict[str, Tensor] = {}
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def make_hook(layer: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            store[layer] = _flatten_output(output, layer)

        return hook

    try:
        for layer, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(layer)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _batches(data: Any, batch_size: int) -> Iterator[Tensor]:
    if isinstance(data, Tensor):
        check_positive_int(batch_size, "batch_size")
        if data.ndim == 0 or data.shape[0] == 0:
            raise ValueError(f"data must hold at least one input, got shape {tuple(data.shape)}")
        yield from data.split(batch_size)
        return
    if not isinstance(data, Iterable):
        raise TypeError(
            f"data must be a tensor or an iterable of batches, got {type(data).__name__}"
        )
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
        if not isinstance(x, Tensor):
            raise TypeError(
                "a batch must be a tensor or a tuple/list starting with one, got "
                f"{type(x).__name__}"
            )
        yield x


@contextmanager
def _inference(models: Sequence[nn.Module]) -> Iterator[None]:
    """Eval mode and no_grad for the block; every submodule's ``training`` flag is restored."""
    with eval_mode(*models), torch.no_grad():
        yield


def _device_of(model: nn.Module) -> torch.device | None:
    param = next(model.parameters(), None)
    return None if param is None else param.device


def _run(model: nn.Module, x: Tensor, acts: dict[str, Tensor], layers: Sequence[str]) -> None:
    device = _device_of(model)
    acts.clear()
    model(x if device is None else x.to(device))
    for layer in layers:
        if layer not in acts:
            raise RuntimeError(f"module {layer!r} was not called in the forward pass")
        if acts[layer].shape[0] != x.shape[0]:
            raise ValueError(
                f"module {layer!r} returned {acts[layer].shape[0]} rows for a batch of "
                f"{x.shape[0]} inputs; sample counts must match"
            )


def collect_activations(
    model: nn.Module, layers: Sequence[str], data: Any, *, batch_size: int = 256
) -> dict[str, Tensor]:
    """All activations of named modules over a data set, concatenated (holds them in memory).

    Use :func:`layer_similarity_matrix` to compare layers without holding the activations.

    Args:
        model: the network (run in eval mode under ``no_grad``; its flags are restored).
        layers: names from ``model.named_modules()``.
        data: an ``(N, ...)`` tensor of inputs, or an iterable of batches (see the module).
        batch_size: rows per forward pass when ``data`` is a tensor.

    Returns:
        ``{name: (N, features) tensor}`` on the model's device.

    Raises:
        TypeError: for a bad model, data or batch, or a non-tensor layer output.
        ValueError: for unknown names, empty data, or a layer output whose first dimension is
            not the batch size.
        RuntimeError: if a named module is not called by the forward pass.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
        >>> acts = collect_activations(net, ["0"], torch.randn(10, 3), batch_size=4)
        >>> acts["0"].shape, net.training
        (torch.Size([10, 4]), True)
    """
    _resolve(model, layers, "model")
    chunks: dict[str, list[Tensor]] = {layer: [] for layer in layers}
    with _inference([model]), capture_activations(model, layers) as acts:
        for x in _batches(data, batch_size):
            _run(model, x, acts, layers)
            for layer in layers:
                chunks[layer].append(acts[layer])
    if not chunks[layers[0]]:
        raise ValueError("data yielded no batches")
    return {layer: torch.cat(parts) for layer, parts in chunks.items()}


def layer_similarity_matrix(
    model_a: nn.Module,
    model_b: nn.Module,
    layers_a: Sequence[str],
    layers_b: Sequence[str],
    data: Any,
    measure: str = "linear_cka",
    *,
    unbiased: bool = False,
    batch_size: int = 256,
    matmul_dtype: torch.dtype | None = None,
    chunk_rows: int = 4096,
) -> Tensor:
    """Layer-by-layer similarity of two networks on the same inputs, streaming over batches.

    One :class:`~subspaces.representations.StreamingCKAMatrix` accumulates the batches for all
    pairs ``(layers_a[i], layers_b[j])`` at once (the products of every pair come from one
    product per layer of ``model_a``, and each layer's self-similarity is computed once, not
    once per pair), so the value equals :func:`~subspaces.representations.linear_cka` on the
    concatenated activations while only ``O(P_a P_b + sum p_i^2 + sum q_j^2)`` numbers are held
    (``P_a``, ``P_b``: total widths), plus at most ``chunk_rows`` buffered rows -- never the
    activations of the whole data set. Conv activations are flattened per sample (see the
    module), so wide conv layers make the accumulators large. ``model_b`` may be ``model_a``
    (a self-similarity map, Kornblith et al. 2019, Fig. 2); with the same layer lists only the
    upper triangle of pairs is computed.

    Args:
        model_a: first network.
        model_b: second network (fed the same batches).
        layers_a: module names of ``model_a`` (rows of the result).
        layers_b: module names of ``model_b`` (columns).
        data: an ``(N, ...)`` tensor of inputs, or an iterable of batches (see the module); it
            is iterated once.
        measure: ``"linear_cka"`` (the only streaming measure so far).
        unbiased: the unbiased HSIC_1 estimator (Nguyen et al. 2021) instead of the biased one
            (the default, as in :func:`~subspaces.representations.linear_cka`).
        batch_size: rows per forward pass when ``data`` is a tensor.
        matmul_dtype: ``None`` (default: the activations' precision), ``torch.float64``
            (exact to float64 rounding) or ``torch.float32`` (about 4x faster on CPU, about 1e-7
            from the float64 value).
        chunk_rows: activation rows buffered before they are accumulated.

    Returns:
        ``(len(layers_a), len(layers_b))`` float64 tensor of similarities.

    Raises:
        TypeError: for a bad model, data or batch, or a non-tensor layer output.
        ValueError: for an unknown measure or module name, empty data, a layer output whose
            first dimension is not the batch size, too few rows for CKA, or a bad
            ``matmul_dtype``/``chunk_rows``.
        RuntimeError: if a named module is not called by the forward pass.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        >>> S = layer_similarity_matrix(net, net, ["0", "2"], ["0", "2"], torch.randn(50, 3))
        >>> [round(float(v), 6) for v in S.diagonal()]
        [1.0, 1.0]
    """
    check_choice(measure, "measure", ("linear_cka",))
    _resolve(model_a, layers_a, "model_a")
    _resolve(model_b, layers_b, "model_b")
    acc = StreamingCKAMatrix(matmul_dtype=matmul_dtype, chunk_rows=chunk_rows)
    same = model_a is model_b
    symmetric = same and list(layers_a) == list(layers_b)
    with _inference([model_a] if same else [model_a, model_b]):
        if same:
            all_layers = list(dict.fromkeys([*layers_a, *layers_b]))
            with capture_activations(model_a, all_layers) as acts:
                for x in _batches(data, batch_size):
                    _run(model_a, x, acts, all_layers)
                    acc.update(
                        [acts[la] for la in layers_a],
                        None if symmetric else [acts[lb] for lb in layers_b],
                    )
        else:
            with (
                capture_activations(model_a, layers_a) as acts_a,
                capture_activations(model_b, layers_b) as acts_b,
            ):
                for x in _batches(data, batch_size):
                    _run(model_a, x, acts_a, layers_a)
                    _run(model_b, x, acts_b, layers_b)
                    acc.update([acts_a[la] for la in layers_a], [acts_b[lb] for lb in layers_b])
    if acc.n_samples_ == 0:
        raise ValueError("data yielded no batches")
    return acc.value(unbiased=unbiased)
