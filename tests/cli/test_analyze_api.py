"""`subspaces.analyze` on the user's own model, data and loss: a BatchNorm CNN trained by the
user's loop, a tiny Hugging Face causal LM, mini-batched curvature on a seeded subset."""

import json
import math

import pytest
import torch
from torch import nn

import subspaces
from subspaces.analyze import (
    MappedBatches,
    causal_lm_loss,
    curvature_batches,
    subset_indices,
)
from subspaces.curvature import HessianOperator
from subspaces.dynamics import CurvatureTracker

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def image_data(n=96, seed=0, dtype=torch.float32):
    g = gen(seed)
    X = torch.randn(n, 1, 6, 6, generator=g, dtype=dtype)
    y = (X[:, 0, :3].sum((1, 2)) > X[:, 0, 3:].sum((1, 2))).long() + 2 * (X[:, 0, 0, 0] > 0)
    return X, y


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 4 * 4, 4)

    def forward(self, x):
        return self.head(torch.tanh(self.bn(self.conv(x))).flatten(1))


def loader_of(X, y, batch):
    return [(X[i : i + batch], y[i : i + batch]) for i in range(0, len(y), batch)]


QUIET = {
    "quiet": True,
    "final_k": 4,
    "final_trace_matvecs": 40,
    "density_runs": 2,
    "density_steps": 10,
}


def test_user_loop_cnn_with_batchnorm_writes_the_report(tmp_path):
    torch.manual_seed(0)
    X, y = image_data()
    Xt, yt = image_data(32, seed=1)
    train, test = loader_of(X, y, 16), loader_of(Xt, yt, 16)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()
    curv = curvature_batches(train, 48, seed=3, batch_size=16)
    tracker = CurvatureTracker(model, loss_fn, curv, optimizer=opt, every=4, k=2, generator=gen(0))
    step = 0
    for _epoch in range(2):  # the user's own loop
        for xb, yb in train:
            tracker.step(step, batch=(xb, yb))
            model.train()
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            tracker.log(step, train_loss=loss)
            step += 1
    assert model.training and model.bn.training  # the tracker restored the modes
    summary = subspaces.analyze(
        model, train, loss_fn, tracker=tracker, test_loader=test, out=tmp_path, **QUIET
    )
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert (tmp_path / "report.html").stat().st_size > 0
    assert on_disk["curvature"]["step"] == [0, 4, 8, 11]  # and the last logged step
    assert on_disk["curvature"]["num_samples"] == 48
    assert on_disk["final"]["num_samples"] == 48  # the final spectrum on the tracked subset
    assert summary["history"]["step"][-1] == 11 and len(summary["history"]["step"]) == 13
    assert math.isfinite(summary["history"]["test_acc"][-1])
    assert summary["config"]["optimizer"] == "your loop"
    assert any("BatchNorm" in note for note in summary["notes"])
    # the final eigenvalues are those of the eval-mode Hessian on the subset
    model.eval()
    H = HessianOperator(model, loss_fn, curv, dtype=F64)
    lam = torch.linalg.eigvalsh(H.to_dense())[-1]
    top = summary["final"]["eigenvalues"][0]
    assert abs(top - float(lam)) <= 1e-3 * float(lam) + 1e-4  # float32 model, rtol 1e-4 Lanczos


def test_our_loop_on_a_dict_loader_with_batch_to_inputs(tmp_path):
    X, y = image_data(64)
    rows = [{"image": X[i : i + 16], "label": y[i : i + 16]} for i in range(0, 64, 16)]
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    summary = subspaces.analyze(
        model,
        rows,
        "cross_entropy",
        optimizer=opt,
        epochs=2,
        every=3,
        k=2,
        batch_to_inputs=lambda b: (b["image"], b["label"]),
        curvature_samples=40,
        curvature_batch_size=16,
        seed=5,
        out=tmp_path,
        **QUIET,
    )
    assert summary["curvature"]["step"] == [0, 3, 6, 8]  # 8 steps: the last one too
    assert summary["config"]["curvature_samples"] == 40
    assert summary["config"]["curvature_seed"] == 5
    assert summary["config"]["curvature_batches"] == 3
    assert summary["history"]["epoch"] == [1, 2]
    assert any("40 of the 64" in note and "seed 5" in note for note in summary["notes"])
    # an out folder holding a run is refused unless force=True
    with pytest.raises(ValueError, match="already holds another run"):
        subspaces.analyze(model, rows, "cross_entropy", out=tmp_path, **QUIET)


def tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=1,
        n_embd=16,
        n_head=2,
        vocab_size=50,
        n_positions=16,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def token_batches(n=24, T=8, batch=8, seed=0):
    g = gen(seed)
    ids = torch.randint(0, 50, (n, T), generator=g)
    ids[:, 1::2] = (ids[:, 0::2] + 1) % 50  # a learnable pattern
    return [
        {"input_ids": ids[i : i + batch], "labels": ids[i : i + batch]} for i in range(0, n, batch)
    ]


