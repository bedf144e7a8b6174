"""The grouped (shape-bucketed, foreach, fused back-projection) step of ``SubspaceAdamW``.

``step()`` projects same-shaped non-refresh layers together and updates their moments with
``torch._foreach_*``; ``step_param`` steps one layer at a time. Both must give the same weights
and state. The break-even rule sends layers whose projected state would not be smaller than
AdamW's to plain AdamW.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from subspaces.optim import SubspaceAdamW
from subspaces.optim import subspace_adamw as sa
from subspaces.optim.memory import tensor_bytes

# (shape, group): several same-shaped layers in each group, a wide (transposed) one, a conv
# weight, small matrices (one bmm per bucket) and larger ones (one mm per layer), a layer the
# break-even rule leaves to AdamW (12 x 12 at rank 9) and a vector.
SHAPES_A = [(24, 16), (24, 16), (24, 16), (16, 40), (16, 40), (6, 2, 2, 2), (12, 12)]
SHAPES_B = [(160, 128), (160, 128), (100, 30), (30,)]
PROJECTOR_CASES = [
    {"projector": "svd"},
    {"projector": "rsvd"},
    {"projector": "rsvd", "proj_bits": 4, "proj_group_size": 16},
    {"projector": "dct", "moment_transfer": "rotate"},
    {"projector": "random", "maximize": True},
    {"projector": "svd", "state_dtype": torch.bfloat16},
    {"projector": "dct", "proj_dtype": torch.bfloat16},
]


def _params(dtype: torch.dtype) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    g = torch.Generator().manual_seed(0)
    a = [nn.Parameter(torch.randn(*s, generator=g, dtype=dtype)) for s in SHAPES_A]
    b = [nn.Parameter(torch.randn(*s, generator=g, dtype=dtype)) for s in SHAPES_B]
    return a, b


def _opt(a: list[nn.Parameter], b: list[nn.Parameter], case: dict) -> SubspaceAdamW:
    return SubspaceAdamW(
        [
            {"params": a, "rank": 9, "update_proj_gap": 3, **case},
            {"params": b, "rank": 6, "update_proj_gap": 4, "scale": 0.5, **case},
        ],
        lr=1e-2,
        weight_decay=0.1,
    )


@pytest.mark.parametrize("case", PROJECTOR_CASES, ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grouped_step_equals_per_layer_step(case, dtype):
    grouped_a, grouped_b = _params(dtype)
    single_a, single_b = _params(dtype)
    grouped = _opt(grouped_a, grouped_b, case)
    single = _opt(single_a, single_b, case)
    g = torch.Generator().manual_seed(1)
    grouped_params, single_params = grouped_a + grouped_b, single_a + single_b
    for _ in range(9):  # crosses refreshes of both groups
        for p, q in zip(grouped_params, single_params, strict=True):
            p.grad = torch.randn(p.shape, generator=g, dtype=dtype)
            q.grad = p.grad.clone()
        grouped.step()
        for q in single_params:
            single.step_param(q)
    eps = torch.finfo(dtype).eps
    for p, q, shape in zip(grouped_params, single_params, SHAPES_A + SHAPES_B, strict=True):
        batched = len(shape) == 2 and shape[0] * shape[1] <= sa._BMM_MAX_NUMEL
        if not batched:
            # same kernels in the same order: bit for bit
            assert torch.equal(p, q), shape
        else:
            # one bmm instead of one mm per layer may round the coordinates differently; the
            # weights moved by about lr per step, so compare to a few ulps of that movement
            torch.testing.assert_close(p, q, rtol=0, atol=64 * eps * float(q.detach().abs().max()))
        sp, sq = grouped.state[p], single.state[q]
        assert sp.keys() == sq.keys()
        if not batched:
            assert all(torch.equal(sp[k], sq[k]) for k in sp), shape
    # with a float basis and float moments the 12 x 12 layer at rank 9 saves no memory and took
    # the plain AdamW path (a 4-bit basis, bfloat16 moments or a stored index/seed save some)
    skipped = case["projector"] in ("svd", "rsvd") and len(case) == 1
    assert (grouped.state[grouped_a[6]]["exp_avg"].shape == (12, 12)) == skipped
    assert grouped.state[grouped_a[0]]["exp_avg"].shape == (24, 9)
    assert grouped.state[grouped_a[3]]["exp_avg"].shape == (40, 9)  # wide: transposed


def _state_bytes(state: dict) -> int:
    """Moments and stored basis (the bookkeeping scalars are the same for every layer)."""
    keep = [v for k, v in state.items() if k.startswith(("exp_avg", "proj."))]
    return tensor_bytes(keep)


@pytest.mark.parametrize(
    "shape,case",
    [
        ((12, 12), {"projector": "svd"}),
        ((20, 8), {"projector": "rsvd"}),
        ((8, 20), {"projector": "svd", "proj_bits": 4, "proj_group_size": 16}),
        ((12, 12), {"projector": "dct"}),
        ((12, 12), {"projector": "svd", "state_dtype": torch.bfloat16}),
        ((10, 10), {"projector": "svd", "dtype": torch.bfloat16}),
        ((10, 10), {"projector": "random", "dtype": torch.float64}),
    ],
)
def test_projection_is_skipped_exactly_when_it_saves_no_memory(shape, case):
    case = dict(case)
    dtype = case.pop("dtype", torch.float32)
    adamw_bytes = 2 * shape[0] * shape[1] * torch.empty((), dtype=dtype).element_size()
    decisions = []
    for rank in range(1, min(shape)):
        w = nn.Parameter(torch.randn(*shape, dtype=dtype))
        forced = nn.Parameter(w.detach().clone())
        opt = SubspaceAdamW([{"params": [w], "rank": rank, **case}])
        ref = SubspaceAdamW([{"params": [forced], "rank": rank, "full_rank": "project", **case}])
        w.grad = torch.randn(*shape, dtype=dtype)
        forced.grad = w.grad.clone()
        opt.step()
        ref.step()
        projected_bytes = _state_bytes(ref.state[forced])
        projected = "exp_avg" in opt.state[w] and opt.state[w]["exp_avg"].shape != w.shape
        assert projected == (projected_bytes < adamw_bytes), (rank, projected_bytes, adamw_bytes)
        if not projected:
            assert _state_bytes(opt.state[w]) == adamw_bytes
        decisions.append(projected)
    # the rule leaves a prefix of ranks projected; a float basis stops saving before r = b
    assert decisions == sorted(decisions, reverse=True) and decisions[0]
    if len(case) == 1 and case["projector"] in ("svd", "rsvd"):
        assert not decisions[-1]


def test_skipped_layer_is_bitwise_adamw_and_break_even_of_a_square_float32_weight():
    # two moments a x r plus a b x r basis against two a x b moments: r < 2 b / 3
    w = nn.Parameter(torch.randn(12, 12))
    ref = nn.Parameter(w.detach().clone())
    opt = SubspaceAdamW([{"params": [w], "rank": 8}], lr=1e-2, weight_decay=0.1)
    adamw = torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        w.grad = torch.randn(12, 12, generator=g)
        ref.grad = w.grad.clone()
        opt.step()
        adamw.step()
    assert torch.equal(w, ref)
    w7 = nn.Parameter(torch.randn(12, 12))
    opt7 = SubspaceAdamW([{"params": [w7], "rank": 7}])
    w7.grad = torch.randn(12, 12)
    opt7.step()
    assert opt7.state[w7]["exp_avg"].shape == (12, 7)


def test_bfloat16_products_stay_within_bfloat16_rounding_of_the_float_step():
    # proj_dtype=bfloat16 rounds G, Q, R, N and N Q^T to bfloat16 (float32 accumulation), each
    # at most eps/2 relative per entry; through the moments (R enters m linearly and v
    # quadratically, N = m / sqrt(v)) that bounds an entry of the update by about 4.5 eps in
    # the worst case, and the independent roundings average out in the norm (measured: 0.5 eps).
    # Refresh steps run in float and must agree exactly.
    g = torch.Generator().manual_seed(0)
    W0 = torch.randn(96, 64, generator=g)
    grads = [torch.randn(96, 64, generator=g) for _ in range(4)]
    updates = {}
    for pdtype in (None, torch.bfloat16):
        w = nn.Parameter(W0.clone())
        opt = SubspaceAdamW(
            [{"params": [w], "rank": 8, "update_proj_gap": 100, "proj_dtype": pdtype}], lr=1e-2
        )
        steps = []
        for G in grads:
            before = w.detach().clone()
            w.grad = G.clone()
            opt.step()
            steps.append(w.detach() - before)
        updates[pdtype] = steps
    eps = torch.finfo(torch.bfloat16).eps
    assert torch.equal(updates[None][0], updates[torch.bfloat16][0])  # the refresh step: float
    for a, b in zip(updates[None][1:], updates[torch.bfloat16][1:], strict=True):
        rel = float((a - b).norm() / a.norm())
        assert 0 < rel <= 4 * eps, rel


def test_proj_dtype_must_be_bfloat16_or_none():
    w = nn.Parameter(torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"proj_dtype must be None or torch.bfloat16.*float16"):
        SubspaceAdamW([w], rank=2, proj_dtype=torch.float16)


def test_gradient_of_another_dtype_takes_the_per_layer_path():
    # a float64 weight with a float32 gradient: projected in float32 like a single-layer step
    ws = [nn.Parameter(torch.randn(24, 16, dtype=torch.float64)) for _ in range(2)]
    for w in ws:
        w.grad_dtype = None  # torch >= 2.10 refuses a gradient of another dtype by default
    opt = SubspaceAdamW([{"params": ws, "rank": 4}], lr=1e-2)
    for _ in range(3):
        for w in ws:
            w.grad = torch.randn(24, 16)
        opt.step()
    assert all(w.dtype == torch.float64 and torch.isfinite(w).all() for w in ws)
    assert opt.state[ws[0]]["exp_avg"].dtype == torch.float64
