"""``LayerwiseStepper``: all-or-nothing steps on NaN/Inf, one step per backward for shared weights.

References are ordinary (non-per-layer) training with the same optimizer on the summed gradient.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from subspaces.optim import LayerwiseStepper, NonFiniteGradientError, SubspaceAdamW
from subspaces.optim.quantization import quantize_linear_layers

EPS32 = torch.finfo(torch.float32).eps


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)
    )


def _groups(m: nn.Module, **kw: object) -> list[dict[str, object]]:
    mats = [p for p in m.parameters() if p.ndim == 2]
    rest = [p for p in m.parameters() if p.ndim < 2]
    return [{"params": mats, "rank": 4, "update_proj_gap": 2, **kw}, {"params": rest, **kw}]


def _data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 12, generator=g), torch.randn(16, 3, generator=g)


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[list, list]:
    params = [p.detach().clone() for p in model.parameters()]
    state = [
        {k: v.clone() for k, v in opt.state[p].items()} if p in opt.state else {}
        for p in model.parameters()
    ]
    return params, state


def _unchanged(model: nn.Module, opt: torch.optim.Optimizer, snap: tuple[list, list]) -> bool:
    params, state = snap
    now_params, now_state = _snapshot(model, opt)
    same_p = all(torch.equal(a, b) for a, b in zip(params, now_params, strict=True))
    same_s = all(
        a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        for a, b in zip(state, now_state, strict=True)
    )
    return same_p and same_s


def _poison_first_layer(model: nn.Module) -> torch.utils.hooks.RemovableHandle:
    # only the first layer's weight gradient is NaN; its hook fires last in backward, after
    # the later layers' hooks
    return model[0].weight.register_hook(lambda g: g * float("nan"))


@pytest.mark.parametrize("accum", [1, 2])
def test_nonfinite_gradient_raises_and_leaves_model_and_state_unchanged(accum):
    model = _mlp()
    opt = SubspaceAdamW(_groups(model), lr=1e-2)
    x, y = _data()
    with LayerwiseStepper(opt, accumulation_steps=accum):
        for xb, yb in zip(x.split(16 // accum), y.split(16 // accum), strict=True):
            nn.functional.mse_loss(model(xb), yb).backward()  # one clean boundary
        snap = _snapshot(model, opt)
        handle = _poison_first_layer(model)
        with pytest.raises(NonFiniteGradientError, match="non-finite"):
            for xb, yb in zip(x.split(16 // accum), y.split(16 // accum), strict=True):
                nn.functional.mse_loss(model(xb), yb).backward()
        handle.remove()
        assert _unchanged(model, opt, snap)
        assert all(p.grad is None for p in model.parameters())


def test_nonfinite_skip_discards_the_window_and_training_continues_as_if_absent():
    x, y = _data()
    ref = _mlp()
    ref_opt = SubspaceAdamW(_groups(ref), lr=1e-2)
    model = _mlp()
    opt = SubspaceAdamW(_groups(model, nonfinite="skip"), lr=1e-2)
    with LayerwiseStepper(ref_opt):
        for _ in range(3):
            nn.functional.mse_loss(ref(x), y).backward()
    with LayerwiseStepper(opt) as stepper:
        nn.functional.mse_loss(model(x), y).backward()
        snap = _snapshot(model, opt)
        handle = _poison_first_layer(model)
        nn.functional.mse_loss(model(x), y).backward()
        handle.remove()
        assert _unchanged(model, opt, snap) and opt.skipped_steps == 1
        for _ in range(2):
            nn.functional.mse_loss(model(x), y).backward()
    assert stepper.boundaries == 3
    for a, b in zip(ref.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


class _Shared(nn.Module):
    """One weight used by two segments (ALBERT-style sharing), optionally checkpointed."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(12, 16)
        self.shared = nn.Linear(16, 16)
        self.out = nn.Linear(16, 3)
        self.mode = mode

    def _seg(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.shared(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for _ in range(2):
            if self.mode == "plain":
                h = self._seg(h)
            else:
                h = checkpoint(self._seg, h, use_reentrant=self.mode == "reentrant")
        return self.out(h)


@pytest.mark.parametrize("mode", ["reentrant", "non_reentrant", "plain"])
@pytest.mark.parametrize("accum", [1, 2])
def test_shared_weight_steps_once_per_backward_on_the_full_gradient(mode, accum):
    x, y = _data()
    ref, lay = _Shared(mode), _Shared(mode)
    ref_opt = SubspaceAdamW(_groups(ref), lr=1e-2, weight_decay=0.1)
    lay_opt = SubspaceAdamW(_groups(lay), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        ref_opt.zero_grad()
        for xb, yb in zip(x.split(16 // accum), y.split(16 // accum), strict=True):
            (nn.functional.mse_loss(ref(xb), yb) / accum).backward()
        ref_opt.step()
    with LayerwiseStepper(lay_opt, accumulation_steps=accum) as stepper:
        for _ in range(3):
            for xb, yb in zip(x.split(16 // accum), y.split(16 // accum), strict=True):
                (nn.functional.mse_loss(lay(xb), yb) / accum).backward()
    assert stepper.boundaries == 3
    assert int(lay_opt.state[lay.shared.weight]["step"]) == 3
    for (name, a), b in zip(ref.named_parameters(), lay.parameters(), strict=True):
        # same steps on gradients summed in another order: float32 rounding, amplified by
        # Adam's normalization (|update| <= lr) over 3 steps
        err = float((a - b).detach().abs().max())
        assert err <= 3 * 1e-2 * 1e-3 + 64 * EPS32 * float(a.detach().abs().max()), (name, err)
    assert all(p.grad is None for p in lay.parameters())


def test_layerwise_on_int8_weights_equals_ordinary_training():
    x, y = _data()
    base = quantize_linear_layers(_mlp(), group_size=32)
    ref, lay = copy.deepcopy(base), copy.deepcopy(base)
    ref_opt = SubspaceAdamW(_groups(ref), lr=1e-2)
    lay_opt = SubspaceAdamW(_groups(lay), lr=1e-2)
    for _ in range(3):
        ref_opt.zero_grad()
        nn.functional.mse_loss(ref(x), y).backward()
        ref_opt.step()
    with LayerwiseStepper(lay_opt):
        for _ in range(3):
            nn.functional.mse_loss(lay(x), y).backward()
    for k, v in ref.state_dict().items():
        assert torch.equal(v, lay.state_dict()[k]), k


def test_gradient_split_across_a_reentrant_checkpoint_at_a_refresh_is_an_error():
    # W is used outside (its outer hook fires first) and inside a reentrant checkpoint: at a
    # refresh the basis would come from part of the gradient, so nothing is stepped.
    torch.manual_seed(0)
    W = nn.Parameter(torch.randn(8, 6))
    x = torch.randn(4, 8, requires_grad=True)
    opt = SubspaceAdamW([{"params": [W], "rank": 2}], lr=1e-2)
    with LayerwiseStepper(opt), pytest.raises(RuntimeError, match="use_reentrant=False"):
        a = checkpoint(lambda h: torch.tanh(h @ W), x, use_reentrant=True).sum()
        b = (x @ W).square().sum()  # created last: its part of W's gradient arrives first
        (a + b).backward()
    assert len(opt.state.get(W, {})) == 0


def test_discard_and_flush_partial_windows():
    x, y = _data()
    model = _mlp()
    opt = SubspaceAdamW(_groups(model), lr=1e-2)
    with LayerwiseStepper(opt, accumulation_steps=4) as stepper:
        nn.functional.mse_loss(model(x), y).backward()
        snap = _snapshot(model, opt)
        stepper.discard()
        assert _unchanged(model, opt, snap) and all(p.grad is None for p in model.parameters())
        for _ in range(3):  # a new window of 3 micro-batches, then flushed
            nn.functional.mse_loss(model(x), y).backward()
        assert stepper.flush() == len(list(model.parameters()))
    assert all(int(opt.state[p]["step"]) == 1 for p in model.parameters())
