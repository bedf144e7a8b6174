"""Every operator against its dense matrix (float64), and the operator algebra."""

import inspect

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import torch

from subspaces._tensorlist import ParamLayout
from subspaces.linops import (
    Dense,
    Diagonal,
    Identity,
    LinearOperator,
    LowRank,
    MatmatOperator,
    Projection,
    as_operator,
)
from subspaces.testing import KnownSpectrumOperator, assert_matches_dense, random_orthogonal

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=gen(seed), dtype=F64)


def _known():
    lam = torch.linspace(-1, 3, 12, dtype=F64)
    op = KnownSpectrumOperator(lam, reflections=3, generator=gen(4))
    return op, op.to_dense()


CASES = {
    "dense_square": lambda: (Dense(randn(5, 5)), randn(5, 5)),
    "dense_rect": lambda: (Dense(randn(4, 6)), randn(4, 6)),
    "identity": lambda: (Identity(4, dtype=F64), torch.eye(4, dtype=F64)),
    "diagonal": lambda: (Diagonal(randn(5)), torch.diag(randn(5))),
    "lowrank_sym": lambda: (
        LowRank(randn(6, 2), randn(2, seed=1)),
        randn(6, 2) @ torch.diag(randn(2, seed=1)) @ randn(6, 2).T,
    ),
    "lowrank_rect": lambda: (
        LowRank(randn(6, 2), randn(2, seed=1), randn(3, 2, seed=2)),
        randn(6, 2) @ torch.diag(randn(2, seed=1)) @ randn(3, 2, seed=2).T,
    ),
    "projection": lambda: (
        Projection(random_orthogonal(5, generator=gen(3))[:, :2]),
        random_orthogonal(5, generator=gen(3))[:, :2]
        @ random_orthogonal(5, generator=gen(3))[:, :2].T,
    ),
    "projection_complement": lambda: (
        Projection(random_orthogonal(5, generator=gen(3))[:, :2], complement=True),
        torch.eye(5, dtype=F64)
        - random_orthogonal(5, generator=gen(3))[:, :2]
        @ random_orthogonal(5, generator=gen(3))[:, :2].T,
    ),
    "matmat_fn": lambda: (
        MatmatOperator(lambda X: randn(3, 4) @ X, (3, 4), F64, rmatmat=lambda X: randn(3, 4).T @ X),
        randn(3, 4),
    ),
    "sum": lambda: (
        Dense(randn(4, 4)) + Diagonal(randn(4, seed=1)),
        randn(4, 4) + torch.diag(randn(4, seed=1)),
    ),
    "difference": lambda: (
        Dense(randn(4, 4)) - Identity(4, dtype=F64),
        randn(4, 4) - torch.eye(4, dtype=F64),
    ),
    "scaled": lambda: (2.5 * Dense(randn(3, 4)), 2.5 * randn(3, 4)),
    "scaled_right_div": lambda: (Dense(randn(3, 4)) * 3 / 2, randn(3, 4) * 1.5),
    "negated": lambda: (-Dense(randn(3, 3)), -randn(3, 3)),
    "chain": lambda: (
        Dense(randn(3, 4)) @ Dense(randn(4, 5, seed=1)) @ Diagonal(randn(5, seed=2)),
        randn(3, 4) @ randn(4, 5, seed=1) @ torch.diag(randn(5, seed=2)),
    ),
    "transpose": lambda: (Dense(randn(3, 5)).T, randn(3, 5).T),
    "known_spectrum": _known,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_operator_matches_dense(name):
    op, dense = CASES[name]()
    assert isinstance(op, LinearOperator)
    assert_matches_dense(op, dense)


def test_known_spectrum_operator_has_that_spectrum_and_vectors():
    lam = torch.linspace(-2, 5, 30, dtype=F64)
    op = KnownSpectrumOperator(lam, generator=gen(1))
    dense = op.to_dense()
    torch.testing.assert_close(dense, dense.T, rtol=0, atol=1e-13)
    torch.testing.assert_close(torch.linalg.eigvalsh(dense), lam, rtol=0, atol=1e-12)
    V = op.eigenvectors([0, 29])
    torch.testing.assert_close(op @ V, V * lam[[0, 29]], rtol=0, atol=1e-12)


def test_self_adjoint_flags_propagate():
    S = Dense(torch.eye(3, dtype=F64) * 2)
    assert S.SELF_ADJOINT
    assert (S + Identity(3, dtype=F64)).SELF_ADJOINT
    assert (2 * S).SELF_ADJOINT
    assert not Dense(randn(3, 3)).SELF_ADJOINT
    assert S.T is S


def test_dense_declared_symmetric_is_checked():
    with pytest.raises(ValueError, match="declared symmetric"):
        Dense(randn(3, 3), symmetric=True)


def test_check_symmetric():
    M = randn(6, 6)
    assert Dense(M + M.T).check_symmetric() < 1e-12
    with pytest.raises(ValueError, match="not symmetric"):
        Dense(M).check_symmetric()
    with pytest.raises(ValueError, match="square"):
        Dense(randn(3, 4)).check_symmetric()


def test_parameter_dict_products():
    params = {"w": torch.zeros(2, 3, dtype=F64), "b": torch.zeros(2, dtype=F64)}
    layout = ParamLayout.from_params(params)
    M = randn(8, 8)

    class WithLayout(LinearOperator):
        def __init__(self):
            super().__init__((8, 8), F64, layout=layout)

        def _matmat(self, X):
            return M @ X

    op = WithLayout()
    v = {"w": randn(2, 3, seed=1), "b": randn(2, seed=2)}
    out = op @ v
    assert set(out) == {"w", "b"} and out["w"].shape == (2, 3)
    torch.testing.assert_close(layout.flatten(out), M @ layout.flatten(v))
    # a batch of vectors: a trailing dimension on every tensor
    vb = {"w": randn(2, 3, 4, seed=3), "b": randn(2, 4, seed=4)}
    outb = op @ vb
    torch.testing.assert_close(layout.flatten(outb), M @ layout.flatten(vb))
    with pytest.raises(ValueError, match="names do not match"):
        op @ {"w": v["w"]}
    with pytest.raises(TypeError, match="no parameter layout"):
        Dense(M) @ v


def test_to_scipy_works_with_eigsh():
    lam = torch.linspace(0, 1, 40, dtype=F64)
    op = KnownSpectrumOperator(lam, generator=gen(0))
    w = sla.eigsh(op.to_scipy(), k=2, which="LA", return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(w), lam[-2:].numpy(), atol=1e-10)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: Dense(torch.ones(3)), ValueError, "2 dimensions"),
        (lambda: Dense(torch.ones(2, 2, dtype=torch.int64)), TypeError, "floating dtype"),
        (lambda: Dense(torch.tensor([[1.0, float("nan")], [0.0, 1.0]])), ValueError, "non-finite"),
        (lambda: Diagonal(torch.tensor([1.0, float("inf")])), ValueError, "non-finite"),
        (lambda: LowRank(randn(4, 2), randn(3)), ValueError, "S must have 2"),
        (lambda: LowRank(randn(4, 2), randn(2), randn(3, 1)), ValueError, "V must have 2"),
        (lambda: Projection(randn(4, 2)), ValueError, "not orthonormal"),
        (lambda: Dense(randn(3, 3)) + Dense(randn(4, 4)), ValueError, "cannot add"),
        (lambda: Dense(randn(3, 3)) @ Dense(randn(4, 4)), ValueError, "cannot compose"),
        (lambda: Dense(randn(3, 3)) + Dense(randn(3, 3).float()), TypeError, "dtype"),
        (lambda: Dense(randn(3, 3)) @ torch.ones(4, dtype=F64), ValueError, r"shape \(3, b\)"),
        (lambda: Dense(randn(3, 3)) @ torch.ones(3), TypeError, "dtype"),
        (lambda: as_operator([1, 2]), TypeError, "Tensor or LinearOperator"),
        (
            lambda: MatmatOperator(lambda X: X[:1], (3, 3), F64).matmat(
                torch.ones(3, 1, dtype=F64)
            ),
            ValueError,
            "expected shape",
        ),
        (lambda: MatmatOperator(lambda X: X, (3, 3), F64).T, NotImplementedError, "rmatmat"),
    ],
)
def test_bad_input_raises(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_empty_block_and_no_in_place_edits():
    M = randn(3, 3)
    X = randn(3, 2)
    X0 = X.clone()
    op = 2 * Dense(M) + Identity(3, dtype=F64)
    assert (op @ torch.empty(3, 0, dtype=F64)).shape == (3, 0)
    op @ X
    assert torch.equal(X, X0)


def test_param_layout_errors():
    layout = ParamLayout.from_params({"a": torch.zeros(2)})
    with pytest.raises(ValueError, match="expected a tensor of shape"):
        layout.unflatten(torch.zeros(3))
    with pytest.raises(ValueError, match="has shape"):
        layout.flatten({"a": torch.zeros(3)})
    with pytest.raises(TypeError, match="mapping"):
        ParamLayout.from_params([torch.zeros(2)])


# ----- issue 17: silent wrong results, dtypes, empty and meta inputs --------------------------
HALF = (torch.float16, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, F64])
def test_dense_symmetry_check_is_relative_to_the_norm(dtype):
    eps = torch.finfo(dtype).eps
    M = randn(6, 6)
    S = (M + M.T).to(dtype)
    Dense(S, symmetric=True)  # exactly symmetric
    bad = S.clone()
    bad[0, 1] += 5  # an asymmetry of 5 in entries of size ~2: not rounding in any dtype
    with pytest.raises(ValueError, match="declared symmetric"):
        Dense(bad, symmetric=True)
    # the check is relative: the same matrix scaled down is just as asymmetric
    with pytest.raises(ValueError, match="declared symmetric"):
        Dense(bad * 1e-3, symmetric=True)
    # a product computed in the dtype (rounding-level asymmetry) is accepted
    A = randn(40, 40, seed=1).to(dtype)
    P = A @ torch.diag(torch.rand(40, generator=gen(2), dtype=F64).to(dtype)) @ A.T
    Pw = P.double()
    assert float((Pw - Pw.T).norm() / Pw.norm()) <= 10 * eps  # the claim the check relies on
    assert Dense(P, symmetric=True).SELF_ADJOINT


