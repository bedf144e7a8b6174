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
