"""Activation collection: padding-aware token rules, streaming, early stop, clean hooks."""

from __future__ import annotations

import pytest
import torch

from subspaces.steering import collect_activations, find_sites, pad_prompts

transformers = pytest.importorskip("transformers")


def gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=64, n_embd=32, n_layer=3, n_head=2, n_positions=64, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg).double().eval()


def llama() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).double().eval()


PROMPTS = [
    torch.tensor([3, 4, 5, 6, 7]),
    torch.tensor([9, 8]),
    torch.tensor([10, 11, 12]),
    torch.tensor([1]),
]


def reference(model: torch.nn.Module, site: int) -> list[torch.Tensor]:
    """Per-prompt hidden states after block ``site`` from unpadded single forwards."""
    with torch.no_grad():
        return [
            model(p[None], output_hidden_states=True).hidden_states[site + 1][0].float()
            for p in PROMPTS
        ]


@pytest.mark.parametrize("build", [gpt2, llama])
def test_token_rules_match_unpadded_forwards_with_left_and_right_padding(build) -> None:
    model = build()
    sites = find_sites(model, "block", [0, 1])
    key = sites[0].name
    ref = reference(model, 0)
    left = pad_prompts(PROMPTS, side="left", pad_token_id=63)
    right = pad_prompts(PROMPTS, side="right", pad_token_id=63)
    for batches in ([left], [right], PROMPTS):
        last = collect_activations(model, batches, sites, token="last")[key]
        mean = collect_activations(model, batches, sites, token="mean")[key]
        everything = collect_activations(model, batches, sites, token="all")[key]
        assert last.dtype == torch.float32 and last.device.type == "cpu"
        torch.testing.assert_close(last, torch.stack([r[-1] for r in ref]), rtol=0, atol=1e-6)
        torch.testing.assert_close(mean, torch.stack([r.mean(0) for r in ref]), rtol=0, atol=1e-6)
        torch.testing.assert_close(everything, torch.cat(ref), rtol=0, atol=1e-6)


def test_mask_rule_and_batch_splitting_and_streaming() -> None:
    model = gpt2()
    site = find_sites(model, "block", 1)
    ref = reference(model, 1)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, 0] = True  # first token of every prompt
    mask[0, 4] = True  # and the fifth of the first
    mask[3, 3] = True  # beyond prompt 3's single token: padding, never collected
    got = collect_activations(model, PROMPTS, site, token=mask, batch_size=3)[site[0].name]
    expected = torch.stack([ref[0][0], ref[0][4], ref[1][0], ref[2][0], ref[3][0]])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # a generator of dict batches is streamed; batch_size splits them; same numbers
    gen = (pad_prompts(PROMPTS[i : i + 2], side="left") for i in (0, 2))
    split = collect_activations(model, gen, site, token="last", batch_size=1)[site[0].name]
    torch.testing.assert_close(split, torch.stack([r[-1] for r in ref]), rtol=0, atol=1e-6)


def test_forward_stops_after_last_site_and_state_is_restored() -> None:
    model = gpt2()
    model.train()  # collection runs in eval mode and restores every flag
    calls = []
    user_hook = model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    hooks_before = {n: dict(m._forward_hooks) for n, m in model.named_modules()}
    pre_before = {n: dict(m._forward_pre_hooks) for n, m in model.named_modules()}
    params_before = {k: v.clone() for k, v in model.state_dict().items()}
    a = collect_activations(model, PROMPTS, find_sites(model, "block", 0), token="last")
    assert calls == []  # stopped after block 0: the head never ran
    b = collect_activations(
        model, PROMPTS, find_sites(model, "block", 0), token="last", stop_early=False
    )
    assert calls == [1]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(m.training for m in model.modules())
    assert {n: dict(m._forward_hooks) for n, m in model.named_modules()} == hooks_before
    assert {n: dict(m._forward_pre_hooks) for n, m in model.named_modules()} == pre_before
    assert all(torch.equal(v, params_before[k]) for k, v in model.state_dict().items())
    user_hook.remove()


def test_bad_input_raises_clear_errors_and_leaves_no_hooks() -> None:
    model = gpt2()
    site = find_sites(model, "block", 0)
    with pytest.raises(ValueError, match="empty"):
        collect_activations(model, [], site)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        collect_activations(model, [torch.tensor([1]), torch.tensor([], dtype=torch.long)], site)
    with pytest.raises(ValueError, match="empty \\(all padding\\)"):
        batch = {"input_ids": torch.ones(2, 3, dtype=torch.long),
                 "attention_mask": torch.tensor([[1, 1, 1], [0, 0, 0]])}  # fmt: skip
        collect_activations(model, [batch], site)
    with pytest.raises(ValueError, match="unknown site"):
        collect_activations(model, PROMPTS, "transformer.h.9")
    with pytest.raises(ValueError, match="token must be one of"):
        collect_activations(model, PROMPTS, site, token="first")
    with pytest.raises(ValueError, match="does not cover"):
        collect_activations(model, PROMPTS, site, token=torch.ones(4, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="duplicate"):
        collect_activations(model, PROMPTS, site + site)
    with pytest.raises(TypeError, match="dict with 'input_ids'"):
        collect_activations(model, [[1, 2, 3]], site)
    with pytest.raises(ValueError, match="batch_size"):
        collect_activations(model, PROMPTS, site, batch_size=0)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
