"""Tests of the linear probes: exact fits against scikit-learn, online refinement, layers."""

from __future__ import annotations

import pytest
import torch

from subspaces.steering.probes import LinearProbe, fit_layer_probes

DT = torch.float64


def _data(n=300, d=6, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DT)
    W = torch.randn(d, k, generator=g, dtype=DT)
    noise = 0.7 * torch.randn(n, k, generator=g, dtype=DT)
    y = (X @ W + noise).argmax(1)
    return X, y


@pytest.mark.parametrize("k", [2, 3])
def test_fit_matches_sklearn(k):
    sklearn = pytest.importorskip("sklearn.linear_model")
    X, y = _data(k=k)
    l2 = 0.01
    probe = LinearProbe(l2, standardize=False).fit(X, y)
    # scikit-learn: C * sum CE + ||W||^2 / 2  <=>  mean CE + l2/2 ||W||^2 with C = 1/(n l2)
    # Newton-CG reaches the asked gradient tolerance on every supported scikit-learn; lbfgs before
    # 1.4 (summed, not averaged, losses) stops on its relative-decrease test ~1e-5 from the optimum.
    ref = sklearn.LogisticRegression(
        C=1 / (len(y) * l2), solver="newton-cg", tol=1e-8, max_iter=100
    )
    ref.fit(X.numpy(), y.numpy())
    assert int(ref.n_iter_.max()) < 100  # the reference converged
    torch.testing.assert_close(probe.coef_, torch.tensor(ref.coef_), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(probe.intercept_, torch.tensor(ref.intercept_), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        probe.predict_proba(X), torch.tensor(ref.predict_proba(X.numpy())), atol=1e-6, rtol=1e-6
    )


def test_optimum_has_zero_gradient_and_standardization_is_folded():
    X, y = _data(k=3)
    X = X * torch.tensor([1.0, 10.0, 0.1, 1.0, 5.0, 1.0], dtype=DT) + 3.0
    probe = LinearProbe(0.05).fit(X, y)
    # the objective in standardized space is stationary at the solution
    Xs = (X - probe.mean_) / probe.scale_
    W = probe._W.clone().requires_grad_(True)
    b = probe._b.clone().requires_grad_(True)
    probe._loss(Xs, y, W, b).backward()
    assert float(W.grad.abs().max()) < 1e-7 and float(b.grad.abs().max()) < 1e-7
    # coef_/intercept_ on raw inputs reproduce the logits
    raw = X @ probe.coef_.T + probe.intercept_
    torch.testing.assert_close(raw, probe.logits(X))
    assert probe.loss(X, y) == pytest.approx(float(probe._loss(Xs, y, probe._W, probe._b)))


def test_binary_api():
    X, y = _data(k=2)
    probe = LinearProbe(1e-3).fit(X, y * 5 + 2)  # labels {2, 7}
    assert probe.classes_.tolist() == [2, 7] and probe.coef_.shape == (1, 6)
    assert set(probe.predict(X).tolist()) <= {2, 7}
    margin = probe.decision_function(X)
    assert torch.equal(probe.predict(X) == 7, margin > 0)
    p = probe.predict_proba(X)
    torch.testing.assert_close(p[:, 1], torch.sigmoid(margin))
    assert probe.score(X, y * 5 + 2) > 0.8
    u = probe.direction()
    assert float(u.norm()) == pytest.approx(1.0)
    # gradients flow to the input (used by rerouting)
    x = X[:4].clone().requires_grad_(True)
    probe.logits(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_partial_fit_online_converges_to_the_batch_solution():
    X, y = _data(n=600, k=3, seed=1)
    full = LinearProbe(0.01).fit(X, y)
    online = LinearProbe(0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        idx = torch.randint(600, (64,), generator=g)
        online.partial_fit(X[idx], y[idx], classes=[0, 1, 2], lr=0.02)
    # the online optimum is the batch optimum (up to SGD noise), and close in objective
    assert online.loss(X, y) <= full.loss(X, y) + 0.02
    assert online.score(X, y) >= full.score(X, y) - 0.03
    # partial_fit after fit continues from the fitted weights
    before = full.loss(X, y)
    full.partial_fit(X, y, lr=1e-3, steps=3)
    assert full.loss(X, y) <= before + 1e-3


def test_probe_errors():
    X, y = _data()
    with pytest.raises(RuntimeError, match="not fitted"):
        LinearProbe().predict(X)
    with pytest.raises(ValueError, match="two classes"):
        LinearProbe().fit(X, torch.zeros(len(y), dtype=torch.long))
    with pytest.raises(ValueError, match="classes="):
        LinearProbe().partial_fit(X, y)
    probe = LinearProbe().fit(X, y)
    with pytest.raises(ValueError, match="not among"):
        probe.partial_fit(X[:3], torch.tensor([0, 1, 5]))
    with pytest.raises(ValueError, match="features"):
        probe.predict(X[:, :3])
    with pytest.raises(TypeError):
        probe.fit(X.long(), y)
    with pytest.raises(TypeError, match="integers"):
        probe.fit(X, y.double() + 0.5)
    with pytest.raises(ValueError, match="dimensions"):
        probe.fit(X[0], y[:1])
    with pytest.raises(ValueError, match="non-finite"):
        probe.fit(torch.full_like(X, float("nan")), y)
    with pytest.raises(ValueError):
        LinearProbe(l2=-1.0)
    with pytest.raises(ValueError, match="binary"):
        LinearProbe().fit(*_data(k=3)).direction()


def test_fit_layer_probes_split_and_accuracies():
    g = torch.Generator().manual_seed(3)
    y = torch.arange(200) % 2
    acts = {
        "noise": torch.randn(200, 5, generator=g),
        "signal": torch.randn(200, 5, generator=g) + 2.0 * y[:, None].float(),
    }
    probes = fit_layer_probes(acts, y, test_fraction=0.3, generator=g)
    assert list(probes) == ["noise", "signal"]
    assert probes["signal"].test_accuracy_ > 0.9 and probes["signal"].train_accuracy_ > 0.9
    assert probes["noise"].test_accuracy_ < 0.75
    no_test = fit_layer_probes(acts, y, test_fraction=0.0)
    assert not hasattr(no_test["signal"], "test_accuracy_")
    with pytest.raises(ValueError, match="rows"):
        fit_layer_probes({"a": torch.randn(10, 2), "b": torch.randn(9, 2)}, torch.arange(10) % 2)
    with pytest.raises(ValueError, match="empty"):
        fit_layer_probes({}, y)
    with pytest.raises(ValueError, match="test_fraction"):
        fit_layer_probes(acts, y, test_fraction=1.0)
