"""GPM memory: energy threshold, incremental SVD, representations, persistence, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from subspaces._io import CheckpointError
from subspaces.continual import GPMMemory, collect_representations, flat_weight
from subspaces.continual.memory import layer_representation

F64 = torch.float64
EPS = torch.finfo(F64).eps


def _spectrum_matrix(s: list[float], d: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(d, len(s), generator=g, dtype=F64)).Q
    V = torch.linalg.qr(torch.randn(n, len(s), generator=g, dtype=F64)).Q
    return U @ torch.diag(torch.tensor(s, dtype=F64)) @ V.T


def _orth_error(M: torch.Tensor) -> float:
    return float((M.T @ M - torch.eye(M.shape[1], dtype=M.dtype)).abs().max())


@pytest.mark.parametrize(("eps", "k"), [(0.5, 1), (0.8, 2), (0.9, 2), (0.95, 3), (0.999, 4)])
def test_first_task_keeps_smallest_k_reaching_the_energy(eps, k):
    # energies 16, 4, 1, 0.25 of total 21.25: cumulative shares 0.753, 0.941, 0.988, 1.0
    R = _spectrum_matrix([4.0, 2.0, 1.0, 0.5], d=9, n=30, seed=0)
    memory = GPMMemory(eps).update({"fc": R})
    M = memory.bases_["fc"]
    assert M.shape == (9, k)
    assert _orth_error(M) < 10 * EPS * 9
    captured = float(torch.linalg.matrix_norm(M.T @ R) ** 2 / torch.linalg.matrix_norm(R) ** 2)
    assert captured >= eps
    if k > 1:  # one direction fewer does not reach the threshold
        less = float(torch.linalg.matrix_norm(M[:, :-1].T @ R) ** 2)
        assert less < eps * float(torch.linalg.matrix_norm(R) ** 2)


def test_later_task_adds_only_the_directions_it_needs():
    d = 12
    g = torch.Generator().manual_seed(1)
    Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64)).Q
    V = torch.randn(40, d, generator=g, dtype=F64)
    R1 = Q[:, :3] @ torch.diag(torch.tensor([5.0, 3.0, 2.0], dtype=F64)) @ V[:, :3].T
    memory = GPMMemory(0.99).update({"fc": R1})
    assert memory.bases_["fc"].shape == (d, 3)
    # task 2: mostly inside the old span, plus two new directions of different strength
    R2 = (
        Q[:, :2] @ V[:, 3:5].T * 4.0
        + Q[:, 5:6] @ V[:, 5:6].T * 2.0
        + Q[:, 6:7] @ V[:, 6:7].T * 0.05
    )
    memory.update({"fc": R2})
    M = memory.bases_["fc"]
    assert _orth_error(M) < 100 * EPS * d
    # hand computation of Eq. 8-9: captured = ||R2||^2 - ||R2_hat||^2, then add s_hat^2 greedily
    P = M[:, :3] @ M[:, :3].T
    total = float(torch.linalg.matrix_norm(R2) ** 2)
    R_hat = R2 - P @ R2
    s_hat = torch.linalg.svdvals(R_hat) ** 2
    acc = total - float(torch.linalg.matrix_norm(R_hat) ** 2)
    r = 0
    while acc < 0.99 * total:
        acc += float(s_hat[r])
        r += 1
    assert M.shape[1] == 3 + r == 4  # the weak direction (0.05) is not needed
    new = M[:, 3]  # the top left singular vector of the residual, mostly the strong direction
    u1 = torch.linalg.svd(R_hat, full_matrices=False).U[:, 0]
    assert abs(float(new @ u1)) > 1 - 100 * EPS
    assert abs(float(new @ Q[:, 5])) > 0.999
    assert memory.history_ == [{"fc": (3, 12)}, {"fc": (4, 12)}]
    assert memory.dim_ratios() == [{"fc": 3 / 12}, {"fc": 4 / 12}]


def test_task_bases_lie_in_the_memory_and_hold_the_task_energy():
    memory = GPMMemory(0.97)
    for seed in range(4):
        R = _spectrum_matrix([3.0, 2.0, 1.0, 0.3, 0.1], d=15, n=25, seed=10 + seed)
        memory.update({"a": R})
        S = memory.task_bases_[-1]["a"]
        M = memory.bases_["a"]
        assert float(torch.linalg.matrix_norm(S - M @ (M.T @ S))) < 1e-12
        share = torch.linalg.matrix_norm(S.T @ R) ** 2 / torch.linalg.matrix_norm(R) ** 2
        assert float(share) >= 0.97
    assert memory.num_tasks == 4 and memory.bases_["a"].shape[1] <= 15


def test_memory_never_exceeds_the_input_dimension():
    memory = GPMMemory(0.999)
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        memory.update({"fc": torch.randn(5, 40, generator=g, dtype=F64)})
    assert memory.bases_["fc"].shape == (5, 5)
    assert _orth_error(memory.bases_["fc"]) < 100 * EPS


def test_zero_representation_adds_nothing():
    memory = GPMMemory(0.9).update({"fc": torch.zeros(4, 7, dtype=F64)})
    assert memory.basis("fc") is None
    assert memory.task_bases_[0]["fc"].shape == (4, 0)


def test_per_task_threshold_override():
    R = _spectrum_matrix([4.0, 2.0, 1.0, 0.5], d=9, n=30, seed=0)
    assert GPMMemory(0.5).update({"fc": R}, threshold=0.999).bases_["fc"].shape[1] == 4


def test_representations_of_linear_and_conv_and_hooks_removed():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, stride=2, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
    ).double()
    net.train()
    x = torch.randn(6, 2, 8, 8, dtype=F64)
    reps = collect_representations(net, x, ["0", "3"])
    assert net.training
    assert all(not m._forward_pre_hooks for m in net.modules())
    conv = net[0]
    R = reps["0"]
    assert R.shape == (2 * 9, 6 * 16)
    out = (flat_weight(conv) @ R).reshape(3, 6, 16).transpose(0, 1)
    torch.testing.assert_close(out, conv(x).flatten(2), rtol=0, atol=100 * EPS)
    h = net[2](net[1](conv(x)))
    torch.testing.assert_close(reps["3"], h.T, rtol=0, atol=0)


def test_state_dict_and_checkpoint_round_trip(tmp_path):
    memory = GPMMemory({"a": 0.9, "b": 0.99})
    for seed in range(2):
        memory.update(
            {
                "a": _spectrum_matrix([3.0, 1.0, 0.2], d=6, n=10, seed=seed),
                "b": _spectrum_matrix([2.0, 1.0], d=4, n=10, seed=seed + 5),
            }
        )
    path = memory.save(tmp_path / "memory.pt")
    loaded = GPMMemory.load(path)
    assert loaded.threshold == {"a": 0.9, "b": 0.99}
    assert loaded.history_ == memory.history_
    for layer in ("a", "b"):
        assert torch.equal(loaded.bases_[layer], memory.bases_[layer])
        for t in range(2):
            assert torch.equal(loaded.task_bases_[t][layer], memory.task_bases_[t][layer])
    # the plain state dict loads with weights_only=True too
    torch.save(memory.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    again = GPMMemory(0.5).load_state_dict(state)
    assert torch.equal(again.bases_["a"], memory.bases_["a"])
    # a damaged checkpoint is refused
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged"):
        GPMMemory.load(path)


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.1, math.nan])
def test_threshold_outside_open_interval(bad):
    with pytest.raises(ValueError, match=r"threshold.*\(0, 1\)"):
        GPMMemory(bad)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        GPMMemory({"fc": bad})


@pytest.mark.parametrize("bad", ["0.9", True, None])
def test_threshold_wrong_type(bad):
    with pytest.raises(TypeError, match="threshold"):
        GPMMemory(bad)


def test_bad_representations():
    memory = GPMMemory(0.9)
    with pytest.raises(ValueError, match="non-finite"):
        memory.update({"fc": torch.tensor([[1.0, math.nan], [0.0, 1.0]])})
    with pytest.raises(ValueError, match="dimensions"):
        memory.update({"fc": torch.ones(3)})
    with pytest.raises(TypeError, match="floating"):
        memory.update({"fc": torch.ones(3, 2, dtype=torch.int64)})
    with pytest.raises(ValueError, match="empty"):
        memory.update({"fc": torch.ones(3, 0)})
    with pytest.raises(ValueError, match="non-empty mapping"):
        memory.update({})
    assert memory.num_tasks == 0  # nothing half-stored by a refused update
    memory.update({"fc": torch.eye(3)})
    with pytest.raises(ValueError, match=r"input dimension 4.*dimension 3"):
        memory.update({"fc": torch.ones(4, 2)})
    with pytest.raises(ValueError, match="same layers"):
        memory.update({"other": torch.ones(3, 2)})
    with pytest.raises(ValueError, match="no threshold for layer"):
        GPMMemory({"a": 0.9}).update({"b": torch.eye(2)})


def test_bad_layers_for_representations():
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Conv2d(2, 2, 3, groups=2))
    with pytest.raises(ValueError, match="unknown layer 'x'"):
        collect_representations(net, torch.randn(2, 3), ["x"])
    with pytest.raises(TypeError, match="ReLU"):
        collect_representations(net, torch.randn(2, 3), ["1"])
    with pytest.raises(ValueError, match="grouped"):
        collect_representations(net, torch.randn(2, 3), ["2"])
    with pytest.raises(ValueError, match="end in 3 features"):
        layer_representation(nn.Linear(3, 2), torch.randn(2, 4))
    with pytest.raises(ValueError, match="padding"):
        layer_representation(nn.Conv2d(1, 1, 3, padding="same"), torch.randn(1, 1, 5, 5))


def test_subspace_view_and_empty_layer():
    memory = GPMMemory(0.99).update({"fc": torch.eye(4, dtype=F64)[:, :2]})
    S = memory.subspace("fc")
    assert S.dim == 2 and S.ambient_dim == 4
    with pytest.raises(ValueError, match="empty"):
        GPMMemory(0.9).update({"z": torch.zeros(2, 2)}).subspace("z")


def test_refused_update_leaves_no_layer_half_updated():
    memory = GPMMemory({"a": 0.9})  # no threshold for layer "b"
    with pytest.raises(ValueError, match="no threshold for layer 'b'"):
        memory.update({"a": torch.eye(3), "b": torch.eye(2)})
    assert memory.bases_ == {} and memory.num_tasks == 0 and memory.version == 0
