"""SubspaceAdamW and its helpers on the inputs users hand them.

Projector objects in groups and checkpoints, GPT-2 ``Conv1D`` and ``nn.MultiheadAttention``
weights in :func:`projected_param_groups`, tensor learning rates, and parameters that cannot be
stepped (zero-size, complex, sparse gradients, meta) - each a result or an error naming it.
"""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from torch import nn

from subspaces.optim import (
    DCTProjector,
    Projector,
    RandomizedSVDProjector,
    SubspaceAdamW,
    projected_param_groups,
)


def _roundtrip(obj: object) -> object:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _train(opt: torch.optim.Optimizer, ws: list[nn.Parameter], steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for w in ws:
            w.grad = torch.randn(w.shape, generator=g)
        opt.step()


# ----- projector objects in param groups ------------------------------------------------------
@pytest.mark.parametrize(
    "make", [lambda: RandomizedSVDProjector(oversample=3, power_iters=2), lambda: DCTProjector(1)]
)
def test_projector_object_in_a_group_checkpoints_with_weights_only(make):
    torch.manual_seed(0)
    init = torch.randn(20, 12)

    def build(w):
        proj = make()
        return SubspaceAdamW([{"params": [w], "rank": 3, "projector": proj}], update_proj_gap=2)

    ref_w = nn.Parameter(init.clone())
    ref = build(ref_w)
    _train(ref, [ref_w], 4, seed=1)
    _train(ref, [ref_w], 4, seed=2)

    w = nn.Parameter(init.clone())
    opt = build(w)
    _train(opt, [w], 4, seed=1)
    loaded = _roundtrip(opt.state_dict())
    w2 = nn.Parameter(w.detach().clone())
    fresh = build(w2)
    proj = fresh.param_groups[0]["projector"]
    fresh.load_state_dict(loaded)
    assert fresh.param_groups[0]["projector"] is proj  # the group keeps its own object
    _train(fresh, [w2], 4, seed=2)
    assert torch.equal(w2, ref_w)
    # loading into an optimizer built by name restores the same configuration
    by_name = SubspaceAdamW([{"params": [nn.Parameter(init.clone())], "rank": 3}])
    by_name.load_state_dict(_roundtrip(opt.state_dict()))
    desc = {k: v for k, v in by_name.param_groups[0].items() if k.startswith(("rsvd", "dct"))}
    if isinstance(make(), RandomizedSVDProjector):
        assert by_name.param_groups[0]["projector"] == "rsvd"
        assert (desc["rsvd_oversample"], desc["rsvd_power_iters"]) == (3, 2)
    else:
        assert by_name.param_groups[0]["projector"] == "dct" and desc["dct_norm"] == 1


class _FirstColumns(Projector):
    name = "first-columns"

    def select(self, G, rank, *, generator=None):
        return {"rank": torch.tensor(rank)}, None

    def _build_basis(self, state, b, dtype):
        return torch.eye(b, int(state["rank"]), dtype=dtype)


def test_custom_projector_checkpoints_and_names_the_class_when_missing():
    w = nn.Parameter(torch.randn(10, 6))
    opt = SubspaceAdamW([{"params": [w], "rank": 2, "projector": _FirstColumns()}])
    _train(opt, [w], 2, seed=0)
    sd = _roundtrip(opt.state_dict())
    assert sd["param_groups"][0]["projector"].endswith("_FirstColumns")
    same = SubspaceAdamW(
        [{"params": [nn.Parameter(w.detach().clone())], "rank": 2, "projector": _FirstColumns()}]
    )
    same.load_state_dict(sd)
    assert isinstance(same.param_groups[0]["projector"], _FirstColumns)
    twin = pickle.loads(pickle.dumps(same.param_groups[0]["projector"]))  # no weakrefs pickled
    assert isinstance(twin, _FirstColumns) and len(twin._cache) == 0
    other = SubspaceAdamW([{"params": [nn.Parameter(w.detach().clone())], "rank": 2}])
    with pytest.raises(ValueError, match="_FirstColumns"):
        other.load_state_dict(sd)


# ----- projected_param_groups on GPT-2 and nn.MultiheadAttention ------------------------------
def test_projected_param_groups_finds_gpt2_conv1d_weights():
    transformers = pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    groups = projected_param_groups(model, rank=4)
    projected = groups[-1]["params"]
    conv = [m.weight for m in model.modules() if isinstance(m, Conv1D)]
    assert len(conv) == 8  # c_attn, c_proj, c_fc, mlp.c_proj per block
    assert {id(p) for p in projected} == {id(p) for p in conv}
    assert all(not any(p is q for q in projected) for p in groups[0]["params"])
    total = sum(len(g["params"]) for g in groups)
    assert total == len(list(model.parameters()))
    opt = SubspaceAdamW(groups, lr=1e-3)
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    model(ids, labels=ids).loss.backward()
    opt.step()
    c_attn = model.transformer.h[0].attn.c_attn.weight  # (in, out) = (32, 96)
    assert opt.state[c_attn]["exp_avg"].shape == (96, 4)


def test_projected_param_groups_finds_multihead_attention_in_proj():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("attn", nn.MultiheadAttention(16, 2))
    model.add_module("cross", nn.MultiheadAttention(16, 2, kdim=8, vdim=12))
    groups = projected_param_groups(model, rank=2)
    projected = {id(p) for p in groups[-1]["params"]}
    want = [
        model.attn.in_proj_weight,
        model.attn.out_proj.weight,
        model.cross.q_proj_weight,
        model.cross.k_proj_weight,
        model.cross.v_proj_weight,
        model.cross.out_proj.weight,
    ]
    assert projected == {id(p) for p in want}
    only_self = projected_param_groups(model, rank=2, include=("attn*",))
    assert {id(p) for p in only_self[-1]["params"]} == {
        id(model.attn.in_proj_weight),
        id(model.attn.out_proj.weight),
    }


# ----- tensor learning rate -------------------------------------------------------------------
def test_tensor_learning_rate_matches_torch_adamw_and_float_lr():
    torch.manual_seed(0)
    init = [torch.randn(8, 5), torch.randn(5)]
    runs = {}
    for name, lr in (("tensor", torch.tensor(1e-2)), ("float", 1e-2)):
        ws = [nn.Parameter(t.clone()) for t in init]
        opt = SubspaceAdamW(
            [{"params": ws[:1], "rank": 2}, {"params": ws[1:]}], lr=lr, weight_decay=0.1
        )
        _train(opt, ws, 5, seed=3)
        runs[name] = ws
        sd = _roundtrip(opt.state_dict())
        assert torch.is_tensor(sd["param_groups"][0]["lr"]) == (name == "tensor")
    # the projected update reads the same lr value; torch's AdamW kernel itself rounds a float32
    # tensor lr differently from a Python float, so the plain parameter agrees to rounding
    assert torch.equal(runs["tensor"][0], runs["float"][0])
    a, b = runs["tensor"][1].detach(), runs["float"][1].detach()
    steps, eps32 = 5, torch.finfo(torch.float32).eps
    assert float((a - b).abs().max()) <= 4 * steps * eps32 * float(b.abs().max())
    # the plain path is torch's AdamW with the same tensor lr
    ours = nn.Parameter(init[1].clone())
    ref = nn.Parameter(init[1].clone())
    kw = dict(lr=torch.tensor(1e-2), weight_decay=0.1)
    _train(SubspaceAdamW([ours], **kw), [ours], 5, seed=4)
    _train(torch.optim.AdamW([ref], **kw), [ref], 5, seed=4)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize(
    "lr", [torch.tensor([1e-3, 2e-3]), torch.tensor(-1e-3), torch.tensor(float("nan"))]
)
def test_bad_tensor_learning_rate_is_named(lr):
    with pytest.raises(ValueError, match="lr"):
        SubspaceAdamW([nn.Parameter(torch.zeros(3))], lr=lr)


# ----- parameters that cannot be stepped ------------------------------------------------------
@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0,)])
def test_zero_size_parameters_step_as_torch_adamw_does(shape):
    w = nn.Parameter(torch.zeros(shape))
    ref = nn.Parameter(torch.zeros(shape))
    opt = SubspaceAdamW([{"params": [w], "rank": 2}], lr=1e-2)
    ref_opt = torch.optim.AdamW([ref], lr=1e-2)
    for o, p in ((opt, w), (ref_opt, ref)):
        p.grad = torch.zeros(shape)
        o.step()
    assert w.shape == shape and float(opt.state[w]["step"]) == float(ref_opt.state[ref]["step"])


