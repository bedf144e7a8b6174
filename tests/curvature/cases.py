"""Tiny models and data as cases (float64), shared by the curvature tests."""

import torch
from torch import nn

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def mlp_case():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    X = torch.randn(23, 5, generator=gen(1), dtype=F64)
    y = torch.randint(0, 3, (23,), generator=gen(2))
    # unequal batches: 10, 8, 5 samples
    data = [(X[:10], y[:10]), (X[10:18], y[10:18]), (X[18:], y[18:])]
    return model, "cross_entropy", data


def relu_mlp_mse_case():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 2)).double()
    X = torch.randn(12, 4, generator=gen(3), dtype=F64)
    y = torch.randn(12, 2, generator=gen(4), dtype=F64)
    return model, "mse", [(X[:7], y[:7]), (X[7:], y[7:])]


class TinyCNN(nn.Module):
    def __init__(self, bn=False):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3) if bn else nn.Identity()
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(torch.tanh(self.bn(self.conv(x))).flatten(1))


def cnn_case(bn=False):
    torch.manual_seed(2)
    model = TinyCNN(bn).double()
    if bn:
        # make running statistics non-trivial, then evaluate in eval mode
        with torch.no_grad():
            model(torch.randn(16, 1, 6, 6, generator=gen(9), dtype=F64))
        model.eval()
    X = torch.randn(9, 1, 6, 6, generator=gen(5), dtype=F64)
    y = torch.randint(0, 4, (9,), generator=gen(6))
    return model, "cross_entropy", [(X[:6], y[:6]), (X[6:], y[6:])]


def tiny_transformer_case():
    transformers = __import__("pytest").importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=11,
        n_positions=8,
        n_embd=8,
        n_layer=1,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(3)
    model = transformers.GPT2LMHeadModel(config).double().eval()
    ids = torch.randint(0, 11, (4, 6), generator=gen(7))

    def lm_loss(logits, batch):
        labels = batch["input_ids"][:, 1:]
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1)
        )

    data = [{"input_ids": ids[:3]}, {"input_ids": ids[3:]}]
    return model, lm_loss, data


# ----- independent dense references (plain autograd and finite differences) -------------------
def flat_loss_fn(model, loss, data):
    """The loss of the concatenated data as a function of the flat parameter vector.

    Built with plain ``functional_call`` on the whole data set at once, so it is independent of
    the library's batch loop, normalisation and loss handling.
    """
    from torch.func import functional_call

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [dict(model.named_parameters())[n].shape for n in names]
    sizes = [s.numel() for s in shapes]
    X = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])

    def f(flat):
        parts = torch.split(flat, sizes)
        p = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        return loss(functional_call(model, p, (X,)), y)

    x0 = torch.cat([dict(model.named_parameters())[n].detach().flatten() for n in names])
    return f, x0


def autograd_hessian(f, x0):
    """Dense Hessian by autograd double backward, one row at a time (no vmap, no torch.func)."""
    x = x0.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x), x, create_graph=True)
    eye = torch.eye(x.numel(), dtype=x.dtype)
    return torch.stack([torch.autograd.grad(g, x, e, retain_graph=True)[0] for e in eye])


def fd_hessian(f, x0, rel_step=1e-5):
    """Central finite differences of the autograd gradient, column by column (not symmetrized)."""

    def g(x):
        x = x.detach().clone().requires_grad_(True)
        return torch.autograd.grad(f(x), x)[0]

    h = rel_step * max(1.0, float(x0.abs().max()))
    eye = torch.eye(x0.numel(), dtype=x0.dtype)
    return torch.stack([(g(x0 + h * e) - g(x0 - h * e)) / (2 * h) for e in eye], 1)


class NormMLP(nn.Module):
    """Linear - norm - GELU - Linear: where torch.func.hessian goes wrong (torch 2.13)."""

    def __init__(self, norm="layernorm"):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6) if norm == "layernorm" else nn.BatchNorm1d(6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.norm(self.fc1(x))))


def norm_case(norm="layernorm"):
    """A float64 norm model in train mode (BatchNorm: batch statistics), CE, two batches."""
    torch.manual_seed(4)
    model = NormMLP(norm).double().train()
    X = torch.randn(14, 4, generator=gen(10), dtype=F64)
    y = torch.randint(0, 3, (14,), generator=gen(11))
    return model, "cross_entropy", [(X[:8], y[:8]), (X[8:], y[8:])]


def per_batch_fd_hessian(model, loss, data):
    """Sample-weighted mean over batches of each batch's finite-difference Hessian.

    (Batch statistics make the data-set Hessian of a train-mode BatchNorm model depend on the
    batching, so the reference is built batch by batch.)
    """
    total, n = 0, 0
    for b in data:
        f, x0 = flat_loss_fn(model, torch.nn.functional.cross_entropy, [b])
        total = total + fd_hessian(f, x0) * len(b[1])
        n += len(b[1])
    return total / n


