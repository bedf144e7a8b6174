import pytest
import torch

from subspaces.geometry import (
    BiMap,
    LogEig,
    ReEig,
    SPDBatchNorm,
    ai_distance,
    ai_exp,
    ai_karcher_mean,
    ai_log,
    ai_transport,
    bw_barycenter,
    bw_distance,
    bw_exp,
    bw_log,
    bw_transport,
    gbw_barycenter,
    gbw_deform,
    gbw_distance,
    gbw_undeform,
    is_spd,
    spd_exp,
    spd_log,
    spd_power,
    spd_sqrt,
    sym,
)

D = torch.float64


def rand_spd(*batch, n=5, seed=0, cond=10.0):
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(*batch, n, n, generator=g, dtype=D))[0]
    lam = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=D)
    lam = lam * torch.exp(0.2 * torch.randn(*batch, n, generator=g, dtype=D))
    return sym(Q * lam.unsqueeze(-2) @ Q.mT)


def sqrtm_ref(A):
    w, U = torch.linalg.eigh(A)
    return U @ torch.diag_embed(w.sqrt()) @ U.mT


def test_matrix_functions():
    X = rand_spd(3, seed=1)
    assert torch.allclose(spd_sqrt(X) @ spd_sqrt(X), X, atol=1e-12)
    assert torch.allclose(spd_exp(spd_log(X)), X, atol=1e-11)
    assert torch.allclose(spd_power(X, -1.0), torch.linalg.inv(X), atol=1e-11)
    assert torch.allclose(spd_power(X, 1 / 3) @ spd_power(X, 2 / 3), X, atol=1e-11)


def test_spectral_gradient_finite_on_repeated_eigenvalues():
    X = torch.eye(4, dtype=D).requires_grad_()
    spd_log(ReEig(0.5)(X)).sum().backward()
    assert torch.isfinite(X.grad).all()
    # matches autograd through eigh for distinct eigenvalues
    A = rand_spd(n=4, seed=2).requires_grad_()
    B = A.detach().clone().requires_grad_()
    W = rand_spd(n=4, seed=3)
    (spd_sqrt(A) * W).sum().backward()
    (sqrtm_ref(B) * W).sum().backward()
    assert torch.allclose(A.grad, B.grad, atol=1e-9)


@pytest.mark.parametrize("metric", ["bw", "ai"])
def test_exp_log_inverse(metric):
    S = rand_spd(4, seed=4)
    X = rand_spd(4, seed=5)
    log, exp = (bw_log, bw_exp) if metric == "bw" else (ai_log, ai_exp)
    V = log(S, X)
    assert torch.allclose(V, V.mT)
    assert (exp(S, V) - X).abs().max() < 1e-10
    V2 = 0.1 * sym(torch.randn(4, 5, 5, dtype=D, generator=torch.Generator().manual_seed(6)))
    assert (log(S, exp(S, V2)) - V2).abs().max() < 1e-10


def test_bw_distance_closed_form_symmetric_zero():
    A, B = rand_spd(3, seed=7), rand_spd(3, seed=8)
    Ah = sqrtm_ref(A)
    cross = sqrtm_ref(Ah @ B @ Ah).diagonal(0, -2, -1).sum(-1)
    ref = (A.diagonal(0, -2, -1).sum(-1) + B.diagonal(0, -2, -1).sum(-1) - 2 * cross).sqrt()
    assert torch.allclose(bw_distance(A, B), ref, atol=1e-10)
    assert torch.allclose(bw_distance(B, A), ref, atol=1e-10)
    assert bw_distance(A, A).abs().max() < 1e-6
    # the norm of the BW logarithm is the distance: ||V||^2 = <L, V> / 2 with S L + L S = V
    V = bw_log(A, B)
    from subspaces.geometry import lyapunov

    inner = (lyapunov(A, V) * V).sum((-2, -1))
    assert torch.allclose((inner / 2).sqrt(), ref, atol=1e-9)