def test_causal_lm_loss_is_the_models_own_labels_loss():
    model = tiny_gpt2()
    batch = token_batches()[0]
    batch["labels"] = batch["labels"].clone()
    batch["labels"][:, :3] = -100  # ignored positions too
    out = model(**batch)
    assert torch.allclose(causal_lm_loss(out.logits, batch), out.loss, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="labels"):
        causal_lm_loss(out.logits, {"input_ids": batch["input_ids"]})


def test_tiny_hf_causal_lm_with_a_user_loop(tmp_path):
    model = tiny_gpt2()
    batches = token_batches()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tracker = CurvatureTracker(
        model,
        causal_lm_loss,
        batches,
        optimizer=opt,
        every=3,
        k=2,
        trace_rtol=None,
        generator=gen(0),
    )
    for step in range(6):
        batch = batches[step % len(batches)]
        tracker.step(step)
        model.train()
        opt.zero_grad()
        loss = model(**batch).loss  # the model's own loss from its labels
        loss.backward()
        opt.step()
        tracker.log(step, train_loss=float(loss))
    summary = subspaces.analyze(
        model, batches, causal_lm_loss, tracker=tracker, out=tmp_path, **QUIET
    )
    assert (tmp_path / "report.html").exists()
    assert summary["curvature"]["step"] == [0, 3, 5]
    assert summary["final"]["num_samples"] == 24
    # the report's final training loss is the model's own loss over the data
    own = sum(float(model.eval()(**b).loss) for b in batches) / len(batches)
    assert summary["history"]["train_loss"][-1] == pytest.approx(own, rel=1e-5)
    assert math.isnan(summary["history"]["train_acc"][-1])


# ----- mini-batched curvature == one batch on the same subset ------------------------------
def test_minibatched_curvature_equals_one_batch_on_the_subset():
    X, y = image_data(90, dtype=F64)
    model = SmallCNN().double().eval()
    loader = loader_of(X, y, 25)  # batches of 25, not aligned with the curvature batches
    batches = curvature_batches(loader, 50, seed=7, batch_size=16)
    assert [len(b[1]) for b in batches] == [16, 16, 16, 2]
    idx = subset_indices(90, 50, seed=7)
    assert torch.equal(torch.cat([b[1] for b in batches]), y[idx])
    one = HessianOperator(model, "cross_entropy", [(X[idx], y[idx])])
    many = HessianOperator(model, "cross_entropy", batches)
    assert many.engine == "vmap" and one.engine == "double_backward"  # two product paths
    v = torch.randn(one.shape[0], generator=gen(1), dtype=F64)
    Hv1, Hvm = one @ v, many @ v
    assert float((Hv1 - Hvm).norm()) <= 1e-10 * float(Hv1.norm())
    D1, Dm = one.to_dense(), many.to_dense()
    e1, em = torch.linalg.eigvalsh((D1 + D1.T) / 2), torch.linalg.eigvalsh((Dm + Dm.T) / 2)
    assert float((e1 - em).abs().max()) <= 1e-10 * float(e1.abs().max())
    # and the summary's final spectrum on that subset is the one-batch spectrum
    summary = subspaces.analyze(
        model,
        loader,
        "cross_entropy",
        curvature_samples=50,
        curvature_batch_size=16,
        seed=7,
        quiet=True,
        final_k=3,
        density_runs=2,
        density_steps=10,
    )
    top = torch.tensor(summary["final"]["eigenvalues"], dtype=F64)
    assert float((top - e1.flip(0)[:3]).abs().max()) <= 1e-6 * float(e1.abs().max())


def test_curvature_batches_on_dict_batches_and_bad_arguments():
    rows = token_batches(n=20, batch=6)  # 6, 6, 6, 2
    parts = curvature_batches(rows, 9, seed=0, batch_size=4)
    assert [len(p["input_ids"]) for p in parts] == [4, 4, 1]
    everything = torch.cat([r["input_ids"] for r in rows])
    idx = subset_indices(20, 9, seed=0)
    assert torch.equal(torch.cat([p["input_ids"] for p in parts]), everything[idx])
    assert torch.equal(torch.cat([p["labels"] for p in parts]), everything[idx])
    with pytest.raises(ValueError, match="curvature_samples must be a positive integer"):
        curvature_batches(rows, 0)
    with pytest.raises(ValueError, match="curvature_batch_size"):
        curvature_batches(rows, 3, batch_size=0)
    assert len(MappedBatches(rows, lambda b: b)) == 4


def test_bad_arguments_name_themselves():
    X, y = image_data(32)
    loader = loader_of(X, y, 16)
    with pytest.raises(TypeError, match="model must be"):
        subspaces.analyze("net", loader, "cross_entropy")
    with pytest.raises(TypeError, match="one-shot iterator"):
        subspaces.analyze(SmallCNN(), iter(loader), "cross_entropy")
    with pytest.raises(ValueError, match="every must be a positive integer"):
        subspaces.analyze(SmallCNN(), loader, "cross_entropy", every=0)
    with pytest.raises(ValueError, match="loss_fn must be one of"):
        subspaces.analyze(SmallCNN(), loader, "hinge")
