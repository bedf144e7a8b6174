"""inherited_accuracies shares edge outputs across paths yet returns the per-path answers."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from subspaces.nas.supernet import CellSupernet, inherited_accuracies


def test_inherited_accuracies_equal_one_forward_per_path() -> None:
    torch.manual_seed(3)
    sn = CellSupernet(channels=4)
    with torch.no_grad():  # spread the head so that paths disagree on many images
        sn.head.weight.mul_(20.0)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(48, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (48,), generator=g)
    archs = list(itertools.product(range(5), repeat=4))
    archs = archs[::-1] + archs[:50]  # reversed and repeated: the cache must key on all edges
    with torch.no_grad():
        ref = np.array([float((sn(X, a).argmax(1) == y).double().mean()) for a in archs])
    got = inherited_accuracies(sn, archs, X, y)
    assert len(np.unique(ref)) > 5  # the check can tell paths apart
    assert np.array_equal(got, ref)
    assert sn.training  # the mode is restored
