"""Loss modules are honoured as given (options, class weights, reductions) or refused (issue 22).

References are computed on the concatenated data with plain autograd, independently of the
library's batch loop, normalisation and loss handling.
"""

import pytest
import torch
from cases import autograd_hessian, flat_loss_fn, mlp_case, relu_mlp_mse_case
from torch import nn

from subspaces.curvature import FisherOperator, GGNOperator, HessianOperator
from subspaces.testing import assert_matches_dense

F64 = torch.float64
EPS = torch.finfo(F64).eps
# products of a 57-parameter model in float64: rounding stays within a few thousand eps of the
# largest entry (the same 1e-10 the operator tests use, expressed through eps)
RTOL = 1e6 * EPS


def _ignored_labels_case():
    model, _, data = mlp_case()
    data = [(X, y.clone()) for X, y in data]
    data[0][1][:4] = -100  # 4 of the first batch's 10 labels are ignored
    data[2][1][0] = -100
    return model, data


CASES = {
    "ce_label_smoothing": lambda: (
        mlp_case()[0],
        nn.CrossEntropyLoss(label_smoothing=0.1),
        mlp_case()[2],
    ),
    "ce_class_weights": lambda: (
        mlp_case()[0],
        nn.CrossEntropyLoss(weight=torch.tensor([0.2, 1.0, 3.0], dtype=F64)),
        mlp_case()[2],
    ),
    "ce_weights_and_smoothing": lambda: (
        mlp_case()[0],
        nn.CrossEntropyLoss(weight=torch.tensor([0.5, 2.0, 1.0], dtype=F64), label_smoothing=0.2),
        mlp_case()[2],
    ),
    "ce_sum": lambda: (mlp_case()[0], nn.CrossEntropyLoss(reduction="sum"), mlp_case()[2]),
    "ce_ignore_index": lambda: (
        _ignored_labels_case()[0],
        nn.CrossEntropyLoss(),
        _ignored_labels_case()[1],
    ),
    "mse_sum": lambda: (
        relu_mlp_mse_case()[0],
        nn.MSELoss(reduction="sum"),
        relu_mlp_mse_case()[2],
    ),
}


def _dense_ggn_of(model, loss, data):
    """``J^T H_L J`` of the loss on the concatenated data (jacrev + autograd output Hessian)."""
    _, x0 = flat_loss_fn(model, loss, data)
    names = [n for n, p in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    X = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])

    def out_fn(flat):
        parts = torch.split(flat, [s.numel() for s in shapes])
        p = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        return torch.func.functional_call(model, p, (X,))

    out = out_fn(x0).detach()
    J = torch.func.jacrev(out_fn)(x0).reshape(out.numel(), -1)
    HL = autograd_hessian(lambda o: loss(o.reshape(out.shape), y), out.flatten())
    return J.T @ HL @ J


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("method", ["vmap", "double_backward"])
def test_hessian_of_the_loss_module_as_given(case, method):
    model, loss, data = CASES[case]()
    if method == "double_backward":
        data = data[:1]
    f, x0 = flat_loss_fn(model, loss, data)
    ref = autograd_hessian(f, x0)
    H = HessianOperator(model, loss, data, method=method)
    assert_matches_dense(H, ref, rtol=RTOL, atol=RTOL * float(ref.abs().max()))


@pytest.mark.parametrize("case", sorted(CASES))
def test_ggn_of_the_loss_module_as_given(case):
    model, loss, data = CASES[case]()
    ref = _dense_ggn_of(model, loss, data)
    G = GGNOperator(model, loss, data)
    assert_matches_dense(G, ref, rtol=RTOL, atol=RTOL * float(ref.abs().max()))


def test_loss_and_gradient_of_a_weighted_mean_is_the_concatenated_loss():
    model, loss, data = CASES["ce_class_weights"]()
    f, x0 = flat_loss_fn(model, loss, data)
    value, grad = HessianOperator(model, loss, data).loss_and_gradient()
    assert value == pytest.approx(float(f(x0)), rel=100 * EPS)
    torch.testing.assert_close(grad, torch.func.grad(f)(x0), rtol=100 * EPS, atol=100 * EPS)


@pytest.mark.parametrize(
    ("loss", "match"),
    [
        (nn.CrossEntropyLoss(label_smoothing=0.1), "label_smoothing"),
        (nn.CrossEntropyLoss(weight=torch.ones(3, dtype=F64)), "weight"),
    ],
)
def test_mc_fisher_refuses_a_loss_without_a_likelihood(loss, match):
    model, _, data = mlp_case()
    with pytest.raises(ValueError, match=match):
        FisherOperator(model, loss, data, kind="mc")


def test_empirical_fisher_refuses_class_weights():
    model, _, data = mlp_case()
    loss = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    with pytest.raises(ValueError, match="weight"):
        FisherOperator(model, loss, data, kind="empirical")


def test_mc_fisher_of_a_sum_is_n_times_the_mean():
    model, _, data = mlp_case()
    n = sum(len(b[1]) for b in data)
    kw = {"kind": "mc", "mc_samples": 3}
    mean = FisherOperator(
        model, nn.CrossEntropyLoss(), data, generator=torch.Generator().manual_seed(5), **kw
    ).to_dense()
    total = FisherOperator(
        model,
        nn.CrossEntropyLoss(reduction="sum"),
        data,
        generator=torch.Generator().manual_seed(5),
        **kw,
    ).to_dense()
    torch.testing.assert_close(total, n * mean, rtol=RTOL, atol=RTOL * float(total.abs().max()))


def test_empirical_fisher_of_a_sum_is_the_sum_of_gradient_outer_products():
    model, _, data = relu_mlp_mse_case()
    loss = nn.MSELoss(reduction="sum")
    E = FisherOperator(model, loss, data, kind="empirical").to_dense()
    grads = []
    for X, y in data:
        for i in range(len(y)):
            model.zero_grad()
            loss(model(X[i : i + 1]), y[i : i + 1]).backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    g = torch.stack(grads)
    ref = g.T @ g
    torch.testing.assert_close(E, ref, rtol=RTOL, atol=RTOL * float(ref.abs().max()))


@pytest.mark.parametrize("cls", [nn.CrossEntropyLoss, nn.MSELoss, nn.L1Loss])
def test_reduction_none_is_refused(cls):
    model, _, data = mlp_case()
    with pytest.raises(ValueError, match="reduction"):
        HessianOperator(model, cls(reduction="none"), data)


def test_reduction_argument_must_agree_with_the_module():
    model, _, data = mlp_case()
    with pytest.raises(ValueError, match="reduction"):
        HessianOperator(model, nn.CrossEntropyLoss(reduction="sum"), data, reduction="mean")
    with pytest.raises(ValueError, match="reduction"):
        HessianOperator(model, "cross_entropy", data, reduction="max")