def test_bw_barycenter_commuting_and_fixed_point():
    g = torch.Generator().manual_seed(9)
    Q = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=D))[0]
    lam = torch.rand(6, 5, generator=g, dtype=D) * 5 + 0.1
    X = Q * lam.unsqueeze(-2) @ Q.T
    ref = Q * lam.sqrt().mean(0).pow(2) @ Q.T
    assert torch.allclose(bw_barycenter(X), ref, atol=1e-10)
    # non-commuting: the fixed-point equation sum_i T_i = k I holds
    Y = rand_spd(6, seed=10, cond=100.0)
    M = bw_barycenter(Y, max_iter=200)
    Mh, Mih = sqrtm_ref(M), torch.linalg.inv(sqrtm_ref(M))
    T = Mih @ spd_sqrt(Mh @ Y @ Mh) @ Mih
    assert torch.allclose(T.mean(0), torch.eye(5, dtype=D), atol=1e-8)


def test_gbw_theta_one_is_bw_and_deform_inverse():
    A, B = rand_spd(2, seed=11), rand_spd(2, seed=12)
    assert torch.allclose(gbw_distance(A, B, 1.0), bw_distance(A, B), atol=1e-12)
    X = rand_spd(2, 4, seed=13)
    assert torch.allclose(gbw_barycenter(X, 1.0), bw_barycenter(X), atol=1e-12)
    assert torch.allclose(gbw_undeform(gbw_deform(A, 0.3), 0.3), A, atol=1e-10)
    assert torch.allclose(gbw_distance(A, B, 0.5), 2 * bw_distance(spd_sqrt(A), spd_sqrt(B)))
    with pytest.raises(ValueError, match="theta"):
        gbw_deform(A, 0.0)


def test_ai_karcher_two_points_is_geodesic_midpoint():
    A, B = rand_spd(seed=14, cond=50.0), rand_spd(seed=15, cond=50.0)
    Ah, Aih = sqrtm_ref(A), torch.linalg.inv(sqrtm_ref(A))
    mid = Ah @ sqrtm_ref(Aih @ B @ Aih) @ Ah
    M = ai_karcher_mean(torch.stack([A, B]), max_iter=100)
    assert torch.allclose(M, mid, atol=1e-10)
    assert abs(float(ai_distance(A, M) - ai_distance(M, B))) < 1e-10


def test_transports():
    S, P = rand_spd(seed=16), rand_spd(seed=17)
    V = sym(torch.randn(5, 5, dtype=D, generator=torch.Generator().manual_seed(18)))
    # AI transport is an isometry of <U, V>_S = tr(S^-1 U S^-1 V)
    W = ai_transport(S, P, V)
    Si, Pi = torch.linalg.inv(S), torch.linalg.inv(P)
    assert torch.allclose(torch.trace(Si @ V @ Si @ V), torch.trace(Pi @ W @ Pi @ W))
    # BW velocity transport to the identity gives 2 L
    from subspaces.geometry import lyapunov

    I5 = torch.eye(5, dtype=D)
    assert torch.allclose(bw_transport(S, I5, V), 2 * lyapunov(S, V), atol=1e-12)


@pytest.mark.parametrize("metric", ["bw", "gbw", "ai"])
def test_batchnorm_identity_mean(metric):
    X = rand_spd(16, n=4, seed=19, cond=1e3) * 7.0
    bn = SPDBatchNorm(4, metric=metric, theta=0.5, max_iter=100).double()
    Y = bn(X)
    assert is_spd(Y).all()
    I4 = torch.eye(4, dtype=D)
    if metric == "ai":
        M = ai_karcher_mean(Y, max_iter=200)
    elif metric == "bw":
        M = bw_barycenter(Y)
    else:
        M = gbw_barycenter(Y, 0.5)
    assert (M - I4).abs().max() < 1e-6
    # running mean moved toward the batch mean; eval mode uses it and stays SPD
    assert not torch.allclose(bn.running_mean, I4)
    bn.eval()
    assert is_spd(bn(X)).all()