def test_dense_symmetric_tiny_matrix_is_not_judged_absolutely():
    # the old tolerance was 1e3 eps * max(scale, 1): absolute for small matrices
    M = randn(4, 4).float() * 1e-6
    with pytest.raises(ValueError, match="declared symmetric"):
        Dense(M, symmetric=True)


def test_to_scipy_keeps_imaginary_parts():
    M = randn(5, 5)
    op = Dense(M)
    sp = op.to_scipy()
    x = np.random.default_rng(0).standard_normal((5, 2)) + 1j * np.random.default_rng(
        1
    ).standard_normal((5, 2))
    ref = M.numpy() @ x
    np.testing.assert_allclose(sp @ x[:, 0], ref[:, 0], rtol=1e-13, atol=0)
    np.testing.assert_allclose(sp @ x, ref, rtol=1e-13, atol=0)
    np.testing.assert_allclose(sp.H @ x[:, 0], M.numpy().T @ x[:, 0], rtol=1e-13, atol=0)
    np.testing.assert_allclose(sp.T @ x[:, 0], M.numpy().T @ x[:, 0], rtol=1e-13, atol=0)
    assert np.iscomplexobj(sp @ x)
    # a complex scipy dtype gives complex products for real inputs too
    spc = op.to_scipy(dtype=np.complex128)
    assert (spc @ np.ones(5)).dtype == np.complex128
    # scipy's complex solvers see the imaginary parts
    A = M @ M.T + 5 * torch.eye(5, dtype=F64)
    b = x[:, 0]
    # SciPy renamed gmres's relative tolerance `tol` to `rtol` in 1.12 (and removed `tol` in 1.14)
    rtol_name = "rtol" if "rtol" in inspect.signature(sla.gmres).parameters else "tol"
    sol, info = sla.gmres(Dense(A).to_scipy(dtype=np.complex128), b, atol=0, **{rtol_name: 1e-12})
    assert info == 0
    np.testing.assert_allclose(A.numpy() @ sol, b, rtol=0, atol=1e-10 * np.linalg.norm(b))