def test_complex_parameter_is_rejected_by_name():
    named = [("encoder.rot", nn.Parameter(torch.zeros(4, 4, dtype=torch.complex64)))]
    with pytest.raises(TypeError, match=r"encoder\.rot.*complex"):
        SubspaceAdamW(named)
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\]\[1\].*complex"):
        SubspaceAdamW([nn.Parameter(torch.zeros(2)), named[0][1]])


def test_sparse_gradient_is_rejected_by_name_before_anything_changes():
    emb = nn.Embedding(10, 4, sparse=True)
    lin = nn.Linear(4, 2)
    opt = SubspaceAdamW(list(emb.named_parameters()) + list(lin.named_parameters()), lr=1e-2)
    before = [p.detach().clone() for p in (*emb.parameters(), *lin.parameters())]
    lin(emb(torch.tensor([1, 2]))).sum().backward()
    with pytest.raises(TypeError, match=r"'weight'.*sparse"):
        opt.step()
    after = [p.detach() for p in (*emb.parameters(), *lin.parameters())]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_meta_parameter_is_rejected_by_name():
    w = nn.Parameter(torch.empty(6, 4, device="meta"))
    opt = SubspaceAdamW([{"params": [w], "rank": 2}])
    w.grad = torch.empty(6, 4, device="meta")
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\].*meta"):
        opt.step()