def test_layers_keep_spd_and_train():
    X = rand_spd(10, n=6, seed=20, cond=1e4)
    bimap = BiMap(6, 3, seed=0).double()
    net = torch.nn.Sequential(bimap, ReEig(1e-4), SPDBatchNorm(3, metric="gbw").double())
    Y = net(X)
    assert Y.shape == (10, 3, 3) and is_spd(Y).all()
    out = LogEig(3)(Y)
    assert out.shape == (10, 6)
    out.pow(2).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    with torch.no_grad():
        bimap.raw.add_(torch.randn_like(bimap.raw))
    W = bimap.weight
    assert torch.allclose(W.T @ W, torch.eye(3, dtype=D), atol=1e-10)
    assert torch.allclose(ReEig(0.5)(-torch.eye(2, dtype=D)), 0.5 * torch.eye(2, dtype=D))


def test_bad_inputs():
    A = rand_spd(seed=21)
    with pytest.raises(ValueError, match="positive definite"):
        bw_distance(A, -A)
    with pytest.raises(ValueError, match="non-finite"):
        bw_log(A, torch.full_like(A, float("nan")))
    with pytest.raises(ValueError, match="square"):
        ai_log(A, torch.ones(5, 4, dtype=D))
    with pytest.raises(TypeError):
        bw_distance(A, A.tolist())
    with pytest.raises(ValueError, match="shape"):
        LogEig(3)(A)
    with pytest.raises(ValueError, match="non-finite"):
        BiMap(5, 2)(torch.full((5, 5), float("inf")))
    with pytest.raises(ValueError, match="metric"):
        SPDBatchNorm(3, metric="euclid")
    with pytest.raises(ValueError, match="n_out"):
        BiMap(2, 3)
    with pytest.raises(ValueError, match="weights"):
        bw_barycenter(torch.stack([A, A]), torch.tensor([1.0, -1.0], dtype=D))
    assert not bool(is_spd(torch.tensor([[1.0, 2.0], [0.0, 1.0]])))


def test_p33_pipeline_smoke():
    from subspaces.experiments.P33_spd_batchnorm import make_covariances, train_variant

    Xtr, ytr = make_covariances(60, seed=1)
    Xte, yte = make_covariances(30, seed=2)
    assert is_spd(Xtr).all()
    cond = torch.linalg.eigvalsh(Xtr)
    assert float((cond[:, -1] / cond[:, 0]).median()) > 1e3  # ill-conditioned by construction
    for variant in ("none", "ai", "gbw"):
        r = train_variant(variant, (Xtr, ytr, Xte, yte), seed=0, epochs=1)
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["final_loss"] == r["final_loss"]
        assert 0.0 <= r["test_accuracy_batch_stats"] <= 1.0
    from subspaces.experiments.P33_spd_batchnorm import _batchnorm

    ai_disp, gbw_center = _batchnorm("ai_disp", 3, 0.5), _batchnorm("gbw_center", 3, 0.5)
    assert ai_disp.metric == "ai" and ai_disp.dispersion
    assert gbw_center.metric_log is None and not gbw_center.dispersion
    with pytest.raises(ValueError, match="variant must be one of"):
        _batchnorm("euclid", 3, 0.5)


@pytest.mark.slow
def test_p33_fast_reproduction_runs():
    from subspaces.experiments import get

    r = get("P33").run(True, 0)
    assert set(r.measured["mean_test_accuracy"]) == {"none", "ai", "gbw"}
    assert "test_accuracy" in r.figures
    assert r.headline == ("gbw_minus_ai", "gbw_minus_none")
    d = r.measured["gbw_minus_ai"]
    assert d["n"] == 3 and r.passed == (
        d["ci95"][0] > 0 and r.measured["gbw_minus_none"]["ci95"][0] > 0
    )


