"""Curvature operators against torch.func dense references in float64 (1e-10)."""

import pytest
import torch
from cases import cnn_case, mlp_case, relu_mlp_mse_case, tiny_transformer_case

from subspaces.curvature import FisherOperator, GGNOperator, HessianOperator
from subspaces.testing import assert_matches_dense, dense_ggn, dense_hessian

F64 = torch.float64
CASES = {
    "mlp_ce": mlp_case,
    "relu_mlp_mse": relu_mlp_mse_case,
    "cnn": cnn_case,
    "cnn_batchnorm_eval": lambda: cnn_case(bn=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("method", ["vmap", "double_backward"])
def test_hessian_matches_torch_func(case, method):
    model, loss, data = CASES[case]()
    if method == "double_backward":
        data = data[:1]
    H = HessianOperator(model, loss, data, method=method)
    assert H.engine == method
    assert_matches_dense(H, dense_hessian(model, loss, data), rtol=1e-10, atol=1e-12)
    assert H.num_samples == sum(len(b[1]) for b in data)


@pytest.mark.parametrize("case", sorted(CASES))
def test_ggn_matches_dense(case):
    model, loss, data = CASES[case]()
    assert_matches_dense(
        GGNOperator(model, loss, data), dense_ggn(model, loss, data), rtol=1e-10, atol=1e-12
    )


def test_tiny_transformer_dict_batches():
    model, loss, data = tiny_transformer_case()
    params = "transformer.h.0.attn.*"
    H = HessianOperator(model, loss, data, params=params)
    assert H.param_names == (
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_attn.bias",
        "transformer.h.0.attn.c_proj.weight",
        "transformer.h.0.attn.c_proj.bias",
    )
    assert_matches_dense(H, dense_hessian(model, loss, data, params), rtol=1e-10, atol=1e-12)
    G = GGNOperator(model, loss, data, params="transformer.h.0.mlp.c_proj.*")
    assert_matches_dense(
        G, dense_ggn(model, loss, data, "transformer.h.0.mlp.c_proj.*"), rtol=1e-10, atol=1e-12
    )


def test_sample_weighting_over_unequal_batches():
    model, loss, data = mlp_case()
    X = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    whole = HessianOperator(model, loss, [(X, y)], method="vmap").to_dense()
    split = HessianOperator(model, loss, data).to_dense()
    torch.testing.assert_close(split, whole, rtol=1e-10, atol=1e-12)
    # averaging per batch (what hessian-eigenthings does) would differ
    per_batch = sum(HessianOperator(model, loss, [b]).to_dense() for b in data) / len(data)
    assert (per_batch - whole).abs().max() > 1e-4


def test_parameter_selection_is_the_submatrix():
    model, loss, data = mlp_case()
    full = HessianOperator(model, loss, data).to_dense()
    sub = HessianOperator(model, loss, data, params=["2.*"]).to_dense()
    n0 = sum(p.numel() for n, p in model.named_parameters() if n.startswith("0."))
    torch.testing.assert_close(sub, full[n0:, n0:], rtol=1e-10, atol=1e-12)
    by_dict = HessianOperator(model, loss, data, params={"2.bias": model[2].bias}).to_dense()
    torch.testing.assert_close(by_dict, full[-3:, -3:], rtol=1e-10, atol=1e-12)


def test_fisher_mc_converges_to_ggn_and_empirical_is_gradient_outer_products():
    model, loss, data = mlp_case()
    G = GGNOperator(model, loss, data).to_dense()
    F = FisherOperator(
        model, loss, data, mc_samples=4000, generator=torch.Generator().manual_seed(0)
    )
    Fd = F.to_dense()
    torch.testing.assert_close(Fd, Fd.T, rtol=0, atol=1e-12)  # a fixed symmetric matrix
    assert float((Fd - G).norm() / G.norm()) < 0.05  # MC error ~ 1/sqrt(4000 * n)
    # empirical Fisher == mean of per-sample gradient outer products
    E = FisherOperator(model, loss, data, kind="empirical").to_dense()
    grads = []
    for X, y in data:
        for i in range(len(y)):
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(X[i : i + 1]), y[i : i + 1]).backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    g = torch.stack(grads)
    torch.testing.assert_close(E, g.T @ g / len(g), rtol=1e-10, atol=1e-12)


def test_float64_on_request_leaves_model_untouched():
    model, loss, data = mlp_case()
    model = model.float()
    data32 = [(X.float(), y) for X, y in data]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    H = HessianOperator(model, loss, data32, dtype=F64)
    assert H.dtype == F64
    ref = dense_hessian(model.double(), loss, data)
    model.float()
    torch.testing.assert_close(H.to_dense(), ref, rtol=1e-6, atol=1e-8)  # float32 params, cast
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[n])


