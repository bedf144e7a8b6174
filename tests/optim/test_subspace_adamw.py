"""SubspaceAdamW against references: torch AdamW, dense algebra, hand-computed moments."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from torch import nn

from subspaces.optim import (
    PROJECTORS,
    LayerwiseStepper,
    NonFiniteGradientError,
    SubspaceAdamW,
    dct_basis,
    dct_rows,
    get_projector,
)
from subspaces.optim.projectors import NystromProjector, canonical_signs


def _run(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[list[torch.Tensor]]):
    for gs in grads:
        for p, g in zip(params, gs, strict=True):
            p.grad = g.clone()
        opt.step()


def _grads(shapes, steps, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(*s, generator=g, dtype=dtype) for s in shapes] for _ in range(steps)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_full_rank_coordinate_projection_equals_adamw(dtype):
    shapes = [(7, 5), (4, 9), (3,)]
    init = [
        torch.randn(*s, dtype=dtype, generator=torch.Generator().manual_seed(i))
        for i, s in enumerate(shapes)
    ]
    grads = _grads(shapes, 25, dtype)
    ours = [nn.Parameter(t.clone()) for t in init]
    ref = [nn.Parameter(t.clone()) for t in init]
    kw = dict(lr=3e-2, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.2)
    opt = SubspaceAdamW(
        [
            {
                "params": ours,
                "rank": 9,
                "projector": "coordinate",
                "full_rank": "project",
                "update_proj_gap": 4,
            }
        ],
        **kw,
    )
    _run(opt, ours, grads)
    _run(torch.optim.AdamW(ref, **kw), ref, grads)
    assert opt.state[ours[0]]["exp_avg"].shape == (7, 5)  # really went through the projection
    assert "proj.indices" in opt.state[ours[0]]
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_groups_without_rank_are_bitwise_adamw():
    shapes = [(6, 4), (4,)]
    grads = _grads(shapes, 10, torch.float32)
    ours = [nn.Parameter(torch.ones(*s)) for s in shapes]
    ref = [nn.Parameter(torch.ones(*s)) for s in shapes]
    _run(SubspaceAdamW(ours, lr=1e-2, weight_decay=0.05), ours, grads)
    _run(torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.05), ref, grads)
    assert all(torch.equal(a, b) for a, b in zip(ours, ref, strict=True))


def test_rank_at_least_min_dim_falls_back_to_adamw_and_project_clips():
    w = nn.Parameter(torch.randn(5, 3))
    opt = SubspaceAdamW([{"params": [w], "rank": 8}], lr=1e-2)
    w.grad = torch.randn(5, 3)
    opt.step()
    assert opt.state[w]["exp_avg"].shape == (5, 3) and "proj.basis" not in opt.state[w]
    w2 = nn.Parameter(torch.randn(5, 3))
    opt2 = SubspaceAdamW([{"params": [w2], "rank": 8, "full_rank": "project"}], lr=1e-2)
    w2.grad = torch.randn(5, 3)
    opt2.step()
    assert opt2.state[w2]["exp_avg"].shape == (5, 3)
    assert opt2.state[w2]["proj.basis"].shape == (3, 3)  # rank clipped to min(m, n)


def test_wide_matrix_compresses_rows_and_conv_weights_are_flattened():
    w = nn.Parameter(torch.randn(4, 20))
    c = nn.Parameter(torch.randn(6, 3, 3, 3))
    opt = SubspaceAdamW([{"params": [w, c], "rank": 2}], lr=1e-2)
    w.grad, c.grad = torch.randn(4, 20), torch.randn(6, 3, 3, 3)
    opt.step()
    assert opt.state[w]["exp_avg"].shape == (20, 2)  # (n, r): the 4 rows are compressed
    assert opt.state[c]["exp_avg"].shape == (27, 2)
    assert c.shape == (6, 3, 3, 3)


@pytest.mark.parametrize("name", sorted(PROJECTORS))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_projector_bases_are_orthonormal(name, dtype, tol):
    g = torch.Generator().manual_seed(3)
    G = torch.randn(40, 24, generator=g, dtype=dtype)
    proj = get_projector(name)
    state, GQ = proj.select(G, 6, generator=g)
    Q = proj.basis(state, 24, dtype)
    assert Q.shape == (24, 6)
    torch.testing.assert_close(Q.T @ Q, torch.eye(6, dtype=dtype), rtol=0, atol=tol)
    if GQ is not None:
        torch.testing.assert_close(GQ, G @ Q, rtol=0, atol=100 * tol)
    torch.testing.assert_close(proj.project(G, state), G @ Q, rtol=0, atol=100 * tol)
    R = torch.randn(40, 6, generator=g, dtype=dtype)
    torch.testing.assert_close(proj.project_back(R, state, 24), R @ Q.T, rtol=0, atol=100 * tol)


def test_svd_projector_captures_optimal_energy_and_rsvd_nearly():
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(80, 40, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    s = 0.7 ** torch.arange(40, dtype=torch.float64)
    G = U @ torch.diag(s) @ V.T
    best = float(s[:5].square().sum())
    for name, rel in (("svd", 1e-10), ("rsvd", 1e-3), ("nystrom", 1e-3)):
        proj = get_projector(name)
        state, _ = proj.select(G, 5, generator=torch.Generator().manual_seed(1))
        energy = float((G @ proj.basis(state, 40, torch.float64)).square().sum())
        assert energy <= best * (1 + 1e-12)
        assert energy >= best * (1 - rel), name


def test_nystrom_is_exact_for_low_rank_gradients_and_signs_are_canonical():
    # rank(G) = 6 <= l = 4 + 8: the sketch sees all of G^T G, so the basis is the exact top-4
    # right singular subspace (distinct singular values: the vectors themselves, up to sign)
    g = torch.Generator().manual_seed(5)
    U, _ = torch.linalg.qr(torch.randn(50, 6, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(30, 6, generator=g, dtype=torch.float64))
    s = torch.tensor([9.0, 7.0, 5.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    G = U @ torch.diag(s) @ V.T
    proj = NystromProjector()
    state, _ = proj.select(G, 4, generator=torch.Generator().manual_seed(1))
    Q = proj.basis(state, 30, torch.float64)
    torch.testing.assert_close(Q, canonical_signs(V[:, :4]), rtol=0, atol=1e-10)
    # the same sketch summed from two row blocks (what FSDP2 ranks all-reduce) gives that basis
    omega = proj.test_matrix(30, 4, torch.float64, torch.Generator().manual_seed(1))
    Y = G[:20].T @ (G[:20] @ omega) + G[20:].T @ (G[20:] @ omega)
    torch.testing.assert_close(
        NystromProjector.basis_from_sketch(Y, omega, 4), Q, rtol=0, atol=1e-10
    )
    # a zero gradient still gives an orthonormal basis (the shift keeps the core definite)
    state, _ = proj.select(torch.zeros(50, 30, dtype=torch.float64), 4, generator=g)
    Q0 = proj.basis(state, 30, torch.float64)
    torch.testing.assert_close(Q0.T @ Q0, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="not finite"):
        NystromProjector.basis_from_sketch(torch.full((30, 5), float("nan")), omega[:, :5], 4)
    with pytest.raises(ValueError, match="oversample must be"):
        NystromProjector(oversample=-1)


@pytest.mark.parametrize("n", [1, 2, 7, 16, 33])
def test_dct_rows_matches_dense_dct(n):
    G = torch.randn(5, n, dtype=torch.float64)
    C = dct_basis(n, dtype=torch.float64)
    torch.testing.assert_close(dct_rows(G), G @ C, rtol=0, atol=1e-12)
    # the dense matrix is the textbook orthonormal DCT-II
    i, j = torch.meshgrid(torch.arange(n).double(), torch.arange(n).double(), indexing="ij")
    ref = torch.cos(math.pi * (2 * i + 1) * j / (2 * n)) * math.sqrt(2 / n)
    ref[:, 0] /= math.sqrt(2)
    torch.testing.assert_close(C, ref.double(), rtol=0, atol=1e-12)


def test_dct_selection_is_the_best_subset_of_dct_columns():
    G = torch.randn(9, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    C = dct_basis(8, dtype=torch.float64)
    state, _ = get_projector("dct").select(G, 3)
    chosen = float((G @ C[:, state["indices"]]).square().sum())
    brute = max(
        float((G @ C[:, list(s)]).square().sum()) for s in itertools.combinations(range(8), 3)
    )
    assert chosen == pytest.approx(brute, rel=1e-12)


def test_rotate_carries_moments_into_the_new_coordinates():
    b1, b2 = 0.9, 0.99
    w = nn.Parameter(torch.zeros(3, 4))
    opt = SubspaceAdamW(
        [
            {
                "params": [w],
                "rank": 2,
                "projector": "coordinate",
                "update_proj_gap": 1,
                "moment_transfer": "rotate",
                "proj_type": "right",
            }
        ],
        lr=1e-3,
        betas=(b1, b2),
    )
    g1 = torch.tensor([[5.0, 4.0, 0.1, 0.0]] * 3)
    g2 = torch.tensor([[0.0, 3.0, 6.0, 0.1]] * 3)
    w.grad = g1
    opt.step()
    assert opt.state[w]["proj.indices"].tolist() == [0, 1]
    w.grad = g2
    opt.step()
    st = opt.state[w]
    assert st["proj.indices"].tolist() == [1, 2]
    expect_m = torch.stack([b1 * (1 - b1) * g1[:, 1] + (1 - b1) * g2[:, 1], (1 - b1) * g2[:, 2]], 1)
    expect_v = torch.stack(
        [b2 * (1 - b2) * g1[:, 1] ** 2 + (1 - b2) * g2[:, 1] ** 2, (1 - b2) * g2[:, 2] ** 2], 1
    )
    torch.testing.assert_close(st["exp_avg"], expect_m)
    torch.testing.assert_close(st["exp_avg_sq"], expect_v)


def test_lazy_refresh_grows_the_gap_of_a_settled_layer():
    G = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    counts = {}
    for refresh in ("fixed", "lazy"):
        w = nn.Parameter(torch.zeros(16, 8))
        opt = SubspaceAdamW(
            [
                {
                    "params": [w],
                    "rank": 2,
                    "update_proj_gap": 2,
                    "refresh": refresh,
                    "lazy_window": 2,
                    "lazy_threshold": 0.9,
                }
            ],
            lr=1e-3,
        )
        for _ in range(64):
            w.grad = G.clone()  # the same gradient: successive subspaces overlap fully
            opt.step()
        counts[refresh] = int(opt.state[w]["refresh_count"])
        if refresh == "lazy":
            assert int(opt.state[w]["gap"]) > 2
            assert float(opt.state[w]["overlaps"].min()) > 0.999
    assert counts["fixed"] == 32
    assert counts["lazy"] <= counts["fixed"] // 2


def test_int4_basis_is_packed_two_values_per_byte():
    w = nn.Parameter(torch.randn(64, 32))
    opt = SubspaceAdamW(
        [{"params": [w], "rank": 8, "proj_bits": 4, "proj_group_size": 64}], lr=1e-3
    )
    w.grad = torch.randn(64, 32)
    opt.step()
    st = opt.state[w]
    assert "proj.basis" not in st
    assert st["proj.basis_int4"].dtype == torch.uint8
    assert st["proj.basis_int4"].numel() == 32 * 8 // 2
    # the dequantized basis is close to the float one (4-bit, per-group min-max)
    ref = SubspaceAdamW([{"params": [nn.Parameter(w.detach().clone())], "rank": 8}], lr=1e-3)
    p2 = ref.param_groups[0]["params"][0]
    p2.grad = w.grad.clone()
    ref.step()
    Qf = ref.state[p2]["proj.basis"]
    from subspaces.optim.quantization import unpack_int4

    Q4 = unpack_int4(
        st["proj.basis_int4"], st["proj.basis_scale"], st["proj.basis_zero"], (32, 8), 64
    )
    assert float((Q4 - Qf).abs().max()) <= float(st["proj.basis_scale"].max()) / 2 + 1e-6


def test_bfloat16_moments_halve_the_state():
    w = nn.Parameter(torch.randn(64, 32))
    opt = SubspaceAdamW(
        [{"params": [w], "rank": 8, "state_dtype": torch.bfloat16, "projector": "dct"}], lr=1e-3
    )
    w.grad = torch.randn(64, 32)
    opt.step()
    assert opt.state[w]["exp_avg"].dtype == torch.bfloat16
    assert opt.state[w]["proj.indices"].numel() == 8


def test_nonfinite_gradient_raises_and_leaves_everything_unchanged():
    w = nn.Parameter(torch.randn(10, 6))
    b = nn.Parameter(torch.randn(6))
    opt = SubspaceAdamW([{"params": [w, b], "rank": 2}], lr=1e-2)
    w.grad, b.grad = torch.randn(10, 6), torch.randn(6)
    opt.step()
    before_state = {k: v.clone() for k, v in opt.state[w].items()}
    before_w, before_b = w.detach().clone(), b.detach().clone()
    w.grad = torch.randn(10, 6)
    b.grad = torch.tensor([1.0, float("nan"), 0, 0, 0, 0])
    with pytest.raises(NonFiniteGradientError, match="non-finite"):
        opt.step()
    assert torch.equal(w, before_w) and torch.equal(b, before_b)
    assert all(torch.equal(opt.state[w][k], v) for k, v in before_state.items())
    opt.param_groups[0]["nonfinite"] = "skip"
    opt.step()
    assert opt.skipped_steps == 1 and torch.equal(w, before_w)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(rank=0), ValueError, "rank"),
        (dict(rank=-3), ValueError, "rank"),
        (dict(rank=2.5), TypeError, "rank"),
        (dict(projector="qr"), ValueError, "projector"),
        (dict(proj_type="full"), ValueError, "proj_type"),
        (dict(lr=-1.0), ValueError, "lr"),
        (dict(betas=(0.9, 1.0)), ValueError, "betas"),
        (dict(update_proj_gap=0), ValueError, "update_proj_gap"),
        (dict(proj_bits=8), ValueError, "proj_bits"),
        (dict(moment_transfer="keep"), ValueError, "moment_transfer"),
        (dict(state_dtype=torch.int8), TypeError, "state_dtype"),
        (dict(error_feedback="yes"), TypeError, "error_feedback"),
    ],
)
def test_bad_hyperparameters_raise_clear_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SubspaceAdamW([nn.Parameter(torch.randn(4, 4))], **kwargs)
    with pytest.raises(exc, match=match):  # also when given per group
        SubspaceAdamW([{"params": [nn.Parameter(torch.randn(4, 4))], **kwargs}])


def test_galore_group_keys_are_accepted_verbatim():
    w = nn.Parameter(torch.randn(32, 16))
    groups = [{"params": [w], "rank": 4, "update_proj_gap": 50, "scale": 0.25, "proj_type": "std"}]
    opt = SubspaceAdamW(groups, lr=1e-2)
    w.grad = torch.randn(32, 16)
    opt.step()
    assert opt.state[w]["exp_avg"].shape == (32, 4)
    alias = SubspaceAdamW([{"params": [w], "rank": 4, "projection_type": "reverse_std"}])
    assert alias.param_groups[0]["proj_type"] == "reverse_std"


def _layer_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))


@pytest.mark.parametrize("accum", [1, 4])
def test_layerwise_accumulation_equals_the_summed_gradient(accum):
    x = torch.randn(32, 12, generator=torch.Generator().manual_seed(1))
    y = torch.randn(32, 3, generator=torch.Generator().manual_seed(2))

    def groups(m):
        return [
            {"params": [m[0].weight, m[2].weight], "rank": 4, "update_proj_gap": 2},
            {"params": [m[0].bias, m[2].bias]},
        ]

    ref, lay = _layer_model(), _layer_model()
    ref_opt = SubspaceAdamW(groups(ref), lr=1e-2, weight_decay=0.1)
    lay_opt = SubspaceAdamW(groups(lay), lr=1e-2, weight_decay=0.1)
    for _ in range(3):  # three optimizer steps
        ref_opt.zero_grad()
        for xb, yb in zip(x.split(32 // accum), y.split(32 // accum), strict=True):
            (nn.functional.mse_loss(ref(xb), yb) / accum).backward()
        ref_opt.step()
    with LayerwiseStepper(lay_opt, accumulation_steps=accum) as stepper:
        for _ in range(3):
            for xb, yb in zip(x.split(32 // accum), y.split(32 // accum), strict=True):
                (nn.functional.mse_loss(lay(xb), yb) / accum).backward()
    assert stepper.boundaries == 3
    for a, b in zip(ref.parameters(), lay.parameters(), strict=True):
        rel = float((a - b).detach().norm() / b.detach().norm())
        assert rel <= 1e-5
    assert all(p.grad is None for p in lay.parameters())
    assert not any(p._post_accumulate_grad_hooks for p in lay.parameters())  # hooks removed


def test_layerwise_stepping_every_micro_batch_differs_from_accumulation():
    # the GaLore #78 failure mode: stepping per micro-batch is not accumulation
    x = torch.randn(32, 12, generator=torch.Generator().manual_seed(1))
    y = torch.randn(32, 3, generator=torch.Generator().manual_seed(2))
    a, b = _layer_model(), _layer_model()
    for m, k in ((a, 4), (b, 1)):
        opt = SubspaceAdamW(m.parameters(), lr=1e-2)
        with LayerwiseStepper(opt, accumulation_steps=k):
            for xb, yb in zip(x.split(8), y.split(8), strict=True):
                (nn.functional.mse_loss(m(xb), yb) / 4).backward()
    assert float((a[0].weight - b[0].weight).detach().norm()) > 1e-3


def test_lr_scheduler_drives_the_step_without_warnings():
    w = nn.Parameter(torch.zeros(8, 4))
    opt = SubspaceAdamW([{"params": [w], "rank": 2}], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.0 if t >= 1 else 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w.grad = torch.ones(8, 4)
        opt.step()
        sched.step()
        moved = w.detach().clone()
        w.grad = torch.ones(8, 4)
        opt.step()  # lr is now 0: nothing moves
        sched.step()
    assert float(moved.abs().sum()) > 0 and torch.equal(w.detach(), moved)
    assert opt.state_dict()["param_groups"][0]["initial_lr"] == 1.0


def test_works_as_the_optimizer_of_an_hf_trainer(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    config = transformers.GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=16)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 32, (16, 12), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": r, "labels": r} for r in ids]
    mats = [
        p for n, p in model.named_parameters() if p.ndim == 2 and "wte" not in n and "wpe" not in n
    ]
    mat_ids = {id(p) for p in mats}
    rest = [p for p in model.parameters() if id(p) not in mat_ids]
    opt = SubspaceAdamW(
        [{"params": rest}, {"params": mats, "rank": 4, "update_proj_gap": 2}], lr=1e-2
    )
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=data, optimizers=(opt, None)
    )
    out = trainer.train()
    assert out.global_step == 4 and math.isfinite(out.training_loss)
    assert any(int(s.get("refresh_count", 0)) >= 2 for s in opt.state.values())


def _adam_dense_reference(grads, indices_of, rank, lr, b1, b2, eps, feedback):
    """DCT-AdamW by hand in float64: error feedback, refresh every step, rotated moments."""
    a, b = grads[0].shape
    C = dct_basis(b, dtype=torch.float64)
    W = torch.zeros(a, b, dtype=torch.float64)
    E = torch.zeros(a, b, dtype=torch.float64)
    m = v = None
    Q_old = None
    for t, G in enumerate(grads, start=1):
        work = G + E if feedback else G
        Q = C[:, indices_of(work)]
        if m is None:
            m = torch.zeros(a, rank, dtype=torch.float64)
            v = torch.zeros(a, rank, dtype=torch.float64)
        else:
            R = Q_old.T @ Q
            m, v = m @ R, v @ R.square()
        g = work @ Q
        E = work - g @ Q.T
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        N = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        W = W - lr * N @ Q.T
        Q_old = Q
    return W, E


@pytest.mark.parametrize("feedback", [False, True])
def test_dct_adamw_recipe_matches_a_dense_float64_reference(feedback):
    rank, lr, b1, b2, eps = 3, 0.1, 0.9, 0.99, 1e-8
    grads = [g[0] for g in _grads([(10, 6)], 5, torch.float64, seed=3)]

    def l1_top(work):  # the paper's RankCols: l1 norm of each column of work @ C
        score = (work @ dct_basis(6, dtype=torch.float64)).abs().sum(0)
        return torch.topk(score, rank).indices.sort().values

    W_ref, E_ref = _adam_dense_reference(grads, l1_top, rank, lr, b1, b2, eps, feedback)
    w = nn.Parameter(torch.zeros(10, 6, dtype=torch.float64))
    group = dict(params=[w], rank=rank, projector="dct", dct_norm=1, update_proj_gap=1)
    group["full_rank"] = "project"  # with the error buffer this small layer saves no memory
    group.update(moment_transfer="rotate", error_feedback=feedback)
    opt = SubspaceAdamW([group], lr=lr, betas=(b1, b2), eps=eps)
    _run(opt, [w], [[g] for g in grads])
    torch.testing.assert_close(w.detach(), W_ref, rtol=1e-12, atol=1e-12)
    if feedback:
        torch.testing.assert_close(opt.state[w]["error"], E_ref, rtol=1e-12, atol=1e-12)
        # the buffer is exactly what the current basis drops: orthogonal to it
        Q = dct_basis(6, opt.state[w]["proj.indices"], dtype=torch.float64)
        assert float((opt.state[w]["error"] @ Q).abs().max()) < 1e-12
    else:
        assert "error" not in opt.state[w]


def test_error_feedback_eventually_applies_a_dropped_direction():
    # A constant gradient along one coordinate the fixed basis never selects reaches the
    # weights only through the error buffer, once the buffer outgrows the selected column.
    w = nn.Parameter(torch.zeros(4, 4, dtype=torch.float64))
    group = dict(params=[w], rank=1, projector="coordinate", update_proj_gap=1)
    big = torch.zeros(4, 4, dtype=torch.float64)
    big[:, 0] = 1.0
    big[:, 1] = 0.3
    for feedback, expect_moved in ((False, False), (True, True)):
        w.data.zero_()
        opt = SubspaceAdamW([{**group, "error_feedback": feedback}], lr=0.01, full_rank="project")
        _run(opt, [w], [[big]] * 6)
        assert bool(w.detach()[:, 1].abs().max() > 0) is expect_moved


def test_error_feedback_state_resumes_bit_for_bit(tmp_path):
    grads = _grads([(12, 8)], 8, torch.float32, seed=4)
    group = dict(rank=3, projector="dct", dct_norm=1, update_proj_gap=2)
    group.update(moment_transfer="rotate", error_feedback=True)

    def fresh():
        w = nn.Parameter(torch.ones(12, 8))
        return w, SubspaceAdamW([{"params": [w], **group}], lr=0.01, full_rank="project")

    w1, opt1 = fresh()
    _run(opt1, [w1], grads)
    w2, opt2 = fresh()
    _run(opt2, [w2], grads[:3])
    torch.save(opt2.state_dict(), tmp_path / "opt.pt")
    w3, opt3 = fresh()
    w3.data.copy_(w2.data)
    opt3.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    assert opt3.state[w3]["error"].shape == (12, 8)
    _run(opt3, [w3], grads[3:])
    assert torch.equal(w1, w3)


def test_error_feedback_buffer_counts_in_the_break_even_rule():
    # 16 x 16 float32 at rank 8, in bytes: moments 2*16*8*4 + indices 8*8 = 1088 < AdamW's
    # 2*256*4 = 2048; with the 256*4 error buffer 2112 >= 2048, so AdamW is used.
    w = nn.Parameter(torch.zeros(16, 16))
    for feedback, projected in ((False, True), (True, False)):
        opt = SubspaceAdamW([w], rank=8, projector="dct", error_feedback=feedback)
        assert opt._plan(w, opt.param_groups[0])[0] is projected