# ----- issue 17: no silent clamping or symmetrizing, certified means, dtypes, empty and meta ---
from subspaces.geometry.spd import SPDMeanResult, lyapunov  # noqa: E402

HALF = (torch.float16, torch.bfloat16)


def logm_ref(A):
    w, U = torch.linalg.eigh(A)
    return U @ torch.diag_embed(w.log()) @ U.mT


def indefinite(n=5, seed=30):
    """Symmetric with eigenvalues 1..n except one of -0.5: clearly not positive (semi)definite."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=D))[0]
    lam = torch.arange(1.0, n + 1, dtype=D)
    lam[0] = -0.5
    return sym(Q * lam @ Q.T)


@pytest.mark.parametrize(
    "fn",
    [spd_sqrt, spd_log, lambda X: spd_power(X, -0.5), lambda X: spd_power(X, 0.3)],
)
def test_matrix_functions_reject_non_spd_instead_of_clamping(fn):
    # the old code clamped the eigenvalue -0.5 to 1e-308 and returned a finite matrix
    with pytest.raises(ValueError, match=r"positive .*definite.*smallest eigenvalue -0\.5"):
        fn(indefinite())


@pytest.mark.parametrize(
    "fn",
    [
        spd_sqrt,
        spd_log,
        spd_exp,
        lambda X: spd_power(X, 2.0),
        lambda X: lyapunov(rand_spd(seed=31), X),
        lambda X: bw_exp(rand_spd(seed=31), X),
        lambda X: ai_exp(rand_spd(seed=31), X),
        lambda X: bw_transport(rand_spd(seed=31), rand_spd(seed=32), X),
        lambda X: ai_transport(rand_spd(seed=31), rand_spd(seed=32), X),
    ],
)
def test_non_symmetric_input_is_rejected_not_symmetrized(fn):
    X = rand_spd(seed=33)
    bad = X.clone()
    bad[0, 1] += 0.1 * float(X.abs().max())  # 10 % of the largest entry: not rounding
    with pytest.raises(ValueError, match="must be symmetric"):
        fn(bad)
    # rounding-level asymmetry is accepted (and symmetrized): e.g. a product like A B A
    A = spd_sqrt(rand_spd(seed=34))
    prod = A @ X @ A
    assert float((prod - prod.mT).abs().max()) > 0
    fn(prod)


def test_rounding_negative_eigenvalues_of_psd_matrices_are_accepted_for_positive_powers():
    g = torch.Generator().manual_seed(35)
    B = torch.randn(6, 3, generator=g, dtype=D)
    P = B @ B.T  # rank 3: three eigenvalues are rounding-level, some negative
    assert float(torch.linalg.eigvalsh(P)[0]) < 0
    R = spd_sqrt(P)
    torch.testing.assert_close(R @ R, P, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="positive definite"):
        spd_log(P)


def test_means_report_convergence_checked_at_the_returned_point():
    Y = rand_spd(6, seed=10, cond=100.0)
    I5 = torch.eye(5, dtype=D)
    for fn in (bw_barycenter, ai_karcher_mean, lambda X, **kw: gbw_barycenter(X, 0.5, **kw)):
        res = fn(Y, max_iter=200, return_info=True)
        assert isinstance(res, SPDMeanResult) and res.converged and res.residual <= res.tol
        assert 0 < res.iterations < 200
        assert torch.equal(res.mean, fn(Y, max_iter=200))  # the plain call: the same mean
        # two iterations are not enough: reported, and warned about without return_info
        short = fn(Y, max_iter=2, return_info=True)
        assert not short.converged and short.iterations == 2 and short.residual > short.tol
        with pytest.warns(RuntimeWarning, match="did not converge"):
            fn(Y, max_iter=2)
    # the residuals, recomputed independently (eigh-based square roots and logs)
    for max_iter in (2, 200):
        res = bw_barycenter(Y, max_iter=max_iter, return_info=True)
        Mh = sqrtm_ref(res.mean)
        Mih = torch.linalg.inv(Mh)
        T = (Mih @ sqrtm_ref(Mh @ Y @ Mh) @ Mih).mean(0)
        assert float((T - I5).norm()) == pytest.approx(res.residual, rel=1e-6, abs=1e-13)
        res = ai_karcher_mean(Y, max_iter=max_iter, return_info=True)
        w, U = torch.linalg.eigh(res.mean)
        Mih = U @ torch.diag_embed(w.rsqrt()) @ U.mT
        w2, U2 = torch.linalg.eigh(sym(Mih @ Y @ Mih))
        G = (U2 @ torch.diag_embed(w2.log()) @ U2.mT).mean(0)
        assert float(G.norm()) == pytest.approx(res.residual, rel=1e-6, abs=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
def test_lower_precision_inputs(dtype):
    eps = torch.finfo(dtype).eps
    X = rand_spd(seed=40, cond=5.0)
    Xl = X.to(dtype)
    Xr = Xl.double()  # the matrix actually passed, exactly
    for fn, ref in (
        (spd_sqrt, sqrtm_ref),
        (spd_log, logm_ref),
        (spd_exp, torch.linalg.matrix_exp),
        (lambda A: spd_power(A, -1.0), torch.linalg.inv),
    ):
        out = fn(Xl)
        assert out.dtype == dtype
        expected = ref(sym(Xr))
        err = float((out.double() - expected).abs().max() / expected.abs().max())
        assert err <= 8 * eps  # computed in float32, rounded to the dtype
    assert bool(is_spd(Xl))
    B = rand_spd(seed=41, cond=5.0).to(dtype)
    d = bw_distance(Xl, B)
    assert d.dtype == dtype
    assert float(d) == pytest.approx(float(bw_distance(Xr, B.double())), rel=16 * eps, abs=0)
    Y = rand_spd(6, seed=42, cond=10.0)
    for fn in (bw_barycenter, ai_karcher_mean):
        res = fn(Y.to(dtype), return_info=True)
        assert res.converged and res.mean.dtype == dtype and res.tol == 1e-6
        ref = fn(Y.to(dtype).double(), tol=1e-6)  # the same float64 iteration, not rounded
        assert float((res.mean.double() - ref).abs().max() / ref.abs().max()) <= eps


def test_empty_and_meta_inputs():
    for fn in (spd_sqrt, spd_log, spd_exp, is_spd, lambda X: bw_distance(X, X)):
        with pytest.raises(ValueError, match="n >= 1"):
            fn(torch.zeros(0, 0, dtype=D))
        with pytest.raises(ValueError, match="meta"):
            fn(torch.eye(3, device="meta"))
    # an empty batch of matrices is an empty result
    assert spd_sqrt(torch.zeros(0, 2, 2, dtype=D)).shape == (0, 2, 2)
    assert bw_distance(torch.zeros(0, 2, 2, dtype=D), torch.eye(2, dtype=D)).shape == (0,)
    for fn in (bw_barycenter, ai_karcher_mean):
        with pytest.raises(ValueError, match="k >= 1"):
            fn(torch.zeros(0, 2, 2, dtype=D))
        out = fn(torch.zeros(0, 3, 2, 2, dtype=D), return_info=True)
        assert out.mean.shape == (0, 2, 2) and out.converged
        with pytest.raises(ValueError, match="weights"):
            fn(rand_spd(2, seed=43), torch.tensor([1.0, float("nan")], dtype=D))
        with pytest.raises(ValueError, match="tol"):
            fn(rand_spd(2, seed=43), tol=-1.0)
    with pytest.raises(ValueError, match="theta"):
        gbw_distance(rand_spd(seed=44), rand_spd(seed=45), float("inf"))