def small_data_case():
    """A 183-parameter tanh MLP on 12 samples of 3 classes, trained a little (float64).

    The GGN has rank at most 12 * (3 - 1) = 24, far below 183: the "few samples" regime.
    """
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(5, 20), nn.Tanh(), nn.Linear(20, 3)).double()
    X = torch.randn(12, 5, generator=gen(30), dtype=F64)
    y = torch.randint(0, 3, (12,), generator=gen(31))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    model.zero_grad()
    return model, "cross_entropy", [(X[:8], y[:8]), (X[8:], y[8:])]


def inplace_fd_hessian(model, loss, data, rel_step=1e-5):
    """Central differences of ``model``'s own autograd gradient, perturbing its parameters in place.

    Shares nothing with the library (no functional_call, no torch.func): the most independent
    reference. Batches are weighted by their number of samples (mean losses).
    """
    params = [p for p in model.parameters() if p.requires_grad]

    def grad():
        total, n = None, 0
        for X, y in data:
            model.zero_grad()
            loss(model(X), y).backward()
            g = torch.cat([p.grad.flatten() for p in params]) * len(y)
            total = g if total is None else total + g
            n += len(y)
        return total / n

    flat = torch.cat([p.detach().flatten() for p in params])
    h = rel_step * max(1.0, float(flat.abs().max()))
    cols = []
    for j in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[j] = h
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(flat + e, params)
        gp = grad()
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(flat - e, params)
        gm = grad()
        cols.append((gp - gm) / (2 * h))
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(flat, params)
    model.zero_grad()
    return torch.stack(cols, 1)


class ResidualLNCNN(nn.Module):
    """conv - [x + conv(GELU(LayerNorm(x)))] - pool - linear: the residual CNN of issue 21."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.norm = nn.LayerNorm([3, 5, 5])
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        h = self.stem(x)
        h = h + self.conv(torch.nn.functional.gelu(self.norm(h)))
        return self.fc(h.mean((2, 3)))


class ResidualBN(nn.Module):
    """Linear - [x + Linear(GELU(BatchNorm(x)))] - Linear, used in train mode."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.mid = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = self.inp(x)
        return self.out(h + self.mid(torch.nn.functional.gelu(self.bn(h))))


class TiedLM(nn.Module):
    """Embedding tied to the output layer, LayerNorm, residual GELU MLP: (n, T) ids -> logits."""

    def __init__(self, vocab=7, dim=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight  # tied

    def forward(self, ids):
        h = self.emb(ids)
        h = h + self.mlp(torch.nn.functional.gelu(self.norm(h)))
        return self.head(h)


def lm_loss(logits, targets):
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    )


def residual_models():
    """name -> (model, loss, data, mode_policy) for the finite-difference regression tests."""
    torch.manual_seed(9)
    cnn = ResidualLNCNN().double()
    Xc = torch.randn(6, 1, 5, 5, generator=gen(60), dtype=F64)
    yc = torch.randint(0, 4, (6,), generator=gen(61))
    bn = ResidualBN().double().train()
    Xb = torch.randn(10, 4, generator=gen(62), dtype=F64)
    yb = torch.randint(0, 3, (10,), generator=gen(63))
    lm = TiedLM().double()
    ids = torch.randint(0, 7, (5, 4), generator=gen(64))
    return {
        "residual_layernorm_gelu_cnn": (
            cnn,
            torch.nn.functional.cross_entropy,
            [(Xc[:4], yc[:4]), (Xc[4:], yc[4:])],
            "error",
        ),
        "residual_train_mode_batchnorm": (
            bn,
            torch.nn.functional.cross_entropy,
            [(Xb[:6], yb[:6]), (Xb[6:], yb[6:])],
            "as_is",
        ),
        "tied_weights_lm": (
            lm,
            lm_loss,
            [(ids[:3, :-1], ids[:3, 1:]), (ids[3:, :-1], ids[3:, 1:])],
            "error",
        ),
    }


#: batch sizes of each rank's shard in the 2-rank distributed and FSDP2 curvature tests
SHARDS = ((7, 6), (9,))


def shard_data():
    """All the samples of the distributed tests: 4 features, 3 classes, float64."""
    g = gen(1)
    n = sum(sum(s) for s in SHARDS)
    return torch.randn(n, 4, generator=g, dtype=F64), torch.randint(0, 3, (n,), generator=g)


def rank_shard(rank):
    """Rank ``rank``'s batches (sizes ``SHARDS[rank]``), slices of :func:`shard_data`."""
    X, y = shard_data()
    start = sum(sum(s) for s in SHARDS[:rank])
    batches = []
    for size in SHARDS[rank]:
        batches.append((X[start : start + size], y[start : start + size]))
        start += size
    return batches
