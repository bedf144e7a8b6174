"""The public dense references are right where torch.func.hessian is not (issue 22).

In torch 2.13 ``torch.func.hessian`` is several percent off (and not symmetric) on models with
LayerNorm or batch-statistics BatchNorm. Every reference here is checked against central finite
differences of the autograd gradient computed in the test itself.
"""

import pytest
import torch
from cases import norm_case, per_batch_fd_hessian

from subspaces.curvature import GGNOperator, HessianOperator
from subspaces.testing import dense_ggn, dense_hessian, finite_difference_hessian

F64 = torch.float64
EPS = torch.finfo(F64).eps
# central differences at h = 1e-5: truncation h^2 ~ 1e-10, rounding eps / h ~ 2e-11, times the
# size of third derivatives; measured 1e-10 (LayerNorm) and 8e-8 (BatchNorm, small batches)
FD_RTOL = 1e-6


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("norm", ["layernorm", "batchnorm"])
def test_dense_hessian_matches_finite_differences(norm):
    model, loss, data = norm_case(norm)
    fd = per_batch_fd_hessian(model, loss, data)
    H = dense_hessian(model, loss, data)
    assert _rel(H, H.T) <= 10 * EPS  # symmetric (it is symmetrized after a sqrt(eps) check)
    assert _rel(H, fd) < FD_RTOL
    # the library's own finite differences agree with the test's
    assert _rel(finite_difference_hessian(model, loss, data), fd) < FD_RTOL


@pytest.mark.parametrize("norm", ["layernorm", "batchnorm"])
@pytest.mark.parametrize("method", ["vmap", "double_backward"])
def test_hessian_operator_matches_finite_differences(norm, method):
    model, loss, data = norm_case(norm)
    if method == "double_backward":
        data = data[:1]
    fd = per_batch_fd_hessian(model, loss, data)
    H = HessianOperator(model, loss, data, method=method, mode_policy="as_is")
    P = H.shape[0]
    eye = torch.eye(P, dtype=F64)
    by_vector = torch.stack([H @ e for e in eye], 1)  # single-vector engine
    assert _rel(by_vector, fd) < FD_RTOL
    assert _rel(H @ eye, fd) < FD_RTOL  # block engine (vmap / is_grads_batched)


@pytest.mark.parametrize("norm", ["layernorm", "batchnorm"])
def test_dense_ggn_matches_operator(norm):
    model, loss, data = norm_case(norm)
    G = GGNOperator(model, loss, data, mode_policy="as_is").to_dense()
    ref = dense_ggn(model, loss, data)
    assert _rel(G, ref) < 1e6 * EPS


def test_dense_hessian_refuses_a_non_symmetric_result(monkeypatch):
    import subspaces.testing.reference as reference

    real_grad = torch.autograd.grad

    def skewed(outputs, inputs, grad_outputs=None, **kw):
        out = real_grad(outputs, inputs, grad_outputs, **kw)
        if grad_outputs is not None and not kw.get("create_graph"):  # Hessian rows only
            return tuple(o + 0.1 * grad_outputs.roll(1) for o in out)
        return out

    monkeypatch.setattr(reference.torch.autograd, "grad", skewed)
    model, loss, data = norm_case("layernorm")
    with pytest.raises(RuntimeError, match="not symmetric"):
        dense_hessian(model, loss, data)


@pytest.mark.parametrize(
    "name", ["residual_layernorm_gelu_cnn", "residual_train_mode_batchnorm", "tied_weights_lm"]
)
@pytest.mark.parametrize("method", ["vmap", "double_backward"])
def test_hessian_equals_finite_differences_on_real_architectures(name, method):
    """Against central differences of the model's own gradient, parameters perturbed in place.

    (issue 21: LayerNorm, GELU, train-mode BatchNorm, tied weights, residual connections.)
    """
    from cases import inplace_fd_hessian, residual_models

    model, loss, data, policy = residual_models()[name]
    if method == "double_backward":
        data = data[:1]
    H = HessianOperator(model, loss, data, method=method, mode_policy=policy)
    eye = torch.eye(H.shape[0], dtype=F64)
    block = H @ eye
    by_vector = torch.stack([H @ e for e in eye], 1)
    if name == "tied_weights_lm":  # the tied weight is one parameter, counted once
        assert "head.weight" not in H.param_names
    fd = inplace_fd_hessian(model, loss, data)  # (updates train-mode running stats: after H)
    assert _rel(block, fd) < FD_RTOL
    assert _rel(by_vector, fd) < FD_RTOL
    assert _rel(dense_hessian(model, loss, data), fd) < FD_RTOL