def test_complex_products_are_refused_clearly():
    op = MatmatOperator(lambda X: X * (1 + 1j), (3, 3), F64, symmetric=True)
    with pytest.raises(TypeError, match="complex product"):
        op @ torch.ones(3, dtype=F64)
    with pytest.raises(TypeError, match="complex product"):
        op.to_scipy() @ np.ones(3)


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_operators(dtype):
    M = randn(8, 8)
    S = (M + M.T).to(dtype)
    op = Dense(S)
    # products are in the operator's dtype; scipy receives them as float64 (no bfloat16 in numpy)
    out = op.to_scipy() @ np.ones(8)
    np.testing.assert_allclose(out, (S @ torch.ones(8, dtype=dtype)).double().numpy())
    # check_symmetric judges a symmetric half-precision matrix by its own rounding
    for seed in range(10):
        assert op.check_symmetric(generator=gen(seed)) <= 10 * torch.finfo(dtype).eps
    with pytest.raises(ValueError, match="not symmetric"):
        Dense(M.to(dtype)).check_symmetric(generator=gen(0))
    P = Projection(torch.eye(6, dtype=dtype)[:, :2])
    assert (P @ torch.ones(6, dtype=dtype)).tolist() == [1.0, 1.0, 0, 0, 0, 0]


def test_empty_operators():
    E = torch.zeros(0, 0, dtype=F64)
    assert Dense(E, symmetric=True).SELF_ADJOINT
    assert Dense(E).check_symmetric() == 0.0
    assert (Dense(E).to_scipy() @ np.ones(0)).shape == (0,)
    assert (Dense(torch.zeros(3, 0, dtype=F64)).to_scipy() @ np.ones(0)).tolist() == [0.0] * 3
    with pytest.raises(ValueError, match="num_probes"):
        Dense(torch.eye(2, dtype=F64)).check_symmetric(num_probes=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Dense(torch.eye(3, device="meta")),
        lambda: Diagonal(torch.ones(3, device="meta")),
        lambda: LowRank(torch.ones(3, 1, device="meta")),
        lambda: Projection(torch.eye(3, device="meta")[:, :1]),
    ],
)
def test_meta_tensors_are_rejected(make):
    with pytest.raises(ValueError, match="meta device"):
        make()
