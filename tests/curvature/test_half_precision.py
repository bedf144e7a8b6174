"""Curvature of float16/bfloat16 models: products in the model's dtype, eigensolver algebra in
float32 (regression: ``top_eigen`` on a half-precision model failed inside QR)."""

import copy

import pytest
import torch
from cases import mlp_case

from subspaces.curvature import HessianOperator, top_eigen, trace
from subspaces.testing import dense_hessian


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_top_eigen_of_a_half_precision_model(dtype):
    model64, loss, data = mlp_case()
    H64 = HessianOperator(model64, loss, data)
    ref = torch.linalg.eigvalsh(dense_hessian(model64, loss, data)).flip(0)
    model = copy.deepcopy(model64).to(dtype)
    half_data = [(x.to(dtype), y) for x, y in data]
    H = HessianOperator(model, loss, half_data)
    assert H.dtype == dtype
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(0)).to(dtype)
    assert (H @ v).dtype == dtype  # the model's own precision for products
    r = top_eigen(H, 3, generator=torch.Generator().manual_seed(1))
    assert r.eigenvalues.dtype == torch.float32 and r.all_converged
    # each certified value is within its residual of the half model's spectrum, which is within
    # the rounding of the weights and data (a few eps of the dtype, relative) of the float64 one
    eps = torch.finfo(dtype).eps
    scale = float(ref.abs().max())
    for j in range(3):
        err = abs(float(r.eigenvalues[j]) - float(ref[j]))
        assert err <= float(r.residuals[j]) + 50 * eps * scale
    # the float64 model's operator is not affected by the half copy
    assert H64.dtype == torch.float64
    tr = trace(H, rtol=0.2, generator=torch.Generator().manual_seed(2))
    assert abs(tr.estimate - float(ref.sum())) <= 4 * tr.stderr + 50 * eps * abs(float(ref.sum()))
