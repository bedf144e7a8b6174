"""Cell supernet: a sampled path is the standalone network; SPOS training; inherited accuracies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subspaces.nas.networks import CellNetwork, digits_images
from subspaces.nas.space import CellSpace
from subspaces.nas.supernet import (
    CellSupernet,
    UniformSampler,
    inherited_accuracies,
    train_supernet,
)


def test_sampled_path_equals_standalone_network_with_the_same_weights() -> None:
    torch.manual_seed(0)
    sn = CellSupernet(channels=4).double()
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    archs = [(3, 1, 2, 4), (2, 3, 3, 2), (1, 1, 1, 1)]
    archs += [tuple(int(i) for i in torch.randint(5, (4,), generator=gen)) for _ in range(10)]
    for arch in archs:
        net = sn.extract(arch).double()
        assert isinstance(net, CellNetwork) and net.arch == arch
        torch.testing.assert_close(sn(x, arch), net(x), rtol=0, atol=1e-12)
        # The standalone net really holds only the path's parameters.
        n_params = sum(p.numel() for p in net.parameters())
        assert n_params == sum(p.numel() for p in CellNetwork(arch, channels=4).parameters())
    # A different path gives a different function (the test can fail).
    assert not torch.allclose(sn(x, (3, 3, 3, 3)), sn(x, (2, 2, 2, 2)))


def test_op_grad_norms() -> None:
    torch.manual_seed(0)
    sn = CellSupernet(channels=4)
    arch = (3, 3, 2, 1)
    sn(torch.randn(5, 1, 8, 8), arch).square().sum().backward()
    norms = sn.op_grad_norms(arch)
    expected3 = sum(float(p.grad.norm()) for e in (0, 1) for p in sn.edges[e][3].parameters())
    expected2 = sum(float(p.grad.norm()) for p in sn.edges[2][2].parameters())
    np.testing.assert_allclose(norms, [0.0, 0.0, expected2, expected3, 0.0], rtol=1e-12)


def test_spos_training_learns_and_records_gradient_variance() -> None:
    Xtr, ytr, Xte, yte = digits_images()
    torch.manual_seed(0)
    sn = CellSupernet()
    h = train_supernet(sn, Xtr[:512], ytr[:512], UniformSampler(512), epochs=3)
    assert h.loss[-1] < h.loss[0] and len(h.grad_variance) == 3
    assert all(v > 0 for v in h.grad_variance)
    accs = inherited_accuracies(sn, [(3, 1, 2, 3), (3, 1, 2, 0)], Xte, yte)
    # e(2,3) = none leaves no path to the output: a constant prediction (about 1/10 correct);
    # a live path learns well above chance after 24 steps shared among 625 paths.
    assert accs[1] < 0.15 and accs[0] > 2 * accs[1]


def test_gradient_variance_is_the_trace_of_the_step_covariance() -> None:
    # With a batch covering the whole set and a one-op space, every step sees the same path
    # and data; the first epoch's gradients differ only because the weights move, so a zero
    # learning rate gives exactly zero variance.
    X, y = digits_images()[:2]
    torch.manual_seed(0)
    sn = CellSupernet(space=CellSpace(ops=("nor_conv_1x1",)))
    sampler = UniformSampler(64, num_ops=1)
    h = train_supernet(sn, X[:64], y[:64], sampler, epochs=1, batch_size=64, lr=1e-30)
    assert h.grad_variance == [0.0] and h.grad_sq_mean[0] > 0


def test_train_supernet_errors() -> None:
    sn = CellSupernet()
    X = torch.zeros(4, 1, 8, 8)
    with pytest.raises(ValueError, match="X must be"):
        train_supernet(sn, X, torch.zeros(3, dtype=torch.long), UniformSampler(4))
    with pytest.raises(ValueError, match="epochs must be"):
        train_supernet(sn, X, torch.zeros(4, dtype=torch.long), UniformSampler(4), epochs=0)
    with pytest.raises(FloatingPointError, match="non-finite"):
        train_supernet(sn, X * np.nan, torch.zeros(4, dtype=torch.long), UniformSampler(4))
    with pytest.raises(ValueError, match="has 3 edges"):
        sn(X, (0, 1, 2))
