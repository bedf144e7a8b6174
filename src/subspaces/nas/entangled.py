"""Weight entanglement: mixing candidate convolutions in weight space instead of output space.

Sukthanker, Krishnakumar, Safari & Hutter, "Weight-Entanglement Meets Gradient-Based Neural
Architecture Search" (AutoML 2024, arXiv:2312.10440). On a layer whose candidates are
convolutions ``(kernel k, width c)``, all candidates share one super-weight ``W`` of the largest
kernel and width: candidate ``(k, c)`` is the first ``c`` filters and the centred ``k x k``
crop, zero-padded back to full size. Because convolution is linear in its weight,

    sum_i a_i conv(x, pad(W_i)) = conv(x, sum_i a_i pad(W_i)),

so a gradient-based search (DARTS, GDAS) needs **one** convolution with the mixed weight
(:class:`EntangledConv`) instead of one per candidate (:class:`OutputMixedConv`, DARTS's output
mixing, each candidate with its own weight). :class:`MacroSupernet` stacks either kind over a
:class:`~subspaces.nas.space.MacroSpace`; :func:`search` runs first-order DARTS (softmax) or GDAS
(hard Gumbel-softmax, straight-through) on it and discretises by argmax.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .networks import CLASSES, IMAGE, MacroNetwork
from .space import MacroSpace

__all__ = [
    "EntangledConv",
    "MacroSupernet",
    "OutputMixedConv",
    "SearchResult",
    "relaxed_weights",
    "search",
]

Mixing = Literal["entangled", "output"]
Relaxation = Literal["darts", "gdas"]


def _check_alphas(alphas: Tensor, n: int) -> None:
    if alphas.shape != (n,):
        raise ValueError(f"mixing weights must have shape ({n},), got {tuple(alphas.shape)}")


class EntangledConv(nn.Module):
    """All ``(kernel, width)`` candidates of one layer superposed in one weight; one convolution.

    Args:
        in_channels: input channels.
        kernels: odd kernel sizes (ascending).
        widths: output widths (ascending); outputs have ``max(widths)`` channels, those beyond a
            candidate's width being zero for it.

    Example:
        >>> torch.manual_seed(0) and None
        >>> conv = EntangledConv(2, (1, 3), (2, 4)).double()
        >>> x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
        >>> a = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
        >>> ref = sum(a[i] * conv.candidate(x, i) for i in range(4))
        >>> torch.allclose(conv(x, a), ref, atol=1e-12)
        True
    """

    masks: Tensor
    bias_masks: Tensor

    def __init__(self, in_channels: int, kernels: Sequence[int], widths: Sequence[int]) -> None:
        super().__init__()
        self.kernels, self.widths = tuple(kernels), tuple(widths)
        self.choices = [(k, w) for k in self.kernels for w in self.widths]
        kmax, wmax = max(self.kernels), max(self.widths)
        self.weight = nn.Parameter(torch.empty(wmax, in_channels, kmax, kmax))
        self.bias = nn.Parameter(torch.empty(wmax))
        bound = 1 / math.sqrt(in_channels * kmax * kmax)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)
        masks = torch.zeros(len(self.choices), wmax, 1, kmax, kmax)
        bias_masks = torch.zeros(len(self.choices), wmax)
        for i, (k, w) in enumerate(self.choices):
            lo = (kmax - k) // 2
            masks[i, :w, :, lo : lo + k, lo : lo + k] = 1.0
            bias_masks[i, :w] = 1.0
        self.register_buffer("masks", masks, persistent=False)
        self.register_buffer("bias_masks", bias_masks, persistent=False)

    def candidate_weight(self, i: int) -> tuple[Tensor, Tensor]:
        """Candidate ``i``'s weight and bias, zero-padded to the super-weight's shape."""
        return self.weight * self.masks[i], self.bias * self.bias_masks[i]

    def mixed_weight(self, alphas: Tensor) -> tuple[Tensor, Tensor]:
        """``sum_i alphas[i] * pad(W_i)`` and the same for the bias."""
        _check_alphas(alphas, len(self.choices))
        mask = torch.einsum("n,nochw->ochw", alphas.to(self.weight.dtype), self.masks)
        bmask = alphas.to(self.bias.dtype) @ self.bias_masks
        return self.weight * mask, self.bias * bmask

    def candidate(self, x: Tensor, i: int) -> Tensor:
        """Candidate ``i``'s output (its own convolution, for references and tests)."""
        w, b = self.candidate_weight(i)
        return F.conv2d(x, w, b, padding=max(self.kernels) // 2)

    def forward(self, x: Tensor, alphas: Tensor) -> Tensor:
        """``conv(x, sum_i alphas[i] pad(W_i))``: every candidate mixed, one convolution."""
        w, b = self.mixed_weight(alphas)
        return F.conv2d(x, w, b, padding=max(self.kernels) // 2)


class OutputMixedConv(nn.Module):
    """DARTS output mixing: one convolution per candidate (own weights), outputs summed.

    Candidates whose mixing weight is exactly zero are still evaluated unless ``skip_zero`` is
    set (GDAS's hard one-hot uses it: only the sampled candidate runs).

    Args:
        in_channels: input channels.
        kernels: odd kernel sizes.
        widths: output widths; each output is zero-padded to ``max(widths)`` channels.

    Example:
        >>> conv = OutputMixedConv(2, (1, 3), (2, 4))
        >>> tuple(conv(torch.zeros(1, 2, 5, 5), torch.full((4,), 0.25)).shape)
        (1, 4, 5, 5)
    """

    def __init__(self, in_channels: int, kernels: Sequence[int], widths: Sequence[int]) -> None:
        super().__init__()
        self.kernels, self.widths = tuple(kernels), tuple(widths)
        self.choices = [(k, w) for k in self.kernels for w in self.widths]
        self.wmax = max(self.widths)
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, w, k, padding=k // 2) for k, w in self.choices
        )

    def forward(self, x: Tensor, alphas: Tensor, skip_zero: bool = False) -> Tensor:
        """``sum_i alphas[i] conv_i(x)``, one convolution per candidate."""
        _check_alphas(alphas, len(self.choices))
        out: Tensor | None = None
        for i, (conv, (_, width)) in enumerate(zip(self.convs, self.choices, strict=True)):
            if skip_zero and not bool(alphas[i] != 0):
                continue
            y = alphas[i] * F.pad(conv(x), (0, 0, 0, 0, 0, self.wmax - width))
            out = y if out is None else out + y
        if out is None:
            raise ValueError("all mixing weights are zero: nothing to compute")
        return out


class MacroSupernet(nn.Module):
    """A chain of mixed convolutions over a macro space, with architecture logits ``alphas``.

    Args:
        space: the macro space.
        mixing: ``"entangled"`` (:class:`EntangledConv`) or ``"output"`` (:class:`OutputMixedConv`).

    Example:
        >>> sn = MacroSupernet(MacroSpace(), "entangled")
        >>> w = relaxed_weights(sn.alphas, "darts")
        >>> tuple(sn(torch.zeros(2, 1, 8, 8), w).shape), tuple(sn.alphas.shape)
        ((2, 10), (2, 9))
    """

    def __init__(self, space: MacroSpace, mixing: Mixing = "entangled") -> None:
        super().__init__()
        if mixing not in ("entangled", "output"):
            raise ValueError(f"mixing must be 'entangled' or 'output', got {mixing!r}")
        self.space, self.mixing = space, mixing
        layer = EntangledConv if mixing == "entangled" else OutputMixedConv
        wmax, c_in = max(space.widths), 1
        layers = []
        for _ in range(space.layers):
            layers.append(layer(c_in, space.kernels, space.widths))
            c_in = wmax
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(wmax * IMAGE * IMAGE, CLASSES)
        self.alphas = nn.Parameter(torch.zeros(space.layers, len(space.choices)))

    def weights(self) -> list[nn.Parameter]:
        """The network weights (everything but ``alphas``)."""
        return [p for n, p in self.named_parameters() if n != "alphas"]

    def forward(self, x: Tensor, mix: Tensor) -> Tensor:
        """Logits of images ``x`` under per-layer mixing weights ``mix`` ``(layers, choices)``."""
        hard = bool(((mix == 0) | (mix == 1)).all()) if self.mixing == "output" else False
        for layer, a in zip(self.layers, mix, strict=True):
            if isinstance(layer, OutputMixedConv):
                x = F.relu(layer(x, a, skip_zero=hard))
            else:
                x = F.relu(layer(x, a))
        return self.head(x.flatten(1))

    def argmax(self) -> tuple[tuple[int, int], ...]:
        """The discretised architecture: each layer's highest-``alpha`` candidate."""
        choices = self.space.choices
        return tuple(choices[int(i)] for i in self.alphas.detach().argmax(1))


def relaxed_weights(
    alphas: Tensor,
    relaxation: Relaxation,
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-layer mixing weights from architecture logits ``alphas`` ``(layers, choices)``.

    ``"darts"``: ``softmax(alphas)`` (Liu et al., arXiv:1806.09055). ``"gdas"``: a hard one-hot
    sample of the Gumbel-softmax with temperature ``temperature`` and a straight-through
    gradient (Dong & Yang, arXiv:1910.04465).

    Args:
        alphas: architecture logits.
        relaxation: ``"darts"`` or ``"gdas"``.
        temperature: Gumbel-softmax temperature (GDAS).
        generator: randomness of the Gumbel noise.

    Returns:
        Mixing weights of ``alphas``'s shape (each row sums to 1).

    Raises:
        ValueError: for an unknown relaxation or a non-positive temperature.

    Example:
        >>> a = torch.zeros(1, 3)
        >>> relaxed_weights(a, "darts").tolist()
        [[0.3333333432674408, 0.3333333432674408, 0.3333333432674408]]
        >>> float(relaxed_weights(a, "gdas", generator=torch.Generator().manual_seed(0)).sum())
        1.0
    """
    if relaxation == "darts":
        return F.softmax(alphas, dim=-1)
    if relaxation == "gdas":
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        u = torch.rand(alphas.shape, generator=generator).clamp_(1e-10, 1 - 1e-10)
        soft = F.softmax((alphas - torch.log(-torch.log(u))) / temperature, dim=-1)
        hard = F.one_hot(soft.argmax(-1), alphas.shape[-1]).to(soft.dtype)
        return hard - soft.detach() + soft
    raise ValueError(f"relaxation must be 'darts' or 'gdas', got {relaxation!r}")


@dataclass
class SearchResult:
    """What :func:`search` returns: the architecture and its logits.

    Example:
        >>> import torch
        >>> from subspaces.nas.entangled import MacroSupernet, search
        >>> from subspaces.nas.networks import digits_images
        >>> from subspaces.nas.space import MacroSpace
        >>> X, y, _, _ = digits_images()
        >>> torch.manual_seed(0) and None
        >>> space = MacroSpace(layers=2, kernels=(1, 3), widths=(4, 8))
        >>> r = search(MacroSupernet(space), X[:64], y[:64], epochs=1)
        >>> tuple(r.alphas.shape), len(r.loss)  # (layers, candidates per layer), one per epoch
        ((2, 4), 1)
        >>> r.arch == tuple(space.choices[int(i)] for i in r.alphas.argmax(1))
        True
    """

    arch: tuple[tuple[int, int], ...]
    """The argmax architecture."""
    alphas: Tensor
    """Final architecture logits ``(layers, choices)``."""
    loss: list[float] = field(default_factory=list)
    """Per epoch, the mean training loss of the weights."""


def search(
    supernet: MacroSupernet,
    X: Tensor,
    y: Tensor,
    *,
    relaxation: Relaxation = "darts",
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 0.025,
    arch_lr: float = 3e-3,
    generator: torch.Generator | None = None,
) -> SearchResult:
    """First-order bilevel search of architecture logits and weights (DARTS's approximation).

    Each step alternates an ``alphas`` step on a validation batch and a weight step on a
    training batch.

    The first half of ``(X, y)`` trains the weights (SGD, momentum 0.9, weight decay 3e-4, cosine
    decay), the second half the architecture logits (Adam, betas (0.5, 0.999), weight decay 1e-3,
    DARTS's settings). GDAS anneals its temperature linearly from 10 to 0.1.

    Args:
        supernet: a :class:`MacroSupernet` (trained in place).
        X: images ``(n, 1, 8, 8)``.
        y: labels.
        relaxation: ``"darts"`` or ``"gdas"``.
        epochs: passes over the training half.
        batch_size: minibatch size.
        lr: weight learning rate.
        arch_lr: architecture learning rate.
        generator: randomness of the batches and Gumbel noise.

    Returns:
        The argmax architecture, the logits and the loss history.

    Raises:
        ValueError: for bad shapes or hyperparameters.
        FloatingPointError: for a non-finite loss.

    Example:
        >>> from subspaces.nas.networks import digits_images
        >>> X, y, _, _ = digits_images()
        >>> torch.manual_seed(0) and None
        >>> sn = MacroSupernet(MacroSpace(layers=1, kernels=(1, 3), widths=(4, 8)))
        >>> r = search(sn, X[:256], y[:256], epochs=2)
        >>> r.arch in [((k, w),) for k in (1, 3) for w in (4, 8)], r.loss[1] < r.loss[0]
        (True, True)
    """
    if relaxation not in ("darts", "gdas"):
        raise ValueError(f"relaxation must be 'darts' or 'gdas', got {relaxation!r}")
    if X.ndim != 4 or len(X) != len(y) or len(y) < 2:
        raise ValueError(
            f"X must be (n, 1, 8, 8) and y (n,) with n >= 2, got {tuple(X.shape)}, {tuple(y.shape)}"
        )
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not (lr > 0 and arch_lr > 0):
        raise ValueError(f"lr and arch_lr must be > 0, got {lr} and {arch_lr}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    half = len(y) // 2
    Xw, yw, Xa, ya = X[:half], y[:half], X[half:], y[half:]
    w_opt = torch.optim.SGD(supernet.weights(), lr=lr, momentum=0.9, weight_decay=3e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, epochs)
    a_opt = torch.optim.Adam([supernet.alphas], lr=arch_lr, betas=(0.5, 0.999), weight_decay=1e-3)
    steps = math.ceil(half / batch_size)
    total = epochs * steps
    history = []
    for epoch in range(epochs):
        perm_w = torch.randperm(half, generator=gen)
        perm_a = torch.randint(len(ya), (half,), generator=gen)
        losses = []
        for s in range(steps):
            t = 10.0 - 9.9 * (epoch * steps + s) / max(total - 1, 1)
            ia = perm_a[s * batch_size : (s + 1) * batch_size]
            a_opt.zero_grad()
            mix = relaxed_weights(supernet.alphas, relaxation, temperature=t, generator=gen)
            loss_a = F.cross_entropy(supernet(Xa[ia], mix), ya[ia])
            loss_a.backward()
            a_opt.step()
            iw = perm_w[s * batch_size : (s + 1) * batch_size]
            w_opt.zero_grad()
            mix = relaxed_weights(
                supernet.alphas.detach(), relaxation, temperature=t, generator=gen
            )
            loss = F.cross_entropy(supernet(Xw[iw], mix), yw[iw])
            if not (torch.isfinite(loss) and torch.isfinite(loss_a)):
                raise FloatingPointError(f"non-finite search loss at epoch {epoch}")
            loss.backward()
            w_opt.step()
            losses.append(loss.detach())
        sched.step()
        history.append(float(torch.stack(losses).mean()))
    return SearchResult(supernet.argmax(), supernet.alphas.detach().clone(), history)


def extract_macro(supernet: MacroSupernet, arch: Sequence[Sequence[int]] | str) -> MacroNetwork:
    """The standalone network of ``arch`` with the weights an entangled supernet gives it.

    Each layer takes the first ``w`` filters, the centred ``k x k`` crop and the input channels
    of the previous layer's width.

    Args:
        supernet: an entangled :class:`MacroSupernet`.
        arch: an architecture of its space.

    Returns:
        The :class:`~subspaces.nas.networks.MacroNetwork`.

    Raises:
        ValueError: for an output-mixing supernet (its candidates do not share weights, use
            their own convolutions) or an invalid architecture.
    """
    if supernet.mixing != "entangled":
        raise ValueError("extract_macro needs an entangled supernet")
    layers = supernet.space.validate(arch)
    with torch.random.fork_rng(devices=[]):
        net = MacroNetwork(layers, space=supernet.space)
    kmax, c_in = max(supernet.space.kernels), 1
    with torch.no_grad():
        for conv, layer, (k, w) in zip(net.convs, supernet.layers, layers, strict=True):
            assert isinstance(conv, nn.Conv2d) and isinstance(layer, EntangledConv)
            lo = (kmax - k) // 2
            conv.weight.copy_(layer.weight[:w, :c_in, lo : lo + k, lo : lo + k])
            if conv.bias is not None:
                conv.bias.copy_(layer.bias[:w])
            c_in = w
        wmax = max(supernet.space.widths)
        head = supernet.head.weight.reshape(CLASSES, wmax, IMAGE * IMAGE)[:, :c_in]
        net.head.weight.copy_(head.reshape(CLASSES, -1))
        net.head.bias.copy_(supernet.head.bias)
    return net