def test_progress_callback_and_loss_and_gradient():
    model, loss, data = mlp_case()
    calls = []
    H = HessianOperator(model, loss, data, progress=lambda i, n: calls.append((i, n)))
    value, grad = H.loss_and_gradient()
    assert calls == [(1, 3), (2, 3), (3, 3)]
    X = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    model.zero_grad()
    ref = torch.nn.functional.cross_entropy(model(X), y)
    ref.backward()
    assert value == pytest.approx(float(ref), rel=1e-12)
    torch.testing.assert_close(grad, torch.cat([p.grad.flatten() for p in model.parameters()]))


def test_train_mode_policy():
    model, loss, data = cnn_case(bn=True)
    model.train()
    H = HessianOperator(model, loss, data)
    with pytest.raises(ValueError, match="training mode"):
        H @ torch.ones(H.shape[0], dtype=F64)
    assert model.training  # the error did not change the mode
    running = model.bn.running_mean.clone()
    He = HessianOperator(model, loss, data, mode_policy="eval")
    He @ torch.ones(H.shape[0], dtype=F64)
    assert model.training and model.bn.training  # modes restored
    model.eval()
    torch.testing.assert_close(
        He.to_dense(), dense_hessian(model, loss, data), rtol=1e-10, atol=1e-12
    )
    model.train()
    Ha = HessianOperator(model, loss, data, mode_policy="as_is")
    Ha @ torch.ones(H.shape[0], dtype=F64)
    assert torch.equal(model.bn.running_mean, running)  # running stats never updated


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (
            lambda m, l, d: HessianOperator(m, l, []) @ torch.ones(57, dtype=F64),
            ValueError,
            "empty",
        ),
        (
            lambda m, l, d: HessianOperator(m, l, d, params="nope.*"),
            ValueError,
            "no parameter name matches",
        ),
        (
            lambda m, l, d: HessianOperator(m, l, d, params={"x": torch.ones(1)}),
            ValueError,
            "not parameters",
        ),
        (lambda m, l, d: HessianOperator(m, "hinge", d), ValueError, "loss_fn must be one of"),
        (
            lambda m, l, d: HessianOperator(m, l, d, method="fast"),
            ValueError,
            "method must be one of",
        ),
        (lambda m, l, d: HessianOperator(m, l, d, mode_policy="train"), ValueError, "mode_policy"),
        (lambda m, l, d: HessianOperator("model", l, d), TypeError, "nn.Module"),
        (
            lambda m, l, d: (
                HessianOperator(
                    m, lambda o, y: torch.nn.functional.cross_entropy(o, y, reduction="none"), d
                )
                @ torch.ones(57, dtype=F64)
            ),
            ValueError,
            "scalar",
        ),
        (
            lambda m, l, d: (
                HessianOperator(m, lambda o, y: torch.log(o - 1e3).mean(), d)
                @ torch.ones(57, dtype=F64)
            ),
            ValueError,
            "loss is not finite",
        ),
        (
            lambda m, l, d: FisherOperator(m, lambda o, y: o.sum(), d),
            ValueError,
            "known likelihood",
        ),
        (
            lambda m, l, d: HessianOperator(m, l, d, method="double_backward").engine,
            ValueError,
            "exactly one batch",
        ),
        (
            lambda m, l, d: HessianOperator(m, l, [1, 2]) @ torch.ones(57, dtype=F64),
            TypeError,
            "a batch must be",
        ),
    ],
)
def test_bad_input(make, error, match):
    model, loss, data = mlp_case()
    with pytest.raises(error, match=match):
        make(model, loss, data)


def test_no_parameters_selected():
    model, loss, data = mlp_case()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters selected"):
        HessianOperator(model, loss, data)


def test_k_larger_than_num_params():
    from subspaces.curvature import top_eigen

    model, loss, data = mlp_case()
    with pytest.raises(ValueError, match="k must be <= n = 57"):
        top_eigen(HessianOperator(model, loss, data), 58)
